//! Version vectors: a compact summary of which writes a region or a key has seen.
//!
//! A version vector maps each replica to the highest sequence number seen from it. That one
//! number stands for a whole prefix of the replica's log because every origin's writes are
//! applied in order everywhere (DESIGN.md, replication rules): a region never applies A:5
//! before A:4. For a *per-key* context the entry is the highest sequence number of A's writes
//! *to that key*; A's sequence numbers have gaps there (A's writes to other keys), but since
//! A's writes reach every region in order, having seen A:5 for the key still means having seen
//! every earlier write of A to the key. So a plain vector is exact; no dot cloud is needed.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{Dot, ReplicaId, Seq};
use crate::limits::MAX_VV_ENTRIES;

/// How two version vectors relate: the answer to "did one of these see everything the other
/// saw?".
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Causality {
    /// Both saw exactly the same writes.
    Equal,
    /// `self` saw a strict subset of what `other` saw: `other` is causally later.
    Before,
    /// `self` saw a strict superset of what `other` saw: `self` is causally later.
    After,
    /// Each saw a write the other did not: neither supersedes the other.
    Concurrent,
}

/// Why bytes could not be decoded as a version vector. Session tokens come from clients and
/// contexts from peers, so garbage is expected and must be an error, never a panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VvDecodeError {
    /// The bytes are not a postcard-encoded version vector (truncated or corrupted).
    #[error("version vector is malformed ({0}); pass the token exactly as it was returned")]
    Malformed(postcard::Error),
    /// More entries than [`MAX_VV_ENTRIES`]; refused before reading them.
    #[error("version vector has {count} entries, more than the limit of {max}")]
    TooManyEntries {
        /// Entries the encoding claims to have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Entries are not in strictly ascending replica order, or an entry is zero. The encoding
    /// is canonical (one byte string per vector) so that equal vectors have equal bytes.
    #[error("version vector is not in canonical form (entries must ascend and be non-zero)")]
    NotCanonical,
    /// Bytes left over after the vector.
    #[error("version vector has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// A map from replica to the highest sequence number seen from it; absent entries mean
/// [`Seq::ZERO`].
///
/// Used as a key's causal context, as a region's applied vector and, encoded with
/// [`VersionVector::to_bytes`], as a session token. Entries are never zero, so two vectors
/// that cover the same writes are equal and encode to the same bytes.
///
/// Held as a vector of `(replica, seq)` pairs sorted by replica: a context names a few
/// replicas (one per region that wrote the key), and a sorted vector of a few entries costs a
/// few dozen bytes where a `BTreeMap` allocates a node of eleven (≈ 290 bytes) — per key, as
/// every key state holds one (issue 13, item 5).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct VersionVector(Vec<(ReplicaId, Seq)>);

impl VersionVector {
    /// The empty vector: has seen nothing (the context of a key never written).
    pub fn new() -> Self {
        VersionVector(Vec::new())
    }

    /// The highest sequence number seen from `replica` ([`Seq::ZERO`] if none).
    pub fn get(&self, replica: ReplicaId) -> Seq {
        match self.0.binary_search_by_key(&replica, |e| e.0) {
            Ok(i) => self.0[i].1,
            Err(_) => Seq::ZERO,
        }
    }

    /// Whether the write named `dot` has been seen (it is within its replica's prefix).
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(dot.replica) >= dot.seq
    }

    /// Records that `dot` has been seen: raises its replica's entry to at least `dot.seq`.
    /// A dot with sequence number zero names no write and changes nothing.
    pub fn add_dot(&mut self, dot: &Dot) {
        if dot.seq == Seq::ZERO {
            return;
        }
        match self.0.binary_search_by_key(&dot.replica, |e| e.0) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(dot.seq),
            Err(i) => {
                // Grow by one: most vectors stay at one or a few entries for good.
                self.0.reserve_exact(1);
                self.0.insert(i, (dot.replica, dot.seq));
            }
        }
    }

    /// Merges `other` in (pointwise maximum): afterwards `self` has seen what either had.
    pub fn join(&mut self, other: &VersionVector) {
        for &(replica, seq) in &other.0 {
            self.add_dot(&Dot::new(replica, seq));
        }
    }

    /// The pointwise minimum (an entry missing from either is 0): what both have seen.
    #[must_use]
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        let mut m = VersionVector::new();
        for &(replica, seq) in &self.0 {
            let seq = seq.min(other.get(replica));
            if seq > Seq::ZERO {
                m.add_dot(&Dot::new(replica, seq));
            }
        }
        m
    }

    /// Whether `self` has seen everything `other` has (pointwise `>=`; equal vectors
    /// dominate each other).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|&(r, s)| self.get(r) >= s)
    }

    /// How `self` relates causally to `other`: whether one supersedes the other or they are
    /// concurrent.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Whether neither vector has seen everything the other has.
    pub fn is_concurrent(&self, other: &VersionVector) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// For each replica where `other` is ahead of `self`: `(replica, ours, theirs)`. This is
    /// what a region lacks to serve a session token, for a precise "behind" error.
    pub fn missing_from(&self, other: &VersionVector) -> Vec<(ReplicaId, Seq, Seq)> {
        other
            .iter()
            .filter(|&(r, s)| self.get(r) < s)
            .map(|(r, s)| (r, self.get(r), s))
            .collect()
    }

    /// Entries in ascending replica order, so iteration is deterministic.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, Seq)> + '_ {
        self.0.iter().copied()
    }

    /// Number of replicas with a non-zero entry (at most [`MAX_VV_ENTRIES`] once decoded).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing has been seen (a fresh region or an unwritten key).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The compact canonical encoding (postcard: a varint count, then per entry the 16-byte
    /// replica id and a varint sequence number). Used for session tokens and storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Invariant: serialising a map of plain values into a Vec cannot fail.
        postcard::to_stdvec(self).expect("version vector serialises")
    }

    /// Decodes [`VersionVector::to_bytes`] output, refusing anything else: malformed bytes,
    /// more than [`MAX_VV_ENTRIES`] entries (checked before reading them), non-canonical
    /// order or zero entries, and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VvDecodeError> {
        let (count, mut rest) =
            postcard::take_from_bytes::<usize>(bytes).map_err(VvDecodeError::Malformed)?;
        if count > MAX_VV_ENTRIES {
            return Err(VvDecodeError::TooManyEntries {
                count,
                max: MAX_VV_ENTRIES,
            });
        }
        let mut vv = VersionVector(Vec::with_capacity(count));
        let mut prev: Option<ReplicaId> = None;
        for _ in 0..count {
            let ((replica, seq), tail) = postcard::take_from_bytes::<(ReplicaId, Seq)>(rest)
                .map_err(VvDecodeError::Malformed)?;
            rest = tail;
            if seq == Seq::ZERO || prev.is_some_and(|p| p >= replica) {
                return Err(VvDecodeError::NotCanonical);
            }
            prev = Some(replica);
            vv.0.push((replica, seq));
        }
        if !rest.is_empty() {
            return Err(VvDecodeError::TrailingBytes(rest.len()));
        }
        Ok(vv)
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for VersionVector {
    /// `{a1b2c3d4:5, 0000002a:9}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (r, s)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}:{s}")?;
        }
        f.write_str("}")
    }
}

impl FromIterator<Dot> for VersionVector {
    /// The smallest vector covering every dot.
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for dot in iter {
            vv.add_dot(&dot);
        }
        vv
    }
}

impl Serialize for VersionVector {
    /// A sequence of `(replica, seq)` pairs in ascending replica order: the same bytes as
    /// [`VersionVector::to_bytes`] when the serializer is postcard.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for entry in self.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    /// The inverse of `Serialize`, with the same checks as [`VersionVector::from_bytes`]
    /// (entry bound, canonical order, no zero entries), so a vector inside a peer's frame or a
    /// stored key state is held to the same rules as a session token.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VvVisitor;

        impl<'de> Visitor<'de> for VvVisitor {
            type Value = VersionVector;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "at most {MAX_VV_ENTRIES} (replica, seq) pairs in ascending order"
                )
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                if access.size_hint().is_some_and(|n| n > MAX_VV_ENTRIES) {
                    return Err(de::Error::invalid_length(
                        access.size_hint().unwrap_or(0),
                        &self,
                    ));
                }
                let hint = access.size_hint().unwrap_or(0).min(MAX_VV_ENTRIES);
                let mut vv = VersionVector(Vec::with_capacity(hint));
                let mut prev: Option<ReplicaId> = None;
                while let Some((replica, seq)) = access.next_element::<(ReplicaId, Seq)>()? {
                    if vv.len() == MAX_VV_ENTRIES {
                        return Err(de::Error::invalid_length(MAX_VV_ENTRIES + 1, &self));
                    }
                    if seq == Seq::ZERO || prev.is_some_and(|p| p >= replica) {
                        return Err(de::Error::custom(VvDecodeError::NotCanonical));
                    }
                    prev = Some(replica);
                    vv.0.push((replica, seq));
                }
                Ok(vv)
            }
        }

        deserializer.deserialize_seq(VvVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    fn vv(entries: &[(u128, u64)]) -> VersionVector {
        entries
            .iter()
            .map(|&(n, s)| Dot::new(r(n), Seq(s)))
            .collect()
    }

    #[test]
    fn covers_prefixes() {
        let v = vv(&[(1, 3)]);
        assert!(v.covers(&Dot::new(r(1), Seq(1))));
        assert!(v.covers(&Dot::new(r(1), Seq(3))));
        assert!(!v.covers(&Dot::new(r(1), Seq(4))));
        assert!(!v.covers(&Dot::new(r(2), Seq(1))));
        assert_eq!(v.get(r(2)), Seq::ZERO);
    }

    #[test]
    fn add_dot_only_raises_and_ignores_zero() {
        let mut v = vv(&[(1, 5)]);
        v.add_dot(&Dot::new(r(1), Seq(2)));
        assert_eq!(v.get(r(1)), Seq(5));
        v.add_dot(&Dot::new(r(2), Seq::ZERO));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn join_and_compare() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 1), (3, 4)]);
        assert_eq!(a.compare(&b), Causality::Concurrent);
        assert!(a.is_concurrent(&b));
        let mut j = a.clone();
        j.join(&b);
        assert_eq!(j, vv(&[(1, 2), (2, 1), (3, 4)]));
        assert_eq!(j.compare(&a), Causality::After);
        assert_eq!(a.compare(&j), Causality::Before);
        assert_eq!(j.compare(&j.clone()), Causality::Equal);
        assert!(j.dominates(&a) && j.dominates(&b) && !a.dominates(&j));
        assert_eq!(
            a.missing_from(&j),
            vec![(r(3), Seq::ZERO, Seq(4))],
            "a lacks r3's writes"
        );
        assert_eq!(
            j.to_string(),
            format!("{{{}:2, {}:1, {}:4}}", r(1), r(2), r(3))
        );
    }

    #[test]
    fn encoding_is_compact_and_round_trips() {
        let v = vv(&[(1, 2), (2, 300)]);
        let bytes = v.to_bytes();
        // count + 2 × (len byte + 16 id bytes + varint seq)
        assert_eq!(bytes.len(), 1 + (1 + 16 + 1) + (1 + 16 + 2));
        assert_eq!(VersionVector::from_bytes(&bytes), Ok(v.clone()));
        assert_eq!(postcard::to_stdvec(&v).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<VersionVector>(&bytes).unwrap(), v);
        assert_eq!(VersionVector::new().to_bytes(), vec![0]);
    }

    #[test]
    fn decoding_refuses_garbage() {
        assert!(matches!(
            VersionVector::from_bytes(&[]),
            Err(VvDecodeError::Malformed(_))
        ));
        // A huge count is refused before any allocation.
        let huge = postcard::to_stdvec(&(u32::MAX as usize)).unwrap();
        assert!(matches!(
            VersionVector::from_bytes(&huge),
            Err(VvDecodeError::TooManyEntries { .. })
        ));
        // Out of order.
        let mut unordered = postcard::to_stdvec(&2usize).unwrap();
        unordered.extend(postcard::to_stdvec(&(r(2), Seq(1))).unwrap());
        unordered.extend(postcard::to_stdvec(&(r(1), Seq(1))).unwrap());
        assert_eq!(
            VersionVector::from_bytes(&unordered),
            Err(VvDecodeError::NotCanonical)
        );
        assert!(postcard::from_bytes::<VersionVector>(&unordered).is_err());
        // Zero entry.
        let mut zero = postcard::to_stdvec(&1usize).unwrap();
        zero.extend(postcard::to_stdvec(&(r(1), Seq(0))).unwrap());
        assert_eq!(
            VersionVector::from_bytes(&zero),
            Err(VvDecodeError::NotCanonical)
        );
        // Trailing bytes.
        let mut trailing = vv(&[(1, 1)]).to_bytes();
        trailing.push(0);
        assert_eq!(
            VersionVector::from_bytes(&trailing),
            Err(VvDecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn serde_refuses_too_many_entries() {
        let many: Vec<(ReplicaId, Seq)> = (0..=MAX_VV_ENTRIES as u128)
            .map(|n| (r(n), Seq(1)))
            .collect();
        let bytes = postcard::to_stdvec(&many).unwrap();
        assert!(postcard::from_bytes::<VersionVector>(&bytes).is_err());
        assert!(matches!(
            VersionVector::from_bytes(&bytes),
            Err(VvDecodeError::TooManyEntries { .. })
        ));
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u128..6, 0u64..8), 0..6).prop_map(|es| {
            es.into_iter()
                .map(|(n, s)| Dot::new(r(n), Seq(s)))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(v) = VersionVector::from_bytes(&bytes) {
                prop_assert_eq!(v.to_bytes(), bytes.clone());
            }
            let _ = postcard::from_bytes::<VersionVector>(&bytes);
        }

        #[test]
        fn meet_is_the_greatest_lower_bound(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let m = a.meet(&b);
            prop_assert_eq!(&m, &b.meet(&a));
            prop_assert!(a.dominates(&m) && b.dominates(&m));
            prop_assert_eq!(a.meet(&b).meet(&c), a.meet(&b.meet(&c)));
            prop_assert_eq!(a.meet(&a), a.clone());
            // Absorption: a lower bound of both is below the meet.
            let low = m.meet(&c);
            prop_assert!(m.dominates(&low));
            let mut j = a.clone();
            j.join(&b);
            prop_assert_eq!(a.meet(&j), a.clone());
        }

        #[test]
        fn join_is_a_semilattice(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let join = |x: &VersionVector, y: &VersionVector| { let mut z = x.clone(); z.join(y); z };
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
            prop_assert!(join(&a, &b).dominates(&a));
            prop_assert_eq!(VersionVector::from_bytes(&a.to_bytes()).unwrap(), a.clone());
            let expected = match (a.dominates(&b), b.dominates(&a)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::After,
                (false, true) => Causality::Before,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
        }
    }
}
