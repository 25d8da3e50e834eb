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
//! `x` is an idle region of the harness's cluster: configured and certified, never started.
//! The test runs on a runtime of its own so that it reads its regions' warnings only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{CLUSTER, Cluster, logs, wait_until};
use conflict::rng::SplitMix64 as Rng;
use conflict::{Dot, Hlc, ReplicaId, Seq, Value, VersionVector, Write};
use leader::leader_core::msg::{Ack, Heartbeat};
use leader::leader_core::{Batch, Hello as PeerHello, LogEntry, PROTOCOL_VERSION, PeerMsg};
use quinn::rustls;
use transport::codec::{
    FrameReader, HELLO_MAX_BYTES, Hello, TRANSPORT_VERSION, encode_frame, encode_preamble,
};
use transport::{Identity, LinkState};

const RUNNING: [&str; 3] = ["a", "b", "c"];
/// Configured and certified, never started: the attacker holds its certificate.
const ATTACKER: &str = "x";
/// How long the client waits for `a` to close a connection.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// The names of the test runtime's threads, whose warnings the test reads.
const THREADS: &str = "hostile-peer";

// ---- the cluster ---------------------------------------------------------------------------

/// `(conn_id, connections)` of every link between running regions, once all are up.
async fn wait_links_up(cluster: &Cluster) -> BTreeMap<(String, String), (Option<u64>, u64)> {
    wait_until("a, b and c to connect to each other", async || {
        let mut links = BTreeMap::new();
        for region in RUNNING {
            let status = cluster
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

async fn put(cluster: &Cluster, region: &str, key: &str, value: &str) -> Dot {
    cluster.put(region, "default", key, value).await.dot
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
        let mut payload = Rng::new(seed).bytes(1 + (seed as usize * 97) % 300);
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

#[test]
fn a_peer_sending_garbage_is_disconnected_and_the_others_are_unaffected() {
    logs::runtime(THREADS).block_on(attack());
}

async fn attack() {
    let cluster = Cluster::builder(&RUNNING)
        .idle_region(ATTACKER)
        .start()
        .await;
    let before = wait_links_up(&cluster).await;
    let identity = transport::certs::load(&cluster.dir().join("certs"), ATTACKER).unwrap();
    let a_addr = cluster.peer_addr("a");
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
        writes.push(put(&cluster, region, &format!("k{i}"), what.as_str()).await);
    }
    let logged = logs::captured(THREADS);
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
            standing: Default::default(),
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
                standing: Default::default(),
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
    writes.push(put(&cluster, "a", "after-ack", "still here").await);
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
        logs::captured(THREADS).contains("carries a write of"),
        "a logs the protocol violation"
    );
    attacker.close().await;

    // The other regions never noticed: same connections, and everything converges.
    for region in RUNNING {
        writes.push(put(&cluster, region, &format!("last-{region}"), region).await);
    }
    cluster.wait_converged().await;
    let after = wait_links_up(&cluster).await;
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
        .unwrap()
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
