//! What one seed simulates: the cluster, the machine's tunables, the network, the clocks, the
//! workload and which faults fire how often. Everything is drawn from the seed, and each seed
//! draws its own mix ("swarm testing"): some seeds partition a lot, some crash a lot, some run
//! clean, so rare combinations are reached without tuning probabilities by hand.

use super::rng::Rng;

/// Region names, in order; a seed uses the first `regions` of them.
pub const REGION_NAMES: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

/// Bound on remote stamps the machine lets pull its clock along (the design's default).
pub const MAX_CLOCK_OFFSET_MS: u64 = 500;

/// The replication tunables the seed picks for every region (small, so the limits are hit).
#[derive(Debug, Clone)]
pub struct MachineKnobs {
    /// [`leader_core::Options::relay_delay_ms`].
    pub relay_delay_ms: u64,
    /// [`leader_core::Options::heartbeat_interval_ms`].
    pub heartbeat_interval_ms: u64,
    /// [`leader_core::Options::peer_window_bytes`].
    pub peer_window_bytes: usize,
    /// [`leader_core::Options::max_batch_bytes`].
    pub max_batch_bytes: usize,
    /// [`leader_core::Options::max_siblings`].
    pub max_siblings: usize,
    /// [`leader_core::Options::log_tail_bytes`]: a few to a few dozen of the simulator's
    /// small writes, and sometimes less than one sibling-heavy write.
    pub log_tail_bytes: usize,
    /// [`leader_core::Options::pace_lag_writes`]: off for a third of the seeds, otherwise a
    /// few writes, so in-sync peers pace client writes often. Drawn from its own stream so
    /// that adding it left every other draw of a seed (and the regression seeds) unchanged.
    pub pace_lag_writes: u64,
    /// [`leader_core::Options::log_retention_bytes`] of the bounded regions: unbounded in
    /// half the seeds (logs are truncated by causal stability only), else a few dozen of the
    /// simulator's small writes, so a region cut off or down for a while is passed by the
    /// bound and bootstraps from a snapshot. From a stream of its own, like every knob of the
    /// snapshot bootstrap.
    pub log_retention_bytes: u64,
    /// The one region whose log has that bound, or `None` when every region's has (the
    /// others keep their logs until every region has the writes).
    pub bounded_region: Option<usize>,
    /// [`leader_core::Options::snapshot_chunk_bytes`]: small, so a transfer takes many chunks
    /// and a crash or a cut can fall in its middle.
    pub snapshot_chunk_bytes: usize,
}

/// A permanent loss: the first write acknowledged at `one` or above after `after_ms` costs its
/// origin region its life (crashed, never restarted), right after the acknowledgement.
#[derive(Debug, Clone, Copy)]
pub struct Doom {
    /// No doom before this virtual time.
    pub after_ms: u64,
    /// Whether every other region crashes at the same instant too (and restarts later), so
    /// only what was durable anywhere at the moment of the ack survives.
    pub correlated: bool,
}

/// A range of milliseconds between two occurrences of a fault, or `None` when the seed does
/// without that fault.
pub type Gap = Option<(u64, u64)>;

/// Everything a seed decides up front.
#[derive(Debug, Clone)]
pub struct Params {
    /// Number of regions (3..=5).
    pub regions: usize,
    /// Replica id of each region (random, so the replica-id tie-break varies).
    pub replica_ids: Vec<u128>,
    /// How long clients write, in virtual ms.
    pub workload_ms: u64,
    /// Mean interval between two client operations at one region.
    pub op_interval_ms: u64,
    /// Size of the hot key set per table.
    pub hot_keys: usize,
    /// Tunables of the machine.
    pub knobs: MachineKnobs,
    /// Per directed pair `[from][to]`: base one-way delay and jitter, ms.
    pub delays: Vec<Vec<(u64, u64)>>,
    /// Per region: initial wall-clock offset (ms) and drift (parts per million).
    pub clocks: Vec<(i64, i64)>,
    /// Probability that a frame is delivered twice.
    pub p_dup: f64,
    /// Probability that a frame overtakes the frame queued before it on its connection.
    pub p_reorder: f64,
    /// Probability that queuing a frame fails (a full send queue: `Event::SendFailed`).
    pub p_send_fail: f64,
    /// Interval between partitions, and how long one lasts.
    pub partition_gap_ms: Gap,
    /// Duration range of a partition.
    pub partition_len_ms: (u64, u64),
    /// Interval between crashes, and how long a crashed region stays down.
    pub crash_gap_ms: Gap,
    /// Downtime range of a crashed region.
    pub down_ms: (u64, u64),
    /// Interval between clock jumps.
    pub jump_gap_ms: Gap,
    /// Largest clock jump, ms (forward or backward).
    pub jump_max_ms: u64,
    /// Interval between spontaneous connection resets.
    pub reset_gap_ms: Gap,
    /// How long a connection survives a path that delivers nothing (QUIC idle timeout).
    pub idle_timeout_ms: u64,
    /// Usual fsync latency range, ms.
    pub fsync_ms: (u64, u64),
    /// Probability of a slow fsync, and its latency range.
    pub fsync_slow: (f64, u64, u64),
    /// A permanent loss, in about one seed out of four.
    pub doom: Option<Doom>,
    /// Interval between disk losses: a region's process dies and it restarts on an empty
    /// disk under a new replica id (an operator replacing a failed volume).
    pub disk_loss_gap_ms: Gap,
    /// Probability that a snapshot transfer, once started, is hit by a crash of its receiver
    /// or a cut from its source shortly after (so such faults land mid-transfer).
    pub p_hit_transfer: f64,
}

fn gap(rng: &mut Rng, p_on: f64, lo: u64, hi: u64) -> Gap {
    rng.chance(p_on).then(|| {
        let a = rng.range(lo, hi);
        (a, a * 2)
    })
}

impl Params {
    /// The parameters of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::stream(seed, 1);
        // The snapshot bootstrap's knobs and the disk loss draw from a stream of their own, so
        // that adding them left every other draw of a seed (and the regression seeds) unchanged.
        let mut snap = Rng::stream(seed, 7);
        let regions = rng.range(3, 5) as usize;
        let replica_ids = (0..regions).map(|_| rng.u128()).collect();
        let knobs = MachineKnobs {
            relay_delay_ms: rng.range(200, 2_000),
            heartbeat_interval_ms: rng.range(100, 1_000),
            peer_window_bytes: rng.range(600, 16_384) as usize,
            max_batch_bytes: rng.range(150, 4_096) as usize,
            max_siblings: rng.range(2, 8) as usize,
            log_tail_bytes: rng.range(1, 32) as usize * 128,
            pace_lag_writes: {
                let mut own = Rng::stream(seed, 6);
                if own.chance(0.33) {
                    0
                } else {
                    own.range(2, 64)
                }
            },
            log_retention_bytes: if snap.chance(0.5) {
                u64::MAX
            } else {
                snap.range(600, 8_000)
            },
            snapshot_chunk_bytes: snap.range(200, 4_000) as usize,
            bounded_region: snap.chance(0.5).then(|| snap.index(regions)),
        };
        let delays = (0..regions)
            .map(|_| {
                (0..regions)
                    .map(|_| (rng.range(1, 120), rng.range(0, 60)))
                    .collect()
            })
            .collect();
        // One region in three runs far off (beyond the offset bound), the others close.
        let clocks = (0..regions)
            .map(|_| {
                let far = rng.chance(0.33);
                let offset = rng.signed(if far { 4_000 } else { 300 });
                (offset, rng.signed(2_000))
            })
            .collect();
        let doom = rng.chance(0.25).then(|| Doom {
            after_ms: rng.range(1_000, 8_000),
            correlated: rng.chance(0.5),
        });
        Params {
            regions,
            replica_ids,
            workload_ms: rng.range(8_000, 20_000),
            op_interval_ms: rng.range(20, 200),
            hot_keys: rng.range(1, 5) as usize,
            knobs,
            delays,
            clocks,
            p_dup: if rng.chance(0.7) {
                rng.range(1, 50) as f64 / 1_000.0
            } else {
                0.0
            },
            p_reorder: if rng.chance(0.7) {
                rng.range(1, 50) as f64 / 1_000.0
            } else {
                0.0
            },
            p_send_fail: if rng.chance(0.5) {
                rng.range(1, 20) as f64 / 1_000.0
            } else {
                0.0
            },
            partition_gap_ms: gap(&mut rng, 0.8, 500, 4_000),
            partition_len_ms: (rng.range(100, 1_000), rng.range(2_000, 12_000)),
            crash_gap_ms: gap(&mut rng, 0.8, 1_000, 6_000),
            down_ms: (rng.range(10, 500), rng.range(1_000, 6_000)),
            jump_gap_ms: gap(&mut rng, 0.8, 500, 5_000),
            jump_max_ms: rng.range(200, 5_000),
            reset_gap_ms: gap(&mut rng, 0.5, 1_000, 8_000),
            idle_timeout_ms: rng.range(1_000, 5_000),
            fsync_ms: (rng.range(0, 2), rng.range(3, 30)),
            fsync_slow: (rng.range(0, 100) as f64 / 1_000.0, 50, rng.range(100, 800)),
            doom,
            disk_loss_gap_ms: gap(&mut snap, 0.35, 3_000, 8_000),
            p_hit_transfer: snap.range(0, 60) as f64 / 100.0,
        }
    }
}
