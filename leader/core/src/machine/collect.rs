//! Tombstone collection by causal stability (docs/design.md, "Tombstone collection"): a delete
//! every region has durably applied, once nothing concurrent with it can still arrive here,
//! is dropped from its key, and a key left with nothing is dropped whole. No timers.
//!
//! With `V_R` the durable applied vector last known of each region (ours for ourselves), `S`
//! their meet and `J` their join, a tombstone sibling `d` goes once `d ≤ S` and
//! `durable ≥ J`; a key with no sibling left and a context `≤ S` goes whole. Writes of a
//! replica id that no region has any more (a region rebuilt on an empty disk) count as
//! delivered once every region has the same number of them.

use std::collections::BTreeSet;

use conflict::{ReplicaId, VersionVector};

use super::{Replica, Time};
use crate::limits::{COLLECT_INTERVAL_MS, COLLECT_KEYS_PER_PASS};

/// Keys that hold a tombstone sibling: the only ones collection looks at.
pub(super) type Candidates = BTreeSet<(String, Vec<u8>)>;

impl Replica {
    /// A key may now hold a tombstone sibling (a delete applied, replayed or installed):
    /// it becomes a candidate for collection.
    pub(super) fn note_tombstone(&mut self, slot: &(String, Vec<u8>)) {
        if self.keys.get(slot).is_some_and(holds_nothing_live) {
            self.tombstones.insert(slot.clone());
        }
    }

    /// The meet and the join of every region's durable applied vector as known here, or
    /// `None` while some region's is unknown (nothing is stable then).
    fn stability(&self) -> Option<(VersionVector, VersionVector)> {
        let mut low = self.durable.clone();
        let mut high = self.durable.clone();
        let mut current: BTreeSet<ReplicaId> = BTreeSet::from([self.opts.replica]);
        for (name, p) in &self.peers {
            let known = self.known_applied(name, p);
            if known.is_empty() {
                return None;
            }
            low = low.meet(&known);
            high.join(&known);
            current.extend(p.replica);
        }
        // A replica id no region has any more makes no more writes; its writes in flight are
        // delivered once every region holds as many of them.
        let retired_in_flight = high
            .iter()
            .any(|(o, s)| !current.contains(&o) && low.get(o) != s);
        (!retired_in_flight).then_some((low, high))
    }

    /// The stable vector to collect under, or `None` when nothing may be collected now:
    /// some region's vector is unknown, or a write concurrent with a delete may still be on
    /// its way here (`durable` does not cover the join).
    fn collection_floor(&self) -> Option<VersionVector> {
        if self.bootstrap.is_some() {
            return None;
        }
        let (stable, everything) = if self.collect_unstable {
            // The negative control: what is durable here counts as stable, as a collection
            // on a timer (a grace period) would assume.
            (self.durable.clone(), VersionVector::new())
        } else {
            self.stability()?
        };
        self.durable.dominates(&everything).then_some(stable)
    }

    /// One pass of collection, at most every [`COLLECT_INTERVAL_MS`] while candidates exist.
    pub(super) fn collect_tombstones(&mut self, now: Time) {
        if self.tombstones.is_empty() || now.mono_ms < self.last_collect_ms + COLLECT_INTERVAL_MS {
            return;
        }
        self.last_collect_ms = now.mono_ms;
        let Some(stable) = self.collection_floor() else {
            return;
        };
        let slots: Vec<(String, Vec<u8>)> = self
            .tombstones
            .iter()
            .take(COLLECT_KEYS_PER_PASS)
            .cloned()
            .collect();
        let (mut dropped, mut changed) = (false, false);
        for slot in slots {
            if self.stable.contains_key(&slot) {
                continue; // a write of ours to it is not durable yet
            }
            let Some(state) = self.keys.get(&slot) else {
                self.tombstones.remove(&slot);
                continue;
            };
            let (drops, drop_key) = plan(state, &stable);
            changed |= drops > 0 || drop_key;
            if drops > 0 {
                let gone = state.siblings.iter().filter(|s| collectable(s, &stable));
                if let Some(top) = gone.map(|s| s.hlc).max() {
                    self.clock.raise_to(top);
                }
                self.keys.update(&slot, |state| {
                    state.siblings.retain(|s| !collectable(s, &stable));
                });
                self.counters.tombstones_collected += drops as u64;
                self.staged.keys.insert(slot.clone());
            }
            if drop_key {
                dropped = true;
                self.keys.remove(&slot);
                self.tombstones.remove(&slot);
                self.counters.keys_collected += 1;
                self.staged.keys.insert(slot);
            } else if !self.keys.get(&slot).is_some_and(holds_nothing_live) {
                // Values live on and no tombstone is left: nothing to collect until the
                // next delete.
                self.tombstones.remove(&slot);
            }
        }
        if dropped {
            // Reads and writes of those keys see their dots through the floor from now on.
            self.collected.join(&stable);
        }
        if changed {
            // The batch is a checkpoint: a restart must not replay the deletes into the
            // states they were collected from, and the floor is recorded with them.
            self.staged.checkpoint = true;
        }
    }
}

/// Whether a sibling may be collected under `stable`: a tombstone every region has. The pass
/// raises the clock to its stamp ([`conflict::HybridClock::raise_to`]), so every later write
/// here is stamped above it, as if it were still there (the per-key causality rule).
fn collectable(s: &conflict::Sibling, stable: &VersionVector) -> bool {
    s.value.is_tombstone() && stable.covers(&s.dot)
}

/// What a pass does to a key state: how many siblings it drops, and whether the key goes
/// whole (nothing left, and every write its context names stable).
fn plan(state: &conflict::KeyState, stable: &VersionVector) -> (usize, bool) {
    let drops = state
        .siblings
        .iter()
        .filter(|s| collectable(s, stable))
        .count();
    let whole = drops == state.siblings.len() && stable.dominates(&state.context);
    (drops, whole)
}

/// Whether a key state holds a tombstone sibling or no sibling at all: what collection
/// looks at.
pub(super) fn holds_nothing_live(s: &conflict::KeyState) -> bool {
    s.siblings.is_empty() || s.siblings.iter().any(|x| x.value.is_tombstone())
}
