//! Causality and conflict resolution for Meridian: hybrid logical clocks, version vectors,
//! per-key sibling sets and the pluggable `Resolver` trait. Pure: no I/O.
