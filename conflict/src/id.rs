//! Identifiers of replicas and of their writes.
//!
//! They are newtypes so that a replica id, a sequence number and a clock reading can never be
//! mixed up at a call site.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one replica: a region's data directory, for its whole life.
///
/// Version vectors are keyed by replica id rather than by region name so that a region rebuilt
/// from an empty disk gets a new id and can never reuse a sequence number it handed out before.
/// The id is created once, when the data directory is initialised, and stored in it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub Uuid);

impl ReplicaId {
    /// A fresh random id (UUID v4), for initialising a new data directory.
    ///
    /// This is the only randomness in the crate; everything else is a pure function of its
    /// inputs, so simulations stay reproducible as long as they pick ids with
    /// [`ReplicaId::from_u128`].
    pub fn new_random() -> Self {
        ReplicaId(Uuid::new_v4())
    }

    /// A fixed id built from a number, so tests and simulations get stable, readable ids.
    pub const fn from_u128(n: u128) -> Self {
        ReplicaId(Uuid::from_u128(n))
    }

    /// The id as a `u128`, for compact logs and deterministic seeding in simulations.
    pub const fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }
}

impl fmt::Display for ReplicaId {
    /// The last 8 hex digits, which is enough to tell replicas apart in logs and tables (the
    /// tail is random in both v4 and time-ordered v7 UUIDs, and readable for
    /// [`ReplicaId::from_u128`] ids in tests); the alternate form (`{:#}`) prints the full
    /// UUID for configuration and forensics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{}", self.0.hyphenated())
        } else {
            let simple = self.0.simple().to_string();
            f.write_str(&simple[simple.len() - 8..])
        }
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({self})")
    }
}

/// A position in one replica's log of writes: the replica's writes are numbered 1, 2, 3, …
/// with no gaps.
///
/// `Seq::ZERO` means "nothing yet"; it is what a version vector reports for a replica it has
/// never heard of, and it is never the sequence number of a real write.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// Nothing written yet: the position before a replica's first write.
    pub const ZERO: Seq = Seq(0);

    /// The sequence number after this one, for the next write of the same replica.
    ///
    /// # Panics
    ///
    /// At `u64::MAX`, which a replica cannot reach (it would take 584 years at a billion
    /// writes per second); wrapping around would silently reuse dots, so it is not allowed.
    #[must_use]
    pub fn next(self) -> Seq {
        // Invariant: no replica performs 2^64 writes (see the doc above).
        Seq(self.0.checked_add(1).expect("sequence number overflow"))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The name of one write: which replica made it, and where it is in that replica's log.
///
/// A dot is unique across the whole deployment (replica ids are unique and a replica never
/// repeats a sequence number), so it is what contexts record and what duplicates are
/// recognised by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Dot {
    /// The replica whose log holds the write.
    pub replica: ReplicaId,
    /// The write's position in that log (from 1).
    pub seq: Seq,
}

impl Dot {
    /// A dot from its parts; a shorthand used throughout tests and the leader.
    pub const fn new(replica: ReplicaId, seq: Seq) -> Self {
        Dot { replica, seq }
    }
}

impl fmt::Display for Dot {
    /// `replica:seq`, e.g. `0000002a:17`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_short_and_alternate_is_full() {
        let r = ReplicaId::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        assert_eq!(r.to_string(), "55667788");
        assert_eq!(format!("{r:#}"), "12345678-9abc-def0-1122-334455667788");
        assert_eq!(Dot::new(r, Seq(7)).to_string(), "55667788:7");
    }

    #[test]
    fn seq_counts_from_zero() {
        assert_eq!(Seq::ZERO.next(), Seq(1));
        assert!(Seq(1) < Seq(2));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(ReplicaId::new_random(), ReplicaId::new_random());
    }
}
