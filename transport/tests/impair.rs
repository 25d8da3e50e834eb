//! The impairment wrapper on real sockets over 127.0.0.1: loss drops exactly the datagrams its
//! counters and seed say, latency holds datagrams back, and a partition stops quinn handshakes
//! and traffic until it heals.
//!
//! Assertions never depend on how fast the machine is: counts are exact (seeded RNG, loopback
//! does not lose datagrams that are read promptly), and times are lower bounds.

use std::{
    collections::BTreeSet,
    future::poll_fn,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use quinn::{
    AsyncUdpSocket, ConnectionError, Endpoint, EndpointConfig, Runtime, TokioRuntime, udp::Transmit,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{net::UdpSocket, time::Instant};
use transport::impair::{ImpairedSocket, ImpairmentHandle, ImpairmentStats, LinkImpairment};

const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const ALPN: &[u8] = b"meridian-impair-test";

/// A real UDP socket on 127.0.0.1 behind an impairment wrapper.
fn impaired_socket(seed: u64) -> (Arc<ImpairedSocket>, ImpairmentHandle) {
    let socket = std::net::UdpSocket::bind(LOCALHOST).expect("bind 127.0.0.1");
    let socket = TokioRuntime.wrap_udp_socket(socket).expect("wrap socket");
    ImpairedSocket::wrap(socket, seed)
}

/// Sends one datagram, waiting while the socket would block.
async fn send(socket: &Arc<ImpairedSocket>, dest: SocketAddr, payload: &[u8]) {
    let transmit = Transmit {
        destination: dest,
        ecn: None,
        contents: payload,
        segment_size: None,
        src_ip: None,
    };
    let mut poller = socket.clone().create_io_poller();
    loop {
        match socket.try_send(&transmit) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                poll_fn(|cx| poller.as_mut().poll_writable(cx))
                    .await
                    .expect("writable");
            }
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

/// Receives datagrams until `expected` have arrived, then waits `quiet` more to prove that no
/// others follow; returns them with their arrival times.
async fn receive(receiver: &UdpSocket, expected: usize, quiet: Duration) -> Vec<(Instant, u64)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < expected {
        let (len, _) = tokio::time::timeout(Duration::from_secs(10), receiver.recv_from(&mut buf))
            .await
            .expect("datagram within 10 s")
            .expect("recv");
        got.push((
            Instant::now(),
            u64::from_be_bytes(buf[..len].try_into().unwrap()),
        ));
    }
    let extra = tokio::time::timeout(quiet, receiver.recv_from(&mut buf)).await;
    assert!(extra.is_err(), "more datagrams arrived than expected");
    got
}

/// Sends `n` numbered datagrams through a 50 % lossy link (seed `seed`) to a plain receiver and
/// returns the numbers that arrived, with the wrapper's counters.
async fn lossy_run(seed: u64, n: u64) -> (BTreeSet<u64>, ImpairmentStats) {
    let receiver = UdpSocket::bind(LOCALHOST).await.unwrap();
    let dest = receiver.local_addr().unwrap();
    let (socket, handle) = impaired_socket(seed);
    let lossy = LinkImpairment {
        loss: 0.5,
        ..LinkImpairment::default()
    };
    handle.set(dest, lossy).unwrap();
    // Receive while sending, so the kernel's receive buffer never overflows and loses some.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<usize>();
    let receiving = tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut buf = [0u8; 64];
        let mut done_rx = done_rx;
        let mut expected = None;
        while expected.is_none_or(|expected| got.len() < expected) {
            tokio::select! {
                biased;
                count = &mut done_rx, if expected.is_none() => expected = Some(count.unwrap()),
                received = tokio::time::timeout(Duration::from_secs(10), receiver.recv_from(&mut buf)) => {
                    let (len, _) = received.expect("datagram within 10 s").unwrap();
                    got.insert(u64::from_be_bytes(buf[..len].try_into().unwrap()));
                }
            }
        }
        let extra =
            tokio::time::timeout(Duration::from_millis(200), receiver.recv_from(&mut buf)).await;
        assert!(
            extra.is_err(),
            "more datagrams arrived than the counters allow"
        );
        got
    });
    for seq in 0..n {
        send(&socket, dest, &seq.to_be_bytes()).await;
        if seq % 32 == 31 {
            // Let the receiver task drain the socket.
            tokio::task::yield_now().await;
        }
    }
    let stats = handle.stats();
    done_tx.send(stats.passed as usize).unwrap();
    (receiving.await.unwrap(), stats)
}

#[tokio::test]
async fn loss_drops_exactly_what_the_counters_and_the_seed_say() {
    const N: u64 = 2000;
    let (first, stats) = lossy_run(3, N).await;
    // Exact accounting: every datagram was either passed or dropped by the loss draw, and
    // exactly the passed ones arrived.
    assert_eq!(stats.passed + stats.dropped_loss, N);
    assert_eq!(first.len() as u64, stats.passed);
    assert_eq!(
        (
            stats.delayed,
            stats.blocked_outbound,
            stats.dropped_queue_full
        ),
        (0, 0, 0)
    );
    // The seed fixes the draw: with seed 3 (rand 0.9's StdRng) exactly 1000 of the 2000 are
    // dropped. Only a change of RNG algorithm can move this number; it is not statistical.
    assert_eq!(stats.dropped_loss, 1000, "{stats:?}");
    // The same seed drops exactly the same datagrams again.
    let (second, _) = lossy_run(3, N).await;
    assert_eq!(first, second);
}

#[tokio::test]
async fn latency_holds_each_datagram_back_and_keeps_their_order() {
    const LATENCY: Duration = Duration::from_millis(30);
    let receiver = UdpSocket::bind(LOCALHOST).await.unwrap();
    let dest = receiver.local_addr().unwrap();
    let (socket, handle) = impaired_socket(1);
    handle.set(dest, LinkImpairment::latency(LATENCY)).unwrap();
    let mut sent_at = Vec::new();
    for seq in 0..20u64 {
        sent_at.push(Instant::now());
        send(&socket, dest, &seq.to_be_bytes()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = receive(&receiver, 20, Duration::from_millis(100)).await;
    let order: Vec<u64> = got.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    for (at, seq) in got {
        let held = at - sent_at[seq as usize];
        assert!(held >= LATENCY, "datagram {seq} arrived after {held:?}");
    }
    let stats = handle.stats();
    assert_eq!((stats.delayed, stats.released, stats.queued), (20, 20, 0));
}

/// One Ed25519 certificate for "server", trusted by the client.
struct Pki {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["server".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Pki {
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_endpoint(pki: &Pki) -> (Endpoint, ImpairmentHandle) {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
        )
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let (socket, handle) = impaired_socket(1);
    let endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(TokioRuntime),
    )
    .unwrap();
    (endpoint, handle)
}

fn client_endpoint(pki: &Pki) -> (Endpoint, ImpairmentHandle) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let (socket, handle) = impaired_socket(2);
    let mut endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .unwrap();
    endpoint.set_default_client_config(config);
    (endpoint, handle)
}

/// How long a blocked handshake is given to (not) complete. Any value proves the point: a
/// blocked handshake can never complete, so a slow machine cannot make this test fail.
const BLOCKED_FOR: Duration = Duration::from_secs(1);

/// Accepts connections and counts the datagrams they bring.
fn serve(endpoint: Endpoint) -> tokio::sync::mpsc::Receiver<Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(datagram) = conn.read_datagram().await {
                    if tx.send(datagram).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

async fn connect(
    client: &Endpoint,
    server: SocketAddr,
) -> Result<quinn::Connection, ConnectionError> {
    client.connect(server, "server").expect("connect").await
}

/// Asserts that a handshake to `server` does not complete within `BLOCKED_FOR`.
async fn assert_blocked(client: &Endpoint, server: SocketAddr) {
    let attempt = tokio::time::timeout(BLOCKED_FOR, connect(client, server)).await;
    assert!(
        attempt.is_err(),
        "the handshake crossed the partition: {attempt:?}"
    );
}

#[tokio::test]
async fn a_partition_stops_quinn_until_it_heals() {
    let pki = pki();
    let (server, server_handle) = server_endpoint(&pki);
    let server_addr = SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        server.local_addr().unwrap().port(),
    );
    let mut datagrams = serve(server.clone());
    let (client, client_handle) = client_endpoint(&pki);
    let client_addr = SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        client.local_addr().unwrap().port(),
    );

    // Outbound block on the client: the handshake never reaches the server.
    client_handle
        .set(server_addr, LinkImpairment::blocked())
        .unwrap();
    assert_blocked(&client, server_addr).await;
    assert!(client_handle.stats().blocked_outbound > 0);
    assert_eq!(server_handle.stats().blocked_inbound, 0);

    // Inbound block on the server (a one-way partition on the receive side): same result.
    client_handle.clear(server_addr);
    server_handle.block_inbound_from(client_addr);
    assert_blocked(&client, server_addr).await;
    assert!(server_handle.stats().blocked_inbound > 0);

    // Healed: the handshake completes and datagrams flow.
    server_handle.unblock_inbound_from(client_addr);
    let conn = connect(&client, server_addr)
        .await
        .expect("connects once healed");
    conn.send_datagram(Bytes::from_static(b"before")).unwrap();
    assert_eq!(datagrams.recv().await.unwrap(), "before");

    // Both ways from the client's side, on the established connection: nothing arrives...
    client_handle.partition(server_addr);
    let blocked_before = client_handle.stats().blocked_outbound;
    for _ in 0..5 {
        conn.send_datagram(Bytes::from_static(b"during")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let silent = tokio::time::timeout(Duration::from_millis(200), datagrams.recv()).await;
    assert!(
        silent.is_err(),
        "a datagram crossed the partition: {silent:?}"
    );
    assert!(client_handle.stats().blocked_outbound >= blocked_before + 5);

    // ...until it heals, well within the idle timeout.
    client_handle.heal(server_addr);
    conn.send_datagram(Bytes::from_static(b"after")).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), datagrams.recv())
        .await
        .expect("datagrams flow after the heal")
        .unwrap();
    assert_eq!(next, "after");
    assert!(conn.close_reason().is_none());
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
}
