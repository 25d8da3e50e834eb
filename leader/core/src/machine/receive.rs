//! Receiving batches: order and gaps per origin (`Resync`), validation of replicated writes,
//! and applying them (or quarantining them).

use conflict::{ReplicaId, Seq, VersionVector, Write};

use super::{Alarm, ConnId, Effect, Replica, Time};
use crate::limits::RESYNC_REPEAT_MS;
use crate::msg::{Batch, LogEntry, PeerMsg, Resync};

impl Replica {
    pub(super) fn on_batch(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        b: Batch,
        out: &mut Vec<Effect>,
    ) {
        if b.origin == self.opts.replica {
            // Our own writes coming back (a relay that raced our direct stream): we have them.
            self.counters.duplicates += b.entries.len() as u64;
            return;
        }
        if let Some(bad) = b.entries.iter().find(|e| e.write.dot.replica != b.origin) {
            let detail = format!(
                "batch for origin {} carries a write of {}",
                b.origin, bad.write.dot.replica
            );
            self.violation(name, conn, detail, out);
            return;
        }
        if let Some(detail) = b.entries.iter().find_map(|e| self.malformed(&e.write)) {
            self.violation(name, conn, detail, out);
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.replicas.entry(b.origin) {
            slot.insert(b.origin_region.clone());
            self.staged
                .replicas
                .push((b.origin, b.origin_region.clone()));
        }
        let mut applied_any = false;
        if let Some(first) = b.entries.first().map(LogEntry::seq) {
            self.resync_answered(name, b.origin, first);
        }
        for entry in b.entries {
            let expected = self.received.get(b.origin).next();
            let seq = entry.seq();
            if seq < expected {
                self.counters.duplicates += 1;
                self.check_duplicate(now, &b.origin_region, &entry, out);
                continue;
            }
            if seq > expected {
                self.ask_resync(now, name, b.origin, out);
                break;
            }
            self.apply_remote(now, &b.origin_region, entry, out);
            applied_any = true;
        }
        if !applied_any {
            // Nothing new: tell the sender where we stand so it can release its window.
            if let Some(peer) = self.peers.get_mut(name) {
                peer.last_ack_sent = None;
            }
            self.send_ack(name, out);
        }
    }

    /// Asks the sender of a batch that skipped sequence numbers of `origin` to restart the
    /// origin's run after what we have, unless an earlier request is still unanswered: the
    /// gapped batches that follow it were on the wire before the sender saw it.
    pub(super) fn ask_resync(
        &mut self,
        now: Time,
        name: &str,
        origin: ReplicaId,
        out: &mut Vec<Effect>,
    ) {
        let applied = self.received.get(origin);
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        let pending = peer
            .resync_asked
            .get(&origin)
            .is_some_and(|(_, at)| now.mono_ms < at.saturating_add(RESYNC_REPEAT_MS));
        if pending {
            self.counters.gaps_dropped += 1;
            return;
        }
        peer.resync_asked.insert(origin, (applied, now.mono_ms));
        self.counters.resyncs += 1;
        peer.send(PeerMsg::Resync(Resync { origin, applied }), out);
    }

    /// Forgets an unanswered `Resync` of `origin` once `name` sends a batch of it that starts
    /// no later than the position we asked from: the sender has rewound.
    fn resync_answered(&mut self, name: &str, origin: ReplicaId, first: Seq) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        if let Some((asked, _)) = peer.resync_asked.get(&origin)
            && first <= asked.next()
        {
            peer.resync_asked.remove(&origin);
        }
    }

    /// Why a replicated write is malformed, if it is: [`Write::validate`], or a context that
    /// covers writes of this region it never made (applying it would poison the key: every
    /// later local write to it would find its dot already covered and be refused).
    fn malformed(&self, w: &Write) -> Option<String> {
        if let Err(e) = w.validate() {
            return Some(e.to_string());
        }
        let claimed = w.context.get(self.opts.replica);
        (claimed > self.own_seq).then(|| {
            format!(
                "write {} supersedes write {}:{claimed} of this region, which has made only {} writes",
                w.dot, self.opts.replica, self.own_seq
            )
        })
    }

    fn apply_remote(&mut self, now: Time, origin_region: &str, e: LogEntry, out: &mut Vec<Effect>) {
        // The stamp feeds the clock (capped at the offset bound) but never raises the skew
        // alarm: the per-key causality rule stamps a write above the siblings it met, so a
        // write from a region with a correct clock that overwrote a write from a region far
        // ahead carries that region's lead, and alarming would blame the wrong region.
        // Heartbeats carry each region's own clock and raise the alarm (`on_heartbeat`).
        self.clock.observe(e.write.hlc, now.wall_ms);
        match self.resolvers.get(&e.table).cloned() {
            Some(_) if self.mismatched(origin_region, &e.table) => {
                // Applying it with a different resolver would silently diverge the table. It
                // stays in the log (nothing is lost, and it is relayed to regions that agree)
                // and is counted, while the alarm tells the operator which resolvers differ.
                self.quarantine(origin_region, &e);
            }
            Some(_) if self.context_overflows(&e.table, &e.key, &e.write) => {
                // Storage could not read the key back (see `context_overflows`): keep the
                // write in the log, apply nothing, and say so.
                self.counters.quarantined += 1;
                self.counters.context_overflows += 1;
                self.staged.checkpoint = true;
                out.push(Effect::Alarm(Alarm::ContextTooLarge {
                    origin: origin_region.to_owned(),
                    table: e.table.clone(),
                    dot: e.write.dot,
                }));
            }
            Some(r) => {
                self.check_causality(now, origin_region, &e, out);
                self.apply(now, &e.table, &e.key, &e.write, r.as_ref());
            }
            None => {
                self.quarantine(origin_region, &e);
                out.push(Effect::Alarm(Alarm::UnknownTable {
                    table: e.table.clone(),
                    origin: origin_region.to_owned(),
                }));
            }
        }
        self.received.add_dot(&e.write.dot);
        self.counters.remote_applied += 1;
        self.staged.log.push(e);
    }

    /// Whether applying `w` would grow the key's causal context past
    /// [`conflict::MAX_VV_ENTRIES`] replicas: storage refuses to decode a longer vector (a
    /// hostile or broken peer could otherwise make the data directory unreadable at the next
    /// start, two writes with long contexts at a time).
    pub(super) fn context_overflows(&self, table: &str, key: &[u8], w: &Write) -> bool {
        let slot = (table.to_owned(), key.to_vec());
        let current = self.keys.get(&slot).map(|s| &s.context);
        let upper = current.map_or(0, VersionVector::len) + w.context.len() + 1;
        if upper <= conflict::MAX_VV_ENTRIES {
            return false; // the cheap bound settles nearly every write
        }
        let mut joined = current.cloned().unwrap_or_default();
        joined.join(&w.context);
        joined.add_dot(&w.dot);
        joined.len() > conflict::MAX_VV_ENTRIES
    }
}
