//! A Meridian region's leader as a library a program embeds: durable storage, the client API
//! and the node runtime that wires them to the sans-IO replication state machine
//! (`leader-core`) and the transport. The `meridian` program (CLI, `simulate`, `bench`) is
//! built on it in `leader/cli/`.
//!
//! # Layout
//! - [`config`]: `regions.toml`, loaded and validated with errors that name the file and key.
//! - [`storage`]: the store of one data directory: an append-only segmented write log (one
//!   record and one fsync per batch) and redb checkpoints of key states and metadata.
//! - [`node`]: the runtime — a driver task that owns the state machine and performs its
//!   effects (persist on tokio's blocking pool, send over the transport, answer clients):
//!   `node/mod.rs` starts a node ([`node::start`], [`Node`], [`Wiring`]), `handle.rs` is the
//!   way in ([`NodeHandle`]), `driver.rs` the task, `socket.rs` the QUIC socket it closes.
//! - [`metrics`]: Prometheus text for `/metrics`, recorded by the driver.
//! - [`snapshot`]: [`Status`], the runtime's view of its region at one moment, which the
//!   driver takes and `status` and `metrics` render.
//! - [`api`]: the HTTP/JSON client API (axum), started on a running node: `api.rs` the router,
//!   authentication and errors, `api/kv.rs` the key routes, `api/region.rs` the conflict log,
//!   status, digest and metrics; [`api::admin`]: its link-control routes for simulations.
//! - [`resp`]: the RESP (Redis protocol) front end, served on a running node's handle.
//! - [`status`]: the documents the API answers with about a region (status, digest, conflict
//!   log, links) as serde types, shared with the programs and tests that read them.
//! - [`LeaderBuilder`]: how a program embeds a leader and registers its own resolvers.
//!
//! Inside the crate, `LeaderBuilder` starts a node and then the API on it; `api` uses `node`
//! and `status`, and nothing below it knows the API. Imports go one way, with no circle:
//! `node` records into [`metrics::Metrics`] and takes [`snapshot::Status`]es, which
//! `metrics` and `status` render without knowing `node`.
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

pub mod api;
pub mod config;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod snapshot;
pub mod status;
pub mod storage;

use std::path::Path;
use std::sync::Arc;

use conflict::{Registry, Resolver};

pub use leader_core;
pub use node::{Node, NodeError, NodeHandle, Pending, ReadResult, Status, Wiring};

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

    /// Opens storage, starts the transport and the driver ([`node::start`]), then the API
    /// on top of them ([`api::start`]) unless [`Wiring::no_api`].
    pub async fn start(self) -> Result<Node, NodeError> {
        let me = self.config.region(&self.region)?.clone();
        let api =
            (!self.wiring.no_api).then(|| (self.wiring.api_bind, self.wiring.api_token.clone()));
        let resp = self.wiring.resp_bind.or(me.resp_addr);
        let token = self.wiring.api_token.clone();
        let mut node = node::start(&self.config, &self.region, &self.registry, self.wiring).await?;
        let mut started = Ok(());
        if let Some((bind, token)) = api {
            let addr = bind.unwrap_or(me.api_addr);
            started = api::start(&mut node, addr, self.config.limits, token).await;
        }
        if let (Ok(()), Some(addr)) = (&started, resp) {
            started = resp::start(&mut node, addr, &self.config, token).await;
        }
        if let Err(e) = started {
            // The runtime is up: stop it cleanly so the region can be started again.
            let _ = node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }
}
