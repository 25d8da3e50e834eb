//! Log truncation by causal stability: which log entries no region can still ask for, the
//! retention bound past which a region that stays away stops pinning the log, and the
//! explicit "needs snapshot" answer to a peer that asks for what the log no longer holds.
//!
//! The rule (docs/design.md, "Log truncation"): an entry of origin `o` with sequence number
//! `s` may be dropped once `s <= floor[o]`, where `floor` is the component-wise minimum of
//! this region's durable vector and the durable vector known for every peer (acks joined
//! with the peer's lag-matrix row), leaving out a peer that lacks more than
//! [`Options::log_retention_bytes`](super::Options::log_retention_bytes) or that the log
//! was already truncated past; capped below the first write of each origin held back in
//! quarantine (a later start applies it from the log). `truncated` (the log start) only
//! grows: it is the join of every floor. Storage drops whole segments it covers once they
//! are checkpointed ([`PersistBatch::truncate`](super::PersistBatch::truncate)); the
//! machine never streams an entry it covers, from the log or from the memory tail, and
//! answers [`NeedsSnapshot`] instead.

use std::collections::{BTreeSet, VecDeque};

use conflict::{Dot, ReplicaId, Seq, VersionVector};

use super::peer::Peer;
use super::{Alarm, Effect, Replica, Time};
use crate::limits::{LOG_BYTES_POINTS_MAX, LOG_BYTES_STEP_MAX};
use crate::msg::{LogEntry, NeedsSnapshot, PeerMsg};

/// How many bytes (by [`LogEntry::wire_size`]) one origin's durable log holds from a given
/// sequence number on, as a sparse index: enough to say how far behind a peer is in bytes.
/// Starts empty at each start of the process, so writes logged before it are not counted.
#[derive(Debug, Default)]
pub(super) struct LogBytes {
    /// (seq, bytes of the origin's log before it), ascending.
    points: VecDeque<(Seq, u64)>,
    /// Bytes of the origin's log up to its last durable entry.
    total: u64,
    /// A new point is made once the last one is this many bytes back.
    step: u64,
}

impl LogBytes {
    fn new(retention_bytes: u64) -> Self {
        LogBytes {
            step: (retention_bytes / 1024).clamp(1, LOG_BYTES_STEP_MAX),
            ..LogBytes::default()
        }
    }

    /// The origin's next durable entry, of `size` bytes.
    fn push(&mut self, seq: Seq, size: u64) {
        let due = self
            .points
            .back()
            .is_none_or(|&(_, at)| self.total - at >= self.step);
        if due {
            self.points.push_back((seq, self.total));
        }
        self.total += size;
        if self.points.len() > LOG_BYTES_POINTS_MAX {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.step = self.step.saturating_mul(2);
        }
    }

    /// Bytes of the entries after `have`, over-estimated by less than one step; everything
    /// indexed when `have` is before the first point. The caller knows some entry follows.
    fn after(&self, have: Seq) -> u64 {
        let lacked = have.0.saturating_add(1);
        let i = self.points.partition_point(|&(s, _)| s.0 <= lacked);
        let base = match i {
            0 => self.points.front().map_or(self.total, |p| p.1),
            _ => self.points[i - 1].1,
        };
        self.total - base
    }

    /// Forgets the points no lookup after `upto` (truncated) needs.
    fn trim(&mut self, upto: Seq) {
        while self.points.len() >= 2 && self.points[1].0.0 <= upto.0.saturating_add(1) {
            self.points.pop_front();
        }
    }
}

impl Replica {
    /// Counts the sizes of durable log entries (each origin's in sequence order).
    pub(super) fn count_log_bytes(&mut self, entries: &[LogEntry]) {
        let retention = self.opts.log_retention_bytes;
        for e in entries {
            self.log_bytes
                .entry(e.write.dot.replica)
                .or_insert_with(|| LogBytes::new(retention))
                .push(e.seq(), e.wire_size() as u64);
        }
    }

    /// Bytes of writes durable here that a peer knowing `known` lacks, over every origin but
    /// its own (a region always has its own writes), as far as the index counts them.
    fn behind_bytes(&self, p: &Peer, known: &VersionVector) -> u64 {
        self.durable
            .iter()
            .filter(|(o, s)| Some(*o) != p.replica && known.get(*o) < *s)
            .filter_map(|(o, _)| Some(self.log_bytes.get(&o)?.after(known.get(o))))
            .sum()
    }

    /// Whether the log was truncated past writes that a peer knowing `known` lacks.
    fn truncated_past(&self, p: &Peer, known: &VersionVector) -> bool {
        self.truncated
            .iter()
            .any(|(o, s)| Some(o) != p.replica && known.get(o) < s)
    }

    /// What the log must keep for `name`: what it is known to have durably applied, or,
    /// while it fetches a snapshot from us, what it will have once it installs it.
    fn retained_for(&self, name: &str, p: &Peer) -> VersionVector {
        let mut known = self.known_applied(name, p);
        if let Some((pin, _)) = &p.snapshot_pin {
            known.join(pin);
        }
        known
    }

    /// How far `name` is behind in bytes, and whether the log no longer holds writes it lacks.
    pub(super) fn log_position_of(&self, name: &str, p: &Peer) -> (u64, bool) {
        let known = self.retained_for(name, p);
        (self.behind_bytes(p, &known), self.truncated_past(p, &known))
    }

    /// Moves the log start up to the stable floor (see the module docs), drops what the memory
    /// tail and the byte index no longer need, and raises [`Alarm::PeerNeedsSnapshot`] for
    /// each peer the log is now truncated past: passed by the floor, or come back as a new
    /// replica (a region rebuilt on an empty disk).
    pub(super) fn advance_truncation(&mut self, out: &mut Vec<Effect>) {
        let retention = self.opts.log_retention_bytes;
        let mut floor: Vec<(ReplicaId, Seq)> = self.durable.iter().collect();
        for (name, p) in self.peers.iter().filter(|_| !self.truncate_unstable) {
            let known = self.retained_for(name, p);
            if self.truncated_past(p, &known) || self.behind_bytes(p, &known) > retention {
                continue;
            }
            for (o, s) in &mut floor {
                *s = (*s).min(known.get(*o));
            }
        }
        let mut moved = false;
        for (o, s) in floor {
            let s = self.below_held(o, s);
            if s > self.truncated.get(o) {
                self.truncated.add_dot(&Dot::new(o, s));
                moved = true;
            }
        }
        for (o, s) in self.truncated.iter().filter(|_| moved) {
            if let Some(tail) = self.tail.get_mut(&o) {
                while tail.entries.front().is_some_and(|e| e.seq() <= s) {
                    let old = tail.entries.pop_front().expect("front checked");
                    tail.bytes -= old.wire_size();
                }
            }
            if let Some(index) = self.log_bytes.get_mut(&o) {
                index.trim(s);
            }
        }
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let (behind, past) = self.log_position_of(&name, &self.peers[&name]);
            let peer = self
                .peers
                .get_mut(&name)
                .expect("names come from self.peers");
            if past && !peer.truncated_past {
                self.counters.peers_truncated_past += 1;
                out.push(Effect::Alarm(Alarm::PeerNeedsSnapshot {
                    peer: name.clone(),
                    behind_bytes: behind,
                }));
            }
            peer.truncated_past = past;
        }
    }

    /// `name` asks for `origin`'s writes from `from`, which the log no longer holds: says so
    /// once per connection instead of streaming anything.
    pub(super) fn answer_needs_snapshot(
        &mut self,
        name: &str,
        origin: ReplicaId,
        from: Seq,
        out: &mut Vec<Effect>,
    ) {
        let log_start = self.truncated.get(origin).next();
        let origin_region = self.replicas.get(&origin).cloned().unwrap_or_default();
        let peer = self.peers.get_mut(name).expect("callers checked the peer");
        if !peer.snapshot_told.insert(origin) {
            return;
        }
        self.counters.snapshot_answers_sent += 1;
        let msg = NeedsSnapshot {
            origin,
            origin_region,
            from,
            log_start,
        };
        peer.send(PeerMsg::NeedsSnapshot(msg), out);
    }

    /// `name` cannot serve `origin`'s writes from where this region is: remembered (shown in
    /// status until the writes arrive some other way) and alarmed once per answer.
    pub(super) fn on_needs_snapshot(
        &mut self,
        now: Time,
        name: &str,
        n: NeedsSnapshot,
        out: &mut Vec<Effect>,
    ) {
        let lacks = self.received.get(n.origin).next() < n.log_start;
        self.snapshot_needed
            .retain(|(_, o), s| self.received.get(*o).next() < s.log_start);
        if !lacks {
            return;
        }
        self.bootstrap_on_needs_snapshot(now, name, &n, out);
        if self.snapshot_needed.len() >= conflict::limits::MAX_VV_ENTRIES {
            return;
        }
        self.counters.snapshot_answers_received += 1;
        out.push(Effect::Alarm(Alarm::NeedsSnapshot {
            peer: name.to_owned(),
            origin: n.origin_region.clone(),
            from: n.from,
            log_start: n.log_start,
        }));
        self.snapshot_needed.insert((name.to_owned(), n.origin), n);
    }

    /// Where this region's log starts: writes this vector covers may be gone from it and are
    /// never streamed again.
    pub fn log_start(&self) -> &VersionVector {
        &self.truncated
    }

    /// "Needs snapshot" answers this region holds: (the peer that answered, what it said),
    /// for origins whose writes it still lacks. Empty when it can catch up from the logs.
    pub fn snapshot_needed(&self) -> Vec<(String, NeedsSnapshot)> {
        self.snapshot_needed
            .iter()
            .filter(|((_, o), s)| self.received.get(*o).next() < s.log_start)
            .map(|((peer, _), s)| (peer.clone(), s.clone()))
            .collect()
    }

    /// `s`, or less if a write of `origin` up to it is held back in quarantine: the log is
    /// kept from the first one (a later start applies it from there).
    pub(super) fn below_held(&self, origin: ReplicaId, s: Seq) -> Seq {
        self.held_dots
            .range(Dot::new(origin, Seq::ZERO)..)
            .next()
            .filter(|d| d.replica == origin)
            .map_or(s, |d| s.min(Seq(d.seq.0 - 1)))
    }

    /// The first held-back write of each origin pins the log from there.
    pub(super) fn hold_in_log(&mut self, dots: impl IntoIterator<Item = Dot>) {
        self.held_dots.extend(dots);
    }

    /// Held-back writes applied and durable: they no longer pin the log.
    pub(super) fn release_from_log(&mut self, dots: &[Dot]) {
        for d in dots {
            self.held_dots.remove(d);
        }
    }
}

/// Writes held back in quarantine (not released yet), which pin their origin's log.
pub(super) type HeldDots = BTreeSet<Dot>;
