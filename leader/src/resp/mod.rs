//! The Redis-protocol (RESP2 and RESP3) front end of a region, so that `redis-cli`,
//! `redis-benchmark` and the ordinary Redis client libraries work with Meridian unmodified.
//!
//! # Layout
//! - this file: [`RespSettings`] and [`serve`], the accept loop with its connection bound;
//! - `conn.rs`: one connection: reading and decoding frames (`redis-protocol`), running a
//!   pipeline, writing its replies in one go;
//! - `commands.rs`: what each Redis command does, against the region's [`NodeHandle`];
//! - `meridian.rs`: `WAIT` (regions for replicas) and Meridian's own `MERIDIAN.*` commands:
//!   session tokens, a key's siblings and writes with a causal context;
//! - `reply.rs`: replies and their encoding in RESP2 or RESP3.
//!
//! # Pipelining
//! Every complete command in the read buffer is decoded before any is answered. Writes are
//! handed to the region one after another without waiting ([`NodeHandle::submit_write`]), so a
//! pipeline's writes enter the state machine in order and share its group commits; a command
//! that reads waits first for the connection's earlier writes (a connection reads its own
//! writes, as with Redis). The replies go out in order in one write. A write is answered only
//! once it is durable, as over HTTP.
//!
//! # Bounds
//! At most [`RespSettings::max_connections`] connections (one more is told so and closed), one
//! request of at most [`RespSettings::max_request_bytes`] buffered (a larger one is a protocol
//! error and closes the connection), and a client that does not read its replies stops being
//! read from: nothing grows without bound.

mod commands;
mod conn;
mod meridian;
mod reply;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::config::Config;
use crate::{Node, NodeError, NodeHandle};

/// How a region's RESP listener behaves.
#[derive(Debug, Clone)]
pub struct RespSettings {
    /// The table of each database number (`SELECT n`): index 0 is database 0.
    pub databases: Vec<String>,
    /// The password `AUTH` and `HELLO ... AUTH` must give (the API's bearer token), if any.
    pub token: Option<String>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request (one command with its arguments) buffered.
    pub max_request_bytes: usize,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
}

impl RespSettings {
    /// The settings `config` gives, with the API's bearer token as the password.
    pub fn from_config(config: &Config, token: Option<String>) -> Self {
        RespSettings {
            databases: config.resp.databases.clone(),
            token,
            max_connections: config.resp.max_connections,
            max_request_bytes: config.limits.max_request_body_bytes,
            max_key_bytes: config.limits.max_key_bytes,
            max_value_bytes: config.limits.max_value_bytes,
        }
    }
}

/// Binds `addr` and serves RESP for `node` until it stops; [`Node::resp_addr`] then tells
/// where (the port the OS gave, for port 0).
pub async fn start(
    node: &mut Node,
    addr: std::net::SocketAddr,
    config: &Config,
    token: Option<String>,
) -> Result<(), NodeError> {
    if !addr.ip().is_loopback() && token.is_none() {
        warn!(%addr, "the RESP listener is on a non-loopback address without a password; set MERIDIAN_API_TOKEN (clients then AUTH with it)");
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let settings = RespSettings::from_config(config, token);
    let task = tokio::spawn(serve(listener, node.handle(), settings, node.stopping()));
    tracing::info!(region = node.handle().region(), resp = %bound, "RESP listener started");
    node.attach_resp(task, bound);
    Ok(())
}

/// Serves RESP on `listener` for the region behind `node` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    settings: RespSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let cursors = Arc::new(std::sync::Mutex::new(commands::Cursors::default()));
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut next_id: u64 = 1;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!("RESP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "RESP connection refused: max_connections reached");
            tokio::spawn(conn::refuse(stream, settings.max_connections));
            continue;
        };
        let (node, settings, shutdown) = (node.clone(), Arc::clone(&settings), shutdown.clone());
        let cursors = Arc::clone(&cursors);
        tokio::spawn(async move {
            conn::Connection::new(id, node, settings, cursors)
                .run(stream, shutdown)
                .await;
            drop(permit);
        });
    }
}
