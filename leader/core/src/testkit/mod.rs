//! One test kit for the core (feature `testkit`): the storage model, the log-read rule, the
//! effect interpreter and the in-memory network that every test driver of [`Replica`] shares
//! — the simulator (`meridian-tests`), the machine, hostile and timer tests. Production
//! (`leader::storage` and `leader::node`) is the reference each part models.
//!
//! # Layout
//! - [`disk`][mod@disk]: [`Disk`], what `leader::storage::Store` keeps: the log per origin, the
//!   quarantine records, key states written back only at checkpoints, and a crash followed
//!   by the recovery that `Store::open` + `Store::replay` + `Node` perform ([`Disk::recover`]).
//! - [`read_log`][read_log()]: the one rule for serving [`Effect::ReadLog`](crate::Effect::ReadLog).
//! - [`options`]: the options of a test region, with bounds small enough to reach.
//! - [`cluster`][mod@cluster]: [`Node`] (one region's process: machine, disk, what its effects left to do)
//!   with the one interpreter of effects ([`Node::perform`]), and [`Cluster`], regions on an
//!   in-memory network whose connections close on [`Effect::Close`](crate::Effect::Close), as
//!   `leader::node` closes the QUIC connection.

pub mod cluster;
pub mod disk;

use std::collections::BTreeMap;

use conflict::{ReplicaId, Seq};

#[cfg(doc)]
use crate::Replica;
use crate::{LogEntry, Options};

pub use cluster::{Cluster, Node, Outgoing};
pub use disk::{Disk, DiskLimits, Recovery};

/// Serves a log read as `leader::storage::Store::read_log` does, exactly: `origin`'s
/// entries from `from` to `to` inclusive, in order, each one taken *before* the budget is
/// looked at, stopping once the bytes taken ([`LogEntry::wire_size`]) reach `max_bytes`. So a
/// read returns at least one entry when the range holds any, and may pass the budget by its
/// last entry (less than one entry's size). Every model of the log uses this function.
pub fn read_log(
    log: &BTreeMap<(ReplicaId, Seq), LogEntry>,
    origin: ReplicaId,
    from: Seq,
    to: Seq,
    max_bytes: usize,
) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut used = 0;
    if from > to {
        return out;
    }
    for e in log.range((origin, from)..=(origin, to)).map(|(_, e)| e) {
        used += e.wire_size();
        out.push(e.clone());
        if used >= max_bytes {
            break;
        }
    }
    out
}

/// The options of a test region: `region` with replica id `replica` and these peers, cluster
/// `test`, tables `default` (`lww`) and `mv` (`multi-value`), and bounds small enough for a
/// test to reach with a few writes (a 4 KiB window, 1 KiB batches, 4 siblings, a tail of
/// 1,600 bytes). Tests change what they need with struct update syntax.
pub fn options(region: &str, replica: ReplicaId, peers: &[&str]) -> Options {
    Options {
        cluster: "test".into(),
        region: region.into(),
        replica,
        peers: peers.iter().map(|p| (*p).to_owned()).collect(),
        tables: BTreeMap::from([
            ("default".to_owned(), "lww".to_owned()),
            ("mv".to_owned(), "multi-value".to_owned()),
        ]),
        max_clock_offset_ms: 500,
        relay_delay_ms: 1000,
        heartbeat_interval_ms: 500,
        peer_window_bytes: 4096,
        max_batch_bytes: 1024,
        max_siblings: 4,
        conflict_log_capacity: 100,
        log_tail_bytes: 8 * 200,
        pace_lag_writes: 0,
        log_retention_bytes: u64::MAX,
        snapshot_chunk_bytes: 1024,
        learn_when_empty: false,
        anti_entropy_interval_ms: 0,
    }
}
