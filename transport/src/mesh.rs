//! The mesh: one QUIC endpoint per region, one link per peer region, typed frames in and out.
//!
//! A region's [`Mesh`] listens on its peer address, dials every peer (see the dial rule in
//! [`link`](crate::link)), authenticates each connection by its certificate, and hands the
//! caller a stream of [`MeshEvent`]s: `Up`, `Frame`, `Down` per connection, and `Rejected`
//! for refused handshakes.
//!
//! # Delivery
//!
//! Frames sent to one peer travel on one QUIC unidirectional stream per connection and
//! direction, so they arrive in the order they were sent, for as long as that connection
//! lives. Frames still queued or in flight when a connection dies are lost: the transport
//! does not replay them on the next connection. The application resynchronises after every
//! `Up` (the leader redoes its hello and resends from its log).
//!
//! # Bounds and backpressure
//!
//! - Per connection, a send queue of `send_queue_frames` frames. [`Mesh::send`] waits when it
//!   is full, [`Mesh::try_send`] returns [`SendError::Full`]. The queue drains into the QUIC
//!   stream, whose flow control is the end-to-end backpressure from a slow receiver.
//! - The event channel holds `event_queue` events. When the consumer is slow, each
//!   connection's reader waits to deliver its next frame, stops reading its stream, and QUIC
//!   flow control pushes back on the sending region. `Rejected` events are the exception:
//!   they are diagnostics and are dropped (and logged) when the channel is full.
//! - At most [`MAX_PENDING_HANDSHAKES`] incoming handshakes are served at once; more are
//!   refused at the QUIC level.
//!
//! Do not `await` [`Mesh::send`] on the task that drains the events of the same mesh: if the
//! peer is itself blocked sending to this region, both would wait on each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::certs::{Identity, server_name, validate_cluster, validate_region};
use crate::codec::{DEFAULT_MAX_FRAME_BYTES, FrameError, MAX_FRAME_BYTES_LIMIT, encode_frame};
use crate::conn::{self, Outcome};
use crate::link::{Link, LinkStatus, Side, close, lock};
use crate::shared::{Settings, Shared};
use crate::tls::{self, TlsError};

pub use crate::shared::{MeshEvent, Message};

/// Default keep-alive interval: well under the idle timeout, so an idle but healthy link
/// never times out.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Default idle timeout: how long a silent peer is kept before its link goes down.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first reconnect delay.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default bound on one dial attempt's QUIC and TLS handshake. A dial into a partition otherwise
/// waits out the whole idle timeout, retransmitting its first packet ever more rarely (1 s,
/// 2 s, 4 s ...), so a healed link would stay down for seconds after the network is back. An
/// attempt that times out is followed at once by the next (no backoff: the attempt was the
/// wait), so a partition is probed about once per second (QUIC's first retransmission) and a
/// healed link is found within about one second.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default per-connection send queue, in frames.
pub const DEFAULT_SEND_QUEUE_FRAMES: usize = 1024;
/// Default event channel capacity, in events.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;
/// Default time a peer has to send its transport hello after the TLS handshake.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming handshakes served at once; beyond this, new connection attempts are refused.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// QUIC loss detection: how many later packets must be acknowledged before an unacknowledged
/// one counts as lost. RFC 9002's 3 assumes paths that hardly reorder; WAN paths with jitter
/// (and the impairment layer, like Linux netem) reorder datagrams sent less than the jitter
/// apart, which at replication rates is dozens of packets. Each such packet was declared lost,
/// retransmitted, and cut the congestion window (quinn has no undo for spurious losses), so a
/// jittery 20 ms link carried a small fraction of what it could. Loss is detected by time
/// alone instead ([`REORDER_TIME_THRESHOLD`], as RACK does in TCP).
pub const REORDER_PACKET_THRESHOLD: u32 = 1 << 20;
/// QUIC loss detection: an unacknowledged packet counts as lost once a later one is
/// acknowledged and this many round trips have passed since it was sent. RFC 9002 says 9/8.
/// Under sustained load over 20 ms ± 2 ms links 3/2 was not enough: connections fell into a
/// state of hundreds of window cuts a minute without losing a packet (the window then sits
/// at a few packets, sent in bursts that jitter reorders); with 2 they did not (A/B in
/// docs/benchmarks.md). Real loss is detected one round trip later than RFC 9002's.
pub const REORDER_TIME_THRESHOLD: f32 = 2.0;
/// Default bound on how long [`Mesh::shutdown`] waits for closing connections to drain.
/// The close frames go out at once; the wait only absorbs retransmissions, and a dial still
/// in its handshake would otherwise hold shutdown for three probe timeouts (seconds).
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// How to run one region's mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The cluster; peers must name the same one in their certificates and hellos.
    pub cluster: String,
    /// This region; must be the region named in `identity`.
    pub region: String,
    /// The UDP address to listen on (peers dial it); used by [`Mesh::start`] only.
    pub bind: SocketAddr,
    /// Every other region and the address it listens on. Only these regions are admitted.
    pub peers: BTreeMap<String, SocketAddr>,
    /// This region's certificate, key and the cluster CA.
    pub identity: Identity,
    /// Largest frame payload sent or accepted, in bytes.
    pub max_frame_bytes: usize,
    /// QUIC keep-alive interval; must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connection silent for this long is down.
    pub idle_timeout: Duration,
    /// First reconnect delay after a failed dial or a lost connection.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// A dial attempt that has not completed its handshake after this long is abandoned and
    /// the next one starts at once (no backoff: the attempt itself was the wait).
    pub dial_timeout: Duration,
    /// Per-connection send queue, in frames.
    pub send_queue_frames: usize,
    /// Event channel capacity, in events.
    pub event_queue: usize,
    /// Time a peer has to send its transport hello after the TLS handshake.
    pub hello_timeout: Duration,
    /// Longest wait in [`Mesh::shutdown`] for closed connections to drain.
    pub shutdown_drain: Duration,
    /// Seed for quinn's endpoint randomness, the incarnation and backoff jitter; set it for
    /// reproducible simulations, leave it `None` in production.
    pub rng_seed: Option<[u8; 32]>,
    /// What the application calls this process, sent in the transport hello and named in
    /// split-brain reports (Meridian: the replica id). Empty by default.
    pub instance: String,
    /// Split-brain fencing. `None` (the default): a connection from a new incarnation of a
    /// peer always replaces the current one (the peer restarted). `Some(d)`: it replaces the
    /// current one only once no frame has arrived on that for `d`; while the current process
    /// is alive the newcomer is refused, and once the current one is seen alive after the
    /// newcomer first came, [`MeshEvent::SplitBrain`] reports two live processes for one
    /// region. Set it to a few times the interval at which the application sends frames
    /// (Meridian: 4 heartbeats).
    pub peer_liveness: Option<Duration>,
}

impl MeshConfig {
    /// A configuration with the defaults above; cluster and region come from `identity`.
    pub fn new(identity: Identity, bind: SocketAddr, peers: BTreeMap<String, SocketAddr>) -> Self {
        MeshConfig {
            cluster: identity.cluster.clone(),
            region: identity.region.clone(),
            bind,
            peers,
            identity,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            send_queue_frames: DEFAULT_SEND_QUEUE_FRAMES,
            event_queue: DEFAULT_EVENT_QUEUE,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            shutdown_drain: DEFAULT_SHUTDOWN_DRAIN,
            rng_seed: None,
            instance: String::new(),
            peer_liveness: None,
        }
    }

    /// Checks the configuration, with a message naming the field at fault.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |msg: String| Err(TransportError::Config(msg));
        validate_cluster(&self.cluster).map_err(|e| TransportError::Config(e.to_string()))?;
        validate_region(&self.region).map_err(|e| TransportError::Config(e.to_string()))?;
        if self.identity.cluster != self.cluster || self.identity.region != self.region {
            return bad(format!(
                "the certificate is for region {:?} of cluster {:?}, but the configuration is for region {:?} of cluster {:?}",
                self.identity.region, self.identity.cluster, self.region, self.cluster
            ));
        }
        for peer in self.peers.keys() {
            validate_region(peer).map_err(|e| TransportError::Config(e.to_string()))?;
            if *peer == self.region {
                return bad(format!("peers lists this region {peer:?} itself"));
            }
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return bad(format!(
                "max_frame_bytes is {}; it must be between 1 and {MAX_FRAME_BYTES_LIMIT}",
                self.max_frame_bytes
            ));
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad(format!(
                "keep_alive ({:?}) must be non-zero and shorter than idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad(format!(
                "backoff_min ({:?}) must be non-zero and at most backoff_max ({:?})",
                self.backoff_min, self.backoff_max
            ));
        }
        if self.dial_timeout.is_zero() {
            return bad("dial_timeout must be non-zero".into());
        }
        if self.send_queue_frames == 0 || self.event_queue == 0 {
            return bad("send_queue_frames and event_queue must be at least 1".into());
        }
        if self.hello_timeout.is_zero() {
            return bad("hello_timeout must be non-zero".into());
        }
        Ok(())
    }
}

/// Why a mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is inconsistent; the message names the field.
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    /// The certificates could not be turned into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("could not bind UDP {addr}: {source} (is another process using the port?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// quinn could not create the endpoint over the socket.
    #[error("could not create the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Why a message was not queued for sending.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The region is not in this mesh's peers.
    #[error("region {0:?} is not a configured peer")]
    UnknownPeer(String),
    /// The link to the peer is not up; the message was dropped. Resend after the next `Up`.
    #[error("no live connection to region {0:?}; the message was not sent")]
    NotConnected(String),
    /// The send queue is full (`try_send` only): the peer or the network is slower than the
    /// sender.
    #[error("the send queue to region {0:?} is full; slow down or use send(), which waits")]
    Full(String),
    /// `send_on` named a connection that is no longer the link's current one.
    #[error("connection {conn_id} to region {peer:?} is gone; the message was not sent")]
    Stale {
        /// The peer.
        peer: String,
        /// The connection asked for.
        conn_id: u64,
    },
    /// The message cannot be framed (too large for `max_frame_bytes`, or unserialisable).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The mesh has been shut down.
    #[error("the mesh has been shut down")]
    ShutDown,
}

/// A running region mesh. Cheap to clone (an `Arc` inside); every clone drives the same
/// mesh. Stop it with [`Mesh::shutdown`]: dropping the handles does not stop its tasks.
pub struct Mesh<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Mesh<M> {
    fn clone(&self) -> Self {
        Mesh {
            shared: self.shared.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Mesh<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("region", &self.shared.settings.region)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl<M: Message> Mesh<M> {
    /// Binds a UDP socket on `config.bind` and starts the mesh on tokio.
    pub async fn start(
        config: MeshConfig,
    ) -> Result<(Mesh<M>, mpsc::Receiver<MeshEvent<M>>), TransportError> {
        config.validate()?;
        let bind_err = |source| TransportError::Bind {
            addr: config.bind,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.bind).map_err(bind_err)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
        Self::start_with_socket(config, socket, runtime).await
    }

    /// Starts the mesh over a given socket and runtime: the impairment wrapper and the
    /// turmoil adapter come in here. `config.bind` is ignored; the socket's address is used.
    pub async fn start_with_socket(
        config: MeshConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> Result<(Mesh<M>, mpsc::Receiver<MeshEvent<M>>), TransportError> {
        config.validate()?;
        let transport = Arc::new(transport_config(&config)?);
        let mut server_config =
            quinn::ServerConfig::with_crypto(tls::server_crypto(&config.identity)?);
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(tls::client_crypto(&config.identity)?);
        client_config.transport_config(transport);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.rng_seed(config.rng_seed);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(TransportError::Endpoint)?;
        let local_addr = endpoint.local_addr().map_err(TransportError::Endpoint)?;

        let mut rng = match config.rng_seed {
            Some(seed) => StdRng::from_seed(seed),
            None => StdRng::from_os_rng(),
        };
        let incarnation = rng.random::<u64>();
        let links: BTreeMap<_, _> = config
            .peers
            .iter()
            .map(|(peer, addr)| {
                (
                    peer.clone(),
                    Arc::new(Link::new(&config.region, peer, *addr, config.peer_liveness)),
                )
            })
            .collect();
        let backoff_seeds: Vec<u64> = links.keys().map(|_| rng.random()).collect();
        let (events_tx, events_rx) = mpsc::channel(config.event_queue);
        let shared = Arc::new(Shared {
            settings: Settings {
                cluster: config.cluster.clone(),
                region: config.region.clone(),
                max_frame_bytes: config.max_frame_bytes,
                send_queue_frames: config.send_queue_frames,
                hello_timeout: config.hello_timeout,
                shutdown_drain: config.shutdown_drain,
                dial_timeout: config.dial_timeout,
                instance: config.instance.clone(),
            },
            incarnation,
            endpoint,
            client_config,
            links,
            events: Mutex::new(Some(events_tx)),
            next_conn_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            local_addr,
        });
        info!(region = %config.region, cluster = %config.cluster, %local_addr, peers = ?shared.peer_names(), "mesh started");
        shared.spawn(accept_loop(shared.clone()));
        for (link, seed) in shared.links.values().zip(backoff_seeds) {
            let backoff = Backoff::new(config.backoff_min, config.backoff_max, seed);
            shared.spawn(dial_loop(shared.clone(), link.clone(), backoff));
        }
        Ok((Mesh { shared }, events_rx))
    }

    /// The address the endpoint listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This region's name.
    pub fn region(&self) -> &str {
        &self.shared.settings.region
    }

    /// Queues `msg` for `peer`, waiting while the connection's send queue is full.
    ///
    /// `Ok` means queued on the current connection, not delivered: if that connection dies
    /// first, the message is lost (see the module docs).
    pub async fn send(&self, peer: &str, msg: &M) -> Result<(), SendError> {
        let (frame, tx) = self.prepare(peer, None, msg)?;
        tx.send(frame)
            .await
            .map_err(|_| SendError::NotConnected(peer.to_owned()))
    }

    /// Like [`send`](Self::send), but only on connection `conn_id`: a message meant for a
    /// connection (after its application hello) never lands on its successor.
    pub async fn send_on(&self, peer: &str, conn_id: u64, msg: &M) -> Result<(), SendError> {
        let (frame, tx) = self.prepare(peer, Some(conn_id), msg)?;
        tx.send(frame).await.map_err(|_| SendError::Stale {
            peer: peer.to_owned(),
            conn_id,
        })
    }

    /// Queues `msg` for `peer`, or fails with [`SendError::Full`] instead of waiting.
    pub fn try_send(&self, peer: &str, msg: &M) -> Result<(), SendError> {
        let (frame, tx) = self.prepare(peer, None, msg)?;
        tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full(peer.to_owned()),
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected(peer.to_owned()),
        })
    }

    fn prepare(
        &self,
        peer: &str,
        conn_id: Option<u64>,
        msg: &M,
    ) -> Result<(bytes::Bytes, mpsc::Sender<bytes::Bytes>), SendError> {
        if self.shared.is_shut_down() {
            return Err(SendError::ShutDown);
        }
        let link = self
            .shared
            .link(peer)
            .ok_or_else(|| SendError::UnknownPeer(peer.to_owned()))?;
        let (current, tx) = link
            .sender()
            .ok_or_else(|| SendError::NotConnected(peer.to_owned()))?;
        if let Some(conn_id) = conn_id.filter(|id| *id != current) {
            return Err(SendError::Stale {
                peer: peer.to_owned(),
                conn_id,
            });
        }
        let frame = encode_frame(msg, self.shared.settings.max_frame_bytes)?;
        Ok((frame, tx))
    }

    /// Closes connection `conn_id` to `peer` with `reason` (sent to the peer in the QUIC close
    /// frame): for an application that refuses what it heard on the connection (a hello
    /// claiming another region, a protocol violation). Its `Down` event follows; the link
    /// redials with backoff. Returns false if that connection is no longer current.
    pub fn close(&self, peer: &str, conn_id: u64, reason: &str) -> bool {
        self.shared
            .link(peer)
            .is_some_and(|l| l.close_conn(conn_id, reason))
    }

    /// A snapshot of every peer link.
    pub fn links(&self) -> BTreeMap<String, LinkStatus> {
        self.shared
            .links
            .iter()
            .map(|(peer, link)| (peer.clone(), link.status()))
            .collect()
    }

    /// Changes the address dialed for `peer` (a peer restarted elsewhere) and dials it
    /// without waiting for the backoff. Unknown peers are ignored (and logged).
    pub fn set_peer_addr(&self, peer: &str, addr: SocketAddr) {
        match self.shared.link(peer) {
            Some(link) => link.set_addr(addr),
            None => {
                warn!(region = %self.shared.settings.region, peer, "set_peer_addr: not a configured peer")
            }
        }
    }

    /// Stops the mesh: closes every connection with a reason, waits (at most
    /// `shutdown_drain`) for the closes to drain, and stops every task. The event
    /// channel closes afterwards; no `Down` events are emitted for the closed connections.
    pub async fn shutdown(self) {
        let shared = self.shared;
        if shared.shutdown.send_replace(true) {
            return;
        }
        let reason = format!("region {} is shutting down", shared.settings.region);
        for link in shared.links.values() {
            link.shut(&reason);
        }
        shared
            .endpoint
            .close(close::SHUTDOWN.into(), reason.as_bytes());
        let drain = shared.settings.shutdown_drain;
        if tokio::time::timeout(drain, shared.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!(region = %shared.settings.region, "shutdown: connections still draining after {drain:?}");
        }
        let mut tasks = std::mem::take(&mut *lock(&shared.tasks));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        lock(&shared.events).take();
        info!(region = %shared.settings.region, "mesh stopped");
    }
}

fn transport_config(config: &MeshConfig) -> Result<quinn::TransportConfig, TransportError> {
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|_| {
        TransportError::Config(format!(
            "idle_timeout {:?} is too long",
            config.idle_timeout
        ))
    })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(idle))
        .packet_threshold(REORDER_PACKET_THRESHOLD)
        .time_threshold(REORDER_TIME_THRESHOLD)
        // One uni stream per direction; nothing else may be opened, which bounds what a
        // peer can make this side buffer.
        .max_concurrent_uni_streams(1u8.into())
        .max_concurrent_bidi_streams(0u8.into())
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// Accepts incoming connections and serves each in its own task.
async fn accept_loop<M: Message>(shared: Arc<Shared<M>>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            incoming = shared.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            warn!(region = %shared.settings.region, remote = %incoming.remote_address(), "too many pending handshakes; refusing");
            incoming.refuse();
            continue;
        };
        let task_shared = shared.clone();
        shared.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    let failure = tls::describe(&e, close::REFUSED.into());
                    if failure.refusal {
                        warn!(region = %task_shared.settings.region, %remote, "refused incoming handshake: {}", failure.message);
                        task_shared.report_rejected(remote, failure.message);
                    } else {
                        debug!(region = %task_shared.settings.region, %remote, "incoming handshake failed: {}", failure.message);
                    }
                    return;
                }
            };
            drop(permit);
            conn::run(task_shared, conn, Side::Remote, None).await;
        });
    }
}

/// Keeps one peer link dialed: whenever the link is not up, dial, serve the connection
/// while it lives, then wait out the backoff.
async fn dial_loop<M: Message>(shared: Arc<Shared<M>>, link: Arc<Link>, mut backoff: Backoff) {
    let mut up = link.subscribe_up();
    let mut addr_epoch = link.subscribe_addr();
    loop {
        if up.wait_for(|up| !*up).await.is_err() {
            return;
        }
        addr_epoch.mark_unchanged();
        match dial_once(&shared, &link, &mut addr_epoch).await {
            Outcome::WasUp => backoff.reset(),
            Outcome::Duplicate => {}
            Outcome::Failed(reason) => link.attempt_failed(reason),
            // QUIC retransmits a handshake's first packet ever more rarely; a fresh attempt
            // sends one at once, so back-to-back attempts probe a partition at a steady pace
            // and a healed link is found within about one dial_timeout.
            Outcome::TimedOut(reason) => {
                link.attempt_failed(reason);
                continue;
            }
        }
        // A new address is dialed at once; anything else waits out the backoff.
        if addr_epoch.has_changed().unwrap_or(false) {
            backoff.reset();
            continue;
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = addr_epoch.changed() => backoff.reset(),
        }
    }
}

async fn dial_once<M: Message>(
    shared: &Arc<Shared<M>>,
    link: &Arc<Link>,
    addr_epoch: &mut watch::Receiver<u64>,
) -> Outcome {
    let addr = link.addr();
    let peer = link.peer.as_str();
    link.dialing();
    let connecting =
        match shared
            .endpoint
            .connect_with(shared.client_config.clone(), addr, &server_name(peer))
        {
            Ok(connecting) => connecting,
            Err(e) => {
                return Outcome::Failed(format!("cannot dial region {peer:?} at {addr}: {e}"));
            }
        };
    let dial_timeout = shared.settings.dial_timeout;
    let result = tokio::select! {
        biased;
        result = connecting => result,
        // Dropping the attempt closes it; the next one starts fresh.
        _ = tokio::time::sleep(dial_timeout) => {
            let message = format!("dialing region {peer:?} at {addr}: no handshake within {dial_timeout:?} (dial_timeout)");
            debug!(region = %shared.settings.region, "{message}");
            return Outcome::TimedOut(message);
        }
        // set_peer_addr: stop waiting on the old address (dropping the attempt closes it).
        _ = addr_epoch.changed() => {
            return Outcome::Failed(format!("address of region {peer:?} changed while dialing {addr}"));
        }
    };
    let conn = match result {
        Ok(conn) => conn,
        Err(e) => {
            let failure = tls::describe(&e, close::REFUSED.into());
            let message = format!("dialing region {peer:?} at {addr}: {}", failure.message);
            // The link table shows the failure before the event reports it.
            link.attempt_failed(message.clone());
            if failure.refusal {
                warn!(region = %shared.settings.region, "{message}");
                shared.report_rejected(addr, message.clone());
            } else {
                debug!(region = %shared.settings.region, "{message}");
            }
            return Outcome::Failed(message);
        }
    };
    conn::run(shared.clone(), conn, Side::Local, Some(link)).await
}
