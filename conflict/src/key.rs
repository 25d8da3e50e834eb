//! Writes and the per-key state they are applied to (DESIGN.md, "Per-key state").
//!
//! A key's state is a causal context plus the siblings no known write supersedes: the
//! dotted-version-vector-set approach. Applying the same set of writes in any order and with any
//! duplicates gives the same state, as long as each origin's writes arrive in order.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::{Hlc, stamp_write};
use crate::id::{Dot, ReplicaId, Seq};
use crate::limits::{MAX_SIBLINGS, MAX_VALUE_BYTES};
use crate::resolver::{Resolved, Resolver};
use crate::vv::VersionVector;

/// What a write stores: bytes, or the tombstone of a delete.
///
/// A delete is a write like any other (it has a dot, an HLC and a context) so that it
/// supersedes exactly what it saw and replicates the same way; a key whose siblings are all
/// tombstones reads as absent.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A value, opaque to this crate (resolvers may interpret it).
    Bytes(Vec<u8>),
    /// A delete.
    Tombstone,
}

impl Value {
    /// Whether this is a delete; a key whose siblings are all deletes reads as absent.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Value::Tombstone)
    }

    /// The bytes of a live value; `None` for a tombstone, so merges can skip deletes without
    /// matching on the enum.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Tombstone => None,
        }
    }
}

impl fmt::Debug for Value {
    /// Bytes are shown escaped (`Bytes("ab\x00")`), so counterexamples and logs stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bytes(b) => write!(f, "Bytes(\"{}\")", b.escape_ascii()),
            Value::Tombstone => f.write_str("Tombstone"),
        }
    }
}

/// One write as it is stored in its origin's log and replicated to every region.
///
/// `context` is what the write supersedes: the key's context at the origin for a blind write,
/// or the context a client read for a read-modify-write. Only `context` decides which
/// siblings the write removes (not the prefix of its own dot), so a client's write with an old
/// context keeps a concurrent write of the same region as a sibling.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Write {
    /// The write's unique name.
    pub dot: Dot,
    /// Its stamp, from [`stamp_write`]; orders it for last-write-wins.
    pub hlc: Hlc,
    /// The writes it supersedes.
    pub context: VersionVector,
    /// What it stores.
    pub value: Value,
}

/// Why a write is not well-formed. Replicated writes are checked with [`Write::validate`]
/// before they are applied; a malformed one means a broken or hostile peer, and the
/// connection should be closed with this reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum InvalidWrite {
    /// Sequence number zero names no write.
    #[error("write {0} has sequence number 0; sequence numbers start at 1")]
    ZeroSeq(Dot),
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("write {dot} carries a {len}-byte value, more than the limit of {max}")]
    ValueTooLarge {
        /// The write.
        dot: Dot,
        /// The value's length.
        len: usize,
        /// [`MAX_VALUE_BYTES`].
        max: usize,
    },
    /// The write's context covers its own dot: a write cannot supersede itself.
    #[error("write {0} claims to supersede itself (its context covers its own dot)")]
    SupersedesItself(Dot),
}

impl Write {
    /// This write as a sibling of its key: what [`KeyState::apply`] stores.
    pub fn sibling(&self) -> Sibling {
        Sibling {
            dot: self.dot,
            hlc: self.hlc,
            value: self.value.clone(),
        }
    }

    /// Checks well-formedness: a real sequence number, a value within [`MAX_VALUE_BYTES`], and
    /// a context that does not cover the write itself. (The context's size is already bounded
    /// by decoding.) Applying a malformed write would not break convergence, but it means the
    /// sender is broken, which the caller should surface.
    pub fn validate(&self) -> Result<(), InvalidWrite> {
        if self.dot.seq == Seq::ZERO {
            return Err(InvalidWrite::ZeroSeq(self.dot));
        }
        if let Value::Bytes(b) = &self.value
            && b.len() > MAX_VALUE_BYTES
        {
            return Err(InvalidWrite::ValueTooLarge {
                dot: self.dot,
                len: b.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        if self.context.covers(&self.dot) {
            return Err(InvalidWrite::SupersedesItself(self.dot));
        }
        Ok(())
    }
}

/// A write that no other known write supersedes: what a key holds besides its context.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Sibling {
    /// The write's name.
    pub dot: Dot,
    /// The write's stamp.
    pub hlc: Hlc,
    /// The write's value.
    pub value: Value,
}

impl Sibling {
    /// The canonical order key, `(hlc, replica, seq)`: siblings are kept and handed to
    /// resolvers in ascending order of it. It is total (a dot is unique), so last-write-wins
    /// never meets a tie, and it includes `seq` because the per-key causality rule can give two
    /// writes of one replica the same HLC (DESIGN.md, Refinements).
    pub fn order_key(&self) -> (Hlc, ReplicaId, Seq) {
        (self.hlc, self.dot.replica, self.dot.seq)
    }
}

/// What [`KeyState::apply`] did, so the leader can log conflicts and count metrics.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ApplyOutcome {
    /// The write's dot was already covered by the key's context: a duplicate, or a write that
    /// something already applied supersedes. Nothing changed.
    Ignored,
    /// The write was applied.
    Applied {
        /// Siblings the write's context covers, which it removed.
        superseded: Vec<Sibling>,
        /// Siblings the resolver dropped after the write was added (last-write-wins keeps only
        /// the winner). May include the new write itself, when it loses to a sibling it met.
        /// Their dots stay in the context, so they never come back.
        pruned: Vec<Sibling>,
        /// Siblings the write met but did not supersede: writes concurrent with it. Non-empty
        /// means a conflict, to be recorded (see [`crate::Conflict::from_apply`]) even when the
        /// resolver settles it silently. Some of them may also be in `pruned`.
        concurrent: Vec<Sibling>,
    },
}

impl ApplyOutcome {
    /// Whether the write changed the key (an ignored write needs no storage update).
    pub fn is_applied(&self) -> bool {
        matches!(self, ApplyOutcome::Applied { .. })
    }

    /// Whether the write met concurrent siblings: a conflict for the conflict log.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApplyOutcome::Applied { concurrent, .. } if !concurrent.is_empty())
    }
}

/// Why the leader must refuse a client's write at its origin ([`KeyState::prepare_write`]).
/// Each message tells the client what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum WriteRefused {
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error(
        "value is {len} bytes, more than the limit of {max}; store large objects elsewhere and write a reference"
    )]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// [`MAX_VALUE_BYTES`].
        max: usize,
    },
    /// The write would leave more than [`MAX_SIBLINGS`] siblings.
    #[error(
        "key has {siblings} concurrent versions (limit {max}); read it and write back with the context you read to resolve them"
    )]
    TooManySiblings {
        /// Siblings the key would have after the write.
        siblings: usize,
        /// [`MAX_SIBLINGS`].
        max: usize,
    },
    /// The client's context covers writes this region has not applied yet (it was read in a
    /// region that is ahead, or it is forged). Stamping now could order the write before a
    /// write it supersedes, so the leader waits until it has caught up (as for a session token)
    /// or refuses with this error.
    #[error("this region has not yet applied everything your context covers ({} replicas behind); retry shortly or write in the region you read from", missing.len())]
    ContextAhead {
        /// `(replica, applied here, needed)` for each replica this region lags on.
        missing: Vec<(ReplicaId, Seq, Seq)>,
    },
    /// The dot is already covered by the key's context: the leader reused a sequence number.
    /// This is a bug in the caller, never the client's fault.
    #[error("internal error: dot {0} was already used for this key")]
    DotAlreadyUsed(Dot),
}

/// Why a decoded key state is not a valid one (storage corruption or a bug).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum StateError {
    /// Siblings are not in strictly ascending canonical order.
    #[error("siblings are not in canonical (hlc, replica, seq) order")]
    NotCanonical,
    /// Two siblings share a dot.
    #[error("sibling {0} appears twice")]
    DuplicateDot(Dot),
    /// A sibling's dot is not covered by the key's context.
    #[error("sibling {0} is not covered by the key's context")]
    SiblingOutsideContext(Dot),
    /// The bytes are not a postcard-encoded key state.
    #[error("key state is malformed: {0}")]
    Malformed(String),
}

/// The replicated state of one key: its causal context and its siblings.
///
/// Invariants (checked by [`KeyState::check_invariants`], on decoding, and after every apply in
/// debug builds): siblings are in strictly ascending canonical order ([`Sibling::order_key`]),
/// dots are unique, and every sibling's dot is covered by the context. The state is a
/// join-semilattice over applied writes, so equal write sets give equal states, equal bytes and
/// equal [`KeyState::digest`]s in every region.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "KeyStateWire")]
pub struct KeyState {
    /// Every write this region has seen for the key (including superseded and pruned ones).
    pub context: VersionVector,
    /// The writes no seen write supersedes, in canonical order.
    pub siblings: Vec<Sibling>,
}

/// The unchecked shape of a [`KeyState`] on the wire; decoding goes through it so that a
/// decoded state always satisfies the invariants.
#[derive(Deserialize)]
struct KeyStateWire {
    context: VersionVector,
    siblings: Vec<Sibling>,
}

impl TryFrom<KeyStateWire> for KeyState {
    type Error = StateError;

    fn try_from(wire: KeyStateWire) -> Result<Self, StateError> {
        let state = KeyState {
            context: wire.context,
            siblings: wire.siblings,
        };
        state.check_invariants()?;
        Ok(state)
    }
}

impl KeyState {
    /// The state of a key nobody has written: where every region starts.
    pub fn new() -> Self {
        KeyState::default()
    }

    /// Applies a write (DESIGN.md rules 1–3), then lets the resolver prune
    /// ([`Resolver::prunes_losers`]).
    ///
    /// 1. If the key's context covers `w.dot`, ignore `w` (a duplicate, or superseded already).
    /// 2. Remove every sibling whose dot `w.context` covers.
    /// 3. Add `w` as a sibling in canonical order; join `w.context` and `w.dot` into the
    ///    context.
    ///
    /// Then, for a pruning resolver such as last-write-wins, keep only the greatest sibling;
    /// the others' dots stay in the context, so a redelivery of a pruned write is ignored by
    /// rule 1. That is convergent because every write orders after everything its context
    /// covers (see [`stamp_write`]).
    ///
    /// Replicated writes are always applied, even past [`MAX_SIBLINGS`]: refusing one would
    /// make regions diverge. The cap is enforced at the origin by
    /// [`KeyState::prepare_write`].
    ///
    /// Semilattice resolvers do not collapse siblings here: a collapsed sibling would need a
    /// dot of its own, and regions collapsing different subsets would then hold different
    /// sibling sets that later context-carrying writes supersede differently. Siblings stay
    /// until a write supersedes them, and [`KeyState::resolve`] merges them on read.
    pub fn apply(&mut self, w: &Write, resolver: &dyn Resolver) -> ApplyOutcome {
        if self.context.covers(&w.dot) {
            return ApplyOutcome::Ignored;
        }
        let (superseded, kept): (Vec<Sibling>, Vec<Sibling>) = std::mem::take(&mut self.siblings)
            .into_iter()
            .partition(|s| w.context.covers(&s.dot));
        let concurrent = kept.clone();
        self.siblings = kept;
        let new = w.sibling();
        let at = self
            .siblings
            .partition_point(|s| s.order_key() < new.order_key());
        self.siblings.insert(at, new);
        self.context.join(&w.context);
        self.context.add_dot(&w.dot);

        let pruned = if resolver.prunes_losers() && self.siblings.len() > 1 {
            // The greatest sibling in canonical order is last; everything before it loses.
            let winner = self.siblings.split_off(self.siblings.len() - 1);
            std::mem::replace(&mut self.siblings, winner)
        } else {
            Vec::new()
        };
        debug_assert_eq!(self.check_invariants(), Ok(()));
        ApplyOutcome::Applied {
            superseded,
            pruned,
            concurrent,
        }
    }

    /// Joins `other` into this state: the result is the state of the union of the writes the
    /// two states reflect, whatever order they were applied in (states form a
    /// join-semilattice). A sibling stays if the other state holds it too or has not seen it
    /// (its context does not cover the dot); a sibling the other state has seen and no longer
    /// holds was superseded there (or pruned, for a pruning resolver, by a greater write).
    /// The contexts are joined, and a pruning resolver keeps the greatest sibling as
    /// [`KeyState::apply`] does.
    ///
    /// This is how a snapshot of another region is installed (docs/design.md, "Snapshot
    /// bootstrap"): a sibling carries no context of its own, so the snapshot's states cannot
    /// be replayed as writes, but two states can always be joined.
    pub fn join(&mut self, other: &KeyState, resolver: &dyn Resolver) {
        let mut siblings: Vec<Sibling> =
            Vec::with_capacity(self.siblings.len() + other.siblings.len());
        for s in std::mem::take(&mut self.siblings) {
            let kept =
                !other.context.covers(&s.dot) || other.siblings.iter().any(|o| o.dot == s.dot);
            if kept {
                siblings.push(s);
            }
        }
        for s in &other.siblings {
            if !self.context.covers(&s.dot) {
                siblings.push(s.clone());
            }
        }
        siblings.sort_by_key(Sibling::order_key);
        siblings.dedup_by_key(|s| s.dot);
        self.siblings = siblings;
        self.context.join(&other.context);
        if resolver.prunes_losers() && self.siblings.len() > 1 {
            self.siblings.drain(..self.siblings.len() - 1);
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    /// The context of a blind write (one the client sent without a context): the key's whole
    /// current context, so the write supersedes everything this region has for the key.
    pub fn blind_context(&self) -> VersionVector {
        self.context.clone()
    }

    /// The siblings a write with context `ctx` would supersede, e.g. to tell a client what its
    /// write replaces or to count siblings against the cap.
    pub fn superseded_by<'a>(
        &'a self,
        ctx: &'a VersionVector,
    ) -> impl Iterator<Item = &'a Sibling> {
        self.siblings.iter().filter(move |s| ctx.covers(&s.dot))
    }

    /// How many siblings the key would have after a local write with context `ctx`: the ones
    /// `ctx` does not cover, plus the write itself.
    pub fn siblings_after(&self, ctx: &VersionVector) -> usize {
        self.siblings.len() - self.superseded_by(ctx).count() + 1
    }

    /// Whether a local write with context `ctx` would leave more than [`MAX_SIBLINGS`]
    /// siblings, which the leader refuses (see [`WriteRefused::TooManySiblings`]).
    pub fn would_exceed_cap(&self, ctx: &VersionVector) -> bool {
        self.siblings_after(ctx) > MAX_SIBLINGS
    }

    /// Builds a client's write at its origin, or says why it must be refused. This is the one
    /// place the leader's rules for local writes live:
    ///
    /// - `context` is the client's context, or `None` for a blind write
    ///   ([`KeyState::blind_context`]);
    /// - the value must fit [`MAX_VALUE_BYTES`];
    /// - the key must already have applied everything `context` covers
    ///   ([`WriteRefused::ContextAhead`]), so the stamp below orders the write after every
    ///   write it supersedes;
    /// - the write must not leave more than [`MAX_SIBLINGS`] siblings;
    /// - `dot` must be fresh for this key (the leader's next sequence number);
    /// - the HLC is `stamp_write(tick, every sibling's hlc)`, with `tick` from the region's
    ///   [`crate::HybridClock::tick`] (the per-key causality rule; see [`stamp_write`] for why
    ///   all siblings).
    ///
    /// The leader should also run the table resolver's [`Resolver::check_value`] and the key
    /// limits ([`crate::limits::check_key`]) before calling this. The caller then applies the
    /// returned write to this state, logs it and replicates it.
    pub fn prepare_write(
        &self,
        dot: Dot,
        tick: Hlc,
        context: Option<&VersionVector>,
        value: Value,
    ) -> Result<Write, WriteRefused> {
        self.prepare_write_above(dot, tick, context, value, &VersionVector::new())
    }

    /// [`KeyState::prepare_write`] at a region that has seen more of the key's writes than
    /// its context says: `floor` counts as part of the key's context. A region that collected
    /// a key's tombstones (every region had them, and nothing concurrent can still arrive)
    /// dropped their dots with them; `floor` covers them again (the region's collected floor,
    /// docs/design.md, "Tombstone collection"), so a blind write still supersedes the delete
    /// and a client may write back the context its read returned.
    pub fn prepare_write_above(
        &self,
        dot: Dot,
        tick: Hlc,
        context: Option<&VersionVector>,
        value: Value,
        floor: &VersionVector,
    ) -> Result<Write, WriteRefused> {
        if let Value::Bytes(b) = &value
            && b.len() > MAX_VALUE_BYTES
        {
            return Err(WriteRefused::ValueTooLarge {
                len: b.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        let context = match context {
            Some(ctx) => ctx.clone(),
            None => {
                let mut ctx = self.blind_context();
                ctx.join(floor);
                ctx
            }
        };
        let ahead = context
            .iter()
            .any(|(o, s)| s > self.context.get(o).max(floor.get(o)));
        if ahead {
            let mut known = self.context.clone();
            known.join(floor);
            return Err(WriteRefused::ContextAhead {
                missing: known.missing_from(&context),
            });
        }
        if self.context.covers(&dot) {
            return Err(WriteRefused::DotAlreadyUsed(dot));
        }
        let siblings = self.siblings_after(&context);
        if siblings > MAX_SIBLINGS {
            return Err(WriteRefused::TooManySiblings {
                siblings,
                max: MAX_SIBLINGS,
            });
        }
        let hlc = stamp_write(tick, self.siblings.iter().map(|s| s.hlc));
        Ok(Write {
            dot,
            hlc,
            context,
            value,
        })
    }

    /// What readers see, according to `resolver`: the state keeps the siblings, the table's
    /// resolver interprets them.
    pub fn resolve(&self, resolver: &dyn Resolver) -> Resolved {
        resolver.resolve(&self.siblings)
    }

    /// Whether the key reads as absent whatever the resolver: never written, or every sibling
    /// is a tombstone.
    pub fn is_absent(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_tombstone())
    }

    /// Number of siblings (including tombstones), for metrics and the sibling cap.
    pub fn len(&self) -> usize {
        self.siblings.len()
    }

    /// Whether the key has no siblings: never written in this region (a deleted key still holds
    /// its tombstone).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// The canonical encoding (postcard): equal states have equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Invariant: serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(self).expect("key state serialises")
    }

    /// Decodes [`KeyState::to_bytes`] output and checks the invariants. Memory use is bounded
    /// by the input's length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        match postcard::take_from_bytes::<KeyStateWire>(bytes) {
            Ok((wire, [])) => KeyState::try_from(wire),
            Ok((_, rest)) => Err(StateError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            ))),
            Err(e) => Err(StateError::Malformed(e.to_string())),
        }
    }

    /// Estimated memory of this state in bytes: its values, plus room for dots, stamps and
    /// the context. Storage bounds the states it keeps back between checkpoints by it (and
    /// the test kit's model of storage with it).
    pub fn estimated_bytes(&self) -> usize {
        let values: usize = self
            .siblings
            .iter()
            .map(|s| 48 + s.value.as_bytes().map_or(0, <[u8]>::len))
            .sum();
        64 + values + 24 * self.context.len()
    }

    /// SHA-256 of the canonical encoding: two regions compare these to detect divergence
    /// without shipping values.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// Checks the invariants listed on the type; run on decoding and after every apply in debug
    /// builds, so corruption is caught where it enters.
    pub fn check_invariants(&self) -> Result<(), StateError> {
        if !self
            .siblings
            .windows(2)
            .all(|w| w[0].order_key() < w[1].order_key())
        {
            return Err(StateError::NotCanonical);
        }
        let mut dots = BTreeSet::new();
        for s in &self.siblings {
            if !dots.insert(s.dot) {
                return Err(StateError::DuplicateDot(s.dot));
            }
            if !self.context.covers(&s.dot) {
                return Err(StateError::SiblingOutsideContext(s.dot));
            }
        }
        Ok(())
    }
}
