//! [`Status`]: what the runtime knows of its region at one moment, taken by the driver and
//! rendered by the API's documents ([`crate::status`]) and the metrics ([`crate::metrics`]).
//! A module of its own, below `node`, `status` and `metrics`, so that the driver can record
//! into the metrics and the metrics can render a snapshot without the two modules depending
//! on each other.

use std::collections::BTreeMap;

use leader_core::{Counters, PeerView};

/// A region's view of itself and its peers, as the runtime holds it; the API shows it as
/// [`crate::status::Status`].
#[derive(Debug, Clone)]
pub struct Status {
    /// This region.
    pub region: String,
    /// This region's replica id.
    pub replica: conflict::ReplicaId,
    /// Durably applied writes per origin, with region names.
    pub applied: Vec<(String, conflict::ReplicaId, u64)>,
    /// Replication state towards each peer.
    pub peers: Vec<PeerView>,
    /// Transport link state per peer.
    pub links: BTreeMap<String, transport::LinkStatus>,
    /// The state machine's counters.
    pub counters: Counters,
    /// Storage commits (fsyncs) since start.
    pub commits: u64,
    /// Frames that found a peer's send queue full: that stream pauses, and its frames are held
    /// here until the queue drains.
    pub send_queue_full: u64,
    /// Keys stored.
    pub keys: usize,
    /// Latest HLC.
    pub hlc: conflict::Hlc,
    /// The full lag matrix as this region knows it (every origin → destination).
    pub matrix: Vec<leader_core::MatrixCell>,
    /// Regions whose clocks ran further ahead than `max_clock_offset_ms`: (region, lead ms).
    pub skew_alarms: Vec<(String, u64)>,
    /// (region, table, ours, theirs) for tables another region resolves differently.
    pub resolver_mismatches: Vec<(String, String, Option<String>, Option<String>)>,
    /// The configured bound on clock offsets, ms.
    pub max_clock_offset_ms: u64,
    /// Regions two live processes claim, as seen in the last
    /// [`SPLIT_BRAIN_SHOWN_FOR`](crate::node::SPLIT_BRAIN_SHOWN_FOR): (region, live replica, refused replica, ms since last seen).
    pub split_brain: Vec<(String, String, String, u64)>,
    /// Replicated writes logged here but not applied (quarantined), per table: the table is
    /// unknown here, or its origin resolves it differently. Applied at a start whose
    /// configuration accepts them (see docs/config.md, "Changing tables and resolvers").
    pub held_back: BTreeMap<String, u64>,
    /// `[limits] log_retention_bytes`.
    pub log_retention_bytes: u64,
    /// Bytes of the write log's segment files, and how many there are.
    pub log_size: (u64, usize),
    /// Where the log starts per origin (region, replica, last seq dropped or droppable).
    pub log_start: Vec<(String, conflict::ReplicaId, u64)>,
    /// "Needs snapshot" answers: (peer that answered, what it said). This region cannot catch
    /// up from that peer's log.
    pub snapshot_needed: Vec<(String, leader_core::NeedsSnapshot)>,
    /// The snapshot transfer under way, if this region is being bootstrapped: it serves no
    /// reads and takes no writes until this is `None`.
    pub bootstrap: Option<leader_core::Bootstrap>,
    /// What anti-entropy found with each peer since this process started.
    pub divergences: Vec<(String, leader_core::Divergence)>,
}

/// `table/key` of each key, comma-separated (keys shown as UTF-8, lossily), for logs and
/// status.
pub fn key_list(keys: &[(String, Vec<u8>)]) -> String {
    let shown: Vec<String> = keys
        .iter()
        .map(|(t, k)| format!("{t}/{}", String::from_utf8_lossy(k)))
        .collect();
    shown.join(", ")
}
