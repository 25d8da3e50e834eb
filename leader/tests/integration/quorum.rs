//! Quorum reads over real QUIC (issue 16): `GET ?read=quorum` after a write acknowledged at
//! `durability=quorum` sees it when the direct link between the two regions is cut and the
//! third region answers; too few regions answering is a `503` naming those that did, never a
//! local answer; read repair brings the reader the write ahead of streaming.

use leader::node::{ReadOptions, WriteOptions};
use leader_core::{Durability, ReadLevel};
use reqwest::StatusCode;

use crate::common::Cluster;

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGIONS: [&str; 3] = [US, EU, AP];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_read_sees_a_quorum_write_through_a_third_region_and_fails_loudly_without_one() {
    // Relays wait a minute, so eu-west gets us-east's writes only from us-east itself.
    let cluster = Cluster::builder(&REGIONS)
        .timeout("relay_delay_ms", 60_000)
        .start()
        .await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            c.partition(US, EU);
            let opts = WriteOptions {
                durability: Some(Durability::Quorum),
                ..WriteOptions::default()
            };
            let written = c
                .handle(US)
                .write_with(
                    "default",
                    b"k",
                    conflict::Value::Bytes(b"v1".to_vec()),
                    opts,
                )
                .await
                .expect("node runs")
                .expect("write accepted");
            assert!(!written.receipt.timed_out, "{:?}", written.receipt);
            assert_eq!(written.receipt.durable_in, vec![US, AP]);
            let http = reqwest::Client::new();
            let url = |level: &str| format!("{}/v1/kv/default/k?read={level}", c.api_url(EU));
            // eu-west alone has not got it...
            let local = http.get(url("one")).send().await.expect("GET");
            assert_eq!(local.status(), StatusCode::NOT_FOUND);
            // ...a quorum read has: ap-south answers for the majority {eu-west, ap-south}.
            let quorum = http.get(url("quorum")).send().await.expect("GET");
            assert_eq!(quorum.status(), StatusCode::OK);
            let answered = quorum.headers()["x-meridian-read-regions"]
                .to_str()
                .expect("ASCII")
                .to_owned();
            assert_eq!(answered, format!("{EU},{AP}"));
            assert_eq!(quorum.text().await.expect("body"), "v1");
            // Read repair: eu-west serves it locally now, before us-east's stream reaches it.
            let local = http.get(url("one")).send().await.expect("GET");
            assert_eq!(local.status(), StatusCode::OK);
            let status = c.status(EU).await;
            assert_eq!(status.counters.read_repairs, 1);
            assert_eq!(status.counters.quorum_reads, 1);
            // The embedders' way in answers the same.
            let read = c
                .handle(EU)
                .read_opts(
                    "default",
                    b"k",
                    ReadOptions {
                        level: Some(ReadLevel::Quorum),
                        ..ReadOptions::default()
                    },
                )
                .await
                .expect("node runs");
            assert!(read.is_ok(), "{read:?}");

            // eu-west cut off from both: `quorum` fails at its timeout, naming who answered.
            c.partition(EU, AP);
            let failed = http
                .get(format!("{}&timeout_ms=300", url("quorum")))
                .send()
                .await
                .expect("GET");
            assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body: serde_json::Value = failed.json().await.expect("JSON");
            assert_eq!(body["code"], "quorum_unavailable", "{body}");
            assert_eq!(body["answered"], serde_json::json!([EU]), "{body}");
            assert_eq!(body["needed"], 2, "{body}");
            assert_eq!(c.status(EU).await.counters.quorum_reads_failed, 1);
            let bad = http.get(url("most")).send().await.expect("GET");
            assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

            // Healed: `all` joins every region's state; the regions converge.
            c.heal(EU, AP);
            c.heal(US, EU);
            c.wait_connected().await;
            let all = http.get(url("all")).send().await.expect("GET");
            assert_eq!(all.status(), StatusCode::OK);
            c.wait_converged().await;
        })
        .await;
}
