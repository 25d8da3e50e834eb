//! The deterministic simulator: several regions of the real replication state machine
//! ([`leader_core::Replica`]) on one seeded, virtual-time world.
//!
//! # What is real and what is modelled
//! The machine is the production code, driven exactly as `leader::node` drives it (call order
//! in `leader_core::machine`); each region is a `leader_core::testkit::Node`, whose
//! interpreter (`Node::perform`) performs every effect, as in every other test of the core.
//! Around it the simulator models, from one seed:
//! - **the disk**: `leader_core::testkit::Disk`, the model of `leader::storage` every test
//!   driver shares. A persist reaches it atomically when its fsync completes (random latency,
//!   sometimes slow); key states are written back only at checkpoints (bounds drawn per seed,
//!   small, so checkpoints happen within a run); a crash loses the persist in flight, all
//!   memory and the key states kept back since the last checkpoint; a restart builds a new
//!   machine (same replica id) as production does: the checkpointed states, the log after the
//!   checkpoint replayed in chunks, then the quarantined writes this configuration accepts.
//!   Log reads are served from the disk by the kit's rule (production's).
//! - **the transport**: one connection per region pair at a time, with an id; `PeerUp` on
//!   both ends when it is established, frames delivered in order on the connection they were
//!   sent on, after a per-pair delay and jitter; `PeerDown` on each end when it dies, losing
//!   what was queued on it. A cut path holds frames (as QUIC retransmits) until it heals or
//!   the connection's idle timeout kills it; a crashed peer is noticed at the idle timeout or
//!   when its restarted self reconnects. That is the production contract (QUIC streams are
//!   reliable and ordered). On top of it, as faults the contract does not promise, frames are
//!   sometimes duplicated or overtake the frame before them, and queuing sometimes fails
//!   (`Event::SendFailed`, as with a full send queue).
//! - **partitions** (symmetric, one-way, and bridges where one region sees both sides),
//!   spontaneous connection resets, **crashes** and restarts, and the permanent loss of a
//!   region right after one of its writes was acknowledged at `one` or above.
//! - behind [`RunOptions::snapshot_faults`], what makes regions bootstrap from a snapshot: a
//!   finite log retention bound, **disk losses** (a region restarts on an empty disk under a
//!   new replica id; only acknowledged writes no other disk holds, at a level that promised
//!   no more, may be lost), and crashes and cuts aimed at transfers under way.
//! - **clocks**: `Time::mono_ms` is true virtual time since the region's process started;
//!   `Time::wall_ms` is skewed per region (offset, drift, jumps both ways, sometimes beyond
//!   `max_clock_offset`).
//! - **clients**: blind writes, deletes, read-modify-writes with the context read (in the same
//!   region or another one later) on a few hot keys of an `lww`, a `multi-value` and a
//!   `counter` table, at every durability level with a timeout.
//!
//! # Oracles
//! After every step ([`RunOptions::step_checks`]): persists extend the disk without gaps and
//! never shrink the applied vector; the machine's durable vector equals the disk's; applied
//! and received vectors only grow within a process; every remote write applied is the write
//! its origin made durable, and lands in its key (no gap); a write orders after everything
//! its context supersedes (the per-key causality rule); every acknowledgement (to a client,
//! or an `Ack`/`Hello`/heartbeat row on the wire) claims only what is on disk; at most one
//! persist is outstanding; a local write never leaves more siblings than the cap;
//! `poll_timeout` never names a time already past; no unexpected alarm; and, behind
//! [`RunOptions::check_dirty_context`] while that finding is open, a read-modify-write's
//! context covers only writes its client could have seen. At the end, after healing and quiescence: identical digests everywhere,
//! disk equal to memory, every key's context and siblings exactly what the writes that
//! reached it imply (last-write-wins keeps the greatest `(hlc, replica, seq)`, multi-value and
//! counter keep exactly the concurrent writes, nothing superseded survives), every
//! acknowledged write present or outranked, counters never below an acknowledged increment,
//! and a write acknowledged at `one`+ present even though its origin is gone.
//!
//! # Layout
//! [`rng`] (the fixed PRNG), [`params`] (what a seed decides), [`truth`] (ground
//! truth and the final-state oracles), [`stats`], [`trace`], and the world itself: `world`
//! (event loop and effects), `net` (transport and faults), `workload` (clients), `checks`.

pub mod params;
pub mod rng;
pub mod stats;
pub mod trace;
pub mod truth;

mod checks;
mod net;
mod workload;
mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use stats::{FaultCounts, WorkCounts};

/// A deliberately broken variant, to prove the oracles catch it (negative controls). Each is
/// implemented in the simulator around the unmodified machine, except [`Sabotage::WallClockLww`]
/// which uses the machine's test-only stamping hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// The first region's outgoing stream leaves out its third write and numbers the rest of
    /// the run as if it had not existed, so receivers see no gap (a sender that skips a
    /// sequence number; the receivers' gap check cannot notice).
    SkipSeq,
    /// Every receiver acknowledges a batch as soon as it has applied it in memory, before its
    /// persist completes (an ack sent before the durable apply).
    AckBeforeDurable,
    /// Local writes are stamped with the raw wall clock: plain wall-clock last-write-wins,
    /// without the HLC and the per-key causality rule.
    WallClockLww,
    /// Every region truncates its log up to what it has durably applied itself, without
    /// waiting for the others (the machine's test-only hook): a peer that lags asks for
    /// writes no log holds any more.
    TruncateUnstable,
    /// Every region installs a snapshot at the *join* of its chunks' vectors instead of their
    /// meet (the machine's test-only hook): when chunks reflect different vectors (a transfer
    /// spanning writes elsewhere, or a change of source), the applied vector claims writes
    /// some keys never got, and the catch-up skips them.
    InstallAtHigh,
    /// Every region collects a tombstone once it is durable there, as collection after a
    /// grace period would, instead of once it is causally stable (the machine's test-only
    /// hook): a write concurrent with the delete that arrives after the collection is
    /// resolved without it.
    CollectUnstable,
    /// Every region answers a read above `one` that too few regions answered in time from
    /// the answers it has (at worst its own state), as a read that silently falls back to a
    /// local one would (the machine's test-only hook). Needs [`RunOptions::quorum_reads`].
    ShortReads,
}

impl Sabotage {
    /// Every variant.
    pub const ALL: [Sabotage; 7] = [
        Sabotage::SkipSeq,
        Sabotage::AckBeforeDurable,
        Sabotage::WallClockLww,
        Sabotage::TruncateUnstable,
        Sabotage::InstallAtHigh,
        Sabotage::CollectUnstable,
        Sabotage::ShortReads,
    ];

    /// The name used in `MERIDIAN_SIM_SABOTAGE`.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::SkipSeq => "skip-seq",
            Sabotage::AckBeforeDurable => "ack-before-durable",
            Sabotage::WallClockLww => "wall-clock-lww",
            Sabotage::TruncateUnstable => "truncate-unstable",
            Sabotage::InstallAtHigh => "install-at-high",
            Sabotage::CollectUnstable => "collect-unstable",
            Sabotage::ShortReads => "short-reads",
        }
    }

    /// The variant named `name`.
    pub fn from_name(name: &str) -> Option<Sabotage> {
        Sabotage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A configuration change rolled out region by region during the workload: each region in
/// turn is restarted with the new configuration (docs/config.md, "Changing tables and
/// resolvers"), while clients keep writing everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Table `new` (last-write-wins) is added. Clients write it only where it is configured;
    /// regions that lack it log its writes without applying them until they restart with it.
    AddTable,
    /// Table `ctr`'s resolver goes from `counter@1` to `counter@2` (same semantics, new
    /// version). Regions still at version 1 hold back the upgraded regions' writes until they
    /// upgrade; upgraded regions apply the older version's writes.
    UpgradeResolver,
}

/// How to run a seed.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// A broken variant to run instead of the real protocol.
    pub sabotage: Option<Sabotage>,
    /// Check the invariants after every step (otherwise only the final oracles run).
    pub step_checks: bool,
    /// Force a permanent loss in this seed, correlated with a crash of every other region
    /// (`Some(true)`), forbid one (`Some(false)`), or let the seed decide (`None`).
    pub doom: Option<bool>,
    /// Keep a readable trace and print its tail on failure.
    pub verbose: bool,
    /// Print every trace line as it happens.
    pub echo: bool,
    /// Check that a read-modify-write's context covers only writes its client could have
    /// seen (`dirty-context`). **Off by default while the finding is open** (docs/testing.md,
    /// "What it found"): reads serve state that is not durable yet, and a crash lets a region
    /// give the lost write's sequence number to another write, which an old context then
    /// supersedes unseen (seed 147). On by default since reads wait for the region's own writes
    /// to be durable; since then reads are served from the newest durable state (`Replica::read`).
    pub check_dirty_context: bool,
    /// Also inject faults the protocol is not designed for (soak/diagnosis only): frames lost
    /// silently inside a live connection, hellos overtaken by later frames, hellos refused
    /// by the send queue. Off in CI: see docs/testing.md for what they do.
    pub beyond_contract: bool,
    /// A configuration change to roll out during the workload (alarms about the mismatch it
    /// causes meanwhile are expected, not failures).
    pub rollout: Option<Rollout>,
    /// The snapshot bootstrap's faults: a finite log retention bound (in half the seeds, on
    /// one region or on all), disk losses (in about a third), and crashes and cuts aimed at
    /// transfers under way. **Off by default while the findings they show are open**
    /// (docs/testing.md, "What it found"): an install the disk refuses, the core's own
    /// assertions failing after an install, regions that bootstrap from each other for ever,
    /// and a region catching up for ever to writes of a source lost for good (the
    /// `snapshot_seed_*` tests); `MERIDIAN_SIM_SNAPSHOTS=1` turns them on for `fuzz` and
    /// `replay`.
    pub snapshot_faults: bool,
    /// Clients also read at `read=quorum` and `read=all` (a stream of draws of their own),
    /// checked by the `quorum-read` oracle: a read at `quorum` sees every write acknowledged
    /// at `quorum` or `all` before it was issued, and a read at `all` every acknowledged write
    /// (R + W > N), except writes acknowledged before a disk was lost. Off by default so that
    /// the seeds pinned before quorum reads existed keep their schedules; on in `fuzz`
    /// (`MERIDIAN_SIM_QUORUM=0` turns it off there).
    pub quorum_reads: bool,
    /// Anti-entropy rounds every 2 s at every region. Any `Alarm::Divergence` then fails the
    /// seed (`alarm`): with every component correct, anti-entropy must find nothing, whatever
    /// is in flight. Off by default so the seeds pinned before it existed keep their
    /// trajectories (a round's frames change the schedule); on in `fuzz` and `replay`
    /// (`MERIDIAN_SIM_ANTI_ENTROPY=0` turns it off there); the
    /// `anti_entropy_finds_no_divergence` test runs it too.
    pub anti_entropy: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            sabotage: None,
            step_checks: true,
            doom: None,
            verbose: false,
            echo: false,
            check_dirty_context: true,
            beyond_contract: false,
            rollout: None,
            snapshot_faults: false,
            quorum_reads: false,
            anti_entropy: false,
        }
    }
}

/// Why a seed failed: which oracle, what it saw, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The oracle's name (e.g. `acked-write-lost`, `convergence`, `gap`).
    pub oracle: &'static str,
    /// What it saw, with the regions, dots and values involved.
    pub detail: String,
    /// Virtual time of the failure, ms.
    pub at_ms: u64,
}

/// The result of one simulated run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// `Ok` when every oracle held.
    pub result: Result<(), Failure>,
    /// Hash of the full event trace (equal for two runs of one seed).
    pub trace_hash: [u8; 32],
    /// Faults injected.
    pub faults: FaultCounts,
    /// Workload and machine figures.
    pub work: WorkCounts,
    /// Virtual time simulated, ms.
    pub virtual_ms: u64,
    /// Readable trace tail (verbose runs only).
    pub tail: Vec<String>,
}

/// Runs `seed` once.
pub fn simulate(seed: u64, opts: &RunOptions) -> Outcome {
    let run = catch_unwind(AssertUnwindSafe(|| {
        world::World::new(seed, opts.clone()).run()
    }));
    match run {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Outcome {
                seed,
                result: Err(Failure {
                    oracle: "panic",
                    detail: what,
                    at_ms: 0,
                }),
                trace_hash: [0; 32],
                faults: FaultCounts::default(),
                work: WorkCounts::default(),
                virtual_ms: 0,
                tail: Vec::new(),
            }
        }
    }
}

/// Runs `seed` twice and checks both runs hash to the same trace (the determinism
/// self-check); returns the first run's outcome, failed with `determinism` if they differ.
pub fn run_seed(seed: u64, opts: &RunOptions) -> Outcome {
    let mut first = simulate(seed, opts);
    let second = simulate(seed, opts);
    let same = first.trace_hash == second.trace_hash && first.result == second.result;
    if !same && first.result.is_ok() {
        first.result = Err(Failure {
            oracle: "determinism",
            detail: format!(
                "two runs of seed {seed} differ: traces {} and {}, results {:?} and {:?}",
                hex(&first.trace_hash),
                hex(&second.trace_hash),
                first.result,
                second.result
            ),
            at_ms: 0,
        });
    }
    first
}

/// The command that replays `seed` run with `opts` (its sabotage and snapshot faults) with a
/// readable trace.
pub fn replay_command(seed: u64, opts: &RunOptions) -> String {
    let sabotage = opts
        .sabotage
        .map(|s| format!(" MERIDIAN_SIM_SABOTAGE={}", s.name()))
        .unwrap_or_default();
    let snapshots = if opts.snapshot_faults {
        " MERIDIAN_SIM_SNAPSHOTS=1"
    } else {
        ""
    };
    let quorum = if opts.quorum_reads {
        ""
    } else {
        " MERIDIAN_SIM_QUORUM=0"
    };
    let aae = if opts.anti_entropy {
        ""
    } else {
        " MERIDIAN_SIM_ANTI_ENTROPY=0"
    };
    format!(
        "MERIDIAN_SIM_SEED={seed}{sabotage}{snapshots}{quorum}{aae} cargo test -p meridian-tests --test sim -- replay --nocapture"
    )
}

/// Lower-case hex of a hash, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
