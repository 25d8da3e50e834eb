//! The `Resolver` trait and the two built-in resolvers.
//!
//! A resolver decides what readers see when a key has several siblings. It is chosen per table
//! and identified by a stable name and version, which peers compare
//! ([`crate::Registry::fingerprint`]) because two regions resolving one table differently would
//! silently diverge.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::ReplicaId;
use crate::key::{Sibling, Value};

/// What readers of a key see.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Resolved {
    /// The key does not exist: never written, or deleted.
    Absent,
    /// One value.
    Value(Vec<u8>),
    /// Several live values side by side (multi-value): the reader resolves them by writing
    /// back with the key's context. Always at least two, never tombstones, in canonical order.
    Siblings(Vec<Sibling>),
}

/// A stable identity for a resolver: its name and the version of its semantics.
///
/// Bump the version whenever `resolve` would give a different answer for some sibling set;
/// peers refuse to replicate a table whose resolver ids differ.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ResolverId {
    /// The registered name, e.g. `lww`.
    pub name: String,
    /// The version of its semantics.
    pub version: u32,
}

impl ResolverId {
    /// An id from its parts, e.g. to compare with what a peer announced.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        ResolverId {
            name: name.into(),
            version,
        }
    }

    /// The id of a resolver, from its `name()` and `version()`.
    pub fn of(resolver: &dyn Resolver) -> Self {
        ResolverId::new(resolver.name(), resolver.version())
    }
}

impl fmt::Display for ResolverId {
    /// `name@version`, e.g. `lww@1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Why a resolver refuses a value a client wants to write (e.g. a counter table given bytes
/// that are not a counter).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("value refused by resolver: {reason}")]
pub struct InvalidValue {
    /// What is wrong and what the resolver expects instead.
    pub reason: String,
}

/// Decides what readers see from a key's siblings. Implement it to add a custom merge, register
/// it in a [`crate::Registry`], and check it with [`crate::laws::check`] in your own tests.
///
/// Rules every implementation must follow:
///
/// - **Deterministic**: `resolve` depends only on the siblings it is given (no clocks, no
///   randomness, no `HashMap` iteration order, no state kept between calls). Every region runs
///   it independently and must reach the same answer.
/// - **Tombstones read as absent**: with no siblings, or only tombstones, return
///   [`Resolved::Absent`].
/// - **Stable identity**: `name` never changes; `version` changes whenever the answer for some
///   input changes.
///
/// Siblings are kept until a write supersedes them, so the answer does not depend on delivery
/// order even when the merge is not associative.
pub trait Resolver: Send + Sync + 'static {
    /// The stable name tables refer to in `regions.toml`: 1 to
    /// [`crate::limits::MAX_RESOLVER_NAME_BYTES`] characters from `[a-z0-9_-]`.
    fn name(&self) -> &str;

    /// The version of the resolver's semantics; see [`ResolverId`]. A new version may change
    /// what `resolve` answers, never `prunes_losers`: during a rolling upgrade a region applies
    /// writes made under an older version of its resolver (the key state they make is the
    /// same), so a change of what a key keeps needs a new name.
    fn version(&self) -> u32;

    /// Whether the merge is a join-semilattice over values: the answer depends only on the set
    /// of sibling values (commutative), folding pairwise gives the same answer as resolving all
    /// at once (associative), and repeating a value changes nothing (idempotent). The law
    /// checker verifies these laws for resolvers that claim them. Siblings are not collapsed
    /// eagerly in this version (see [`crate::KeyState::apply`]); the claim documents the merge
    /// and lets readers cache merged values safely.
    fn is_semilattice(&self) -> bool;

    /// Whether the answer depends only on the greatest sibling in canonical order, so the
    /// others can be dropped as soon as they lose (their dots stay in the context). True for
    /// last-write-wins. A resolver that returns true must satisfy
    /// `resolve(s) == resolve(&s[s.len() - 1..])`; the law checker verifies it.
    fn prunes_losers(&self) -> bool {
        false
    }

    /// What readers see, given the siblings in canonical order (ascending
    /// `(hlc, replica, seq)`, see [`Sibling::order_key`]).
    fn resolve(&self, siblings: &[Sibling]) -> Resolved;

    /// Whether a client may write `value` to a table using this resolver; the leader calls it
    /// before accepting a local write, so a merge never meets bytes it cannot read. Replicated
    /// writes are not checked (they were checked at their origin). The default accepts any
    /// bytes.
    fn check_value(&self, value: &[u8]) -> Result<(), InvalidValue> {
        let _ = value;
        Ok(())
    }

    /// The resolver's counter operations, when its values are counters that a region's leader
    /// changes by adding to them (Redis's `INCR` family, `NodeHandle::add`). `None`, the
    /// default: the table holds no counters, and adding to its keys is refused.
    fn counter(&self) -> Option<&dyn CounterResolver> {
        None
    }
}

/// What a resolver whose values are counters lets the leader do: add to a key in one step of
/// its state machine (read the resolved value, build the next one, write it with the key's
/// whole context), and read a value as a number.
pub trait CounterResolver {
    /// The value after `writer` (the region's replica id) adds `by` — negative to subtract —
    /// to `current` (the key's resolved value, `None` when absent), and the counter's total
    /// then; an error when the total would overflow.
    fn add(
        &self,
        current: Option<&[u8]>,
        writer: ReplicaId,
        by: i64,
    ) -> Result<(Vec<u8>, i64), InvalidValue>;

    /// A value's total, as a reader sees it.
    fn total(&self, value: &[u8]) -> i64;
}

/// Last-write-wins: the sibling with the greatest `(hlc, replica, seq)` is the value; a
/// tombstone winner reads as absent.
///
/// It prunes losers at once ([`Resolver::prunes_losers`]), so a key under last-write-wins
/// holds one sibling. That is safe because of the per-key causality rule
/// ([`crate::stamp_write`]): a write is greater than everything it supersedes, so pruning never
/// drops a sibling that a later-applied write would have brought back. It is not declared a
/// semilattice over values (which value wins depends on the stamps, not on the values), but it
/// is one over siblings: `max` in canonical order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lww;

impl Resolver for Lww {
    fn name(&self) -> &str {
        "lww"
    }

    fn version(&self) -> u32 {
        1
    }

    fn is_semilattice(&self) -> bool {
        false
    }

    fn prunes_losers(&self) -> bool {
        true
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        // Siblings arrive in canonical order, but taking the maximum keeps the answer right
        // even for a caller that forgot to sort.
        match siblings.iter().max_by_key(|s| s.order_key()) {
            Some(Sibling {
                value: Value::Bytes(b),
                ..
            }) => Resolved::Value(b.clone()),
            Some(_) | None => Resolved::Absent,
        }
    }
}

/// Multi-value (the Dynamo/Riak model): all concurrent live siblings are returned to the
/// reader, who resolves them by writing back with the key's context.
///
/// Tombstones are left out of what readers see: with one live sibling the reader gets that
/// value, with none the key is absent (a delete concurrent with a write loses to the write
/// until someone deletes with the context that covers it).
#[derive(Clone, Copy, Debug, Default)]
pub struct MultiValue;

impl Resolver for MultiValue {
    fn name(&self) -> &str {
        "multi-value"
    }

    fn version(&self) -> u32 {
        1
    }

    fn is_semilattice(&self) -> bool {
        false
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let mut live: Vec<&Sibling> = siblings
            .iter()
            .filter(|s| !s.value.is_tombstone())
            .collect();
        live.sort_by_key(|s| s.order_key());
        match live.as_slice() {
            [] => Resolved::Absent,
            [only] => match &only.value {
                Value::Bytes(b) => Resolved::Value(b.clone()),
                // Unreachable: `live` holds no tombstones; answering Absent keeps it total.
                Value::Tombstone => Resolved::Absent,
            },
            many => Resolved::Siblings(many.iter().map(|s| (*s).clone()).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::{Dot, ReplicaId, Seq};

    fn sib(hlc: u64, replica: u128, seq: u64, value: Option<&[u8]>) -> Sibling {
        Sibling {
            dot: Dot::new(ReplicaId::from_u128(replica), Seq(seq)),
            hlc: Hlc::new(hlc, 0),
            value: value.map_or(Value::Tombstone, |v| Value::Bytes(v.to_vec())),
        }
    }

    #[test]
    fn lww_picks_greatest_and_reads_tombstone_as_absent() {
        assert_eq!(Lww.resolve(&[]), Resolved::Absent);
        let a = sib(10, 1, 1, Some(b"a"));
        let b = sib(10, 2, 1, Some(b"b"));
        let t = sib(11, 1, 2, None);
        assert_eq!(
            Lww.resolve(&[a.clone(), b.clone()]),
            Resolved::Value(b"b".to_vec())
        );
        assert_eq!(Lww.resolve(&[a.clone(), b.clone(), t]), Resolved::Absent);
        assert_eq!(ResolverId::of(&Lww).to_string(), "lww@1");
    }

    #[test]
    fn multi_value_returns_live_siblings() {
        let a = sib(10, 1, 1, Some(b"a"));
        let b = sib(12, 2, 1, Some(b"b"));
        let t = sib(11, 3, 1, None);
        assert_eq!(MultiValue.resolve(&[]), Resolved::Absent);
        assert_eq!(
            MultiValue.resolve(std::slice::from_ref(&t)),
            Resolved::Absent
        );
        assert_eq!(
            MultiValue.resolve(&[a.clone(), t.clone()]),
            Resolved::Value(b"a".to_vec())
        );
        assert_eq!(
            MultiValue.resolve(&[a.clone(), t, b.clone()]),
            Resolved::Siblings(vec![a, b])
        );
        assert_eq!(ResolverId::of(&MultiValue).to_string(), "multi-value@1");
        assert!(MultiValue.check_value(b"anything").is_ok());
    }
}
