//! Ground truth: every write any origin ever made durable, by dot, and the oracles that
//! compare what regions hold with it.
//!
//! A write enters the truth when its origin's persist completes (nothing that is not durable
//! at its origin may ever be sent, so every write another region holds must be here). Dots are
//! unique forever from that moment: a dot lost in a crash before its fsync may be handed out
//! again, but never one that reached the disk.

use std::collections::{BTreeMap, BTreeSet};

use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, Write};
use leader_core::LogEntry;

/// A table's resolver, as the oracles need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `lww`: one survivor, the greatest `(hlc, replica, seq)`.
    Lww,
    /// `multi-value`: every concurrent write survives.
    MultiValue,
    /// The `counter` example resolver: siblings kept, merged on read.
    Counter,
}

/// The canonical order of a write ([`conflict::Sibling::order_key`]).
pub fn order_key(w: &Write) -> (Hlc, ReplicaId, Seq) {
    (w.hlc, w.dot.replica, w.dot.seq)
}

/// A key, as the machine names it.
pub type Slot = (String, Vec<u8>);

/// Shows a key for a failure message.
pub fn show(slot: &Slot) -> String {
    format!("{}/{}", slot.0, String::from_utf8_lossy(&slot.1))
}

/// Every durable write, by dot and by key.
#[derive(Debug, Default)]
pub struct Truth {
    writes: BTreeMap<Dot, (Slot, Write)>,
    by_key: BTreeMap<Slot, Vec<Dot>>,
}

/// A failed oracle: its name and what it saw.
pub type Broken = (&'static str, String);

impl Truth {
    /// The write named `dot`, with its key.
    pub fn get(&self, dot: &Dot) -> Option<&(Slot, Write)> {
        self.writes.get(dot)
    }

    /// Records a write its origin has just made durable. Checks the per-key causality rule
    /// against every recorded write of the key that the new write's context covers: a
    /// causally later write must order after what it supersedes, or last-write-wins could
    /// let the older one win somewhere.
    /// With `check` off, the write is only recorded.
    pub fn record(&mut self, e: &LogEntry, check: bool) -> Result<(), Broken> {
        let slot = (e.table.clone(), e.key.clone());
        if let Some((have_slot, have)) = self.writes.get(&e.write.dot) {
            if *have_slot != slot || *have != e.write {
                return Err((
                    "write-identity",
                    format!(
                        "dot {} was made durable twice with different writes: {:?} then {:?}",
                        e.write.dot, have, e.write
                    ),
                ));
            }
            return Ok(());
        }
        let dots = self.by_key.entry(slot.clone()).or_default();
        for d in dots.iter() {
            let (_, older) = &self.writes[d];
            if check && e.write.context.covers(d) && order_key(older) >= order_key(&e.write) {
                return Err((
                    "stamp-rule",
                    format!(
                        "write {} to {} supersedes {} but does not order after it: {:?} <= {:?} \
                         (a causally later write would lose under last-write-wins)",
                        e.write.dot,
                        show(&slot),
                        d,
                        order_key(&e.write),
                        order_key(older)
                    ),
                ));
            }
        }
        dots.push(e.write.dot);
        self.writes.insert(e.write.dot, (slot, e.write.clone()));
        Ok(())
    }

    /// Checks a durable log entry of any region against the truth: the write must exist and
    /// be the same write.
    pub fn check_entry(&self, region: &str, e: &LogEntry) -> Result<(), Broken> {
        match self.writes.get(&e.write.dot) {
            None => Err((
                "write-identity",
                format!(
                    "{region} made {} durable, a write its origin never made durable",
                    e.write.dot
                ),
            )),
            Some((slot, w)) if *slot != (e.table.clone(), e.key.clone()) || *w != e.write => Err((
                "write-identity",
                format!(
                    "{region} holds {} as {}={:?} but its origin wrote {}={:?}",
                    e.write.dot,
                    show(&(e.table.clone(), e.key.clone())),
                    e.write,
                    show(slot),
                    w
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks that every sibling of a key state is the write of that dot, for that key.
    pub fn check_state(&self, region: &str, slot: &Slot, state: &KeyState) -> Result<(), Broken> {
        for s in &state.siblings {
            let ok = match self.writes.get(&s.dot) {
                Some((ws, w)) => ws == slot && w.hlc == s.hlc && w.value == s.value,
                None => false,
            };
            if !ok {
                return Err((
                    "write-identity",
                    format!(
                        "{region} keeps sibling {} ({:?}) in {} that is not the write of that dot ({:?})",
                        s.dot,
                        s.hlc,
                        show(slot),
                        self.writes.get(&s.dot)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The writes of `slot` that a final applied vector covers.
    pub fn applied_writes<'a>(
        &'a self,
        slot: &Slot,
        applied: &'a conflict::VersionVector,
    ) -> Vec<&'a Write> {
        self.by_key
            .get(slot)
            .into_iter()
            .flatten()
            .filter(|d| applied.covers(d))
            .map(|d| &self.writes[d].1)
            .collect()
    }

    /// Every key with at least one write.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.by_key.keys()
    }

    /// Checks the final state of one key (identical everywhere by then) against the writes
    /// that reached it: the context is exactly their join, last-write-wins keeps the
    /// greatest write, and the other resolvers keep exactly the writes no other write
    /// supersedes (the concurrent ones).
    pub fn check_final_key(
        &self,
        slot: &Slot,
        kind: TableKind,
        state: &KeyState,
        applied: &conflict::VersionVector,
        collected: &conflict::VersionVector,
    ) -> Result<(), Broken> {
        let writes = self.applied_writes(slot, applied);
        let mut context = conflict::VersionVector::new();
        for w in &writes {
            context.join(&w.context);
            context.add_dot(&w.dot);
        }
        // Tombstone collection may drop a key's context with it; a write that re-creates the
        // key then names what it superseded through the region's collected floor. So the
        // key's context is within the writes' join, and with the floor covers it.
        let mut with_floor = state.context.clone();
        with_floor.join(collected);
        if !context.dominates(&state.context) || !with_floor.dominates(&context) {
            return Err((
                "key-context",
                format!(
                    "{}: context {:?}, but the writes that reached it join to {:?}",
                    show(slot),
                    state.context,
                    context
                ),
            ));
        }
        let frontier: BTreeSet<Dot> = frontier(&writes).into_iter().map(|w| w.dot).collect();
        let kept: BTreeSet<Dot> = state.siblings.iter().map(|s| s.dot).collect();
        for dot in &kept {
            if !frontier.contains(dot) {
                return Err((
                    "causality",
                    format!(
                        "{}: sibling {dot} survives although a write that reached the key supersedes it",
                        show(slot)
                    ),
                ));
            }
        }
        // Tombstone collection drops a delete once it is causally stable (docs/design.md):
        // a sibling the oracles expect may be missing if it is a delete, never a value.
        let is_delete = |d: &Dot| writes.iter().any(|w| w.dot == *d && w.value.is_tombstone());
        match kind {
            TableKind::Lww => {
                let max = writes.iter().max_by_key(|w| order_key(w)).map(|w| w.dot);
                let survivor = state.siblings.iter().map(|s| s.dot).collect::<Vec<_>>();
                let collected = survivor.is_empty() && max.is_some_and(|d| is_delete(&d));
                if survivor != max.into_iter().collect::<Vec<_>>() && !collected {
                    return Err((
                        "lww-winner",
                        format!(
                            "{}: last-write-wins keeps {:?}, but the greatest (hlc, replica, seq) among the {} writes that reached it is {:?}",
                            show(slot),
                            survivor,
                            writes.len(),
                            max
                        ),
                    ));
                }
            }
            TableKind::MultiValue | TableKind::Counter => {
                if !kept.is_subset(&frontier) || frontier.difference(&kept).any(|d| !is_delete(d)) {
                    return Err((
                        "mv-siblings",
                        format!(
                            "{}: siblings {:?}, but the writes no other write supersedes are {:?}",
                            show(slot),
                            kept,
                            frontier
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The writes no other write in `writes` supersedes: the concurrent frontier.
pub fn frontier<'a>(writes: &[&'a Write]) -> Vec<&'a Write> {
    writes
        .iter()
        .filter(|w| !writes.iter().any(|x| x.context.covers(&w.dot)))
        .copied()
        .collect()
}

impl Truth {
    /// Whether what a table of `kind` keeps of `slot`'s writes that `applied` covers is
    /// deletes only (the greatest write for last-write-wins; every write no other supersedes
    /// otherwise): then tombstone collection may have dropped the key whole.
    pub fn only_deletes_survive(
        &self,
        slot: &Slot,
        kind: TableKind,
        applied: &conflict::VersionVector,
    ) -> bool {
        let writes = self.applied_writes(slot, applied);
        match kind {
            TableKind::Lww => writes
                .iter()
                .max_by_key(|w| order_key(w))
                .is_some_and(|w| w.value.is_tombstone()),
            TableKind::MultiValue | TableKind::Counter => {
                frontier(&writes).iter().all(|w| w.value.is_tombstone())
            }
        }
    }
}
