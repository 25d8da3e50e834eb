//! The JSON documents a region's API answers with about itself, as types: what the API
//! serialises and what the CLI, `meridian bench`, `meridian simulate` and the tests
//! deserialise, so that no side spells a field name on its own.
//!
//! | document | route |
//! |---|---|
//! | [`Status`] | `GET /v1/status` |
//! | [`Digest`] | `GET /v1/status/digest` |
//! | [`ConflictPage`] | `GET /v1/conflicts` |
//! | [`Links`] | `GET`, `PUT`, `DELETE /v1/admin/links…` (the body of a `PUT` is a [`LinkChange`]) |
//!
//! Fields are declared in alphabetical order: serde writes them in declaration order, and
//! these documents were built with `serde_json::json!` before, which sorts keys, so the bytes
//! on the wire are the same as then. Every field is required when reading: a document from a
//! region of another version fails to parse with the field named, rather than reading as 0.

use std::collections::BTreeMap;

use conflict::ReplicaId;
use serde::{Deserialize, Serialize};

use crate::snapshot;

/// `GET /v1/status`: a region's view of itself and its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// What an operator should look at.
    pub alarms: Alarms,
    /// Durably applied writes per origin.
    pub applied: Vec<Applied>,
    /// The snapshot transfer under way, if this region is being bootstrapped (it serves no
    /// reads and takes no writes meanwhile); `null` otherwise.
    pub bootstrap: Option<Bootstrap>,
    /// The state machine's and the node's counters since the process started.
    pub counters: Counters,
    /// Replicated writes logged here but not applied (quarantined), per table.
    pub held_back: BTreeMap<String, u64>,
    /// The latest HLC, as text (`2026-11-27T12:19:59.182Z+0`).
    pub hlc: String,
    /// Keys stored.
    pub keys: u64,
    /// The write log: its size, where it starts, its retention bound.
    pub log: Log,
    /// The lag matrix as this region knows it (every origin → destination).
    pub matrix: Vec<MatrixEntry>,
    /// Replication and link state towards each peer.
    pub peers: Vec<Peer>,
    /// This region.
    pub region: String,
    /// This region's replica id.
    pub replica: ReplicaId,
}

/// The highest durably applied sequence number of one origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The origin's region.
    pub region: String,
    /// The origin's replica id.
    pub replica: ReplicaId,
    /// Its writes 1..=seq are applied here.
    pub seq: u64,
}

/// One peer as [`Status::peers`] shows it: the state machine's view and the transport link.
/// The link fields are `None` while the transport knows no link to the peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Frame bytes received from the peer.
    pub bytes_recv: Option<u64>,
    /// Frame bytes sent to the peer.
    pub bytes_sent: Option<u64>,
    /// Estimated offset of the peer's wall clock from ours, ms (positive: the peer is ahead).
    pub clock_offset_ms: Option<i64>,
    /// Connections established with the peer since start.
    pub connections: Option<u64>,
    /// How long the oldest of this region's writes that the peer lacks has been durable, ms.
    pub lag_ms: u64,
    /// Writes durable here that the peer has not acknowledged.
    pub lag_writes: u64,
    /// Where the transport link stands.
    pub link: Option<LinkState>,
    /// Bytes of writes the peer lacks that this region's log holds for it (counted since
    /// this process started); past `log.retention_bytes` the log is truncated past it.
    pub log_behind_bytes: u64,
    /// The same for a reader: "eu-west is 1.9 GiB behind; past 2.0 GiB it will need a
    /// snapshot", or that it needs one now; `None` when it lacks nothing.
    pub log_note: Option<String>,
    /// This region's log no longer holds writes the peer lacks: it needs a snapshot.
    pub needs_snapshot: bool,
    /// QUIC path statistics of the current connection.
    pub quic: Option<Quic>,
    /// The peer's region.
    pub region: String,
    /// Its replica id, once a hello was accepted.
    pub replica: Option<ReplicaId>,
    /// Whether a connection with an accepted hello is up.
    pub replicating: bool,
    /// Round-trip time of the current connection, ms.
    pub rtt_ms: Option<f64>,
    /// Bytes sent and not yet acknowledged.
    pub unacked_bytes: u64,
}

/// A snapshot transfer under way ([`Status::bootstrap`]): docs/design.md "Snapshot
/// bootstrap".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Bytes of key states received (this round).
    pub bytes: u64,
    /// Chunks received (this round).
    pub chunks: u64,
    /// Key states received (this round).
    pub keys: u64,
    /// `fetching` (chunks are coming), `received` (all of them; the install is next),
    /// `catching_up` (installed; applying the writes since, before serving again), or
    /// `learning` (no transfer: the data directory is new, and the region waits to learn from
    /// its peers whether it needs one; `reason` says what it waits for).
    pub phase: String,
    /// One line for a reader, as a refused client is told it.
    pub progress: String,
    /// Why the bootstrap started.
    pub reason: String,
    /// Transfers started over since the first.
    pub rounds: u32,
    /// The region serving it (the last one asked).
    pub source: Option<String>,
    /// Keys in the serving region's checkpoint, as its last chunk said (0 before the first).
    pub total_keys: u64,
}

impl From<&leader_core::Bootstrap> for Bootstrap {
    fn from(b: &leader_core::Bootstrap) -> Self {
        use leader_core::BootstrapPhase as P;
        Bootstrap {
            bytes: b.bytes,
            chunks: b.chunks,
            keys: b.keys,
            phase: match b.phase {
                P::Fetching => "fetching",
                P::Received => "received",
                P::CatchingUp => "catching_up",
                P::Learning => "learning",
            }
            .to_owned(),
            progress: b.progress(),
            reason: b.reason.clone(),
            rounds: b.rounds,
            source: b.source.clone(),
            total_keys: b.total_keys,
        }
    }
}

impl Bootstrap {
    /// A progress bar line: `bootstrapping from us-east [########........] 51% 51,200/100,000
    /// keys` while fetching (the total is the source's estimate; the bar stays below 100%
    /// until the last chunk), else the phase in words.
    pub fn bar(&self) -> String {
        const WIDTH: u64 = 16;
        let from = self.source.as_deref().unwrap_or("no region yet");
        match self.phase.as_str() {
            "fetching" => {
                let total = self.total_keys.max(self.keys);
                let pct = (self.keys * 100).checked_div(total).unwrap_or(0).min(99);
                let filled = (pct * WIDTH / 100) as usize;
                format!(
                    "bootstrapping from {from} [{}{}] {pct}% {}/{} keys",
                    "#".repeat(filled),
                    ".".repeat(WIDTH as usize - filled),
                    thousands(self.keys),
                    thousands(total)
                )
            }
            "received" => format!(
                "bootstrapping from {from} [{}] 100% {} keys received, installing",
                "#".repeat(WIDTH as usize),
                thousands(self.keys)
            ),
            "learning" => format!("not serving yet: {}", self.reason),
            _ => format!(
                "bootstrapping from {from}: {} keys installed, catching up with the writes since",
                thousands(self.keys)
            ),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The write log of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Bytes of its segment files.
    pub bytes: u64,
    /// `[limits] log_retention_bytes`.
    pub retention_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Per origin, the last write the log may have dropped: writes up to it are never
    /// streamed again (a peer that lacks them is answered "needs snapshot").
    pub start: Vec<Applied>,
}

/// (region, replica, seq) per origin, as the API lists a vector.
fn applied_list(vector: &[(String, ReplicaId, u64)]) -> Vec<Applied> {
    vector
        .iter()
        .map(|(region, replica, seq)| Applied {
            region: region.clone(),
            replica: *replica,
            seq: *seq,
        })
        .collect()
}

/// Human-readable bytes, in binary units (`1.9 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What [`Peer::log_note`] says of a peer `behind` bytes (or past the log's start).
fn log_note(region: &str, behind: u64, needs_snapshot: bool, retention: u64) -> Option<String> {
    if needs_snapshot {
        return Some(format!(
            "{region} needs a snapshot: this region's log no longer holds writes it lacks (it fell more than {} behind)",
            human_bytes(retention)
        ));
    }
    (behind > 0).then(|| {
        format!(
            "{region} is {} behind; past {} it will need a snapshot",
            human_bytes(behind),
            human_bytes(retention)
        )
    })
}

/// Where a peer link stands (the transport's [`transport::LinkState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// A dial (or an incoming connection) is in progress.
    Connecting,
    /// Connected, hello exchanged.
    Up,
    /// Not connected; waiting to redial.
    Down,
}

impl LinkState {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

impl From<transport::LinkState> for LinkState {
    fn from(s: transport::LinkState) -> Self {
        match s {
            transport::LinkState::Connecting => LinkState::Connecting,
            transport::LinkState::Up => LinkState::Up,
            transport::LinkState::Down => LinkState::Down,
        }
    }
}

/// QUIC path statistics of a peer's current connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quic {
    /// Congestion events.
    pub congestion_events: u64,
    /// The congestion window, bytes.
    pub cwnd: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Packets sent.
    pub sent_packets: u64,
}

/// One cell of the lag matrix: how far `destination` is behind `origin`'s own writes, as
/// computed by the origin on its own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixEntry {
    /// The region behind.
    pub destination: String,
    /// How long the oldest write it lacks has been durable at the origin, ms.
    pub lag_ms: u64,
    /// Writes it lacks.
    pub lag_writes: u64,
    /// The region whose writes are counted.
    pub origin: String,
    /// Whether the origin replicates to the destination.
    pub replicating: bool,
    /// How old the origin's row is where this region got it, ms.
    pub row_age_ms: u64,
}

/// What an operator should look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarms {
    /// Peers whose clocks ran further ahead than `max_clock_offset_ms`.
    pub clock_skew: Vec<ClockSkew>,
    /// Peers with which anti-entropy found keys diverged (and repaired them by join) since
    /// this process started: replication should have prevented it (a bug, a damaged disk, a
    /// copied data directory).
    pub divergence: Vec<Divergence>,
    /// Peers whose logs no longer hold writes this region lacks: it cannot catch up from
    /// them and needs a snapshot (unless another region still holds those writes).
    pub needs_snapshot: Vec<NeedsSnapshot>,
    /// Tables another region resolves differently.
    pub resolver_mismatch: Vec<ResolverMismatch>,
    /// Regions two live processes claim.
    pub split_brain: Vec<SplitBrain>,
}

/// The answer of `POST /v1/repair` (`meridian repair`): what the anti-entropy rounds it
/// started found, once they are all over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Keys found diverged although both regions had applied their writes (repaired by
    /// join, here and at the peer).
    pub diverged: u64,
    /// Keys that differed with a write still in flight: not compared.
    pub in_flight: u64,
    /// The last diverged keys, `table/key`.
    pub keys: Vec<String>,
    /// The peers a round started with (the connected ones).
    pub peers: Vec<String>,
    /// The region that ran them.
    pub region: String,
    /// Keys whose state at this region changed by the joins.
    pub repaired: u64,
    /// Rounds that finished; the others were given up (the peer did not answer in 30 s).
    pub rounds: u64,
}

/// What anti-entropy found with one peer since this process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Keys found diverged (by this region's rounds or the peer's).
    pub found: u64,
    /// The last keys found, `table/key` (at most 16).
    pub keys: Vec<String>,
    /// The peer.
    pub region: String,
    /// Of the keys found, those whose state here changed by the join.
    pub repaired: u64,
}

/// A peer whose log starts after writes this region lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsSnapshot {
    /// The first write of the origin this region lacks.
    pub from: u64,
    /// The first write of the origin the peer's log still holds.
    pub log_start: u64,
    /// The origin's region.
    pub origin: String,
    /// The peer that answered.
    pub region: String,
}

/// A peer whose clock ran ahead of the bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// How far ahead, ms.
    pub ahead_ms: u64,
    /// The configured bound, ms.
    pub bound_ms: u64,
    /// The peer.
    pub region: String,
}

/// A table that `region` resolves differently from this one: their writes to it are logged
/// but not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverMismatch {
    /// This region's resolver (`name@version`), `None` if the table is unknown here.
    pub ours: Option<String>,
    /// The other region.
    pub region: String,
    /// The table.
    pub table: String,
    /// The other region's resolver, `None` if the table is unknown there.
    pub theirs: Option<String>,
}

/// A region that a second live process claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitBrain {
    /// How long ago the refused process was last seen, ms.
    pub last_seen_ms_ago: u64,
    /// The replica id of the process kept.
    pub live_replica: String,
    /// The replica id of the process refused.
    pub refused_replica: String,
    /// The region claimed twice.
    pub region: String,
}

/// Counters since the process started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Keys anti-entropy found diverged although both regions had applied their writes.
    pub anti_entropy_diverged: u64,
    /// Keys anti-entropy saw differ with a write still in flight (not compared).
    pub anti_entropy_in_flight: u64,
    /// Keys whose state here changed by an anti-entropy repair.
    pub anti_entropy_repaired: u64,
    /// Anti-entropy rounds this region started and finished.
    pub anti_entropy_rounds: u64,
    /// Replicated writes that broke the per-key causality rule.
    pub causality_violations: u64,
    /// Client writes accepted.
    pub client_writes: u64,
    /// Conflicts detected (every resolver, including last-write-wins).
    pub conflicts: u64,
    /// Writes not applied because their key's context would outgrow the storage limit.
    pub context_overflows: u64,
    /// Duplicates that were not the write held under the same dot: two processes write as
    /// one replica.
    pub dots_reused: u64,
    /// Remote writes dropped as duplicates.
    pub duplicates: u64,
    /// Storage commits (fsyncs).
    pub fsyncs: u64,
    /// Batches dropped for a gap while a resync for it was still unanswered.
    pub gaps_dropped: u64,
    /// Log reads that failed or returned nothing.
    pub log_read_failures: u64,
    /// Persistence steps issued.
    pub persists: u64,
    /// Replicated writes logged but not applied (quarantined).
    pub quarantined: u64,
    /// Quarantined writes applied at a start whose configuration accepts them.
    pub released: u64,
    /// Remote writes applied.
    pub remote_applied: u64,
    /// Resync requests sent after a gap.
    pub resyncs: u64,
    /// Frames that found a peer's send queue full (held until it drains).
    pub send_queue_full: u64,
    /// Snapshot chunks received and joined into the key states here.
    pub snapshot_chunks_received: u64,
    /// Snapshot chunks served to regions being bootstrapped.
    pub snapshot_chunks_sent: u64,
    /// Key states received in snapshot chunks.
    pub snapshot_keys_received: u64,
    /// Snapshot key states of tables not configured here, not installed.
    pub snapshot_keys_skipped: u64,
    /// Snapshots installed here.
    pub snapshots_installed: u64,
    /// Snapshot transfers started here, new rounds included.
    pub snapshots_started: u64,
    /// Client writes refused because a peer stayed too far behind for their whole timeout, or
    /// the queue of paced writes was full.
    pub writes_overloaded: u64,
    /// Client writes that waited for an in-sync peer to catch up (`[limits] pace_lag_writes`).
    pub writes_paced: u64,
    /// Writes relayed for a third region.
    pub writes_relayed: u64,
    /// Writes sent (own and relayed).
    pub writes_sent: u64,
}

impl From<&snapshot::Status> for Status {
    fn from(s: &snapshot::Status) -> Self {
        let peers = s
            .peers
            .iter()
            .map(|p| {
                let link = s.links.get(&p.region);
                Peer {
                    bytes_recv: link.map(|l| l.bytes_recv),
                    bytes_sent: link.map(|l| l.bytes_sent),
                    clock_offset_ms: p.clock_offset_ms,
                    connections: link.map(|l| l.connections),
                    lag_ms: p.lag_ms,
                    lag_writes: p.lag_writes,
                    link: link.map(|l| l.state.into()),
                    log_behind_bytes: p.log_behind_bytes,
                    log_note: log_note(
                        &p.region,
                        p.log_behind_bytes,
                        p.needs_snapshot,
                        s.log_retention_bytes,
                    ),
                    needs_snapshot: p.needs_snapshot,
                    quic: link.and_then(|l| l.path).map(|q| Quic {
                        congestion_events: q.congestion_events,
                        cwnd: q.cwnd,
                        lost_packets: q.lost_packets,
                        sent_packets: q.sent_packets,
                    }),
                    region: p.region.clone(),
                    replica: p.replica,
                    replicating: p.connected,
                    rtt_ms: link.and_then(|l| l.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    unacked_bytes: p.unacked_bytes as u64,
                }
            })
            .collect();
        let c = &s.counters;
        Status {
            alarms: Alarms {
                clock_skew: s
                    .skew_alarms
                    .iter()
                    .map(|(region, ahead_ms)| ClockSkew {
                        ahead_ms: *ahead_ms,
                        bound_ms: s.max_clock_offset_ms,
                        region: region.clone(),
                    })
                    .collect(),
                divergence: s
                    .divergences
                    .iter()
                    .map(|(region, d)| Divergence {
                        found: d.found,
                        keys: d
                            .keys
                            .iter()
                            .map(|k| crate::snapshot::key_list(std::slice::from_ref(k)))
                            .collect(),
                        region: region.clone(),
                        repaired: d.repaired,
                    })
                    .collect(),
                needs_snapshot: s
                    .snapshot_needed
                    .iter()
                    .map(|(peer, n)| NeedsSnapshot {
                        from: n.from.0,
                        log_start: n.log_start.0,
                        origin: n.origin_region.clone(),
                        region: peer.clone(),
                    })
                    .collect(),
                resolver_mismatch: s
                    .resolver_mismatches
                    .iter()
                    .map(|(region, table, ours, theirs)| ResolverMismatch {
                        ours: ours.clone(),
                        region: region.clone(),
                        table: table.clone(),
                        theirs: theirs.clone(),
                    })
                    .collect(),
                split_brain: s
                    .split_brain
                    .iter()
                    .map(|(region, live, refused, ago)| SplitBrain {
                        last_seen_ms_ago: *ago,
                        live_replica: live.clone(),
                        refused_replica: refused.clone(),
                        region: region.clone(),
                    })
                    .collect(),
            },
            applied: applied_list(&s.applied),
            bootstrap: s.bootstrap.as_ref().map(Bootstrap::from),
            counters: Counters {
                anti_entropy_diverged: c.anti_entropy_diverged,
                anti_entropy_in_flight: c.anti_entropy_in_flight,
                anti_entropy_repaired: c.anti_entropy_repaired,
                anti_entropy_rounds: c.anti_entropy_rounds,
                causality_violations: c.causality_violations,
                client_writes: c.client_writes,
                conflicts: c.conflicts,
                context_overflows: c.context_overflows,
                dots_reused: c.dots_reused,
                duplicates: c.duplicates,
                fsyncs: s.commits,
                gaps_dropped: c.gaps_dropped,
                log_read_failures: c.log_read_failures,
                persists: c.persists,
                quarantined: c.quarantined,
                released: c.released,
                remote_applied: c.remote_applied,
                resyncs: c.resyncs,
                send_queue_full: s.send_queue_full,
                snapshot_chunks_received: c.snapshot_chunks_received,
                snapshot_chunks_sent: c.snapshot_chunks_sent,
                snapshot_keys_received: c.snapshot_keys_received,
                snapshot_keys_skipped: c.snapshot_keys_skipped,
                snapshots_installed: c.snapshots_installed,
                snapshots_started: c.snapshots_started,
                writes_overloaded: c.writes_overloaded,
                writes_paced: c.writes_paced,
                writes_relayed: c.writes_relayed,
                writes_sent: c.writes_sent,
            },
            held_back: s.held_back.clone(),
            hlc: s.hlc.to_string(),
            keys: s.keys as u64,
            log: Log {
                bytes: s.log_size.0,
                retention_bytes: s.log_retention_bytes,
                segments: s.log_size.1 as u64,
                start: applied_list(&s.log_start),
            },
            matrix: s
                .matrix
                .iter()
                .map(|m| MatrixEntry {
                    destination: m.destination.clone(),
                    lag_ms: m.lag_ms,
                    lag_writes: m.lag_writes,
                    origin: m.origin.clone(),
                    replicating: m.connected,
                    row_age_ms: m.row_age_ms,
                })
                .collect(),
            peers,
            region: s.region.clone(),
            replica: s.replica,
        }
    }
}

impl Status {
    /// The applied vector by origin region: the highest applied sequence number of each.
    pub fn applied_by_region(&self) -> BTreeMap<String, u64> {
        self.applied
            .iter()
            .map(|a| (a.region.clone(), a.seq))
            .collect()
    }

    /// Whether every peer is replicating (true with no peers).
    pub fn all_peers_replicating(&self) -> bool {
        self.peers.iter().all(|p| p.replicating)
    }
}

/// `GET /v1/status/digest`: the state digest, for convergence checks across regions. The
/// applied vector is read just before the digest: compare digests once the vectors are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The applied vector by origin region.
    pub applied: BTreeMap<String, u64>,
    /// SHA-256 over every key state, hex.
    pub digest: String,
    /// The region.
    pub region: String,
}

/// `GET /v1/conflicts`: one page of the conflict log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictPage {
    /// The conflicts of this page.
    pub conflicts: Vec<LoggedConflict>,
    /// The `before` of the next page (the last id of this one), `None` on an empty page.
    pub next_before: Option<u64>,
    /// Conflicts in the log in all.
    pub total_logged: u64,
}

/// One meeting of concurrent writes, as the conflict log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedConflict {
    /// When it was detected, Unix ms.
    pub detected_ms: u64,
    /// Its id, increasing.
    pub id: u64,
    /// The key (lossy UTF-8).
    pub key: String,
    /// What the resolver made of it.
    pub outcome: String,
    /// The table's resolver (`name@version`).
    pub resolver: String,
    /// The writes that met.
    pub siblings: Vec<ConflictWrite>,
    /// The table.
    pub table: String,
}

/// One of the writes of a [`LoggedConflict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictWrite {
    /// Its HLC, as text.
    pub hlc: String,
    /// Whether the resolver kept it.
    pub kept: bool,
    /// Its origin's region (`unknown` when this region has not learnt it).
    pub region: String,
    /// Its origin's replica id.
    pub replica: ReplicaId,
    /// Its sequence number at the origin.
    pub seq: u64,
}

/// `/v1/admin/links`: the impairment of every outgoing link and what the layer dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Links {
    /// Packets dropped from blocked peers.
    pub blocked_inbound: u64,
    /// Packets dropped to blocked peers.
    pub blocked_outbound: u64,
    /// Packets dropped by the configured loss.
    pub dropped_loss: u64,
    /// Packets dropped because the delay line was full.
    pub dropped_queue_full: u64,
    /// One per peer.
    pub links: Vec<Link>,
}

impl Links {
    /// The link to `peer`, if it is a peer.
    pub fn to(&self, peer: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.peer == peer)
    }
}

/// The impairment of one outgoing link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The peer's address.
    pub addr: String,
    /// Whether the link is cut (either direction).
    pub blocked: bool,
    /// Jitter on the latency, ms.
    pub jitter_ms: u64,
    /// Added one-way latency, ms.
    pub latency_ms: u64,
    /// Share of packets dropped, 0 to 1.
    pub loss: f64,
    /// The peer's region.
    pub peer: String,
}

/// The body of `PUT /v1/admin/links/{peer}`; a field left out keeps its current value. (Its
/// fields keep the order they had before this type existed, which the error for an unknown
/// field lists.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkChange {
    /// Added one-way latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Jitter on the latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// Share of packets to drop, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Cut (`true`) or heal (`false`) the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
}

impl LinkChange {
    /// Cut the link.
    pub const BLOCK: LinkChange = LinkChange {
        latency_ms: None,
        jitter_ms: None,
        loss: None,
        blocked: Some(true),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `/v1/status` and `meridian status` say of a peer as it nears the retention bound,
    /// and once the log was truncated past it (issue 13, item 2).
    #[test]
    fn a_peer_is_shown_approaching_the_retention_bound_then_needing_a_snapshot() {
        let gib = 1u64 << 30;
        assert_eq!(
            log_note("eu-west", gib * 19 / 10, false, 2 * gib).as_deref(),
            Some("eu-west is 1.9 GiB behind; past 2.0 GiB it will need a snapshot")
        );
        assert_eq!(log_note("eu-west", 0, false, 2 * gib), None);
        assert_eq!(
            log_note("eu-west", 0, true, 2 * gib).as_deref(),
            Some(
                "eu-west needs a snapshot: this region's log no longer holds writes it lacks \
                 (it fell more than 2.0 GiB behind)"
            )
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    fn fetching(keys: u64, total_keys: u64) -> Bootstrap {
        let core = leader_core::Bootstrap {
            phase: leader_core::BootstrapPhase::Fetching,
            after: None,
            low: None,
            high: conflict::VersionVector::new(),
            keys,
            bytes: keys * 64,
            chunks: keys / 512,
            total_keys,
            source: Some("us-east".into()),
            reason: "region 'us-east' no longer holds the writes of eu-west from 1 on".into(),
            rounds: 0,
            refused_by: Default::default(),
            partial: false,
            collected: conflict::VersionVector::new(),
        };
        Bootstrap::from(&core)
    }

    /// `/v1/status`'s `bootstrap` object: every field the brief names, under these names.
    #[test]
    fn a_bootstrap_shows_phase_figures_source_and_reason() {
        let json = serde_json::to_value(fetching(51_200, 100_000)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "bytes": 3_276_800,
                "chunks": 100,
                "keys": 51_200,
                "phase": "fetching",
                "progress": "fetching from us-east: 51200 of about 100000 keys, 100 chunks",
                "reason": "region 'us-east' no longer holds the writes of eu-west from 1 on",
                "rounds": 0,
                "source": "us-east",
                "total_keys": 100_000,
            })
        );
    }

    #[test]
    fn the_progress_bar_fills_with_the_keys_received() {
        assert_eq!(
            fetching(51_200, 100_000).bar(),
            "bootstrapping from us-east [########........] 51% 51,200/100,000 keys"
        );
        assert_eq!(
            fetching(0, 0).bar(),
            "bootstrapping from us-east [................] 0% 0/0 keys"
        );
        // The total is the source's estimate: never past 99% before the last chunk.
        assert_eq!(
            fetching(1_200, 1_000).bar(),
            "bootstrapping from us-east [###############.] 99% 1,200/1,200 keys"
        );
        let mut received = fetching(1_000, 1_000);
        received.phase = "received".into();
        assert_eq!(
            received.bar(),
            "bootstrapping from us-east [################] 100% 1,000 keys received, installing"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
