//! The CLI's `--session FILE` against running regions: `meridian put` stores the token it got
//! in FILE; a `meridian get` at a region cut off from the writer sends it and fails with
//! "behind your session" (while the same get without the file just finds nothing); after the
//! heal it returns the write and keeps the token in FILE. Then `meridian repair` runs
//! anti-entropy and finds nothing diverged.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use conflict::{Dot, ReplicaId, VersionVector};
use leader::api::decode_context;

use crate::harness::{Cluster, POLL, http_client, meridian, status};

const US: usize = 0;
const EU: usize = 1;
const AP: usize = 2;
const START_BOUND: Duration = Duration::from_secs(30);

/// Runs the `meridian` binary with `args` (and nothing from the environment that would point
/// it elsewhere), optionally with an extra `--session FILE`.
async fn run(args: &[&str], session: Option<&Path>) -> Output {
    let mut cmd = tokio::process::Command::new(meridian());
    cmd.args(args);
    if let Some(file) = session {
        cmd.arg("--session").arg(file);
    }
    for var in [
        "MERIDIAN_API",
        "MERIDIAN_REGION",
        "MERIDIAN_CONFIG",
        "MERIDIAN_API_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true)
        .output()
        .await
        .expect("run the meridian binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The token stored in a session file.
fn session_file(path: &Path) -> VersionVector {
    let token = std::fs::read_to_string(path).expect("the session file exists");
    decode_context(&token).unwrap_or_else(|e| panic!("the session file holds a token: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_session_file_carries_the_token_between_commands() {
    let mut cluster = Cluster::start_simulated(&["us-east", "eu-west", "ap-south"]);
    let client = http_client();
    let deadline = Instant::now() + START_BOUND;
    for i in 0..3 {
        cluster.wait_healthy(&client, i, deadline).await;
    }
    cluster.wait_replicating(&client, deadline).await;
    // Cut ap-south off from both others (a block at one end drops both directions).
    for peer in [US, EU] {
        cluster.block_link(&client, AP, peer).await;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("session.token");
    let (us, ap) = (
        cluster.regions[US].api.clone(),
        cluster.regions[AP].api.clone(),
    );

    let out = run(
        &["put", "--api", &us, "default", "cli-key", "hello"],
        Some(&file),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("put prints JSON");
    let seq = body["dot"]["seq"].as_u64().expect("a dot");
    let token = session_file(&file);
    let replica = status(&client, &us)
        .await
        .expect("us-east's status")
        .replica;
    let dot = Dot {
        replica,
        seq: conflict::Seq(seq),
    };
    assert!(token.covers(&dot), "{token:?} lacks {dot:?}");

    // Without the session, ap-south simply has nothing (exit code 4: absent).
    let out = run(&["get", "--api", &ap, "default", "cli-key"], None).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    // With it, ap-south waits and then says it is behind.
    let out = run(&["get", "--api", &ap, "default", "cli-key"], Some(&file)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "meridian: 503 Service Unavailable: region ap-south is behind your session: \
             us-east applied up to 0, session needs 1; waited "
        ),
        "{stderr}"
    );
    assert_eq!(session_file(&file), token, "a failed read keeps the token");

    for peer in [US, EU] {
        cluster.heal_link(&client, AP, peer).await;
    }
    wait_applied(&client, &ap, replica, seq).await;
    let out = run(&["get", "--api", &ap, "default", "cli-key"], Some(&file)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    assert!(session_file(&file).covers(&dot));

    // `meridian repair` (issue 16): anti-entropy with the connected peers finds nothing.
    let out = run(&["repair", "--api", &us], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.starts_with("us-east: anti-entropy with ") && report.contains(" 0 keys diverged"),
        "{report}"
    );
}

/// Waits until the region at `api` has applied `replica`'s writes up to `seq`.
async fn wait_applied(client: &reqwest::Client, api: &str, replica: ReplicaId, seq: u64) {
    let deadline = Instant::now() + START_BOUND;
    loop {
        let st = status(client, api).await.expect("the region's status");
        let have = st
            .applied
            .iter()
            .find(|a| a.replica == replica)
            .map(|a| a.seq);
        if have >= Some(seq) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{api} never applied {replica}:{seq}"
        );
        tokio::time::sleep(POLL).await;
    }
}
