//! Meridian's replication state machine, sans-IO.
//!
//! # Layout
//! - [`consistency`]: the durability ladder and the lag matrix (rows, clock-offset estimates).
//! - [`msg`]: the wire messages regions exchange (hello, batch, ack, heartbeat, resync, refuse).
//! - [`machine`]: [`Replica`], the state machine of one region: it takes [`Event`]s with the
//!   current [`Time`] and returns [`Effect`]s (persist this batch, send this frame, answer this
//!   client, read the log, raise an alarm), plus [`Replica::poll_timeout`] for its next timer.
//!
//! # Why a separate crate
//! The core must never read a clock, touch a socket or the disk, spawn or draw unseeded
//! randomness, so the deterministic simulator can replay any schedule from a seed. Keeping it in
//! its own crate lets its `clippy.toml` forbid those calls (`disallowed-methods`) and `HashMap`
//! iteration (`disallowed-types`) for this code only, while the runtime in `leader` uses them
//! freely. The crate depends on `conflict` and `serde` and nothing that does I/O.

pub mod consistency;
pub mod limits;
pub mod machine;
pub mod msg;

pub use consistency::{Durability, MatrixCell, MatrixRow, PeerLag, UnknownDurability};
pub use machine::{
    Alarm, BuildError, ConflictRecord, ConnId, Counters, Effect, Event, MAX_PACED_WRITES, Options,
    PeerView, PersistBatch, Quarantined, Recovered, Replica, RequestId, Time, WriteError,
    WriteReceipt, resolver_accepts,
};
pub use msg::{Batch, Hello, LogEntry, PROTOCOL_VERSION, PeerMsg};
