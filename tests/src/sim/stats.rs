//! What a run did: the faults it injected (which a test asserts are non-zero, so a fault that
//! silently stopped firing is noticed) and what the workload and the machines did.

use std::fmt;
use std::ops::AddAssign;

/// Faults injected by one run (or summed over many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Partitions splitting the regions in two groups, both directions cut.
    pub partitions_symmetric: u64,
    /// Partitions cutting one direction only.
    pub partitions_one_way: u64,
    /// Partitions where one region still sees both sides.
    pub partitions_bridge: u64,
    /// Region crashes (each loses whatever was not synced).
    pub crashes: u64,
    /// Restarts from the disk.
    pub restarts: u64,
    /// Regions lost for good right after one of their writes was acknowledged at `one`+.
    pub permanent_losses: u64,
    /// Connections reset spontaneously (both ends see it go down).
    pub conn_resets: u64,
    /// Connections that died because their path delivered nothing for the idle timeout.
    pub idle_timeouts: u64,
    /// Frames delivered twice on their connection.
    pub duplicates: u64,
    /// Frames that overtook the frame queued before them on their connection.
    pub reorders: u64,
    /// Frames the transport refused to queue (`Event::SendFailed`).
    pub send_failures: u64,
    /// Frames lost silently inside a live connection (beyond the contract; opt-in).
    pub silent_losses: u64,
    /// Frames lost with their connection (queued or in flight when it died).
    pub frames_lost: u64,
    /// Times a frame waited at a cut path for the partition to heal.
    pub frames_held: u64,
    /// Wall-clock jumps forward.
    pub clock_jumps_forward: u64,
    /// Wall-clock jumps backward.
    pub clock_jumps_backward: u64,
    /// Regions started, or jumps made, beyond `max_clock_offset` from true time.
    pub skew_beyond_bound: u64,
    /// Persists whose fsync was slow.
    pub slow_fsyncs: u64,
    /// Commits that were checkpoints (key states written back).
    pub checkpoints: u64,
    /// Restarts that replayed the log after the last checkpoint.
    pub replays: u64,
    /// Log entries those restarts replayed.
    pub replayed_entries: u64,
    /// Log entries dropped from disks by truncation (every region had them durably, or a
    /// lagging one was passed by the retention bound).
    pub truncated: u64,
    /// Regions whose disk was replaced by an empty one (restarted under a new replica id).
    pub disk_losses: u64,
    /// Crashes (or disk losses) of a region in the middle of fetching a snapshot.
    pub crashes_mid_transfer: u64,
    /// Partitions that cut a region fetching a snapshot off from its source.
    pub cuts_mid_transfer: u64,
    /// Acknowledged writes lost with the only disk that held them (at `local`, or timed out
    /// before another region had them): what a disk loss may take.
    pub writes_lost_with_disk: u64,
}

impl FaultCounts {
    /// Every partition, whatever its shape.
    pub fn partitions(&self) -> u64 {
        self.partitions_symmetric + self.partitions_one_way + self.partitions_bridge
    }

    /// Every skew event: jumps both ways and out-of-bound offsets.
    pub fn skew_events(&self) -> u64 {
        self.clock_jumps_forward + self.clock_jumps_backward + self.skew_beyond_bound
    }
}

impl AddAssign<&FaultCounts> for FaultCounts {
    fn add_assign(&mut self, o: &FaultCounts) {
        self.partitions_symmetric += o.partitions_symmetric;
        self.partitions_one_way += o.partitions_one_way;
        self.partitions_bridge += o.partitions_bridge;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.permanent_losses += o.permanent_losses;
        self.conn_resets += o.conn_resets;
        self.idle_timeouts += o.idle_timeouts;
        self.duplicates += o.duplicates;
        self.reorders += o.reorders;
        self.send_failures += o.send_failures;
        self.silent_losses += o.silent_losses;
        self.frames_lost += o.frames_lost;
        self.frames_held += o.frames_held;
        self.clock_jumps_forward += o.clock_jumps_forward;
        self.clock_jumps_backward += o.clock_jumps_backward;
        self.skew_beyond_bound += o.skew_beyond_bound;
        self.slow_fsyncs += o.slow_fsyncs;
        self.checkpoints += o.checkpoints;
        self.replays += o.replays;
        self.replayed_entries += o.replayed_entries;
        self.truncated += o.truncated;
        self.disk_losses += o.disk_losses;
        self.crashes_mid_transfer += o.crashes_mid_transfer;
        self.cuts_mid_transfer += o.cuts_mid_transfer;
        self.writes_lost_with_disk += o.writes_lost_with_disk;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partitions {} (symmetric {}, one-way {}, bridge {}), crashes {}, restarts {}, \
             permanent losses {}, conn resets {}, idle timeouts {}, duplicates {}, reorders {}, \
             send failures {}, silent losses {}, frames lost {}, frames held {}, skew events {} \
             (jumps +{} -{}, beyond bound {}), slow fsyncs {}, checkpoints {}, replays {} \
             ({} entries), log entries truncated {}, disk losses {}, crashes mid-transfer {}, \
             cuts mid-transfer {}, acknowledged writes lost with a disk {}",
            self.partitions(),
            self.partitions_symmetric,
            self.partitions_one_way,
            self.partitions_bridge,
            self.crashes,
            self.restarts,
            self.permanent_losses,
            self.conn_resets,
            self.idle_timeouts,
            self.duplicates,
            self.reorders,
            self.send_failures,
            self.silent_losses,
            self.frames_lost,
            self.frames_held,
            self.skew_events(),
            self.clock_jumps_forward,
            self.clock_jumps_backward,
            self.skew_beyond_bound,
            self.slow_fsyncs,
            self.checkpoints,
            self.replays,
            self.replayed_entries,
            self.truncated,
            self.disk_losses,
            self.crashes_mid_transfer,
            self.cuts_mid_transfer,
            self.writes_lost_with_disk,
        )
    }
}

/// What the workload and the machines did in one run (or summed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkCounts {
    /// Events processed.
    pub events: u64,
    /// Client writes issued.
    pub writes: u64,
    /// Acknowledged at the level asked, per level (local, one, quorum, all).
    pub acked: [u64; 4],
    /// Answered with `timed_out` (committed locally, level not reached in time).
    pub timed_out: u64,
    /// Refused: the client's context was ahead of the region.
    pub refused_context: u64,
    /// Refused: too many siblings.
    pub refused_siblings: u64,
    /// Client writes that waited for an in-sync peer to catch up (flow control).
    pub paced: u64,
    /// Refused: a peer stayed too far behind for the write's whole timeout (flow control).
    pub overloaded: u64,
    /// Never answered: the region crashed first.
    pub abandoned: u64,
    /// Client operations that found their region down.
    pub unavailable: u64,
    /// Client operations that found their region bootstrapping from a snapshot (writes
    /// refused with `Bootstrapping`, reads the API would refuse).
    pub bootstrapping: u64,
    /// Snapshot transfers started (or started over), by `SnapshotStarted` alarms.
    pub snapshots_started: u64,
    /// Snapshot chunks received.
    pub snapshot_chunks: u64,
    /// Snapshots installed.
    pub snapshots_installed: u64,
    /// Client reads served (each checked against the last write acknowledged there).
    pub reads: u64,
    /// Reads at `quorum` or `all` answered (each checked by the `quorum-read` oracle).
    pub quorum_reads: u64,
    /// Reads at `quorum` or `all` that too few regions answered in time.
    pub quorum_reads_failed: u64,
    /// Keys joined by read repair (at the reader, and at the regions it sent repairs to).
    pub read_repairs: u64,
    /// Conflicts the machines logged.
    pub conflicts: u64,
    /// Resync requests (gaps seen by receivers).
    pub resyncs: u64,
    /// Writes relayed for a third region.
    pub relayed: u64,
    /// Duplicate writes dropped by receivers.
    pub duplicates_dropped: u64,
    /// Replicated writes logged but held back (quarantined): table unknown or resolver
    /// mismatched at the receiver (rolling configuration changes only).
    pub quarantined: u64,
    /// Quarantined writes applied by a start whose configuration accepts them.
    pub released: u64,
    /// Persists completed.
    pub persists: u64,
    /// Log reads served from disk.
    pub log_reads: u64,
    /// Events after which `poll_timeout` was already past (a real driver would spin); only
    /// counted without step checks, which fail the seed instead.
    pub spin_ticks: u64,
    /// Connections established.
    pub connections: u64,
    /// Longest time from the end of the faults to a settled world, virtual ms.
    pub settle_ms_max: u64,
}

impl AddAssign<&WorkCounts> for WorkCounts {
    fn add_assign(&mut self, o: &WorkCounts) {
        self.events += o.events;
        self.writes += o.writes;
        for (a, b) in self.acked.iter_mut().zip(o.acked) {
            *a += b;
        }
        self.timed_out += o.timed_out;
        self.refused_context += o.refused_context;
        self.refused_siblings += o.refused_siblings;
        self.paced += o.paced;
        self.overloaded += o.overloaded;
        self.abandoned += o.abandoned;
        self.unavailable += o.unavailable;
        self.bootstrapping += o.bootstrapping;
        self.snapshots_started += o.snapshots_started;
        self.snapshot_chunks += o.snapshot_chunks;
        self.snapshots_installed += o.snapshots_installed;
        self.reads += o.reads;
        self.quorum_reads += o.quorum_reads;
        self.quorum_reads_failed += o.quorum_reads_failed;
        self.read_repairs += o.read_repairs;
        self.conflicts += o.conflicts;
        self.resyncs += o.resyncs;
        self.relayed += o.relayed;
        self.duplicates_dropped += o.duplicates_dropped;
        self.quarantined += o.quarantined;
        self.released += o.released;
        self.persists += o.persists;
        self.log_reads += o.log_reads;
        self.spin_ticks += o.spin_ticks;
        self.connections += o.connections;
        self.settle_ms_max = self.settle_ms_max.max(o.settle_ms_max);
    }
}

impl fmt::Display for WorkCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events {}, writes {} (acked local {}, one {}, quorum {}, all {}; timed out {}; \
             refused: context ahead {}, siblings {}, overloaded {}; paced {}; abandoned {}; region down {}; bootstrapping {}), reads {}, quorum reads {} ({} failed, {} repairs), conflicts {}, \
             snapshots started {} ({} chunks, {} installed), resyncs {}, relayed {}, duplicates dropped {}, held back {}, released {}, \
             persists {}, log reads {}, connections {}, spin ticks {}, longest settle {} ms",
            self.events,
            self.writes,
            self.acked[0],
            self.acked[1],
            self.acked[2],
            self.acked[3],
            self.timed_out,
            self.refused_context,
            self.refused_siblings,
            self.overloaded,
            self.paced,
            self.abandoned,
            self.unavailable,
            self.bootstrapping,
            self.reads,
            self.quorum_reads,
            self.quorum_reads_failed,
            self.read_repairs,
            self.conflicts,
            self.snapshots_started,
            self.snapshot_chunks,
            self.snapshots_installed,
            self.resyncs,
            self.relayed,
            self.duplicates_dropped,
            self.quarantined,
            self.released,
            self.persists,
            self.log_reads,
            self.connections,
            self.spin_ticks,
            self.settle_ms_max,
        )
    }
}
