//! Refused handshakes, each with a clear reason: unknown CA, wrong cluster, expired
//! certificate, a region not in the configuration, a certificate for another region than the
//! one dialed, and broken transport hellos.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Node, bind_loopback, init_tracing, names, start_on, test_config};
use transport::certs::{ClusterCa, LeafSpec, Validity, generate_identities};
use transport::codec::{HELLO_MAX_BYTES, Hello, encode_frame};
use transport::{ALPN, Identity, KeyAlgorithm, LinkState, MeshEvent};

/// Starts `identity` on a fresh loopback socket with the given peers.
async fn start(identity: &Identity, peers: &[(&str, SocketAddr)]) -> Node {
    let socket = bind_loopback();
    let addr = socket.local_addr().expect("addr");
    let peers = peers.iter().map(|(r, a)| (r.to_string(), *a)).collect();
    start_on(socket, test_config(identity.clone(), addr, peers)).await
}

/// A loopback address where nothing answers.
fn silent_addr() -> (std::net::UdpSocket, SocketAddr) {
    let socket = bind_loopback();
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// Waits for a `Rejected` event whose reason contains `text`, and returns the reason.
async fn rejected_with(node: &mut Node, text: &str) -> String {
    let event = node
        .wait_event(
            &format!("Rejected containing {text:?}"),
            |e| matches!(e, MeshEvent::Rejected { reason, .. } if reason.contains(text)),
        )
        .await;
    let MeshEvent::Rejected { reason, .. } = event else {
        unreachable!("matched above")
    };
    reason
}

fn assert_never_up(node: &Node) {
    assert!(
        !node
            .log
            .iter()
            .any(|e| matches!(e, MeshEvent::Up { .. } | MeshEvent::Frame { .. })),
        "{}: a refused peer came up: {:#?}",
        node.mesh.region(),
        node.log
    );
    for (peer, status) in node.mesh.links() {
        assert_ne!(status.state, LinkState::Up, "{peer}: {status:?}");
    }
}

/// Both sides rejected and logged each other; neither came up. Then both shut down.
async fn finish(a: Node, b: Node) {
    assert_never_up(&a);
    assert_never_up(&b);
    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

/// Starts `a` and a rogue `b` that point at each other.
async fn pair(a_id: &Identity, b_id: &Identity) -> (Node, Node) {
    let (sock_a, sock_b) = (bind_loopback(), bind_loopback());
    let (addr_a, addr_b) = (
        sock_a.local_addr().expect("addr"),
        sock_b.local_addr().expect("addr"),
    );
    let a = start_on(
        sock_a,
        test_config(
            a_id.clone(),
            addr_a,
            BTreeMap::from([(b_id.region.clone(), addr_b)]),
        ),
    )
    .await;
    let b = start_on(
        sock_b,
        test_config(
            b_id.clone(),
            addr_b,
            BTreeMap::from([(a_id.region.clone(), addr_a)]),
        ),
    )
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    init_tracing();
    let ours =
        generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256).expect("certs");
    let theirs =
        generate_identities("test", &names(&["a", "b"]), KeyAlgorithm::EcdsaP256).expect("certs");
    let (mut a, mut b) = pair(&ours["a"], &theirs["b"]).await;
    let reason = rejected_with(&mut a, "not issued by this cluster's CA").await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    rejected_with(&mut b, "not issued by this cluster's CA").await;
    let last = a.mesh.links()["b"].last_error.clone().unwrap_or_default();
    assert!(last.contains("dialing region \"b\""), "{last}");
    finish(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_of_another_cluster_is_refused_even_from_the_same_ca() {
    init_tracing();
    // One CA shared by two clusters: the TLS handshake succeeds, the cluster check does not.
    let ca = ClusterCa::new("alpha", KeyAlgorithm::EcdsaP256).expect("ca");
    let a_id = ca
        .issue(&LeafSpec::new(&ca, "a", KeyAlgorithm::EcdsaP256))
        .and_then(|c| c.identity(&ca))
        .expect("a");
    let mut spec = LeafSpec::new(&ca, "b", KeyAlgorithm::EcdsaP256);
    spec.cluster = "beta".into();
    let b_id = ca.issue(&spec).and_then(|c| c.identity(&ca)).expect("b");
    assert_eq!(b_id.cluster, "beta");
    let (mut a, mut b) = pair(&a_id, &b_id).await;
    // a's own refusal (its dial always produces one); a may also relay b's refusal first.
    let reason = rejected_with(
        &mut a,
        "the peer is in cluster \"beta\", this region is in cluster \"alpha\"",
    )
    .await;
    assert!(reason.starts_with("wrong cluster: "), "{reason}");
    rejected_with(&mut b, "wrong cluster").await;
    finish(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    init_tracing();
    let ca = ClusterCa::new("test", KeyAlgorithm::EcdsaP256).expect("ca");
    let a_id = ca
        .issue(&LeafSpec::new(&ca, "a", KeyAlgorithm::EcdsaP256))
        .and_then(|c| c.identity(&ca))
        .expect("a");
    let mut spec = LeafSpec::new(&ca, "b", KeyAlgorithm::EcdsaP256);
    let day = Duration::from_secs(24 * 3600);
    spec.validity = Validity {
        not_before: SystemTime::now() - 2 * day,
        not_after: SystemTime::now() - day,
    };
    let b_id = ca.issue(&spec).and_then(|c| c.identity(&ca)).expect("b");
    let (mut a, mut b) = pair(&a_id, &b_id).await;
    let reason = rejected_with(&mut a, "the peer's certificate has expired").await;
    assert!(reason.contains("certificate expired"), "{reason}");
    // b hears why: a refuses its certificate with the "certificate expired" alert.
    rejected_with(&mut b, "our certificate has expired").await;
    finish(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_missing_from_the_configuration_is_refused() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b", "c"]), KeyAlgorithm::EcdsaP256)
        .expect("certs");
    let (_silent, nowhere) = silent_addr();
    let mut a = start(&ids["a"], &[("b", nowhere)]).await;
    let mut c = start(&ids["c"], &[("a", a.mesh.local_addr())]).await;
    let reason = rejected_with(&mut a, "is not a peer").await;
    assert_eq!(
        reason,
        "region \"c\" is not a peer in this region's configuration (configured peers: b)"
    );
    let reason = rejected_with(&mut c, "is not a peer").await;
    assert!(reason.contains("closed by the peer"), "{reason}");
    finish(a, c).await;
}

/// The address configured for "b" is answered by a process holding "c"'s certificate: the
/// dial to "b" fails with a name mismatch, and the connection that process dials itself is
/// attributed to "c", never to "b".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_region_than_dialed_is_detected() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b", "c"]), KeyAlgorithm::EcdsaP256)
        .expect("certs");
    let impostor_socket = bind_loopback();
    let impostor_addr = impostor_socket.local_addr().expect("addr");
    let (_silent, nowhere) = silent_addr();
    let mut a = start(&ids["a"], &[("b", impostor_addr), ("c", nowhere)]).await;
    let mut impostor = start_on(
        impostor_socket,
        test_config(
            ids["c"].clone(),
            impostor_addr,
            BTreeMap::from([("a".to_owned(), a.mesh.local_addr())]),
        ),
    )
    .await;
    let reason = rejected_with(&mut a, "for another region than the one configured").await;
    assert!(reason.contains("dialing region \"b\""), "{reason}");
    assert!(reason.contains("b.meridian"), "{reason}");
    let up = a
        .seen_or_wait("Up", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    assert!(
        matches!(&up, MeshEvent::Up { peer, .. } if peer == "c"),
        "{up:?}"
    );
    impostor
        .seen_or_wait("Up", |e| matches!(e, MeshEvent::Up { .. }))
        .await;
    a.drain();
    assert!(
        !a.log
            .iter()
            .any(|e| matches!(e, MeshEvent::Up { peer, .. } if peer == "b")),
        "{:#?}",
        a.log
    );
    assert_ne!(a.mesh.links()["b"].state, LinkState::Up);
    a.mesh.shutdown().await;
    impostor.mesh.shutdown().await;
}

/// A quinn client with a valid certificate that speaks a broken transport preamble or hello.
struct RawClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl RawClient {
    async fn connect(identity: &Identity, server: SocketAddr, server_region: &str) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca_cert.clone()).expect("root");
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.cert_chain.clone(), identity.key().clone_key())
            .expect("client cert");
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client config");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(server, &transport::certs::server_name(server_region))
            .expect("connect")
            .await
            .expect("TLS handshake");
        RawClient { endpoint, conn }
    }

    /// Sends `bytes` on a new stream and returns the reason the server closed with.
    async fn send_and_wait_close(self, bytes: &[u8]) -> String {
        let mut stream = self.conn.open_uni().await.expect("stream");
        stream.write_all(bytes).await.expect("write");
        let reason = match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => panic!("unexpected close: {other}"),
        };
        self.endpoint.close(0u8.into(), b"done");
        self.endpoint.wait_idle().await;
        reason
    }
}

fn preamble(magic: &[u8; 4], version: u16) -> Vec<u8> {
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes
}

fn hello(region: &str) -> Vec<u8> {
    let hello = Hello {
        cluster: "test".into(),
        region: region.into(),
        incarnation: 1,
        instance: String::new(),
    };
    encode_frame(&hello, HELLO_MAX_BYTES)
        .expect("hello frame")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transport_hellos_are_refused_with_typed_reasons() {
    init_tracing();
    let ids = generate_identities("test", &names(&["a", "b", "c"]), KeyAlgorithm::Ed25519)
        .expect("certs");
    let (_silent_b, nowhere_b) = silent_addr();
    let (_silent_c, nowhere_c) = silent_addr();
    let socket = bind_loopback();
    let server = socket.local_addr().expect("addr");
    let peers = BTreeMap::from([("b".to_owned(), nowhere_b), ("c".to_owned(), nowhere_c)]);
    let mut config = test_config(ids["a"].clone(), server, peers);
    config.hello_timeout = Duration::from_millis(500);
    let mut a = start_on(socket, config).await;

    let mismatch = format!(
        "transport protocol version mismatch: the peer speaks version 99, this build speaks version {}",
        transport::codec::TRANSPORT_VERSION
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([preamble(b"MRDN", 99), hello("b")].concat(), &mismatch),
        (
            b"GET / HTTP/1.1\r\n".to_vec(),
            "does not start with the Meridian magic",
        ),
        (
            [
                preamble(b"MRDN", transport::codec::TRANSPORT_VERSION),
                hello("c"),
            ]
            .concat(),
            "the peer's hello claims region \"c\" but its certificate names \"b\"",
        ),
        (
            [
                preamble(b"MRDN", transport::codec::TRANSPORT_VERSION),
                u32::MAX.to_be_bytes().to_vec(),
            ]
            .concat(),
            "frame of 4294967295 bytes exceeds the limit of 1024 bytes",
        ),
        // Nothing at all: QUIC does not even announce an empty stream.
        (Vec::new(), "no transport hello from the peer within 500ms"),
    ];
    for (bytes, expected) in cases {
        let client = RawClient::connect(&ids["b"], server, "a").await;
        let reason = client.send_and_wait_close(&bytes).await;
        assert!(
            reason.contains(expected),
            "client saw {reason:?}, expected {expected:?}"
        );
        rejected_with(&mut a, expected).await;
    }
    assert_never_up(&a);
    a.mesh.shutdown().await;
}
