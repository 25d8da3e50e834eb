//! The node runtime: performs the state machine's effects with real I/O.
//!
//! One tokio task (the *driver*) owns the [`Replica`]. Inputs — client commands, transport
//! events, storage completions, log reads, timers — arrive on channels and become
//! [`Event`]s; the driver hands each to the state machine and performs the [`Effect`]s it
//! returns, in order. `select!` only turns inputs into events: all decisions are in the core.
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

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conflict::{KeyState, Registry, Resolver, Value, VersionVector};
use leader_core::{
    Alarm, ConflictRecord, ConnId, Counters, Durability, Effect, Event, Options, PeerMsg, PeerView,
    Replica, RequestId, Time, WriteError, WriteReceipt,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use transport::{Mesh, MeshEvent};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::{StorageError, Store, StoreLimits};

/// Bound on queued client commands: beyond it HTTP handlers wait (backpressure).
const COMMAND_QUEUE: usize = 4096;
/// Bound on requests parked waiting for their session token; beyond it they are answered
/// "behind your session" at once rather than queued without limit.
const MAX_PARKED: usize = 10_000;
/// Bound on completions (persisted batches, log reads) queued back to the driver.
const COMPLETION_QUEUE: usize = 1024;
/// How long [`Node::shutdown`] waits for the QUIC socket to close once the mesh has stopped.
/// quinn closes it from its endpoint task once every connection has drained: usually within
/// milliseconds, but a redial to a peer that has just gone, still in its handshake, holds it
/// for three probe timeouts at quinn's initial RTT estimate (about 2 s).
const SOCKET_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a peer's stream pauses after a frame could not be queued for it (link gone or
/// queue full) before the core hears of it and rewinds. Telling the core at once recursed
/// without bound: the rewind resends at once, and while the link is gone every resend fails
/// again (a stack overflow when a peer's link timed out under load). The pause also keeps a
/// congested link from spinning the driver.
const SEND_RETRY_DELAY: Duration = Duration::from_millis(20);
/// Bound on the frames held back for one stream whose send queue is full (see
/// [`Driver::held`]). Batches are bounded by the core's window (`peer_window_bytes`) and the
/// other frames come a few per commit and heartbeat, so this is reached only when a link stays
/// stuck for long; then the stream is rewound as for a lost link.
const HELD_FRAMES_MAX: usize = 65_536;

/// A request to the driver from the API or an embedding program.
#[derive(Debug)]
pub(crate) enum Command {
    Write {
        table: String,
        key: Vec<u8>,
        value: Value,
        opts: WriteOptions,
        reply: oneshot::Sender<Result<Written, RequestError>>,
    },
    Read {
        table: String,
        key: Vec<u8>,
        session: Option<VersionVector>,
        reply: oneshot::Sender<Result<(ReadResult, VersionVector), RequestError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Conflicts {
        reply: oneshot::Sender<Vec<ConflictRecord>>,
    },
    Digest {
        reply: oneshot::Sender<[u8; 32]>,
    },
    Scan {
        scan: Scan,
        reply: oneshot::Sender<Option<Listing>>,
    },
}

/// Which keys of a table to list ([`NodeHandle::scan`]).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The table.
    pub table: String,
    /// Only keys that start with these bytes.
    pub prefix: Vec<u8>,
    /// Only keys after this one (the last key of the previous page).
    pub after: Option<Vec<u8>>,
    /// At most this many keys (at least 1 is asked for).
    pub limit: usize,
}

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Keys that read as present, in key order.
    pub keys: Vec<Vec<u8>>,
    /// Whether more keys may follow: ask again with `after` = the last key.
    pub more: bool,
}

/// How a write should be made. `Default` is a blind write at the table's durability.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The causal context the client read; `None` for a blind write.
    pub context: Option<VersionVector>,
    /// Durability to wait for; `None` uses the table's default from regions.toml.
    pub durability: Option<Durability>,
    /// How long to wait for that durability; `None` uses `timeouts.write_timeout_ms`.
    pub timeout: Option<Duration>,
    /// A session token: the write waits (up to `timeouts.session_wait_ms`) until this region
    /// has applied everything it covers, so it is ordered after what the session saw.
    pub session: Option<VersionVector>,
}

/// A write that is durable here (and maybe elsewhere: see the receipt).
#[derive(Debug, Clone)]
pub struct Written {
    /// What the state machine reported.
    pub receipt: WriteReceipt,
    /// The session token to pass on: covers the caller's session and this write.
    pub session: VersionVector,
}

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The write was refused; nothing was written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// This region had not caught up with the session token in time.
    #[error(transparent)]
    Behind(#[from] Behind),
}

/// "This region is behind your session": what it lacks, so the client can retry or go
/// elsewhere.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "region {region} is behind your session: {}; waited {waited_ms} ms. Retry, or use a region that has caught up",
    describe_missing(.missing)
)]
pub struct Behind {
    /// This region.
    pub region: String,
    /// Per origin region: (region, applied here, needed by the session).
    pub missing: Vec<(String, u64, u64)>,
    /// How long the request waited.
    pub waited_ms: u64,
    /// The session token as given.
    pub session: VersionVector,
}

fn describe_missing(missing: &[(String, u64, u64)]) -> String {
    missing
        .iter()
        .map(|(r, have, need)| format!("{r} applied up to {have}, session needs {need}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The session token to hand back after seeing a key with context `seen`: the caller's
/// session joined with the part of `seen` this region has applied (a context can name writes
/// that a concurrent write superseded before they arrived here; promising those would make
/// the next read here wait for nothing it needs).
fn session_after(
    session: Option<&VersionVector>,
    seen: &VersionVector,
    applied: &VersionVector,
) -> VersionVector {
    let mut token = session.cloned().unwrap_or_default();
    for (replica, seq) in seen.iter() {
        let seq = seq.min(applied.get(replica));
        if seq > conflict::Seq::ZERO {
            token.add_dot(&conflict::Dot { replica, seq });
        }
    }
    token
}

/// A client write handed to the state machine: its session token and where to reply.
type PendingWrite = (
    Option<VersionVector>,
    oneshot::Sender<Result<Written, RequestError>>,
);

/// A request waiting for this region to catch up with its session token.
#[derive(Debug)]
struct Parked {
    need: VersionVector,
    since: Instant,
    deadline: Instant,
    cmd: Command,
}

/// The state of one key as a read sees it.
#[derive(Clone)]
pub enum ReadResult {
    /// The table is not configured.
    UnknownTable,
    /// The key's state (maybe empty) and its table's resolver.
    Found {
        /// The state (default when the key was never written).
        state: KeyState,
        /// The table's resolver.
        resolver: Arc<dyn Resolver>,
        /// Region names of the replicas that wrote the siblings.
        regions: BTreeMap<conflict::ReplicaId, String>,
    },
}

impl std::fmt::Debug for ReadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadResult::UnknownTable => f.write_str("UnknownTable"),
            ReadResult::Found {
                state, resolver, ..
            } => f
                .debug_struct("Found")
                .field("state", state)
                .field("resolver", &resolver.name())
                .finish_non_exhaustive(),
        }
    }
}

/// A region's view of itself and its peers, as the runtime holds it; the API shows it as
/// [`crate::status::Status`].
#[derive(Debug, Clone)]
pub struct Status {
    /// This region.
    pub region: String,
    /// This region's replica id.
    pub replica: conflict::ReplicaId,
    /// Durably applied writes per origin, with region names.
    pub applied: Vec<(String, conflict::ReplicaId, u64)>,
    /// Replication state towards each peer.
    pub peers: Vec<PeerView>,
    /// Transport link state per peer.
    pub links: BTreeMap<String, transport::LinkStatus>,
    /// The state machine's counters.
    pub counters: Counters,
    /// Storage commits (fsyncs) since start.
    pub commits: u64,
    /// Frames that found a peer's send queue full: that stream pauses, and its frames are held
    /// here until the queue drains.
    pub send_queue_full: u64,
    /// Keys stored.
    pub keys: usize,
    /// Latest HLC.
    pub hlc: conflict::Hlc,
    /// The full lag matrix as this region knows it (every origin → destination).
    pub matrix: Vec<leader_core::MatrixCell>,
    /// Regions whose clocks ran further ahead than `max_clock_offset_ms`: (region, lead ms).
    pub skew_alarms: Vec<(String, u64)>,
    /// (region, table, ours, theirs) for tables another region resolves differently.
    pub resolver_mismatches: Vec<(String, String, Option<String>, Option<String>)>,
    /// The configured bound on clock offsets, ms.
    pub max_clock_offset_ms: u64,
    /// Regions two live processes claim, as seen in the last
    /// [`SPLIT_BRAIN_SHOWN_FOR`]: (region, live replica, refused replica, ms since last seen).
    pub split_brain: Vec<(String, String, String, u64)>,
    /// Replicated writes logged here but not applied (quarantined), per table: the table is
    /// unknown here, or its origin resolves it differently. Applied at a start whose
    /// configuration accepts them (see docs/config.md, "Changing tables and resolvers").
    pub held_back: BTreeMap<String, u64>,
    /// `[limits] log_retention_bytes`.
    pub log_retention_bytes: u64,
    /// Bytes of the write log's segment files, and how many there are.
    pub log_size: (u64, usize),
    /// Where the log starts per origin (region, replica, last seq dropped or droppable).
    pub log_start: Vec<(String, conflict::ReplicaId, u64)>,
    /// "Needs snapshot" answers: (peer that answered, what it said). This region cannot catch
    /// up from that peer's log.
    pub snapshot_needed: Vec<(String, leader_core::NeedsSnapshot)>,
}

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

/// A cheap, clonable handle for talking to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    region: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    /// The impairment layer and the peers' addresses, when the node runs over it.
    pub(crate) links: Option<Arc<LinkControl>>,
}

/// The answer to a request handed over with [`NodeHandle::submit_write`].
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<T>);

impl<T> Pending<T> {
    /// Waits for the answer.
    pub async fn wait(self) -> Result<T, NodeError> {
        self.0.await.map_err(|_| NodeError::Stopped)
    }
}

/// Runtime control of this region's outgoing links (simulations and fault tests).
#[derive(Debug)]
pub(crate) struct LinkControl {
    pub(crate) impairment: transport::impair::ImpairmentHandle,
    pub(crate) peers: BTreeMap<String, SocketAddr>,
}

impl NodeHandle {
    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        self.submit(make).await?.wait().await
    }

    /// Hands a request to the region's driver without waiting for its answer: requests are
    /// taken in the order they are submitted.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<Pending<T>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(Pending(rx))
    }

    /// [`NodeHandle::write_with`], handed over now and answered later: writes submitted one
    /// after another (a client's pipeline) enter the state machine in that order and share
    /// its group commits, while the caller waits for none of them until it needs the answers.
    pub async fn submit_write(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        opts: WriteOptions,
    ) -> Result<Pending<Result<Written, RequestError>>, NodeError> {
        let (table, key) = (table.to_owned(), key.to_vec());
        self.submit(|reply| Command::Write {
            table,
            key,
            value,
            opts,
            reply,
        })
        .await
    }

    /// Writes a value (or a tombstone) at durability `local`; resolves when the write is
    /// durable here.
    pub async fn write(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        context: Option<VersionVector>,
    ) -> Result<Result<WriteReceipt, WriteError>, NodeError> {
        let opts = WriteOptions {
            context,
            durability: Some(Durability::Local),
            ..WriteOptions::default()
        };
        Ok(match self.write_with(table, key, value, opts).await? {
            Ok(w) => Ok(w.receipt),
            Err(RequestError::Write(e)) => Err(e),
            Err(RequestError::Behind(_)) => unreachable!("no session token was given"),
        })
    }

    /// Writes with explicit options (context, durability, timeout, session token).
    pub async fn write_with(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        opts: WriteOptions,
    ) -> Result<Result<Written, RequestError>, NodeError> {
        self.submit_write(table, key, value, opts)
            .await?
            .wait()
            .await
    }

    /// Reads a key's state.
    pub async fn read(&self, table: &str, key: &[u8]) -> Result<ReadResult, NodeError> {
        match self.read_with(table, key, None).await? {
            Ok((r, _)) => Ok(r),
            Err(_) => unreachable!("no session token was given"),
        }
    }

    /// Reads a key's state once this region has applied everything `session` covers
    /// (waiting up to `timeouts.session_wait_ms`), and returns the session token to pass on.
    pub async fn read_with(
        &self,
        table: &str,
        key: &[u8],
        session: Option<VersionVector>,
    ) -> Result<Result<(ReadResult, VersionVector), RequestError>, NodeError> {
        let (table, key) = (table.to_owned(), key.to_vec());
        self.ask(|reply| Command::Read {
            table,
            key,
            session,
            reply,
        })
        .await
    }

    /// The region's status.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// The conflict log, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<ConflictRecord>, NodeError> {
        self.ask(|reply| Command::Conflicts { reply }).await
    }

    /// SHA-256 over every key state: equal digests mean equal data.
    pub async fn digest(&self) -> Result<[u8; 32], NodeError> {
        self.ask(|reply| Command::Digest { reply }).await
    }

    /// One page of the keys of a table that read as present (`None`: the table is not
    /// configured). Resume with `after` = the last key returned: see [`Replica::scan`].
    ///
    /// [`Replica::scan`]: leader_core::Replica::scan
    pub async fn scan(&self, scan: Scan) -> Result<Option<Listing>, NodeError> {
        self.ask(|reply| Command::Scan { scan, reply }).await
    }
}

/// Inputs that come back to the driver from storage and log reads.
#[derive(Debug)]
enum Completion {
    Persisted(u64),
    PersistFailed(StorageError),
    LogRead(Event),
}

/// Everything the driver owns.
struct Driver {
    replica: Replica,
    mesh: Mesh<PeerMsg>,
    store: Arc<Store>,
    completions_tx: mpsc::Sender<Completion>,
    pending: BTreeMap<RequestId, PendingWrite>,
    parked: Vec<Parked>,
    /// Split brains seen, per region: (live, refused, when last seen).
    split_brain: BTreeMap<String, (String, String, Instant)>,
    table_durability: BTreeMap<String, Durability>,
    write_timeout: Duration,
    session_wait: Duration,
    next_request: RequestId,
    start: Instant,
    clock_offset_ms: i64,
    /// See [`Wiring::wall_clock_start_ms`].
    wall_clock_start_ms: Option<u64>,
    metrics: Arc<Metrics>,
    /// Streams with a frame that could not be queued, and when the core is told
    /// ([`Event::SendFailed`]). Until then nothing more is sent on them, so the peer never
    /// sees a gap: the core's rewind resends everything from the peer's acknowledged position.
    broken: BTreeMap<(String, ConnId), Instant>,
    /// Streams whose send queue was full: the frames not queued yet, in order, and when to
    /// try again. They are sent as the queue drains. (Dropping them and rewinding the stream
    /// to the peer's acknowledged position, as for a lost link, resent everything the peer had
    /// not acknowledged yet, most of it still queued: on a congested link every rewind added
    /// up to a window of duplicates, which congested it further.)
    held: BTreeMap<(String, ConnId), (VecDeque<PeerMsg>, Instant)>,
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
    let handle = NodeHandle {
        commands: commands_tx,
        region: Arc::from(region),
        metrics: Arc::clone(&metrics),
        links,
    };
    let driver = Driver {
        replica,
        mesh,
        store,
        completions_tx,
        pending: BTreeMap::new(),
        parked: Vec::new(),
        table_durability: config.durability.clone(),
        write_timeout: t.write_timeout(),
        session_wait: t.session_wait(),
        next_request: 1,
        start: Instant::now(),
        clock_offset_ms: wiring.clock_offset_ms,
        wall_clock_start_ms: wiring.wall_clock_start_ms,
        metrics,
        broken: BTreeMap::new(),
        split_brain: BTreeMap::new(),
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

/// The QUIC endpoint's UDP socket, wrapped so that [`Node::shutdown`] learns when it is closed:
/// the sender is dropped after the socket (fields drop in order), when the last reference —
/// quinn's endpoint task or an I/O poller — lets go of it.
#[derive(Debug)]
struct ClosingSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    _closed: oneshot::Sender<()>,
}

impl ClosingSocket {
    fn wrap(
        inner: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> (Arc<dyn quinn::AsyncUdpSocket>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let socket = Arc::new(ClosingSocket { inner, _closed: tx });
        (socket, rx)
    }
}

impl quinn::AsyncUdpSocket for ClosingSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        // The inner poller holds the inner socket; holding `self` too keeps the closed signal
        // from firing while a poller still keeps the socket open.
        Box::pin(ClosingPoller {
            inner: Arc::clone(&self.inner).create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// An I/O poller of a [`ClosingSocket`]; drops the inner poller before the socket.
#[derive(Debug)]
struct ClosingPoller {
    inner: std::pin::Pin<Box<dyn quinn::UdpPoller>>,
    _socket: Arc<ClosingSocket>,
}

impl quinn::UdpPoller for ClosingPoller {
    fn poll_writable(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_writable(cx)
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut mesh_events: mpsc::Receiver<MeshEvent<PeerMsg>>,
        mut completions: mpsc::Receiver<Completion>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let mut effects = Vec::new();
        let result = loop {
            let parked_deadline = self.parked.iter().map(|p| p.deadline).min();
            let wake = self
                .replica
                .poll_timeout()
                .map(|ms| self.start + Duration::from_millis(ms))
                .into_iter()
                .chain(parked_deadline)
                .chain(self.broken.values().min().copied())
                .chain(self.held.values().map(|(_, at)| *at).min())
                .min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
                Some(cmd) = commands.recv() => match self.command(cmd) {
                    Some(ev) => ev,
                    None => continue,
                },
                Some(ev) = mesh_events.recv() => match self.mesh_event(ev) {
                    Some(ev) => ev,
                    None => continue,
                },
                Some(done) = completions.recv() => match done {
                    Completion::Persisted(id) => Event::Persisted { id },
                    Completion::LogRead(ev) => ev,
                    Completion::PersistFailed(e) => {
                        error!("storage failed, stopping this region: {e}");
                        break Err(NodeError::Storage(e));
                    }
                },
                () = sleep => Event::Tick,
            };
            self.handle(event, &mut effects);
            self.unpark(&mut effects);
            self.rewind_broken(&mut effects);
            self.flush_held();
        };
        self.finish(completions).await;
        result
    }

    /// Lets the outstanding persist finish (its writes reach the disk even though their clients
    /// are no longer answered) and closes the links.
    async fn finish(self, mut completions: mpsc::Receiver<Completion>) {
        let Driver {
            mesh,
            completions_tx,
            ..
        } = self;
        // With the driver's sender gone the channel closes once the persist and any log read
        // in progress have reported (their blocking tasks hold the other senders).
        drop(completions_tx);
        let drain = async { while completions.recv().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            warn!("storage did not finish within 10 s of shutdown");
        }
        mesh.shutdown().await;
    }

    /// The time as the core sees it.
    fn now(&self) -> Time {
        now(self.start, self.clock_offset_ms, self.wall_clock_start_ms)
    }

    fn handle(&mut self, event: Event, effects: &mut Vec<Effect>) {
        self.replica.handle(self.now(), event, effects);
        for effect in effects.drain(..) {
            self.perform(effect);
        }
    }

    /// Tells the core about the streams whose pause after a failed send is over. A resend that
    /// fails again pauses its stream anew: it is not retried within this call.
    fn rewind_broken(&mut self, effects: &mut Vec<Effect>) {
        let at = Instant::now();
        let due: Vec<(String, ConnId)> = self
            .broken
            .iter()
            .filter(|(_, when)| **when <= at)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in due {
            self.broken.remove(&stream);
            let (peer, conn) = stream;
            self.handle(Event::SendFailed { peer, conn }, effects);
        }
    }

    /// Queues the held frames of every stream whose retry time has come, in order, until its
    /// queue is full again; a stream whose link is gone is rewound instead.
    fn flush_held(&mut self) {
        let at = Instant::now();
        let due: Vec<(String, ConnId)> = self
            .held
            .iter()
            .filter(|(_, (_, when))| *when <= at)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in due {
            let Some((mut frames, _)) = self.held.remove(&stream) else {
                continue;
            };
            while let Some(msg) = frames.pop_front() {
                match self.mesh.try_send(&stream.0, &msg) {
                    Ok(()) => {}
                    Err(transport::SendError::Full(_)) => {
                        frames.push_front(msg);
                        self.held
                            .insert(stream.clone(), (frames, at + SEND_RETRY_DELAY));
                        break;
                    }
                    Err(e) => {
                        debug!(peer = %stream.0, conn = stream.1, "held frames not sent: {e}; rewinding in {SEND_RETRY_DELAY:?}");
                        self.broken.insert(stream.clone(), at + SEND_RETRY_DELAY);
                        break;
                    }
                }
            }
        }
    }

    /// Serves parked requests whose session this region now covers, and answers those whose
    /// wait has run out with "behind your session".
    fn unpark(&mut self, effects: &mut Vec<Effect>) {
        if self.parked.is_empty() {
            return;
        }
        let at = Instant::now();
        for p in std::mem::take(&mut self.parked) {
            if self.covers(&p.cmd, &p.need) {
                if let Some(ev) = self.serve(p.cmd) {
                    self.handle(ev, effects);
                }
            } else if at >= p.deadline {
                let behind = self.behind(&p.cmd, &p.need, at.duration_since(p.since));
                refuse_behind(p.cmd, behind);
            } else {
                self.parked.push(p);
            }
        }
    }

    /// Whether this region has what a session token needs for `cmd`. A write needs the
    /// token's writes applied (its context is checked against what is applied). A read needs
    /// them durable too: it is served from the newest durable state of its key
    /// ([`Replica::read`]), which holds a write applied here only once it is persisted.
    fn covers(&self, cmd: &Command, need: &VersionVector) -> bool {
        self.have(cmd).dominates(need)
    }

    fn have(&self, cmd: &Command) -> &VersionVector {
        match cmd {
            Command::Read { .. } => self.replica.applied(),
            _ => self.replica.received(),
        }
    }

    fn behind(&self, cmd: &Command, need: &VersionVector, waited: Duration) -> Behind {
        let have = self.have(cmd);
        let missing = need
            .iter()
            .filter(|(r, s)| have.get(*r) < *s)
            .map(|(r, s)| {
                let region = self
                    .replica
                    .region_of(&r)
                    .map_or_else(|| r.to_string(), str::to_owned);
                (region, have.get(r).0, s.0)
            })
            .collect();
        Behind {
            region: self.replica.options().region.clone(),
            missing,
            waited_ms: waited.as_millis() as u64,
            session: need.clone(),
        }
    }

    /// Serves a command, or parks it while this region is behind its session token.
    fn command(&mut self, cmd: Command) -> Option<Event> {
        let session = match &cmd {
            Command::Write { opts, .. } => opts.session.as_ref(),
            Command::Read { session, .. } => session.as_ref(),
            _ => None,
        };
        if let Some(need) = session.filter(|s| !self.covers(&cmd, s)) {
            if self.parked.len() >= MAX_PARKED {
                let behind = self.behind(&cmd, need, Duration::ZERO);
                refuse_behind(cmd, behind);
                return None;
            }
            let since = Instant::now();
            let need = need.clone();
            self.parked.push(Parked {
                need,
                since,
                deadline: since + self.session_wait,
                cmd,
            });
            return None;
        }
        self.serve(cmd)
    }

    fn serve(&mut self, cmd: Command) -> Option<Event> {
        match cmd {
            Command::Write {
                table,
                key,
                value,
                opts,
                reply,
            } => {
                let id = self.next_request;
                self.next_request += 1;
                let durability = opts
                    .durability
                    .or_else(|| self.table_durability.get(&table).copied())
                    .unwrap_or_default();
                let timeout_ms = opts.timeout.unwrap_or(self.write_timeout).as_millis() as u64;
                self.pending.insert(id, (opts.session, reply));
                return Some(Event::ClientWrite {
                    id,
                    table,
                    key,
                    value,
                    context: opts.context,
                    durability,
                    timeout_ms,
                });
            }
            Command::Read {
                table,
                key,
                session,
                reply,
            } => {
                let _ = reply.send(Ok(self.read(&table, &key, session)));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Conflicts { reply } => {
                let _ = reply.send(self.replica.conflicts().cloned().collect());
            }
            Command::Digest { reply } => {
                let _ = reply.send(self.replica.digest());
            }
            Command::Scan { scan, reply } => {
                let listing = self.replica.resolver(&scan.table).is_some().then(|| {
                    let after = scan.after.as_deref();
                    let limit = scan.limit.max(1);
                    let (keys, more) = self.replica.scan(&scan.table, &scan.prefix, after, limit);
                    Listing { keys, more }
                });
                let _ = reply.send(listing);
            }
        }
        None
    }

    fn read(
        &self,
        table: &str,
        key: &[u8],
        session: Option<VersionVector>,
    ) -> (ReadResult, VersionVector) {
        let Some(resolver) = self.replica.resolver(table) else {
            return (ReadResult::UnknownTable, session.unwrap_or_default());
        };
        // The newest durable state: never waits for a commit (see Replica::read).
        let state = self.replica.read(table, key).cloned().unwrap_or_default();
        let token = session_after(session.as_ref(), &state.context, self.replica.received());
        let regions = state
            .siblings
            .iter()
            .filter_map(|s| {
                self.replica
                    .region_of(&s.dot.replica)
                    .map(|r| (s.dot.replica, r.to_owned()))
            })
            .collect();
        (
            ReadResult::Found {
                state,
                resolver: Arc::clone(resolver),
                regions,
            },
            token,
        )
    }

    fn status(&self) -> Status {
        let applied = self
            .replica
            .applied()
            .iter()
            .map(|(r, s)| (self.replica.region_of(&r).unwrap_or("?").to_owned(), r, s.0))
            .collect();
        Status {
            region: self.replica.options().region.clone(),
            replica: self.replica.options().replica,
            applied,
            peers: self.replica.peer_views(self.now()),
            links: self.mesh.links(),
            counters: self.replica.counters().clone(),
            commits: self.store.commits(),
            send_queue_full: self.metrics.send_queue_full(),
            keys: self.replica.keys().count(),
            hlc: self.replica.hlc(),
            matrix: self.replica.matrix(self.now()),
            skew_alarms: self.replica.skew_alarms(),
            resolver_mismatches: self.replica.resolver_mismatches(),
            held_back: self.replica.held_back().clone(),
            log_retention_bytes: self.replica.options().log_retention_bytes,
            log_size: self.store.log_size(),
            log_start: self
                .replica
                .log_start()
                .iter()
                .map(|(r, s)| (self.replica.region_of(&r).unwrap_or("?").to_owned(), r, s.0))
                .collect(),
            snapshot_needed: self.replica.snapshot_needed(),
            max_clock_offset_ms: self.replica.options().max_clock_offset_ms,
            split_brain: self
                .split_brain
                .iter()
                .filter(|(_, (_, _, at))| at.elapsed() < SPLIT_BRAIN_SHOWN_FOR)
                .map(|(region, (live, refused, at))| {
                    let ago = at.elapsed().as_millis() as u64;
                    (region.clone(), live.clone(), refused.clone(), ago)
                })
                .collect(),
        }
    }

    fn mesh_event(&mut self, ev: MeshEvent<PeerMsg>) -> Option<Event> {
        Some(match ev {
            MeshEvent::Up { peer, conn_id } => {
                info!(%peer, conn_id, "link up");
                Event::PeerUp {
                    peer,
                    conn: conn_id,
                }
            }
            MeshEvent::Down {
                peer,
                conn_id,
                reason,
            } => {
                info!(%peer, conn_id, %reason, "link down");
                // Frames held for it would go out on the peer's next connection, ahead of its
                // hello: the core restarts that stream from the acknowledgements anyway.
                self.held.remove(&(peer.clone(), conn_id));
                Event::PeerDown {
                    peer,
                    conn: conn_id,
                }
            }
            MeshEvent::Frame { peer, conn_id, msg } => Event::Frame {
                peer,
                conn: conn_id,
                msg,
            },
            MeshEvent::Rejected { remote, reason } => {
                warn!(%remote, %reason, "refused a peer connection");
                return None;
            }
            MeshEvent::SplitBrain {
                peer,
                live,
                refused,
            } => {
                // The transport refused the second process already; here it is counted,
                // logged and shown (the state machine never saw that connection).
                let parse = |s: &str| s.parse::<uuid::Uuid>().ok().map(conflict::ReplicaId);
                if let (Some(l), Some(r)) = (parse(&live), parse(&refused)) {
                    self.perform(Effect::Alarm(Alarm::SplitBrain {
                        region: peer,
                        live: l,
                        refused: r,
                    }));
                } else {
                    warn!(%peer, %live, %refused, "split brain: two live processes claim one region");
                    self.split_brain
                        .insert(peer, (live, refused, Instant::now()));
                }
                return None;
            }
        })
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(batch) => {
                self.metrics.persist_batch(&batch);
                let store = Arc::clone(&self.store);
                let tx = self.completions_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let id = batch.id;
                    let completion = match store.persist(batch) {
                        Ok(()) => Completion::Persisted(id),
                        Err(e) => Completion::PersistFailed(e),
                    };
                    // A closed channel means the driver has gone: nobody waits for the reply.
                    let _ = tx.blocking_send(completion);
                });
            }
            Effect::Send { peer, conn, msg } => {
                let stream = (peer, conn);
                if self.broken.contains_key(&stream) {
                    // Behind a lost frame: dropped, the rewind resends it.
                    return;
                }
                if let Some((frames, _)) = self.held.get_mut(&stream) {
                    if frames.len() < HELD_FRAMES_MAX {
                        frames.push_back(msg);
                        return;
                    }
                    warn!(peer = %stream.0, conn, "{HELD_FRAMES_MAX} frames held for a full send queue; dropping them and rewinding the stream");
                    self.held.remove(&stream);
                    self.broken
                        .insert(stream, Instant::now() + SEND_RETRY_DELAY);
                    return;
                }
                match self.mesh.try_send(&stream.0, &msg) {
                    Ok(()) => {}
                    Err(transport::SendError::Full(_)) => {
                        self.metrics.count_send_queue_full();
                        let retry = Instant::now() + SEND_RETRY_DELAY;
                        self.held.insert(stream, (VecDeque::from([msg]), retry));
                    }
                    Err(e) => {
                        debug!(peer = %stream.0, conn, "send failed: {e}; rewinding in {SEND_RETRY_DELAY:?}");
                        self.broken
                            .insert(stream, Instant::now() + SEND_RETRY_DELAY);
                    }
                }
            }
            Effect::Close { peer, conn, reason } => {
                // The QUIC close frame carries the reason to the peer; the link redials with
                // backoff and the next hello is judged afresh.
                warn!(%peer, conn, %reason, "closing connection");
                self.mesh.close(&peer, conn, &reason);
            }
            Effect::ReadLog {
                peer,
                conn,
                origin,
                from,
                to,
                max_bytes,
            } => {
                let store = Arc::clone(&self.store);
                let tx = self.completions_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let entries = match store.read_log(origin, from, to, max_bytes) {
                        Ok(entries) => entries,
                        Err(e) => {
                            error!(%peer, "log read failed: {e}");
                            Vec::new()
                        }
                    };
                    let _ = tx.blocking_send(Completion::LogRead(Event::LogRead {
                        peer,
                        conn,
                        origin,
                        entries,
                    }));
                });
            }
            Effect::Reply { id, result } => {
                if let Some((session, reply)) = self.pending.remove(&id) {
                    let result = result.map_err(RequestError::from).map(|receipt| {
                        let applied = self.replica.received();
                        let session = session_after(session.as_ref(), &receipt.context, applied);
                        Written { receipt, session }
                    });
                    let _ = reply.send(result);
                }
            }
            Effect::Alarm(alarm) => {
                self.metrics.alarm(&alarm);
                if let Alarm::SplitBrain {
                    region,
                    live,
                    refused,
                } = &alarm
                {
                    let seen = (format!("{live:#}"), format!("{refused:#}"), Instant::now());
                    self.split_brain.insert(region.clone(), seen);
                }
                match &alarm {
                    Alarm::ClockSkew { .. } => debug!(?alarm, "alarm"),
                    _ => warn!(?alarm, "alarm"),
                }
            }
        }
    }
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

/// Answers a parked request with "behind your session".
fn refuse_behind(cmd: Command, behind: Behind) {
    match cmd {
        Command::Write { reply, .. } => drop(reply.send(Err(behind.into()))),
        Command::Read { reply, .. } => drop(reply.send(Err(behind.into()))),
        // Only writes and reads carry session tokens.
        Command::Status { .. }
        | Command::Conflicts { .. }
        | Command::Digest { .. }
        | Command::Scan { .. } => {}
    }
}
