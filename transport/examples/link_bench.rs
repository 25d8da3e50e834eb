//! Throughput of one Mesh link on loopback, beside a raw quinn stream as the ceiling.
//!
//! Two regions ("a" and "b") on 127.0.0.1 with the same certificates; "a" sends a run of
//! frames to "b". For each frame size the same encoded frames (length prefix + postcard) are
//! also written by `write_all` on one raw quinn unidirectional stream between the same two
//! identities, which is what the Mesh would cost with nothing around the stream: no send queue,
//! no event channel, no decoding into a message. Timing runs from the first send until the
//! receiver has the last frame.
//!
//! Run in release: `cargo run --release -p transport --example link_bench`.
//! `LINK_BENCH_SCALE=0.1` shortens every run (for a quick check).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use quinn::{Endpoint, Runtime, TokioRuntime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use transport::{
    ALPN, Identity, KeyAlgorithm, LinkState, Mesh, MeshConfig, MeshEvent,
    certs::{generate_identities, server_name},
    encode_frame,
};

/// A frame payload, (de)serialised as one byte string (a length and the raw bytes), which is
/// how byte payloads should cross the mesh: postcard copies it in one piece instead of
/// visiting every byte as a sequence element.
#[derive(Debug, Clone, PartialEq)]
struct Payload(Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// One benchmark case.
struct Case {
    name: &'static str,
    payload_bytes: usize,
    frames: usize,
}

const CASES: [Case; 2] = [
    Case {
        name: "small",
        payload_bytes: 100,
        frames: 400_000,
    },
    Case {
        name: "large",
        payload_bytes: 64 * 1024,
        frames: 4_000,
    },
];

/// A measured run.
struct Outcome {
    frames: usize,
    /// Encoded bytes on the stream (frame headers included).
    bytes: u64,
    elapsed: Duration,
}

impl Outcome {
    fn frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let scale: f64 = std::env::var("LINK_BENCH_SCALE")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("LINK_BENCH_SCALE must be a number")?
        .unwrap_or(1.0);
    let regions = vec!["a".to_owned(), "b".to_owned()];
    let ids = generate_identities("bench", &regions, KeyAlgorithm::EcdsaP256)?;

    println!(
        "{:<6} {:>9} {:>9} {:>8} {:>13} {:>10}",
        "link", "frame", "frames", "secs", "frames/s", "MB/s"
    );
    for case in CASES {
        let frames = ((case.frames as f64 * scale) as usize).max(1);
        let payload = Payload(vec![0x5a; case.payload_bytes]);
        let frame = encode_frame(&payload, transport::codec::DEFAULT_MAX_FRAME_BYTES)?;
        let raw = raw_quinn(&ids, &frame, frames).await?;
        let mesh = mesh_link(&ids, &payload, frames, frame.len()).await?;
        for (link, outcome) in [("quinn", &raw), ("mesh", &mesh)] {
            println!(
                "{:<6} {:>9} {:>9} {:>8.2} {:>13.0} {:>10.1}",
                link,
                format!("{} B", case.payload_bytes),
                outcome.frames,
                outcome.elapsed.as_secs_f64(),
                outcome.frames_per_sec(),
                outcome.mb_per_sec()
            );
        }
        println!(
            "       {} frames: the mesh reaches {:.0} % of the raw stream's frames/s",
            case.name,
            100.0 * mesh.frames_per_sec() / raw.frames_per_sec()
        );
    }
    Ok(())
}

fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Sends `frames` copies of `payload` from region a to region b over a Mesh link.
async fn mesh_link(
    ids: &BTreeMap<String, Identity>,
    payload: &Payload,
    frames: usize,
    frame_len: usize,
) -> Result<Outcome> {
    // Bind both sockets first, so each region's configuration can name the other's port.
    let sockets = [UdpSocket::bind(localhost())?, UdpSocket::bind(localhost())?];
    let addrs = [sockets[0].local_addr()?, sockets[1].local_addr()?];
    let mut meshes = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (me, peer) = if i == 0 { ("a", "b") } else { ("b", "a") };
        let peers = BTreeMap::from([(peer.to_owned(), addrs[1 - i])]);
        let config = MeshConfig::new(ids[me].clone(), addrs[i], peers);
        let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime);
        let socket = runtime.wrap_udp_socket(socket)?;
        meshes.push(Mesh::<Payload>::start_with_socket(config, socket, runtime).await?);
    }
    let (b, mut b_events) = meshes.pop().context("mesh b")?;
    let (a, mut a_events) = meshes.pop().context("mesh a")?;
    tokio::spawn(async move { while a_events.recv().await.is_some() {} });
    let conn_id = settled(&a, &b, &mut b_events).await?;

    let started = Instant::now();
    let sender = {
        let (a, payload) = (a.clone(), payload.clone());
        tokio::spawn(async move {
            for _ in 0..frames {
                a.send("b", &payload).await?;
            }
            Ok::<_, transport::SendError>(())
        })
    };
    let mut received = 0;
    while received < frames {
        match b_events.recv().await {
            Some(MeshEvent::Frame { msg, .. }) => {
                debug_assert_eq!(msg.0.len(), payload.0.len());
                received += 1;
            }
            Some(MeshEvent::Down {
                conn_id: down,
                reason,
                ..
            }) if down == conn_id => bail!("the link went down during the run: {reason}"),
            Some(_) => {}
            None => bail!("mesh b stopped"),
        }
    }
    let elapsed = started.elapsed();
    sender.await??;
    a.shutdown().await;
    b.shutdown().await;
    Ok(Outcome {
        frames,
        bytes: (frames * frame_len) as u64,
        elapsed,
    })
}

/// Waits until the link is up on both sides and has stayed on one connection for a while, so
/// the run does not start on a connection that the dial rule is about to replace (both regions
/// dial at start, and one of the two connections is closed). Returns b's connection id.
async fn settled(
    a: &Mesh<Payload>,
    b: &Mesh<Payload>,
    b_events: &mut tokio::sync::mpsc::Receiver<MeshEvent<Payload>>,
) -> Result<u64> {
    const STABLE_FOR: Duration = Duration::from_millis(300);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    let mut since = Instant::now();
    loop {
        while b_events.try_recv().is_ok() {}
        let (la, lb) = (&a.links()["b"], &b.links()["a"]);
        let both_up = la.state == LinkState::Up && lb.state == LinkState::Up;
        let now = (la.conn_id, la.connections, lb.conn_id, lb.connections);
        if both_up && last == Some(now) {
            if since.elapsed() >= STABLE_FOR {
                return lb.conn_id.context("b's link is up without a connection");
            }
        } else {
            last = Some(now);
            since = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the link between a and b did not settle within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// mTLS configurations for the raw stream, from the same identities the mesh uses.
fn raw_configs(
    ids: &BTreeMap<String, Identity>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (a, b) = (&ids["a"], &ids["b"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(b.ca_cert.clone())?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(b.cert_chain.clone(), b.key().clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(a.cert_chain.clone(), a.key().clone_key())?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server)?,
        )),
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(
            client,
        )?)),
    ))
}

/// Writes `frames` copies of `frame` with `write_all` on one uni stream from a to b.
async fn raw_quinn(
    ids: &BTreeMap<String, Identity>,
    frame: &[u8],
    frames: usize,
) -> Result<Outcome> {
    let (server_config, client_config) = raw_configs(ids)?;
    let server = Endpoint::server(server_config, localhost())?;
    let mut client = Endpoint::client(localhost())?;
    client.set_default_client_config(client_config);
    let total = (frames * frame.len()) as u64;
    let receiver = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.context("no incoming")?.await?;
            let mut stream = conn.accept_uni().await?;
            let mut got = 0u64;
            while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
                got += chunk.bytes.len() as u64;
            }
            anyhow::ensure!(got == total, "received {got} of {total} bytes");
            Ok::<_, anyhow::Error>((Instant::now(), conn))
        })
    };
    let conn = client
        .connect(server.local_addr()?, &server_name("b"))?
        .await?;
    let started = Instant::now();
    let mut stream = conn.open_uni().await?;
    for _ in 0..frames {
        stream.write_all(frame).await?;
    }
    stream.finish()?;
    let (done, server_conn) = receiver.await??;
    conn.close(0u32.into(), b"done");
    server_conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(Outcome {
        frames,
        bytes: total,
        elapsed: done - started,
    })
}
