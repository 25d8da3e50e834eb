//! Streaming to peers: the in-memory log tail, the send window and its acks, catch-up from
//! the disk log, rewinds on `Resync`, and relays of third regions' writes to a stalled peer.

use std::collections::{BTreeSet, VecDeque};

use conflict::{ReplicaId, Seq, VersionVector};

use super::peer::{Peer, Stall};
use super::{Alarm, ConnId, Effect, Replica, Time};
use crate::msg::{Ack, Batch, LogEntry, PeerMsg, Resync};

/// The durable writes of one origin kept in memory for live streaming: a contiguous run.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub(super) entries: VecDeque<LogEntry>,
    /// Sum of the entries' [`LogEntry::wire_size`].
    pub(super) bytes: usize,
}

impl Tail {
    /// Appends the next entry of the origin and drops the oldest ones beyond `max_bytes`
    /// (the new one too, when it alone is larger: the run stays contiguous either way).
    pub(super) fn push(&mut self, entry: LogEntry, max_bytes: usize) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|last| last.seq().next() == entry.seq()),
            "the tail of an origin is a contiguous run"
        );
        self.bytes += entry.wire_size();
        self.entries.push_back(entry);
        while self.bytes > max_bytes {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.wire_size();
        }
    }
}

impl Replica {
    pub(super) fn on_ack(&mut self, now: Time, name: &str, a: Ack, out: &mut Vec<Effect>) {
        self.acknowledged(now, name, &a.applied, out);
    }

    /// `name` has durably applied `applied`: from an [`Ack`], or from the peer's own row in
    /// its heartbeat (the same vector, so an ack lost on the way is made good within one
    /// heartbeat interval instead of stalling a full window until the peer's next commit).
    pub(super) fn acknowledged(
        &mut self,
        now: Time,
        name: &str,
        applied: &VersionVector,
        out: &mut Vec<Effect>,
    ) {
        self.peers
            .get_mut(name)
            .expect("frame() checked the peer exists")
            .acknowledge(applied);
        self.update_lag(now, name);
        self.pump(name, now, out);
        self.check_waits(now, out);
    }

    pub(super) fn on_resync(&mut self, now: Time, name: &str, r: Resync, out: &mut Vec<Effect>) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        peer.rewind(r.origin, r.applied);
        self.pump(name, now, out);
    }

    /// Keeps `stalled` up to date: since when has the peer lagged on each origin without
    /// progress. Progress restarts the clock unless the lag matrix shows the origin's direct
    /// link to the peer down: then the progress is our relay's, which must go on.
    pub(super) fn update_lag(&mut self, now: Time, name: &str) {
        let peer = &self.peers[name];
        let down: BTreeSet<ReplicaId> = peer
            .stalled
            .keys()
            .copied()
            .filter(|o| self.link_down(*o, name, peer))
            .collect();
        let durable = &self.durable;
        let peer = self
            .peers
            .get_mut(name)
            .expect("peer names come from self.peers");
        for (origin, seq) in durable.iter() {
            let acked = peer.acked.get(origin);
            if acked >= seq {
                peer.stalled.remove(&origin);
                continue;
            }
            let stall = peer.stalled.entry(origin).or_insert(Stall {
                since_ms: now.mono_ms,
                acked,
            });
            if stall.acked != acked {
                stall.acked = acked;
                if !down.contains(&origin) {
                    stall.since_ms = now.mono_ms;
                }
            }
        }
    }

    /// Origins whose writes this region streams to `peer` right now: its own, and each third
    /// region's that the peer has lacked, without progress, for the relay delay. A peer that
    /// merely lags (it always does, under sustained load over links with latency) but keeps
    /// progressing gets them from their origin: relaying them too would only duplicate that
    /// stream. See "Refinements" in docs/design.md.
    fn origins_for(&self, peer: &Peer, now: Time) -> Vec<ReplicaId> {
        if peer.snapshot_pin.is_some() {
            // It installs (or installed) a snapshot of ours and catches up from it: every
            // origin comes from us, whose log is kept for it. Other regions' logs may well
            // be truncated past the snapshot, and they would only answer "needs snapshot".
            return self.durable.iter().map(|(o, _)| o).collect();
        }
        let mut origins = vec![self.opts.replica];
        for (origin, stall) in &peer.stalled {
            let relay = *origin != self.opts.replica
                && Some(*origin) != peer.replica
                && now.mono_ms.saturating_sub(stall.since_ms) >= self.opts.relay_delay_ms;
            if relay {
                origins.push(*origin);
            }
        }
        origins
    }

    /// Whether the lag matrix shows the direct link between `origin` and the peer `name` down:
    /// the origin's latest row, or the peer's, says it does not replicate to the other.
    fn link_down(&self, origin: ReplicaId, name: &str, peer: &Peer) -> bool {
        let Some(origin_region) = self.replicas.get(&origin) else {
            return false;
        };
        let says_down = |region: &str, replica: Option<ReplicaId>, other: &str| {
            self.matrix.rows.get(region).is_some_and(|(row, _)| {
                replica.is_none_or(|id| id == row.replica)
                    && row.lags.iter().any(|l| l.peer == other && !l.connected)
            })
        };
        says_down(origin_region, Some(origin), name) || says_down(name, peer.replica, origin_region)
    }

    /// Sends whatever `peer` lacks, within its window, from the tail or via log reads.
    pub(super) fn pump(&mut self, name: &str, now: Time, out: &mut Vec<Effect>) {
        let Some(peer) = self.peers.get(name) else {
            return;
        };
        if !peer.is_connected() {
            return;
        }
        let origins = self.origins_for(peer, now);
        for origin in origins {
            if !self.peers[name].read_backing_off(origin, now) {
                self.pump_origin(name, origin, out);
            }
        }
    }

    /// Sends `origin`'s writes that `name` lacks on its active connection, within its window.
    fn pump_origin(&mut self, name: &str, origin: ReplicaId, out: &mut Vec<Effect>) {
        let last = self.durable.get(origin);
        let window = self.opts.peer_window_bytes;
        loop {
            let peer = self.peers.get(name).expect("pump checked the peer exists");
            if peer.reading.contains(&origin) || peer.inflight_bytes >= window {
                return;
            }
            let next = peer.next_seq(origin);
            if next > last {
                return;
            }
            if next <= self.truncated.get(origin) {
                // Truncated: nothing to stream from, ever. Say so rather than leave a gap.
                self.answer_needs_snapshot(name, origin, next, out);
                return;
            }
            let room = (window - peer.inflight_bytes).min(self.opts.max_batch_bytes);
            let entries = self.tail_run(origin, next, last, room);
            if entries.is_empty() {
                let peer = self
                    .peers
                    .get_mut(name)
                    .expect("pump checked the peer exists");
                let Some(conn) = peer.active else { return };
                peer.reading.insert(origin);
                out.push(Effect::ReadLog {
                    peer: name.to_owned(),
                    conn,
                    origin,
                    from: next,
                    to: last,
                    max_bytes: room,
                });
                return;
            }
            self.send_batch(name, origin, entries, out);
        }
    }

    /// Contiguous durable entries of `origin` from `from` held in memory, within `budget`.
    fn tail_run(&self, origin: ReplicaId, from: Seq, to: Seq, budget: usize) -> Vec<LogEntry> {
        let Some(tail) = self.tail.get(&origin).map(|t| &t.entries) else {
            return Vec::new();
        };
        let Some(first) = tail.front().map(LogEntry::seq) else {
            return Vec::new();
        };
        if from < first {
            return Vec::new();
        }
        let start = (from.0 - first.0) as usize;
        let mut used = 0;
        let mut entries = Vec::new();
        for e in tail.iter().skip(start) {
            if e.seq() > to || (used > 0 && used + e.wire_size() > budget) {
                break;
            }
            used += e.wire_size();
            entries.push(e.clone());
        }
        entries
    }

    /// Sends a contiguous run of `origin`'s writes to `name` on its active connection.
    fn send_batch(
        &mut self,
        name: &str,
        origin: ReplicaId,
        entries: Vec<LogEntry>,
        out: &mut Vec<Effect>,
    ) {
        let relayed = origin != self.opts.replica;
        let peer = self
            .peers
            .get_mut(name)
            .expect("callers checked the peer exists");
        if entries.is_empty() {
            return;
        }
        debug_assert!(peer.is_connected(), "batches go on the active connection");
        peer.record_sent(origin, &entries);
        self.counters.batches_sent += 1;
        self.counters.writes_sent += entries.len() as u64;
        if relayed {
            self.counters.writes_relayed += entries.len() as u64;
        }
        let origin_region = self.replicas.get(&origin).cloned().unwrap_or_default();
        let batch = Batch {
            origin,
            origin_region,
            entries,
        };
        peer.send(PeerMsg::Batch(batch), out);
    }

    pub(super) fn log_read(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        origin: ReplicaId,
        entries: Vec<LogEntry>,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.active != Some(conn) {
            return;
        }
        peer.reading.remove(&origin);
        if peer.next_seq(origin) <= self.truncated.get(origin) {
            // The log was truncated past the peer while the read was out (it fell past the
            // retention bound): whatever came back, the answer is "needs snapshot".
            self.pump_origin(name, origin, out);
            return;
        }
        if entries.is_empty() {
            // A read is only asked for durable entries past what the tail holds, so nothing
            // back means storage failed. Asking again at once would spin: back off, alarm.
            let backoff = peer.read_failed(origin, now);
            let from = peer.next_seq(origin);
            self.counters.log_read_failures += 1;
            out.push(Effect::Alarm(Alarm::LogReadFailed {
                peer: name.to_owned(),
                origin,
                from,
                retry_ms: backoff,
            }));
            return;
        }
        peer.read_retry.remove(&origin);
        let expected = peer.next_seq(origin);
        // Keep only the contiguous run that starts where the stream stands now.
        let run: Vec<LogEntry> = entries
            .into_iter()
            .skip_while(|e| e.seq() < expected)
            .enumerate()
            .take_while(|(i, e)| {
                e.seq().0 == expected.0 + *i as u64 && e.write.dot.replica == origin
            })
            .map(|(_, e)| e)
            .collect();
        if !run.is_empty() {
            self.send_batch(name, origin, run, out);
        }
        self.pump_origin(name, origin, out);
    }
}
