//! The `meridian` program: run a region, simulate a deployment on localhost, benchmark it,
//! create certificates, and talk to any region's API. This library part holds what the
//! binary (`src/main.rs`) and the tests that run it share.
//!
//! # Layout
//! - [`launch`]: regions as `meridian run` processes — how `simulate`, `bench` and the process
//!   tests start and stop them.
//!
//! The binary's own modules, in `src/`:
//! - `main.rs`: the command line and `meridian run` (a region, with the example resolvers).
//! - `cli.rs`: the client commands (`put`, `get`, `delete`, `status`, `conflicts`, `link`).
//! - `simulate.rs`: `meridian simulate` and its live view.
//! - `bench/`: `meridian bench` — phases, load generator, regions under test, report, chart.
//!
//! Tests that run the binary are in `tests/processes/` (one test binary; `main.rs` lists its
//! modules), as `CARGO_BIN_EXE_meridian` exists only in this package.

pub mod launch;
