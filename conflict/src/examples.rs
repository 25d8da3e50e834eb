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

use crate::{CounterResolver, InvalidValue, ReplicaId, Resolved, Resolver, Sibling, Value};

/// A counter that goes up and down (a PN-counter): per-writer counts of increments and of
/// decrements, merge = pointwise maximum of each, value = total increments − total decrements.
///
/// **Encoding**: postcard of the increments, a `BTreeMap<ReplicaId, u64>` (a varint entry
/// count, then per entry the 16-byte id and a varint count), followed — only when there are
/// decrements — by postcard of the decrements in the same form. Ids ascend and zero counts are
/// dropped, so equal counters have equal bytes. Version 1 of this resolver counted up only and
/// wrote the first map alone: every version-1 value is a version-2 value with no decrements
/// and reads the same, so a rolling upgrade changes nothing already stored.
///
/// **Why per-writer counts**: two regions changing the counter concurrently each raise only
/// their own entries, so the pointwise maximum keeps both changes (a plain integer would keep
/// one). The id must be one no two concurrent writers share: the region's replica id when the
/// region's leader performs the additions one at a time (as `INCR` over RESP and
/// `NodeHandle::add` do: the leader reads and writes the counter in one step of its state
/// machine), or a per-client UUID otherwise.
///
/// **How to change it from a client**: read the key (value and context), call
/// [`Counter::add`] (or [`Counter::increment`]) on the value read, and write the result back
/// with the context read. Resolved values are merged maps, so reading and writing back never
/// loses another writer's counts.
///
/// A delete resets the counter for everything it supersedes; a tombstone contributes nothing to
/// the merge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter;

/// The per-writer counts of a [`Counter`] value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterCounts {
    /// What each writer added, in total.
    pub up: BTreeMap<ReplicaId, u64>,
    /// What each writer subtracted, in total.
    pub down: BTreeMap<ReplicaId, u64>,
}

impl CounterCounts {
    /// Increments minus decrements, exactly (an `i128` holds the sum of any map of `u64`s a
    /// value can carry).
    pub fn total(&self) -> i128 {
        let sum = |m: &BTreeMap<ReplicaId, u64>| m.values().map(|n| i128::from(*n)).sum::<i128>();
        sum(&self.up) - sum(&self.down)
    }

    /// Joins `other` into `self` (pointwise maximum of each side).
    fn join(&mut self, other: CounterCounts) {
        for (mine, theirs) in [(&mut self.up, other.up), (&mut self.down, other.down)] {
            for (writer, n) in theirs {
                let entry = mine.entry(writer).or_insert(0);
                *entry = (*entry).max(n);
            }
        }
    }
}

impl Counter {
    /// The per-writer increments in `bytes`, or `None` if they are not a counter, so the
    /// caller decides how to treat foreign bytes. [`Counter::counts`] gives both sides.
    pub fn decode(bytes: &[u8]) -> Option<BTreeMap<ReplicaId, u64>> {
        Counter::counts(bytes).map(|c| c.up)
    }

    /// Both sides of the counter in `bytes`, or `None` if they are not a counter.
    pub fn counts(bytes: &[u8]) -> Option<CounterCounts> {
        let (up, rest) = postcard::take_from_bytes(bytes).ok()?;
        let down = if rest.is_empty() {
            BTreeMap::new()
        } else {
            postcard::from_bytes(rest).ok()?
        };
        Some(CounterCounts { up, down })
    }

    /// The canonical encoding of per-writer increments only (zero counts dropped), so equal
    /// counters have equal bytes in every region.
    pub fn encode(up: &BTreeMap<ReplicaId, u64>) -> Vec<u8> {
        Counter::encode_counts(&CounterCounts {
            up: up.clone(),
            down: BTreeMap::new(),
        })
    }

    /// The canonical encoding of both sides (zero counts dropped; no decrement map when there
    /// are none, which is version 1's encoding).
    pub fn encode_counts(counts: &CounterCounts) -> Vec<u8> {
        let nonzero = |m: &BTreeMap<ReplicaId, u64>| -> BTreeMap<ReplicaId, u64> {
            m.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (*k, *n))
                .collect()
        };
        // Invariant: serialising a map of plain values into a Vec cannot fail.
        let mut bytes = postcard::to_stdvec(&nonzero(&counts.up)).expect("counter serialises");
        let down = nonzero(&counts.down);
        if !down.is_empty() {
            bytes.extend(postcard::to_stdvec(&down).expect("counter serialises"));
        }
        bytes
    }

    /// The value after `writer` adds `by` to the counter read as `current` (`None` for an
    /// absent key). Undecodable bytes count as zero.
    pub fn increment(current: Option<&[u8]>, writer: ReplicaId, by: u64) -> Vec<u8> {
        let mut counts = current.and_then(Counter::counts).unwrap_or_default();
        let entry = counts.up.entry(writer).or_insert(0);
        *entry = entry.saturating_add(by);
        Counter::encode_counts(&counts)
    }

    /// The value after `writer` adds `by` (negative: subtracts) to the counter read as
    /// `current`, and the counter's total then; an error, and no value, when the total would
    /// leave the range of `i64` (as Redis's `INCRBY` refuses to overflow) or the writer's own
    /// count would pass `u64::MAX`.
    pub fn add(
        current: Option<&[u8]>,
        writer: ReplicaId,
        by: i64,
    ) -> Result<(Vec<u8>, i64), InvalidValue> {
        let overflow = || InvalidValue {
            reason: "increment or decrement would overflow".into(),
        };
        let mut counts = current.and_then(Counter::counts).unwrap_or_default();
        let total = i64::try_from(counts.total() + i128::from(by)).map_err(|_| overflow())?;
        let side = if by >= 0 {
            &mut counts.up
        } else {
            &mut counts.down
        };
        let entry = side.entry(writer).or_insert(0);
        *entry = entry.checked_add(by.unsigned_abs()).ok_or_else(overflow)?;
        Ok((Counter::encode_counts(&counts), total))
    }

    /// The counter's value: increments minus decrements (0 for undecodable bytes), clamped to
    /// the range of `i64`.
    pub fn total(bytes: &[u8]) -> i64 {
        let total = Counter::counts(bytes).unwrap_or_default().total();
        total.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The counter's value as a reader sees it: 0 when absent (a deleted counter restarts from
    /// zero).
    pub fn read(resolved: &Resolved) -> i64 {
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

    /// 2: counts down as well as up (version 1 counted up only; its values read the same).
    fn version(&self) -> u32 {
        2
    }

    fn is_semilattice(&self) -> bool {
        true
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let mut merged = CounterCounts::default();
        let mut any_live = false;
        for bytes in siblings.iter().filter_map(|s| s.value.as_bytes()) {
            any_live = true;
            // Undecodable bytes (refused at the origin by check_value) merge as zero.
            merged.join(Counter::counts(bytes).unwrap_or_default());
        }
        if any_live {
            Resolved::Value(Counter::encode_counts(&merged))
        } else {
            Resolved::Absent
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidValue> {
        match Counter::counts(value) {
            Some(counts) if Counter::encode_counts(&counts) == value => Ok(()),
            _ => Err(InvalidValue {
                reason: "not a counter; build the value with Counter::add from the value you read"
                    .into(),
            }),
        }
    }

    fn counter(&self) -> Option<&dyn CounterResolver> {
        Some(self)
    }
}

impl CounterResolver for Counter {
    fn add(
        &self,
        current: Option<&[u8]>,
        writer: ReplicaId,
        by: i64,
    ) -> Result<(Vec<u8>, i64), InvalidValue> {
        Counter::add(current, writer, by)
    }

    fn total(&self, value: &[u8]) -> i64 {
        Counter::total(value)
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
    fn counter_counts_down_and_merges_both_sides() {
        let a = ReplicaId::from_u128(1);
        let b = ReplicaId::from_u128(2);
        let (v, total) = Counter::add(None, a, 5).unwrap();
        assert_eq!(total, 5);
        let (va, total) = Counter::add(Some(&v), a, -7).unwrap();
        assert_eq!((total, Counter::total(&va)), (-2, -2));
        assert!(Counter.check_value(&va).is_ok());
        // Concurrently, b read 5 and subtracted 1: both subtractions count after the merge.
        let (vb, _) = Counter::add(Some(&v), b, -1).unwrap();
        let merged = Counter.resolve(&[live(1, va.clone()), live(2, vb.clone())]);
        assert_eq!(Counter::read(&merged), -3);
        // Idempotent and commutative on each side.
        let again = Counter.resolve(&[live(1, vb), live(2, va.clone()), live(3, va)]);
        assert_eq!(again, merged);
        // The Resolver's counter hook is the same operation.
        let ops = Counter
            .counter()
            .expect("the counter exposes its operations");
        assert_eq!(ops.add(None, a, -4).unwrap().1, -4);
    }

    #[test]
    fn a_version_1_value_reads_the_same_under_version_2() {
        // Version 1 wrote the map of increments alone; those bytes are unchanged by version 2.
        let a = ReplicaId::from_u128(1);
        let v1 = postcard::to_stdvec(&BTreeMap::from([(a, 3u64)])).unwrap();
        assert_eq!(Counter::increment(None, a, 3), v1);
        assert_eq!(Counter::total(&v1), 3);
        assert!(Counter.check_value(&v1).is_ok());
        let (v2, total) = Counter::add(Some(&v1), a, -1).unwrap();
        assert_eq!(total, 2);
        assert!(v2.starts_with(&v1), "the increments stay first");
        // A decrement map of zeros is not canonical: refused as a client value.
        let mut padded = v1.clone();
        padded.extend(postcard::to_stdvec(&BTreeMap::from([(a, 0u64)])).unwrap());
        assert!(Counter.check_value(&padded).is_err());
    }

    #[test]
    fn counter_refuses_to_overflow_i64() {
        let a = ReplicaId::from_u128(1);
        let (max, total) = Counter::add(None, a, i64::MAX).unwrap();
        assert_eq!(total, i64::MAX);
        let e = Counter::add(Some(&max), a, 1).unwrap_err();
        assert!(e.reason.contains("overflow"), "{}", e.reason);
        let (min, total) = Counter::add(None, a, i64::MIN).unwrap();
        assert_eq!(total, i64::MIN);
        assert!(Counter::add(Some(&min), a, -1).is_err());
        assert_eq!(Counter::add(Some(&min), a, i64::MAX).unwrap().1, -1);
        // Other writers' merged counts can pass i64; a reader then sees the clamp.
        let b = ReplicaId::from_u128(2);
        let both = Counter.resolve(&[
            live(1, max.clone()),
            live(2, Counter::add(None, b, i64::MAX).unwrap().0),
        ]);
        assert_eq!(Counter::read(&both), i64::MAX);
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
