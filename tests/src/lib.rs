//! Cross-crate tests for Meridian: the deterministic simulator, multi-region clusters and
//! fault tests live here as they are built.
