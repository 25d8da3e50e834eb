//! Whole region leaders in virtual time (testing tier 3 of docs/design.md): the state machine,
//! the node runtime, redb storage with real fsyncs, and real quinn and rustls, over turmoil's
//! simulated network through the transport's adapter (`transport::sim::bind`).
//!
//! Every region is a turmoil host running [`leader::node::start`] with its own data directory,
//! Ed25519 certificates, a seeded transport and a wall clock that follows virtual time
//! (`Wiring::wall_clock_start_ms`). A load task in every region writes four hot keys that all
//! regions write concurrently and keys of its own. The test body steps the simulation and
//! injects faults at exact virtual times: a partition and its repair, a crash of a host and its
//! restart, peers presenting wrong certificates. An observer (a turmoil client) waits for the
//! regions to converge once the load has stopped and reads every key everywhere. Then the
//! oracles run:
//!
//! - all regions hold identical data (equal `NodeHandle::digest`s, equal key states);
//! - every acknowledged write is applied everywhere, and is either a sibling of its key or
//!   superseded by one the resolver (last-write-wins) ranks above it;
//! - the survivor of each key is a write that was really made, and the highest-ranked
//!   (`(hlc, replica, seq)`) acknowledged write of that key when no write is in doubt;
//! - a restarted region has, before any peer could send it anything, every write it
//!   acknowledged before its crash.
//!
//! # Virtual time and determinism
//! Faults happen at exact virtual times, every wait is in virtual time and the simulation has a
//! bounded duration, so no assertion depends on the machine's speed. Storage commits run on
//! tokio's blocking pool, which holds a host's paused clock still while an fsync runs: a commit
//! takes no virtual time however slow the disk is, and a crashed host's runtime is dropped
//! only after its commit in progress has finished, which releases the redb file for the
//! restart.
//!
//! Runs of one seed are *not* identical and the tests do not claim they are: each data
//! directory draws its replica id from the OS when it is created (so dots, digests and the
//! order of concurrent writes differ between runs), TLS draws key shares from the OS (packet
//! contents differ) and tokio's unseeded RNG orders some wake-ups (see `transport::sim`). The
//! assertions are about outcomes only, which hold for every run.
//!
//! # Why one file of about 1,100 lines
//! The three scenarios share the virtual-time harness (hosts, load tasks, observer, oracles)
//! that makes up half of the file and exists only for them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::common::{CLUSTER, Cluster};
use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, Value};
use leader::config::Config;
use leader::leader_core::WriteReceipt;
use leader::{LeaderBuilder, NodeError, NodeHandle, ReadResult, Status, Wiring};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use transport::certs::KeyAlgorithm;
use transport::{Identity, Mesh, MeshConfig, MeshEvent};

const REGIONS: [&str; 3] = ["ap", "eu", "us"];
/// The QUIC port of every host (each host has its own simulated IP address).
const PORT: u16 = 7000;
/// The `lww` table every write goes to.
const TABLE: &str = "default";
/// Keys every region writes, so their writes conflict.
const HOT_KEYS: u64 = 4;
/// Each region starts a write this often; every other one goes to a hot key.
const WRITE_EVERY: Duration = Duration::from_millis(40);
/// Regions stop writing at this virtual time.
const LOAD_UNTIL: Duration = Duration::from_secs(12);
/// Every region must be connected to every other one by then.
const ALL_UP_BY: Duration = Duration::from_secs(3);
/// Hard bound on virtual time: the observer must have finished its checks before it.
const SIM_LIMIT: Duration = Duration::from_secs(60);
/// One-way latency of the simulated WAN, drawn per datagram.
const LATENCY_MIN: Duration = Duration::from_millis(10);
const LATENCY_MAX: Duration = Duration::from_millis(30);
/// The wall clock at virtual time zero (ms since the Unix epoch, some day in 2027).
const EPOCH_MS: u64 = 1_800_000_000_000;
/// How often the observer polls while it waits.
const POLL: Duration = Duration::from_millis(50);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Virtual time since the simulation started; call inside a host or client.
fn now_sim() -> Duration {
    turmoil::sim_elapsed().expect("called inside the simulation")
}

/// Seeds differ per host and per start, and all derive from the scenario's seed.
fn seed_bytes(seed: u64, host: &str, incarnation: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let name = &host.as_bytes()[..host.len().min(16)];
    bytes[8..8 + name.len()].copy_from_slice(name);
    bytes[24..].copy_from_slice(&incarnation.to_le_bytes());
    bytes
}

// ---- what the simulation records ------------------------------------------------------------

/// How a write ended, as its client saw it.
#[derive(Debug, Clone)]
enum Outcome {
    /// No answer (yet): the write may or may not have been made. A write in flight when its
    /// host crashed stays here.
    InDoubt,
    /// Durable in its region, with this identity and stamp.
    Acked(WriteReceipt),
    /// Refused, or the node had stopped; nothing was written.
    Failed(String),
}

/// One write a region's load made.
#[derive(Debug, Clone)]
struct WriteRecord {
    region: &'static str,
    incarnation: u64,
    key: String,
    value: Vec<u8>,
    outcome: Outcome,
}

impl WriteRecord {
    fn receipt(&self) -> Option<&WriteReceipt> {
        match &self.outcome {
            Outcome::Acked(receipt) => Some(receipt),
            _ => None,
        }
    }
}

/// The order last-write-wins ranks writes by (`Sibling::order_key`).
fn rank(receipt: &WriteReceipt) -> (Hlc, ReplicaId, Seq) {
    (receipt.hlc, receipt.dot.replica, receipt.dot.seq)
}

/// What a restarted region held right after it opened its data directory.
#[derive(Debug)]
struct Recovery {
    region: &'static str,
    incarnation: u64,
    /// Peers it was connected to when the reads were served (must be none).
    connected: Vec<String>,
    /// The writes it acknowledged before, by index into `World::writes`, with the key's
    /// state as it read then.
    states: Vec<(usize, KeyState)>,
}

/// What the observer found once the regions had converged.
#[derive(Debug)]
struct Final {
    at: Duration,
    digests: BTreeMap<String, [u8; 32]>,
    statuses: BTreeMap<String, Status>,
    /// Key → region → state.
    states: BTreeMap<String, BTreeMap<String, KeyState>>,
}

/// Everything the hosts and the observer report to the test body.
#[derive(Default)]
struct World {
    /// Handles of the running incarnation of each region.
    handles: BTreeMap<&'static str, NodeHandle>,
    writes: Vec<WriteRecord>,
    recoveries: Vec<Recovery>,
    /// Every region's status, at the times the scenario asked for, by label.
    snapshots: BTreeMap<&'static str, BTreeMap<String, Status>>,
    /// What each rogue's mesh reported: (rogue, event).
    rogue_events: Vec<(&'static str, String)>,
    /// Each rogue's address.
    rogue_addrs: BTreeMap<&'static str, IpAddr>,
    last: Option<Final>,
}

/// The shared state of one scenario.
struct Env {
    seed: u64,
    dir: tempfile::TempDir,
    /// Written once every host has its address, before the first step.
    config: OnceLock<Config>,
    world: Mutex<World>,
}

type Shared = Arc<Env>;

// ---- the software of the hosts --------------------------------------------------------------

/// One region: its leader over the simulated network, and its load.
async fn region(name: &'static str, env: Shared, incarnation: u64) -> turmoil::Result {
    let config = env
        .config
        .get()
        .expect("written before the first step")
        .clone();
    let quic = transport::sim::bind((Ipv4Addr::UNSPECIFIED, PORT).into()).await?;
    let wiring = Wiring {
        quic: Some(quic),
        no_api: true,
        wall_clock_start_ms: Some(EPOCH_MS + now_sim().as_millis() as u64),
        rng_seed: Some(seed_bytes(env.seed, name, incarnation)),
        ..Wiring::default()
    };
    let mut node = LeaderBuilder::new(config, name)
        .wiring(wiring)
        .start()
        .await?;
    let handle = node.handle();
    if incarnation > 0 {
        let recovery = recover(name, incarnation, &handle, &env).await?;
        lock(&env.world).recoveries.push(recovery);
    }
    lock(&env.world).handles.insert(name, handle.clone());
    tokio::spawn(load(name, incarnation, handle, env));
    node.wait().await?;
    Err(format!("region {name} stopped by itself").into())
}

/// Reads every key this region acknowledged a write to in an earlier life, at once: in the
/// same instant of virtual time as the start, before a QUIC handshake (a round trip of at
/// least twice `LATENCY_MIN`) could let a peer send anything.
async fn recover(
    name: &'static str,
    incarnation: u64,
    handle: &NodeHandle,
    env: &Env,
) -> Result<Recovery, NodeError> {
    let acked: Vec<(usize, String)> = lock(&env.world)
        .writes
        .iter()
        .enumerate()
        .filter(|(_, w)| w.region == name && w.receipt().is_some())
        .map(|(i, w)| (i, w.key.clone()))
        .collect();
    let mut states = Vec::new();
    for (index, key) in acked {
        states.push((index, read_state(handle, &key).await?));
    }
    let connected = handle
        .status()
        .await?
        .peers
        .into_iter()
        .filter(|p| p.connected)
        .map(|p| p.region)
        .collect();
    Ok(Recovery {
        region: name,
        incarnation,
        connected,
        states,
    })
}

async fn read_state(handle: &NodeHandle, key: &str) -> Result<KeyState, NodeError> {
    let read = handle.read(TABLE, key.as_bytes()).await?;
    match read.unwrap_or_else(|e| panic!("no region is bootstrapped here: {e}")) {
        ReadResult::Found { state, .. } => Ok(state),
        ReadResult::UnknownTable => panic!("table {TABLE} is configured"),
    }
}

/// Starts a write every `WRITE_EVERY` until `LOAD_UNTIL`, each in its own task, so several
/// can be in flight (and in flight when the host crashes). Values are unique.
async fn load(region: &'static str, incarnation: u64, handle: NodeHandle, env: Shared) {
    // A new data directory serves once its peers show it needs no snapshot (docs/design.md,
    // "A fresh data directory starts gated"); writes before that are refused.
    while handle.status().await.is_ok_and(|s| s.bootstrap.is_some()) {
        tokio::time::sleep(POLL).await;
    }
    let mut every = tokio::time::interval(WRITE_EVERY);
    for n in 0u64.. {
        every.tick().await;
        if now_sim() >= LOAD_UNTIL {
            return;
        }
        let key = if n % 2 == 0 {
            format!("hot-{}", (n / 2) % HOT_KEYS)
        } else {
            format!("{region}-{incarnation}-{n}")
        };
        let value = format!("{region}/{incarnation}/{n}").into_bytes();
        let index = {
            let mut world = lock(&env.world);
            world.writes.push(WriteRecord {
                region,
                incarnation,
                key: key.clone(),
                value: value.clone(),
                outcome: Outcome::InDoubt,
            });
            world.writes.len() - 1
        };
        let (handle, env) = (handle.clone(), env.clone());
        tokio::spawn(async move {
            let outcome = match handle
                .write(TABLE, key.as_bytes(), Value::Bytes(value), None)
                .await
            {
                Ok(Ok(receipt)) => Outcome::Acked(receipt),
                Ok(Err(refused)) => Outcome::Failed(refused.to_string()),
                Err(stopped) => Outcome::Failed(stopped.to_string()),
            };
            lock(&env.world).writes[index].outcome = outcome;
        });
    }
}

/// A peer with a wrong certificate: a bare mesh that keeps dialing the regions with
/// `identity` and records what it is told.
async fn rogue(
    name: &'static str,
    identity: Identity,
    env: Shared,
    from: Duration,
) -> turmoil::Result {
    tokio::time::sleep(from.saturating_sub(now_sim())).await;
    lock(&env.world)
        .rogue_addrs
        .insert(name, turmoil::lookup(name));
    let (socket, runtime) = transport::sim::bind((Ipv4Addr::UNSPECIFIED, PORT).into()).await?;
    let peers = REGIONS
        .iter()
        .filter(|r| **r != identity.region)
        .map(|r| (r.to_string(), SocketAddr::new(turmoil::lookup(*r), PORT)))
        .collect();
    let mut config = MeshConfig::new(identity, (Ipv4Addr::UNSPECIFIED, PORT).into(), peers);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    config.rng_seed = Some(seed_bytes(env.seed, name, 0));
    let (_mesh, mut events) =
        Mesh::<leader::leader_core::PeerMsg>::start_with_socket(config, socket, runtime).await?;
    while let Some(event) = events.recv().await {
        let event = match event {
            MeshEvent::Up { peer, .. } => format!("up {peer}"),
            MeshEvent::Down { peer, reason, .. } => format!("down {peer}: {reason}"),
            MeshEvent::Frame { peer, .. } => format!("frame from {peer}"),
            MeshEvent::Rejected { remote, reason } => format!("rejected {remote}: {reason}"),
            MeshEvent::SplitBrain { peer, .. } => format!("split brain {peer}"),
        };
        lock(&env.world).rogue_events.push((name, event));
    }
    Ok(())
}

// ---- the observer ---------------------------------------------------------------------------

/// The running regions' handles, or an error naming the missing ones.
fn handles(env: &Env) -> Result<BTreeMap<&'static str, NodeHandle>, String> {
    let handles = lock(&env.world).handles.clone();
    let missing: Vec<_> = REGIONS
        .iter()
        .filter(|r| !handles.contains_key(*r))
        .collect();
    if missing.is_empty() {
        Ok(handles)
    } else {
        Err(format!("not running: {missing:?}"))
    }
}

async fn statuses(env: &Env) -> Result<BTreeMap<String, Status>, String> {
    let mut statuses = BTreeMap::new();
    for (region, handle) in handles(env)? {
        let status = handle
            .status()
            .await
            .map_err(|e| format!("{region}: {e}"))?;
        statuses.insert(region.to_owned(), status);
    }
    Ok(statuses)
}

async fn sleep_until(at: Duration) {
    tokio::time::sleep(at.saturating_sub(now_sim())).await;
}

/// Polls `probe` every `POLL` until it returns `Ok` or virtual time reaches `deadline`.
async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(last) if now_sim() >= deadline => {
                return Err(format!(
                    "{what}: not by {deadline:?} of virtual time; last seen: {last}"
                ));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits for every region to be connected to every other one (by `ALL_UP_BY`), takes the
/// snapshots `at` the given times, waits for the load to stop and the regions to converge,
/// then reads every key everywhere.
async fn observe(env: Shared, snapshots: Vec<(&'static str, Duration)>) -> turmoil::Result {
    let connected = wait_until("every region connected", ALL_UP_BY, async || {
        let statuses = statuses(&env).await?;
        let down: Vec<String> = statuses
            .iter()
            .flat_map(|(r, s)| s.peers.iter().map(move |p| (r, p)))
            .filter(|(_, p)| !p.connected)
            .map(|(r, p)| format!("{r}->{}", p.region))
            .collect();
        if down.is_empty() {
            Ok(statuses)
        } else {
            Err(format!("not connected: {down:?}"))
        }
    })
    .await?;
    lock(&env.world).snapshots.insert("connected", connected);
    for (label, at) in snapshots {
        sleep_until(at).await;
        let statuses = statuses(&env).await?;
        lock(&env.world).snapshots.insert(label, statuses);
    }
    sleep_until(LOAD_UNTIL).await;
    let done = wait_until("convergence", SIM_LIMIT - POLL, async || {
        converged(&env).await
    })
    .await?;
    let mut states: BTreeMap<String, BTreeMap<String, KeyState>> = BTreeMap::new();
    let keys: BTreeSet<String> = lock(&env.world)
        .writes
        .iter()
        .map(|w| w.key.clone())
        .collect();
    for (region, handle) in handles(&env)? {
        for key in &keys {
            let state = read_state(&handle, key).await?;
            states
                .entry(key.clone())
                .or_default()
                .insert(region.to_owned(), state);
        }
    }
    let (statuses, digests) = done;
    lock(&env.world).last = Some(Final {
        at: now_sim(),
        digests,
        statuses,
        states,
    });
    Ok(())
}

/// Converged: no write in flight, every region has applied the same writes and every
/// acknowledged one; returns the statuses and digests.
async fn converged(
    env: &Env,
) -> Result<(BTreeMap<String, Status>, BTreeMap<String, [u8; 32]>), String> {
    let statuses = statuses(env).await?;
    let (in_flight, acked): (usize, Vec<Dot>) = {
        let world = lock(&env.world);
        let in_flight = world
            .writes
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::InDoubt) && of_running_incarnation(&world, w))
            .count();
        let acked = world
            .writes
            .iter()
            .filter_map(|w| w.receipt())
            .map(|r| r.dot)
            .collect();
        (in_flight, acked)
    };
    if in_flight > 0 {
        return Err(format!("{in_flight} writes still in flight"));
    }
    let applied: BTreeSet<Vec<(String, u64)>> = statuses
        .values()
        .map(|s| {
            s.applied
                .iter()
                .map(|(r, _, seq)| (r.clone(), *seq))
                .collect()
        })
        .collect();
    if applied.len() != 1 {
        return Err(format!("applied vectors differ: {applied:?}"));
    }
    let any = statuses.values().next().ok_or("no region")?;
    let lacking = acked
        .iter()
        .filter(|dot| {
            !any.applied
                .iter()
                .any(|(_, replica, seq)| *replica == dot.replica && *seq >= dot.seq.0)
        })
        .count();
    if lacking > 0 {
        return Err(format!("{lacking} acknowledged writes not applied yet"));
    }
    let mut digests = BTreeMap::new();
    for (region, handle) in handles(env)? {
        let digest = handle
            .digest()
            .await
            .map_err(|e| format!("{region}: {e}"))?
            .map_err(|e| format!("{region}: {e}"))?;
        digests.insert(region.to_owned(), digest);
    }
    Ok((statuses, digests))
}

/// Whether a write was made by the incarnation of its region that is running now (a write
/// of a crashed incarnation never gets an answer).
fn of_running_incarnation(world: &World, write: &WriteRecord) -> bool {
    let latest = world
        .writes
        .iter()
        .filter(|w| w.region == write.region)
        .map(|w| w.incarnation)
        .max();
    latest == Some(write.incarnation)
}

// ---- the scenario ---------------------------------------------------------------------------

/// A fault the test body injects at a virtual time.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Partition(&'static str, &'static str),
    Repair(&'static str, &'static str),
    Crash(&'static str),
    Restart(&'static str),
}

/// Builds a rogue's identity from the cluster's certificate directory.
type MakeIdentity = fn(&Path) -> Identity;

/// What a scenario runs besides the three regions.
#[derive(Default)]
struct Plan {
    seed: u64,
    faults: Vec<(Duration, Fault)>,
    /// Status snapshots the observer takes: (label, virtual time).
    snapshots: Vec<(&'static str, Duration)>,
    /// Peers with wrong certificates: (host name, identity) — built once the cluster's
    /// certificates exist, from the certificate directory.
    rogues: Vec<(&'static str, MakeIdentity)>,
    /// When the rogues start dialing.
    rogues_from: Duration,
}

/// Steps the simulation until virtual time `t`.
fn run_until(sim: &mut turmoil::Sim<'_>, t: Duration) {
    while sim.elapsed() < t {
        sim.step().expect("simulation step");
    }
}

/// The harness's configuration of the three regions at their simulated addresses, with the
/// slower timeouts of a WAN.
fn write_config(sim: &turmoil::Sim<'_>, dir: &Path) -> Config {
    let addrs = REGIONS
        .iter()
        .map(|r| ((*r).to_owned(), SocketAddr::new(sim.lookup(*r), PORT)))
        .collect();
    Cluster::builder(&REGIONS)
        .timeout("keep_alive_ms", 500)
        .timeout("idle_timeout_ms", 3000)
        .timeout("reconnect_min_ms", 100)
        .timeout("reconnect_max_ms", 1000)
        .write_config(dir, "regions.toml", &addrs)
}

/// Runs three regions (and the plan's rogues) with the plan's faults until the observer has
/// finished, and returns what they recorded.
fn run(plan: Plan) -> Shared {
    let env = Arc::new(Env {
        seed: plan.seed,
        dir: tempfile::tempdir().expect("a temporary directory"),
        config: OnceLock::new(),
        world: Mutex::default(),
    });
    let certs = env.dir.path().join("certs");
    let mut names: Vec<String> = REGIONS.iter().map(|r| r.to_string()).collect();
    names.push("mallory".to_owned());
    transport::certs::generate(&certs, CLUSTER, &names, KeyAlgorithm::Ed25519)
        .expect("generate the cluster's certificates");

    let mut sim = turmoil::Builder::new()
        .simulation_duration(SIM_LIMIT)
        .min_message_latency(LATENCY_MIN)
        .max_message_latency(LATENCY_MAX)
        .rng_seed(plan.seed)
        .build();
    for name in REGIONS {
        let env = env.clone();
        let starts = AtomicU64::new(0);
        sim.host(name, move || {
            region(name, env.clone(), starts.fetch_add(1, Ordering::Relaxed))
        });
    }
    for (name, make) in &plan.rogues {
        let (name, identity, env, from) = (*name, make(&certs), env.clone(), plan.rogues_from);
        sim.host(name, move || {
            rogue(name, identity.clone(), env.clone(), from)
        });
    }
    let config = write_config(&sim, env.dir.path());
    assert!(env.config.set(config).is_ok(), "written once");
    sim.client("observer", observe(env.clone(), plan.snapshots));

    for (at, fault) in plan.faults {
        run_until(&mut sim, at);
        match fault {
            Fault::Partition(a, b) => sim.partition(a, b),
            Fault::Repair(a, b) => sim.repair(a, b),
            Fault::Crash(region) => {
                // The observer must not talk to the dead incarnation.
                lock(&env.world).handles.remove(region);
                sim.crash(region);
            }
            Fault::Restart(region) => sim.bounce(region),
        }
    }
    if let Err(e) = sim.run() {
        panic!(
            "the simulation failed at {:?} of virtual time: {e}",
            sim.elapsed()
        );
    }
    env
}

// ---- the oracles ----------------------------------------------------------------------------

/// Short hex of a digest, for messages.
struct Short<'a>(&'a [u8; 32]);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Whether `state` keeps acknowledged write `w`: applied (its context covers the dot) and
/// either a sibling with its value or superseded by siblings that all rank above it.
fn judge(w: &WriteRecord, state: &KeyState) -> Result<(), String> {
    let receipt = w.receipt().expect("only acknowledged writes are judged");
    let dot = receipt.dot;
    if !state.context.covers(&dot) {
        return Err(format!("{dot} ({}) was never applied: {state:?}", w.key));
    }
    if let Some(sibling) = state.siblings.iter().find(|s| s.dot == dot) {
        if sibling.value != Value::Bytes(w.value.clone()) || sibling.hlc != receipt.hlc {
            return Err(format!("{dot} ({}) changed: {sibling:?}", w.key));
        }
        return Ok(());
    }
    match state
        .siblings
        .iter()
        .find(|s| s.order_key() <= rank(receipt))
    {
        None if !state.siblings.is_empty() => Ok(()),
        None => Err(format!("{dot} ({}) was lost: no sibling is left", w.key)),
        Some(lower) => Err(format!(
            "{dot} ({}) was superseded by {}, which ranks below it",
            w.key, lower.dot
        )),
    }
}

/// The oracles every scenario ends with; returns the final observation.
fn check_final(env: &Env) -> Final {
    let mut world = lock(&env.world);
    let last = world.last.take().expect("the observer finished its checks");
    let writes = &world.writes;

    let distinct: BTreeSet<&[u8; 32]> = last.digests.values().collect();
    let shown: Vec<String> = last
        .digests
        .iter()
        .map(|(r, d)| format!("{r}={}", Short(d)))
        .collect();
    assert_eq!(distinct.len(), 1, "regions hold different data: {shown:?}");
    for (key, by_region) in &last.states {
        let states: BTreeSet<Vec<u8>> = by_region.values().map(KeyState::to_bytes).collect();
        assert_eq!(
            states.len(),
            1,
            "{key} differs between regions: {by_region:?}"
        );
    }

    let mut lost = Vec::new();
    for w in writes.iter().filter(|w| w.receipt().is_some()) {
        for (region, state) in &last.states[&w.key] {
            if let Err(e) = judge(w, state) {
                lost.push(format!("at {region}: {e}"));
            }
        }
    }
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");

    // Every key's survivor is a write that was made: its value is that of one of the writes
    // to the key (values are unique), acknowledged with that dot or in doubt.
    for (key, by_region) in &last.states {
        let state = by_region.values().next().expect("three regions");
        assert_eq!(
            state.siblings.len(),
            1,
            "{key}: last-write-wins keeps one: {state:?}"
        );
        let survivor = &state.siblings[0];
        let made = writes
            .iter()
            .find(|w| Value::Bytes(w.value.clone()) == survivor.value);
        match made.map(|w| (w, &w.outcome)) {
            Some((_, Outcome::Acked(r))) => assert_eq!(r.dot, survivor.dot, "{key}"),
            Some((_, Outcome::InDoubt)) => {}
            other => panic!("{key}: survivor {survivor:?} is no write the load made: {other:?}"),
        }
    }
    last
}

/// The survivor of every key is its highest-ranked acknowledged write. Holds when no write
/// is in doubt (an unacknowledged write could rank higher).
fn check_survivors_are_the_last_acknowledged(env: &Env, last: &Final) {
    let world = lock(&env.world);
    let mut best: BTreeMap<&str, &WriteReceipt> = BTreeMap::new();
    for w in &world.writes {
        let receipt = w.receipt().expect("no write in doubt in this scenario");
        let entry = best.entry(w.key.as_str()).or_insert(receipt);
        if rank(receipt) > rank(entry) {
            *entry = receipt;
        }
    }
    for (key, receipt) in best {
        let state = last.states[key].values().next().expect("three regions");
        let dots: Vec<Dot> = state.siblings.iter().map(|s| s.dot).collect();
        assert_eq!(
            dots,
            vec![receipt.dot],
            "{key}: the survivor is the last acknowledged write"
        );
    }
}

/// Counts of the load's writes: (acknowledged, in doubt, failed) and the hot-key writes
/// acknowledged per region.
fn tally(env: &Env) -> (usize, usize, Vec<String>, BTreeMap<&'static str, usize>) {
    let world = lock(&env.world);
    let mut acked = 0;
    let mut in_doubt = 0;
    let mut failed = Vec::new();
    let mut hot: BTreeMap<&'static str, usize> = BTreeMap::new();
    for w in &world.writes {
        match &w.outcome {
            Outcome::Acked(_) => {
                acked += 1;
                if w.key.starts_with("hot-") {
                    *hot.entry(w.region).or_default() += 1;
                }
            }
            Outcome::InDoubt => in_doubt += 1,
            Outcome::Failed(e) => failed.push(format!("{}: {e}", w.key)),
        }
    }
    (acked, in_doubt, failed, hot)
}

/// The load did what the oracles need: enough acknowledged writes in every region, hot keys
/// written by all of them, and writes that really conflicted.
fn check_load(env: &Env, last: &Final) {
    let (acked, _, failed, hot) = tally(env);
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(acked >= 600, "only {acked} writes acknowledged");
    for region in REGIONS {
        assert!(
            hot.get(region).copied().unwrap_or(0) >= 50,
            "{region}: {hot:?}"
        );
    }
    let conflicts: u64 = last.statuses.values().map(|s| s.counters.conflicts).sum();
    assert!(
        conflicts > 0,
        "concurrent writes to the hot keys met as conflicts"
    );
}

// ---- the tests --------------------------------------------------------------------------------

/// ap and eu are cut from each other from 4 s to 9 s while all three keep writing: both keep
/// accepting writes, us relays between them, and after the repair everything converges with
/// no acknowledged write lost and each hot key held by its last acknowledged write.
#[test]
fn partition_and_repair_converge_without_losing_acknowledged_writes() {
    let secs = Duration::from_secs;
    let env = run(Plan {
        seed: 11,
        faults: vec![
            (secs(4), Fault::Partition("ap", "eu")),
            (secs(9), Fault::Repair("ap", "eu")),
        ],
        snapshots: vec![("cut", secs(9) - Duration::from_millis(50))],
        ..Plan::default()
    });
    let last = check_final(&env);
    let (acked, in_doubt, _, _) = tally(&env);
    assert_eq!(in_doubt, 0, "every write was answered");
    check_load(&env, &last);
    check_survivors_are_the_last_acknowledged(&env, &last);

    // The partition fired: ap and eu saw each other down at its end, while us relayed.
    let world = lock(&env.world);
    let cut = &world.snapshots["cut"];
    for (region, peer) in [("ap", "eu"), ("eu", "ap")] {
        let view = cut[region]
            .peers
            .iter()
            .find(|p| p.region == peer)
            .expect("a peer");
        assert!(!view.connected, "{region} sees {peer} down during the cut");
    }
    assert!(
        cut["us"].peers.iter().all(|p| p.connected),
        "us reaches both"
    );
    assert!(
        cut["us"].counters.writes_relayed > 0,
        "us relayed between ap and eu"
    );
    eprintln!(
        "partition: {acked} acknowledged writes, converged at {:?} of virtual time",
        last.at
    );
}

/// us crashes at 6 s under load (its tasks and in-flight writes are dropped) and restarts at
/// 8 s from its data directory: before any peer could talk to it, it has every write it
/// acknowledged, and after convergence every region has them.
#[test]
fn a_crashed_region_restarts_with_every_write_it_acknowledged() {
    let secs = Duration::from_secs;
    let env = run(Plan {
        seed: 12,
        faults: vec![
            (secs(6), Fault::Crash("us")),
            (secs(8), Fault::Restart("us")),
        ],
        ..Plan::default()
    });
    let last = check_final(&env);
    check_load(&env, &last);

    let world = lock(&env.world);
    let [recovery] = world.recoveries.as_slice() else {
        panic!("one restart: {:?}", world.recoveries);
    };
    assert_eq!((recovery.region, recovery.incarnation), ("us", 1));
    assert!(
        recovery.connected.is_empty(),
        "read before any peer: {recovery:?}"
    );
    let before: usize = world
        .writes
        .iter()
        .filter(|w| w.region == "us" && w.incarnation == 0 && w.receipt().is_some())
        .count();
    assert!(
        before >= 100,
        "us acknowledged {before} writes before the crash"
    );
    assert_eq!(recovery.states.len(), before, "every one was read back");
    let lost: Vec<String> = recovery
        .states
        .iter()
        .filter_map(|(index, state)| judge(&world.writes[*index], state).err())
        .collect();
    assert!(lost.is_empty(), "lost across the crash: {lost:#?}");
    // The restarted incarnation wrote too, and its writes reached everyone.
    let after = world
        .writes
        .iter()
        .filter(|w| w.region == "us" && w.incarnation == 1 && w.receipt().is_some())
        .count();
    assert!(
        after >= 50,
        "us acknowledged {after} writes after its restart"
    );
    let in_doubt = world
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::InDoubt))
        .count();
    eprintln!(
        "crash: us acknowledged {before} writes before the crash and {after} after; \
         {in_doubt} in doubt; converged at {:?} of virtual time",
        last.at
    );
}

/// An impostor for eu: a certificate naming eu, issued by another CA (it trusts the cluster's
/// CA, so the regions' side of the handshake is what refuses it).
fn impostor(certs: &Path) -> Identity {
    let mut ids =
        transport::certs::generate_identities(CLUSTER, &["eu".to_owned()], KeyAlgorithm::Ed25519)
            .expect("another CA");
    let mut eu = ids.remove("eu").expect("generated");
    eu.ca_cert = transport::certs::load(certs, "ap")
        .expect("ap's identity")
        .ca_cert;
    eu
}

/// A certificate from the cluster's CA for a region no configuration names.
fn mallory(certs: &Path) -> Identity {
    transport::certs::load(certs, "mallory").expect("mallory's identity")
}

/// Two peers with wrong certificates keep dialing the regions from 3 s on: one claims to be eu
/// with a certificate from another CA, one has a certificate of the cluster's CA for a region
/// not in the configuration. Each is refused, by the regions, with a reason that says what is
/// wrong, never gets a link up, and the cluster goes on as if they were not there.
#[test]
fn peers_with_wrong_certificates_are_refused_and_change_nothing() {
    let secs = Duration::from_secs;
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    let env = tracing::subscriber::with_default(subscriber, || {
        run(Plan {
            seed: 13,
            rogues: vec![("impostor", impostor as MakeIdentity), ("mallory", mallory)],
            rogues_from: secs(3),
            snapshots: vec![("rogues", secs(3))],
            ..Plan::default()
        })
    });
    let last = check_final(&env);
    let (_, in_doubt, _, _) = tally(&env);
    assert_eq!(in_doubt, 0, "every write was answered");
    check_load(&env, &last);
    check_survivors_are_the_last_acknowledged(&env, &last);

    let world = lock(&env.world);
    // No legitimate link went down or was replaced once the rogues started, and no region
    // knows of a peer it is not configured with.
    for (region, before) in &world.snapshots["rogues"] {
        let after = &last.statuses[region];
        for (peer, link) in &before.links {
            assert_eq!(
                after.links[peer].connections, link.connections,
                "{region}->{peer} kept its connection"
            );
        }
        let peers: BTreeSet<&str> = after.peers.iter().map(|p| p.region.as_str()).collect();
        let expected: BTreeSet<&str> = REGIONS.iter().copied().filter(|r| r != region).collect();
        assert_eq!(peers, expected, "{region}'s peers");
    }

    // The rogues were refused, and told why; they never got a link.
    let told = |rogue: &str, needle: &str| {
        world
            .rogue_events
            .iter()
            .filter(|(r, e)| *r == rogue && e.starts_with("rejected") && e.contains(needle))
            .count()
    };
    let ups: Vec<_> = world
        .rogue_events
        .iter()
        .filter(|(_, e)| !e.starts_with("rejected"))
        .collect();
    assert!(ups.is_empty(), "a rogue got a link: {ups:?}");
    assert!(
        told("impostor", "unknown CA") >= 2,
        "{:#?}",
        world.rogue_events
    );
    assert!(
        told("mallory", "\"mallory\" is not a peer") >= 3,
        "{:#?}",
        world.rogue_events
    );

    // Every region logs whom it refused and why: the transport's line names the region, the
    // leader's line the rogue's address.
    let logged = warnings.events();
    let field =
        |event: &BTreeMap<String, String>, name: &str| event.get(name).cloned().unwrap_or_default();
    let by_region = |region: &str, why: &str| {
        logged
            .iter()
            .filter(|e| field(e, "region") == region)
            .filter(|e| {
                field(e, "message").starts_with("refused") && field(e, "message").contains(why)
            })
            .count()
    };
    let by_leader = |rogue: &str, why: &str| {
        let from = format!("{}:", world.rogue_addrs[rogue]);
        logged
            .iter()
            .filter(|e| field(e, "message") == "refused a peer connection")
            .filter(|e| field(e, "remote").starts_with(&from) && field(e, "reason").contains(why))
            .count()
    };
    let foreign_ca = "the peer's certificate was not issued by this cluster's CA";
    let unknown_region = "region \"mallory\" is not a peer in this region's configuration";
    for region in ["ap", "us"] {
        assert!(
            by_region(region, foreign_ca) >= 1,
            "{region} refused the impostor: {logged:#?}"
        );
    }
    for region in REGIONS {
        assert!(
            by_region(region, unknown_region) >= 1,
            "{region} refused mallory: {logged:#?}"
        );
    }
    assert!(by_leader("impostor", foreign_ca) >= 2, "{logged:#?}");
    assert!(by_leader("mallory", unknown_region) >= 3, "{logged:#?}");
    let first = |rogue: &str| world.rogue_events.iter().find(|(r, _)| *r == rogue);
    let reason = |rogue: &str| {
        let from = format!("{}:", world.rogue_addrs[rogue]);
        logged
            .iter()
            .filter(|e| field(e, "message") == "refused a peer connection")
            .find(|e| field(e, "remote").starts_with(&from))
            .map(|e| field(e, "reason"))
    };
    eprintln!(
        "wrong certificates: {} warnings logged by the regions; the impostor was refused with \
         {:?} and told {:?}; mallory was refused with {:?} and told {:?}; converged at {:?} of \
         virtual time",
        logged.len(),
        reason("impostor"),
        first("impostor"),
        reason("mallory"),
        first("mallory"),
        last.at
    );
}

/// The oracle itself tells a kept, a superseded, a lost, an unapplied and a changed write
/// apart (a negative control: the scenarios above only ever show it passing).
#[test]
fn the_oracle_tells_kept_writes_from_lost_ones() {
    let dot = |replica: u128, seq: u64| Dot {
        replica: ReplicaId::from_u128(replica),
        seq: Seq(seq),
    };
    let sibling = |d: Dot, ms: u64, value: &str| conflict::Sibling {
        dot: d,
        hlc: Hlc::new(ms, 0),
        value: Value::Bytes(value.as_bytes().to_vec()),
    };
    let mut context = conflict::VersionVector::new();
    context.add_dot(&dot(1, 1));
    context.add_dot(&dot(2, 1));
    let write = WriteRecord {
        region: "ap",
        incarnation: 0,
        key: "k".to_owned(),
        value: b"mine".to_vec(),
        outcome: Outcome::Acked(WriteReceipt {
            dot: dot(1, 1),
            hlc: Hlc::new(100, 0),
            context: context.clone(),
            conflict: false,
            durability: leader::leader_core::Durability::Local,
            durable_in: vec!["ap".to_owned()],
            timed_out: false,
            total: None,
        }),
    };
    let state = |siblings: Vec<conflict::Sibling>| KeyState {
        context: context.clone(),
        siblings,
    };
    assert_eq!(
        judge(&write, &state(vec![sibling(dot(1, 1), 100, "mine")])),
        Ok(())
    );
    assert_eq!(
        judge(&write, &state(vec![sibling(dot(2, 1), 200, "later")])),
        Ok(())
    );
    let verdicts = [
        judge(&write, &state(vec![sibling(dot(2, 1), 50, "earlier")])),
        judge(&write, &state(vec![])),
        judge(&write, &KeyState::default()),
        judge(&write, &state(vec![sibling(dot(1, 1), 100, "changed")])),
    ];
    let reasons: Vec<String> = verdicts
        .into_iter()
        .map(|v| v.expect_err("refused"))
        .collect();
    for (reason, needle) in reasons
        .iter()
        .zip(["ranks below", "lost", "never applied", "changed"])
    {
        assert!(reason.contains(needle), "{reason:?} should say {needle:?}");
    }
}

// ---- reading the regions' logs --------------------------------------------------------------

/// Collects the WARN events of the leader and the transport, each as its fields by name
/// (`message` included).
///
/// Installed with `tracing::subscriber::with_default` on the test's thread, which is the thread
/// every turmoil host runs on. It names no span: turmoil's per-host span is first hit at the
/// start of every scenario, and a callsite that another test's thread registers while this
/// subscriber is being set up can stay disabled for good (tracing caches interest per
/// callsite), so the host's name would be missing at random. The warnings carry what is needed.
#[derive(Clone, Default)]
struct Warnings {
    seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

impl Warnings {
    fn events(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.seen).clone()
    }
}

/// Field values as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        meta.is_event()
            && *meta.level() == Level::WARN
            && (meta.target().starts_with("leader") || meta.target().starts_with("transport"))
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        lock(&self.seen).push(fields.0);
    }
}
