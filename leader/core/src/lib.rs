//! Meridian's replication state machine, sans-IO.
//!
//! # Layout
//! - [`consistency`]: the durability ladder and the lag matrix (rows, clock-offset estimates).
//! - [`msg`]: the wire messages regions exchange (hello, batch, ack, heartbeat, resync, refuse).
//! - [`hashtree`]: anti-entropy's hash tree of live key states (fixed shape, XOR of per-key
//!   hashes, updated per key change).
//! - [`limits`]: the core's own named bounds (queues, retries, alarm rates), each with its
//!   policy; bounds on keys, values and siblings are `conflict::limits`.
//! - [`machine`]: [`Replica`], the state machine of one region: it takes [`Event`]s with the
//!   current [`Time`] and returns [`Effect`]s (persist this batch, send this frame, answer this
//!   client, read the log, raise an alarm), plus [`Replica::poll_timeout`] for its next timer.
//!   One type, its methods in rooms by what they do:
//!   - `machine/mod.rs`: the struct, `new`, `handle`, the timers (`poll_timeout` and the tick
//!     that serves them), getters, and the invariants checked after every event;
//!   - `machine/events.rs`: the public vocabulary ([`Event`], [`Effect`], [`Options`],
//!     [`PersistBatch`], [`WriteReceipt`], [`WriteError`], [`Alarm`], [`Counters`]...);
//!   - `machine/client.rs`: client writes, flow control, the conflict log, durability waits;
//!   - `machine/persist.rs`: staging and group commit, and what a durable batch releases;
//!   - `machine/peer.rs`: `Peer`, one other region (connections, acks, send window), and
//!     the connection life cycle (hellos, refusals, frames);
//!   - `machine/receive.rs`: batches in: gaps and `Resync`, validation, applying;
//!   - `machine/stream.rs`: batches out: the log tail, catch-up from the log, relays;
//!   - `machine/matrix.rs`: heartbeats, lag, the lag matrix and peer views;
//!   - `machine/resolvers.rs`: which regions' writes of a table are applied; quarantine;
//!   - `machine/alarms.rs`: clock skew, causality violations, reused dots;
//!   - `machine/keys.rs`: the key table, through which every key state change goes, keeping
//!     the hash tree up to date;
//!   - `machine/truncate.rs`: log truncation by causal stability and the retention bound;
//!   - `machine/snapshot.rs`: snapshot bootstrap (serving chunks, fetching, installing);
//!   - `machine/learn.rs`: a fresh data directory starts gated until its peers show whether
//!     it needs a snapshot;
//!   - `machine/collect.rs`: tombstone collection by causal stability;
//!   - `machine/quorum.rs`: reads at `read=quorum`/`all` and read repair;
//!   - `machine/repair.rs`: key states learned from other regions, joined in;
//!   - `machine/aae.rs`: anti-entropy rounds: compare trees with a peer top-down, join and
//!     report diverged keys, skip those in flight.
//! - `testkit` (feature `testkit`, for tests only): the one storage model (`disk.rs`, held to
//!   production's store by `leader/tests/integration/conformance.rs`), log-read rule, effect
//!   interpreter and in-memory network (`cluster.rs`), and test regions' options, that every
//!   test driver of the machine shares: the simulator, the machine, hostile and timer tests.
//!
//! # Why a separate crate
//! The core must never read a clock, touch a socket or the disk, spawn or draw unseeded
//! randomness, so the deterministic simulator can replay any schedule from a seed. Keeping it in
//! its own crate lets its `clippy.toml` forbid those calls (`disallowed-methods`) and `HashMap`
//! iteration (`disallowed-types`) for this code only, while the runtime in `leader` uses them
//! freely. The crate depends on `conflict` and `serde` and nothing that does I/O.

pub mod consistency;
pub mod hashtree;
pub mod limits;
pub mod machine;
pub mod msg;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use consistency::{
    Durability, MatrixCell, MatrixRow, PeerLag, ReadLevel, UnknownDurability, UnknownReadLevel,
};
pub use machine::{
    Alarm, Bootstrap, BootstrapPhase, BuildError, ConflictRecord, ConnId, Counters, Divergence,
    Effect, Event, MAX_PACED_WRITES, Options, PeerView, PersistBatch, Quarantined, ReadAnswer,
    ReadError, Recovered, Replica, RequestId, SnapshotPiece, Time, WriteError, WriteReceipt,
    resolver_accepts,
};
pub use msg::{
    AaeHashes, AaeRepair, AaeRequest, AaeStates, AaeStatesRequest, Batch, Hello, LogEntry,
    NeedsSnapshot, PROTOCOL_VERSION, PeerMsg, ReadRepair, ReadReply, ReadRequest, Serving,
    SnapshotChunk, SnapshotRequest, Standing,
};
