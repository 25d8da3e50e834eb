//! Peers: the [`Peer`] record of one other region (its connections, what it acknowledged,
//! what was sent to it), and the connection life cycle: hellos, refusals, frames, failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use conflict::{ReplicaId, Seq, VersionVector};

use super::{Alarm, ConnId, Effect, Replica, Time};
use crate::consistency::SkewEstimate;
use crate::limits::{LOG_READ_RETRY_MAX_MS, LOG_READ_RETRY_MIN_MS};
use crate::msg::{Ack, Hello, LogEntry, PROTOCOL_VERSION, PeerMsg, Refuse, Standing};

/// One other region of the configuration: its connections, what it has acknowledged, what
/// was sent to it and is not acknowledged yet, and the timers of its stream. `Replica` keeps
/// one per configured peer, for its whole life; a reconnection resets the stream, not the
/// peer.
#[derive(Debug, Default)]
pub(super) struct Peer {
    /// The region's name, as its certificate names it.
    pub(super) name: String,
    /// Connections the transport reported up, with the replica id their hello named.
    pub(super) conns: BTreeMap<ConnId, Option<ReplicaId>>,
    /// The connection we stream on: the one whose hello we accepted.
    pub(super) active: Option<ConnId>,
    /// The peer's replica id, from the accepted hello.
    pub(super) replica: Option<ReplicaId>,
    /// The peer's durably applied vector (from its hello and acks).
    pub(super) acked: VersionVector,
    /// Per origin, the highest sequence number sent on the active connection.
    pub(super) sent: BTreeMap<ReplicaId, Seq>,
    /// Sent and not yet acknowledged: (origin, seq, bytes).
    pub(super) inflight: VecDeque<(ReplicaId, Seq, usize)>,
    /// Sum of bytes in `inflight`.
    pub(super) inflight_bytes: usize,
    /// Origins with a log read outstanding.
    pub(super) reading: BTreeSet<ReplicaId>,
    /// Per origin the peer lags behind us on: since when (mono ms) it has made no progress on
    /// it, and what it had acknowledged then. Progress (a higher ack) restarts the clock.
    pub(super) stalled: BTreeMap<ReplicaId, Stall>,
    /// Receive side: per origin, the `Resync` we sent this peer that it has not answered yet
    /// (our applied position then, and when, mono ms). Further gapped batches of that origin
    /// are the rest of the run already on the wire: they are dropped without asking again.
    pub(super) resync_asked: BTreeMap<ReplicaId, (Seq, u64)>,
    /// When the last heartbeat went out (mono ms).
    pub(super) last_heartbeat_ms: u64,
    /// Our applied vector as last acknowledged to this peer.
    pub(super) last_ack_sent: Option<VersionVector>,
    /// Whether `acked` changed since it was last persisted.
    pub(super) acked_dirty: bool,
    /// What was last persisted as the peer's durable vector: `acked` joined with its lag-matrix
    /// row (a start recovers it as `acked`).
    pub(super) known_persisted: VersionVector,
    /// Clock-offset estimate from heartbeat echoes.
    pub(super) skew: SkewEstimate,
    /// The peer's last heartbeat (its send time, our receive time), to echo in ours.
    pub(super) echo: Option<(u64, u64)>,
    /// Origins whose last log read failed: (retry at, mono ms; current backoff, ms). Kept
    /// across reconnections so a broken log is not re-read in a tight loop.
    pub(super) read_retry: BTreeMap<ReplicaId, (u64, u64)>,
    /// The peer's resolvers were last set by its hello, and no heartbeat row has come from it
    /// directly since. Until one does, rows of it relayed by third regions may predate the
    /// hello (a stale row carries the resolvers of before a restart) and must not replace
    /// what the hello said; once its own row is in the matrix, staler rows are refused there.
    pub(super) resolvers_from_hello: bool,
    /// Whether our client writes are paced to this peer ([`Options::pace_lag_writes`]): it
    /// lacked no more than the limit since it last connected or last made progress.
    pub(super) in_sync: bool,
    /// Origins this peer was told, on the active connection, that our log no longer holds
    /// what it lacks ([`crate::NeedsSnapshot`]).
    pub(super) snapshot_told: BTreeSet<ReplicaId>,
    /// Our log was truncated past writes it lacks (alarmed once when it happened).
    pub(super) truncated_past: bool,
    /// While this peer fetches a snapshot from us and catches up from it: the applied vector
    /// it will have once it installs it (the log is kept from there for it, within the
    /// retention bound, and it is streamed every origin from us), and our durable vector when
    /// we served its last chunk (once it has that, the pin goes).
    pub(super) snapshot_pin: Option<(VersionVector, VersionVector)>,
    /// A snapshot read for this peer is in progress (one at a time).
    pub(super) snapshot_reading: bool,
    /// The read in progress serves the transfer from the first key again.
    pub(super) snapshot_restart: bool,
    /// A snapshot request waiting for a fresh checkpoint (ours was older than the log
    /// start), with its connection.
    pub(super) snapshot_retry: Option<(ConnId, crate::msg::SnapshotRequest)>,
    /// The peer's standing on the active connection, from its hello and heartbeats: what a
    /// region on a fresh data directory learns from (`learn.rs`).
    pub(super) standing: Option<Standing>,
}

/// How long a peer has lagged on one origin without progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stall {
    /// Since when (mono ms).
    pub(super) since_ms: u64,
    /// The peer's acknowledged position on the origin at that time.
    pub(super) acked: Seq,
}

impl Peer {
    /// A peer of this region's configuration, as recovered: what it had acknowledged.
    pub(super) fn new(name: String, acked: VersionVector) -> Self {
        Peer {
            name,
            acked,
            ..Peer::default()
        }
    }

    /// Whether a connection with an accepted hello is up.
    pub(super) fn is_connected(&self) -> bool {
        self.active.is_some()
    }

    /// Sends `msg` on the active connection, the one every frame after the hello goes on;
    /// says whether there was one.
    pub(super) fn send(&self, msg: PeerMsg, out: &mut Vec<Effect>) -> bool {
        let Some(conn) = self.active else {
            return false;
        };
        self.send_on(conn, msg, out);
        true
    }

    /// Sends `msg` on `conn`, which need not be accepted yet (a hello, a refusal).
    pub(super) fn send_on(&self, conn: ConnId, msg: PeerMsg, out: &mut Vec<Effect>) {
        out.push(Effect::Send {
            peer: self.name.clone(),
            conn,
            msg,
        });
    }

    /// Acknowledges `durable` on the active connection, unless this peer has it already.
    pub(super) fn send_ack(&mut self, durable: &VersionVector, out: &mut Vec<Effect>) {
        if !self.is_connected() || self.last_ack_sent.as_ref() == Some(durable) {
            return;
        }
        self.last_ack_sent = Some(durable.clone());
        let applied = durable.clone();
        self.send(PeerMsg::Ack(Ack { applied }), out);
    }

    /// The replica id of the live connection other than `conn`, if one has an accepted hello.
    pub(super) fn live_other_than(&self, conn: ConnId) -> Option<ReplicaId> {
        self.active
            .filter(|a| *a != conn)
            .and_then(|a| self.conns.get(&a).copied().flatten())
    }

    /// Makes `conn`, whose hello named `replica` and `applied`, the connection we stream on.
    pub(super) fn accept(
        &mut self,
        now: Time,
        conn: ConnId,
        replica: ReplicaId,
        applied: &VersionVector,
    ) {
        self.conns.insert(conn, Some(replica));
        self.active = Some(conn);
        if self.replica != Some(replica) {
            // A new replica (or the first we meet): its own claim is the truth; a rebuilt region
            // must not inherit what its predecessor had acknowledged.
            self.acked = applied.clone();
        } else {
            self.acked.join(applied);
        }
        self.replica = Some(replica);
        self.acked_dirty = true;
        self.reset_stream();
        self.last_heartbeat_ms = now.mono_ms;
        self.resolvers_from_hello = true;
    }

    /// `conn` ended; if it was the active one, the stream stops.
    pub(super) fn connection_down(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        if self.active == Some(conn) {
            self.reset_stream();
            self.active = None;
            self.standing = None;
        }
    }

    /// Forgets what was sent on the active connection: the next one starts from the acks.
    pub(super) fn reset_stream(&mut self) {
        self.sent.clear();
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.reading.clear();
        self.last_ack_sent = None;
        self.resync_asked.clear();
        self.snapshot_told.clear();
    }

    /// The peer has durably applied `applied` (an ack, or its own row in a heartbeat): what
    /// it covers leaves the send window.
    pub(super) fn acknowledge(&mut self, applied: &VersionVector) {
        let before = self.acked.clone();
        self.acked.join(applied);
        if self
            .snapshot_pin
            .as_ref()
            .is_some_and(|(_, until)| self.acked.dominates(until))
        {
            // It has everything we had when we served its last chunk: caught up from the
            // snapshot, it streams as any peer from here.
            self.snapshot_pin = None;
        }
        if self.acked != before {
            self.acked_dirty = true;
            // It moved on an origin we told it we cannot serve (it installed a snapshot):
            // if the log still cannot serve it from there, it is told again.
            let acked = &self.acked;
            self.snapshot_told
                .retain(|o| acked.get(*o) == before.get(*o));
        }
        while let Some(&(origin, seq, bytes)) = self.inflight.front() {
            if self.acked.get(origin) < seq {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        self.debug_check();
    }

    /// A batch of `origin`'s `entries` (contiguous, from [`Peer::next_seq`]) goes out: they
    /// enter the send window.
    pub(super) fn record_sent(&mut self, origin: ReplicaId, entries: &[LogEntry]) {
        debug_assert!(
            entries
                .first()
                .is_some_and(|e| e.seq() == self.next_seq(origin)),
            "a batch starts where the stream of its origin stands"
        );
        for e in entries {
            let size = e.wire_size();
            self.inflight.push_back((origin, e.seq(), size));
            self.inflight_bytes += size;
        }
        if let Some(last) = entries.last() {
            self.sent.insert(origin, last.seq());
        }
        self.debug_check();
    }

    /// The peer asked (`Resync`) to restart `origin`'s run after `applied`: what was sent
    /// beyond it leaves the window and is sent again.
    pub(super) fn rewind(&mut self, origin: ReplicaId, applied: Seq) {
        let sent = self.sent.entry(origin).or_default();
        if *sent > applied {
            *sent = applied;
        }
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for item in self.inflight.drain(..) {
            if item.0 == origin && item.1 > applied {
                self.inflight_bytes -= item.2;
            } else {
                kept.push_back(item);
            }
        }
        self.inflight = kept;
        self.debug_check();
    }

    /// A log read of `origin` for this peer returned nothing (storage failed): backs off,
    /// doubling from [`LOG_READ_RETRY_MIN_MS`] to [`LOG_READ_RETRY_MAX_MS`]; returns the delay.
    pub(super) fn read_failed(&mut self, origin: ReplicaId, now: Time) -> u64 {
        let backoff = self
            .read_retry
            .get(&origin)
            .map_or(LOG_READ_RETRY_MIN_MS, |(_, b)| {
                (b.saturating_mul(2)).min(LOG_READ_RETRY_MAX_MS)
            });
        self.read_retry
            .insert(origin, (now.mono_ms.saturating_add(backoff), backoff));
        backoff
    }

    /// Whether `origin`'s stream to this peer waits for a failed log read's retry.
    pub(super) fn read_backing_off(&self, origin: ReplicaId, now: Time) -> bool {
        self.read_retry
            .get(&origin)
            .is_some_and(|(due, _)| *due > now.mono_ms)
    }

    /// The invariants of the send side, checked where it changes (debug builds only).
    pub(super) fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let sum: usize = self.inflight.iter().map(|(_, _, bytes)| bytes).sum();
        debug_assert_eq!(
            self.inflight_bytes, sum,
            "{}: in-flight bytes are their sum",
            self.name
        );
        // (The active connection is not always in `conns`: a second, refused hello on it
        // removes it there, and it stays active until the transport reports it down.)
        if self.active.is_none() {
            debug_assert!(
                self.inflight.is_empty() && self.sent.is_empty(),
                "{}: nothing in flight without a connection",
                self.name
            );
        }
        let mut last: BTreeMap<ReplicaId, Seq> = BTreeMap::new();
        for (origin, seq, _) in &self.inflight {
            let before = last.insert(*origin, *seq);
            debug_assert!(
                before.is_none_or(|b| b < *seq),
                "{}: in flight in sequence order per origin",
                self.name
            );
            debug_assert!(
                self.sent.get(origin).is_some_and(|s| s >= seq),
                "{}: in flight means sent",
                self.name
            );
        }
    }

    /// The next sequence number of `origin` to send this peer: one past what was sent on the
    /// active connection or what it acknowledged, whichever is further. Saturating: a peer's
    /// ack may claim anything, up to `u64::MAX`.
    pub(super) fn next_seq(&self, origin: ReplicaId) -> Seq {
        let sent = self.sent.get(&origin).copied().unwrap_or_default();
        Seq(sent.max(self.acked.get(origin)).0.saturating_add(1))
    }
}

impl Replica {
    /// Acknowledges our durable vector to `name`, if connected and not acknowledged yet.
    pub(super) fn send_ack(&mut self, name: &str, out: &mut Vec<Effect>) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("peer names come from self.peers");
        peer.send_ack(&self.durable, out);
    }

    pub(super) fn peer_up(&mut self, name: String, conn: ConnId, out: &mut Vec<Effect>) {
        let hello = self.hello();
        let Some(peer) = self.peers.get_mut(&name) else {
            out.push(Effect::Close {
                peer: name.clone(),
                conn,
                reason: format!("region '{name}' is not a peer in this region's configuration"),
            });
            return;
        };
        peer.conns.insert(conn, None);
        peer.send_on(conn, PeerMsg::Hello(hello), out);
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: self.opts.cluster.clone(),
            region: self.opts.region.clone(),
            replica: self.opts.replica,
            applied: self.durable.clone(),
            resolvers: self.resolver_ids.clone(),
            replicas: self.replicas.iter().map(|(r, n)| (*r, n.clone())).collect(),
            standing: self.standing(),
        }
    }

    pub(super) fn peer_down(&mut self, name: &str, conn: ConnId) {
        if let Some(peer) = self.peers.get_mut(name) {
            peer.connection_down(conn);
            if !peer.is_connected() && self.snapshot_asked.as_ref().is_some_and(|(p, _)| p == name)
            {
                // Its answer cannot come any more: the next tick asks another region.
                self.snapshot_asked = None;
            }
        }
    }

    pub(super) fn send_failed(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.active != Some(conn) {
            return;
        }
        // Something was lost on the way out: rewind to what the peer acknowledged and resend
        // from the log (the receiver drops anything it already has). Besides data, the lost
        // frames may include our last ack or a resync request; without them the peer keeps a
        // full window of writes we have (or dropped) and the stream stalls, so both are sent
        // again now.
        let asked: Vec<ReplicaId> = peer.resync_asked.keys().copied().collect();
        peer.reset_stream();
        for origin in asked {
            self.ask_resync(now, name, origin, out);
        }
        self.send_ack(name, out);
    }

    /// Refuses `conn` of `name`: the alarm, the reason on the wire, and the close.
    fn refuse(
        &mut self,
        name: &str,
        conn: ConnId,
        alarm: Alarm,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Alarm(alarm));
        let refuse = PeerMsg::Refuse(Refuse {
            reason: reason.clone(),
        });
        // Not through `Peer`: a name that is not a peer is refused the same way.
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: refuse,
        });
        out.push(Effect::Close {
            peer: name.to_owned(),
            conn,
            reason,
        });
        if let Some(peer) = self.peers.get_mut(name) {
            peer.conns.remove(&conn);
        }
    }
    fn on_hello(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        hello: Hello,
        out: &mut Vec<Effect>,
    ) {
        if let Some(reason) = self.hello_problem(name, &hello) {
            let alarm = Alarm::HelloRefused {
                peer: name.to_owned(),
                reason: reason.clone(),
            };
            self.refuse(name, conn, alarm, reason, out);
            return;
        }
        let peer = self
            .peers
            .get_mut(name)
            .expect("hello_problem checked the peer exists");
        let live = peer.live_other_than(conn);
        if let Some(live) = live.filter(|l| *l != hello.replica) {
            let alarm = Alarm::SplitBrain {
                region: name.to_owned(),
                live,
                refused: hello.replica,
            };
            let reason = format!(
                "region '{name}' is already connected as replica {live}; a second live replica {} claims it. Two processes are running as one region: stop one of them",
                hello.replica
            );
            self.refuse(name, conn, alarm, reason, out);
            return;
        }
        peer.accept(now, conn, hello.replica, &hello.applied);
        peer.standing = Some(hello.standing.clone());
        let mut learned = Vec::new();
        for (replica, region) in hello
            .replicas
            .iter()
            .chain([(hello.replica, hello.region.clone())].iter())
        {
            if !self.replicas.contains_key(replica) {
                self.replicas.insert(*replica, region.clone());
                learned.push((*replica, region.clone()));
            }
        }
        self.staged.replicas.extend(learned);
        let resolvers = hello.resolvers.iter().cloned().collect();
        self.region_resolvers.insert(name.to_owned(), resolvers);
        self.check_mismatches(out);
        self.send_ack(name, out);
        self.update_lag(now, name);
        self.pump(name, now, out);
        self.ask_pending_reads(name, out);
        self.learn_from_peers(now, out);
    }

    fn hello_problem(&self, name: &str, hello: &Hello) -> Option<String> {
        if !self.peers.contains_key(name) {
            return Some(format!(
                "region '{name}' is not a peer in this region's configuration"
            ));
        }
        if hello.protocol != PROTOCOL_VERSION {
            return Some(format!(
                "peer speaks replication protocol {} and this region speaks {PROTOCOL_VERSION}; upgrade the older binary",
                hello.protocol
            ));
        }
        if hello.cluster != self.opts.cluster {
            return Some(format!(
                "peer belongs to cluster '{}' and this region to '{}'; check `cluster` in regions.toml",
                hello.cluster, self.opts.cluster
            ));
        }
        if hello.region != name {
            return Some(format!(
                "peer claims region '{}' but its certificate names '{name}'; check the peer's --region and certificates",
                hello.region
            ));
        }
        if hello.replica == self.opts.replica {
            return Some(format!(
                "peer uses this region's own replica id {}; its data directory is a copy of this one. Give it its own empty data directory",
                hello.replica
            ));
        }
        None
    }

    pub(super) fn frame(
        &mut self,
        now: Time,
        name: String,
        conn: ConnId,
        msg: PeerMsg,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get(&name) else {
            let reason = format!("region '{name}' is not a peer in this region's configuration");
            out.push(Effect::Close {
                peer: name,
                conn,
                reason,
            });
            return;
        };
        let accepted = peer.active == Some(conn);
        match msg {
            PeerMsg::Hello(h) => self.on_hello(now, &name, conn, h, out),
            PeerMsg::Refuse(r) => {
                let alarm = Alarm::HelloRefused {
                    peer: name.clone(),
                    reason: r.reason.clone(),
                };
                out.push(Effect::Alarm(alarm));
                self.peer_down(&name, conn);
            }
            _ if !accepted => {
                // Frames before the hello, or on a connection we refused or replaced: ignore.
                // (A refused connection is being closed already.)
            }
            PeerMsg::Batch(b) => self.on_batch(now, &name, conn, b, out),
            PeerMsg::Ack(a) => self.on_ack(now, &name, a, out),
            PeerMsg::Heartbeat(h) => self.on_heartbeat(now, &name, h, out),
            PeerMsg::Resync(r) => self.on_resync(now, &name, r, out),
            PeerMsg::NeedsSnapshot(n) => self.on_needs_snapshot(now, &name, n, out),
            PeerMsg::SnapshotRequest(r) => self.on_snapshot_request(&name, conn, r, out),
            PeerMsg::SnapshotChunk(c) => self.on_snapshot_chunk(now, &name, conn, c, out),
            PeerMsg::SnapshotUnavailable(_) => self.on_snapshot_unavailable(now, &name, out),
            PeerMsg::ReadRequest(r) => self.on_read_request(&name, conn, r, out),
            PeerMsg::ReadReply(r) => self.on_read_reply(&name, conn, r, out),
            PeerMsg::ReadRepair(r) => self.on_read_repair(&name, conn, r, out),
            PeerMsg::AaeRequest(r) => self.on_aae_request(&name, conn, r, out),
            PeerMsg::AaeHashes(h) => self.on_aae_hashes(now, &name, conn, h, out),
            PeerMsg::AaeStatesRequest(r) => self.on_aae_states_request(&name, conn, r, out),
            PeerMsg::AaeStates(s) => self.on_aae_states(now, &name, conn, s, out),
            PeerMsg::AaeRepair(r) => self.on_aae_repair(now, &name, conn, r, out),
        }
    }

    pub(super) fn violation(
        &mut self,
        name: &str,
        conn: ConnId,
        detail: String,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Alarm(Alarm::ProtocolViolation {
            peer: name.to_owned(),
            detail: detail.clone(),
        }));
        out.push(Effect::Close {
            peer: name.to_owned(),
            conn,
            reason: detail,
        });
        self.peer_down(name, conn);
    }
}
