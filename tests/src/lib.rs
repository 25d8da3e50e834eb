//! Cross-crate tests for Meridian.
//!
//! # Layout
//! - [`sim`]: the deterministic simulator (testing tier 2 of `docs/design.md`): several regions
//!   of the real sans-IO replication state machine ([`leader_core::Replica`]) on a seeded
//!   virtual network with an in-memory disk that loses whatever was not synced, crashes,
//!   partitions and skewed clocks, checked by invariants after every step and by oracles at
//!   quiescence. `tests/sim.rs` runs it; `docs/testing.md` says how to replay a seed.

pub mod sim;
