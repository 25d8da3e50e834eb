//! A peer that sends garbage (issue 6 §5): three regions run in-process over real QUIC, and a
//! raw quinn client holding a *valid* certificate for a fourth configured region, `x`,
//! connects to region `a`, makes a correct transport hello and then misbehaves:
//!
//! - transport level: a frame whose payload is not postcard, a valid message with trailing
//!   bytes, a length prefix over the frame limit, a frame cut off by the end of the stream,
//!   and seeded random garbage behind valid length prefixes. Each time `a` closes the
//!   connection with a reason the client reads in the QUIC close frame, records it as the
//!   link's last error and logs it;
//! - leader level: after a valid replication hello, frames that decode but are hostile (an
//!   ack claiming every write `a` will ever make, heartbeats with absurd timestamps, a batch
//!   carrying another origin's write). `a` must survive them.
//!
//! Throughout, `a` keeps serving, and the links between `a`, `b` and `c` stay on the very same
//! connections: writes made in every region during the attack converge (equal applied
//! vectors, equal digests).
//!
//! The cluster is built here rather than with `common::Cluster` because the attacker needs a
//! certificate of a region that is configured but not running.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{hex_digests, wait_until};
use conflict::{Dot, Hlc, ReplicaId, Seq, Value, VersionVector, Write};
use leader::config::Config;
use leader::leader_core::msg::{Ack, Heartbeat};
use leader::leader_core::{Batch, Hello as PeerHello, LogEntry, PROTOCOL_VERSION, PeerMsg};
use leader::{LeaderBuilder, Node, NodeHandle, Wiring};
use quinn::rustls;
use transport::codec::{
    FrameReader, HELLO_MAX_BYTES, Hello, TRANSPORT_VERSION, encode_frame, encode_preamble,
};
use transport::{Identity, LinkState};

const CLUSTER: &str = "hostile-peer";
const RUNNING: [&str; 3] = ["a", "b", "c"];
/// Configured and certified, never started: the attacker holds its certificate.
const ATTACKER: &str = "x";
/// How long the client waits for `a` to close a connection.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

// ---- log capture ---------------------------------------------------------------------------

/// Everything logged at `warn` and above by the regions of this test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("this test binary installs the only subscriber");
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        // Keep the test's own output useful too.
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- the cluster ---------------------------------------------------------------------------

struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, Node>,
    peer_addrs: BTreeMap<String, SocketAddr>,
    /// Holds `x`'s configured address so the regions' dials to it go nowhere.
    _x_silent: UdpSocket,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut sockets = BTreeMap::new();
        let mut peer_addrs = BTreeMap::new();
        for region in RUNNING {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            peer_addrs.insert(region.to_owned(), socket.local_addr().unwrap());
            sockets.insert(region, socket);
        }
        let x_silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer_addrs.insert(ATTACKER.to_owned(), x_silent.local_addr().unwrap());
        let all: Vec<String> = peer_addrs.keys().cloned().collect();
        transport::certs::generate(
            &dir.path().join("certs"),
            CLUSTER,
            &all,
            transport::certs::KeyAlgorithm::Ed25519,
        )
        .unwrap();
        let mut text = format!(
            "cluster = \"{CLUSTER}\"\ntls_dir = \"certs\"\n\n[timeouts]\n\
             heartbeat_interval_ms = 100\nreconnect_min_ms = 20\nreconnect_max_ms = 500\n"
        );
        for (region, addr) in &peer_addrs {
            text.push_str(&format!(
                "\n[[region]]\nname = \"{region}\"\npeer_addr = \"{addr}\"\n\
                 api_addr = \"127.0.0.1:0\"\ndata_dir = \"data/{region}\"\n"
            ));
        }
        text.push_str("\n[tables]\ndefault = \"lww\"\n");
        let source = dir.path().join("regions.toml");
        std::fs::write(&source, &text).unwrap();
        let config = Config::parse(&text, &source).unwrap();
        let mut nodes = BTreeMap::new();
        for (region, socket) in sockets {
            let wiring = Wiring {
                peer_socket: Some(socket),
                peer_addrs: peer_addrs.clone(),
                no_api: true,
                ..Wiring::default()
            };
            let node = LeaderBuilder::new(config.clone(), region)
                .wiring(wiring)
                .start()
                .await
                .unwrap_or_else(|e| panic!("region {region} failed to start: {e}"));
            nodes.insert(region.to_owned(), node);
        }
        Cluster {
            dir,
            nodes,
            peer_addrs,
            _x_silent: x_silent,
        }
    }

    fn handle(&self, region: &str) -> NodeHandle {
        self.nodes[region].handle()
    }

    /// `(conn_id, connections)` of every link between running regions, once all are up.
    async fn wait_links_up(&self) -> BTreeMap<(String, String), (Option<u64>, u64)> {
        wait_until("a, b and c to connect to each other", async || {
            let mut links = BTreeMap::new();
            for region in RUNNING {
                let status = self
                    .handle(region)
                    .status()
                    .await
                    .map_err(|e| e.to_string())?;
                for peer in RUNNING.iter().filter(|p| **p != region) {
                    let link = &status.links[*peer];
                    let accepted = status
                        .peers
                        .iter()
                        .any(|v| v.region == *peer && v.connected);
                    if link.state != LinkState::Up || !accepted {
                        return Err(format!("{region}->{peer}: {:?}", link.state));
                    }
                    links.insert(
                        (region.to_owned(), (*peer).to_owned()),
                        (link.conn_id, link.connections),
                    );
                }
            }
            Ok(links)
        })
        .await
    }

    async fn put(&self, region: &str, key: &str, value: &str) -> Dot {
        self.handle(region)
            .write(
                "default",
                key.as_bytes(),
                Value::Bytes(value.as_bytes().to_vec()),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{region}: write {key}: {e}"))
            .unwrap_or_else(|e| panic!("{region}: write {key} refused: {e}"))
            .dot
    }

    /// Waits until a, b and c have durably applied the same writes, then asserts equal data.
    async fn wait_converged(&self) {
        let applied = wait_until("a, b and c to apply the same writes", async || {
            let mut all = BTreeMap::new();
            for region in RUNNING {
                let status = self
                    .handle(region)
                    .status()
                    .await
                    .map_err(|e| e.to_string())?;
                let vv: BTreeMap<String, u64> =
                    status.applied.into_iter().map(|(r, _, s)| (r, s)).collect();
                all.insert(region, vv);
            }
            let first = &all["a"];
            if all.values().all(|v| v == first) {
                Ok(all)
            } else {
                Err(format!("{all:?}"))
            }
        })
        .await;
        let mut digests = BTreeMap::new();
        for region in RUNNING {
            digests.insert(
                region.to_owned(),
                self.handle(region).digest().await.unwrap(),
            );
        }
        let first = digests["a"];
        assert!(
            digests.values().all(|d| *d == first),
            "same writes {applied:?} but different data: {}",
            hex_digests(&digests)
        );
    }

    /// Shuts every region down, concurrently (each may wait out its drain time for the
    /// dials to `x` that never answer).
    async fn shutdown(self) {
        let mut set = tokio::task::JoinSet::new();
        for (region, node) in self.nodes {
            set.spawn(async move {
                tokio::time::timeout(Duration::from_secs(15), node.shutdown())
                    .await
                    .unwrap_or_else(|_| panic!("{region} did not shut down in time"))
                    .unwrap_or_else(|e| panic!("{region} shut down with an error: {e}"));
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a shutdown task panicked");
        }
    }
}

// ---- the attacker --------------------------------------------------------------------------

/// A raw quinn client with `x`'s valid certificate, connected to one region.
struct Attacker {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
}

impl Attacker {
    /// Connects to `region` and completes the transport hello in both directions.
    async fn connect(identity: &Identity, server: SocketAddr, region: &str) -> Attacker {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca_cert.clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.cert_chain.clone(), identity.key().clone_key())
            .unwrap();
        tls.alpn_protocols = vec![transport::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(server, &transport::certs::server_name(region))
            .unwrap()
            .await
            .expect("the TLS handshake with a valid certificate succeeds");
        let mut send = conn.open_uni().await.unwrap();
        let hello = Hello {
            cluster: CLUSTER.into(),
            region: ATTACKER.into(),
            // A new incarnation each time: every connection replaces the previous one.
            incarnation: rand_incarnation(),
            instance: String::new(),
        };
        send.write_all(&encode_preamble()).await.unwrap();
        send.write_all(&encode_frame(&hello, HELLO_MAX_BYTES).unwrap())
            .await
            .unwrap();
        let recv = conn
            .accept_uni()
            .await
            .expect("the region opens its stream");
        let mut recv = FrameReader::new(recv, HELLO_MAX_BYTES);
        assert_eq!(recv.read_preamble().await.unwrap(), TRANSPORT_VERSION);
        let theirs: Hello = recv.next().await.unwrap().expect("the region's hello");
        assert_eq!(theirs.region, region);
        recv.set_max_frame_bytes(1 << 24);
        Attacker {
            endpoint,
            conn,
            send,
            recv,
        }
    }

    /// The region's replication hello, which it sends once the link is up.
    async fn their_hello(&mut self) -> PeerHello {
        loop {
            match self.recv.next::<PeerMsg>().await {
                Ok(Some(PeerMsg::Hello(h))) => return h,
                Ok(Some(_)) => continue,
                other => panic!("expected the region's replication hello, got {other:?}"),
            }
        }
    }

    async fn send_msg(&mut self, msg: &PeerMsg) {
        let frame = encode_frame(msg, 1 << 24).unwrap();
        self.send.write_all(&frame).await.unwrap();
    }

    /// Sends `bytes` raw (finishing the stream after them if `finish`), and returns the
    /// reason the region closed the connection with.
    async fn send_garbage_and_wait_close(mut self, bytes: &[u8], finish: bool) -> String {
        // A write can fail if the region already closed: the close reason is what matters.
        let _ = self.send.write_all(bytes).await;
        if finish {
            let _ = self.send.finish();
        }
        let closed = tokio::time::timeout(CLOSE_DEADLINE, self.conn.closed())
            .await
            .unwrap_or_else(|_| panic!("the region did not close within {CLOSE_DEADLINE:?}"));
        let reason = match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => panic!("expected an application close with a reason, got {other}"),
        };
        self.endpoint.close(0u8.into(), b"done");
        reason
    }

    async fn close(self) {
        self.conn.close(0u8.into(), b"attacker done");
        self.endpoint.close(0u8.into(), b"done");
    }
}

fn rand_incarnation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0x5eed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// SplitMix64, for reproducible garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// Transport-level garbage after a correct hello: what to send, whether to finish the stream
/// after it, and words the close reason must contain.
fn transport_cases() -> Vec<(String, Vec<u8>, bool, &'static str)> {
    let ack = postcard::to_stdvec(&PeerMsg::Ack(Ack {
        applied: VersionVector::new(),
    }))
    .unwrap();
    let mut cases = vec![
        (
            "garbage postcard".to_owned(),
            framed(&[0xff, 0xff, 0xff, 0xff, 0xff]),
            false,
            "protocol error from the peer: malformed frame payload",
        ),
        (
            "trailing bytes".to_owned(),
            framed(&[&ack[..], &[0]].concat()),
            false,
            "1 trailing bytes after the message",
        ),
        (
            "oversized length prefix".to_owned(),
            u32::MAX.to_be_bytes().to_vec(),
            false,
            "frame of 4294967295 bytes exceeds the limit of 8388608 bytes",
        ),
        (
            "length one past the limit".to_owned(),
            (8u32 * 1024 * 1024 + 1).to_be_bytes().to_vec(),
            false,
            "frame of 8388609 bytes exceeds the limit",
        ),
        (
            "frame cut off by the end of the stream".to_owned(),
            [&10u32.to_be_bytes()[..], &[1, 2]].concat(),
            true,
            "stream ended in the middle of a frame",
        ),
    ];
    for seed in 0..4u64 {
        // A variant tag past the last one, then noise: never a valid message.
        let mut payload = garbage(seed, 1 + (seed as usize * 97) % 300);
        payload[0] = 6 + payload[0] % 100;
        cases.push((
            format!("random garbage, seed {seed}"),
            framed(&payload),
            false,
            "protocol error from the peer: malformed frame payload",
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_disconnected_and_the_others_are_unaffected() {
    let logs = Logs::install();
    let cluster = Cluster::start().await;
    let before = cluster.wait_links_up().await;
    let identity = transport::certs::load(&cluster.dir.path().join("certs"), ATTACKER).unwrap();
    let a_addr = cluster.peer_addrs["a"];
    let mut writes = Vec::new();

    // Transport level: every malformed frame closes the connection with its reason.
    for (i, (what, bytes, finish, expected)) in transport_cases().into_iter().enumerate() {
        let mut attacker = Attacker::connect(&identity, a_addr, "a").await;
        let _ = attacker.their_hello().await;
        let reason = attacker.send_garbage_and_wait_close(&bytes, finish).await;
        assert!(
            reason.contains(expected),
            "{what}: the close reason {reason:?} should contain {expected:?}"
        );
        // The region records it as the link's last error.
        wait_until(&format!("{what}: a to record the reason"), async || {
            let status = cluster
                .handle("a")
                .status()
                .await
                .map_err(|e| e.to_string())?;
            let link = &status.links[ATTACKER];
            match &link.last_error {
                Some(e) if e.contains(expected) && link.state != LinkState::Up => Ok(()),
                other => Err(format!("{:?}, last error {other:?}", link.state)),
            }
        })
        .await;
        let region = RUNNING[i % RUNNING.len()];
        writes.push(cluster.put(region, &format!("k{i}"), what.as_str()).await);
    }
    let logged = logs.text();
    assert!(
        logged.contains("protocol error from the peer: malformed frame payload")
            && logged.contains("closing the connection")
            && logged.contains("exceeds the limit of 8388608 bytes"),
        "the regions log each protocol error; logged:\n{logged}"
    );

    // Leader level: a valid replication hello, then messages that decode but are hostile.
    let mut attacker = Attacker::connect(&identity, a_addr, "a").await;
    let theirs = attacker.their_hello().await;
    let a_replica = theirs.replica;
    let x_replica = ReplicaId::from_u128(0x7777);
    attacker
        .send_msg(&PeerMsg::Hello(PeerHello {
            protocol: PROTOCOL_VERSION,
            cluster: CLUSTER.into(),
            region: ATTACKER.into(),
            replica: x_replica,
            applied: VersionVector::new(),
            resolvers: theirs.resolvers.clone(),
            replicas: Vec::new(),
        }))
        .await;
    let x_view = async |region: &str| {
        let status = cluster
            .handle(region)
            .status()
            .await
            .map_err(|e| e.to_string())?;
        let view = status.peers.into_iter().find(|p| p.region == ATTACKER);
        view.ok_or_else(|| "no peer view for x".to_owned())
    };
    wait_until("a to accept x's replication hello", async || {
        let x = x_view("a").await?;
        if x.connected {
            Ok(())
        } else {
            Err(format!("{x:?}"))
        }
    })
    .await;
    // "I have every write you will ever make" (this used to overflow a sequence number and
    // kill a's driver), and clocks from the end of time (this used to overflow the skew
    // estimate). A last, harmless ack marks the end: once a shows it, a handled them all.
    let everything: VersionVector = [Dot::new(a_replica, Seq(u64::MAX))].into_iter().collect();
    attacker
        .send_msg(&PeerMsg::Ack(Ack {
            applied: everything,
        }))
        .await;
    for (wall_ms, echo) in [(u64::MAX, (1 << 63, 0)), (0, (u64::MAX, u64::MAX))] {
        attacker
            .send_msg(&PeerMsg::Heartbeat(Heartbeat {
                wall_ms,
                hlc: Hlc::MAX,
                echo: Some(echo),
                rows: Vec::new(),
            }))
            .await;
    }
    let marker = Dot::new(ReplicaId::from_u128(0x8888), Seq(1));
    attacker
        .send_msg(&PeerMsg::Ack(Ack {
            applied: [marker].into_iter().collect(),
        }))
        .await;
    wait_until("a to handle the hostile acks and heartbeats", async || {
        let x = x_view("a").await?;
        if x.acked.covers(&marker) {
            Ok(())
        } else {
            Err(format!("{x:?}"))
        }
    })
    .await;
    writes.push(cluster.put("a", "after-ack", "still here").await);
    // A batch carrying another origin's write: a protocol violation.
    let stolen = Write {
        dot: Dot::new(a_replica, Seq(1)),
        hlc: Hlc::new(1, 0),
        context: VersionVector::new(),
        value: Value::Bytes(b"forged".to_vec()),
    };
    attacker
        .send_msg(&PeerMsg::Batch(Batch {
            origin: x_replica,
            origin_region: ATTACKER.into(),
            entries: vec![LogEntry {
                table: "default".into(),
                key: b"forged".to_vec(),
                write: stolen,
            }],
        }))
        .await;
    wait_until("a to stop replicating with x", async || {
        let x = x_view("a").await?;
        if x.connected {
            Err(format!("{x:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(
        logs.text().contains("carries a write of"),
        "a logs the protocol violation"
    );
    attacker.close().await;

    // The other regions never noticed: same connections, and everything converges.
    for region in RUNNING {
        writes.push(cluster.put(region, &format!("last-{region}"), region).await);
    }
    cluster.wait_converged().await;
    let after = cluster.wait_links_up().await;
    assert_eq!(
        before, after,
        "the links between a, b and c stayed on the same connections"
    );
    for dot in &writes {
        let status = cluster.handle("b").status().await.unwrap();
        let covered = status
            .applied
            .iter()
            .any(|(_, r, s)| *r == dot.replica && *s >= dot.seq.0);
        assert!(covered, "b has {dot}");
    }
    let forged = cluster
        .handle("a")
        .read("default", b"forged")
        .await
        .unwrap();
    match forged {
        leader::ReadResult::Found { state, .. } => {
            assert!(
                state.siblings.is_empty(),
                "the forged write was not applied"
            )
        }
        leader::ReadResult::UnknownTable => panic!("table default is configured"),
    }
    cluster.shutdown().await;
}
