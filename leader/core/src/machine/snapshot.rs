//! Snapshot bootstrap: a region whose peers' logs no longer hold what it lacks (rebuilt on an
//! empty disk, new, or past the retention bound) fetches their key states instead, installs
//! them, and catches up from the vector they reflect (docs/design.md, "Snapshot bootstrap").
//!
//! # Serving
//! Every [`SnapshotRequest`] is answered on its own from the sender's last checkpoint
//! ([`Effect::ReadSnapshot`]): key states exactly as of the checkpoint's applied vector,
//! durable by construction, read in one consistent view. The sender keeps no transfer
//! state but a pin: while a peer fetches, its log is kept from the vector the peer will
//! have (`Peer::snapshot_pin`, within the retention bound), so that the catch-up after the
//! install finds what it needs.
//!
//! # Receiving
//! Chunks are joined into the key states as they come ([`conflict::KeyState::join`]) and recorded
//! with the transfer's progress by a checkpoint each ([`PersistBatch::bootstrap`]), so a
//! crash or a cut link resumes from the last chunk received, from any peer. Chunks served at
//! different times reflect different vectors: a key of one chunk reflects exactly that
//! chunk's vector. So the install raises the applied vector to the *meet* of the chunks'
//! vectors (`low`: every key reflects at least that), and the region keeps serving nothing
//! until it has caught up to their *join* (`high`: no key reflects more), when every key is
//! exactly its state at the applied vector. Writes redelivered between the two are ignored
//! by the key states (rule 1 of [`conflict::KeyState::apply`]), since their dots are in the contexts.
//!
//! The install is a batch of its own, after the last chunk's states are durable: a crash
//! between cannot leave an applied vector on disk that claims states the disk lacks.

use conflict::limits::{MAX_KEY_BYTES, MAX_TABLE_NAME_BYTES};
use conflict::{Dot, KeyState, VersionVector};
use serde::{Deserialize, Serialize};

use super::{Alarm, ConnId, Effect, Replica, SnapshotPiece, Time, WriteError};
use crate::limits::{SNAPSHOT_REQUEST_TIMEOUT_MS, SNAPSHOT_UNAVAILABLE_BACKOFF_MS};
use crate::msg::{
    NeedsSnapshot, PeerMsg, SlotKey, SnapshotChunk, SnapshotRequest, SnapshotUnavailable,
};

/// Where a snapshot transfer stands. Recorded with each chunk's states, so a restart resumes
/// it; shown in `/v1/status` and `meridian status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// What is happening now.
    pub phase: BootstrapPhase,
    /// The last key received: the next request starts after it.
    pub after: Option<SlotKey>,
    /// Meet of the received chunks' vectors: what the applied vector becomes at the install.
    pub low: Option<VersionVector>,
    /// Join of the received chunks' upper vectors, over every round of this bootstrap: no
    /// key reflects more, and the region serves again once it has applied it.
    pub high: VersionVector,
    /// Key states received (in this round).
    pub keys: u64,
    /// Bytes of key states received (in this round), by [`conflict::KeyState::estimated_bytes`].
    pub bytes: u64,
    /// Chunks received (in this round).
    pub chunks: u64,
    /// Keys in the serving region's checkpoint, as its last chunk said: the progress bar's end.
    pub total_keys: u64,
    /// The region serving the transfer (the last one asked).
    pub source: Option<String>,
    /// Why the bootstrap started, for the operator.
    pub reason: String,
    /// Transfers started over since the first (a sender's log was truncated past what the
    /// chunks reflect: the retention bound ran out during the transfer).
    pub rounds: u32,
    /// Regions that answered, in this round, that they are being bootstrapped themselves;
    /// once every connected one has, they are asked for their partial states.
    pub refused_by: std::collections::BTreeSet<String>,
    /// A chunk of this round came from a region being bootstrapped itself: its catch-up may
    /// wait for writes that region waits for too, so any region's "needs snapshot" starts a
    /// new round.
    pub partial: bool,
    /// Join of the chunks' collected floors: the install takes what `low` covers of it into
    /// this region's floor (keys the senders collected are absent from the chunks).
    pub collected: VersionVector,
}

/// The phases of a [`Bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootstrapPhase {
    /// Chunks are being fetched.
    Fetching,
    /// Every chunk is durable here; the install comes next.
    Received,
    /// Installed: catching up from `low` until the applied vector reaches `high`.
    CatchingUp,
    /// No transfer yet: the data directory holds nothing, and the peers have not shown yet
    /// whether a snapshot is needed (`learn.rs`). Never recorded on disk.
    Learning,
}

impl Bootstrap {
    pub(super) fn new(source: &str, reason: String) -> Self {
        Bootstrap {
            phase: BootstrapPhase::Fetching,
            after: None,
            low: None,
            high: VersionVector::new(),
            keys: 0,
            bytes: 0,
            chunks: 0,
            total_keys: 0,
            source: Some(source.to_owned()),
            reason,
            rounds: 0,
            refused_by: std::collections::BTreeSet::new(),
            partial: false,
            collected: VersionVector::new(),
        }
    }

    /// Starts the transfer over from the first key (the source's log no longer continues
    /// from what the chunks reflect). `high` stays: keys joined in earlier rounds may reflect
    /// up to it.
    fn new_round(&mut self, source: &str, reason: String) {
        let (high, rounds) = (std::mem::take(&mut self.high), self.rounds + 1);
        *self = Bootstrap::new(source, reason);
        self.high = high;
        self.rounds = rounds;
    }

    /// One line for the operator and for a refused client: phase, keys, source.
    pub fn progress(&self) -> String {
        let from = self.source.as_deref().unwrap_or("no region yet");
        match self.phase {
            BootstrapPhase::Fetching => format!(
                "fetching from {from}: {} of about {} keys, {} chunks",
                self.keys, self.total_keys, self.chunks
            ),
            BootstrapPhase::Received => format!("all {} keys received, installing", self.keys),
            BootstrapPhase::CatchingUp => {
                format!(
                    "{} keys installed, catching up with the writes since",
                    self.keys
                )
            }
            BootstrapPhase::Learning => self.reason.clone(),
        }
    }
}

/// Sequence numbers from here on are refused in a snapshot: no replica makes 2^63 writes, and
/// a vector installed with them would overflow the next sequence number of their origin.
const SEQ_UNREACHABLE: u64 = 1 << 63;

impl Replica {
    // ---- serving -------------------------------------------------------------------------

    /// `name` asks for key states after `req.after`: read them from the last checkpoint.
    pub(super) fn on_snapshot_request(
        &mut self,
        name: &str,
        conn: ConnId,
        mut req: SnapshotRequest,
        out: &mut Vec<Effect>,
    ) {
        // A region still learning holds nothing to serve, even partially.
        let refuse = self.learning() || !req.partial_ok;
        if let Some(b) = self.bootstrap.as_ref().filter(|_| refuse) {
            let reason = format!(
                "region '{}' is itself being bootstrapped from a snapshot ({}); ask another region",
                self.opts.region,
                b.progress()
            );
            let peer = &self.peers[name];
            let msg = PeerMsg::SnapshotUnavailable(SnapshotUnavailable { reason });
            peer.send_on(conn, msg, out);
            return;
        }
        // What the receiver has so far reflects a vector this log no longer continues from:
        // catching up after installing it would be impossible, so the transfer starts over.
        let restart = req.low.as_ref().is_some_and(|low| {
            // What the receiver will have once it installs: `low`, and what it applied
            // meanwhile from the streams of origins whose logs still serve it.
            let mut will_have = self.known_applied(name, &self.peers[name]);
            will_have.join(low);
            !will_have.dominates(&self.truncated)
        });
        if restart {
            req.after = None;
            req.low = None;
        }
        let peer = self.peers.get_mut(name).expect("frame() checked the peer");
        if peer.snapshot_reading {
            return; // one read per peer at a time; the receiver asks again after its timeout
        }
        if let Some(low) = &req.low {
            let until = peer.snapshot_pin.take().map(|(_, u)| u).unwrap_or_default();
            peer.snapshot_pin = Some((low.clone(), until));
        }
        peer.snapshot_reading = true;
        peer.snapshot_restart = restart;
        let max_bytes = (req.max_bytes as usize).clamp(1, self.opts.snapshot_chunk_bytes.max(1));
        out.push(Effect::ReadSnapshot {
            peer: name.to_owned(),
            conn,
            request: req,
            max_bytes,
        });
    }

    /// Storage read a piece for `name`: send it, unless the checkpoint is older than the log
    /// start (then a fresh checkpoint comes first, and the read is made again after it).
    pub(super) fn snapshot_read(
        &mut self,
        name: &str,
        conn: ConnId,
        request: SnapshotRequest,
        result: Result<SnapshotPiece, String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        peer.snapshot_reading = false;
        if peer.active != Some(conn) {
            return; // the connection went away; the receiver asks again on the next one
        }
        let piece = match result {
            Ok(piece) => piece,
            Err(e) => {
                let reason = format!(
                    "region '{}' could not read its checkpoint for the snapshot: {e}; ask another region",
                    self.opts.region
                );
                peer.send_on(
                    conn,
                    PeerMsg::SnapshotUnavailable(SnapshotUnavailable { reason }),
                    out,
                );
                return;
            }
        };
        if !piece.applied.dominates(&self.truncated) {
            peer.snapshot_retry = Some((conn, request));
            self.staged.checkpoint = true;
            return;
        }
        let pin = match &request.low {
            Some(low) => low.meet(&piece.applied),
            None => piece.applied.clone(),
        };
        peer.snapshot_pin = Some((pin, self.durable.clone()));
        // A region being bootstrapped itself serves too (two regions past each other's
        // retention bound need each other): its states reflect at least its checkpoint's
        // vector and at most that joined with the vectors its own chunks reflected.
        let mut upper = piece.applied.clone();
        if let Some(b) = &self.bootstrap {
            upper.join(&b.high);
        }
        let chunk = SnapshotChunk {
            after: request.after,
            upper,
            applied: piece.applied,
            states: piece.states,
            done: piece.done,
            total_keys: piece.total_keys,
            replicas: self.replicas.iter().map(|(r, n)| (*r, n.clone())).collect(),
            hlc: self.clock.last(),
            partial: self.bootstrap.is_some(),
            collected: self.collected.clone(),
            restart: std::mem::take(&mut peer.snapshot_restart),
        };
        self.counters.snapshot_chunks_sent += 1;
        peer.send_on(conn, PeerMsg::SnapshotChunk(chunk), out);
    }

    /// A checkpoint is durable: reads that waited for one are made again.
    pub(super) fn retry_snapshot_reads(&mut self, out: &mut Vec<Effect>) {
        for (name, peer) in &mut self.peers {
            let Some((conn, request)) = peer.snapshot_retry.take() else {
                continue;
            };
            if peer.active != Some(conn) {
                continue;
            }
            peer.snapshot_reading = true;
            let max_bytes =
                (request.max_bytes as usize).clamp(1, self.opts.snapshot_chunk_bytes.max(1));
            out.push(Effect::ReadSnapshot {
                peer: name.clone(),
                conn,
                request,
                max_bytes,
            });
        }
    }

    // ---- receiving -----------------------------------------------------------------------

    /// Starts a transfer from `peer` (or a new round of one whose catch-up found a log
    /// truncated past it).
    pub(super) fn start_bootstrap(
        &mut self,
        now: Time,
        peer: &str,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        match &mut self.bootstrap {
            Some(b) if b.phase == BootstrapPhase::Learning => {
                *b = Bootstrap::new(peer, reason.clone());
            }
            Some(b) if b.phase != BootstrapPhase::CatchingUp => return,
            Some(b) => {
                b.new_round(peer, reason.clone());
            }
            None => self.bootstrap = Some(Bootstrap::new(peer, reason.clone())),
        }
        self.snapshot_asked = None;
        self.counters.snapshots_started += 1;
        out.push(Effect::Alarm(Alarm::SnapshotStarted {
            peer: peer.to_owned(),
            reason,
        }));
        self.pump_snapshot(now, out);
    }

    /// A "needs snapshot" answer: starts a transfer, unless one is under way. While
    /// catching up after an install, only the source's answer starts a new round (its log is
    /// pinned for this region, so it says so only once the retention bound ran out), or any
    /// answer when the source is gone: another region's log may well be truncated past the
    /// snapshot, and the source serves those writes anyway.
    pub(super) fn bootstrap_on_needs_snapshot(
        &mut self,
        now: Time,
        name: &str,
        n: &NeedsSnapshot,
        out: &mut Vec<Effect>,
    ) {
        if let Some(b) = &self.bootstrap
            && b.phase == BootstrapPhase::CatchingUp
        {
            let source_up = b
                .source
                .as_deref()
                .is_some_and(|s| self.peers.get(s).is_some_and(|p| p.is_connected()));
            // A source that was itself being bootstrapped may wait for the very writes we
            // lack (regions bootstrapped from each other): then any answer starts a round.
            if source_up && b.source.as_deref() != Some(name) && !b.partial {
                return;
            }
        }
        let reason = format!(
            "region '{name}' no longer holds the writes of {} from {} on (its log starts at {})",
            if n.origin_region.is_empty() {
                "an origin"
            } else {
                &n.origin_region
            },
            n.from,
            n.log_start
        );
        self.start_bootstrap(now, name, reason, out);
    }

    /// Asks for the next chunk if none is outstanding (or the last request timed out): from
    /// the source if it is connected, else from any connected peer that did not just say it
    /// cannot serve.
    pub(super) fn pump_snapshot(&mut self, now: Time, out: &mut Vec<Effect>) {
        let Some(b) = &self.bootstrap else { return };
        if b.phase != BootstrapPhase::Fetching {
            return;
        }
        if let Some((_, at)) = &self.snapshot_asked {
            if now.mono_ms < at + SNAPSHOT_REQUEST_TIMEOUT_MS {
                return;
            }
            self.snapshot_asked = None;
        }
        let usable = |name: &str| {
            self.peers.get(name).is_some_and(|p| p.is_connected())
                && self
                    .snapshot_skip
                    .get(name)
                    .is_none_or(|until| now.mono_ms >= *until)
        };
        let source = b
            .source
            .clone()
            .filter(|s| usable(s))
            .or_else(|| self.peers.keys().find(|n| usable(n)).cloned());
        let Some(source) = source else { return };
        // Every connected region said it is being bootstrapped itself: one of them serves
        // its partial states, or none would ever finish (each waiting for another).
        let partial_ok = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_connected())
            .all(|(n, _)| b.refused_by.contains(n));
        let request = SnapshotRequest {
            after: b.after.clone(),
            max_bytes: self.opts.snapshot_chunk_bytes as u64,
            low: b.low.clone(),
            partial_ok,
        };
        self.peers[&source].send(PeerMsg::SnapshotRequest(request), out);
        self.snapshot_asked = Some((source.clone(), now.mono_ms));
        if let Some(b) = &mut self.bootstrap {
            b.source = Some(source);
        }
    }

    /// A chunk from `name`: joined into the key states and recorded by a checkpoint with the
    /// transfer's progress; the next chunk is asked for at once.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        c: SnapshotChunk,
        out: &mut Vec<Effect>,
    ) {
        let asked = self.snapshot_asked.as_ref().is_some_and(|(p, _)| p == name);
        let Some(b) = self
            .bootstrap
            .as_ref()
            .filter(|b| b.phase == BootstrapPhase::Fetching)
        else {
            return; // not asked for (any more): a late answer
        };
        if !asked || (!c.restart && c.after != b.after) {
            return; // an answer to an earlier request
        }
        if let Some(detail) = self.malformed_chunk(&c) {
            self.violation(name, conn, detail, out);
            return;
        }
        self.snapshot_asked = None;
        let end = super::events::piece_end(&c.after, &c.states);
        self.forget_what_the_chunk_dropped(&c, end.as_ref());
        let (mut keys, mut bytes) = (0u64, 0u64);
        for (table, key, state) in c.states {
            if !self.resolvers.contains_key(&table) {
                // A table not configured here: nothing here could read it. Add the table to
                // every region before bootstrapping one (docs/design.md).
                self.counters.snapshot_keys_skipped += 1;
                continue;
            }
            keys += 1;
            bytes += state.estimated_bytes() as u64;
            self.join_state((table, key), state);
        }
        for (r, region) in c.replicas {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.replicas.entry(r) {
                slot.insert(region.clone());
                self.staged.replicas.push((r, region));
            }
        }
        self.clock.observe(c.hlc, now.wall_ms);
        self.counters.snapshot_chunks_received += 1;
        self.counters.snapshot_keys_received += keys;
        let b = self.bootstrap.as_mut().expect("checked above");
        if c.restart {
            let reason = b.reason.clone();
            b.new_round(name, reason);
        }
        b.low = Some(match &b.low {
            Some(low) => low.meet(&c.applied),
            None => c.applied.clone(),
        });
        b.high.join(&c.applied);
        b.high.join(&c.upper);
        b.after = end;
        b.keys += keys;
        b.bytes += bytes;
        b.chunks += 1;
        b.total_keys = c.total_keys;
        b.partial |= c.partial;
        b.collected.join(&c.collected);
        if c.done {
            b.phase = BootstrapPhase::Received;
        }
        self.staged.bootstrap = true;
        self.staged.checkpoint = true;
        self.pump_snapshot(now, out);
    }

    /// Keys of this region in the chunk's key range that the chunk lacks: the sender never
    /// had them, or collected them. A sibling the chunk's vector covers was seen there and is
    /// gone (superseded by a delete that was then collected): it goes here too, or the install
    /// would keep it while the catch-up never brings the delete.
    fn forget_what_the_chunk_dropped(&mut self, c: &SnapshotChunk, end: Option<&SlotKey>) {
        use std::ops::Bound;
        let lower = match &c.after {
            Some(a) if !c.restart => Bound::Excluded(a.clone()),
            _ => Bound::Unbounded,
        };
        let upper = match end {
            Some(e) if !c.done => Bound::Included(e.clone()),
            _ => Bound::Unbounded,
        };
        let in_chunk: std::collections::BTreeSet<(&str, &[u8])> = c
            .states
            .iter()
            .map(|(t, k, _)| (t.as_str(), k.as_slice()))
            .collect();
        let mut changed = Vec::new();
        let mut dropped_top = None;
        for (slot, state) in self.keys.range((lower, upper)) {
            if in_chunk.contains(&(slot.0.as_str(), slot.1.as_slice())) {
                continue;
            }
            if let Some(top) = state
                .siblings
                .iter()
                .filter(|s| c.applied.covers(&s.dot))
                .map(|s| s.hlc)
                .max()
            {
                dropped_top = dropped_top.max(Some(top));
                changed.push(slot.clone());
            }
        }
        for slot in &changed {
            self.keys.update(slot, |state| {
                state.siblings.retain(|s| !c.applied.covers(&s.dot));
            });
        }
        // Later writes here must still be stamped above what went (the per-key rule).
        if let Some(top) = dropped_top {
            self.clock.raise_to(top);
        }
        for slot in changed {
            self.note_tombstone(&slot);
            self.staged.keys.insert(slot);
        }
    }

    /// Whether a vector a peer sent claims writes of this region it never made (joining it
    /// would poison keys, as a replicated write claiming them would), or names sequence
    /// numbers of 2^63 and more.
    pub(super) fn impossible_vector(&self, v: &VersionVector) -> bool {
        v.get(self.opts.replica) > self.own_seq || v.iter().any(|(_, s)| s.0 >= SEQ_UNREACHABLE)
    }

    /// Why a chunk is malformed, if it is: a vector (the chunk's, or a key's context) that
    /// claims writes of this region it never made or sequence numbers no replica can reach,
    /// or states that [`Replica::malformed_states`] refuses.
    fn malformed_chunk(&self, c: &SnapshotChunk) -> Option<String> {
        let bad_vector = |v: &VersionVector| self.impossible_vector(v);
        if bad_vector(&c.applied) || bad_vector(&c.upper) || bad_vector(&c.collected) {
            return Some(format!(
                "snapshot chunk claims the vector {:?}: writes of this region it never made ({} made), or unreachable sequence numbers",
                c.applied, self.own_seq
            ));
        }
        self.malformed_states("snapshot chunk", &c.states, c.after.as_ref())
    }

    /// Why key states a peer sent in `what` (a snapshot chunk, an anti-entropy message) are
    /// malformed, if they are: keys not in ascending order after `after`, or too long; or a
    /// key's context that claims writes of this region it never made (joining it would poison
    /// the key, as a replicated write would) or sequence numbers no replica can reach.
    pub(super) fn malformed_states(
        &self,
        what: &str,
        states: &[(String, Vec<u8>, KeyState)],
        after: Option<&SlotKey>,
    ) -> Option<String> {
        let mut prev: Option<(&str, &[u8])> = None;
        for (t, k, state) in states {
            let here = (t.as_str(), k.as_slice());
            let after_cursor = after.is_none_or(|(at, ak)| here > (at.as_str(), ak.as_slice()));
            if prev.is_some_and(|p| p >= here) || !after_cursor {
                return Some(format!(
                    "{what} whose keys are not in ascending order after the cursor"
                ));
            }
            if t.len() > MAX_TABLE_NAME_BYTES || k.len() > MAX_KEY_BYTES {
                return Some(format!(
                    "{what} with a table name of {} bytes or a key of {} bytes (limits {MAX_TABLE_NAME_BYTES} and {MAX_KEY_BYTES})",
                    t.len(),
                    k.len()
                ));
            }
            if self.impossible_vector(&state.context) {
                return Some(format!(
                    "{what}'s key {t}/{} has the context {:?}: writes of this region it never made, or unreachable sequence numbers",
                    String::from_utf8_lossy(k),
                    state.context
                ));
            }
            prev = Some(here);
        }
        None
    }

    /// `name` cannot serve: the next request goes elsewhere for a while.
    pub(super) fn on_snapshot_unavailable(&mut self, now: Time, name: &str, out: &mut Vec<Effect>) {
        if self.snapshot_asked.as_ref().is_some_and(|(p, _)| p == name) {
            self.snapshot_asked = None;
        }
        if let Some(b) = &mut self.bootstrap {
            b.refused_by.insert(name.to_owned());
        }
        self.snapshot_skip.insert(
            name.to_owned(),
            now.mono_ms + SNAPSHOT_UNAVAILABLE_BACKOFF_MS,
        );
        self.pump_snapshot(now, out);
    }

    /// The last chunk's states are durable: raise the applied vector to `low` (a batch of
    /// its own), move the log start there (this region's log holds nothing contiguous
    /// before it), and catch up from there.
    pub(super) fn install_snapshot(&mut self, out: Option<&mut Vec<Effect>>) {
        let Some(b) = self
            .bootstrap
            .as_mut()
            .filter(|b| b.phase == BootstrapPhase::Received)
        else {
            return;
        };
        let low = if self.install_at_high {
            b.high.clone()
        } else {
            b.low.clone().unwrap_or_default()
        };
        b.phase = BootstrapPhase::CatchingUp;
        let (keys, chunks, source) = (b.keys, b.chunks, b.source.clone().unwrap_or_default());
        let b_collected = b.collected.clone();
        // What the tail may hold of each origin: its durable run.
        let before = self.durable.clone();
        // Chunks never claim writes of ours we did not make (`malformed_chunk`), so our own
        // entry stays at `own_seq`.
        self.received.join(&low);
        // Writes applied since the last batch, staged for the next: those the install covers
        // are in the key states already, and the log continues after `low` (below).
        let mut dropped = std::collections::BTreeSet::new();
        self.staged.log.retain(|e| {
            let covered = low.covers(&e.write.dot);
            if covered {
                dropped.insert(e.write.dot);
            }
            !covered
        });
        self.staged
            .quarantined
            .retain(|q| !dropped.contains(&q.dot));
        for dot in &dropped {
            self.held_dots.remove(dot);
        }
        for (o, s) in low.iter() {
            let s = self.below_held(o, s);
            if s > self.truncated.get(o) {
                self.truncated.add_dot(&Dot::new(o, s));
            }
            if s > before.get(o) {
                // The tail holds durable writes before the jump (those staged and not yet
                // durable were dropped above); the stream continues after it.
                self.tail.remove(&o);
            }
        }
        // What the senders collected and the install covers is seen here too.
        let collected = b_collected.meet(&low);
        self.collected.join(&collected);
        self.staged.installed = Some(low);
        self.staged.bootstrap = true;
        self.staged.checkpoint = true;
        self.counters.snapshots_installed += 1;
        if let Some(out) = out {
            out.push(Effect::Alarm(Alarm::SnapshotInstalled {
                peer: source,
                keys,
                chunks,
            }));
        }
    }

    /// Done once caught up to `high`: from here the region serves reads and takes writes.
    pub(super) fn finish_bootstrap(&mut self, now: Time, out: &mut Vec<Effect>) {
        let install_pending =
            self.staged.installed.is_some() || self.in_flight.as_ref().is_some_and(|f| f.installs);
        let caught_up = self.bootstrap.as_ref().is_some_and(|b| {
            b.phase == BootstrapPhase::CatchingUp
                && !install_pending
                && self.durable.dominates(&b.high)
        });
        if caught_up {
            self.bootstrap = None;
            // A region that answered "needs snapshot" while this one caught up from another
            // source (its log did not reach back to the snapshot) may still hold writes no
            // snapshot brought: if some are still lacking, a new transfer starts from it.
            // The answer is used once: if that region still cannot serve after this round, it
            // says so again (at most once per heartbeat), so a stale answer (its log start
            // recovered older after a restart) cannot start rounds for ever.
            if let Some((peer, n)) = self.snapshot_needed().into_iter().next() {
                self.snapshot_needed.retain(|(p, _), _| *p != peer);
                self.bootstrap_on_needs_snapshot(now, &peer, &n, out);
            }
        }
    }

    /// The refusal of a client write while bootstrapping.
    pub(super) fn bootstrapping_error(&self) -> Option<WriteError> {
        self.bootstrap.as_ref().map(|b| WriteError::Bootstrapping {
            progress: b.progress(),
        })
    }

    /// The snapshot transfer under way, if this region is being bootstrapped: it serves no
    /// reads and takes no writes until this is `None`.
    pub fn bootstrap(&self) -> Option<&Bootstrap> {
        self.bootstrap.as_ref()
    }

    /// The next time a snapshot request times out, if one is outstanding.
    pub(super) fn snapshot_deadline(&self) -> Option<u64> {
        let fetching = self
            .bootstrap
            .as_ref()
            .is_some_and(|b| b.phase == BootstrapPhase::Fetching);
        let asked = self.snapshot_asked.as_ref().filter(|_| fetching)?;
        Some(asked.1 + SNAPSHOT_REQUEST_TIMEOUT_MS)
    }
}
