//! Helpers shared by the mesh tests: clusters on 127.0.0.1 with port-0 sockets, and bounded
//! waits on events and link state (never a sleep followed by an assertion).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset"
)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use transport::{Identity, LinkState, Mesh, MeshConfig, MeshEvent};

/// Generous bound for anything that should happen in well under a second on loopback,
/// so a loaded 2-core machine does not flake.
pub const WAIT: Duration = Duration::from_secs(20);

/// The message type the tests send.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Msg {
    Seq { from: String, n: u32 },
    Blob(Vec<u8>),
    Numbered { n: u32, pad: Vec<u8> },
}

/// One running region and its events.
pub struct Node {
    pub mesh: Mesh<Msg>,
    pub events: Receiver<MeshEvent<Msg>>,
    /// Every event taken from `events` so far, in order.
    pub log: Vec<MeshEvent<Msg>>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "transport=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn names(regions: &[&str]) -> Vec<String> {
    regions.iter().map(|r| r.to_string()).collect()
}

/// A UDP socket on 127.0.0.1 with a kernel-chosen port.
pub fn bind_loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// Settings fast enough for tests: short backoff, short keep-alive.
pub fn test_config(
    identity: Identity,
    bind: SocketAddr,
    peers: BTreeMap<String, SocketAddr>,
) -> MeshConfig {
    let mut config = MeshConfig::new(identity, bind, peers);
    config.keep_alive = Duration::from_millis(500);
    config.idle_timeout = Duration::from_secs(10);
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(300);
    config.hello_timeout = Duration::from_secs(10);
    config.shutdown_drain = Duration::from_millis(300);
    config
}

/// Starts a mesh over an already bound socket, so every address is known before any
/// region starts dialing.
pub async fn start_on(socket: UdpSocket, config: MeshConfig) -> Node {
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = runtime.wrap_udp_socket(socket).expect("wrap socket");
    let (mesh, events) = Mesh::start_with_socket(config, socket, runtime)
        .await
        .expect("mesh starts");
    Node {
        mesh,
        events,
        log: Vec::new(),
    }
}

/// Starts every region of `identities` on loopback, each configured with all the others.
pub async fn start_cluster(identities: &BTreeMap<String, Identity>) -> BTreeMap<String, Node> {
    let sockets: BTreeMap<String, UdpSocket> = identities
        .keys()
        .map(|r| (r.clone(), bind_loopback()))
        .collect();
    let addrs: BTreeMap<String, SocketAddr> = sockets
        .iter()
        .map(|(r, s)| (r.clone(), s.local_addr().expect("local addr")))
        .collect();
    let mut nodes = BTreeMap::new();
    for (region, socket) in sockets {
        let peers = addrs
            .iter()
            .filter(|(r, _)| **r != region)
            .map(|(r, a)| (r.clone(), *a))
            .collect();
        let config = test_config(identities[&region].clone(), addrs[&region], peers);
        nodes.insert(region, start_on(socket, config).await);
    }
    nodes
}

impl Node {
    /// Takes events until one matches, failing after `WAIT` with everything seen.
    pub async fn wait_event(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&MeshEvent<Msg>) -> bool,
    ) -> MeshEvent<Msg> {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.log.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!(
                    "{}: event channel closed while waiting for {what}; seen: {:#?}",
                    self.mesh.region(),
                    self.log
                ),
                Err(_) => panic!(
                    "{}: no {what} within {WAIT:?}; seen: {:#?}; links: {:#?}",
                    self.mesh.region(),
                    self.log,
                    self.mesh.links()
                ),
            }
        }
    }

    /// Returns the first logged event that matches, or waits for one.
    pub async fn seen_or_wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&MeshEvent<Msg>) -> bool,
    ) -> MeshEvent<Msg> {
        match self.log.iter().find(|e| pred(e)) {
            Some(event) => event.clone(),
            None => self.wait_event(what, pred).await,
        }
    }

    /// Waits until the link to `peer` is up on a connection `dialer` dialed (both sides dial
    /// at first; this waits for the dial rule to settle) and its `Up` has arrived; returns
    /// that connection.
    pub async fn wait_dialed_by(&mut self, peer: &str, dialer: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        let conn = loop {
            self.drain();
            let status = &self.mesh.links()[peer];
            if status.state == LinkState::Up && status.dialer.as_deref() == Some(dialer) {
                break status.conn_id.expect("up");
            }
            assert!(
                Instant::now() < deadline,
                "no {dialer}-dialed link: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.wait_up(conn).await;
        conn
    }

    /// Waits for the `Up` of `conn_id`, which may already be in the log.
    pub async fn wait_up(&mut self, conn_id: u64) {
        self.seen_or_wait(
            "Up",
            |e| matches!(e, MeshEvent::Up { conn_id: c, .. } if *c == conn_id),
        )
        .await;
    }

    /// Moves every event already queued into the log, without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.log.push(event);
        }
    }

    /// Per peer, the connections that are up according to the events seen so far.
    pub fn live_connections(&self) -> BTreeMap<String, Vec<u64>> {
        let mut live: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for event in &self.log {
            match event {
                MeshEvent::Up { peer, conn_id } => {
                    live.entry(peer.clone()).or_default().push(*conn_id)
                }
                MeshEvent::Down { peer, conn_id, .. } => live
                    .entry(peer.clone())
                    .or_default()
                    .retain(|c| c != conn_id),
                _ => {}
            }
        }
        live
    }
}

/// Waits until, for every pair of regions, both ends are up on a connection dialed by the
/// smaller region and have delivered its `Up`: the state the dial rule converges to (see
/// `transport::link`), after which no connection is replaced. Polls the
/// link tables while draining events, bounded by `WAIT`.
pub async fn wait_converged(nodes: &mut BTreeMap<String, Node>) {
    let deadline = Instant::now() + WAIT;
    loop {
        for node in nodes.values_mut() {
            node.drain();
        }
        let tables: BTreeMap<String, _> = nodes
            .iter()
            .map(|(r, n)| (r.clone(), n.mesh.links()))
            .collect();
        let converged = tables.iter().all(|(region, links)| {
            links.iter().all(|(peer, status)| {
                let smaller = region.min(peer);
                let announced = nodes[region].log.iter().any(|e| {
                    matches!(e, MeshEvent::Up { conn_id, .. } if Some(*conn_id) == status.conn_id)
                });
                status.state == LinkState::Up
                    && status.dialer.as_deref() == Some(smaller.as_str())
                    && announced
            })
        });
        if converged {
            return;
        }
        if Instant::now() > deadline {
            panic!("links did not converge within {WAIT:?}: {tables:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shuts every node down.
pub async fn shutdown_all(nodes: BTreeMap<String, Node>) {
    for (_, node) in nodes {
        node.mesh.shutdown().await;
    }
}
