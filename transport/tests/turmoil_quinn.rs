#![cfg(feature = "turmoil")]
//! Real quinn + rustls connections inside a turmoil simulation, in virtual time, through
//! `transport::sim` and the impairment wrapper: measured latency, partitions that heal, and
//! runs that repeat exactly for a seed.
//!
//! Every host runs the same small echo server ("server") or a scripted client ("client").
//! Virtual time makes the timing assertions exact: nothing here depends on how fast the machine
//! running the test is.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use quinn::{Connection, Endpoint, EndpointConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::time::Instant;
use transport::{
    impair::{ImpairedSocket, ImpairmentHandle, LinkImpairment},
    sim::{self, Trace, TurmoilRuntime, TurmoilUdpSocket},
};

const SERVER_PORT: u16 = 4433;
const ALPN: &[u8] = b"meridian-sim-test";
/// How often each side sends a numbered datagram in the partition scenario.
const TICK: Duration = Duration::from_millis(50);

/// One Ed25519 certificate for the server, made once per test and shared by every run, so two
/// runs of a seed see byte-for-byte the same certificates (and so the same packet sizes).
#[derive(Clone)]
struct Pki {
    cert: CertificateDer<'static>,
    /// PKCS#8 DER of the Ed25519 key.
    key: Vec<u8>,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let cert = rcgen::CertificateParams::new(vec!["server".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    Pki {
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(pki: &Pki) -> quinn::ServerConfig {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
        )
        .expect("server certificate");
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic server");
    quinn::ServerConfig::with_crypto(Arc::new(crypto))
}

fn client_config(pki: &Pki) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client");
    quinn::ClientConfig::new(Arc::new(crypto))
}

fn endpoint_config(seed: u64) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    config.rng_seed(Some(bytes));
    config
}

/// Datagrams one side received: (virtual time since the simulation started, sequence number).
type Arrivals = Arc<Mutex<Vec<(Duration, u64)>>>;

fn now_sim() -> Duration {
    turmoil::sim_elapsed().expect("inside the simulation")
}

/// The server host: echoes each bidirectional stream, records the datagrams it receives and
/// sends a numbered datagram back every `TICK` while `talk` is set. With a trace its socket
/// records every datagram; without one it is bound through the plain `sim::bind` helper.
async fn server(
    pki: Pki,
    seed: u64,
    talk: bool,
    arrivals: Arrivals,
    trace: Option<Trace>,
) -> turmoil::Result {
    let addr = (Ipv4Addr::UNSPECIFIED, SERVER_PORT).into();
    let (socket, runtime) = match &trace {
        Some(trace) => {
            let socket = TurmoilUdpSocket::bind(addr)
                .await?
                .with_trace(trace.clone(), "server");
            let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(socket);
            let runtime: Arc<dyn quinn::Runtime> = Arc::new(TurmoilRuntime);
            (socket, runtime)
        }
        None => sim::bind(addr).await?,
    };
    let endpoint = Endpoint::new_with_abstract_socket(
        endpoint_config(seed),
        Some(server_config(&pki)),
        socket,
        runtime,
    )?;
    while let Some(incoming) = endpoint.accept().await {
        let conn = incoming.await?;
        if let Some(trace) = &trace {
            trace.record(format!("server: up {}", conn.remote_address()));
        }
        tokio::spawn(echo_streams(conn.clone()));
        tokio::spawn(record_datagrams(conn.clone(), arrivals.clone()));
        if talk {
            tokio::spawn(send_datagrams(conn));
        }
    }
    Ok(())
}

async fn echo_streams(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Ok(body) = recv.read_to_end(1024).await else {
            return;
        };
        if send.write_all(&body).await.is_err() || send.finish().is_err() {
            return;
        }
    }
}

async fn record_datagrams(conn: Connection, arrivals: Arrivals) {
    while let Ok(datagram) = conn.read_datagram().await {
        let seq = u64::from_be_bytes(datagram[..].try_into().expect("8-byte datagram"));
        arrivals.lock().unwrap().push((now_sim(), seq));
    }
}

async fn send_datagrams(conn: Connection) {
    for seq in 0.. {
        if conn
            .send_datagram(Bytes::copy_from_slice(&u64::to_be_bytes(seq)))
            .is_err()
        {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// A client endpoint on an ephemeral port, behind an impairment wrapper.
async fn client_endpoint(seed: u64, trace: Trace) -> std::io::Result<(Endpoint, ImpairmentHandle)> {
    let socket = TurmoilUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0).into())
        .await?
        .with_trace(trace, "client");
    let (socket, handle) = ImpairedSocket::wrap(Arc::new(socket), seed);
    let endpoint = Endpoint::new_with_abstract_socket(
        endpoint_config(seed),
        None,
        socket,
        Arc::new(TurmoilRuntime),
    )?;
    Ok((endpoint, handle))
}

fn server_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup("server"), SERVER_PORT)
}

/// One application-level round trip on a fresh stream, timed on the virtual clock.
async fn ping(conn: &Connection) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"ping").await?;
    send.finish()?;
    let echo = recv.read_to_end(16).await?;
    assert_eq!(echo, b"ping");
    Ok(started.elapsed())
}

fn sim_builder(seed: u64) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(seed);
    builder
}

/// Exact: the simulated network takes exactly 1 ms each way, so an application round trip is
/// 2 ms, and 40 ms of one-way delay on the client's outbound side makes it exactly 42 ms.
/// quinn's smoothed RTT then converges to the same 42 ms.
#[test]
fn injected_one_way_latency_shows_up_in_the_measured_rtt() {
    const ONE_WAY: Duration = Duration::from_millis(40);
    const NETWORK_RTT: Duration = Duration::from_millis(2);
    let pki = pki();
    let mut sim = sim_builder(1)
        .min_message_latency(NETWORK_RTT / 2)
        .max_message_latency(NETWORK_RTT / 2)
        .build();
    let server_pki = pki.clone();
    sim.host("server", move || {
        server(server_pki.clone(), 11, false, Arrivals::default(), None)
    });
    /// Application round trips before and after the impairment, and quinn's smoothed RTT.
    #[derive(Default)]
    struct Rtts {
        base: Vec<Duration>,
        impaired: Vec<Duration>,
        smoothed: Duration,
    }
    let results: Arc<Mutex<Rtts>> = Arc::default();
    let out = results.clone();
    sim.client("client", async move {
        let (endpoint, handle) = client_endpoint(12, Trace::new()).await?;
        let conn = endpoint
            .connect_with(client_config(&pki), server_addr(), "server")?
            .await?;
        for _ in 0..5 {
            let rtt = ping(&conn).await?;
            out.lock().unwrap().base.push(rtt);
        }
        handle.set(server_addr(), LinkImpairment::latency(ONE_WAY))?;
        for _ in 0..40 {
            let rtt = ping(&conn).await?;
            out.lock().unwrap().impaired.push(rtt);
        }
        out.lock().unwrap().smoothed = conn.rtt();
        let stats = handle.stats();
        // Every impaired ping went through the delay line, and nothing was lost on the way.
        assert!(stats.delayed >= 40, "{stats:?}");
        assert_eq!((stats.dropped_queue_full, stats.send_errors), (0, 0));
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok(())
    });
    sim.run().expect("simulation");
    let Rtts {
        base,
        impaired,
        smoothed,
    } = &*results.lock().unwrap();
    assert_eq!(base, &vec![NETWORK_RTT; 5]);
    assert_eq!(impaired, &vec![NETWORK_RTT + ONE_WAY; 40]);
    // quinn smooths RTT samples with gain 1/8 (RFC 9002 §5.3): after 40 samples of 42 ms that
    // started from 2 ms the residual is at most 40 ms * (7/8)^40 = 0.19 ms, hence the 1 ms bound.
    let expected = NETWORK_RTT + ONE_WAY;
    assert!(
        *smoothed <= expected && *smoothed + Duration::from_millis(1) >= expected,
        "smoothed rtt {smoothed:?}, expected about {expected:?}"
    );
}

/// What one run of the partition scenario observed.
#[derive(Debug, Default)]
struct Outcome {
    /// Datagrams the server received from the client.
    at_server: Vec<(Duration, u64)>,
    /// Datagrams the client received from the server.
    at_client: Vec<(Duration, u64)>,
    /// When the client partitioned itself from the server, and when it healed.
    cut: Duration,
    heal: Duration,
    /// When a ping started during the partition completed.
    ping_done: Option<Duration>,
    stats: Option<transport::impair::ImpairmentStats>,
    digest: u64,
    events: Vec<(Duration, String)>,
}

const CUT_AFTER: Duration = Duration::from_secs(1);
const PARTITION: Duration = Duration::from_secs(3);
const AFTER_HEAL: Duration = Duration::from_secs(4);

/// Both sides send a numbered datagram every `TICK`; after `CUT_AFTER` the client cuts itself off
/// from the server both ways (outbound block + inbound block) for `PARTITION`, starts a ping
/// that cannot complete until the link heals, then heals and keeps going for `AFTER_HEAL`.
fn partition_scenario(pki: &Pki, mut sim: turmoil::Sim<'_>, link: LinkImpairment) -> Outcome {
    let trace = Trace::new();
    let at_server = Arrivals::default();
    let (server_pki, server_trace, server_log) = (pki.clone(), trace.clone(), at_server.clone());
    sim.host("server", move || {
        server(
            server_pki.clone(),
            21,
            true,
            server_log.clone(),
            Some(server_trace.clone()),
        )
    });
    let outcome: Arc<Mutex<Outcome>> = Arc::default();
    let (out, client_pki, client_trace) = (outcome.clone(), pki.clone(), trace.clone());
    sim.client("client", async move {
        let (endpoint, handle) = client_endpoint(22, client_trace.clone()).await?;
        let server = server_addr();
        handle.set(server, link)?;
        let conn = endpoint
            .connect_with(client_config(&client_pki), server, "server")?
            .await?;
        client_trace.record("client: connected");
        let at_client = Arrivals::default();
        tokio::spawn(record_datagrams(conn.clone(), at_client.clone()));
        tokio::spawn(send_datagrams(conn.clone()));

        tokio::time::sleep(CUT_AFTER).await;
        let cut = now_sim();
        handle.partition(server);
        client_trace.record("client: partition");
        let pinger = conn.clone();
        let ping_trace = client_trace.clone();
        let ping_done = tokio::spawn(async move {
            let result = ping(&pinger).await.map(|_| now_sim());
            ping_trace.record(format!("client: ping {:?}", result.as_ref().ok()));
            result.ok()
        });

        tokio::time::sleep(PARTITION).await;
        let heal = now_sim();
        handle.heal(server);
        client_trace.record("client: heal");

        tokio::time::sleep(AFTER_HEAL).await;
        assert!(
            conn.close_reason().is_none(),
            "the connection survives a short partition"
        );
        let ping_done = ping_done.await?;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        let mut out = out.lock().unwrap();
        out.at_client = at_client.lock().unwrap().clone();
        out.cut = cut;
        out.heal = heal;
        out.ping_done = ping_done;
        out.stats = Some(handle.stats());
        Ok(())
    });
    sim.run().expect("simulation");
    let mut outcome = std::mem::take(&mut *outcome.lock().unwrap());
    outcome.at_server = at_server.lock().unwrap().clone();
    outcome.digest = trace.digest();
    outcome.events = trace.events();
    outcome
}

/// Asserts that `arrivals` stop during the partition and resume after it heals; returns how long
/// after the heal the first datagram arrived.
fn assert_cut_and_resumed(
    who: &str,
    arrivals: &[(Duration, u64)],
    o: &Outcome,
    slack: Duration,
) -> Duration {
    let before = arrivals.iter().filter(|(at, _)| *at <= o.cut).count();
    let during: Vec<_> = arrivals
        .iter()
        .filter(|(at, _)| *at > o.cut + slack && *at < o.heal)
        .collect();
    let first_after = arrivals
        .iter()
        .find(|(at, _)| *at >= o.heal)
        .map(|(at, _)| *at - o.heal);
    let after = arrivals.iter().filter(|(at, _)| *at >= o.heal).count();
    eprintln!(
        "{who}: {before} before the cut, {} during, {after} after the heal (first after {first_after:?})",
        during.len()
    );
    // About CUT_AFTER / TICK datagrams flow before the cut...
    assert!(
        before >= 15,
        "{who}: only {before} datagrams before the cut"
    );
    // ...none while the link is cut (beyond what was already on the wire)...
    assert!(
        during.is_empty(),
        "{who}: datagrams arrived during the partition: {during:?}"
    );
    // ...and they flow again once it heals.
    assert!(after >= 40, "{who}: only {after} datagrams after the heal");
    first_after.expect("datagrams after the heal")
}

#[test]
fn a_partition_stops_delivery_and_healing_resumes_it() {
    let pki = pki();
    // Fixed 1 ms network latency: a datagram on the wire when the cut starts lands within 1 ms.
    let sim = sim_builder(2)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .build();
    let o = partition_scenario(&pki, sim, LinkImpairment::default());
    let slack = Duration::from_millis(2);
    let resumed_server = assert_cut_and_resumed("server", &o.at_server, &o, slack);
    let resumed_client = assert_cut_and_resumed("client", &o.at_client, &o, slack);
    // Datagrams are not retransmitted, but QUIC's probe timeout backs off during the partition;
    // the first packets after the heal must still get through within a few seconds.
    assert!(resumed_server < Duration::from_secs(3) && resumed_client < Duration::from_secs(3));
    let ping_done = o
        .ping_done
        .expect("the ping sent during the partition completes");
    assert!(
        ping_done > o.heal,
        "ping completed at {ping_done:?}, before the heal at {:?}",
        o.heal
    );
    let stats = o.stats.expect("stats");
    assert!(
        stats.blocked_outbound > 0 && stats.blocked_inbound > 0,
        "{stats:?}"
    );
}

/// The partition scenario over a network with random latency and a lossy, jittery impaired link,
/// run twice with one seed: both runs must record the identical packet-level trace. A third run
/// with another seed must differ, which shows that the trace is sensitive to the seed.
#[test]
fn the_same_seed_gives_the_same_trace() {
    let pki = pki();
    let link = LinkImpairment {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        loss: 0.02,
        blocked: false,
    };
    let run = |seed: u64| {
        let sim = sim_builder(seed)
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(25))
            .build();
        partition_scenario(&pki, sim, link)
    };
    let first = run(7);
    let second = run(7);
    let other = run(8);
    eprintln!(
        "seed 7: {} events, digest {:016x} twice; seed 8: {} events, digest {:016x}",
        first.events.len(),
        first.digest,
        other.events.len(),
        other.digest
    );
    assert!(
        first.events.len() > 500,
        "a trace of {} events",
        first.events.len()
    );
    let diverged = first
        .events
        .iter()
        .zip(&second.events)
        .position(|(a, b)| a != b);
    assert_eq!(diverged, None, "traces diverge at event {diverged:?}");
    assert_eq!(first.events.len(), second.events.len());
    assert_eq!(first.digest, second.digest);
    assert_eq!(first.stats, second.stats);
    assert_ne!(first.digest, other.digest);
    let stats = first.stats.expect("stats");
    assert!(
        stats.dropped_loss > 0 && stats.delayed > 0 && stats.blocked_outbound > 0,
        "{stats:?}"
    );
}
