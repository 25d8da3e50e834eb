//! The node runtime: performs the state machine's effects with real I/O.
//!
//! One tokio task (the *driver*) owns the [`Replica`]. Inputs — client commands, transport
//! events, storage completions, log reads, timers — arrive on channels and become
//! [`Event`](leader_core::Event)s; the driver hands each to the state machine and performs
//! the [`Effect`](leader_core::Effect)s it returns, in order. `select!` only turns inputs into events: all decisions are in the core.
//!
//! Storage runs on tokio's blocking pool (redb is synchronous): the core keeps at most one
//! [`PersistBatch`](leader_core::PersistBatch) outstanding, and one blocking task commits it
//! with an fsync and reports back, so there is one writer at a time. Log reads for lagging
//! peers run there too, against a redb read transaction, concurrently with the writer.
//! Blocking tasks, unlike a thread of our own, are waited for when the runtime shuts down, so
//! a runtime that is dropped (a crashed host in a turmoil simulation) has released the store
//! once the drop returns; and under turmoil's paused clock a running blocking task holds
//! virtual time still, so an fsync takes no virtual time however slow the disk is.
//!
//! Every timer and the monotonic time given to the core read tokio's clock ([`Instant`] is
//! `tokio::time::Instant`): the OS's monotonic clock in production, virtual time under turmoil.
//!
//! # Layout
//! - this file: [`Node`] (a running leader: its handle, shutdown), [`Wiring`], [`NodeError`]
//!   and [`start`], which opens storage, recovers the machine and starts the transport and
//!   the driver;
//! - `handle`: [`NodeHandle`], the clonable way in (writes, reads, status, scans), with the
//!   requests and answers it carries;
//! - `driver`: the task that owns the [`Replica`], turns inputs into events and performs the
//!   effects;
//! - `socket`: the QUIC socket wrapper that tells [`Node::shutdown`] when the port is free.

mod driver;
mod handle;
mod socket;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conflict::Registry;
use leader_core::{Options, PeerMsg, Replica, Time};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};
use transport::Mesh;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::{StorageError, Store, StoreLimits};

pub use crate::snapshot::Status;
use driver::Driver;
pub use handle::{
    Behind, Bootstrapping, Listing, NodeHandle, Pending, ReadOptions, ReadResult, Repair,
    RequestError, Scan, WriteOptions, Written,
};
pub(crate) use handle::{Change, Command, LinkControl};
use socket::ClosingSocket;

/// Bound on queued client commands: beyond it HTTP handlers wait (backpressure).
const COMMAND_QUEUE: usize = 4096;
/// Bound on completions (persisted batches, log reads) queued back to the driver.
const COMPLETION_QUEUE: usize = 1024;
/// How long [`Node::shutdown`] waits for the QUIC socket to close once the mesh has stopped.
/// quinn closes it from its endpoint task once every connection has drained: usually within
/// milliseconds, but a redial to a peer that has just gone, still in its handshake, holds it
/// for three probe timeouts at quinn's initial RTT estimate (about 2 s).
const SOCKET_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A peer region counts as dead, and a new process for it is let in, once no frame has come
/// from the current one for this many heartbeat intervals…
const SPLIT_BRAIN_LIVENESS_HEARTBEATS: u64 = 4;
/// …but never less than this: a live process on a loaded machine can miss a few heartbeats,
/// and letting an impostor in on such a pause is worse than a restart waiting a second.
const SPLIT_BRAIN_LIVENESS_MIN: Duration = Duration::from_secs(1);

/// How long a peer's current process must be silent before a new one may take its place:
/// 4 heartbeats, at least 1 s, at most the idle timeout (by then the connection is gone).
fn split_brain_liveness(t: &crate::config::Timeouts) -> Duration {
    let beats = Duration::from_millis(
        t.heartbeat_interval_ms
            .saturating_mul(SPLIT_BRAIN_LIVENESS_HEARTBEATS),
    );
    beats.max(SPLIT_BRAIN_LIVENESS_MIN).min(t.idle_timeout())
}

/// How long a split brain stays in `/v1/status` after it was last seen (the refused process
/// redials about once a second while it lives, and each refusal renews it).
pub const SPLIT_BRAIN_SHOWN_FOR: Duration = Duration::from_secs(30);

/// Errors of starting or running a node. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Storage failed to open or write.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The state machine could not be built.
    #[error(transparent)]
    Build(#[from] leader_core::BuildError),
    /// Certificates could not be loaded.
    #[error("certificates: {0}")]
    Certs(String),
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(String),
    /// The API listener could not bind.
    #[error("cannot listen for the API on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// A running region leader.
pub struct Node {
    handle: NodeHandle,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<Result<(), NodeError>>,
    api: Option<JoinHandle<()>>,
    api_addr: Option<SocketAddr>,
    /// The Redis-protocol listener, if one runs; [`Node::shutdown`] waits for it too.
    resp: Option<JoinHandle<()>>,
    resp_addr: Option<SocketAddr>,
    peer_addr: SocketAddr,
    impairment: Option<transport::impair::ImpairmentHandle>,
    /// Resolves (with an error) once the QUIC socket is closed; see [`ClosingSocket`].
    socket_closed: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("region", &self.handle.region)
            .field("api_addr", &self.api_addr)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A handle for reads, writes and status.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Where the HTTP API listens, if it was started.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The impairment layer under the QUIC endpoint, if [`Wiring::impair`] was set.
    pub fn impairment(&self) -> Option<&transport::impair::ImpairmentHandle> {
        self.impairment.as_ref()
    }

    /// Where the QUIC endpoint listens.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Stops the node: the API stops accepting, the driver finishes the outstanding persist,
    /// closes its links and the store. Returns the driver's result once the API and QUIC
    /// ports are released, so the region can be started again on the same addresses.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        if let Some(api) = self.api {
            let _ = api.await;
        }
        if let Some(resp) = self.resp {
            let _ = resp.await;
        }
        let result = match self.driver.await {
            Ok(r) => r,
            Err(e) => {
                error!("driver task failed: {e}");
                Err(NodeError::Stopped)
            }
        };
        // The mesh has stopped, but quinn's endpoint task drops the socket only when it next
        // runs: wait for that, or a restart on the same address can find the port in use.
        if tokio::time::timeout(SOCKET_CLOSE_WAIT, self.socket_closed)
            .await
            .is_err()
        {
            warn!(peer = %self.peer_addr, "the QUIC socket was still open {SOCKET_CLOSE_WAIT:?} after shutdown");
        }
        result
    }

    /// A signal that turns `true` when the node is stopping (for the API server).
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Records the API server serving this node at `addr`; [`Node::shutdown`] waits for it.
    pub(crate) fn attach_api(&mut self, task: JoinHandle<()>, addr: SocketAddr) {
        self.api = Some(task);
        self.api_addr = Some(addr);
    }

    /// Records the RESP listener serving this node at `addr`; [`Node::shutdown`] waits for it.
    pub(crate) fn attach_resp(&mut self, task: JoinHandle<()>, addr: SocketAddr) {
        self.resp = Some(task);
        self.resp_addr = Some(addr);
    }

    /// Where the Redis-protocol listener is bound, if the region has one (`resp_addr`).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// Waits until the node stops by itself (a fatal error) and returns why.
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        (&mut self.driver).await.unwrap_or(Err(NodeError::Stopped))
    }
}

/// How a node is wired to the outside world; tests and simulations change these.
#[derive(Debug, Default)]
pub struct Wiring {
    /// A UDP socket already bound for the QUIC endpoint (tests bind port 0 first so every
    /// region knows the others' addresses before any starts). `None` binds the configured
    /// peer address.
    pub peer_socket: Option<std::net::UdpSocket>,
    /// Override of peers' QUIC addresses (with `peer_socket` in tests).
    pub peer_addrs: BTreeMap<String, SocketAddr>,
    /// Override of the API bind address (tests use port 0); `None` uses the config.
    pub api_bind: Option<SocketAddr>,
    /// Don't start the HTTP API at all.
    pub no_api: bool,
    /// Put the impairment layer under the QUIC endpoint (simulations and partition tests);
    /// its handle is [`Node::impairment`].
    pub impair: bool,
    /// Bearer token required by the API, if any (and by the RESP listener, as its password).
    pub api_token: Option<String>,
    /// Override of the RESP bind address (tests use port 0); `None` uses the region's
    /// `resp_addr`, and no RESP listener runs when that is absent too.
    pub resp_bind: Option<SocketAddr>,
    /// Added to this node's wall clock (ms; may be negative): tests and simulations model a
    /// region whose clock is skewed. Monotonic timers are unaffected.
    pub clock_offset_ms: i64,
    /// Run QUIC over this socket and quinn runtime instead of binding a UDP socket (turmoil
    /// simulations: `transport::sim::bind`). `peer_socket` is then ignored.
    pub quic: Option<(Arc<dyn quinn::AsyncUdpSocket>, Arc<dyn quinn::Runtime>)>,
    /// Simulations in virtual time: the wall clock (ms since the Unix epoch) at start, after
    /// which it advances with tokio's clock instead of reading the system's, so HLCs follow
    /// virtual time. `clock_offset_ms` still applies.
    pub wall_clock_start_ms: Option<u64>,
    /// Seed of the transport's randomness (QUIC connection ids, incarnation, redial jitter), so
    /// a simulation can repeat; `None` draws it from the OS.
    pub rng_seed: Option<[u8; 32]>,
    /// Override of the transport's per-connection send queue, in frames (tests make it tiny
    /// so that it fills); `None` keeps [`transport::mesh::DEFAULT_SEND_QUEUE_FRAMES`].
    pub send_queue_frames: Option<usize>,
}

fn now(start: Instant, clock_offset_ms: i64, wall_clock_start_ms: Option<u64>) -> Time {
    let mono_ms = start.elapsed().as_millis() as u64;
    let wall_ms = match wall_clock_start_ms {
        Some(at_start) => at_start.saturating_add(mono_ms),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    Time {
        wall_ms: wall_ms.saturating_add_signed(clock_offset_ms),
        mono_ms,
    }
}

/// Starts a region leader: opens storage, builds the state machine, starts the transport and
/// the driver. The HTTP API is started on top by [`crate::LeaderBuilder::start`] (see
/// [`crate::api::start`]), so that the runtime does not depend on the API.
pub async fn start(
    config: &Config,
    region: &str,
    registry: &Registry,
    wiring: Wiring,
) -> Result<Node, NodeError> {
    let me = config.region(region)?.clone();
    let names: Vec<&str> = registry.names().collect();
    config.check_resolvers(&names)?;
    config.check_tls(region)?;
    let store_limits = StoreLimits {
        checkpoint_bytes: config.limits.checkpoint_bytes,
        replay_chunk_bytes: config.limits.replay_chunk_bytes,
        cache_bytes: config.limits.storage_cache_bytes,
        segment_bytes: config.limits.log_segment_bytes as u64,
    };
    let opened = Store::open_with(&me.data_dir, &config.cluster, region, store_limits)?;
    if opened.created {
        info!(region, replica = %opened.replica, dir = %me.data_dir.display(), "initialised a new data directory");
    }
    let store = Arc::new(opened.store);
    let peers: Vec<String> = config
        .regions
        .iter()
        .filter(|r| r.name != region)
        .map(|r| r.name.clone())
        .collect();
    let t = &config.timeouts;
    let opts = Options {
        cluster: config.cluster.clone(),
        region: region.to_owned(),
        replica: opened.replica,
        peers: peers.clone(),
        tables: config.tables.clone(),
        max_clock_offset_ms: t.max_clock_offset_ms,
        relay_delay_ms: t.relay_delay_ms,
        heartbeat_interval_ms: t.heartbeat_interval_ms,
        peer_window_bytes: config.limits.peer_window_bytes,
        max_batch_bytes: (config.limits.max_frame_bytes / 2).max(64 * 1024),
        max_siblings: config.limits.max_siblings,
        conflict_log_capacity: config.limits.conflict_log_entries,
        log_tail_bytes: config.limits.log_tail_bytes,
        pace_lag_writes: config.limits.pace_lag_writes,
        log_retention_bytes: config.limits.log_retention_bytes,
        snapshot_chunk_bytes: config.limits.snapshot_chunk_bytes,
        learn_when_empty: true,
        anti_entropy_interval_ms: config.anti_entropy.interval_ms,
    };
    let mut replica = Replica::new(opts, registry, opened.recovered)?;
    let replayed = store.replay(|chunk| replica.replay(chunk))?;
    if replayed > 0 {
        info!(
            region,
            entries = replayed,
            "replayed the log after the last checkpoint"
        );
    }
    let release = replica.to_release();
    if !release.is_empty() {
        store.read_writes(&release, |chunk| replica.replay(chunk))?;
        info!(
            region,
            writes = release.len(),
            "applied the writes held back (quarantined) until this configuration: their table is now configured with a resolver their origin's writes accept"
        );
    }
    let held: u64 = replica.held_back().values().sum();
    if held > 0 {
        warn!(
            region,
            writes = held,
            tables = ?replica.held_back(),
            "writes stay held back (quarantined): their table is not configured here, or their origin resolved it with a resolver this one does not accept; see docs/config.md"
        );
    }

    let identity = transport::certs::load(&config.tls_dir, region)
        .map_err(|e| NodeError::Certs(e.to_string()))?;
    let peer_addrs: BTreeMap<String, SocketAddr> = config
        .regions
        .iter()
        .filter(|r| r.name != region)
        .map(|r| {
            (
                r.name.clone(),
                wiring
                    .peer_addrs
                    .get(&r.name)
                    .copied()
                    .unwrap_or(r.peer_addr),
            )
        })
        .collect();
    let link_peers = peer_addrs.clone();
    let mut mesh_config = transport::MeshConfig::new(identity, me.peer_addr, peer_addrs);
    mesh_config.max_frame_bytes = config.limits.max_frame_bytes;
    mesh_config.keep_alive = t.keep_alive();
    mesh_config.idle_timeout = t.idle_timeout();
    mesh_config.backoff_min = t.reconnect_min();
    mesh_config.backoff_max = t.reconnect_max();
    mesh_config.dial_timeout = t.dial_timeout();
    mesh_config.rng_seed = wiring.rng_seed;
    if let Some(frames) = wiring.send_queue_frames {
        mesh_config.send_queue_frames = frames;
    }
    // Split-brain fencing: a second live process claiming a peer region is refused while the
    // first one's heartbeats keep arriving (see docs/design.md, "Refinements").
    mesh_config.instance = format!("{:#}", opened.replica);
    mesh_config.peer_liveness = Some(split_brain_liveness(t));
    let bind_err = |source| {
        NodeError::Transport(format!(
            "cannot bind the peer address {}: {source}; is another process using the port?",
            me.peer_addr
        ))
    };
    let (socket, quinn_runtime) = match wiring.quic {
        Some(quic) => quic,
        None => {
            let socket = match wiring.peer_socket {
                Some(s) => s,
                None => std::net::UdpSocket::bind(me.peer_addr).map_err(bind_err)?,
            };
            let quinn_runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
            let socket = quinn_runtime.wrap_udp_socket(socket).map_err(bind_err)?;
            (socket, quinn_runtime)
        }
    };
    let (socket, socket_closed) = ClosingSocket::wrap(socket);
    let (socket, impairment) = if wiring.impair {
        let seed = u64::from_le_bytes(
            opened.replica.0.as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let (impaired, handle) = transport::impair::ImpairedSocket::wrap(socket, seed);
        // Before the mesh sends its first packet: a handshake over a link not yet impaired
        // would start QUIC's round-trip estimate at loopback speed, and its loss detection
        // would then take the first real round trips for losses (window cuts).
        apply_simulated_links(config, region, &link_peers, &handle)?;
        (impaired as Arc<dyn quinn::AsyncUdpSocket>, Some(handle))
    } else {
        (socket, None)
    };
    let (mesh, mesh_events) =
        Mesh::<PeerMsg>::start_with_socket(mesh_config, socket, quinn_runtime)
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
    let peer_addr = mesh.local_addr();

    let metrics = Arc::new(Metrics::new(region));
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (completions_tx, completions_rx) = mpsc::channel(COMPLETION_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let links = impairment.clone().map(|impairment| {
        Arc::new(LinkControl {
            impairment,
            peers: link_peers,
        })
    });
    let tables = config
        .tables
        .keys()
        .filter_map(|t| Some((t.clone(), Arc::clone(replica.resolver(t)?))))
        .collect();
    let handle = NodeHandle {
        commands: commands_tx,
        region: Arc::from(region),
        metrics: Arc::clone(&metrics),
        links,
        tables: Arc::new(tables),
    };
    let driver = Driver {
        replica,
        mesh,
        store,
        completions_tx,
        pending: BTreeMap::new(),
        waits: BTreeMap::new(),
        reads: BTreeMap::new(),
        parked: Vec::new(),
        table_durability: config.durability.clone(),
        table_read: config.read.clone(),
        write_timeout: t.write_timeout(),
        session_wait: t.session_wait(),
        next_request: 1,
        start: Instant::now(),
        clock_offset_ms: wiring.clock_offset_ms,
        wall_clock_start_ms: wiring.wall_clock_start_ms,
        metrics,
        broken: BTreeMap::new(),
        split_brain: BTreeMap::new(),
        repairs: Vec::new(),
        held: BTreeMap::new(),
    };
    let driver = tokio::spawn(driver.run(
        commands_rx,
        mesh_events,
        completions_rx,
        shutdown_rx.clone(),
    ));

    Ok(Node {
        handle,
        shutdown: shutdown_tx,
        driver,
        api: None,
        api_addr: None,
        resp: None,
        resp_addr: None,
        peer_addr,
        impairment,
        socket_closed,
    })
}

/// Applies the `[simulation]` links that leave `region` to its impairment layer.
/// `peers` maps each peer region to the address it is dialled at.
fn apply_simulated_links(
    config: &Config,
    region: &str,
    peers: &BTreeMap<String, SocketAddr>,
    handle: &transport::impair::ImpairmentHandle,
) -> Result<(), NodeError> {
    for (peer, addr) in peers {
        if let Some(link) = config.link(region, peer) {
            let impairment = transport::impair::LinkImpairment {
                latency: Duration::from_millis(link.latency_ms),
                jitter: Duration::from_millis(link.jitter_ms),
                loss: link.loss,
                blocked: false,
            };
            handle.set(*addr, impairment).map_err(|e| {
                NodeError::Transport(format!("[simulation] link {region} -> {peer}: {e}"))
            })?;
        }
    }
    Ok(())
}
