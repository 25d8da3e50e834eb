//! Chaos over real processes (testing tier 4, issue 6 §4): three `meridian run
//! --simulate-links` processes on localhost take writes through the HTTP API from every region
//! while a seeded schedule SIGKILLs regions, restarts them from their data directories, and cuts
//! and heals links through the impairment layer (`/v1/admin/links`). Then everything is healed
//! and restarted, the load stops, and the regions must converge with no acknowledged write lost.
//!
//! # The schedule
//! A seed (`MERIDIAN_CHAOS_SEED`, decimal or `0x` hex; a fixed default otherwise) draws 8–12
//! steps, each after a pause of 0.3–1.3 s: `kill` (SIGKILL; at most one region is down at a
//! time), `restart` (same data directory and ports; links cut before the kill are cut again),
//! `partition` (both regions block each other) and `heal`. The seed and a replay command are
//! printed first. At least one kill is a `kill-after-one-ack`: the test writes a key with
//! durability `one` at a region that reaches a live peer, SIGKILLs that region as soon as the
//! write is acknowledged, and reads the write, while its origin is still down, at every region
//! the reply named in `durable_in` — together with every other `one` write that region had
//! acknowledged; a read there with the write's session token must be answered with it too.
//! Only the timing of the load is not decided by the seed.
//!
//! # The load
//! Two writers per region write without pause, each with its own seeded choices: 70 % distinct
//! keys (each written once), 30 % one of four hot keys shared by every writer (table `default`,
//! last-write-wins, so concurrent writes meet as conflicts); half with durability `local`, half
//! with `one` and a 1 s wait (a 202 after the wait is still a write committed at its origin).
//! Every acknowledged write is recorded with its dot, HLC, durability and `durable_in`.
//!
//! # The oracles
//! - After every restart the region's applied vector covers every write it had acknowledged.
//! - A `one` write answered 200 is durable in its origin and another region.
//! - After the heal, every region's applied vector is equal and covers every acknowledged write,
//!   within a bound.
//! - Every acknowledged distinct-key write is readable with its exact value in every region.
//! - Every hot key has the same sibling set (replica, seq, HLC, value) and causal context in
//!   every region — a digest comparison key by key — with the single sibling last-write-wins
//!   keeps; that sibling is a write the test sent (the acknowledged one with that dot, HLC and
//!   value, or one left unanswered), and it ranks at or above every acknowledged write to the key.
//! - Regions that were never killed never fail a write; no region answers a write with an error.
//! - The partitions fired: the impairment layers dropped packets on blocked links.
//!
//! Waits poll with deadlines that only matter on failure; nothing is retried.
//!
//! # Why one file of about 900 lines
//! The schedule, its generator and the run that plays it against real processes belong
//! together: a seed means a schedule only through all three.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, applied, highest_acked, http_client, status};
use crate::load;
use conflict::rng::SplitMix64 as Rng;
use serde_json::Value as Json;
use tokio::task::JoinSet;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The environment variable that chooses the seed.
const SEED_ENV: &str = "MERIDIAN_CHAOS_SEED";
/// The seed when [`SEED_ENV`] is not set.
const DEFAULT_SEED: u64 = 0x6d65_7269_6469_616e;
/// Fewest and most steps of a schedule.
const STEPS_MIN: u64 = 8;
const STEPS_MAX: u64 = 12;
/// Bounds of the pause before each step.
const PAUSE_MS_MIN: u64 = 300;
const PAUSE_MS_MAX: u64 = 1300;

/// Concurrent writers per region, each with at most one PUT in flight.
const WRITERS_PER_REGION: usize = 2;
/// Keys written by every writer, to make conflicts.
const HOT_KEYS: u64 = 4;
/// Share of writes that go to a hot key, in percent.
const HOT_PERCENT: u64 = 30;
/// Share of writes with durability `one`, in percent; the rest are `local`.
const ONE_PERCENT: u64 = 50;
/// How long a writer's `one` write waits for a second region before the 202.
const WRITER_ONE_TIMEOUT_MS: u64 = 1000;
/// How long the deliberate `one` write of a `kill-after-one-ack` step may wait: it is sent to
/// a region with a live, uncut link, so only a failure comes near this.
const DELIBERATE_ONE_TIMEOUT_MS: u64 = 20_000;
/// Pause of a writer after a failed request, so a dead region is not hammered in a busy loop.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(10);
/// After the final heal, every region acknowledges at least this many more writes before the
/// load stops.
const ACKS_AFTER_HEAL: usize = 20;
/// Concurrent reads when checking that writes are present.
const READERS: usize = 4;

/// Bounds on each phase; reaching one fails the test.
const START_BOUND: Duration = Duration::from_secs(20);
const PHASE_BOUND: Duration = Duration::from_secs(20);

fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Err(_) => DEFAULT_SEED,
        Ok(text) => {
            let t = text.trim();
            let parsed = match t.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{SEED_ENV}={text:?} is not a u64 ({e})"))
        }
    }
}

/// One fault of the schedule. Regions are indices into [`REGIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// SIGKILL the region.
    Kill(usize),
    /// Write with durability `one` at the region, SIGKILL it as soon as the write is
    /// acknowledged, and read the write at the other regions named in `durable_in`.
    KillAfterOneAck(usize),
    /// Start the killed region again from its data directory.
    Restart(usize),
    /// Cut the link between two regions at both ends.
    Partition(usize, usize),
    /// Heal a cut link at both ends.
    Heal(usize, usize),
}

impl Step {
    fn kind(self) -> &'static str {
        match self {
            Step::Kill(_) => "kill",
            Step::KillAfterOneAck(_) => "kill-after-one-ack",
            Step::Restart(_) => "restart",
            Step::Partition(..) => "partition",
            Step::Heal(..) => "heal",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::Kill(r) | Step::KillAfterOneAck(r) | Step::Restart(r) => {
                write!(f, "{} {}", self.kind(), REGIONS[r])
            }
            Step::Partition(a, b) | Step::Heal(a, b) => {
                write!(f, "{} {}/{}", self.kind(), REGIONS[a], REGIONS[b])
            }
        }
    }
}

/// A link between two regions, smaller index first.
fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The faults in force: the one region that is down, if any, and the cut links.
#[derive(Debug, Default, Clone)]
struct Faults {
    down: Option<usize>,
    cuts: BTreeSet<(usize, usize)>,
}

impl Faults {
    fn up(&self, r: usize) -> bool {
        self.down != Some(r)
    }

    /// Whether `r` has an uncut link to a live peer, so that a `one` write there is answered.
    fn reaches_a_peer(&self, r: usize) -> bool {
        (0..REGIONS.len()).any(|p| p != r && self.up(p) && !self.cuts.contains(&pair(r, p)))
    }

    /// The steps possible now; a kill is drawn as [`Step::Kill`].
    fn options(&self) -> Vec<Step> {
        let n = REGIONS.len();
        let mut options = match self.down {
            None => (0..n).map(Step::Kill).collect(),
            Some(r) => vec![Step::Restart(r)],
        };
        for a in 0..n {
            for b in a + 1..n {
                if self.cuts.contains(&(a, b)) {
                    options.push(Step::Heal(a, b));
                } else if self.up(a) && self.up(b) {
                    options.push(Step::Partition(a, b));
                }
            }
        }
        options
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Kill(r) | Step::KillAfterOneAck(r) => {
                assert!(self.down.is_none(), "at most one region is down");
                self.down = Some(r);
            }
            Step::Restart(r) => {
                assert_eq!(self.down, Some(r), "only a down region restarts");
                self.down = None;
            }
            Step::Partition(a, b) => assert!(self.cuts.insert(pair(a, b))),
            Step::Heal(a, b) => assert!(self.cuts.remove(&pair(a, b))),
        }
    }
}

/// Draws the schedule of `seed`: pauses and steps. Redraws (from the same generator, so still
/// one schedule per seed) until it holds a `kill-after-one-ack`, a restart and a partition.
fn plan(seed: u64) -> Vec<(Duration, Step)> {
    let mut rng = Rng::new(seed);
    loop {
        let n = rng.between(STEPS_MIN, STEPS_MAX);
        let mut faults = Faults::default();
        let mut steps = Vec::new();
        let mut deliberate = false;
        for _ in 0..n {
            let options = faults.options();
            let mut step = *rng.pick(&options);
            // The first kill that can be one is; later ones half of the time.
            if let Step::Kill(r) = step
                && faults.reaches_a_peer(r)
                && (!deliberate || rng.percent(50))
            {
                step = Step::KillAfterOneAck(r);
                deliberate = true;
            }
            faults.apply(step);
            let pause = Duration::from_millis(rng.between(PAUSE_MS_MIN, PAUSE_MS_MAX));
            steps.push((pause, step));
        }
        let has = |kind: &str| steps.iter().any(|(_, s)| s.kind() == kind);
        if has("kill-after-one-ack") && has("restart") && has("partition") {
            return steps;
        }
    }
}

/// The durability a write asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Local,
    One,
}

/// A write a region acknowledged: 200, or 202 for a `one` write whose wait timed out (it is
/// committed, and durable, at its origin).
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    /// The region it was sent to.
    region: usize,
    durability: Durability,
    code: u16,
    /// The dot's replica id, as the API shows it.
    replica: String,
    seq: u64,
    hlc: String,
    durable_in: Vec<String>,
    /// The session token of the reply (`x-meridian-session`): it covers the write.
    session: String,
}

type Put = load::Put<Ack>;
type Load = load::Load<Ack>;

async fn put(
    client: &reqwest::Client,
    api: &str,
    region: usize,
    (key, value): (&str, &str),
    durability: Durability,
    one_timeout_ms: u64,
) -> Put {
    let url = match durability {
        Durability::Local => format!("{api}/v1/kv/default/{key}?durability=local"),
        Durability::One => {
            format!("{api}/v1/kv/default/{key}?durability=one&timeout_ms={one_timeout_ms}")
        }
    };
    let (code, body) = match load::send_json(client.put(url).body(value.to_owned())).await {
        Ok((code, body)) => (code.as_u16(), body),
        Err(put) => return put,
    };
    let waited = durability == Durability::One;
    if !(code == 200 || (code == 202 && waited)) {
        return Put::Rejected(format!("{key}: {code}: {body}"));
    }
    let durable_in: Option<Vec<String>> = body["durable_in"].as_array().map(|a| {
        a.iter()
            .map(|r| r.as_str().unwrap_or_default().to_owned())
            .collect()
    });
    match (
        body["dot"]["replica"].as_str(),
        body["dot"]["seq"].as_u64(),
        body["hlc"].as_str(),
        durable_in,
        body["session"].as_str(),
    ) {
        (Some(replica), Some(seq), Some(hlc), Some(durable_in), Some(session)) => Put::Acked(Ack {
            key: key.to_owned(),
            value: value.to_owned(),
            region,
            durability,
            code,
            replica: replica.to_owned(),
            seq,
            hlc: hlc.to_owned(),
            durable_in,
            session: session.to_owned(),
        }),
        _ => Put::Rejected(format!(
            "{key}: {code} without dot, hlc, durable_in or session: {body}"
        )),
    }
}

/// Client load on every region until stopped; see the module documentation.
fn start_load(client: &reqwest::Client, cluster: &Cluster, seed: u64) -> Load {
    Load::start(
        &REGIONS,
        WRITERS_PER_REGION,
        FAILED_WRITE_PAUSE,
        PHASE_BOUND,
        |r, w| {
            let (client, api) = (client.clone(), cluster.regions[r].api.clone());
            let mut rng = Rng::new(
                seed ^ (0x1000 * (r as u64 + 1) + w as u64).wrapping_mul(0x5851_f42d_4c95_7f2d),
            );
            move |i| {
                let key = if rng.percent(HOT_PERCENT) {
                    format!("hot-{}", rng.below(HOT_KEYS))
                } else {
                    format!("d-r{r}-w{w}-{i}")
                };
                let durability = if rng.percent(ONE_PERCENT) {
                    Durability::One
                } else {
                    Durability::Local
                };
                let value = format!("{key}={}/w{w}/{i}", REGIONS[r]);
                let (client, api) = (client.clone(), api.clone());
                load::attempt(key, value, move |k, v| async move {
                    put(
                        &client,
                        &api,
                        r,
                        (&k, &v),
                        durability,
                        WRITER_ONE_TIMEOUT_MS,
                    )
                    .await
                })
            }
        },
    )
}

/// Reads `key` at `api`, with a session token if given: the status and the body as text.
async fn get(
    client: &reqwest::Client,
    api: &str,
    key: &str,
    session: Option<&str>,
) -> Result<(u16, String), String> {
    let mut req = client.get(format!("{api}/v1/kv/default/{key}"));
    if let Some(token) = session {
        req = req.header("x-meridian-session", token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let code = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{code}, body unreadable: {e}"))?;
    Ok((code, text))
}

/// The `(key, value)` pairs that region `api` does not return exactly: `(key, what the read
/// got)`, sorted.
async fn not_readable(
    client: &reqwest::Client,
    api: &str,
    expected: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let expected: Arc<[(String, String)]> = expected.into();
    let mut readers = JoinSet::new();
    for part in 0..READERS {
        let (client, api, expected) = (client.clone(), api.to_owned(), Arc::clone(&expected));
        readers.spawn(async move {
            let mut wrong = Vec::new();
            for (key, value) in expected.iter().skip(part).step_by(READERS) {
                match get(&client, &api, key, None).await {
                    Ok((200, text)) if &text == value => {}
                    Ok((code, text)) => wrong.push((key.clone(), format!("{code}: {text}"))),
                    Err(e) => wrong.push((key.clone(), e)),
                }
            }
            wrong
        });
    }
    let mut all = Vec::new();
    while let Some(part) = readers.join_next().await {
        all.extend(part.expect("a reader task panicked"));
    }
    all.sort();
    all
}

fn is_hot(key: &str) -> bool {
    key.starts_with("hot-")
}

/// The order of an HLC as the API prints it (`2026-11-27T11:03:36.123Z+5`): the fixed-width
/// time sorts as text, then the logical counter as a number.
fn hlc_order(hlc: &str) -> (String, u64) {
    let (time, logical) = hlc
        .rsplit_once('+')
        .unwrap_or_else(|| panic!("HLC {hlc:?} has no logical part"));
    let logical = logical
        .parse()
        .unwrap_or_else(|e| panic!("HLC {hlc:?}: logical part: {e}"));
    (time.to_owned(), logical)
}

/// Counts of what the schedule did, by step kind.
type StepCounts = BTreeMap<&'static str, usize>;

/// The test's view of the deployment while the schedule runs.
struct Chaos {
    cluster: Cluster,
    load: Load,
    faults: Faults,
    /// Replica id of each region, as its first status showed it.
    replicas: Vec<String>,
    /// The deliberate `one` writes of `kill-after-one-ack` steps.
    deliberate: Vec<Ack>,
    /// How many earlier `one` writes of killed regions were read at their other regions while
    /// the origin was down.
    one_acks_read_while_down: usize,
    /// Packets dropped by blocked links, summed over every process that has ended (read just
    /// before it is killed or stopped).
    blocked_packets: u64,
    t0: Instant,
}

impl Chaos {
    async fn run(&mut self, n: usize, step: Step) {
        eprintln!(
            "chaos: {:>6.2}s step {n}: {step}",
            self.t0.elapsed().as_secs_f64()
        );
        // A new client per step: no pooled connection to a process killed since.
        let client = http_client();
        match step {
            Step::Kill(r) => {
                self.blocked_packets += self.cluster.blocked_packets(&client, r).await;
                self.cluster.sigkill(r).await;
            }
            Step::KillAfterOneAck(r) => {
                self.blocked_packets += self.cluster.blocked_packets(&client, r).await;
                self.kill_after_one_ack(&client, r).await;
            }
            Step::Restart(r) => self.restart(&client, r).await,
            Step::Partition(a, b) => {
                self.cluster.block_link(&client, a, b).await;
                self.cluster.block_link(&client, b, a).await;
            }
            Step::Heal(a, b) => {
                for (x, y) in [(a, b), (b, a)] {
                    if self.faults.up(x) {
                        self.cluster.heal_link(&client, x, y).await;
                    }
                }
            }
        }
        self.faults.apply(step);
    }

    /// See [`Step::KillAfterOneAck`].
    async fn kill_after_one_ack(&mut self, client: &reqwest::Client, r: usize) {
        let key = format!("deliberate-{}", self.deliberate.len());
        let value = format!("{key}={}", REGIONS[r]);
        let api = self.cluster.regions[r].api.clone();
        let ack = match put(
            client,
            &api,
            r,
            (&key, &value),
            Durability::One,
            DELIBERATE_ONE_TIMEOUT_MS,
        )
        .await
        {
            Put::Acked(ack) if ack.code == 200 => ack,
            Put::Acked(ack) => panic!(
                "{}: a `one` write with an uncut link to a live peer was not durable in a \
                 second region within {DELIBERATE_ONE_TIMEOUT_MS} ms: {ack:?}",
                REGIONS[r]
            ),
            Put::Refused | Put::Unanswered => panic!("{}: the `one` write failed", REGIONS[r]),
            Put::Rejected(why) => panic!("{}: the `one` write was rejected: {why}", REGIONS[r]),
        };
        self.cluster.sigkill(r).await;
        check_one_ack(&ack);
        self.deliberate.push(ack.clone());
        // A region the write is durable in has applied every earlier write of its origin too,
        // so a read with the write's session token is answered at once, with the write.
        for p in ack.durable_in.iter().filter(|p| *p != REGIONS[r]) {
            let api = &self.cluster.regions[region_index(p)].api;
            let got = get(client, api, &ack.key, Some(&ack.session)).await;
            assert!(
                got == Ok((200, ack.value.clone())),
                "{} is down; a read of {} at {p} with the write's session token got {got:?} \
                 (the write: {ack:?})",
                REGIONS[r],
                ack.key
            );
        }

        // While the origin is down: this write, and every earlier `one` write it acknowledged
        // with 200 on a distinct key, is readable at each other region it was durable in.
        let mut by_region: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
        let earlier = self.load.acks_of(r);
        for a in earlier
            .iter()
            .filter(|a| a.durability == Durability::One && a.code == 200 && !is_hot(&a.key))
            .chain([&ack])
        {
            for p in a.durable_in.iter().filter(|p| *p != REGIONS[r]) {
                let p = region_index(p);
                by_region
                    .entry(p)
                    .or_default()
                    .push((a.key.clone(), a.value.clone()));
            }
        }
        for (p, expected) in by_region {
            let count = expected.len();
            let wrong = not_readable(client, &self.cluster.regions[p].api, expected).await;
            assert!(
                wrong.is_empty(),
                "{} is down; {} lacks {} of the {count} `one` writes of {} that were acknowledged \
                 as durable there, e.g. {:?} (the deliberate write: {ack:?})",
                REGIONS[r],
                REGIONS[p],
                wrong.len(),
                REGIONS[r],
                &wrong[..wrong.len().min(10)]
            );
            self.one_acks_read_while_down += count;
        }
    }

    /// Starts region `r` again, cuts again the links it had cut before it was killed, and
    /// checks that it kept every write it acknowledged.
    async fn restart(&mut self, client: &reqwest::Client, r: usize) {
        let before: Vec<Ack> = self
            .load
            .acks_of(r)
            .into_iter()
            .chain(self.deliberate.iter().filter(|a| a.region == r).cloned())
            .collect();
        self.cluster.spawn(r);
        self.cluster
            .wait_healthy(client, r, Instant::now() + START_BOUND)
            .await;
        for &(a, b) in &self.faults.cuts {
            if a == r || b == r {
                self.cluster.block_link(client, r, a + b - r).await;
            }
        }
        let st = status(client, &self.cluster.regions[r].api)
            .await
            .expect("status of the restarted region");
        let replica = &self.replicas[r];
        assert_eq!(
            &format!("{:#}", st.replica),
            replica,
            "{} must keep its replica id across a restart (same data directory)",
            REGIONS[r]
        );
        let own_applied = applied(&st).get(replica).map_or(0, |(_, s)| *s);
        let own_acked = highest_acked(before.iter().map(|a| (a.replica.as_str(), a.seq)))
            .get(replica)
            .copied()
            .unwrap_or(0);
        assert!(
            own_applied >= own_acked,
            "{} restarted with its own writes applied up to seq {own_applied}, but it had \
             acknowledged seq {own_acked}: acknowledged writes were lost",
            REGIONS[r]
        );
    }

    /// Restarts the region that is down, heals every cut, waits for every link to replicate
    /// and for every region to take writes again.
    async fn settle(&mut self) {
        let client = http_client();
        if let Some(r) = self.faults.down {
            eprintln!(
                "chaos: {:>6.2}s final: restart {}",
                self.t0.elapsed().as_secs_f64(),
                REGIONS[r]
            );
            self.restart(&client, r).await;
            self.faults.apply(Step::Restart(r));
        }
        for (a, b) in std::mem::take(&mut self.faults.cuts) {
            eprintln!(
                "chaos: {:>6.2}s final: heal {}/{}",
                self.t0.elapsed().as_secs_f64(),
                REGIONS[a],
                REGIONS[b]
            );
            self.cluster.heal_link(&client, a, b).await;
            self.cluster.heal_link(&client, b, a).await;
        }
        self.cluster
            .wait_replicating(&client, Instant::now() + START_BOUND)
            .await;
        let targets: Vec<(usize, usize)> = (0..REGIONS.len())
            .map(|r| (r, self.load.acked(r) + ACKS_AFTER_HEAL))
            .collect();
        self.load.wait_acked(&targets, "after the final heal").await;
    }
}

fn region_index(name: &str) -> usize {
    REGIONS
        .iter()
        .position(|r| *r == name)
        .unwrap_or_else(|| panic!("unknown region {name:?}"))
}

/// A `one` write answered 200 is durable at its origin and at least one other region.
fn check_one_ack(ack: &Ack) {
    if ack.durability != Durability::One || ack.code != 200 {
        return;
    }
    let origin = REGIONS[ack.region];
    assert!(
        ack.durable_in.iter().any(|r| r == origin) && ack.durable_in.iter().any(|r| r != origin),
        "a `one` write answered 200 must be durable at its origin and another region: {ack:?}"
    );
}

/// `GET ?siblings=true` of a hot key at `api`: the status and the JSON body.
async fn siblings(client: &reqwest::Client, api: &str, key: &str) -> (u16, Json) {
    let resp = client
        .get(format!("{api}/v1/kv/default/{key}?siblings=true"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{api}: reading {key} with siblings: {e}"));
    let code = resp.status().as_u16();
    let body = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{api}: reading {key} with siblings: {code}, {e}"));
    (code, body)
}

/// Checks one hot key after convergence: the same siblings and context everywhere, one
/// sibling (last-write-wins), a write the test sent, ranked at or above every acknowledged
/// write to the key. Returns the number of acknowledged writes to it.
async fn check_hot_key(
    client: &reqwest::Client,
    cluster: &Cluster,
    key: &str,
    acks: &[&Ack],
    unanswered: &BTreeSet<&str>,
) -> usize {
    let mut views = Vec::new();
    for r in &cluster.regions {
        let (code, body) = siblings(client, &r.api, key).await;
        let digest = serde_json::json!({
            "code": code,
            "resolved": body["resolved"],
            "siblings": body["siblings"],
            "context": body["context"],
        });
        views.push((r.name.as_str(), digest));
    }
    for w in views.windows(2) {
        assert_eq!(
            w[0].1, w[1].1,
            "hot key {key} differs between {} and {} after convergence",
            w[0].0, w[1].0
        );
    }
    let view = &views[0].1;
    let sibs = view["siblings"].as_array().cloned().unwrap_or_default();
    if acks.is_empty() && sibs.is_empty() {
        return 0;
    }
    assert!(
        view["code"] == 200 && sibs.len() == 1,
        "hot key {key}: last-write-wins must leave exactly one sibling with a value: {view}"
    );
    let s = &sibs[0];
    let (value, replica, seq, hlc) = (
        s["value"].as_str().unwrap_or_default(),
        s["replica"].as_str().unwrap_or_default(),
        s["seq"].as_u64().unwrap_or_default(),
        s["hlc"].as_str().unwrap_or_default(),
    );
    assert_eq!(
        view["resolved"]["value"].as_str(),
        Some(value),
        "hot key {key}: the resolved value is not the sibling's: {view}"
    );
    match acks.iter().find(|a| a.value == value) {
        Some(a) => assert!(
            a.replica == replica && a.seq == seq && a.hlc == hlc,
            "hot key {key}: the winner {s} has the value of acknowledged write {a:?} but \
             another dot or HLC"
        ),
        None => assert!(
            unanswered.contains(value),
            "hot key {key}: the winner {s} is no write the test sent"
        ),
    }
    let win = (hlc_order(hlc), seq);
    for a in acks {
        let theirs = (hlc_order(&a.hlc), a.seq);
        // Equal HLCs are ordered by replica id, then seq. A full hyphenated UUID sorts as text
        // like the id's bytes; a short form (the id's tail) does not, so a tie between two
        // replicas shown that way is not compared.
        let comparable = a.replica == replica || (a.replica.len() == 36 && replica.len() == 36);
        let outranked = theirs.0 > win.0
            || (theirs.0 == win.0
                && comparable
                && (a.replica.as_str(), theirs.1) > (replica, win.1));
        assert!(
            !outranked,
            "hot key {key}: the winner {s} ranks below acknowledged write {a:?}"
        );
    }
    acks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_restarts_and_partitions_lose_no_acknowledged_write() {
    let t0 = Instant::now();
    let seed = seed();
    let schedule = plan(seed);
    eprintln!("chaos: seed {seed} ({} steps)", schedule.len());
    eprintln!(
        "chaos: replay with `{SEED_ENV}={seed} cargo test -p meridian --test processes -- chaos:: --nocapture`"
    );
    for (n, (pause, step)) in schedule.iter().enumerate() {
        eprintln!("chaos: plan {n}: after {pause:?}, {step}");
    }

    let client = http_client();
    let mut cluster = Cluster::start_simulated(&REGIONS);
    let deadline = Instant::now() + START_BOUND;
    for i in 0..REGIONS.len() {
        cluster.wait_healthy(&client, i, deadline).await;
    }
    cluster.wait_replicating(&client, deadline).await;
    let mut replicas = Vec::new();
    for r in &cluster.regions {
        let st = status(&client, &r.api).await.expect("status at start");
        replicas.push(format!("{:#}", st.replica));
    }
    let t_ready = t0.elapsed();

    let load = start_load(&client, &cluster, seed);
    let mut chaos = Chaos {
        cluster,
        load,
        faults: Faults::default(),
        replicas,
        deliberate: Vec::new(),
        one_acks_read_while_down: 0,
        blocked_packets: 0,
        t0,
    };
    let mut counts = StepCounts::new();
    for (n, (pause, step)) in schedule.iter().enumerate() {
        tokio::time::sleep(*pause).await;
        chaos.run(n, *step).await;
        *counts.entry(step.kind()).or_default() += 1;
    }
    let t_schedule = t0.elapsed();
    let settle_started = Instant::now();
    chaos.settle().await;
    let Chaos {
        cluster,
        load,
        deliberate,
        one_acks_read_while_down,
        mut blocked_packets,
        ..
    } = chaos;
    let outcomes = load.stop().await;
    let load_stopped = Instant::now();

    // Convergence: every applied vector reaches every acknowledged write, all equal.
    let acks: Vec<&Ack> = outcomes
        .iter()
        .flat_map(|o| &o.acked)
        .chain(&deliberate)
        .collect();
    let expected = highest_acked(acks.iter().map(|a| (a.replica.as_str(), a.seq)));
    let client = http_client();
    let common = cluster.wait_converged(&client, &expected).await;
    let convergence = load_stopped.elapsed();
    let heal_to_converged = settle_started.elapsed();

    // No region answers a write with an error; a region never killed never fails one.
    let killed: BTreeSet<usize> = schedule
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Kill(r) | Step::KillAfterOneAck(r) => Some(*r),
            _ => None,
        })
        .collect();
    for (r, o) in outcomes.iter().enumerate() {
        assert!(
            o.rejected.is_empty(),
            "{} answered {} writes with errors, e.g. {:?}",
            REGIONS[r],
            o.rejected.len(),
            &o.rejected[..o.rejected.len().min(10)]
        );
        if !killed.contains(&r) {
            assert!(
                o.refused == 0 && o.unanswered.is_empty(),
                "writes to {}, never killed, failed ({} refused, {} unanswered)",
                REGIONS[r],
                o.refused,
                o.unanswered.len()
            );
        }
    }
    for a in &acks {
        check_one_ack(a);
    }

    // Every acknowledged distinct-key write is readable, with its value, in every region.
    let distinct: Vec<(String, String)> = acks
        .iter()
        .filter(|a| !is_hot(&a.key))
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect();
    for r in &cluster.regions {
        let wrong = not_readable(&client, &r.api, distinct.clone()).await;
        assert!(
            wrong.is_empty(),
            "{} lacks {} of {} acknowledged distinct-key writes after convergence, e.g. {:?}",
            r.name,
            wrong.len(),
            distinct.len(),
            &wrong[..wrong.len().min(10)]
        );
    }

    // Hot keys: identical everywhere, and the winner is right.
    let unanswered: BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|o| &o.unanswered)
        .filter(|(k, _)| is_hot(k))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut hot_acked = 0;
    for k in 0..HOT_KEYS {
        let key = format!("hot-{k}");
        let of_key: Vec<&Ack> = acks.iter().copied().filter(|a| a.key == key).collect();
        hot_acked += check_hot_key(&client, &cluster, &key, &of_key, &unanswered).await;
    }
    let t_verified = t0.elapsed();

    // Figures.
    // The partitions fired: the impairment layer dropped packets on blocked links.
    for r in 0..REGIONS.len() {
        blocked_packets += cluster.blocked_packets(&client, r).await;
    }
    assert!(
        blocked_packets > 0,
        "the schedule cut links but no region dropped a packet on a blocked link"
    );
    let mut conflicts_logged = Vec::new();
    for r in &cluster.regions {
        let st = status(&client, &r.api)
            .await
            .expect("status after the checks");
        conflicts_logged.push((r.name.clone(), st.counters.conflicts));
    }
    let mut cluster = cluster;
    let exits = cluster.shutdown().await;
    let total = t0.elapsed();
    let count = |f: &dyn Fn(&Ack) -> bool| acks.iter().filter(|a| f(a)).count();
    eprintln!(
        "chaos: seed {seed}: steps {counts:?}; ready {t_ready:?}, schedule done {t_schedule:?}"
    );
    eprintln!(
        "chaos: acknowledged {} writes ({} local, {} one with 200, {} one with 202 after the \
         wait), {} distinct keys, {hot_acked} on hot keys; \
         {one_acks_read_while_down} `one` writes read at a peer while their origin was down",
        acks.len(),
        count(&|a| a.durability == Durability::Local),
        count(&|a| a.durability == Durability::One && a.code == 200),
        count(&|a| a.durability == Durability::One && a.code == 202),
        distinct.len(),
    );
    for (r, o) in outcomes.iter().enumerate() {
        eprintln!(
            "chaos: {}: {} acknowledged, {} refused, {} unanswered",
            REGIONS[r],
            o.acked.len(),
            o.refused,
            o.unanswered.len()
        );
    }
    eprintln!(
        "chaos: {blocked_packets} packets dropped on blocked links; conflicts logged \
         {conflicts_logged:?}; converged {convergence:?} after the load \
         stopped, {heal_to_converged:?} after the final heal began; applied {common:?}; verified at {t_verified:?}; total {total:?}; exits {exits:?}"
    );
    for (name, exit) in &exits {
        assert!(
            exit.is_some_and(|s| s.success()),
            "{name} did not stop cleanly when its stdin closed: {exit:?}\n{}",
            cluster.log_tails()
        );
    }
}
