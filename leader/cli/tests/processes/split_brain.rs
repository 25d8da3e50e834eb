//! Split brain over real processes and real QUIC (issue 11, item 2): a second `meridian run`
//! process claims a region that is already running, against three healthy regions. Twice:
//! with its own empty data directory (another replica id), and with a copy of the first
//! process's data directory (the same replica id, the case that reuses dots).
//!
//! What the healthy regions must do (docs/design.md, "Refinements": split-brain fencing):
//! keep the process that was connected first, refuse the other's connections while the first
//! one's heartbeats keep arriving, and within a few seconds show an alarm naming the region
//! and both replica ids in `/v1/status`, in `/metrics` and in their log. The link to the first
//! process stays up (it does not flap), and no write the impostor acknowledges reaches them.
//!
//! Before the fence, the transport let a new incarnation replace a live connection at once,
//! so the state machine saw `Down` before the newcomer's hello and forgot the first replica
//! id: no alarm, and a link that flapped on every redial of either process.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, POLL, http_client, status};
use leader::status::Status;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The region that gets a second process.
const TWIN: usize = 2;
/// Everything here happens within a few heartbeats (100 ms in `harness`) and redials
/// (50–500 ms); reaching a bound fails the test.
const START_BOUND: Duration = Duration::from_secs(15);
const ALARM_BOUND: Duration = Duration::from_secs(10);
/// How long the link is watched once the alarm is up (the impostor redials meanwhile).
const WATCH: Duration = Duration::from_secs(3);

async fn put(client: &reqwest::Client, api: &str, key: &str, value: &str) {
    let resp = client
        .put(format!("{api}/v1/kv/default/{key}"))
        .body(value.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key} at {api}: {e}"));
    assert!(
        resp.status().is_success(),
        "PUT {key} at {api}: {}",
        resp.status()
    );
}

async fn get(client: &reqwest::Client, api: &str, key: &str) -> Option<String> {
    let resp = client
        .get(format!("{api}/v1/kv/default/{key}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key} at {api}: {e}"));
    match resp.status().as_u16() {
        200 => Some(resp.text().await.expect("reading a value")),
        404 => None,
        other => panic!("GET {key} at {api}: {other}"),
    }
}

async fn status_of(client: &reqwest::Client, api: &str) -> Status {
    status(client, api)
        .await
        .unwrap_or_else(|e| panic!("status of {api}: {e}"))
}

/// The split-brain alarm `/v1/status` of `api` shows for `region`, if any: (live, refused).
async fn shown(client: &reqwest::Client, api: &str, region: &str) -> Option<(String, String)> {
    let st = status_of(client, api).await;
    st.alarms
        .split_brain
        .into_iter()
        .find(|a| a.region == region)
        .map(|a| (a.live_replica, a.refused_replica))
}

/// `meridian_alarms_total{kind="split_brain"}` of the region at `api`.
async fn split_brain_alarms(client: &reqwest::Client, api: &str) -> u64 {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("metrics of {api}: {e}"))
        .text()
        .await
        .expect("reading metrics");
    text.lines()
        .filter(|l| l.starts_with("meridian_alarms_total") && l.contains("kind=\"split_brain\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).expect("reading the data directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copying a file");
        }
    }
}

/// Runs the scenario with an impostor whose data directory is empty, or a copy of the twin's.
async fn scenario(copy_data_dir: bool) {
    let client = http_client();
    let mut cluster = Cluster::start(&REGIONS);
    let deadline = Instant::now() + START_BOUND;
    for i in 0..REGIONS.len() {
        cluster.wait_healthy(&client, i, deadline).await;
    }
    cluster.wait_replicating(&client, deadline).await;
    let twin = REGIONS[TWIN];
    let twin_api = cluster.regions[TWIN].api.clone();
    put(&client, &twin_api, "before", "first").await;
    let impostor_dir = if copy_data_dir { "copy" } else { "fresh" };
    if copy_data_dir {
        // A copy taken from a stopped process (redb is crash-safe, so SIGKILL is a stop).
        cluster.sigkill(TWIN).await;
        let from = cluster.data_dir(TWIN);
        copy_dir(&from, &from.with_file_name(impostor_dir));
        cluster.spawn(TWIN);
        cluster.wait_healthy(&client, TWIN, deadline).await;
        cluster.wait_replicating(&client, deadline).await;
    }
    let live_replica = format!("{:#}", status_of(&client, &twin_api).await.replica);
    // What the healthy regions log from here on is about the impostor.
    let marks: Vec<usize> = cluster.regions[..TWIN]
        .iter()
        .map(|r| cluster.log_of(r).len())
        .collect();
    let mut impostor = cluster.spawn_impostor(TWIN, impostor_dir);
    cluster
        .wait_healthy_region(&client, &mut impostor, deadline)
        .await;
    let impostor_replica = format!("{:#}", status_of(&client, &impostor.api).await.replica);
    assert_eq!(copy_data_dir, impostor_replica == live_replica);
    // Both processes take writes (only the first one's may reach the other regions), except
    // an impostor on an empty data directory: no peer accepts its hello, so it never learns
    // whether it needs a snapshot and refuses writes (docs/design.md, "A fresh data directory
    // starts gated").
    if copy_data_dir {
        put(&client, &impostor.api, "impostor", "second").await;
    } else {
        let resp = client
            .put(format!("{}/v1/kv/default/impostor", impostor.api))
            .body("second")
            .send()
            .await
            .expect("PUT at the impostor");
        assert_eq!(resp.status().as_u16(), 503);
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!(body["code"], "bootstrapping", "{body}");
    }
    put(&client, &twin_api, "genuine", "first").await;

    // Every healthy region shows the alarm, naming the region and both replica ids.
    let until = Instant::now() + ALARM_BOUND;
    for r in &cluster.regions[..TWIN] {
        loop {
            if let Some(seen) = shown(&client, &r.api, twin).await {
                assert_eq!(
                    seen,
                    (live_replica.clone(), impostor_replica.clone()),
                    "{}: which process is live and which refused",
                    r.name
                );
                break;
            }
            assert!(
                Instant::now() < until,
                "{} shows no split-brain alarm for {twin}: {:?}",
                r.name,
                status_of(&client, &r.api).await.alarms
            );
            tokio::time::sleep(POLL).await;
        }
        assert!(
            split_brain_alarms(&client, &r.api).await > 0,
            "{}: /metrics",
            r.name
        );
    }

    // The link to the first process stays up, with the first process, while the impostor
    // keeps redialing (each refusal is logged; at the end, none may have replaced it).
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        for r in &cluster.regions[..TWIN] {
            let st = status_of(&client, &r.api).await;
            let peer = st
                .peers
                .iter()
                .find(|p| p.region == *twin)
                .unwrap_or_else(|| panic!("{} shows no peer {twin}: {st:?}", r.name));
            assert!(peer.replicating, "{}: {peer:?}", r.name);
            assert_eq!(
                peer.replica.map(|id| format!("{id:#}")),
                Some(live_replica.clone()),
                "{}",
                r.name
            );
        }
        tokio::time::sleep(POLL).await;
    }

    // The first process's writes replicate; the impostor's never do.
    for r in &cluster.regions[..TWIN] {
        let until = Instant::now() + ALARM_BOUND;
        while get(&client, &r.api, "genuine").await.is_none() {
            assert!(
                Instant::now() < until,
                "{}: the live process's write",
                r.name
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(
            get(&client, &r.api, "before").await.as_deref(),
            Some("first")
        );
        assert_eq!(
            get(&client, &r.api, "impostor").await,
            None,
            "{}: a write of the refused process was merged",
            r.name
        );
    }
    drop(impostor);
    cluster.shutdown().await;
    for (r, mark) in cluster.regions[..TWIN].iter().zip(marks) {
        let log = cluster.log_of(r)[mark..].to_owned();
        assert!(
            log.contains("SplitBrain"),
            "{}'s log does not mention the split brain",
            r.name
        );
        let refusals = log.matches("two processes are running as region").count();
        assert!(
            refusals >= 2,
            "{}: the impostor was refused {refusals} times",
            r.name
        );
        // A new incarnation replacing the live connection is logged as "<region> restarted".
        assert!(
            !log.contains(&format!("{twin} restarted")),
            "{}: the impostor replaced the live connection",
            r.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_its_own_data_directory_is_fenced_and_alarmed() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_copied_data_directory_is_fenced_and_alarmed() {
    scenario(true).await;
}
