//! Per-request consistency, end to end over real QUIC between in-process regions (see `common`
//! for the harness): the durability ladder (`one`, `quorum`, `all`, and what a timed-out wait
//! answers), session tokens (read-your-writes across regions, "behind your session"), the lag
//! matrix as a third region sees it, a region whose clock runs 10 s ahead, two regions that
//! disagree on a table's resolver. (The CLI's `--session FILE` is tested with the binary, in
//! `leader/cli/tests/processes/cli_session.rs`.)
//!
//! Partitions are made with the impairment layer under each region's QUIC endpoint, so a cut
//! region is really unreachable (packets are dropped both ways), not merely told so. Every
//! wait polls with a deadline (`crate::common::wait_until`); the only fixed waits are the bounded
//! durability and session waits of the product itself, whose length the tests assert.
//!
//! # Why one file of about 1,000 lines
//! One subject (what each request's consistency options promise), one harness (`common`);
//! each test is a self-contained scenario.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{Cluster, Read, wait_until};
use conflict::{Dot, Resolved, Value, VersionVector};
use leader::api::{
    DURABILITY_HEADER, SESSION_HEADER, TIMEOUT_HEADER, decode_context, encode_context,
};
use leader::leader_core::{Durability, MatrixCell};
use leader::node::{Behind, RequestError, WriteOptions, Written};
use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use tokio::time::Instant;

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGIONS: [&str; 3] = [US, EU, AP];

/// The harness's last-write-wins table.
const LWW: &str = "default";
/// The harness's multi-value table.
const MV: &str = "carts";

fn bytes(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

/// Wall-clock Unix milliseconds of this (unskewed) machine.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

fn names(regions: &[&str]) -> Vec<String> {
    regions.iter().map(|r| (*r).to_owned()).collect()
}

/// Writes `value` at `region` with `opts`; panics unless the write is accepted (a timed-out
/// durability wait is accepted: its receipt says so).
async fn write(
    c: &Cluster,
    region: &str,
    table: &str,
    key: &str,
    value: &str,
    opts: WriteOptions,
) -> Written {
    c.handle(region)
        .write_with(table, key.as_bytes(), bytes(value), opts)
        .await
        .unwrap_or_else(|e| panic!("{region}: write {table}/{key}: {e}"))
        .unwrap_or_else(|e| panic!("{region}: write {table}/{key} refused: {e}"))
}

/// Options for a blind write at `durability` that waits at most `timeout` for it.
fn durable(durability: Durability, timeout: Duration) -> WriteOptions {
    WriteOptions {
        durability: Some(durability),
        timeout: Some(timeout),
        ..WriteOptions::default()
    }
}

/// Reads a key at `region` presenting a session token.
async fn read_session(
    c: &Cluster,
    region: &str,
    table: &str,
    key: &str,
    session: &VersionVector,
) -> Result<(Read, VersionVector), RequestError> {
    let result = c
        .handle(region)
        .read_with(table, key.as_bytes(), Some(session.clone()))
        .await
        .unwrap_or_else(|e| panic!("{region}: read {table}/{key}: {e}"));
    result.map(|(read, token)| match read {
        leader::ReadResult::Found {
            state, resolver, ..
        } => (
            Read {
                resolved: state.resolve(resolver.as_ref()),
                state,
            },
            token,
        ),
        leader::ReadResult::UnknownTable => panic!("{region}: table {table} is not configured"),
    })
}

/// The value a read resolved to, as text (panics unless it is exactly one value).
fn value_of(read: &Read) -> String {
    match &read.resolved {
        Resolved::Value(v) => String::from_utf8(v.clone()).expect("test values are text"),
        other => panic!("expected one value, got {other:?}"),
    }
}

/// Cuts `region` off from every other region.
fn isolate(c: &Cluster, region: &str) {
    for other in REGIONS.iter().filter(|r| **r != region) {
        c.partition(region, other);
    }
}

/// Undoes [`isolate`].
fn rejoin(c: &Cluster, region: &str) {
    for other in REGIONS.iter().filter(|r| **r != region) {
        c.heal(region, other);
    }
}

/// An HTTP client for the regions' APIs.
fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends `req`, returns the status and the JSON body.
async fn send_json(req: reqwest::RequestBuilder) -> (StatusCode, Json) {
    let resp = req.send().await.expect("the API answers");
    let status = resp.status();
    let body = resp.json().await.expect("a JSON body");
    (status, body)
}

// ---- durability ---------------------------------------------------------------------------

/// `one`: with one of three regions cut off, a `one` write is acknowledged once the other
/// reachable region has it durably; the origin is then stopped at once, and the write is in
/// the surviving region — and reaches the cut-off region through it after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_survives_losing_its_origin_right_after_the_ack() {
    const RELAY_DELAY_MS: u64 = 200;
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", RELAY_DELAY_MS)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            isolate(c, AP);
            let w = write(
                c,
                US,
                LWW,
                "one",
                "kept",
                durable(Durability::One, Duration::from_secs(10)),
            )
            .await;
            let r = &w.receipt;
            assert!(!r.timed_out, "eu-west is reachable: {r:?}");
            assert_eq!(r.durability, Durability::One);
            // Exactly the origin and the one region it can reach (listed origin first).
            assert_eq!(r.durable_in, names(&[US, EU]), "{r:?}");

            // Lose the origin at once. The acknowledgement promised the write is durable in
            // eu-west, so it is there now: no waiting.
            c.stop(US).await;
            let read = c.read(EU, LWW, "one").await;
            assert!(read.state.context.covers(&r.dot), "{read:?}");
            assert_eq!(value_of(&read), "kept");

            // ap-south never heard from us-east; once its link to eu-west heals, eu-west
            // relays us-east's write (us-east is down, so it can only come from eu-west).
            assert!(!c.read(AP, LWW, "one").await.state.context.covers(&r.dot));
            c.heal(AP, EU);
            let reads = c.wait_key_in(&[AP], LWW, "one", &[r.dot]).await;
            assert_eq!(value_of(&reads[AP]), "kept");
            let relayed = c.status(EU).await.counters.writes_relayed;
            assert!(relayed >= 1, "{EU} relayed {relayed} writes");
        })
        .await;
}

/// How long the tests let a durability wait run before it times out. The region that has the
/// write acknowledges it within milliseconds on loopback; the bound is generous so a loaded
/// machine still gets that acknowledgement in before the deadline (the exact `durable_in`
/// depends on it).
const SHORT_WAIT: Duration = Duration::from_millis(1000);

/// `all`: with a region cut off, an `all` write times out after the requested bound and the
/// reply names exactly the regions that have it (library and HTTP, query and headers); it is
/// not rolled back, and after the heal every region has it. A table whose configured default
/// is `all` behaves the same without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_write_times_out_naming_exactly_where_it_is_then_replicates() {
    let cluster = Cluster::builder(&REGIONS)
        .durability(MV, "all")
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            isolate(c, AP);

            let start = Instant::now();
            let w = write(c, US, LWW, "all", "v", durable(Durability::All, SHORT_WAIT)).await;
            let waited = start.elapsed();
            let r = &w.receipt;
            assert!(r.timed_out, "ap-south is cut off: {r:?}");
            assert_eq!(r.durability, Durability::All);
            assert_eq!(r.durable_in, names(&[US, EU]), "{r:?}");
            assert!(waited >= SHORT_WAIT, "answered after {waited:?}");
            // Committed here all the same: readable, and the session token covers it.
            assert!(w.session.covers(&r.dot));
            assert_eq!(value_of(&c.read(US, LWW, "all").await), "v");

            // The table default from [durability] applies when the request names none.
            let opts = WriteOptions {
                timeout: Some(SHORT_WAIT),
                ..WriteOptions::default()
            };
            let cart = write(c, EU, MV, "cart", "item", opts).await;
            assert_eq!(cart.receipt.durability, Durability::All);
            assert!(cart.receipt.timed_out, "{:?}", cart.receipt);
            assert_eq!(cart.receipt.durable_in, names(&[EU, US]));

            // Over HTTP: 202 Accepted, the regions that have it, and a message saying that
            // it is committed and keeps replicating.
            let api = c.api_url(US);
            let url = format!(
                "{api}/v1/kv/{LWW}/http-all?durability=all&timeout_ms={}",
                SHORT_WAIT.as_millis()
            );
            let (status, body) = send_json(http().put(&url).body("h")).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["durable_in"], json!([US, EU]), "{body}");
            assert_eq!(body["timed_out"], json!(true), "{body}");
            assert_eq!(body["durability"], json!("all"), "{body}");
            assert_eq!(
                body["message"],
                json!(
                    "the write is committed in us-east and durable in us-east, eu-west; it did \
                     not reach durability 'all' in time and keeps replicating (it is not rolled \
                     back)"
                ),
                "{body}"
            );
            let http_seq = body["dot"]["seq"].as_u64().expect("a dot");
            let req = http()
                .put(format!("{api}/v1/kv/{LWW}/http-all-headers"))
                .header(DURABILITY_HEADER, "all")
                .header(TIMEOUT_HEADER, SHORT_WAIT.as_millis().to_string())
                .body("hh");
            let (status, body) = send_json(req).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["durable_in"], json!([US, EU]), "{body}");

            // After the heal every region has every one of these writes...
            rejoin(c, AP);
            let us_replica = r.dot.replica;
            let http_dot = Dot {
                replica: us_replica,
                seq: conflict::Seq(http_seq),
            };
            for (table, key, dot) in [
                (LWW, "all", r.dot),
                (MV, "cart", cart.receipt.dot),
                (LWW, "http-all", http_dot),
            ] {
                c.wait_key(table, key, &[dot]).await;
            }
            // ...and an `all` write now succeeds within its bound, durable in all three.
            let w = write(
                c,
                US,
                LWW,
                "all-healed",
                "v",
                durable(Durability::All, Duration::from_secs(15)),
            )
            .await;
            assert!(!w.receipt.timed_out, "{:?}", w.receipt);
            assert_eq!(w.receipt.durable_in, names(&[US, AP, EU]));
            c.wait_converged().await;
        })
        .await;
}

/// `all` across a cut link: with only us-east – ap-south cut, eu-west relays the write to
/// ap-south, and us-east learns that ap-south has it durably from ap-south's lag-matrix row,
/// which eu-west passes on in its heartbeats (ap-south's own acknowledgement cannot reach
/// us-east). The wait is met without the link ever healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_write_is_met_through_a_relay_and_relayed_matrix_rows() {
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", 200)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            c.partition(US, AP);
            let w = write(
                c,
                US,
                LWW,
                "relayed",
                "v",
                durable(Durability::All, Duration::from_secs(15)),
            )
            .await;
            assert!(!w.receipt.timed_out, "{:?}", w.receipt);
            assert_eq!(w.receipt.durable_in, names(&[US, AP, EU]));
            // us-east still has no acknowledgement from ap-south itself.
            let view = c.status(US).await;
            let ap = view.peers.iter().find(|p| p.region == AP).expect("a peer");
            assert!(!ap.acked.covers(&w.receipt.dot), "{ap:?}");
        })
        .await;
}

/// `quorum` in a cluster of three needs two regions counting the origin: with two of three
/// reachable it succeeds naming them; with the origin alone it times out after its bound
/// naming only the origin, and it is not rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_write_needs_two_of_three_regions() {
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", 200)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            isolate(c, AP);
            let two = write(
                c,
                US,
                LWW,
                "q2",
                "v",
                durable(Durability::Quorum, Duration::from_secs(10)),
            )
            .await;
            assert!(!two.receipt.timed_out, "{:?}", two.receipt);
            assert_eq!(two.receipt.durability, Durability::Quorum);
            assert_eq!(two.receipt.durable_in, names(&[US, EU]));

            // Now us-east reaches nobody (ap-south and eu-west still talk to each other).
            c.heal(AP, EU);
            c.partition(US, EU);
            let start = Instant::now();
            let one = write(
                c,
                US,
                LWW,
                "q1",
                "v",
                durable(Durability::Quorum, SHORT_WAIT),
            )
            .await;
            let waited = start.elapsed();
            assert!(one.receipt.timed_out, "{:?}", one.receipt);
            assert_eq!(one.receipt.durable_in, names(&[US]));
            assert!(waited >= SHORT_WAIT, "answered after {waited:?}");

            // Over HTTP the same wait answers 202 naming only the origin.
            let url = format!(
                "{}/v1/kv/{LWW}/q1-http?durability=quorum&timeout_ms={}",
                c.api_url(US),
                SHORT_WAIT.as_millis()
            );
            let (status, body) = send_json(http().put(&url).body("h")).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["durable_in"], json!([US]), "{body}");

            rejoin(c, US);
            c.wait_key(LWW, "q2", &[two.receipt.dot]).await;
            c.wait_key(LWW, "q1", &[one.receipt.dot]).await;
            c.wait_converged().await;
        })
        .await;
}

// ---- sessions -----------------------------------------------------------------------------

/// How long the session tests let a read wait for its token (`timeouts.session_wait_ms`).
const SESSION_WAIT_MS: u64 = 800;

/// Asserts that `b` is ap-south saying it lacks us-east's first write after the full wait.
fn assert_behind_on_first_us_write(b: &Behind, token: &VersionVector) {
    assert_eq!(b.region, AP);
    assert_eq!(b.missing, vec![(US.to_owned(), 0, 1)], "{b:?}");
    assert!(b.waited_ms >= SESSION_WAIT_MS, "{b:?}");
    assert_eq!(&b.session, token);
    assert_eq!(
        b.to_string(),
        format!(
            "region ap-south is behind your session: us-east applied up to 0, session needs 1; \
             waited {} ms. Retry, or use a region that has caught up",
            b.waited_ms
        )
    );
}

/// A session token carried to a region cut off from the write (and from every region that
/// has it, so no relay can bring it): the read waits `session_wait_ms`, then fails with
/// "behind your session" naming what is missing (library and HTTP, header and query); a
/// write with that token is refused the same way. After the heal the same read returns the
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_read_at_a_region_without_the_write_says_it_is_behind() {
    let cluster = Cluster::builder(&REGIONS)
        .timeout("session_wait_ms", SESSION_WAIT_MS)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            isolate(c, AP);
            let w = write(c, US, LWW, "s", "mine", WriteOptions::default()).await;
            let token = w.session.clone();
            assert!(token.covers(&w.receipt.dot));

            let start = Instant::now();
            let err = read_session(c, AP, LWW, "s", &token)
                .await
                .expect_err("ap-south cannot have the write");
            assert!(start.elapsed() >= Duration::from_millis(SESSION_WAIT_MS));
            let RequestError::Behind(b) = err else {
                panic!("expected 'behind your session', got {err:?}")
            };
            assert_behind_on_first_us_write(&b, &token);

            // A write presenting the token is refused too, and writes nothing.
            let opts = WriteOptions {
                session: Some(token.clone()),
                ..WriteOptions::default()
            };
            let refused = c
                .handle(AP)
                .write_with(LWW, b"s", bytes("too early"), opts)
                .await
                .expect("ap-south runs");
            match refused {
                Err(RequestError::Behind(b)) => assert_behind_on_first_us_write(&b, &token),
                other => panic!("expected 'behind your session', got {other:?}"),
            }
            assert_eq!(c.read(AP, LWW, "s").await.state, Default::default());

            // Over HTTP: 503 with the stable code and the lag, by header or query.
            let encoded = encode_context(&token);
            let url = format!("{}/v1/kv/{LWW}/s", c.api_url(AP));
            for req in [
                http().get(&url).header(SESSION_HEADER, &encoded),
                http().get(format!("{url}?session={encoded}")),
            ] {
                let (status, body) = send_json(req).await;
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                assert_eq!(body["code"], json!("behind_session"), "{body}");
                assert_eq!(body["region"], json!(AP), "{body}");
                assert_eq!(
                    body["lag"],
                    json!([{ "origin": US, "applied": 0, "needed": 1, "lag_writes": 1 }]),
                    "{body}"
                );
                let waited = body["waited_ms"].as_u64().expect("waited_ms");
                assert!(waited >= SESSION_WAIT_MS, "{body}");
                assert_eq!(body["session"], json!(encoded), "{body}");
                let msg = body["error"].as_str().expect("a message");
                assert!(
                    msg.starts_with(
                        "region ap-south is behind your session: us-east applied up to 0, \
                         session needs 1;"
                    ),
                    "{msg}"
                );
            }

            // After the heal ap-south catches up, and the same read returns the write.
            rejoin(c, AP);
            c.wait_key_in(&[AP], LWW, "s", &[w.receipt.dot]).await;
            let (read, next) = read_session(c, AP, LWW, "s", &token)
                .await
                .expect("ap-south has caught up");
            assert_eq!(value_of(&read), "mine");
            assert!(next.dominates(&token), "tokens only grow: {next:?}");
            let resp = http()
                .get(&url)
                .header(SESSION_HEADER, &encoded)
                .send()
                .await
                .expect("the API answers");
            assert_eq!(resp.status(), StatusCode::OK);
            let returned = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(decode_context)
                .expect("a session header")
                .expect("a valid token");
            assert!(returned.covers(&w.receipt.dot));
            assert_eq!(resp.text().await.expect("a body"), "mine");
        })
        .await;
}

/// Read-your-writes in the normal case: a write at us-east and, at once, a read with its token
/// at eu-west, whose link from us-east has 300 ms of one-way latency — so eu-west normally
/// does not have the write yet when the read arrives and must wait for it. The read returns
/// the write either way. Then the other direction, and monotonic reads through a third region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_your_writes_at_another_region() {
    let cluster = Cluster::builder(&REGIONS)
        .timeout("session_wait_ms", 10_000)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            c.set_latency(US, EU, Duration::from_millis(300));
            for i in 0..3 {
                let key = format!("ryw-{i}");
                let value = format!("v{i}");
                let w = write(c, US, LWW, &key, &value, WriteOptions::default()).await;
                let (read, token) = read_session(c, EU, LWW, &key, &w.session)
                    .await
                    .unwrap_or_else(|e| panic!("eu-west waits for the write: {e}"));
                assert_eq!(value_of(&read), value, "{key}");
                assert!(token.covers(&w.receipt.dot));

                // The session goes on: a write at eu-west with the token, read back at
                // us-east.
                let opts = WriteOptions {
                    session: Some(token),
                    ..WriteOptions::default()
                };
                let reply = format!("reply-{i}");
                let w2 = write(c, EU, LWW, &key, &reply, opts).await;
                assert!(w2.session.covers(&w.receipt.dot) && w2.session.covers(&w2.receipt.dot));
                let (read, token) = read_session(c, US, LWW, &key, &w2.session)
                    .await
                    .unwrap_or_else(|e| panic!("us-east waits for the reply: {e}"));
                assert_eq!(value_of(&read), reply, "{key}");

                // Monotonic reads: ap-south never shows less than this session has seen.
                let (read, _) = read_session(c, AP, LWW, &key, &token)
                    .await
                    .unwrap_or_else(|e| panic!("ap-south waits for the reply: {e}"));
                assert_eq!(value_of(&read), reply, "{key}");
            }
        })
        .await;
}

// ---- the lag matrix -----------------------------------------------------------------------

/// `(origin, destination) -> (lag_writes, lag_ms)` of a matrix.
fn cells(matrix: &[MatrixCell]) -> std::collections::BTreeMap<(String, String), (u64, u64)> {
    matrix
        .iter()
        .map(|m| {
            (
                (m.origin.clone(), m.destination.clone()),
                (m.lag_writes, m.lag_ms),
            )
        })
        .collect()
}

/// Checks that `matrix` has a cell for every ordered pair of regions, that the cells of the
/// cut pair `us-east -> eu-west` and `eu-west -> us-east` lag by exactly `us_lag` and
/// `eu_lag` writes, and that every other cell is exactly zero; returns the cut pair's
/// `lag_ms`. Exactness is the tolerance: no write is in flight while this is checked, so a
/// destination that has all of its origin's writes lags by 0 writes and 0 ms (nothing is
/// approximated), and a cut destination lacks exactly the writes made on the far side.
fn check_matrix(matrix: &[MatrixCell], us_lag: u64, eu_lag: u64) -> Result<(u64, u64), String> {
    let cells = cells(matrix);
    let mut pairs = 0;
    let mut cut = (0, 0);
    for origin in REGIONS {
        for dest in REGIONS.iter().filter(|d| **d != origin) {
            pairs += 1;
            let Some(&(writes, ms)) = cells.get(&(origin.to_owned(), (*dest).to_owned())) else {
                return Err(format!("no cell {origin} -> {dest}: {cells:?}"));
            };
            let want = match (origin, *dest) {
                (US, EU) => us_lag,
                (EU, US) => eu_lag,
                _ => 0,
            };
            if writes != want || (want == 0 && ms != 0) || (want > 0 && ms == 0) {
                return Err(format!(
                    "{origin} -> {dest}: {writes} writes / {ms} ms, want {want} writes: {cells:?}"
                ));
            }
            match (origin, *dest) {
                (US, EU) => cut.0 = ms,
                (EU, US) => cut.1 = ms,
                _ => {}
            }
        }
    }
    if cells.len() != pairs {
        return Err(format!("cells for unknown pairs: {cells:?}"));
    }
    Ok(cut)
}

/// With the us-east – eu-west pair cut (and no relay), ap-south — connected to both, and
/// learning their rows from their heartbeats — sees exactly that pair's lag grow, in writes
/// as more writes are made and in milliseconds as time passes, while every other cell stays
/// at zero; after the heal the whole matrix returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_matrix_at_a_third_region_shows_the_cut_pair_only() {
    // No relay while the pair is cut: ap-south must not heal the lag.
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", 600_000)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let cut_at = Instant::now();
            c.partition(US, EU);
            for i in 0..5 {
                c.put(US, LWW, &format!("us-{i}"), "v").await;
            }
            for i in 0..3 {
                c.put(EU, LWW, &format!("eu-{i}"), "v").await;
            }
            for i in 0..2 {
                c.put(AP, LWW, &format!("ap-{i}"), "v").await;
            }
            let (first_ms, _) = wait_until(
                "ap-south's matrix to show 5 / 3 on the cut pair",
                async || check_matrix(&c.status(AP).await.matrix, 5, 3),
            )
            .await;

            // More writes on one side: its cell counts them, and the age of the oldest
            // missing write keeps growing (it is still the first one).
            for i in 5..9 {
                c.put(US, LWW, &format!("us-{i}"), "v").await;
            }
            let (later_ms, eu_ms) = wait_until(
                "the cut pair's lag to reach 9 writes and grow by 500 ms",
                async || {
                    let (us_ms, eu_ms) = check_matrix(&c.status(AP).await.matrix, 9, 3)?;
                    if us_ms >= first_ms + 500 {
                        Ok((us_ms, eu_ms))
                    } else {
                        Err(format!(
                            "us-east -> eu-west at {us_ms} ms, first seen {first_ms} ms"
                        ))
                    }
                },
            )
            .await;
            // Each origin measures on its own clock, from when the write became durable there,
            // which was after the cut: never more than the time since the cut (+1 ms for the
            // clocks' millisecond rounding).
            let since_cut = cut_at.elapsed().as_millis() as u64 + 1;
            assert!(
                later_ms <= since_cut,
                "{later_ms} ms > {since_cut} ms since the cut"
            );
            assert!(
                eu_ms <= since_cut,
                "{eu_ms} ms > {since_cut} ms since the cut"
            );
            // The same matrix over HTTP.
            let (status, body) =
                send_json(http().get(format!("{}/v1/status", c.api_url(AP)))).await;
            assert_eq!(status, StatusCode::OK);
            let cell = body["matrix"]
                .as_array()
                .expect("a matrix")
                .iter()
                .find(|m| m["origin"] == US && m["destination"] == EU)
                .cloned()
                .expect("the cut pair's cell");
            assert_eq!(cell["lag_writes"], json!(9), "{body}");

            c.heal(US, EU);
            wait_until("the matrix to return to zero after the heal", async || {
                check_matrix(&c.status(AP).await.matrix, 0, 0)
            })
            .await;
            c.wait_converged().await;
        })
        .await;
}

/// With the us-east – ap-south link cut, eu-west relays each side's writes to the other. The
/// two never hear each other's acknowledgements, but their lag-matrix rows reach each other
/// through eu-west's heartbeats: once the relayed writes are applied, every cell of the matrix
/// — at eu-west and at both ends of the cut — is back to zero, while the cut pair still shows
/// that it does not replicate directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_matrix_counts_writes_a_relay_delivered_around_a_cut_link() {
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", 200)
        // The cut link is declared down after 1 s without packets, so `connected` shows it.
        .timeout("idle_timeout_ms", 1000)
        .timeout("keep_alive_ms", 300)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            c.partition(US, AP);
            let mut us = Vec::new();
            for i in 0..5 {
                us.push(c.put(US, LWW, &format!("us-{i}"), "v").await.dot);
            }
            let ap = c.put(AP, LWW, "ap-0", "v").await.dot;
            for (i, dot) in us.iter().enumerate() {
                c.wait_key_in(&[AP], LWW, &format!("us-{i}"), &[*dot]).await;
            }
            c.wait_key_in(&[US], LWW, "ap-0", &[ap]).await;
            for region in REGIONS {
                let what = format!("{region}'s matrix to show no lag, and the cut pair down");
                wait_until(&what, async || {
                    let matrix = c.status(region).await.matrix;
                    check_matrix(&matrix, 0, 0)?;
                    for m in &matrix {
                        let cut = [m.origin.as_str(), m.destination.as_str()] == [US, AP]
                            || [m.origin.as_str(), m.destination.as_str()] == [AP, US];
                        if m.connected == cut {
                            return Err(format!("{m:?}"));
                        }
                    }
                    Ok(())
                })
                .await;
            }
            // Each end still has no acknowledgement from the other: only rows told them.
            let view = c.status(US).await;
            let ap_view = view.peers.iter().find(|p| p.region == AP).expect("a peer");
            assert!(!ap_view.acked.covers(&us[4]), "{ap_view:?}");
        })
        .await;
}

// ---- clock skew ---------------------------------------------------------------------------

/// How far ahead ap-south's wall clock runs in the skew test.
const SKEW_MS: i64 = 10_000;
/// Tolerance of the NTP-style offset estimate on loopback: the error of one sample is at most
/// half its round trip's asymmetry, and the estimate keeps the sample with the smallest round
/// trip of the last eight heartbeats, so tens of milliseconds at worst on a loaded machine.
const OFFSET_TOLERANCE_MS: i64 = 200;

/// ap-south's wall clock runs 10 s ahead. Writes made elsewhere after its writes were seen
/// still win under last-write-wins (with the read context, and blind), although their
/// regions' clocks are 10 s behind; the other regions' clocks are not dragged along (at most
/// `max_clock_offset_ms`); both other regions raise the skew alarm naming ap-south (status,
/// HTTP and /metrics), and estimate its clock offset within 200 ms of 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clock_loses_to_causally_later_writes_and_raises_the_alarm() {
    let cluster = Cluster::builder(&REGIONS)
        .clock_offset(AP, SKEW_MS)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let max_offset = c.config().timeouts.max_clock_offset_ms;

            // Overwrite with the read context.
            let before = wall_ms();
            let skewed = c.put(AP, LWW, "k", "skewed").await;
            assert!(
                skewed.hlc.physical_ms() >= before + 9_000,
                "ap-south stamps with its own clock, 10 s ahead: {:?} at {before}",
                skewed.hlc
            );
            let seen = c.wait_key_in(&[US], LWW, "k", &[skewed.dot]).await;
            let later = c
                .write_with(
                    US,
                    LWW,
                    "k",
                    bytes("later"),
                    Some(seen[US].state.context.clone()),
                )
                .await;
            assert!(later.hlc > skewed.hlc, "{later:?} vs {skewed:?}");

            // Blindly, once the skewed write has arrived.
            let skewed2 = c.put(AP, LWW, "k2", "skewed").await;
            c.wait_key_in(&[EU], LWW, "k2", &[skewed2.dot]).await;
            let blind = c.put(EU, LWW, "k2", "blind").await;
            assert!(blind.hlc > skewed2.hlc, "{blind:?} vs {skewed2:?}");

            for (key, winner, loser) in [("k", &later, &skewed), ("k2", &blind, &skewed2)] {
                let value = if key == "k" { "later" } else { "blind" };
                for (region, read) in c.wait_key(LWW, key, &[winner.dot, loser.dot]).await {
                    assert_eq!(read.dots(), [winner.dot], "{region}: {key}: {read:?}");
                    assert_eq!(value_of(&read), value, "{region}: {key}");
                }
            }

            // us-east's own clock is not dragged to ap-south's: a fresh key is stamped at most
            // max_clock_offset_ms ahead of its wall clock.
            let fresh = c.put(US, LWW, "fresh", "v").await;
            let after = wall_ms();
            assert!(
                fresh.hlc.physical_ms() <= after + max_offset,
                "{:?} at {after} (bound {max_offset} ms)",
                fresh.hlc
            );

            // The alarm: both other regions name ap-south, with a lead of about 10 s (it is
            // the largest lead seen, less the transit time of the stamp); ap-south, whose
            // peers are behind it, raises none.
            for region in [US, EU] {
                let alarms = wait_until("the clock-skew alarm", async || {
                    let alarms = c.status(region).await.skew_alarms;
                    match alarms.as_slice() {
                        [(r, ms)] if r == AP && *ms >= 9_000 => Ok(alarms),
                        _ => Err(format!("{region}: {alarms:?}")),
                    }
                })
                .await;
                assert!(alarms[0].1 <= SKEW_MS as u64 + 1, "{region}: {alarms:?}");
            }
            assert_eq!(c.status(AP).await.skew_alarms, []);
            let (_, body) = send_json(http().get(format!("{}/v1/status", c.api_url(US)))).await;
            let alarm = &body["alarms"]["clock_skew"][0];
            assert_eq!(alarm["region"], json!(AP), "{body}");
            assert_eq!(alarm["bound_ms"], json!(max_offset), "{body}");
            let metrics = http()
                .get(format!("{}/metrics", c.api_url(US)))
                .send()
                .await
                .expect("the API answers")
                .text()
                .await
                .expect("metrics text");
            let line = metrics
                .lines()
                .find(|l| {
                    l.starts_with("meridian_clock_skew_alarm_ms{")
                        && l.contains("peer=\"ap-south\"")
                })
                .unwrap_or_else(|| panic!("no skew alarm gauge for ap-south:\n{metrics}"));
            let value: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a value: {line}"));
            assert!((9_000..=SKEW_MS as u64 + 1).contains(&value), "{line}");

            // The offset estimates, from heartbeat echoes: +10 s seen from us-east and
            // eu-west, -10 s seen from ap-south, about 0 between the unskewed two. Waits until
            // the estimate is within the tolerance: a single early sample with an unusually
            // asymmetric round trip may be off, the minimum-round-trip filter corrects it.
            let expect = [
                (US, AP, SKEW_MS),
                (EU, AP, SKEW_MS),
                (AP, US, -SKEW_MS),
                (AP, EU, -SKEW_MS),
                (US, EU, 0),
            ];
            for (region, peer, want) in expect {
                wait_until("a clock-offset estimate within the tolerance", async || {
                    let status = c.status(region).await;
                    let view = status.peers.iter().find(|p| p.region == peer);
                    match view.and_then(|p| p.clock_offset_ms) {
                        Some(o) if (o - want).abs() <= OFFSET_TOLERANCE_MS => Ok(()),
                        other => Err(format!(
                            "{region}'s estimate of {peer}: {other:?}, want {want}"
                        )),
                    }
                })
                .await;
            }
            c.wait_converged().await;
        })
        .await;
}

// ---- resolver mismatch --------------------------------------------------------------------

/// Waits until `region` has received (logged) `origin`'s writes up to `seq`.
async fn wait_logged(c: &Cluster, region: &str, origin: &str, seq: u64) {
    let what = format!("{region} to log {origin}'s writes up to {seq}");
    wait_until(&what, async || {
        let applied = c.applied(region).await;
        match applied.get(origin) {
            Some(s) if *s >= seq => Ok(()),
            other => Err(format!("{origin}: {other:?}")),
        }
    })
    .await;
}

/// ap-south resolves `carts` with `lww` where the others use `multi-value`. Each side reports
/// the mismatch naming the table and both resolvers (status and HTTP; `meridian status` renders
/// this JSON in a unit test of the `meridian` crate); the
/// `carts` writes crossing between them are logged (the sequence stays gap-free) but never
/// applied, and counted as quarantined; `carts` still replicates between the regions that
/// agree, and every other table replicates everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_mismatch_quarantines_that_table_only() {
    let cluster = Cluster::builder(&REGIONS)
        .region_table(AP, MV, "lww")
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let mv = Some("multi-value@1".to_owned());
            let lww = Some("lww@1".to_owned());
            let mismatch = |region: &str, ours: &Option<String>, theirs: &Option<String>| {
                (
                    region.to_owned(),
                    MV.to_owned(),
                    ours.clone(),
                    theirs.clone(),
                )
            };
            assert_eq!(
                c.status(US).await.resolver_mismatches,
                [mismatch(AP, &mv, &lww)]
            );
            assert_eq!(
                c.status(EU).await.resolver_mismatches,
                [mismatch(AP, &mv, &lww)]
            );
            assert_eq!(
                c.status(AP).await.resolver_mismatches,
                [mismatch(EU, &lww, &mv), mismatch(US, &lww, &mv)]
            );

            // us-east's cart reaches eu-west (they agree), and is logged but not applied in
            // ap-south.
            let from_us = c.put(US, MV, "cart-us", "us-item").await;
            let reads = c.wait_key_in(&[EU], MV, "cart-us", &[from_us.dot]).await;
            assert_eq!(value_of(&reads[EU]), "us-item");
            wait_logged(c, AP, US, from_us.dot.seq.0).await;
            assert_eq!(c.read(AP, MV, "cart-us").await.state, Default::default());
            // ap-south's cart is logged but not applied in either other region.
            let from_ap = c.put(AP, MV, "cart-ap", "ap-item").await;
            for region in [US, EU] {
                wait_logged(c, region, AP, from_ap.dot.seq.0).await;
                let read = c.read(region, MV, "cart-ap").await;
                assert_eq!(read.state, Default::default(), "{region}");
                let quarantined = c.status(region).await.counters.quarantined;
                assert_eq!(quarantined, 1, "{region}");
            }
            assert_eq!(c.status(AP).await.counters.quarantined, 1);

            // The other table replicates both ways.
            let d_ap = c.put(AP, LWW, "d", "from-ap").await;
            let d_us = c.put(US, LWW, "d-us", "from-us").await;
            c.wait_key(LWW, "d", &[d_ap.dot]).await;
            c.wait_key(LWW, "d-us", &[d_us.dot]).await;
            assert_eq!(c.status(AP).await.counters.quarantined, 1);

            // What an operator sees.
            let (_, body) = send_json(http().get(format!("{}/v1/status", c.api_url(AP)))).await;
            assert_eq!(
                body["alarms"]["resolver_mismatch"],
                json!([
                    { "region": EU, "table": MV, "ours": "lww@1", "theirs": "multi-value@1" },
                    { "region": US, "table": MV, "ours": "lww@1", "theirs": "multi-value@1" },
                ]),
                "{body}"
            );
        })
        .await;
}

// ---- measurement --------------------------------------------------------------------------

/// Writes per durability level and link setting in [`durability_latency_ladder`].
const LADDER_WRITES: usize = 200;

/// One pair of regions and the one-way latency between them, ms.
type Link = (&'static str, &'static str, u64);

/// The `p`-th percentile (0–100) of sorted `samples`, nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Not a check but a measurement, for docs/consistency.md: the client-side latency of a write
/// at each durability level, over HTTP to us-east, with three regions on loopback — first
/// with perfect links, then with injected one-way latency (us-east – eu-west 20 ms, the
/// nearest; us-east – ap-south 40 ms, the farthest; eu-west – ap-south 30 ms). Levels are
/// interleaved write by write, so background load hits them all alike. Prints a table.
///
/// `cargo test -p leader --test integration -- --ignored --nocapture durability_latency_ladder`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/consistency.md, not a check"]
async fn durability_latency_ladder() {
    const LEVELS: [&str; 4] = ["local", "one", "quorum", "all"];
    let cluster = Cluster::builder(&REGIONS).start().await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            let client = http();
            let api = c.api_url(US);
            let mut table = String::from(
                "| links | durability | p50 ms | p99 ms | max ms | timed out |\n\
                 |---|---|---|---|---|---|\n",
            );
            let settings: [(&str, [Link; 3]); 2] = [
                ("loopback", [(US, EU, 0), (US, AP, 0), (EU, AP, 0)]),
                (
                    "wan 20/40/30 ms",
                    [(US, EU, 20), (US, AP, 40), (EU, AP, 30)],
                ),
            ];
            for (links, latencies) in settings {
                for (a, b, ms) in latencies {
                    c.set_latency(a, b, Duration::from_millis(ms));
                }
                let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); LEVELS.len()];
                let mut timed_out = [0usize; LEVELS.len()];
                for i in 0..LADDER_WRITES + 10 {
                    for (l, level) in LEVELS.iter().enumerate() {
                        let key = format!("ladder-{level}-{}", i % 50);
                        let url =
                            format!("{api}/v1/kv/{LWW}/{key}?durability={level}&timeout_ms=5000");
                        let start = Instant::now();
                        let resp = client.put(&url).body("x").send().await.expect("a reply");
                        let status = resp.status();
                        resp.bytes().await.expect("a body");
                        let took = start.elapsed();
                        assert!(status.is_success(), "{status}");
                        if i >= 10 {
                            // The first ten rounds warm connections and caches up.
                            samples[l].push(took);
                            timed_out[l] += usize::from(status == StatusCode::ACCEPTED);
                        }
                    }
                }
                for (l, level) in LEVELS.iter().enumerate() {
                    let s = &mut samples[l];
                    s.sort();
                    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
                    table.push_str(&format!(
                        "| {links} | {level} | {} | {} | {} | {} |\n",
                        ms(percentile(s, 50.0)),
                        ms(percentile(s, 99.0)),
                        ms(*s.last().expect("samples")),
                        timed_out[l],
                    ));
                }
            }
            println!("{LADDER_WRITES} writes per row, one client, HTTP to {US}:\n{table}");
        })
        .await;
}
