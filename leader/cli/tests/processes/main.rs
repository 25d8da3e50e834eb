//! Tests that run the `meridian` binary (testing tier 4b): real processes on localhost, and
//! the CLI end to end. One test binary with a module per subject, so the harness is compiled
//! once; `CARGO_BIN_EXE_meridian` exists only in tests of the binary's own package.

mod harness;
mod load;

mod bench_cli;
mod bootstrap;
mod chaos;
mod cli_session;
mod memory;
mod quorum;
mod restart;
mod retention;
mod split_brain;
mod wan_load;
