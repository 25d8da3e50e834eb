//! Causality and conflict resolution for Meridian: hybrid logical clocks, version vectors,
//! per-key sibling sets, the pluggable [`Resolver`] trait with its built-ins, and a law checker
//! for custom resolvers. Pure: no I/O, no clock reads outside [`SystemClock`], and no
//! randomness outside [`ReplicaId::new_random`] (the seeded [`rng`] draws nothing from the OS).
//!
//! # Layout
//!
//! Read it bottom-up, from names to time to causality to values:
//!
//! - `id` — [`ReplicaId`], [`Seq`], [`Dot`]: who wrote, and which write.
//! - `hlc` — [`Hlc`], the 48+16-bit hybrid timestamp, and [`stamp_write`], the per-key
//!   causality rule the leader applies when it stamps a write.
//! - `clock` — [`PhysicalClock`] ([`SystemClock`], [`ManualClock`]), the pure
//!   [`HybridClock`] with the `max_clock_offset` guard, and the [`Clock`] wrapper.
//! - `vv` — [`VersionVector`]: join, coverage, causal comparison, compact encoding (session
//!   tokens).
//! - `key` — [`Write`], [`Sibling`], [`KeyState`]: the apply rules of DESIGN.md and the
//!   leader's checks for local writes ([`KeyState::prepare_write`]).
//! - `resolver` — the [`Resolver`] trait, [`Resolved`], and the built-ins [`Lww`] and
//!   [`MultiValue`].
//! - `registry` — [`Registry`] of resolvers by name, and [`Fingerprints`] peers compare.
//! - `record` — [`Conflict`], the conflict-log record.
//! - [`limits`] — every bound, with its policy.
//! - [`examples`] — a counter and a union set, written as an application would.
//! - [`laws`] — the law checker users run against their resolvers.
//! - [`rng`] — [`rng::SplitMix64`], the project's one seeded generator (test inputs, fault
//!   schedules, benchmark workloads), here because every crate that draws from one already
//!   depends on this crate.
//!
//! # The rules in one place
//!
//! A region applies a write to a key with [`KeyState::apply`]: ignore it if the key's context
//! covers its dot; remove the siblings its context covers; add it; join its context. Every
//! region that applies the same writes (each origin's in order, any interleaving, any
//! duplicates) reaches the same [`KeyState`], byte for byte ([`KeyState::digest`]).
//!
//! Last-write-wins prunes losers at once, which stays convergent because every write's HLC is
//! greater than every dot its context covers. The leader guarantees that by stamping local
//! writes with [`KeyState::prepare_write`]: above every sibling the key holds, and only once
//! the key has applied the client's whole context (see [`stamp_write`] for why this is a
//! little stronger than "above the siblings it supersedes").
//!
//! # Choices beyond DESIGN.md
//!
//! Where DESIGN.md is silent or this crate refines it, and why:
//!
//! - **Stamp above every sibling, after the context is applied.** [`KeyState::prepare_write`]
//!   stamps a local write above *all* the key's siblings (not only the superseded ones) and
//!   refuses a client context the region has not applied yet ([`WriteRefused::ContextAhead`];
//!   the leader may wait, as for a session token). Together they guarantee that every write is
//!   stamped after everything its context covers, which is what makes last-write-wins pruning
//!   provably convergent; they also stop a forged context from hiding writes.
//! - **No eager collapse for semilattice resolvers.** Siblings stay until a write supersedes
//!   them and are merged on read; collapsing would need synthetic dots and could make regions
//!   supersede different sibling sets (see [`KeyState::apply`]).
//! - **Multi-value readers do not see tombstones.** A delete concurrent with a write reads as
//!   the write; only tombstones read as absent ([`MultiValue`]).
//! - **Resolvers can refuse client values** ([`Resolver::check_value`]), so a custom merge
//!   never meets bytes it cannot decode; replicated writes are never refused.
//! - **Pruning is a declared property** ([`Resolver::prunes_losers`]), checked by the law
//!   checker, rather than something special-cased for `lww`.

mod clock;
pub mod examples;
mod hlc;
mod id;
mod key;
pub mod laws;
pub mod limits;
mod record;
mod registry;
mod resolver;
pub mod rng;
mod vv;

pub use clock::{
    Clock, DEFAULT_MAX_CLOCK_OFFSET_MS, HybridClock, ManualClock, Observed, PhysicalClock,
    SystemClock,
};
pub use hlc::{Hlc, stamp_write};
pub use id::{Dot, ReplicaId, Seq};
pub use key::{
    ApplyOutcome, InvalidWrite, KeyState, Sibling, StateError, Value, Write, WriteRefused,
};
pub use limits::MAX_VV_ENTRIES;
pub use record::{Conflict, ConflictOutcome};
pub use registry::{Fingerprints, Registry, RegistryError, TableMismatch};
pub use resolver::{
    CounterResolver, InvalidValue, Lww, MultiValue, Resolved, Resolver, ResolverId,
};
pub use vv::{Causality, VersionVector, VvDecodeError};
