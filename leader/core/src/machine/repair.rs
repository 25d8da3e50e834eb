//! Key states learned from another region, joined into this region's: snapshot chunks, the
//! answers of quorum reads (read repair) and anti-entropy's repairs all arrive as whole key
//! states rather than as log entries, and all enter the same way, here.
//!
//! Joining is safe because key states form a join-semilattice whose elements carry their
//! dots: a write joined early is ignored when the log delivers it later (rule 1 of
//! [`conflict::KeyState::apply`]). Such a state exists nowhere in this region's log, so the
//! batch that records it is a checkpoint: a replay after a crash could not rebuild it.

use conflict::KeyState;

use super::Replica;
use crate::msg::SlotKey;

impl Replica {
    /// Joins `state`, as another region holds it, into this region's state of `slot` (whose
    /// table must be configured here) and stages it for the next batch, as a checkpoint.
    /// Returns whether the key's state changed.
    ///
    /// A sibling this region has received and no longer holds was superseded here (or its
    /// key's tombstone collected, when no context here says so): the state does not bring it
    /// back. Siblings of ours that the joined state supersedes go; later writes here must still
    /// be stamped above them (the per-key causality rule), so the clock is raised to them first.
    pub(super) fn join_state(&mut self, slot: SlotKey, mut state: KeyState) -> bool {
        let ours = self.keys.get(&slot);
        let received = &self.received;
        state.siblings.retain(|s| {
            !received.covers(&s.dot)
                || ours.is_some_and(|o| o.siblings.iter().any(|x| x.dot == s.dot))
        });
        self.join_as_is(slot, state)
    }

    /// Joins `state` into this region's state of `slot` as [`KeyState::join`] does, without
    /// [`Replica::join_state`]'s filter, and stages it as a checkpoint; returns whether the
    /// key's state changed. For anti-entropy's repairs, which join only states whose every
    /// write both regions have applied: there a sibling received here and held nowhere here
    /// is exactly what a lost key looks like (a key collected here holds nothing live, and
    /// anti-entropy never compares those).
    pub(super) fn join_as_is(&mut self, slot: SlotKey, state: KeyState) -> bool {
        let Some(resolver) = self.resolvers.get(&slot.0).cloned() else {
            return false;
        };
        let ours = self.keys.get(&slot);
        if let Some(top) = ours.and_then(|o| o.siblings.iter().map(|s| s.hlc).max()) {
            self.clock.raise_to(top);
        }
        let before = ours.cloned();
        let after = self.keys.update(&slot, |entry| {
            entry.join(&state, resolver.as_ref());
            entry.clone()
        });
        if before.is_none() && after == KeyState::default() {
            // Nothing came of it: no empty row.
            self.keys.remove(&slot);
            return false;
        }
        if before.as_ref() == Some(&after) {
            return false;
        }
        self.note_tombstone(&slot);
        self.staged.keys.insert(slot);
        self.staged.checkpoint = true;
        true
    }
}
