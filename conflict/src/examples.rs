//! Two custom resolvers, written only against the crate's public API exactly as an application
//! would write its own: a counter and a union set. Both are join-semilattices, pass the law
//! checker ([`crate::laws::check`]), and show the pattern for a custom merge:
//!
//! 1. pick a value encoding whose merge is commutative, associative and idempotent;
//! 2. treat tombstones as "nothing" in the merge, and answer [`Resolved::Absent`] when nothing
//!    live is left;
//! 3. refuse undecodable client values in [`Resolver::check_value`], and still resolve
//!    deterministically if one slips through (replicated writes are never refused);
//! 4. give clients helpers to build the next value from what they read, and have them write it
//!    back with the context they read, which supersedes the siblings they merged.

use std::collections::{BTreeMap, BTreeSet};

use crate::{InvalidValue, ReplicaId, Resolved, Resolver, Sibling, Value};

/// A grow-only counter: per-writer counts, merge = pointwise maximum, value = their sum.
///
/// **Encoding**: postcard of a `BTreeMap<ReplicaId, u64>` (a varint entry count, then per entry
/// the 16-byte id and a varint count), in ascending id order with no zero counts, so equal
/// counters have equal bytes. [`Counter::increment`] builds it; [`Counter::total`] reads it.
///
/// **Why per-writer counts**: two regions incrementing concurrently each raise only their own
/// entry, so the pointwise maximum keeps both increments (a plain integer would keep one).
/// The id must be one no two concurrent incrementers share: the region's replica id when the
/// region's leader performs increments one at a time, or a per-client UUID otherwise.
///
/// **How to increment**: read the key (value and context), call [`Counter::increment`] on the
/// value read, and write the result back with the context read. Resolved values are merged
/// maps, so reading and writing back never loses another writer's counts.
///
/// A delete resets the counter for everything it supersedes; a tombstone contributes nothing to
/// the merge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter;

impl Counter {
    /// The per-writer counts in `bytes`, or `None` if they are not a counter, so the caller
    /// decides how to treat foreign bytes.
    pub fn decode(bytes: &[u8]) -> Option<BTreeMap<ReplicaId, u64>> {
        postcard::from_bytes(bytes).ok()
    }

    /// The canonical encoding of per-writer counts (zero counts dropped), so equal counters
    /// have equal bytes in every region.
    pub fn encode(counts: &BTreeMap<ReplicaId, u64>) -> Vec<u8> {
        let nonzero: BTreeMap<&ReplicaId, &u64> = counts.iter().filter(|(_, n)| **n > 0).collect();
        // Invariant: serialising a map of plain values into a Vec cannot fail.
        postcard::to_stdvec(&nonzero).expect("counter serialises")
    }

    /// The value after `writer` adds `by` to the counter read as `current` (`None` for an
    /// absent key). Undecodable bytes count as zero.
    pub fn increment(current: Option<&[u8]>, writer: ReplicaId, by: u64) -> Vec<u8> {
        let mut counts = current.and_then(Counter::decode).unwrap_or_default();
        let entry = counts.entry(writer).or_insert(0);
        *entry = entry.saturating_add(by);
        Counter::encode(&counts)
    }

    /// The counter's value: the sum of the per-writer counts (0 for undecodable bytes).
    pub fn total(bytes: &[u8]) -> u64 {
        Counter::decode(bytes)
            .unwrap_or_default()
            .values()
            .fold(0u64, |acc, n| acc.saturating_add(*n))
    }

    /// The counter's value as a reader sees it: 0 when absent (a deleted counter restarts from
    /// zero).
    pub fn read(resolved: &Resolved) -> u64 {
        match resolved {
            Resolved::Value(bytes) => Counter::total(bytes),
            Resolved::Absent | Resolved::Siblings(_) => 0,
        }
    }
}

impl Resolver for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn version(&self) -> u32 {
        1
    }

    fn is_semilattice(&self) -> bool {
        true
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let mut merged: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        let mut any_live = false;
        for bytes in siblings.iter().filter_map(|s| s.value.as_bytes()) {
            any_live = true;
            // Undecodable bytes (refused at the origin by check_value) merge as zero.
            for (writer, n) in Counter::decode(bytes).unwrap_or_default() {
                let entry = merged.entry(writer).or_insert(0);
                *entry = (*entry).max(n);
            }
        }
        if any_live {
            Resolved::Value(Counter::encode(&merged))
        } else {
            Resolved::Absent
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidValue> {
        match Counter::decode(value) {
            Some(counts) if Counter::encode(&counts) == value => Ok(()),
            _ => Err(InvalidValue {
                reason:
                    "not a counter; build the value with Counter::increment from the value you read"
                        .into(),
            }),
        }
    }
}

/// A union set: the value is a set of byte strings, merge = union.
///
/// **Encoding**: postcard of a `BTreeSet<Vec<u8>>` (ascending, no duplicates).
/// [`UnionSet::insert`] and [`UnionSet::remove`] build it; [`UnionSet::elements`] reads it.
///
/// Adding is safe under concurrency: concurrent adds all survive the merge. Removing an element
/// is a write of the set without it, with the context read: it supersedes exactly the siblings
/// it saw, so an element added concurrently somewhere else survives (add wins), as in an
/// observed-remove set. A tombstone contributes nothing; only tombstones read as absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnionSet;

impl UnionSet {
    /// The elements in `bytes`, or `None` if they are not a set, so the caller decides how to
    /// treat foreign bytes.
    pub fn decode(bytes: &[u8]) -> Option<BTreeSet<Vec<u8>>> {
        postcard::from_bytes(bytes).ok()
    }

    /// The canonical encoding of a set, so equal sets have equal bytes in every region.
    pub fn encode(elements: &BTreeSet<Vec<u8>>) -> Vec<u8> {
        // Invariant: serialising a set of byte strings into a Vec cannot fail.
        postcard::to_stdvec(elements).expect("set serialises")
    }

    /// The elements of a set as a reader sees it: empty when absent or undecodable.
    pub fn elements(resolved: &Resolved) -> BTreeSet<Vec<u8>> {
        match resolved {
            Resolved::Value(bytes) => UnionSet::decode(bytes).unwrap_or_default(),
            Resolved::Absent | Resolved::Siblings(_) => BTreeSet::new(),
        }
    }

    /// The value after adding `element` to the set read as `current` (`None` if absent).
    pub fn insert(current: Option<&[u8]>, element: &[u8]) -> Vec<u8> {
        let mut set = current.and_then(UnionSet::decode).unwrap_or_default();
        set.insert(element.to_vec());
        UnionSet::encode(&set)
    }

    /// The value after removing `element` from the set read as `current`; write it back with
    /// the context read so that only the additions you saw are removed.
    pub fn remove(current: Option<&[u8]>, element: &[u8]) -> Vec<u8> {
        let mut set = current.and_then(UnionSet::decode).unwrap_or_default();
        set.remove(element);
        UnionSet::encode(&set)
    }
}

impl Resolver for UnionSet {
    fn name(&self) -> &str {
        "union-set"
    }

    fn version(&self) -> u32 {
        1
    }

    fn is_semilattice(&self) -> bool {
        true
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let live: Vec<&[u8]> = siblings
            .iter()
            .filter_map(|s| match &s.value {
                Value::Bytes(b) => Some(b.as_slice()),
                Value::Tombstone => None,
            })
            .collect();
        if live.is_empty() {
            return Resolved::Absent;
        }
        let union: BTreeSet<Vec<u8>> = live
            .into_iter()
            // Undecodable bytes (refused at the origin by check_value) merge as the empty set.
            .flat_map(|b| UnionSet::decode(b).unwrap_or_default())
            .collect();
        Resolved::Value(UnionSet::encode(&union))
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidValue> {
        match UnionSet::decode(value) {
            Some(set) if UnionSet::encode(&set) == value => Ok(()),
            _ => Err(InvalidValue {
                reason: "not a set; build the value with UnionSet::insert from the value you read"
                    .into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, Seq};

    fn live(seq: u64, bytes: Vec<u8>) -> Sibling {
        Sibling {
            dot: Dot::new(ReplicaId::from_u128(1), Seq(seq)),
            hlc: Hlc::new(seq, 0),
            value: Value::Bytes(bytes),
        }
    }

    #[test]
    fn counter_helpers() {
        let a = ReplicaId::from_u128(1);
        let b = ReplicaId::from_u128(2);
        let v = Counter::increment(None, a, 2);
        let v = Counter::increment(Some(&v), b, 3);
        assert_eq!(Counter::total(&v), 5);
        assert!(Counter.check_value(&v).is_ok());
        assert!(Counter.check_value(b"\xff\xff").is_err());
        assert_eq!(Counter::total(b"\xff\xff"), 0);
        assert_eq!(Counter::read(&Resolved::Absent), 0);
        let merged =
            Counter.resolve(&[live(1, v.clone()), live(2, Counter::increment(None, a, 7))]);
        assert_eq!(Counter::read(&merged), 10);
    }

    #[test]
    fn set_helpers() {
        let v = UnionSet::insert(None, b"x");
        let v = UnionSet::insert(Some(&v), b"y");
        let w = UnionSet::remove(Some(&v), b"x");
        assert!(UnionSet.check_value(&v).is_ok());
        assert!(UnionSet.check_value(b"\x05").is_err());
        let merged = UnionSet.resolve(&[live(1, w), live(2, UnionSet::insert(None, b"z"))]);
        let elements: Vec<Vec<u8>> = UnionSet::elements(&merged).into_iter().collect();
        assert_eq!(elements, vec![b"y".to_vec(), b"z".to_vec()]);
    }
}
