//! The record of one conflict, for the leader's conflict log.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::id::Dot;
use crate::key::{ApplyOutcome, KeyState, Write};
use crate::resolver::{Resolved, Resolver, ResolverId};

/// How a conflict was settled, as far as readers are concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ConflictOutcome {
    /// One write won and the others were dropped (last-write-wins).
    Winner(Dot),
    /// This many live siblings are kept side by side for readers to resolve (multi-value).
    Kept(usize),
    /// The resolver merged several live siblings into one value (a custom merge).
    Merged,
}

/// One meeting of concurrent writes on a key: what the leader records in its bounded conflict
/// log (and counts in metrics), including the conflicts last-write-wins settles silently, so
/// operators can see how often and where writes collide.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Conflict {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// The concurrent writes that met (the one just applied and the siblings it did not
    /// supersede), in canonical order. Dots name their replicas, which the leader maps to
    /// regions.
    pub siblings: Vec<(Dot, Hlc)>,
    /// The table's resolver.
    pub resolver: ResolverId,
    /// How it was settled.
    pub outcome: ConflictOutcome,
}

impl Conflict {
    /// The conflict record for applying `write` to `state` (now the state after the apply),
    /// or `None` if the write met no concurrent sibling.
    ///
    /// The outcome is [`ConflictOutcome::Winner`] for a pruning resolver,
    /// [`ConflictOutcome::Kept`] when readers see several siblings (or at most one live value
    /// among tombstones), and [`ConflictOutcome::Merged`] when several live siblings resolve to
    /// one value.
    pub fn from_apply(
        table: &str,
        key: &[u8],
        write: &Write,
        outcome: &ApplyOutcome,
        state: &KeyState,
        resolver: &dyn Resolver,
    ) -> Option<Conflict> {
        let ApplyOutcome::Applied { concurrent, .. } = outcome else {
            return None;
        };
        if concurrent.is_empty() {
            return None;
        }
        let mut siblings: Vec<(Dot, Hlc)> = concurrent
            .iter()
            .map(|s| (s.dot, s.hlc))
            .chain([(write.dot, write.hlc)])
            .collect();
        siblings.sort_by_key(|(dot, hlc)| (*hlc, dot.replica, dot.seq));
        let live = state
            .siblings
            .iter()
            .filter(|s| !s.value.is_tombstone())
            .count();
        let outcome = match (resolver.prunes_losers(), state.siblings.last()) {
            (true, Some(winner)) => ConflictOutcome::Winner(winner.dot),
            _ => match state.resolve(resolver) {
                Resolved::Siblings(v) => ConflictOutcome::Kept(v.len()),
                Resolved::Value(_) | Resolved::Absent if live > 1 => ConflictOutcome::Merged,
                Resolved::Value(_) | Resolved::Absent => ConflictOutcome::Kept(live),
            },
        };
        Some(Conflict {
            table: table.to_owned(),
            key: key.to_vec(),
            siblings,
            resolver: ResolverId::of(resolver),
            outcome,
        })
    }
}

impl fmt::Display for Conflict {
    /// One log line: `carts/"k1": 2 concurrent writes [a:3@…, b:7@…] by lww@1 -> winner b:7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/\"{}\": {} concurrent writes [",
            self.table,
            self.key.escape_ascii(),
            self.siblings.len()
        )?;
        for (i, (dot, hlc)) in self.siblings.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{dot}@{hlc}")?;
        }
        write!(f, "] by {} -> ", self.resolver)?;
        match self.outcome {
            ConflictOutcome::Winner(dot) => write!(f, "winner {dot}"),
            ConflictOutcome::Kept(n) => write!(f, "kept {n} siblings"),
            ConflictOutcome::Merged => f.write_str("merged"),
        }
    }
}
