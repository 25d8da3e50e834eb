//! Real processes (testing tier 4, issue 4): three `meridian run` processes on localhost take
//! writes through the HTTP API from every region; one region is killed with SIGKILL in the
//! middle of the load, the others keep taking writes, the killed region is restarted from the
//! same data directory on the same ports and takes writes again. It stays down longer than the
//! idle timeout, so the live regions see its links time out under load. Then:
//!
//! - right after the restart, before any catch-up could matter, every write the killed region
//!   had acknowledged is readable on it (acknowledged means durable: a region ignores its own
//!   writes coming back from peers, so only its disk can provide them);
//! - once the load stops, every region's applied vector reaches every acknowledged write and
//!   all applied vectors are equal, within a bound;
//! - every acknowledged write is then readable, with its value, in every region.
//!
//! Writes that the killed region never answered (in flight at the SIGKILL, or refused while it
//! was down) were not acknowledged and are not required; they are counted and reported, with
//! how many of the in-flight ones turned out durable anyway. Writes to live regions must never
//! fail. Keys are distinct (each is written once), so "present" means exactly the value written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, applied, highest_acked, http_client, status};
use crate::load;
use tokio::task::JoinSet;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The region that is killed and restarted.
const VICTIM: usize = 1;
/// Concurrent writers per region, each with at most one PUT in flight.
const WRITERS_PER_REGION: usize = 3;
/// The victim is killed once it has acknowledged this many writes.
const ACKS_BEFORE_KILL: usize = 200;
/// While the victim is down, each live region acknowledges at least this many more writes…
const ACKS_WHILE_DOWN: usize = 150;
/// …and the victim stays down at least this long: longer than the idle timeout (1 s, see
/// `harness`), so the live regions' links to it time out while they are under load. (That path
/// once overflowed the driver's stack: a failed send was fed back at once, and the resend it
/// caused failed again, without bound.)
const MIN_DOWNTIME: Duration = Duration::from_millis(1500);
/// After its restart the victim acknowledges at least this many more writes before the load
/// stops.
const ACKS_AFTER_RESTART: usize = 150;
/// Pause of a writer after a failed request, so a dead region is not hammered in a busy loop.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(10);
/// Concurrent reads when checking that writes are present.
const READERS: usize = 4;

/// Bounds on each phase; reaching one fails the test.
const START_BOUND: Duration = Duration::from_secs(15);
const PHASE_BOUND: Duration = Duration::from_secs(15);

/// A write a region acknowledged with 200: durable there, with its dot.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    replica: String,
    seq: u64,
}

type Put = load::Put<Ack>;
type Load = load::Load<Ack>;

async fn put(client: &reqwest::Client, api: &str, key: &str, value: &str) -> Put {
    let req = client
        .put(format!("{api}/v1/kv/default/{key}"))
        .body(value.to_owned());
    let (code, body) = match load::send_json(req).await {
        Ok(reply) => reply,
        Err(put) => return put,
    };
    if !code.is_success() {
        return Put::Rejected(format!("{code}: {body}"));
    }
    match (body["dot"]["replica"].as_str(), body["dot"]["seq"].as_u64()) {
        (Some(replica), Some(seq)) => Put::Acked(Ack {
            key: key.to_owned(),
            value: value.to_owned(),
            replica: replica.to_owned(),
            seq,
        }),
        _ => Put::Rejected(format!("{code} without a dot: {body}")),
    }
}

/// Client load: [`WRITERS_PER_REGION`] writers per region, each writing distinct keys until
/// stopped.
fn start_load(client: &reqwest::Client, cluster: &Cluster) -> Load {
    Load::start(
        &REGIONS,
        WRITERS_PER_REGION,
        FAILED_WRITE_PAUSE,
        PHASE_BOUND,
        |r, w| {
            let (client, region) = (client.clone(), &cluster.regions[r]);
            let (api, name) = (region.api.clone(), region.name.clone());
            move |i| {
                let key = format!("r{r}-w{w}-{i}");
                let value = format!("{key}@{name}");
                let (client, api) = (client.clone(), api.clone());
                load::attempt(key, value, move |k, v| async move {
                    put(&client, &api, &k, &v).await
                })
            }
        },
    )
}

/// The writes of `acks` that region `api` does not return with their value: `(key, what the
/// read got)`.
async fn missing(client: &reqwest::Client, api: &str, acks: &[Ack]) -> Vec<(String, String)> {
    let acks: Arc<[Ack]> = acks.into();
    let mut readers = JoinSet::new();
    for part in 0..READERS {
        let (client, api, acks) = (client.clone(), api.to_owned(), Arc::clone(&acks));
        readers.spawn(async move {
            let mut missing = Vec::new();
            for ack in acks.iter().skip(part).step_by(READERS) {
                let got = match client
                    .get(format!("{api}/v1/kv/default/{}", ack.key))
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let code = resp.status();
                        match resp.text().await {
                            Ok(text) if code.is_success() && text == ack.value => continue,
                            Ok(text) => format!("{code}: {text}"),
                            Err(e) => format!("{code}, body unreadable: {e}"),
                        }
                    }
                    Err(e) => format!("request failed: {e}"),
                };
                missing.push((ack.key.clone(), got));
            }
            missing
        });
    }
    let mut all = Vec::new();
    while let Some(part) = readers.join_next().await {
        all.extend(part.expect("a reader task panicked"));
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_write() {
    let t0 = Instant::now();
    let client = http_client();
    let mut cluster = Cluster::start(&REGIONS);
    let victim = cluster.regions[VICTIM].name.clone();
    let start_deadline = Instant::now() + START_BOUND;
    for i in 0..REGIONS.len() {
        cluster.wait_healthy(&client, i, start_deadline).await;
    }
    cluster.wait_replicating(&client, start_deadline).await;
    let victim_replica = status(&client, &cluster.regions[VICTIM].api)
        .await
        .expect("status of the victim")
        .replica;
    let victim_replica = format!("{victim_replica:#}");
    let t_ready = t0.elapsed();

    // Load on every region until the victim has acknowledged enough writes, then SIGKILL it.
    let load = start_load(&client, &cluster);
    load.wait_acked(&[(VICTIM, ACKS_BEFORE_KILL)], "before the kill")
        .await;
    cluster.sigkill(VICTIM).await;
    let killed = Instant::now();
    let acked_before_kill = load.acked(VICTIM);

    // The live regions keep taking writes while the victim is down.
    let live: Vec<usize> = (0..REGIONS.len()).filter(|&r| r != VICTIM).collect();
    let targets: Vec<(usize, usize)> = live
        .iter()
        .map(|&r| (r, load.acked(r) + ACKS_WHILE_DOWN))
        .collect();
    load.wait_acked(&targets, "while the victim is down").await;
    tokio::time::sleep(MIN_DOWNTIME.saturating_sub(killed.elapsed())).await;

    // Restart from the same data directory on the same ports.
    let restarted = Instant::now();
    let downtime = restarted - killed;
    cluster.spawn(VICTIM);
    cluster
        .wait_healthy(&client, VICTIM, restarted + START_BOUND)
        .await;
    let restart_to_healthy = restarted.elapsed();

    // Durability: everything the victim acknowledged so far (all of its first life, and maybe
    // a few writes of its second) is on it now.
    let victim_acks = load.acks_of(VICTIM);
    let victim_api = cluster.regions[VICTIM].api.clone();
    let st = status(&client, &victim_api)
        .await
        .expect("status of the restarted victim");
    assert_eq!(
        format!("{:#}", st.replica),
        victim_replica,
        "the restarted victim must keep its replica id (same data directory)"
    );
    let own_applied = applied(&st).get(&victim_replica).map_or(0, |(_, s)| *s);
    let own_acked = highest_acked(victim_acks.iter().map(|a| (a.replica.as_str(), a.seq)))
        .get(&victim_replica)
        .copied()
        .unwrap_or(0);
    assert!(
        own_applied >= own_acked,
        "{victim} restarted with its own writes applied up to seq {own_applied}, but it had \
         acknowledged seq {own_acked}: acknowledged writes were lost"
    );
    let lost = missing(&client, &victim_api, &victim_acks).await;
    assert!(
        lost.is_empty(),
        "{victim} lost {} of its {} acknowledged writes across SIGKILL and restart, e.g. {:?}",
        lost.len(),
        victim_acks.len(),
        &lost[..lost.len().min(10)]
    );
    let checked_after_restart = victim_acks.len();
    cluster
        .wait_replicating(&client, restarted + START_BOUND)
        .await;
    let restart_to_replicating = restarted.elapsed();

    // The restarted victim takes writes again; then the load stops.
    load.wait_acked(
        &[(VICTIM, load.acked(VICTIM) + ACKS_AFTER_RESTART)],
        "after the restart",
    )
    .await;
    let outcomes = load.stop().await;
    let load_stopped = Instant::now();

    // Convergence: every applied vector reaches every acknowledged write, all equal.
    let all_acks: Vec<&Ack> = outcomes.iter().flat_map(|o| &o.acked).collect();
    let expected = highest_acked(all_acks.iter().map(|a| (a.replica.as_str(), a.seq)));
    let common = cluster.wait_converged(&client, &expected).await;
    let convergence = load_stopped.elapsed();

    // Every acknowledged write is readable, with its value, in every region.
    let acks: Vec<Ack> = all_acks.into_iter().cloned().collect();
    for r in &cluster.regions {
        let gone = missing(&client, &r.api, &acks).await;
        assert!(
            gone.is_empty(),
            "{} lacks {} of {} acknowledged writes after convergence, e.g. {:?}",
            r.name,
            gone.len(),
            acks.len(),
            &gone[..gone.len().min(10)]
        );
    }
    let verified = t0.elapsed();

    // Unanswered writes are not required; count those that became durable anyway.
    let in_flight: Vec<Ack> = outcomes[VICTIM]
        .unanswered
        .iter()
        .map(|(key, value)| Ack {
            key: key.clone(),
            value: value.clone(),
            replica: String::new(),
            seq: 0,
        })
        .collect();
    let durable_anyway = in_flight.len() - missing(&client, &victim_api, &in_flight).await.len();

    for (r, o) in outcomes.iter().enumerate() {
        assert!(
            o.rejected.is_empty(),
            "{} answered writes with errors: {:?}",
            REGIONS[r],
            &o.rejected[..o.rejected.len().min(10)]
        );
        if r != VICTIM {
            assert!(
                o.refused == 0 && o.unanswered.is_empty(),
                "writes to live region {} failed ({} refused, {} unanswered): a dead peer must \
                 not stop a region from taking writes",
                REGIONS[r],
                o.refused,
                o.unanswered.len()
            );
        }
    }

    let exits = cluster.shutdown().await;
    let total = t0.elapsed();
    eprintln!(
        "processes: ready in {t_ready:?}; victim {victim} killed after {acked_before_kill} acks, \
         down {downtime:?}, healthy {restart_to_healthy:?} and replicating \
         {restart_to_replicating:?} after restart, {checked_after_restart} of its acks readable \
         right after restart"
    );
    for (r, o) in outcomes.iter().enumerate() {
        eprintln!(
            "processes: {}: {} acknowledged, {} refused, {} unanswered",
            REGIONS[r],
            o.acked.len(),
            o.refused,
            o.unanswered.len()
        );
    }
    eprintln!(
        "processes: {} unanswered at the victim, {durable_anyway} of them durable anyway; \
         converged {convergence:?} after the load stopped; applied {common:?}; verified at \
         {verified:?}; total {total:?}; exits {exits:?}",
        in_flight.len()
    );
    for (name, exit) in &exits {
        assert!(
            exit.is_some_and(|s| s.success()),
            "{name} did not stop cleanly when its stdin closed: {exit:?}\n{}",
            cluster.log_tails()
        );
    }
}
