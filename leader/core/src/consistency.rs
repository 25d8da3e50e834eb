//! Per-request consistency: the durability ladder and the lag matrix with clock-offset
//! estimates. Pure bookkeeping, driven by [`crate::Replica`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use conflict::{Hlc, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

/// How durable a write must be before its client is answered.
///
/// Every level first makes the write durable here (fsync). Higher levels then wait for other
/// regions to apply it *durably* (their acks are sent only after their fsync), so a write
/// acknowledged at `one` survives the loss of this region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Durability {
    /// Durable in this region.
    #[default]
    Local,
    /// Also durable in at least one other region (semi-synchronous).
    One,
    /// Durable in a majority of all regions, counting this one.
    Quorum,
    /// Durable in every region.
    All,
}

impl Durability {
    /// How many *other* regions must have the write, in a cluster of `regions` regions.
    pub fn peers_needed(self, regions: usize) -> usize {
        let others = regions.saturating_sub(1);
        match self {
            Durability::Local => 0,
            Durability::One => others.min(1),
            Durability::Quorum => (regions / 2 + 1).saturating_sub(1),
            Durability::All => others,
        }
    }

    /// The name used in headers, query parameters and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::One => "one",
            Durability::Quorum => "quorum",
            Durability::All => "all",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durability name that is not one of `local`, `one`, `quorum`, `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability '{0}'; use one of: local, one, quorum, all")]
pub struct UnknownDurability(pub String);

impl FromStr for Durability {
    type Err = UnknownDurability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Durability::Local),
            "one" => Ok(Durability::One),
            "quorum" => Ok(Durability::Quorum),
            "all" => Ok(Durability::All),
            other => Err(UnknownDurability(other.to_owned())),
        }
    }
}

/// How many regions a read consults (`read=` beside `durability=`): the read half of the
/// Dynamo rule. A read at level R after a write acknowledged at durability W sees that write
/// whenever R + W > N (N regions): every set of R regions meets every set of W regions.
/// `quorum` with `quorum` always does, wherever each request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum ReadLevel {
    /// This region's own newest durable state of the key (no round trip).
    #[default]
    One,
    /// A majority of all regions, counting this one: their states of the key, joined.
    Quorum,
    /// Every region.
    All,
}

impl ReadLevel {
    /// How many *other* regions must answer, in a cluster of `regions` regions: as many as a
    /// write at the same level waits for ([`Durability::peers_needed`]).
    pub fn peers_needed(self, regions: usize) -> usize {
        match self {
            ReadLevel::One => 0,
            ReadLevel::Quorum => Durability::Quorum.peers_needed(regions),
            ReadLevel::All => Durability::All.peers_needed(regions),
        }
    }

    /// The name used in query parameters and config.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::One => "one",
            ReadLevel::Quorum => "quorum",
            ReadLevel::All => "all",
        }
    }
}

impl fmt::Display for ReadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read level name that is not one of `one`, `quorum`, `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown read level '{0}'; use one of: one, quorum, all")]
pub struct UnknownReadLevel(pub String);

impl FromStr for ReadLevel {
    type Err = UnknownReadLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "one" => Ok(ReadLevel::One),
            "quorum" => Ok(ReadLevel::Quorum),
            "all" => Ok(ReadLevel::All),
            other => Err(UnknownReadLevel(other.to_owned())),
        }
    }
}

/// One region's row of the lag matrix, as it travels in heartbeats: what it has applied, and
/// how far each of its peers lags behind *its own* writes, measured on *its own* clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixRow {
    /// The region the row describes (its origin).
    pub region: String,
    /// Its replica id.
    pub replica: ReplicaId,
    /// The origin's HLC when it made the row: rows of one region are ordered by it, across
    /// restarts too, so a relayed stale row never replaces a fresher one.
    pub version: Hlc,
    /// What the origin has durably applied, per origin.
    pub applied: VersionVector,
    /// Lag of each peer behind the origin's own writes.
    pub lags: Vec<PeerLag>,
    /// table → `resolver@version` at the origin.
    pub resolvers: Vec<(String, String)>,
}

/// One cell of the lag matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerLag {
    /// The destination region.
    pub peer: String,
    /// Writes of the origin durable there but not acknowledged by the destination.
    pub lag_writes: u64,
    /// How long the oldest of those has been durable at the origin, in ms (origin's clock).
    pub lag_ms: u64,
    /// Whether the origin currently replicates to the destination directly.
    pub connected: bool,
    /// The origin's estimate of the destination's clock offset, ms (positive: ahead).
    pub clock_offset_ms: Option<i64>,
}

/// Samples kept for a clock-offset estimate; the one with the smallest round trip wins, as in
/// NTP's clock filter (queueing delay only ever adds error).
const SKEW_SAMPLES: usize = 8;

/// An NTP-style estimate of one peer's clock offset from heartbeat timestamps.
#[derive(Debug, Clone, Default)]
pub(crate) struct SkewEstimate {
    samples: VecDeque<(u64, i64)>,
}

impl SkewEstimate {
    /// Adds a sample from one echo: `t1` our send time, `t2` the peer's receive time, `t3`
    /// the peer's send time of the echo, `t4` our receive time (wall ms on each side).
    pub(crate) fn sample(&mut self, t1: u64, t2: u64, t3: u64, t4: u64) {
        // In i128 every u64 fits, so timestamps from a broken or hostile peer cannot overflow.
        let [t1, t2, t3, t4] = [t1, t2, t3, t4].map(i128::from);
        let rtt = (t4 - t1) - (t3 - t2);
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        // A negative round trip means a clock stepped mid-exchange; one beyond u64 or an
        // offset beyond i64 means timestamps no clock produced. Either way: meaningless.
        let (Ok(rtt), Ok(offset)) = (u64::try_from(rtt), i64::try_from(offset)) else {
            return;
        };
        if self.samples.len() == SKEW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((rtt, offset));
    }

    /// The offset of the sample with the smallest round trip, ms (positive: peer ahead).
    pub(crate) fn offset_ms(&self) -> Option<i64> {
        self.samples
            .iter()
            .min_by_key(|(rtt, _)| *rtt)
            .map(|(_, o)| *o)
    }
}

/// The freshest row known for each region, with when (mono ms) it arrived here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matrix {
    pub(crate) rows: BTreeMap<String, (MatrixRow, u64)>,
}

impl Matrix {
    /// Keeps `row` if it is fresher than what we have for its region; says whether it did.
    pub(crate) fn offer(&mut self, row: MatrixRow, now_mono: u64) -> bool {
        let fresher = match self.rows.get(&row.region) {
            None => true,
            Some((have, _)) => row.version > have.version,
        };
        if fresher {
            self.rows.insert(row.region.clone(), (row, now_mono));
        }
        fresher
    }
}

/// One cell of the matrix as this region shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixCell {
    /// Origin region (whose writes).
    pub origin: String,
    /// Destination region (who lags).
    pub destination: String,
    /// Writes the destination lacks.
    pub lag_writes: u64,
    /// Age of the oldest missing write at the origin, ms (origin's clock).
    pub lag_ms: u64,
    /// Whether the origin replicates to the destination directly right now.
    pub connected: bool,
    /// How long ago (ms, our clock) this region received the row: 0 for its own row.
    pub row_age_ms: u64,
}
