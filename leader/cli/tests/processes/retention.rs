//! Issue 13, item 2: storage that can run for years. Three `meridian run` processes over the
//! impairment layer, with a 4 MiB retention bound (`[limits] log_retention_bytes`), 1 MiB log
//! segments and checkpoints, write ten times the bound through 32 keys of 2,000-byte values:
//!
//! 1. all three up, writers at every region, half of it: the log is truncated by causal
//!    stability (every region acknowledges), so every data directory stays near a few
//!    segments however much is written;
//! 2. the third region cut off from both others, writers at the first two, the other half:
//!    the two keep their logs for it until it lacks more than the bound (status shows it
//!    approaching: "… is 2.3 MiB behind; past 4.0 MiB it will need a snapshot"), then
//!    truncate past it and say it needs a snapshot; their data directories stay bounded;
//! 3. the link heals: what the third region applied of the others stops before their logs
//!    start, so it is answered "needs snapshot" (never streamed a run with a gap), bootstraps
//!    from a snapshot and converges.
//!
//! Without truncation each data directory grows with everything written (here 40 MiB of
//! values, more on disk with the records' framing), which [`DIR_BOUND_BYTES`] fails.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, http_client, status};
use leader::status::Status;

const REGIONS: [&str; 3] = ["a", "b", "c"];
/// `[limits] log_retention_bytes`.
const RETENTION_BYTES: u64 = 4 << 20;
const LIMITS: &str = "log_retention_bytes = 4194304
log_segment_bytes = 1048576
checkpoint_bytes = 1048576
log_tail_bytes = 1048576
";
/// Keys every writer overwrites.
const KEYS: u64 = 32;
const VALUE_BYTES: usize = 2_000;
/// Value bytes written in each phase: together ten times the retention bound.
const PHASE_BYTES: u64 = 5 * RETENTION_BYTES;
/// Closed-loop writers per writing region.
const WRITERS_PER_REGION: usize = 3;
/// What a data directory may hold at any moment: the bound, plus the log a checkpoint
/// interval keeps for the replay after a crash and the segment being written (1 MiB each,
/// a record or two past), plus the key table (redb; 32 keys, a few MiB at most with its
/// copy-on-write pages). Everything written is ten times the bound.
const DIR_BOUND_BYTES: u64 = RETENTION_BYTES + 8 * (1 << 20);
const START_BOUND: Duration = Duration::from_secs(30);
const PHASE_BOUND: Duration = Duration::from_secs(240);
const ANSWER_BOUND: Duration = Duration::from_secs(30);
const SAMPLE: Duration = Duration::from_millis(100);

/// Bytes of the files under `dir` (0 while it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Writes `bytes` of values through `writers` closed-loop writers per region of `at`; every
/// write must be acknowledged. Returns the writes made.
async fn write_phase(cluster: &Cluster, at: &[usize], bytes: u64, seed: u64) -> u64 {
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for &i in at {
        for w in 0..WRITERS_PER_REGION {
            let api = cluster.regions[i].api.clone();
            let written = Arc::clone(&written);
            tasks.spawn(async move {
                let client = http_client();
                let mut n = 0u64;
                while written.fetch_add(VALUE_BYTES as u64, Ordering::Relaxed) < bytes {
                    let key = (seed + n * 7 + w as u64) % KEYS;
                    let mut value = format!("{api} {w} {n} ").into_bytes();
                    value.resize(VALUE_BYTES, b'x');
                    let resp = client
                        .put(format!("{api}/v1/kv/default/k{key}"))
                        .body(value)
                        .send()
                        .await;
                    let code = resp.as_ref().map(reqwest::Response::status);
                    assert!(
                        matches!(code, Ok(c) if c.is_success()),
                        "a write at {api} was not acknowledged: {code:?}"
                    );
                    n += 1;
                }
                n
            });
        }
    }
    let mut writes = 0;
    while let Some(n) = tasks.join_next().await {
        writes += n.expect("a writer panicked");
    }
    writes
}

/// Largest data directory of each region seen while `phase` runs, sampled every [`SAMPLE`].
async fn sampled<T, F: std::future::Future<Output = T>>(
    cluster: &Cluster,
    phase: F,
) -> (T, [u64; 3]) {
    let dirs: Vec<_> = (0..REGIONS.len()).map(|i| cluster.data_dir(i)).collect();
    let mut max = [0u64; 3];
    tokio::pin!(phase);
    let deadline = Instant::now() + PHASE_BOUND;
    loop {
        tokio::select! {
            done = &mut phase => return (done, max),
            () = tokio::time::sleep(SAMPLE) => {
                for (m, d) in max.iter_mut().zip(&dirs) {
                    *m = (*m).max(dir_bytes(d));
                }
                assert!(Instant::now() < deadline, "a phase took longer than {PHASE_BOUND:?}");
            }
        }
    }
}

/// What region `i` says of peer `peer`: (bytes behind, needs snapshot, note).
fn peer_of(st: &Status, peer: &str) -> (u64, bool, Option<String>) {
    let p = st
        .peers
        .iter()
        .find(|p| p.region == peer)
        .expect("the peer is in the status");
    (p.log_behind_bytes, p.needs_snapshot, p.log_note.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_stay_bounded_and_a_region_past_the_retention_bound_needs_a_snapshot() {
    let mut cluster = Cluster::start_simulated_with_limits(&REGIONS, LIMITS);
    let client = http_client();
    cluster.wait_up(&client, START_BOUND).await;
    let started = Instant::now();

    // 1. Everyone up: causal stability alone keeps the logs short.
    let (writes_up, max_up) =
        sampled(&cluster, write_phase(&cluster, &[0, 1, 2], PHASE_BYTES, 1)).await;
    let took_up = started.elapsed();

    // 2. c cut off: a and b hold their logs for it until the bound, then pass it.
    cluster.block_link(&client, 2, 0).await;
    cluster.block_link(&client, 2, 1).await;
    let watch = async {
        // Meanwhile, a's status: c approaching the bound, then past it.
        let mut approaching = None;
        let writes = write_phase(&cluster, &[0, 1], PHASE_BYTES, 2);
        tokio::pin!(writes);
        loop {
            tokio::select! {
                n = &mut writes => return (n, approaching),
                () = tokio::time::sleep(SAMPLE) => {
                    if let Ok(st) = status(&client, &cluster.regions[0].api).await {
                        let (behind, past, note) = peer_of(&st, "c");
                        if !past && behind > RETENTION_BYTES / 2 {
                            approaching = Some((behind, note));
                        }
                    }
                }
            }
        }
    };
    let ((writes_cut, approaching), max_cut) = sampled(&cluster, watch).await;
    let took = started.elapsed();
    let (behind, note) = approaching.expect("a's status showed c approaching the bound first");
    assert!(behind <= RETENTION_BYTES + (64 << 10), "{behind}");
    let note = note.expect("a note while c is behind");
    assert!(
        note.starts_with("c is ") && note.ends_with("behind; past 4.0 MiB it will need a snapshot"),
        "{note}"
    );
    for i in [0, 1] {
        let st = status(&client, &cluster.regions[i].api).await.unwrap();
        let (_, past, note) = peer_of(&st, "c");
        assert!(past, "{} truncated past c: {note:?}", REGIONS[i]);
        assert!(
            note.as_deref()
                .is_some_and(|n| n.starts_with("c needs a snapshot")),
            "{note:?}"
        );
    }

    // Every data directory stayed bounded all along.
    let max: Vec<u64> = max_up
        .iter()
        .zip(&max_cut)
        .map(|(a, b)| *a.max(b))
        .collect();
    let finals: Vec<u64> = (0..3).map(|i| dir_bytes(&cluster.data_dir(i))).collect();
    let written = (writes_up + writes_cut) * VALUE_BYTES as u64;
    println!(
        "retention soak: {writes_up} writes with all up ({took_up:?}), {writes_cut} with c cut off \
         ({:?}); {written} value bytes = {:.1}× the bound; largest data directories (a, b, c) \
         {max:?} bytes (all up: {max_up:?}; c cut off: {max_cut:?}); at the end {finals:?}; \
         load average {}",
        took - took_up,
        written as f64 / RETENTION_BYTES as f64,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    assert!(written >= 10 * RETENTION_BYTES, "{written}");
    for (i, m) in max.iter().enumerate() {
        assert!(
            *m <= DIR_BOUND_BYTES,
            "the data directory of {} reached {m} bytes (bound {DIR_BOUND_BYTES}; {written} written)\n{}",
            REGIONS[i],
            cluster.log_tails()
        );
    }

    // 3. The link heals: c is told it needs a snapshot (what it applied of a and b stops
    // before their logs start, so no run without a gap could reach it), bootstraps from one
    // (issue 13, item 3) and converges.
    let st_c = status(&client, &cluster.regions[2].api).await.unwrap();
    for i in [0, 1] {
        let st = status(&client, &cluster.regions[i].api).await.unwrap();
        let origin = REGIONS[i];
        let start = st
            .log
            .start
            .iter()
            .find(|s| s.region == origin)
            .unwrap()
            .seq;
        let have = st_c
            .applied
            .iter()
            .find(|a| a.region == origin)
            .map_or(0, |a| a.seq);
        assert!(
            have < start,
            "c applied {origin}'s writes up to {have}, yet {origin}'s log starts after {start}"
        );
    }
    cluster.heal_link(&client, 2, 0).await;
    cluster.heal_link(&client, 2, 1).await;
    let deadline = Instant::now() + ANSWER_BOUND;
    loop {
        let st = status(&client, &cluster.regions[2].api).await.unwrap();
        if st.bootstrap.is_none() && st.counters.snapshots_installed > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c did not bootstrap from a snapshot: {:?} {:?}\n{}",
            st.alarms,
            st.bootstrap,
            cluster.log_tails()
        );
        tokio::time::sleep(SAMPLE).await;
    }
    // c is told by the first peer whose link comes back; a peer whose link comes back after
    // the (small) snapshot is installed has nothing to tell it any more, so which peers tell
    // it is a race of the two reconnections: at least one must.
    let log = cluster.log_of(&cluster.regions[2]);
    let told = ["a", "b"]
        .iter()
        .filter(|peer| log.contains(&format!("alarm=NeedsSnapshot {{ peer: \"{peer}\"")))
        .count();
    assert!(
        told > 0,
        "c was told by no peer that it needs a snapshot: {log}"
    );
    cluster.wait_same_digests(&client).await;
    let stopped = cluster.shutdown().await;
    assert!(
        stopped.values().all(|s| s.is_some_and(|s| s.success())),
        "{stopped:?}"
    );
}
