#![cfg(feature = "turmoil")]
//! How soon a link carries frames again after a long partition heals, in virtual time.
//!
//! A cut longer than the idle timeout takes the connection down, and the link redials. A dial
//! into the partition used to wait out a whole idle timeout while QUIC retransmitted its first
//! packet ever more rarely (1 s, 2 s, 4 s ...), and redials were spaced by up to 5 s, so a healed
//! link could stay down for many seconds. Now every dial is bounded by `dial_timeout` and a
//! timed-out dial is followed at once by the next, so the partition is probed about once per
//! second (each attempt's first packet and QUIC's retransmission one second later) and the
//! first frame after the heal arrives within about a second, wherever in that cycle the heal
//! falls.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use transport::{
    KeyAlgorithm, Mesh, MeshConfig, MeshEvent,
    certs::generate_identities,
    impair::{ImpairedSocket, ImpairmentHandle},
    sim::{TurmoilRuntime, TurmoilUdpSocket},
};

const PORT: u16 = 7000;
const SEND_EVERY: Duration = Duration::from_millis(100);
const UP_BY: Duration = Duration::from_secs(2);
const CUT_AT: Duration = Duration::from_secs(3);
/// Longer than the idle timeout (10 s): the connection goes down during the cut. The heal is
/// at this time plus an offset that the test sweeps across two seconds.
const HEAL_AROUND: Duration = Duration::from_secs(29);
const END_AT: Duration = Duration::from_secs(50);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick(u64);

#[derive(Default)]
struct World {
    /// When each region received a frame from the other.
    frames: Vec<(Duration, &'static str)>,
    handles: BTreeMap<&'static str, ImpairmentHandle>,
}

/// Runs "a" and "b" with the given dial timeout and longest backoff, cuts them apart from
/// `CUT_AT` to `heal_at` and returns the virtual time from the heal to the later of the two
/// regions' first frame from the other.
fn heal_delay(dial_timeout: Duration, backoff_max: Duration, heal_at: Duration) -> Duration {
    let names = ["a", "b"];
    let ids = generate_identities("heal", &names.map(String::from), KeyAlgorithm::Ed25519)
        .expect("identities");
    let mut sim = turmoil::Builder::new()
        .simulation_duration(END_AT + Duration::from_secs(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(2))
        .rng_seed(11)
        .build();
    let world = Arc::new(Mutex::new(World::default()));
    for (i, name) in names.into_iter().enumerate() {
        let (identity, world) = (ids[name].clone(), world.clone());
        let peer = names[1 - i];
        sim.host(name, move || {
            let (identity, world) = (identity.clone(), world.clone());
            async move {
                let socket = TurmoilUdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT).into()).await?;
                let (socket, handle) = ImpairedSocket::wrap(Arc::new(socket), i as u64);
                let peers = BTreeMap::from([(
                    peer.to_owned(),
                    SocketAddr::new(turmoil::lookup(peer), PORT),
                )]);
                let mut config =
                    MeshConfig::new(identity, (Ipv4Addr::UNSPECIFIED, PORT).into(), peers);
                config.backoff_max = backoff_max;
                config.dial_timeout = dial_timeout;
                config.rng_seed = Some([i as u8 + 1; 32]);
                let (mesh, mut events) =
                    Mesh::<Tick>::start_with_socket(config, socket, Arc::new(TurmoilRuntime))
                        .await?;
                world.lock().unwrap().handles.insert(name, handle);
                let sender = mesh.clone();
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval(SEND_EVERY);
                    for seq in 0.. {
                        interval.tick().await;
                        // Not connected just means this tick is not sent.
                        let _ = sender.try_send(peer, &Tick(seq));
                    }
                });
                while let Some(event) = events.recv().await {
                    if let MeshEvent::Frame { .. } = event {
                        let at = turmoil::sim_elapsed().expect("in the simulation");
                        world.lock().unwrap().frames.push((at, name));
                    }
                }
                drop(mesh);
                Ok(())
            }
        });
    }
    let run_until = |sim: &mut turmoil::Sim<'_>, t: Duration| {
        while sim.elapsed() < t {
            sim.step().expect("simulation step");
        }
    };
    run_until(&mut sim, UP_BY);
    for name in names {
        let got = world.lock().unwrap().frames.iter().any(|(_, n)| *n == name);
        assert!(got, "{name} receives frames before the cut");
    }
    run_until(&mut sim, CUT_AT);
    let handle = world.lock().unwrap().handles["a"].clone();
    let b = SocketAddr::new(sim.lookup("b"), PORT);
    handle.partition(b);
    run_until(&mut sim, heal_at);
    handle.heal(b);
    run_until(&mut sim, END_AT);
    let world = world.lock().unwrap();
    let settled = CUT_AT + Duration::from_millis(50);
    assert!(
        !world
            .frames
            .iter()
            .any(|(at, _)| *at > settled && *at < heal_at),
        "no frame crosses the partition"
    );
    names
        .into_iter()
        .map(|name| {
            let first = world
                .frames
                .iter()
                .find(|(at, n)| *n == name && *at >= heal_at)
                .unwrap_or_else(|| panic!("{name} hears from its peer again after the heal"));
            first.0 - heal_at
        })
        .max()
        .expect("two regions")
}

#[test]
fn a_healed_link_is_back_within_about_a_second_wherever_the_heal_falls() {
    let secs = Duration::from_secs;
    // Heals spread over two seconds of the redial cycle.
    let heals: Vec<Duration> = (0..8)
        .map(|i| HEAL_AROUND + Duration::from_millis(250 * i))
        .collect();
    let bounded: Vec<Duration> = heals
        .iter()
        .map(|&at| heal_delay(transport::mesh::DEFAULT_DIAL_TIMEOUT, secs(1), at))
        .collect();
    // The control: dials bounded only by the idle timeout, redials up to 5 s apart (the
    // defaults before dial_timeout).
    let unbounded: Vec<Duration> = heals
        .iter()
        .map(|&at| heal_delay(secs(60), secs(5), at))
        .collect();
    eprintln!("first frames after the heal: bounded {bounded:?}, unbounded {unbounded:?}");
    let worst_bounded = *bounded.iter().max().expect("heals");
    let worst_unbounded = *unbounded.iter().max().expect("heals");
    // One probe per second (the attempt's first packet, QUIC's retransmission a second
    // later, the next attempt at dial_timeout), plus a handshake of a few milliseconds.
    assert!(
        worst_bounded <= Duration::from_millis(1_100),
        "the heal took up to {worst_bounded:?} with bounded dials: {bounded:?}"
    );
    assert!(
        worst_unbounded > worst_bounded,
        "unbounded dials healed within {worst_unbounded:?}, bounded within {worst_bounded:?}"
    );
}
