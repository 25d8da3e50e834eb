//! A Meridian region's leader: durable storage, the client API and the node runtime that
//! wires them to the sans-IO replication state machine (`leader-core`) and the transport.
//!
//! # Layout
//! - [`config`]: `regions.toml`, loaded and validated with errors that name the file and key.
//! - [`storage`]: the store of one data directory: an append-only segmented write log (one
//!   record and one fsync per batch) and redb checkpoints of key states and metadata.
//! - [`node`]: the runtime — a driver task that owns the state machine and performs its
//!   effects (persist on tokio's blocking pool, send over the transport, answer clients).
//! - [`api`]: the HTTP/JSON client API (axum).
//! - [`metrics`]: Prometheus text for `/metrics`.
//! - [`LeaderBuilder`]: how a program embeds a leader and registers its own resolvers.
//!
//! The state machine itself lives in the `leader-core` crate (`leader/core/`), kept apart so
//! that clippy can forbid clocks, I/O and unseeded randomness in it; see its docs.
//!
//! # Embedding a leader with a custom resolver
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use leader::LeaderBuilder;
//! let node = LeaderBuilder::from_file("regions.toml".as_ref(), "eu-west")?
//!     .register(std::sync::Arc::new(conflict::examples::UnionSet))?
//!     .start()
//!     .await?;
//! println!("API on {:?}", node.api_addr());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod api;
pub mod config;
pub mod metrics;
pub mod node;
pub mod storage;

use std::path::Path;
use std::sync::Arc;

use conflict::{Registry, Resolver};

pub use leader_core;
pub use node::{Node, NodeError, NodeHandle, ReadResult, Status, Wiring};

/// Builds a region leader: a configuration, the region to run, and the resolvers tables may
/// name. `lww` and `multi-value` are always registered.
#[derive(Debug)]
pub struct LeaderBuilder {
    config: config::Config,
    region: String,
    registry: Registry,
    wiring: Wiring,
}

impl LeaderBuilder {
    /// A builder for `region` of an already loaded configuration.
    pub fn new(config: config::Config, region: &str) -> Self {
        Self {
            config,
            region: region.to_owned(),
            registry: Registry::with_builtins(),
            wiring: Wiring::default(),
        }
    }

    /// Loads `regions.toml` from `path` and builds `region` of it.
    pub fn from_file(path: &Path, region: &str) -> Result<Self, config::ConfigError> {
        Ok(Self::new(config::Config::load(path)?, region))
    }

    /// Registers a custom resolver; tables name it in `regions.toml` by its
    /// [`Resolver::name`]. Fails if the name is taken.
    pub fn register(
        mut self,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Self, conflict::RegistryError> {
        self.registry.register(resolver)?;
        Ok(self)
    }

    /// Changes how the node binds and what it wraps (tests and simulations).
    pub fn wiring(mut self, wiring: Wiring) -> Self {
        self.wiring = wiring;
        self
    }

    /// The configuration being built.
    pub fn config(&self) -> &config::Config {
        &self.config
    }

    /// Opens storage, starts the transport, the driver and the API.
    pub async fn start(self) -> Result<Node, NodeError> {
        node::start(&self.config, &self.region, &self.registry, self.wiring).await
    }
}
