//! Issue 11, item 4: a region's memory is bounded in bytes, not in entries. One `meridian run`
//! process, with the default `[limits]`, under a heap cap (`RLIMIT_DATA`, 192 MiB) takes
//! 200 writes of 1 MiB to one key (200 MiB of log, several checkpoint intervals), is killed
//! with SIGKILL and restarted under the same cap, and must come back serving the last
//! acknowledged value.
//!
//! Before the bounds were counted in bytes, the in-memory log tail kept 65 536 entries per
//! origin (here all 200 MiB), checkpoints came every 65 536 entries or 4096 keys (never, for
//! one key), and a restart collected the whole log since the last checkpoint into one list:
//! the first process died of a failed allocation after some 50 writes, and a restart after
//! writing without the cap died replaying.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, http_client};

/// Heap cap of the process. The defaults (16 MiB tail per origin, 64 MiB checkpoints, 8 MiB
/// replay chunks, 64 MiB storage cache) keep a region under about 130 MiB here.
const DATA_LIMIT_BYTES: u64 = 192 * 1024 * 1024;
/// Writes of [`VALUE_BYTES`] each: together more than the cap.
const WRITES: usize = 200;
/// The largest value the default `[limits]` accept.
const VALUE_BYTES: usize = 1024 * 1024;
const START_BOUND: Duration = Duration::from_secs(30);

/// A 1 MiB value that names its index in its first bytes.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:06}-").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_writes_and_restarts_after_large_values_within_a_memory_cap() {
    let mut cluster = Cluster::start_with_data_limit(&["solo"], DATA_LIMIT_BYTES);
    let client = http_client();
    cluster
        .wait_healthy(&client, 0, Instant::now() + START_BOUND)
        .await;
    let api = cluster.regions[0].api.clone();
    let url = format!("{api}/v1/kv/default/big");
    for i in 0..WRITES {
        let sent = client.put(&url).body(value(i)).send().await;
        let code = sent.as_ref().map(reqwest::Response::status);
        assert!(
            matches!(code, Ok(c) if c.is_success()),
            "write {i} of {WRITES} failed under a {DATA_LIMIT_BYTES}-byte heap cap: {code:?}\n{}",
            cluster.log_tails()
        );
    }
    cluster.sigkill(0).await;
    cluster.spawn(0);
    cluster
        .wait_healthy(&client, 0, Instant::now() + START_BOUND)
        .await;
    let resp = client.get(&url).send().await.expect("reading the key back");
    assert!(resp.status().is_success(), "{}", resp.status());
    let body = resp.bytes().await.expect("reading the value");
    assert_eq!(body.len(), VALUE_BYTES);
    assert_eq!(
        &body[..13],
        format!("value-{:06}-", WRITES - 1).as_bytes(),
        "the last acknowledged write is what the restarted region serves"
    );
    assert!(cluster.is_running(0));
    let stopped = cluster.shutdown().await;
    assert!(
        stopped.values().all(|s| s.is_some_and(|s| s.success())),
        "{stopped:?}\n{}",
        cluster.log_tails()
    );
}
