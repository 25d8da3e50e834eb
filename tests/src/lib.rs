//! Cross-crate tests for Meridian.
//!
//! # Layout
//! - [`sim`]: the deterministic simulator (testing tier 2 of `docs/design.md`): several regions
//!   of the real sans-IO replication state machine ([`leader_core::Replica`]), each a
//!   `leader_core::testkit::Node` (the kit's disk with checkpoints and replay, the kit's
//!   effect interpreter), on a seeded virtual network with crashes, partitions and skewed
//!   clocks, checked by invariants after every step and by oracles at quiescence.
//!   `tests/sim.rs` runs it, `tests/timers.rs` checks the machine's timer contract on the
//!   kit's `Cluster`; `docs/testing.md` says how to replay a seed.

pub mod sim;
