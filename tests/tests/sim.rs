//! The deterministic simulator's tests (docs/testing.md, "Tier 2"): a CI fuzz run within a
//! time budget, proof that every fault fires, the regression seeds, determinism, the negative
//! controls, and `replay` for one seed.
//!
//! Environment:
//! - `MERIDIAN_SIM_SECONDS` — budget of the `fuzz` test (default 120 s);
//! - `MERIDIAN_SIM_SEEDS` — run exactly this many seeds instead of a time budget;
//! - `MERIDIAN_SIM_SEED_START` — first seed of `fuzz` (default 0);
//! - `MERIDIAN_SIM_SEED` — the seed `replay` runs (default: the first regression seed);
//! - `MERIDIAN_SIM_SABOTAGE` — a negative control for `replay` (`skip-seq`,
//!   `ack-before-durable`, `wall-clock-lww`, `truncate-unstable`, `install-at-high`,
//!   `collect-unstable`);
//! - `MERIDIAN_SIM_TRACE=all` — `replay` prints every event as it happens;
//! - `MERIDIAN_SIM_BEYOND_CONTRACT=1` — `fuzz` and `replay` also inject faults the protocol is
//!   not designed for (docs/testing.md says which, and what happens);
//! - `MERIDIAN_SIM_DIRTY_CONTEXT=1` — `fuzz` and `replay` also check the `dirty-context` oracle
//!   of the open finding (docs/testing.md, "What it found");
//! - `MERIDIAN_SIM_ANTI_ENTROPY=0` — `fuzz` and `replay` run without anti-entropy (by default
//!   every region runs a round every 2 s, and any divergence it reports fails the seed);
//! - `MERIDIAN_SIM_QUORUM=0` — `fuzz` and `replay` run without the clients' quorum reads;
//! - `MERIDIAN_SIM_SNAPSHOTS=1` — `fuzz` and `replay` also inject the snapshot bootstrap's
//!   faults (finite retention, disk loss, faults aimed at transfers), off by default while
//!   the findings they show are open (the `#[ignore]`d `snapshot_seed_*` tests).

use std::time::{Duration, Instant};

use meridian_tests::sim::{
    FaultCounts, Outcome, Rollout, RunOptions, Sabotage, WorkCounts, hex, replay_command, run_seed,
    simulate,
};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Panics with the failure, its replay command and (for verbose runs) the trace tail.
fn expect_ok(o: &Outcome, opts: &RunOptions) {
    if let Err(f) = &o.result {
        for line in &o.tail {
            eprintln!("{line}");
        }
        panic!(
            "seed {} failed oracle `{}` at {} ms: {}\nreplay: {}",
            o.seed,
            f.oracle,
            f.at_ms,
            f.detail,
            replay_command(o.seed, opts)
        );
    }
}

/// Seeds of tests/regressions.txt: one per line, `#` starts a comment.
fn regression_seeds() -> Vec<u64> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/regressions.txt");
    let text = std::fs::read_to_string(path).expect("tests/regressions.txt is readable");
    text.lines()
        .filter_map(|l| l.split('#').next())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("bad seed line {l:?} in {path}"))
        })
        .collect()
}

fn fuzz_options() -> RunOptions {
    let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    RunOptions {
        beyond_contract: on("MERIDIAN_SIM_BEYOND_CONTRACT"),
        snapshot_faults: on("MERIDIAN_SIM_SNAPSHOTS"),
        quorum_reads: std::env::var("MERIDIAN_SIM_QUORUM").map_or(true, |v| v != "0"),
        anti_entropy: std::env::var("MERIDIAN_SIM_ANTI_ENTROPY").map_or(true, |v| v != "0"),
        ..RunOptions::default()
    }
}

/// Options with the clients' quorum reads on.
fn with_quorum_reads() -> RunOptions {
    RunOptions {
        quorum_reads: true,
        ..RunOptions::default()
    }
}

/// Quorum reads are made, answered, refused for want of regions and repair keys, in seeds
/// that pass every oracle (`quorum-read` among them: a read at `quorum` sees every write
/// acknowledged at `quorum`+ before it, a read at `all` every acknowledged write).
#[test]
fn quorum_reads_fire() {
    let mut w = WorkCounts::default();
    for seed in 0..8 {
        let o = run_seed(seed, &with_quorum_reads());
        expect_ok(&o, &with_quorum_reads());
        w += &o.work;
    }
    println!("work: {w}");
    let fired = [
        ("quorum reads answered", w.quorum_reads),
        ("quorum reads without enough regions", w.quorum_reads_failed),
        ("read repairs", w.read_repairs),
        ("acks at quorum", w.acked[2]),
    ];
    assert_fired(&fired, "seeds 0..8 with quorum reads");
}

/// A read above `one` that answers from the regions it has when too few answer in time (at
/// worst its own state), as a read silently downgraded to a local one would: caught by the
/// `quorum-read` oracle, when a partition keeps the reader from every region holding a write
/// acknowledged at `quorum`.
#[test]
fn negative_control_short_reads() {
    let s = Sabotage::ShortReads;
    let opts = RunOptions {
        quorum_reads: true,
        ..sabotaged(s, true, None)
    };
    let (_, oracle) = caught(s, opts, 40);
    assert_eq!(oracle, "quorum-read");
}

/// As many seeds as fit in the budget (each run twice: the determinism self-check).
#[test]
fn fuzz() {
    let start = env_u64("MERIDIAN_SIM_SEED_START").unwrap_or(0);
    let count = env_u64("MERIDIAN_SIM_SEEDS");
    let budget = Duration::from_secs(env_u64("MERIDIAN_SIM_SECONDS").unwrap_or(120));
    let began = Instant::now();
    let (mut faults, mut work) = (FaultCounts::default(), WorkCounts::default());
    let (mut seeds, mut virtual_ms) = (0u64, 0u64);
    loop {
        let done = match count {
            Some(n) => seeds >= n,
            None => began.elapsed() >= budget,
        };
        if done {
            break;
        }
        let seed = start + seeds;
        let o = run_seed(seed, &fuzz_options());
        expect_ok(&o, &fuzz_options());
        faults += &o.faults;
        work += &o.work;
        virtual_ms += o.virtual_ms;
        seeds += 1;
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "fuzz: seeds {start}..{} ({seeds} seeds, each run twice) in {secs:.1} s: {:.1} seeds/min, \
         {:.0} virtual s simulated",
        start + seeds,
        seeds as f64 * 60.0 / secs,
        virtual_ms as f64 / 1000.0
    );
    println!("fuzz faults: {faults}");
    println!("fuzz work: {work}");
    assert!(seeds > 0, "the budget allowed no seed at all");
}

/// Seeds of each rolling configuration change: every fault of the seed still fires (but a
/// permanent loss, which would leave a region with the old configuration for good).
const ROLLOUT_SEEDS: u64 = 16;

/// Runs [`ROLLOUT_SEEDS`] seeds with `rollout`; every one must converge. Returns the work.
fn rollout_runs(rollout: Rollout) -> WorkCounts {
    let mut w = WorkCounts::default();
    let opts = RunOptions {
        rollout: Some(rollout),
        doom: Some(false),
        ..RunOptions::default()
    };
    for seed in 0..ROLLOUT_SEEDS {
        let o = run_seed(seed, &opts);
        if let Err(f) = &o.result {
            panic!(
                "rollout {rollout:?}, seed {seed} failed oracle `{}` at {} ms: {}",
                f.oracle, f.at_ms, f.detail
            );
        }
        w += &o.work;
    }
    println!("rollout {rollout:?} work: {w}");
    w
}

/// Issue 11, item 6: a table added region by region (each region restarted with it in turn
/// while clients write it where it exists) converges: what a region logged without applying
/// while it lacked the table is applied when it starts with it. Before, those writes were never
/// applied and the seeds failed `convergence`.
#[test]
fn a_table_added_region_by_region_converges() {
    let w = rollout_runs(Rollout::AddTable);
    assert!(w.quarantined > 0, "writes were held back meanwhile: {w}");
    assert!(w.released > 0, "and applied at a later start: {w}");
}

/// Issue 11, item 6: a resolver upgraded region by region (`counter@1` → `counter@2`) converges:
/// upgraded regions apply the older version's writes, and regions still at the old version
/// apply the upgraded regions' writes when they start with the upgrade.
#[test]
fn a_resolver_upgraded_region_by_region_converges() {
    let w = rollout_runs(Rollout::UpgradeResolver);
    assert!(w.quarantined > 0, "writes were held back meanwhile: {w}");
    assert!(w.released > 0, "and applied at a later start: {w}");
}

/// Every kind of fault, and every path of the protocol they should provoke, happens in a
/// fixed handful of seeds: a fault that silently stopped firing would make every other test
/// here pass for nothing.
#[test]
fn faults_fire() {
    let (mut f, mut w) = (FaultCounts::default(), WorkCounts::default());
    for seed in 0..6 {
        let o = run_seed(seed, &RunOptions::default());
        expect_ok(&o, &RunOptions::default());
        f += &o.faults;
        w += &o.work;
    }
    println!("faults: {f}\nwork: {w}");
    let fired = [
        ("symmetric partitions", f.partitions_symmetric),
        ("one-way partitions", f.partitions_one_way),
        ("bridge partitions", f.partitions_bridge),
        ("crashes", f.crashes),
        ("restarts", f.restarts),
        ("permanent losses", f.permanent_losses),
        ("connection resets", f.conn_resets),
        ("idle timeouts", f.idle_timeouts),
        ("duplicates", f.duplicates),
        ("reorders", f.reorders),
        ("send failures", f.send_failures),
        ("frames lost with a connection", f.frames_lost),
        ("frames held by a partition", f.frames_held),
        ("clock jumps forward", f.clock_jumps_forward),
        ("clock jumps backward", f.clock_jumps_backward),
        ("skew beyond max_clock_offset", f.skew_beyond_bound),
        ("slow fsyncs", f.slow_fsyncs),
        ("checkpoints", f.checkpoints),
        ("replays after a crash", f.replays),
        ("log entries truncated", f.truncated),
        ("acks at local", w.acked[0]),
        ("acks at one", w.acked[1]),
        ("acks at quorum", w.acked[2]),
        ("acks at all", w.acked[3]),
        ("durability timeouts", w.timed_out),
        ("context-ahead refusals", w.refused_context),
        ("sibling-cap refusals", w.refused_siblings),
        ("paced writes", w.paced),
        ("abandoned requests", w.abandoned),
        ("conflicts", w.conflicts),
        ("resyncs", w.resyncs),
        ("relayed writes", w.relayed),
        ("duplicates dropped", w.duplicates_dropped),
        ("log reads", w.log_reads),
    ];
    assert_fired(&fired, "seeds 0..6");
}

/// Fails naming every count of `fired` that is zero over `seeds`.
fn assert_fired(fired: &[(&str, u64)], seeds: &str) {
    let silent: Vec<&str> = fired
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(what, _)| *what)
        .collect();
    assert!(silent.is_empty(), "never happened in {seeds}: {silent:?}");
}

/// Seeds that once failed, kept after their fix.
#[test]
fn regressions() {
    for seed in regression_seeds() {
        expect_ok(
            &run_seed(seed, &RunOptions::default()),
            &RunOptions::default(),
        );
    }
}

/// One seed, twice, gives one trace; other seeds give other traces; a verbose run (which
/// formats a readable log) does not change what happens.
#[test]
fn determinism() {
    let a = simulate(11, &RunOptions::default());
    let b = simulate(11, &RunOptions::default());
    let verbose = simulate(
        11,
        &RunOptions {
            verbose: true,
            ..RunOptions::default()
        },
    );
    let other = simulate(12, &RunOptions::default());
    assert_eq!(hex(&a.trace_hash), hex(&b.trace_hash));
    assert_eq!(hex(&a.trace_hash), hex(&verbose.trace_hash));
    assert_ne!(hex(&a.trace_hash), hex(&other.trace_hash));
    assert_eq!((a.faults, a.work), (b.faults, b.work));
    assert!(
        !verbose.tail.is_empty(),
        "a verbose run keeps a readable trace"
    );
}

/// Replays `MERIDIAN_SIM_SEED` (default: the first regression seed) with a readable trace,
/// and fails like the seed does.
#[test]
fn replay() {
    let seed = env_u64("MERIDIAN_SIM_SEED")
        .or_else(|| regression_seeds().first().copied())
        .unwrap_or(0);
    let sabotage = std::env::var("MERIDIAN_SIM_SABOTAGE").ok().map(|s| {
        Sabotage::from_name(&s).unwrap_or_else(|| panic!("unknown MERIDIAN_SIM_SABOTAGE {s:?}"))
    });
    let echo = std::env::var("MERIDIAN_SIM_TRACE").is_ok_and(|v| v == "all");
    let opts = RunOptions {
        sabotage,
        verbose: true,
        echo,
        ..fuzz_options()
    };
    let o = run_seed(seed, &opts);
    println!(
        "seed {seed}: {:.1} virtual s, trace {}\nfaults: {}\nwork: {}",
        o.virtual_ms as f64 / 1000.0,
        hex(&o.trace_hash),
        o.faults,
        o.work
    );
    expect_ok(&o, &opts);
}

/// Runs seeds 0.. with `sabotage` until one fails; returns (seed, oracle), or panics when
/// `within` seeds all pass (the oracles missed the broken variant).
fn caught(sabotage: Sabotage, opts: RunOptions, within: u64) -> (u64, &'static str) {
    for seed in 0..within {
        let o = simulate(seed, &opts);
        if let Err(f) = o.result {
            println!(
                "{}{}: caught by seed {seed} (#{} tried), oracle `{}`: {}",
                sabotage.name(),
                if opts.step_checks {
                    ""
                } else {
                    " (final oracles only)"
                },
                seed + 1,
                f.oracle,
                f.detail
            );
            return (seed, f.oracle);
        }
    }
    panic!(
        "negative control {} passed {within} seeds: the oracles cannot see it",
        sabotage.name()
    );
}

fn sabotaged(sabotage: Sabotage, step_checks: bool, doom: Option<bool>) -> RunOptions {
    RunOptions {
        sabotage: Some(sabotage),
        step_checks,
        doom,
        ..RunOptions::default()
    }
}

/// A sender that skips a sequence number (and numbers the rest as if it had not): the
/// receivers apply a different write under the skipped dot, which the per-step identity and
/// gap checks see at once, and the final oracles see as divergence.
#[test]
fn negative_control_skip_seq() {
    let (_, oracle) = caught(
        Sabotage::SkipSeq,
        sabotaged(Sabotage::SkipSeq, true, None),
        3,
    );
    // (`alarm`: the receiver refused the renumbered write as claiming to supersede itself,
    // in the same step, before the step checks looked.)
    assert!(
        ["write-identity", "gap", "alarm"].contains(&oracle),
        "{oracle}"
    );
    let (_, oracle) = caught(
        Sabotage::SkipSeq,
        sabotaged(Sabotage::SkipSeq, false, None),
        3,
    );
    assert!(
        [
            "convergence",
            "acked-write-lost",
            "liveness",
            "write-identity"
        ]
        .contains(&oracle),
        "{oracle}"
    );
}

/// Receivers that ack before their persist completes. The wire check sees an ack beyond the
/// disk at once. With only the final oracles, in seeds that lose a region for good (with a
/// correlated crash of the others): the survivors diverge (a sender trusts the early ack and
/// never resends what the acker then lost in a crash), and, once the early acker's fsync is
/// slower than its ack's trip, a write acknowledged at `one` is lost with its origin.
#[test]
fn negative_control_ack_before_durable() {
    let s = Sabotage::AckBeforeDurable;
    let (_, oracle) = caught(s, sabotaged(s, true, None), 3);
    assert!(["wire-ack", "ack-durability"].contains(&oracle), "{oracle}");
    // One pass: the first failure of any final oracle, then on to a lost write.
    let (mut first, mut lost) = (None, None);
    for seed in 0..30 {
        if let Err(f) = simulate(seed, &sabotaged(s, false, Some(true))).result {
            println!(
                "ack-before-durable (final oracles only): seed {seed}: `{}`: {}",
                f.oracle, f.detail
            );
            first.get_or_insert((seed, f.oracle));
            if f.oracle == "acked-write-lost" {
                lost = Some(seed);
                break;
            }
        }
    }
    let (seed, oracle) = first.expect("the final oracles missed early acks in 30 seeds");
    assert!(seed < 10, "first caught only by seed {seed}");
    assert!(
        ["acked-write-lost", "convergence"].contains(&oracle),
        "{oracle}"
    );
    assert!(lost.is_some(), "no acknowledged write was lost in 30 seeds");
}

/// Plain wall-clock last-write-wins (no HLC, no per-key causality rule) under clock skew: a
/// causally later write stamped below what it supersedes. The per-step stamp check sees it at
/// the first such write; the final oracles see last-write-wins keep the wrong survivor.
#[test]
fn negative_control_wall_clock_lww() {
    let s = Sabotage::WallClockLww;
    let (_, oracle) = caught(s, sabotaged(s, true, None), 5);
    assert_eq!(oracle, "stamp-rule");
    // Wall-clock stamps break the join-semilattice, so a replay in another order can also
    // rebuild other states than memory holds (`recovery`): seen first in seed 1 once log
    // truncation changed the schedules.
    let (_, oracle) = caught(s, sabotaged(s, false, None), 10);
    assert!(
        [
            "lww-winner",
            "acked-write-outranked",
            "convergence",
            "causality",
            "recovery"
        ]
        .contains(&oracle),
        "{oracle}"
    );
}

/// Truncation without causal stability: each region drops its log up to what it has itself,
/// not what every region has. A region that lags (a partition, a crash) then asks for writes
/// no log holds: the per-step oracles see the "needs snapshot" alarm where no fault calls for
/// one (no retention bound, no disk loss). The final oracles alone no longer see it: since
/// the snapshot bootstrap, a region told it needs a snapshot fetches one and converges, so
/// unstable truncation costs transfers instead of data (what the step oracle is for).
#[test]
fn negative_control_truncate_unstable() {
    let s = Sabotage::TruncateUnstable;
    let (_, oracle) = caught(s, sabotaged(s, true, None), 5);
    assert!(["alarm", "disk"].contains(&oracle), "{oracle}");
}

/// Tombstone collection on a timer instead of causal stability: a region drops a delete once
/// it is durable there. A write concurrent with the delete that arrives afterwards is then
/// resolved without it (last-write-wins keeps the write where the delete would have won, a
/// multi-value key loses the delete sibling early), and the regions disagree. Caught by the
/// final oracles (convergence with stable tombstones set aside, the last-write-wins winner,
/// or a key's context), or by a step oracle.
#[test]
fn negative_control_collect_unstable() {
    let s = Sabotage::CollectUnstable;
    let (_, oracle) = caught(s, sabotaged(s, false, None), 60);
    assert!(
        [
            "convergence",
            "lww-winner",
            "mv-siblings",
            "key-context",
            "acked-write-outranked",
            "recovery",
            "liveness"
        ]
        .contains(&oracle),
        "{oracle}"
    );
}

/// Options with the snapshot bootstrap's faults on.
fn with_snapshots() -> RunOptions {
    RunOptions {
        snapshot_faults: true,
        ..RunOptions::default()
    }
}

/// Seeds of the snapshot tests below.
const SNAPSHOT_SEEDS: u64 = 40;

/// The snapshot bootstrap's faults fire, and each path they should provoke happens, in seeds
/// that pass every oracle: bootstraps driven by the retention bound and by disk losses,
/// many-chunk transfers, installs, crashes of the receiver and cuts from the source in the
/// middle of a transfer, acknowledged `local` writes lost with a disk, and clients refused
/// while their region bootstraps. Each seed runs twice (the determinism self-check). Seeds
/// that fail (the open findings, see the `snapshot_seed_*` tests) are listed, not asserted.
#[test]
fn snapshot_faults_fire() {
    let (mut f, mut w) = (FaultCounts::default(), WorkCounts::default());
    for seed in 0..SNAPSHOT_SEEDS {
        let o = run_seed(seed, &with_snapshots());
        expect_ok(&o, &with_snapshots());
        f += &o.faults;
        w += &o.work;
    }
    println!("snapshot faults: {f}\nwork: {w}");
    let fired = [
        ("disk losses", f.disk_losses),
        (
            "acknowledged writes lost with a disk",
            f.writes_lost_with_disk,
        ),
        ("log entries truncated", f.truncated),
        ("crashes mid-transfer", f.crashes_mid_transfer),
        ("cuts mid-transfer", f.cuts_mid_transfer),
        ("snapshots started", w.snapshots_started),
        ("snapshot chunks", w.snapshot_chunks),
        ("snapshots installed", w.snapshots_installed),
        ("refused while bootstrapping", w.bootstrapping),
    ];
    assert_fired(&fired, &format!("seeds 0..{SNAPSHOT_SEEDS}"));
    assert!(
        w.snapshot_chunks > w.snapshots_installed,
        "transfers take several chunks: {w}"
    );
}

/// Installs at the *join* of the chunks' vectors: where chunks reflect different vectors,
/// the applied vector jumps past writes some keys never got, and the catch-up skips them.
/// Caught after the step by the `gap` oracle (a counted write not in its key), or at the
/// end as `convergence`, `key-context` or `acked-write-lost`. Only seeds that pass without
/// the sabotage count (the open findings fail some seeds either way).
#[test]
fn negative_control_install_at_high() {
    let s = Sabotage::InstallAtHigh;
    let sabotaged = RunOptions {
        sabotage: Some(s),
        ..with_snapshots()
    };
    let expected = ["gap", "convergence", "key-context", "acked-write-lost"];
    let caught = (0..SNAPSHOT_SEEDS).find_map(|seed| {
        let f = simulate(seed, &sabotaged).result.err()?;
        println!(
            "install-at-high: seed {seed}, oracle `{}`: {}",
            f.oracle, f.detail
        );
        let clean = simulate(seed, &with_snapshots()).result.is_ok();
        (clean && expected.contains(&f.oracle)).then_some((seed, f.oracle))
    });
    let (seed, oracle) =
        caught.expect("the oracles missed installs at the join in every passing seed");
    println!("install-at-high: caught by seed {seed}, oracle `{oracle}`");
}

// Seeds the snapshot faults found bugs with, one test each, fixed in the core (each name
// says what was wrong; `MERIDIAN_SIM_SNAPSHOTS=1 MERIDIAN_SIM_SEED=n` replays one with a
// readable trace). The last one is still open.

/// Runs `seed` with the snapshot faults, failing like [`fuzz`] does.
fn snapshot_seed(seed: u64) {
    expect_ok(&run_seed(seed, &with_snapshots()), &with_snapshots());
}

/// Was `disk`: the install batch refused ("a snapshot install without the transfer's
/// progress"): the transfer was finished in the same step that staged its install, before
/// the install's batch was written.
#[test]
fn snapshot_seed_3_an_install_is_finished_only_once_durable() {
    snapshot_seed(3);
}

/// Was `panic` ("the tail of an origin is a contiguous run"): the install cleared the memory
/// tail before the same step pushed the last chunk's batch into it.
#[test]
fn snapshot_seed_57_the_tail_restarts_after_an_install() {
    snapshot_seed(57);
}

/// Was `panic` ("persisted batches are contiguous per origin"): writes staged before the
/// install, which it covers, were still logged after it.
#[test]
fn snapshot_seed_1_writes_an_install_covers_are_not_logged_after_it() {
    snapshot_seed(1);
}

/// Was `liveness`: every region passed by another's retention bound and bootstrapping, and
/// each refusing to serve while bootstrapping: they asked each other in a ring for ever. Now
/// a region asked by a region that every other refused serves its partial states, bounded
/// above (`SnapshotChunk::upper`).
#[test]
fn snapshot_seed_46_regions_bootstrapping_from_each_other_finish() {
    snapshot_seed(46);
}

/// Was `liveness`: regions catching up from each other's partial snapshots all waited for
/// writes only the origin had, and ignored its "needs snapshot" while their sources were up.
/// Now any answer after a partial chunk starts a new round.
#[test]
fn snapshot_seed_135_answers_after_a_partial_chunk_start_a_new_round() {
    snapshot_seed(135);
}

/// Was `liveness`: a region that finished its catch-up never asked for the writes another
/// region had said it could not serve while the first was catching up from its source.
#[test]
fn snapshot_seed_218_answers_received_while_catching_up_are_acted_on_after() {
    snapshot_seed(218);
}

/// Was `liveness`: a stale "needs snapshot" (its sender's log start recovered older after a
/// restart, so it streams those writes again) started empty rounds for ever.
#[test]
fn snapshot_seed_325_a_stale_answer_starts_one_round_only() {
    snapshot_seed(325);
}

/// Was `convergence`: after a round that did not bring what an answer said was missing, the
/// answer was forgotten and never repeated on the same connection; now it is repeated at most
/// once per heartbeat while the writes are still lacking.
#[test]
fn snapshot_seed_114_a_region_still_lacking_writes_is_told_again() {
    snapshot_seed(114);
}

/// Was `convergence` (seed 377) and `key-context` (376) at one point of the fixes above; kept
/// as regressions. Seed 377's class is still a documented limit (docs/design.md, "Snapshot
/// bootstrap", Limits): writes only a lost source made durable, reflected by its chunks.
#[test]
fn snapshot_seeds_376_and_377_pass() {
    snapshot_seed(376);
    snapshot_seed(377);
}

/// Was `stamp-rule`: a snapshot join dropped a sibling of the receiver that the chunk's
/// writes superseded (or its sender had collected), and a later write there was stamped
/// below it; the clock is now raised to what a join or an install drops.
#[test]
fn snapshot_seed_1321_a_join_raises_the_clock_to_what_it_drops() {
    snapshot_seed(1321);
}

/// Open (2 seeds of 0..1500 with the snapshot faults on): `convergence`, both the documented
/// limit (docs/design.md, "Snapshot bootstrap", Limits): a region's key holds a write of an
/// origin beyond every region's applied vector (seed 925: `a8495c25:111` with every region
/// at 108; seed 1390: `b626af7c:128` with every region at 106), reflected by the chunks of a
/// source that then lost its disk, the only other copy. Why the snapshot faults stay off by
/// default in `fuzz`.
#[test]
#[ignore = "open finding: convergence with disk losses and snapshots"]
fn snapshot_seeds_925_and_1390_open() {
    snapshot_seed(925);
    snapshot_seed(1390);
}

/// Issue 16: anti-entropy every 2 s at every region, under every fault of the simulator,
/// finds no divergence (no `Alarm::Divergence`, no protocol violation): writes in flight,
/// partitions, crashes, replays and tombstone collection are never taken for one. Runs the
/// first 40 seeds (the soak ran 0..360 and, with the snapshot faults, 0..200).
#[test]
fn anti_entropy_finds_no_divergence() {
    let opts = RunOptions {
        anti_entropy: true,
        ..RunOptions::default()
    };
    for seed in 0..40 {
        let o = run_seed(seed, &opts);
        expect_ok(&o, &opts);
    }
}

/// Was `convergence`: a quorum read's repair spread a write that only its origin's log held;
/// the origin was then lost for good, and the repaired region kept the write in a key state
/// no log could deliver to the others. Read repair now spreads only what two logs hold
/// (`Replica::spreadable`).
#[test]
fn quorum_seed_383_read_repair_spreads_only_what_two_logs_hold() {
    expect_ok(&run_seed(383, &with_quorum_reads()), &with_quorum_reads());
}
