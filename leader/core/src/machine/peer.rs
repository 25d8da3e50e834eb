//! Peers: the [`Peer`] record of one other region (its connections, what it acknowledged,
//! what was sent to it), and the connection life cycle: hellos, refusals, frames, failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use conflict::{ReplicaId, Seq, VersionVector};

use super::{Alarm, ConnId, Effect, Replica, Time};
use crate::consistency::SkewEstimate;
use crate::msg::{Ack, Hello, PROTOCOL_VERSION, PeerMsg, Refuse};

/// Per-peer replication state.
#[derive(Debug, Default)]
pub(super) struct Peer {
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
    /// The next sequence number of `origin` to send this peer: one past what was sent on the
    /// active connection or what it acknowledged, whichever is further. Saturating: a peer's
    /// ack may claim anything, up to `u64::MAX`.
    pub(super) fn next_seq(&self, origin: ReplicaId) -> Seq {
        let sent = self.sent.get(&origin).copied().unwrap_or_default();
        Seq(sent.max(self.acked.get(origin)).0.saturating_add(1))
    }
}

impl Replica {
    pub(super) fn send_ack(&mut self, name: &str, out: &mut Vec<Effect>) {
        let durable = self.durable.clone();
        let peer = self
            .peers
            .get_mut(name)
            .expect("peer names come from self.peers");
        let Some(conn) = peer.active else { return };
        if peer.last_ack_sent.as_ref() == Some(&durable) {
            return;
        }
        peer.last_ack_sent = Some(durable.clone());
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Ack(Ack { applied: durable }),
        });
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
        out.push(Effect::Send {
            peer: name,
            conn,
            msg: PeerMsg::Hello(hello),
        });
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
        }
    }

    pub(super) fn peer_down(&mut self, name: &str, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        peer.conns.remove(&conn);
        if peer.active == Some(conn) {
            Self::reset_stream(peer);
            peer.active = None;
        }
    }

    /// Forgets what was sent on the active connection: the next one starts from the acks.
    fn reset_stream(peer: &mut Peer) {
        peer.sent.clear();
        peer.inflight.clear();
        peer.inflight_bytes = 0;
        peer.reading.clear();
        peer.last_ack_sent = None;
        peer.resync_asked.clear();
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
        Self::reset_stream(peer);
        for origin in asked {
            self.ask_resync(now, name, conn, origin, out);
        }
        self.send_ack(name, out);
    }

    fn refuse(
        &mut self,
        name: &str,
        conn: ConnId,
        alarm: Alarm,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Alarm(alarm));
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Refuse(Refuse {
                reason: reason.clone(),
            }),
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
        let live = peer
            .active
            .filter(|a| *a != conn)
            .and_then(|a| peer.conns.get(&a).copied().flatten());
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
        peer.conns.insert(conn, Some(hello.replica));
        peer.active = Some(conn);
        if peer.replica != Some(hello.replica) {
            // A new replica (or the first we meet): its own claim is the truth; a rebuilt region
            // must not inherit what its predecessor had acknowledged.
            peer.acked = hello.applied.clone();
        } else {
            peer.acked.join(&hello.applied);
        }
        peer.replica = Some(hello.replica);
        peer.acked_dirty = true;
        Self::reset_stream(peer);
        peer.last_heartbeat_ms = now.mono_ms;
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
        if let Some(peer) = self.peers.get_mut(name) {
            peer.resolvers_from_hello = true;
        }
        self.check_mismatches(out);
        self.send_ack(name, out);
        self.update_lag(now, name);
        self.pump(name, now, out);
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
