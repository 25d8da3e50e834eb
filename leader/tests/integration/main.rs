//! The `leader` library's tests, through its public API: one test binary with a module per
//! subject, so the harness in `common/` is compiled and linked once (`cargo test -p leader
//! --test integration`; `-- cluster::` runs one module). `docs/testing.md` maps each module to
//! what it proves.

mod common;

// Configuration and storage, no network.
mod config_errors;
mod config_load;
mod conformance;
mod storage;

// One region: the HTTP API, the Redis front end, a custom resolver.
mod api;
mod custom_resolver;
mod hostile_api;
mod resp;

// Clusters over real QUIC on loopback.
mod anti_entropy;
mod catchup;
mod cluster;
mod collection;
mod consistency;
mod hostile_peer;
mod quorum;
mod resp_meridian;
mod rollout;

// Whole leaders in turmoil's virtual time.
mod turmoil_cluster;
