//! Issue 13, item 3: snapshot bootstrap with real `meridian run` processes over the
//! impairment layer, with an 8 MiB retention bound, 1 MiB segments and checkpoints, and 4 KiB
//! snapshot chunks, so that a region rebuilt on an empty disk can only come back by a
//! snapshot and the transfer takes many chunks:
//!
//! 1. [`a_region_that_lost_its_disk_bootstraps_between_loads`]: writers at all three regions,
//!    every durability; region c is SIGKILLed, its data directory deleted, and it is started
//!    again: it has a new replica id, is told it needs a snapshot, fetches one (serving no
//!    reads meanwhile: `503 bootstrapping`), installs it, catches up, and then holds every
//!    write that was acknowledged as surviving the loss of c (`quorum`, `all`, or `one` at a
//!    or b) — its value or a later one — with the same digest as a and b. The writers idle
//!    during the transfer; [`a_region_that_lost_its_disk_bootstraps_under_load`] is the same
//!    with the writers going on throughout.
//! 2. [`a_snapshot_transfer_resumes_after_the_receiver_is_killed`]: c is killed again halfway
//!    through a transfer (several seconds long: 20 ms of latency towards it) and started on
//!    the same directory: the transfer goes on from the last chunk recorded, not from the
//!    first key, and the sources serve less than twice what a whole transfer takes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, POLL, http_client, status};
use leader::api::{DURABILITY_HEADER, TIMEOUT_HEADER};
use leader::status::Status;

const REGIONS: [&str; 3] = ["a", "b", "c"];
/// The region that loses its disk.
const C: usize = 2;
/// The retention bound must outlast the transfer under the load plus the checkpoint lag of
/// the source (it serves its last checkpoint, and pins its log from there): with 1 MiB of
/// each, every chunk found the source's log truncated past it and the transfer started
/// over, chunk after chunk (see the report in the commit adding this test).
const LIMITS: &str = "log_retention_bytes = 8388608
log_segment_bytes = 1048576
checkpoint_bytes = 1048576
snapshot_chunk_bytes = 4096
";
const START_BOUND: Duration = Duration::from_secs(30);
/// From the restart on an empty directory to serving again.
const BOOTSTRAP_BOUND: Duration = Duration::from_secs(40);
/// Pause of a writer after a refused or failed write (its region is down or bootstrapping).
const WRITER_BACKOFF: Duration = Duration::from_millis(20);

/// A deployment of the three regions, up and replicating.
async fn deployment(client: &reqwest::Client) -> Cluster {
    let mut cluster = Cluster::start_simulated_with_limits(&REGIONS, LIMITS);
    cluster.wait_up(client, START_BOUND).await;
    cluster
}

/// Polls region `i`'s status until `done` holds of it, failing with `what` after `bound`.
async fn wait_status(
    cluster: &Cluster,
    client: &reqwest::Client,
    i: usize,
    bound: Duration,
    what: &str,
    mut done: impl FnMut(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(st) = status(client, &cluster.regions[i].api).await
            && done(&st)
        {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not {what} within {bound:?}\n{}",
            REGIONS[i],
            cluster.log_tails()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// SIGKILLs c, deletes its data directory and starts it again on the empty one.
async fn lose_the_disk_of_c(cluster: &mut Cluster, client: &reqwest::Client) {
    cluster.sigkill(C).await;
    std::fs::remove_dir_all(cluster.data_dir(C)).expect("deleting c's data directory");
    cluster.spawn(C);
    cluster
        .wait_healthy(client, C, Instant::now() + START_BOUND)
        .await;
}

/// `GET` of `key` at `api`: (status code, body).
async fn get(client: &reqwest::Client, api: &str, key: &str) -> (u16, Vec<u8>) {
    get_path(client, api, &format!("/v1/kv/default/{key}")).await
}

/// `GET` of `path` at `api`: (status code, body).
async fn get_path(client: &reqwest::Client, api: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = client
        .get(format!("{api}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} at {api}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.bytes().await.unwrap_or_default().to_vec())
}

/// Asserts that `body` is the JSON of a `503 bootstrapping` with the transfer's progress.
fn assert_bootstrapping(code: u16, body: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    assert_eq!(code, 503, "{json}");
    assert_eq!(json["code"], "bootstrapping", "{json}");
    let progress = json["progress"].as_str().unwrap_or_default();
    assert!(
        progress.starts_with("fetching from ") || progress.contains("keys"),
        "{json}"
    );
    let error = json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("bootstrapped from a snapshot") && error.contains("another region"),
        "{json}"
    );
}

/// The text of region `i`'s log since its last start.
fn log_since_start(cluster: &Cluster, i: usize) -> String {
    let text = cluster.log_of(&cluster.regions[i]);
    let marker = format!("===== test: starting {} =====", REGIONS[i]);
    text.rfind(&marker)
        .map_or(text.clone(), |at| text[at..].to_owned())
}

/// Waits until region `i`'s log since its last start holds each of `lines` (`meridian run`
/// prints about once a second), failing after a few seconds.
async fn wait_log(cluster: &Cluster, i: usize, lines: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = log_since_start(cluster, i);
        if lines.iter().all(|l| log.contains(l)) {
            return log;
        }
        let missing: Vec<&&str> = lines.iter().filter(|l| !log.contains(**l)).collect();
        assert!(
            Instant::now() < deadline,
            "{}'s log lacks {missing:?}:\n{log}",
            REGIONS[i]
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An acknowledged write: where, which key, its number in the writer's sequence, the
/// durability it reached.
#[derive(Debug, Clone)]
struct Ack {
    region: usize,
    key: String,
    n: u64,
    durability: &'static str,
}

/// Keys each writer cycles through (its own: a later write of a key is a later number).
const KEYS_PER_WRITER: u64 = 200;
const WRITERS_PER_REGION: usize = 2;
const VALUE_BYTES: usize = 800;
const DURABILITIES: [&str; 4] = ["local", "one", "quorum", "all"];

/// The value of write `n` of writer `who`: its number first, so a read says which it is.
fn value(who: &str, n: u64) -> Vec<u8> {
    let mut v = format!("{n:010} {who} ").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    v
}

/// The writers: every region, every durability in turn, until `stop` (a's and b's idle while
/// `pause`);
/// acknowledgements
/// into `acks`, `503 bootstrapping` answers counted in `refused`.
fn start_writers(
    cluster: &Cluster,
    stop: &Arc<AtomicBool>,
    pause: &Arc<AtomicBool>,
    acks: &Arc<Mutex<Vec<Ack>>>,
    refused: &Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (region, r) in cluster.regions.iter().enumerate() {
        for w in 0..WRITERS_PER_REGION {
            let api = r.api.clone();
            let who = format!("{}{w}", REGIONS[region]);
            let (stop, pause) = (stop.clone(), pause.clone());
            let (acks, refused) = (acks.clone(), refused.clone());
            tasks.spawn(async move {
                let client = http_client();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // c's writers go on: they are refused while it bootstraps.
                    if region != C && pause.load(Ordering::Relaxed) {
                        tokio::time::sleep(WRITER_BACKOFF).await;
                        continue;
                    }
                    n += 1;
                    let key = format!("{who}-{}", n % KEYS_PER_WRITER);
                    let durability = DURABILITIES[(n % 4) as usize];
                    let resp = client
                        .put(format!("{api}/v1/kv/default/{key}"))
                        .header(DURABILITY_HEADER, durability)
                        .header(TIMEOUT_HEADER, "2000")
                        .body(value(&who, n))
                        .send()
                        .await;
                    let answer = match resp {
                        Ok(resp) => {
                            let code = resp.status().as_u16();
                            let body: serde_json::Value = resp.json().await.unwrap_or_default();
                            Some((code, body))
                        }
                        Err(_) => None, // the region is down
                    };
                    match answer {
                        Some((200, body)) => {
                            // A write that timed out reached only what `durable_in` says.
                            if body["timed_out"] != serde_json::Value::Bool(true) {
                                let ack = Ack {
                                    region,
                                    key,
                                    n,
                                    durability,
                                };
                                acks.lock().unwrap().push(ack);
                            }
                        }
                        Some((503, body)) if body["code"] == "bootstrapping" => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(WRITER_BACKOFF).await;
                        }
                        _ => tokio::time::sleep(WRITER_BACKOFF).await,
                    }
                }
            });
        }
    }
    tasks
}

/// Polls until `acks` holds at least `n` acknowledgements.
async fn wait_acks(acks: &Arc<Mutex<Vec<Ack>>>, n: usize, bound: Duration) {
    let deadline = Instant::now() + bound;
    while acks.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} writes acknowledged within {bound:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Writes before and after the transfer, none during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_lost_its_disk_bootstraps_between_loads() {
    disk_loss(true).await;
}

/// With the writers going on at every region during the transfer. This found a core bug:
/// every round started over after a chunk or two, for ever, because the source compared the
/// receiver's `low` alone with its log start while the receiver kept applying the live
/// streams (now it compares what the receiver will have once it installs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_lost_its_disk_bootstraps_under_load() {
    disk_loss(false).await;
}

/// Disk loss of c with writers everywhere; with `pause_during_transfer`, the writers at a and
/// b idle from the kill until c serves again (c's, refused meanwhile, go on).
async fn disk_loss(pause_during_transfer: bool) {
    let client = http_client();
    let mut cluster = deployment(&client).await;
    // Latency towards c, so that the transfer (1,200 keys in 4 KiB chunks, a round trip
    // each) spans seconds of polls of its status.
    for i in [0, 1] {
        cluster.delay_link(&client, i, C, 10).await;
    }
    let old_replica = status(&client, &cluster.regions[C].api)
        .await
        .unwrap()
        .replica;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let pause = Arc::new(AtomicBool::new(false));
    let mut writers = start_writers(&cluster, &stop, &pause, &acks, &refused);
    // About 1.2 MB of values: past a segment and a checkpoint, so every log is truncated by
    // causal stability before c loses its disk.
    wait_acks(&acks, 1_500, Duration::from_secs(30)).await;

    pause.store(pause_during_transfer, Ordering::Relaxed);
    lose_the_disk_of_c(&mut cluster, &client).await;
    // From its start on a new data directory, before any peer has told it anything, it
    // answers no read (it used to answer them as absent for about a second).
    let (code, body) = get(&client, &cluster.regions[C].api, "a0-1").await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        (code, json["code"].as_str()),
        (503, Some("bootstrapping")),
        "{json}"
    );
    // Until it serves again: its status shows the transfer, and a read meanwhile is refused.
    let deadline = Instant::now() + BOOTSTRAP_BOUND;
    let (mut seen_bootstrap, mut refusal) = (None, None);
    let served = loop {
        let st = status(&client, &cluster.regions[C].api).await.unwrap();
        if st.bootstrap.is_none() && st.counters.snapshots_installed > 0 {
            break st;
        }
        if let Some(b) = st.bootstrap.as_ref().filter(|b| b.phase != "learning") {
            seen_bootstrap.get_or_insert_with(|| b.clone());
            if refusal.is_none() {
                let (code, body) = get(&client, &cluster.regions[C].api, "a0-1").await;
                // 200 only if the bootstrap ended between the two requests.
                if code != 200 {
                    assert_bootstrapping(code, &body);
                    refusal = Some(String::from_utf8_lossy(&body).into_owned());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "c did not bootstrap and serve again within {BOOTSTRAP_BOUND:?}: {:?}\n{}",
            st.bootstrap,
            cluster.log_tails()
        );
        tokio::time::sleep(POLL).await;
    };
    pause.store(false, Ordering::Relaxed);
    let seen = seen_bootstrap.expect("c's status showed the bootstrap (it spans seconds)");
    assert!(
        seen.reason.contains("no longer holds the writes of"),
        "{seen:?}"
    );
    assert_ne!(
        served.replica, old_replica,
        "c came back with a new replica id"
    );
    // Under load a second round may follow the first: a region whose own log was truncated
    // past c (c being away) answers "needs snapshot" once c's source stops streaming it
    // that region's writes; the second round installs at its vector, and it streams from
    // there.
    assert!(
        (1..=2).contains(&served.counters.snapshots_installed),
        "{:?}",
        served.counters
    );
    assert!(
        served.counters.snapshot_chunks_received > 1,
        "{:?}",
        served.counters
    );
    assert!(
        served.counters.snapshot_keys_received >= 1_000,
        "{:?}",
        served.counters
    );
    wait_log(
        &cluster,
        C,
        &[
            "NeedsSnapshot",
            "SnapshotStarted",
            "SnapshotInstalled",
            "meridian: ALARM snapshot installed: ",
            "meridian: region c is bootstrapped: it serves reads and takes writes again",
        ],
    )
    .await;

    // The load goes on with c serving again, then stops.
    let total = acks.lock().unwrap().len();
    wait_acks(&acks, total + 300, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = writers.join_next().await {
        done.expect("a writer panicked");
    }
    cluster.wait_same_digests(&client).await;

    // Every write acknowledged as surviving the loss of c is at c: its value or a later one.
    let acks = acks.lock().unwrap().clone();
    let mut must: BTreeMap<String, u64> = BTreeMap::new();
    for a in &acks {
        let survives =
            matches!(a.durability, "quorum" | "all") || (a.durability == "one" && a.region != C);
        if survives {
            let n = must.entry(a.key.clone()).or_default();
            *n = (*n).max(a.n);
        }
    }
    assert!(must.len() >= 100, "{} keys checked", must.len());
    for (key, n) in &must {
        let (code, body) = get(&client, &cluster.regions[C].api, key).await;
        assert_eq!(code, 200, "{key} at c: {}", String::from_utf8_lossy(&body));
        let at_c: u64 = String::from_utf8_lossy(&body[..10]).parse().unwrap();
        assert!(
            at_c >= *n,
            "{key} at c is write {at_c}, write {n} was acknowledged"
        );
    }
    let by: Vec<usize> = (0..3)
        .map(|r| acks.iter().filter(|a| a.region == r).count())
        .collect();
    println!(
        "disk loss (writers at a and b idle during the transfer: {pause_during_transfer}): {} writes acknowledged (a, b, c: {by:?}), {} keys checked at c; \
         c fetched {} keys in {} chunks; its status showed the bootstrap (first as {}); a read refused \
         while bootstrapping: {}; writes refused with 503 bootstrapping: {}",
        acks.len(),
        must.len(),
        served.counters.snapshot_keys_received,
        served.counters.snapshot_chunks_received,
        seen.phase,
        refusal.is_some(),
        refused.load(Ordering::Relaxed)
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "c's writers were refused with 503 bootstrapping while it bootstrapped"
    );
    let stopped = cluster.shutdown().await;
    assert!(
        stopped.values().all(|s| s.is_some_and(|s| s.success())),
        "{stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_resumes_after_the_receiver_is_killed() {
    const KEYS: u64 = 1_600;
    let client = http_client();
    let mut cluster = deployment(&client).await;
    // KEYS keys of 500 bytes, written at a and b.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let api = cluster.regions[(w % 2) as usize].api.clone();
        tasks.spawn(async move {
            let client = http_client();
            for k in (w..KEYS).step_by(8) {
                let mut v = format!("value of k{k} ").into_bytes();
                v.resize(500, b'v');
                let resp = client
                    .put(format!("{api}/v1/kv/default/k{k:05}"))
                    .body(v)
                    .send()
                    .await
                    .expect("a write");
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a writer panicked");
    }
    cluster.wait_same_digests(&client).await;
    // 20 ms towards c: every chunk takes a round trip of it.
    for i in [0, 1] {
        cluster.delay_link(&client, i, C, 20).await;
    }

    lose_the_disk_of_c(&mut cluster, &client).await;
    let halfway = wait_status(
        &cluster,
        &client,
        C,
        BOOTSTRAP_BOUND,
        "fetch half the keys",
        |st| {
            st.bootstrap.as_ref().is_some_and(|b| {
                b.phase == "fetching" && b.total_keys > 0 && b.keys >= b.total_keys / 2
            })
        },
    )
    .await;
    let before = halfway.bootstrap.clone().unwrap();
    // Reads are refused meanwhile, with the progress; so are the digest and the conflict
    // log, which would describe partial key states.
    let (code, body) = get(&client, &cluster.regions[C].api, "k00001").await;
    assert_bootstrapping(code, &body);
    for path in ["/v1/status/digest", "/v1/conflicts"] {
        let (code, body) = get_path(&client, &cluster.regions[C].api, path).await;
        assert_bootstrapping(code, &body);
    }
    // Two more commits: the chunk the status counted is in a checkpoint by then.
    let fsyncs = halfway.counters.fsyncs;
    let durable = wait_status(
        &cluster,
        &client,
        C,
        BOOTSTRAP_BOUND,
        "commit twice more",
        |st| st.counters.fsyncs >= fsyncs + 2,
    )
    .await;
    let still = durable.bootstrap.as_ref().map(|b| b.phase.clone());
    assert_eq!(
        still.as_deref(),
        Some("fetching"),
        "the transfer must still be under way when c is killed: make it longer"
    );
    cluster.sigkill(C).await;
    cluster.spawn(C);
    cluster
        .wait_healthy(&client, C, Instant::now() + START_BOUND)
        .await;
    let resumed = status(&client, &cluster.regions[C].api).await.unwrap();
    let after = resumed
        .bootstrap
        .clone()
        .expect("c resumes its bootstrap after the restart");
    assert!(
        after.keys >= before.keys,
        "the transfer went back from {} keys to {}: {after:?}",
        before.keys,
        after.keys
    );
    let mut chunks = after.chunks;
    let served = wait_status(
        &cluster,
        &client,
        C,
        BOOTSTRAP_BOUND,
        "finish the bootstrap",
        |st| {
            if let Some(b) = &st.bootstrap {
                chunks = chunks.max(b.chunks);
            }
            st.bootstrap.is_none() && st.counters.snapshots_installed > 0
        },
    )
    .await;
    let mut sent = 0;
    for i in [0, 1] {
        sent += status(&client, &cluster.regions[i].api)
            .await
            .unwrap()
            .counters
            .snapshot_chunks_sent;
    }
    assert!(
        chunks > 10 && sent < 2 * chunks,
        "the sources sent {sent} chunks for a transfer of {chunks}"
    );
    let first = cluster.log_of(&cluster.regions[C]);
    assert!(
        first.contains("meridian: ALARM snapshot started: region c is being bootstrapped from ")
            && first.contains("meridian: bootstrapping from "),
        "c's run printed no alarm and progress bar:\n{first}"
    );
    wait_log(&cluster, C, &["meridian: ALARM snapshot installed: "]).await;
    cluster.wait_same_digests(&client).await;
    let (code, body) = get(&client, &cluster.regions[C].api, "k01599").await;
    assert_eq!(code, 200);
    assert!(body.starts_with(b"value of k1599 "));
    println!(
        "resumed transfer: killed at {} of {} keys ({} chunks), resumed at {} keys; {} chunks in \
         all, {sent} served; c installed {} keys after the restart",
        before.keys,
        before.total_keys,
        before.chunks,
        after.keys,
        chunks,
        served.counters.snapshot_keys_received
    );
    let stopped = cluster.shutdown().await;
    assert!(
        stopped.values().all(|s| s.is_some_and(|s| s.success())),
        "{stopped:?}"
    );
}
