//! Anti-entropy over real QUIC (issue 16): a key lost from one region's disk behind
//! replication's back (a test-only switch, while the region is stopped) is found by
//! `POST /v1/repair` (what `meridian repair` calls), reported in its answer, in `/metrics` and
//! in `/v1/status`, and repaired: `/v1/status/digest` becomes equal everywhere.

use std::collections::BTreeSet;

use conflict::Registry;
use leader::leader_core::{Effect, Event, Options, Replica, Time};
use leader::status::{Digest, RepairReport, Status};
use leader::storage::Store;
use leader_core::testkit;

use crate::common::{Cluster, wait_until};

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGIONS: [&str; 3] = [US, EU, AP];

/// Drops `table/key` from the stopped `region`'s data directory as a damaged disk would: a
/// state machine rebuilt on the directory (as `leader::node` does) forgets it, and its
/// checkpoint writes that down.
fn lose_key(c: &Cluster, region: &str, table: &str, key: &[u8]) {
    let config = c.config();
    let opened = Store::open(&c.dir().join("data").join(region), &config.cluster, region).unwrap();
    let peers: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != region).collect();
    let opts = Options {
        cluster: config.cluster.clone(),
        tables: config.tables.clone(),
        ..testkit::options(region, opened.replica, &peers)
    };
    let mut replica = Replica::new(opts, &Registry::with_builtins(), opened.recovered).unwrap();
    opened.store.replay(|chunk| replica.replay(chunk)).unwrap();
    assert!(
        replica.get(table, key).is_some(),
        "{region} has {table}/{key:?}"
    );
    replica.unsafe_set_key_state(table, key, None);
    let now = Time {
        wall_ms: 1_700_000_000_000,
        mono_ms: 1,
    };
    let mut out = Vec::new();
    replica.handle(now, Event::Tick, &mut out);
    let persisted: Vec<_> = out
        .into_iter()
        .filter_map(|e| match e {
            Effect::Persist(batch) => Some(batch),
            _ => None,
        })
        .collect();
    assert_eq!(persisted.len(), 1, "one checkpoint");
    for batch in persisted {
        opened.store.persist(batch).unwrap();
    }
}

async fn get<T: serde::de::DeserializeOwned>(url: String) -> T {
    let resp = reqwest::get(&url).await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn metric(c: &Cluster, region: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", c.api_url(region)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("meridian_{name}_total{{region=\"{region}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{region} has no {prefix}: {text}"))
        .parse()
        .unwrap()
}

/// `POST /v1/repair` at `region`: what `meridian repair -r REGION` calls.
async fn repair(c: &Cluster, region: &str) -> RepairReport {
    reqwest::Client::new()
        .post(format!("{}/v1/repair", c.api_url(region)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn http_digests(c: &Cluster) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for region in REGIONS {
        let d: Digest = get(format!("{}/v1/status/digest", c.api_url(region))).await;
        all.insert(d.digest);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lost_from_one_disk_is_found_by_meridian_repair_reported_and_repaired() {
    let cluster = Cluster::builder(&REGIONS).start().await;
    cluster
        .run(async |c| {
            c.wait_connected().await;
            for (i, region) in REGIONS.iter().cycle().take(60).enumerate() {
                c.put(region, "default", &format!("k{i}"), &format!("v{i}"))
                    .await;
            }
            c.wait_converged().await;
            c.stop(EU).await;
            lose_key(c, EU, "default", b"k7");
            c.restart(EU).await;
            c.wait_connected().await;
            assert_eq!(http_digests(c).await.len(), 2, "eu-west lost a key");
            let report = repair(c, US).await;
            assert_eq!(report.peers, [AP, EU]);
            assert_eq!(report.rounds, 2, "{report:?}");
            assert_eq!(report.diverged, 1, "{report:?}");
            assert_eq!(report.keys, ["default/k7"]);
            wait_until(
                "every region to hold the same data again",
                async || match http_digests(c).await.len() {
                    1 => Ok(()),
                    n => Err(format!("{n} distinct digests")),
                },
            )
            .await;
            assert_eq!(
                c.read(EU, "default", "k7").await.resolved,
                conflict::Resolved::Value(b"v7".to_vec())
            );
            assert_eq!(metric(c, US, "anti_entropy_diverged_keys").await, 1);
            assert_eq!(metric(c, EU, "anti_entropy_repaired_keys").await, 1);
            assert_eq!(metric(c, AP, "anti_entropy_diverged_keys").await, 0);
            let status: Status = get(format!("{}/v1/status", c.api_url(EU))).await;
            let found = &status.alarms.divergence;
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!((found[0].region.as_str(), found[0].repaired), (US, 1));
            assert_eq!(found[0].keys, ["default/k7"]);
            // A second run finds nothing.
            let again = repair(c, EU).await;
            assert_eq!((again.rounds, again.diverged), (2, 0), "{again:?}");
        })
        .await;
}
