#![cfg(feature = "turmoil")]
//! Three regions' `Mesh`es over turmoil, in virtual time, each behind an impairment wrapper
//! that gives every link 40 ms of one-way WAN latency: a partition between two regions takes
//! their link down while the third keeps talking to both, healing brings it back, a crashed
//! region that restarts is reconnected, and one seed always produces the same trace.
//!
//! The test body drives the simulation step by step (`run_until`), so faults are injected at
//! exact virtual times and every assertion is about virtual time, never the machine's speed.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use transport::{
    Identity, KeyAlgorithm, LinkState, Mesh, MeshConfig, MeshEvent,
    certs::generate_identities,
    impair::{ImpairedSocket, ImpairmentHandle, ImpairmentStats, LinkImpairment},
    sim::{Trace, TurmoilRuntime, TurmoilUdpSocket},
};

const REGIONS: [&str; 3] = ["ap", "eu", "us"];
const PORT: u16 = 7000;
/// One-way WAN latency each region adds to everything it sends to another region.
const WAN_ONE_WAY: Duration = Duration::from_millis(40);
/// How often every region sends a numbered frame to each peer.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// A frame: who sent it and its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    from: String,
    seq: u64,
}

/// Everything the regions did, as seen by the test body.
#[derive(Default)]
struct World {
    /// Frames received: (virtual time, receiver, sender, seq).
    frames: Vec<(Duration, String, String, u64)>,
    /// Up and Down events: (virtual time, region, peer, conn_id, up?).
    links: Vec<(Duration, String, String, u64, bool)>,
    /// The impairment handle and mesh of each region's current incarnation.
    handles: BTreeMap<String, ImpairmentHandle>,
    meshes: BTreeMap<String, Mesh<Tick>>,
}

type Shared = Arc<Mutex<World>>;

fn now_sim() -> Duration {
    turmoil::sim_elapsed().expect("inside the simulation")
}

fn addr_of(region: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(region), PORT)
}

/// Seeds differ per region and per start, so a restarted region draws a new incarnation, and
/// are all derived from the scenario's seed, so a run can be repeated.
fn seed_bytes(seed: u64, region: &str, start: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..8 + region.len()].copy_from_slice(region.as_bytes());
    bytes[24..].copy_from_slice(&start.to_le_bytes());
    bytes
}

/// One region's software: a mesh over an impaired simulated socket, a task that sends a frame
/// to each peer every `SEND_EVERY`, and a loop that records events.
async fn region(
    name: &'static str,
    identity: Identity,
    seed: u64,
    start: u64,
    world: Shared,
    trace: Trace,
) -> turmoil::Result {
    let socket = TurmoilUdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT).into())
        .await?
        .with_trace(trace.clone(), name);
    let (socket, handle) = ImpairedSocket::wrap(Arc::new(socket), seed ^ start);
    let peers: BTreeMap<String, SocketAddr> = REGIONS
        .iter()
        .filter(|peer| **peer != name)
        .map(|peer| (peer.to_string(), addr_of(peer)))
        .collect();
    for addr in peers.values() {
        handle.set(*addr, LinkImpairment::latency(WAN_ONE_WAY))?;
    }
    let mut config = MeshConfig::new(
        identity,
        (Ipv4Addr::UNSPECIFIED, PORT).into(),
        peers.clone(),
    );
    config.keep_alive = Duration::from_millis(500);
    config.idle_timeout = Duration::from_secs(3);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(1);
    config.rng_seed = Some(seed_bytes(seed, name, start));
    let (mesh, events) =
        Mesh::<Tick>::start_with_socket(config, socket, Arc::new(TurmoilRuntime)).await?;
    trace.record(format!("{name}: started (start {start})"));
    {
        let mut world = world.lock().unwrap();
        world.handles.insert(name.to_owned(), handle);
        world.meshes.insert(name.to_owned(), mesh.clone());
    }
    tokio::spawn(send_ticks(name, mesh, peers.into_keys().collect()));
    record_events(name, events, world, trace).await;
    Ok(())
}

async fn send_ticks(name: &'static str, mesh: Mesh<Tick>, peers: Vec<String>) {
    let mut interval = tokio::time::interval(SEND_EVERY);
    for seq in 0.. {
        interval.tick().await;
        for peer in &peers {
            let tick = Tick {
                from: name.to_owned(),
                seq,
            };
            // Not connected (or a full queue) just means this tick is not sent.
            let _ = mesh.try_send(peer, &tick);
        }
    }
}

async fn record_events(
    name: &str,
    mut events: mpsc::Receiver<MeshEvent<Tick>>,
    world: Shared,
    trace: Trace,
) {
    while let Some(event) = events.recv().await {
        let at = now_sim();
        let mut world = world.lock().unwrap();
        match event {
            MeshEvent::Up { peer, conn_id } => {
                trace.record(format!("{name}: up {peer} #{conn_id}"));
                world.links.push((at, name.to_owned(), peer, conn_id, true));
            }
            MeshEvent::Down {
                peer,
                conn_id,
                reason,
            } => {
                trace.record(format!("{name}: down {peer} #{conn_id}: {reason}"));
                world
                    .links
                    .push((at, name.to_owned(), peer, conn_id, false));
            }
            MeshEvent::Frame { peer, msg, .. } => {
                assert_eq!(peer, msg.from, "the authenticated peer sent the frame");
                trace.record(format!("{name}: frame {peer} {}", msg.seq));
                world.frames.push((at, name.to_owned(), peer, msg.seq));
            }
            MeshEvent::Rejected { remote, reason } => {
                trace.record(format!("{name}: rejected {remote}: {reason}"));
            }
            MeshEvent::SplitBrain {
                peer,
                live,
                refused,
            } => {
                trace.record(format!("{name}: split brain {peer}: {live} / {refused}"));
            }
        }
    }
}

/// Steps the simulation until virtual time `t`.
fn run_until(sim: &mut turmoil::Sim<'_>, t: Duration) {
    while sim.elapsed() < t {
        sim.step().expect("simulation step");
    }
}

const ALL_UP_BY: Duration = Duration::from_secs(3);
const CUT_AT: Duration = Duration::from_secs(4);
const HEAL_AT: Duration = Duration::from_secs(12);
const CRASH_AT: Duration = Duration::from_secs(16);
const RESTART_AT: Duration = Duration::from_secs(20);
const END_AT: Duration = Duration::from_secs(26);

/// What a run left behind.
struct Run {
    world: Shared,
    trace: Trace,
    /// Link states and RTTs of every region just before the cut.
    before_cut: BTreeMap<String, BTreeMap<String, (LinkState, Option<Duration>)>>,
    /// eu's impairment counters at the heal.
    eu_at_heal: ImpairmentStats,
}

/// Which faults a run injects.
#[derive(Clone, Copy)]
struct Faults {
    /// Partition eu from ap (both ways, on eu's side) from `CUT_AT` to `HEAL_AT`.
    partition: bool,
}

/// Starts three regions, optionally partitions eu from ap from `CUT_AT` to `HEAL_AT`, crashes
/// us at `CRASH_AT` and restarts it at `RESTART_AT`.
fn scenario(seed: u64, identities: &BTreeMap<String, Identity>, faults: Faults) -> Run {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(END_AT + Duration::from_secs(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .rng_seed(seed)
        .build();
    let world = Shared::default();
    let trace = Trace::new();
    for name in REGIONS {
        let identity = identities[name].clone();
        let (world, trace) = (world.clone(), trace.clone());
        let starts = Arc::new(AtomicU64::new(0));
        sim.host(name, move || {
            let start = starts.fetch_add(1, Ordering::Relaxed);
            region(
                name,
                identity.clone(),
                seed,
                start,
                world.clone(),
                trace.clone(),
            )
        });
    }
    let snapshot = |world: &Shared| {
        let world = world.lock().unwrap();
        world
            .meshes
            .iter()
            .map(|(region, mesh)| {
                let links = mesh
                    .links()
                    .into_iter()
                    .map(|(peer, status)| (peer, (status.state, status.rtt)))
                    .collect();
                (region.clone(), links)
            })
            .collect()
    };

    run_until(&mut sim, ALL_UP_BY);
    let before_cut = snapshot(&world);
    run_until(&mut sim, CUT_AT);
    let ap = sim.lookup("ap");
    let eu_handle = world.lock().unwrap().handles["eu"].clone();
    if faults.partition {
        eu_handle.partition(SocketAddr::new(ap, PORT));
    }
    run_until(&mut sim, HEAL_AT);
    let eu_at_heal = eu_handle.stats();
    eu_handle.heal(SocketAddr::new(ap, PORT));
    run_until(&mut sim, CRASH_AT);
    // Drop the test's handle first: the crash then drops the last reference to us's endpoint
    // inside the simulation, which is what releases its simulated port for the restart.
    world.lock().unwrap().meshes.remove("us");
    sim.crash("us");
    run_until(&mut sim, RESTART_AT);
    sim.bounce("us");
    run_until(&mut sim, END_AT);
    Run {
        world,
        trace,
        before_cut,
        eu_at_heal,
    }
}

fn identities() -> BTreeMap<String, Identity> {
    let regions: Vec<String> = REGIONS.iter().map(|r| r.to_string()).collect();
    generate_identities("sim", &regions, KeyAlgorithm::Ed25519).expect("identities")
}

/// Frames `to` received from `from` in the window `[start, end)`.
fn frames(world: &World, to: &str, from: &str, start: Duration, end: Duration) -> usize {
    world
        .frames
        .iter()
        .filter(|(at, r, p, _)| r == to && p == from && *at >= start && *at < end)
        .count()
}

/// Link events of `region` about `peer` in `[start, end)`, as (up?, conn_id).
fn link_events(
    world: &World,
    region: &str,
    peer: &str,
    start: Duration,
    end: Duration,
) -> Vec<(bool, u64)> {
    world
        .links
        .iter()
        .filter(|(at, r, p, _, _)| r == region && p == peer && *at >= start && *at < end)
        .map(|(_, _, _, id, up)| (*up, *id))
        .collect()
}

#[test]
fn three_regions_survive_a_partition_and_a_crash() {
    let run = scenario(5, &identities(), Faults { partition: true });
    let world = run.world.lock().unwrap();
    let secs = Duration::from_secs;

    // Every link is up before the cut, and its RTT shows the WAN: 40 ms each way plus 1-3 ms
    // of simulated network each way, plus ack-delay quantisation; the smoothed estimate also
    // still carries some of the handshake's samples, so the bound above is loose.
    for (region, links) in &run.before_cut {
        assert_eq!(links.len(), 2, "{region}");
        for (peer, (state, rtt)) in links {
            assert_eq!(*state, LinkState::Up, "{region} -> {peer}");
            let rtt = rtt.expect("rtt while up");
            assert!(
                rtt >= 2 * WAN_ONE_WAY && rtt < 2 * WAN_ONE_WAY + Duration::from_millis(30),
                "{region} -> {peer}: rtt {rtt:?}"
            );
        }
    }
    for (to, from) in [("eu", "ap"), ("ap", "eu"), ("us", "eu"), ("eu", "us")] {
        assert!(
            frames(&world, to, from, secs(2), CUT_AT) >= 15,
            "{to} <- {from} before the cut"
        );
    }

    // The cut: eu and ap stop hearing from each other (after what was already on the wire)...
    let settled = CUT_AT + Duration::from_millis(100);
    assert_eq!(frames(&world, "eu", "ap", settled, HEAL_AT), 0);
    assert_eq!(frames(&world, "ap", "eu", settled, HEAL_AT), 0);
    // ...their link goes down on both sides once the idle timeout passes...
    for (region, peer) in [("eu", "ap"), ("ap", "eu")] {
        let events = link_events(&world, region, peer, CUT_AT, HEAL_AT);
        assert!(
            events.first().is_some_and(|(up, _)| !up),
            "{region} sees {peer} go down: {events:?}"
        );
    }
    // ...while us keeps exchanging frames with both of them throughout.
    for (to, from) in [("us", "eu"), ("us", "ap"), ("eu", "us"), ("ap", "us")] {
        assert!(
            frames(&world, to, from, settled, HEAL_AT) >= 70,
            "{to} <- {from} during the cut"
        );
    }
    assert!(run.eu_at_heal.blocked_outbound > 0 && run.eu_at_heal.blocked_inbound > 0);

    // The heal: the link comes back on a new connection and frames resume within seconds
    // (backoff_max is 1 s, plus a handshake of a few WAN round trips). Both sides redial, so
    // the first connection up may be replaced once by the one the dial rule prefers; after
    // that the link stays up.
    let resumed = HEAL_AT + secs(2);
    for (region, peer) in [("eu", "ap"), ("ap", "eu")] {
        let ups: Vec<_> = link_events(&world, region, peer, HEAL_AT, CRASH_AT)
            .into_iter()
            .filter(|(up, _)| *up)
            .collect();
        assert!(
            (1..=2).contains(&ups.len()),
            "{region} reconnects to {peer}: {ups:?}"
        );
        let later = link_events(&world, region, peer, resumed, CRASH_AT);
        assert!(later.is_empty(), "{region} -> {peer} stays up: {later:?}");
    }
    assert!(frames(&world, "eu", "ap", resumed, CRASH_AT) >= 15);
    assert!(frames(&world, "ap", "eu", resumed, CRASH_AT) >= 15);

    // The crash: us falls silent, eu and ap see it go down, and it comes back after the
    // restart, in both directions.
    let crashed = CRASH_AT + Duration::from_millis(100);
    for peer in ["eu", "ap"] {
        assert_eq!(frames(&world, peer, "us", crashed, RESTART_AT), 0);
        let events = link_events(&world, peer, "us", CRASH_AT, RESTART_AT);
        assert_eq!(
            events.first().map(|(up, _)| *up),
            Some(false),
            "{peer} sees us go down"
        );
        assert!(
            frames(&world, peer, "us", RESTART_AT + secs(2), END_AT) >= 15,
            "{peer} <- us after restart"
        );
        assert!(
            frames(&world, "us", peer, RESTART_AT + secs(2), END_AT) >= 15,
            "us <- {peer} after restart"
        );
        // eu and ap were never cut from each other by the crash.
    }
    assert!(frames(&world, "eu", "ap", crashed, END_AT) >= 80);
}

/// Handshakes, WAN latency through the delay line, frames both ways, a crash and a restart with
/// reconnects, all twice with one seed: the packet-level and event-level traces must be
/// identical.
///
/// The partition is left out on purpose. Through a partition and its heal the runs still agree
/// on every outcome and on which packets each host sends and receives in each millisecond, but
/// not always on the order of a host's tasks *within* one millisecond, which can change how quinn
/// coalesces the next packets. Part of it is tokio's `watch` channel (used by the mesh), which
/// files each waiter under one of 8 notifiers chosen by tokio's unseeded thread RNG; building with
/// `--cfg tokio_unstable` (turmoil then seeds every host's runtime) makes that seeded but did not
/// remove all of it. See the transport report for the evidence.
#[test]
fn a_crash_and_restart_repeat_exactly_for_a_seed() {
    let identities = identities();
    let faults = Faults { partition: false };
    let first = scenario(9, &identities, faults);
    let second = scenario(9, &identities, faults);
    let (a, b) = (first.trace.events(), second.trace.events());
    eprintln!("{} events, digest {:016x}", a.len(), first.trace.digest());
    assert!(a.len() > 5_000, "a trace of {} events", a.len());
    let diverged = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(
        diverged.map(|i| (&a[i], &b[i])),
        None,
        "traces diverge at event {diverged:?}"
    );
    assert_eq!(
        (a.len(), first.trace.digest()),
        (b.len(), second.trace.digest())
    );
    // The crash and restart really happened in the trace that repeated.
    let world = first.world.lock().unwrap();
    for peer in ["eu", "ap"] {
        let events = link_events(&world, peer, "us", CRASH_AT, END_AT);
        assert!(
            events.iter().any(|(up, _)| !up) && events.iter().any(|(up, _)| *up),
            "{peer} sees us go down and come back: {events:?}"
        );
    }
}
