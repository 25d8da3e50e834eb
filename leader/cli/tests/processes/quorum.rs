//! Quorum reads over real processes (issue 16): three `meridian run --simulate-links`
//! processes; every write is acknowledged at `durability=quorum`, and a `read=quorum` of it
//! at every other region sees it — with every link up, with the direct link between writer
//! and reader cut (the third region answers), and with a region killed (the two left form the
//! majority). With the killed region down and the last link cut, a quorum read is a `503`
//! naming the one region that answered, never a local answer. The killed region restarts and
//! every region converges.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, http_client};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const START_BOUND: Duration = Duration::from_secs(30);
/// Keys written (and read back at the two other regions) per phase.
const KEYS_PER_PHASE: usize = 12;

/// Writes `key` = `value` at region `w` with `durability=quorum`; panics unless acknowledged
/// (200, not a timed-out 202).
async fn quorum_write(
    client: &reqwest::Client,
    cluster: &Cluster,
    w: usize,
    key: &str,
    value: &str,
) {
    let url = format!(
        "{}/v1/kv/default/{key}?durability=quorum",
        cluster.regions[w].api
    );
    let resp = client
        .put(&url)
        .body(value.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let code = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(code, 200, "PUT {url}: {body}");
}

/// `GET ?read=quorum` at region `r`: (status, body, the regions that answered).
async fn quorum_read(
    client: &reqwest::Client,
    cluster: &Cluster,
    r: usize,
    key: &str,
) -> (u16, String, String) {
    let url = format!(
        "{}/v1/kv/default/{key}?read=quorum&timeout_ms=1500",
        cluster.regions[r].api
    );
    let resp = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    let answered = resp
        .headers()
        .get("x-meridian-read-regions")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (code, resp.text().await.unwrap_or_default(), answered)
}

/// Writes `KEYS_PER_PHASE` keys at the `writers` in turn and reads each back at `quorum` at
/// every region in `readers` but its writer: each read must return the value.
async fn phase(
    client: &reqwest::Client,
    cluster: &Cluster,
    name: &str,
    writers: &[usize],
    readers: &[usize],
) -> usize {
    let mut reads = 0;
    for k in 0..KEYS_PER_PHASE {
        let w = writers[k % writers.len()];
        let key = format!("{name}-{k}");
        let value = format!("{name} {k} from {}", REGIONS[w]);
        quorum_write(client, cluster, w, &key, &value).await;
        for &r in readers.iter().filter(|r| **r != w) {
            let (code, body, answered) = quorum_read(client, cluster, r, &key).await;
            assert_eq!(
                (code, body.as_str()),
                (200, value.as_str()),
                "{name}: read=quorum of {key} at {} (answered by {answered})",
                REGIONS[r]
            );
            reads += 1;
        }
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_see_quorum_writes_while_links_are_cut_and_regions_killed() {
    let client = http_client();
    let mut cluster = Cluster::start_simulated(&REGIONS);
    cluster.wait_up(&client, START_BOUND).await;
    let (us, eu, ap) = (0, 1, 2);
    let mut reads = phase(&client, &cluster, "healthy", &[us, eu, ap], &[us, eu, ap]).await;

    // The writer–reader link cut: the third region answers (and ap-south's relay is slower
    // than the read).
    cluster.block_link(&client, us, eu).await;
    reads += phase(&client, &cluster, "cut", &[us, eu], &[us, eu, ap]).await;
    cluster.heal_link(&client, us, eu).await;

    // ap-south killed: us-east and eu-west are the majority.
    cluster.sigkill(ap).await;
    reads += phase(&client, &cluster, "killed", &[us, eu], &[us, eu]).await;

    // ap-south down and us-east cut from eu-west: no majority anywhere. A quorum read at
    // eu-west fails, naming the region that answered (itself), never answering alone.
    cluster.block_link(&client, us, eu).await;
    let began = Instant::now();
    let (code, body, _) = quorum_read(&client, &cluster, eu, "killed-0").await;
    assert_eq!(code, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(body["code"], "quorum_unavailable", "{body}");
    assert_eq!(body["answered"], serde_json::json!(["eu-west"]), "{body}");
    assert!(
        began.elapsed() >= Duration::from_millis(1400),
        "answered before its timeout: {:?}",
        began.elapsed()
    );

    // Everything back: ap-south restarts on its disk and every region converges.
    cluster.heal_link(&client, us, eu).await;
    cluster.spawn(ap);
    cluster
        .wait_healthy(&client, ap, Instant::now() + START_BOUND)
        .await;
    cluster.wait_same_digests(&client).await;
    reads += phase(&client, &cluster, "restarted", &[ap], &[us, eu, ap]).await;
    println!("{reads} quorum reads, each saw the quorum write before it");
    cluster.shutdown().await;
}
