//! One peer link: the state of the connection to one region, the rule that settles duplicate
//! connections, and the counters shown in [`LinkStatus`].
//!
//! # Which connection survives (the dial rule)
//!
//! Both regions of a pair dial each other whenever their link is not up, so a region that
//! restarts reconnects at once from its own side instead of waiting for the other side to
//! notice. That means two connections can come up for one pair. Every connection carries, in
//! its transport hello, the *incarnation* of each side (a random number drawn when a mesh
//! starts). When a connection to a peer is established while another one is current, both
//! regions apply the same rule (`candidate_wins`):
//!
//! 1. The peer's incarnation differs: the peer restarted, the old connection is a leftover
//!    of its previous life, and the new connection replaces it.
//! 2. Same incarnation, the two connections were dialed by different regions: a simultaneous
//!    dial. The connection dialed by the lexicographically smaller region is kept. Both sides
//!    know who dialed which connection, so both keep the same one and close the other with
//!    the reason "duplicate connection".
//! 3. Same incarnation, same dialer: the dialer only redials when it considers the old
//!    connection dead, so the newer connection replaces the old one.
//!
//! A replaced connection is closed, and its `Down` event is emitted before the `Up` of its
//! replacement, so per peer the events read `Up a, Frame a.., Down a, Up b, ..`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; a dial (or an incoming connection) is in progress.
    Connecting,
    /// A connection is established, its hello exchanged, and it accepts frames; its `Up`
    /// event is delivered (or about to be).
    Up,
    /// Not connected; the next dial waits for its backoff delay (or for the peer to dial).
    Down,
}

/// A snapshot of one peer link, from [`Mesh::links`](crate::Mesh::links).
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// Where the link stands.
    pub state: LinkState,
    /// When the link entered `state`, on tokio's clock (virtual under paused time or
    /// turmoil); compare with `tokio::time::Instant::now()`.
    pub since: Instant,
    /// The address this region dials for the peer.
    pub addr: SocketAddr,
    /// The current connection, while up.
    pub conn_id: Option<u64>,
    /// The region that dialed the current connection, while up (see the dial rule).
    pub dialer: Option<String>,
    /// The connection's current round-trip-time estimate, while up.
    pub rtt: Option<Duration>,
    /// Why the last connection or dial attempt ended, if one did.
    pub last_error: Option<String>,
    /// How many connections of this link came up (each had an `Up` event).
    pub connections: u64,
    /// Frame bytes (headers included) written to the peer, over all connections.
    pub bytes_sent: u64,
    /// Stream bytes received from the peer, over all connections.
    pub bytes_recv: u64,
    /// Frames written to the peer, over all connections.
    pub frames_sent: u64,
    /// Frames received from the peer, over all connections.
    pub frames_recv: u64,
    /// QUIC's view of the current connection's path, while up.
    pub path: Option<PathStats>,
}

/// QUIC loss detection and congestion control on one connection, since it came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// UDP datagrams sent.
    pub sent_packets: u64,
    /// Packets declared lost. On a path without loss these are reordered packets taken for
    /// lost (see [`crate::mesh::REORDER_PACKET_THRESHOLD`]).
    pub lost_packets: u64,
    /// Times the congestion window was cut for a loss.
    pub congestion_events: u64,
    /// The congestion window now, bytes.
    pub cwnd: u64,
}

/// Which side dialed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Local,
    Remote,
}

/// Who dialed a connection and the peer's incarnation as announced in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnOrigin {
    pub(crate) dialer: Side,
    pub(crate) peer_incarnation: u64,
}

/// The dial rule (see the module docs): does `candidate` replace `existing`?
pub(crate) fn candidate_wins(
    local: &str,
    peer: &str,
    existing: ConnOrigin,
    candidate: ConnOrigin,
) -> bool {
    if existing.peer_incarnation != candidate.peer_incarnation {
        return true;
    }
    if existing.dialer == candidate.dialer {
        return true;
    }
    let smaller_dialer = if local < peer {
        Side::Local
    } else {
        Side::Remote
    };
    candidate.dialer == smaller_dialer
}

/// Close code and reason for connections closed by the mesh, so that the peer (and its
/// logs) learn why.
pub(crate) mod close {
    /// Orderly shutdown of a region.
    pub(crate) const SHUTDOWN: u32 = 0;
    /// Dropped by the dial rule in favour of another connection for the same pair.
    pub(crate) const DUPLICATE: u32 = 1;
    /// Authentication or hello refused: wrong cluster, unknown region, version mismatch.
    pub(crate) const REFUSED: u32 = 2;
    /// The peer broke the framing: malformed or oversized frame.
    pub(crate) const PROTOCOL: u32 = 3;
    /// Replaced by a newer connection (the peer restarted or redialed).
    pub(crate) const REPLACED: u32 = 4;
    /// The application above the mesh refused the connection (e.g. its replication hello).
    pub(crate) const APPLICATION: u32 = 5;
    /// Another live process already holds this region's link (split brain).
    pub(crate) const SPLIT_BRAIN: u32 = 6;
}

/// The connection a link currently uses.
pub(crate) struct Current {
    pub(crate) conn_id: u64,
    pub(crate) conn: quinn::Connection,
    pub(crate) origin: ConnOrigin,
    /// The peer process's name for itself, from its transport hello.
    pub(crate) peer_instance: String,
    /// The bounded send queue, set just before the `Up` event is emitted.
    pub(crate) tx: Option<mpsc::Sender<Bytes>>,
    /// Why the mesh closed this connection, for its `Down` event (quinn only reports
    /// "locally closed").
    pub(crate) close_reason: Arc<Mutex<Option<String>>>,
    /// Becomes true when the connection's task has emitted its `Down` event.
    pub(crate) done: watch::Receiver<bool>,
}

impl Current {
    /// Closes the connection with a code and records the reason for its `Down` event.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        lock(&self.close_reason).get_or_insert_with(|| reason.to_owned());
        self.conn.close(code.into(), reason.as_bytes());
    }
}

/// What [`Link::install`] decided.
pub(crate) enum Install {
    /// The candidate is now current; wait for the replaced connection to finish first.
    Accepted {
        replaced: Option<watch::Receiver<bool>>,
    },
    /// The existing connection stays; the candidate must be closed with this reason.
    Duplicate(String),
    /// The existing connection's process is alive, so the candidate, from another process
    /// claiming the same region, is refused with this reason ([`close::SPLIT_BRAIN`]).
    /// `report` holds (live, refused) instances once the split brain is confirmed.
    Fenced {
        reason: String,
        report: Option<(String, String)>,
    },
}

/// A process that tried to take over a link whose current process is alive.
struct Contender {
    incarnation: u64,
    /// When it first tried.
    first_seen: Instant,
    /// When a confirmed split brain with it was last reported.
    reported: Option<Instant>,
}

/// Minimum interval between two split-brain reports about one link.
const SPLIT_BRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Counters {
    bytes_sent: AtomicU64,
    bytes_recv: AtomicU64,
    frames_sent: AtomicU64,
    frames_recv: AtomicU64,
}

struct State {
    addr: SocketAddr,
    state: LinkState,
    since: Instant,
    current: Option<Current>,
    last_error: Option<String>,
    connections: u64,
    /// When the current connection last delivered a frame (or was installed).
    last_recv: Instant,
    contender: Option<Contender>,
}

/// The link to one peer region. Shared by its dialer, the connection tasks and the handle.
pub(crate) struct Link {
    pub(crate) local: String,
    pub(crate) peer: String,
    state: Mutex<State>,
    counters: Counters,
    /// True while a connection is current; the dialer waits for it to turn false.
    up: watch::Sender<bool>,
    /// Bumped by `set_peer_addr`, so the dialer skips its backoff and dials the new address.
    addr_epoch: watch::Sender<u64>,
    /// See [`MeshConfig::peer_liveness`](crate::MeshConfig::peer_liveness).
    liveness: Option<Duration>,
}

/// Locks a mutex, ignoring poisoning: the state behind these mutexes is updated in single
/// assignments, so a panic elsewhere cannot leave it half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Link {
    pub(crate) fn new(
        local: &str,
        peer: &str,
        addr: SocketAddr,
        liveness: Option<Duration>,
    ) -> Self {
        Link {
            local: local.to_owned(),
            peer: peer.to_owned(),
            state: Mutex::new(State {
                addr,
                state: LinkState::Down,
                since: Instant::now(),
                current: None,
                last_error: None,
                connections: 0,
                last_recv: Instant::now(),
                contender: None,
            }),
            counters: Counters::default(),
            up: watch::channel(false).0,
            addr_epoch: watch::channel(0).0,
            liveness,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        lock(&self.state).addr
    }

    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        lock(&self.state).addr = addr;
        self.addr_epoch.send_modify(|e| *e += 1);
    }

    pub(crate) fn subscribe_up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    pub(crate) fn subscribe_addr(&self) -> watch::Receiver<u64> {
        self.addr_epoch.subscribe()
    }

    /// A dial is starting.
    pub(crate) fn dialing(&self) {
        let mut s = lock(&self.state);
        if s.current.is_none() {
            set_state(&mut s, LinkState::Connecting);
        }
    }

    /// A dial failed, or a connection ended before it came up.
    pub(crate) fn attempt_failed(&self, reason: String) {
        let mut s = lock(&self.state);
        if s.current.is_none() {
            set_state(&mut s, LinkState::Down);
            s.last_error = Some(reason);
        }
    }

    /// Offers an authenticated connection to the link; see the dial rule.
    pub(crate) fn install(&self, candidate: Current) -> Install {
        let mut s = lock(&self.state);
        if let Some(fenced) = self.fence(&mut s, &candidate) {
            return fenced;
        }
        let replaced = match s.current.take() {
            None => None,
            Some(existing) => {
                if !candidate_wins(&self.local, &self.peer, existing.origin, candidate.origin) {
                    let dialer = self.dialer_name(existing.origin.dialer);
                    s.current = Some(existing);
                    return Install::Duplicate(format!(
                        "duplicate connection: keeping the one dialed by {dialer}"
                    ));
                }
                let reason =
                    if existing.origin.peer_incarnation != candidate.origin.peer_incarnation {
                        format!("replaced: {} restarted", self.peer)
                    } else {
                        "replaced by a newer connection".to_owned()
                    };
                let code = if existing.origin.dialer == candidate.origin.dialer
                    || existing.origin.peer_incarnation != candidate.origin.peer_incarnation
                {
                    close::REPLACED
                } else {
                    close::DUPLICATE
                };
                existing.close(code, &reason);
                Some(existing.done.clone())
            }
        };
        s.current = Some(candidate);
        s.last_recv = Instant::now();
        s.contender = None;
        // Up once sendable (`set_sender`); until then the connection is still arriving.
        set_state(&mut s, LinkState::Connecting);
        drop(s);
        self.up.send_replace(true);
        Install::Accepted { replaced }
    }

    /// Whether `conn_id` is still the link's current connection.
    pub(crate) fn is_current(&self, conn_id: u64) -> bool {
        lock(&self.state)
            .current
            .as_ref()
            .is_some_and(|c| c.conn_id == conn_id)
    }

    /// Makes `conn_id` sendable (just before its `Up` is emitted); false if it is gone.
    pub(crate) fn set_sender(&self, conn_id: u64, tx: mpsc::Sender<Bytes>) -> bool {
        let mut s = lock(&self.state);
        match s.current.as_mut() {
            Some(c) if c.conn_id == conn_id => {
                c.tx = Some(tx);
                s.connections += 1;
                set_state(&mut s, LinkState::Up);
                true
            }
            _ => false,
        }
    }

    /// The send queue of the current connection, if it is up and sendable.
    pub(crate) fn sender(&self) -> Option<(u64, mpsc::Sender<Bytes>)> {
        let s = lock(&self.state);
        let c = s.current.as_ref()?;
        Some((c.conn_id, c.tx.clone()?))
    }

    /// A connection ended; if it was current, the link goes down.
    pub(crate) fn finished(&self, conn_id: u64, reason: &str) {
        let mut s = lock(&self.state);
        if s.current.as_ref().is_some_and(|c| c.conn_id == conn_id) {
            s.current = None;
            s.last_error = Some(reason.to_owned());
            set_state(&mut s, LinkState::Down);
            drop(s);
            self.up.send_replace(false);
        }
    }

    /// Closes connection `conn_id` if it is still the current one, telling the peer `reason`;
    /// its `Down` event follows, and the link redials with backoff as after any loss.
    pub(crate) fn close_conn(&self, conn_id: u64, reason: &str) -> bool {
        let s = lock(&self.state);
        match s.current.as_ref() {
            Some(c) if c.conn_id == conn_id => {
                c.close(close::APPLICATION, reason);
                true
            }
            _ => false,
        }
    }

    /// Closes the current connection for shutdown and marks the link down.
    pub(crate) fn shut(&self, reason: &str) {
        let mut s = lock(&self.state);
        if let Some(current) = s.current.take() {
            current.close(close::SHUTDOWN, reason);
        }
        s.last_error = Some(reason.to_owned());
        set_state(&mut s, LinkState::Down);
        drop(s);
        self.up.send_replace(false);
    }

    pub(crate) fn count_sent(&self, bytes: usize) {
        self.counters
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The split-brain fence: refuses a candidate from a new incarnation of the peer while
    /// the current connection's process is alive (a frame within `liveness`). A restarted
    /// peer's old process is dead and silent, so its successor gets in once `liveness` has
    /// passed since the old one's last frame; a second live process never does.
    fn fence(&self, s: &mut State, candidate: &Current) -> Option<Install> {
        let liveness = self.liveness?;
        let existing = s.current.as_ref()?;
        if existing.origin.peer_incarnation == candidate.origin.peer_incarnation
            || existing.conn.close_reason().is_some()
        {
            return None; // a redial of the same process, or a connection already ending
        }
        let now = Instant::now();
        let quiet = now.duration_since(s.last_recv);
        if quiet >= liveness {
            return None; // silent: the peer restarted and this is its successor
        }
        let incarnation = candidate.origin.peer_incarnation;
        let contender = match &mut s.contender {
            Some(c) if c.incarnation == incarnation => c,
            slot => slot.insert(Contender {
                incarnation,
                first_seen: now,
                reported: None,
            }),
        };
        // Frames that arrived after the newcomer first showed up prove the current process
        // outlived its arrival: two live processes, not a restart.
        let confirmed = s.last_recv > contender.first_seen;
        let due = contender
            .reported
            .is_none_or(|t| now.duration_since(t) >= SPLIT_BRAIN_REPORT_INTERVAL);
        let report = (confirmed && due).then(|| {
            contender.reported = Some(now);
            (
                existing.peer_instance.clone(),
                candidate.peer_instance.clone(),
            )
        });
        let reason = format!(
            "region {peer} is connected from another process (instance {live:?}) that was heard from {quiet:?} ago; \
             if that process has just stopped, this one is let in once it has been silent for {liveness:?}; \
             if both keep running, two processes are running as region {peer}: stop one of them",
            peer = self.peer,
            live = existing.peer_instance,
        );
        Some(Install::Fenced { reason, report })
    }

    pub(crate) fn count_recv(&self, bytes: u64) {
        if self.liveness.is_some() {
            // Only the split-brain fence reads it: no lock per frame without one.
            lock(&self.state).last_recv = Instant::now();
        }
        self.counters.bytes_recv.fetch_add(bytes, Ordering::Relaxed);
        self.counters.frames_recv.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> LinkStatus {
        let s = lock(&self.state);
        let c = s.current.as_ref().filter(|_| s.state == LinkState::Up);
        LinkStatus {
            state: s.state,
            since: s.since,
            addr: s.addr,
            conn_id: c.map(|c| c.conn_id),
            dialer: c.map(|c| self.dialer_name(c.origin.dialer).to_owned()),
            rtt: c.map(|c| c.conn.rtt()),
            last_error: s.last_error.clone(),
            connections: s.connections,
            bytes_sent: self.counters.bytes_sent.load(Ordering::Relaxed),
            bytes_recv: self.counters.bytes_recv.load(Ordering::Relaxed),
            frames_sent: self.counters.frames_sent.load(Ordering::Relaxed),
            frames_recv: self.counters.frames_recv.load(Ordering::Relaxed),
            path: c.map(|c| {
                let p = c.conn.stats().path;
                PathStats {
                    sent_packets: p.sent_packets,
                    lost_packets: p.lost_packets,
                    congestion_events: p.congestion_events,
                    cwnd: p.cwnd,
                }
            }),
        }
    }

    fn dialer_name(&self, side: Side) -> &str {
        match side {
            Side::Local => &self.local,
            Side::Remote => &self.peer,
        }
    }
}

fn set_state(s: &mut State, state: LinkState) {
    if s.state != state {
        s.state = state;
        s.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(dialer: Side, peer_incarnation: u64) -> ConnOrigin {
        ConnOrigin {
            dialer,
            peer_incarnation,
        }
    }

    #[test]
    fn simultaneous_dial_keeps_the_smaller_regions_dial_on_both_sides() {
        // "a" < "b". At a: its own dial is Local; at b: a's dial is Remote.
        let a_keeps_own =
            !candidate_wins("a", "b", origin(Side::Local, 1), origin(Side::Remote, 1));
        let a_takes_own = candidate_wins("a", "b", origin(Side::Remote, 1), origin(Side::Local, 1));
        let b_keeps_as = !candidate_wins("b", "a", origin(Side::Remote, 2), origin(Side::Local, 2));
        let b_takes_as = candidate_wins("b", "a", origin(Side::Local, 2), origin(Side::Remote, 2));
        assert!(a_keeps_own && a_takes_own && b_keeps_as && b_takes_as);
    }

    #[test]
    fn restarted_peer_replaces_old_connection_whoever_dialed() {
        for (old, new) in [(Side::Local, Side::Remote), (Side::Remote, Side::Local)] {
            assert!(candidate_wins("a", "b", origin(old, 1), origin(new, 9)));
            assert!(candidate_wins("b", "a", origin(old, 1), origin(new, 9)));
        }
    }

    #[test]
    fn redial_by_the_same_side_replaces() {
        for side in [Side::Local, Side::Remote] {
            assert!(candidate_wins("a", "b", origin(side, 1), origin(side, 1)));
            assert!(candidate_wins("b", "a", origin(side, 1), origin(side, 1)));
        }
    }
}
