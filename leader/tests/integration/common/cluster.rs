//! A harness for in-process multi-region tests: N region leaders in one test process, talking
//! real QUIC (mutual TLS) over 127.0.0.1, each with its own data directory, all inside one
//! temporary directory.
//!
//! # How a cluster starts
//! Every region's UDP socket is bound to `127.0.0.1:0` first, so the configuration can name the
//! port each one got (peers dial exactly the configured `peer_addr`, which must be a fixed
//! port). The certificates are generated into `<tmp>/certs`, the configuration text is written
//! to `<tmp>/regions.toml` and parsed with [`Config::parse`], and each node starts with the
//! pre-bound socket, the impairment layer under its QUIC endpoint (for partitions), and its
//! HTTP API on `127.0.0.1:0`.
//!
//! # Shutdown
//! [`Cluster::run`] runs a test body and shuts every node down afterwards, also when the body
//! panics, and only then lets the panic continue. On success every shutdown must return `Ok`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use conflict::{Dot, KeyState, Resolved, Resolver, Value, VersionVector};
use leader::config::Config;
use leader::leader_core::{ConflictRecord, WriteReceipt};
use leader::{LeaderBuilder, Node, NodeHandle, ReadResult, Status, Wiring};
use transport::impair::ImpairmentHandle;

use super::{hex_digests, wait_until};

/// How long one node may take to shut down before the harness gives up on it.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

/// The cluster name every harness cluster uses.
pub(crate) const CLUSTER: &str = "meridian-test";

/// The region of [`Cluster::solo`].
pub(crate) const SOLO: &str = "solo";

/// One key as a read sees it: the stored state and what the table's resolver makes of it.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    /// Causal context and siblings.
    pub(crate) state: KeyState,
    /// What readers see.
    pub(crate) resolved: Resolved,
}

impl Read {
    /// The dots of the key's siblings, in canonical order.
    pub(crate) fn dots(&self) -> Vec<Dot> {
        self.state.siblings.iter().map(|s| s.dot).collect()
    }
}

/// How to build a [`Cluster`]: the regions, and the timeouts and tables of its configuration.
#[derive(Clone)]
pub(crate) struct ClusterBuilder {
    regions: Vec<String>,
    timeouts: BTreeMap<String, u64>,
    /// `[limits]` keys set by the test.
    limits: BTreeMap<String, u64>,
    /// [`Wiring::send_queue_frames`] of every region.
    send_queue_frames: Option<usize>,
    tables: BTreeMap<String, String>,
    /// `[durability]`: table → default durability.
    durability: BTreeMap<String, String>,
    /// Per region: ms added to its wall clock ([`Wiring::clock_offset_ms`]).
    clock_offsets: BTreeMap<String, i64>,
    /// Per region: tables whose resolver differs from `tables` in that region's own copy of
    /// the configuration.
    region_tables: BTreeMap<String, BTreeMap<String, String>>,
    /// Regions configured and certified but never started (see [`ClusterBuilder::idle_region`]).
    idle: Vec<String>,
    /// Resolvers every region registers besides the built-in ones.
    resolvers: Vec<Arc<dyn Resolver>>,
    /// [`Wiring::api_token`] of every region.
    api_token: Option<String>,
}

impl ClusterBuilder {
    /// Adds a region to the configuration (with a certificate) that never starts: its address
    /// is held by a socket that never answers, so the others' dials to it go nowhere, and a
    /// test can play it with its certificate.
    pub(crate) fn idle_region(mut self, region: &str) -> Self {
        self.idle.push(region.to_owned());
        self
    }

    /// Registers `resolver` in every region, for tables that name it.
    pub(crate) fn register(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolvers.push(resolver);
        self
    }

    /// Protects every region's API with a bearer token.
    pub(crate) fn api_token(mut self, token: &str) -> Self {
        self.api_token = Some(token.to_owned());
        self
    }

    /// Sets one key of `[timeouts]` (milliseconds), e.g. `relay_delay_ms`.
    pub(crate) fn timeout(mut self, key: &str, ms: u64) -> Self {
        self.timeouts.insert(key.to_owned(), ms);
        self
    }

    /// Sets one key of `[limits]`, e.g. `pace_lag_writes`.
    pub(crate) fn limit(mut self, key: &str, value: u64) -> Self {
        self.limits.insert(key.to_owned(), value);
        self
    }

    /// Gives every region's transport a send queue of `frames` frames per connection.
    pub(crate) fn send_queue_frames(mut self, frames: usize) -> Self {
        self.send_queue_frames = Some(frames);
        self
    }

    /// Adds (or changes) a table and its resolver.
    pub(crate) fn table(mut self, name: &str, resolver: &str) -> Self {
        self.tables.insert(name.to_owned(), resolver.to_owned());
        self
    }

    /// Sets the default durability of a table (`[durability]`), e.g. `("carts", "all")`.
    pub(crate) fn durability(mut self, table: &str, level: &str) -> Self {
        self.durability.insert(table.to_owned(), level.to_owned());
        self
    }

    /// Skews `region`'s wall clock by `ms` (positive: ahead); its monotonic timers are
    /// unaffected. Kept across restarts.
    pub(crate) fn clock_offset(mut self, region: &str, ms: i64) -> Self {
        self.clock_offsets.insert(region.to_owned(), ms);
        self
    }

    /// Gives `region` its own copy of the configuration in which `table` uses `resolver`
    /// (every other region keeps the shared one): two regions that disagree on a resolver.
    pub(crate) fn region_table(mut self, region: &str, table: &str, resolver: &str) -> Self {
        self.region_tables
            .entry(region.to_owned())
            .or_default()
            .insert(table.to_owned(), resolver.to_owned());
        self
    }

    /// Generates the certificates, writes the configuration and starts every region.
    pub(crate) async fn start(self) -> Cluster {
        super::logs::init_tracing();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut sockets = BTreeMap::new();
        let mut peer_addrs = BTreeMap::new();
        for region in self.regions.iter().chain(&self.idle) {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on loopback");
            let addr = socket.local_addr().expect("a bound socket has an address");
            peer_addrs.insert(region.clone(), addr);
            sockets.insert(region.clone(), socket);
        }
        let idle_sockets = self
            .idle
            .iter()
            .filter_map(|region| sockets.remove(region))
            .collect();
        let all: Vec<String> = peer_addrs.keys().cloned().collect();
        transport::certs::generate(
            &dir.path().join("certs"),
            CLUSTER,
            &all,
            transport::certs::KeyAlgorithm::default(),
        )
        .expect("generate the cluster certificates");
        let config = self.write_config(dir.path(), "regions.toml", &peer_addrs);
        let mut region_configs = BTreeMap::new();
        for (region, tables) in &self.region_tables {
            let mut own = self.clone();
            own.tables.extend(tables.clone());
            let file = format!("regions-{region}.toml");
            region_configs.insert(
                region.clone(),
                own.write_config(dir.path(), &file, &peer_addrs),
            );
        }
        let mut cluster = Cluster {
            dir,
            config,
            region_configs,
            clock_offsets: self.clock_offsets.clone(),
            send_queue_frames: self.send_queue_frames,
            resolvers: self.resolvers,
            api_token: self.api_token,
            peer_addrs,
            nodes: BTreeMap::new(),
            _idle: idle_sockets,
        };
        for (region, socket) in sockets {
            let node = cluster.start_node(&region, socket).await;
            cluster.nodes.insert(region, node);
        }
        cluster
    }

    /// Writes the configuration of regions at `peer_addrs` to `dir/file` and parses it (the
    /// certificates are expected in `dir/certs`).
    pub(crate) fn write_config(
        &self,
        dir: &Path,
        file: &str,
        peer_addrs: &BTreeMap<String, SocketAddr>,
    ) -> Config {
        let text = self.config_text(peer_addrs);
        let source = dir.join(file);
        std::fs::write(&source, &text).expect("write the configuration");
        Config::parse(&text, &source)
            .unwrap_or_else(|e| panic!("the harness wrote an invalid {file}: {e}\n{text}"))
    }

    fn config_text(&self, peer_addrs: &BTreeMap<String, SocketAddr>) -> String {
        let mut text = format!("cluster = \"{CLUSTER}\"\ntls_dir = \"certs\"\n\n[timeouts]\n");
        for (key, ms) in &self.timeouts {
            writeln!(text, "{key} = {ms}").expect("writing to a String cannot fail");
        }
        if !self.limits.is_empty() {
            text.push_str("\n[limits]\n");
            for (key, value) in &self.limits {
                writeln!(text, "{key} = {value}").expect("writing to a String cannot fail");
            }
        }
        for region in self.regions.iter().chain(&self.idle) {
            write!(
                text,
                "\n[[region]]\nname = \"{region}\"\npeer_addr = \"{}\"\napi_addr = \"127.0.0.1:0\"\ndata_dir = \"data/{region}\"\n",
                peer_addrs[region]
            )
            .expect("writing to a String cannot fail");
        }
        text.push_str("\n[tables]\n");
        for (table, resolver) in &self.tables {
            writeln!(text, "{table} = \"{resolver}\"").expect("writing to a String cannot fail");
        }
        if !self.durability.is_empty() {
            text.push_str("\n[durability]\n");
            for (table, level) in &self.durability {
                writeln!(text, "{table} = \"{level}\"").expect("writing to a String cannot fail");
            }
        }
        text
    }
}

/// Several region leaders running in this process. Regions are addressed by name.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    config: Config,
    /// Regions that run their own copy of the configuration (see
    /// [`ClusterBuilder::region_table`]).
    region_configs: BTreeMap<String, Config>,
    /// Per region: ms added to its wall clock.
    clock_offsets: BTreeMap<String, i64>,
    /// [`Wiring::send_queue_frames`] of every region.
    send_queue_frames: Option<usize>,
    /// Every region's QUIC address; a restarted region binds the same one again.
    peer_addrs: BTreeMap<String, SocketAddr>,
    /// Resolvers every region registers besides the built-in ones.
    resolvers: Vec<Arc<dyn Resolver>>,
    /// [`Wiring::api_token`] of every region.
    api_token: Option<String>,
    /// The running nodes (a stopped region is absent until it is restarted).
    nodes: BTreeMap<String, Node>,
    /// The silent sockets that hold the idle regions' addresses.
    _idle: Vec<UdpSocket>,
}

impl Cluster {
    /// A builder for a cluster of `regions` with test-friendly timeouts (fast heartbeats and
    /// redials) and two tables: `default` (`lww`) and `carts` (`multi-value`).
    pub(crate) fn builder(regions: &[&str]) -> ClusterBuilder {
        ClusterBuilder {
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            timeouts: [
                ("heartbeat_interval_ms", 100),
                ("reconnect_min_ms", 20),
                ("reconnect_max_ms", 500),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            limits: BTreeMap::new(),
            send_queue_frames: None,
            tables: [("default", "lww"), ("carts", "multi-value")]
                .into_iter()
                .map(|(t, r)| (t.to_owned(), r.to_owned()))
                .collect(),
            durability: BTreeMap::new(),
            clock_offsets: BTreeMap::new(),
            region_tables: BTreeMap::new(),
            idle: Vec::new(),
            resolvers: Vec::new(),
            api_token: None,
        }
    }

    /// A builder for one region, `solo`, with small limits, so the limit errors are cheap to
    /// reach: keys of 64 bytes, values of 1 KiB, request bodies of 4 KiB, frames and peer
    /// windows of 64 KiB (snapshot chunks of 16 KiB, a quarter of a frame).
    pub(crate) fn solo() -> ClusterBuilder {
        Cluster::builder(&[SOLO])
            .limit("max_key_bytes", 64)
            .limit("max_value_bytes", 1024)
            .limit("max_frame_bytes", 65536)
            .limit("snapshot_chunk_bytes", 16384)
            .limit("max_request_body_bytes", 4096)
            .limit("peer_window_bytes", 65536)
    }

    async fn start_node(&self, region: &str, peer_socket: UdpSocket) -> Node {
        let wiring = Wiring {
            peer_socket: Some(peer_socket),
            peer_addrs: self.peer_addrs.clone(),
            api_bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            resp_bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            impair: true,
            clock_offset_ms: self.clock_offsets.get(region).copied().unwrap_or(0),
            send_queue_frames: self.send_queue_frames,
            api_token: self.api_token.clone(),
            ..Wiring::default()
        };
        let config = self.region_configs.get(region).unwrap_or(&self.config);
        let mut builder = LeaderBuilder::new(config.clone(), region);
        for resolver in &self.resolvers {
            builder = builder
                .register(Arc::clone(resolver))
                .unwrap_or_else(|e| panic!("{region}: register a resolver: {e}"));
        }
        builder
            .wiring(wiring)
            .start()
            .await
            .unwrap_or_else(|e| panic!("region {region} failed to start: {e}"))
    }

    /// The configuration every region runs.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The temporary directory holding certificates, configuration and data.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running regions, in name order.
    pub(crate) fn running(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The running node of `region`.
    pub(crate) fn node(&self, region: &str) -> &Node {
        self.nodes
            .get(region)
            .unwrap_or_else(|| panic!("region {region} is not running"))
    }

    /// A handle to the running node of `region`.
    pub(crate) fn handle(&self, region: &str) -> NodeHandle {
        self.node(region).handle()
    }

    /// The QUIC address of `region` (kept across restarts).
    pub(crate) fn peer_addr(&self, region: &str) -> SocketAddr {
        self.peer_addrs[region]
    }

    /// The base URL of `region`'s HTTP API, e.g. `http://127.0.0.1:40123`.
    pub(crate) fn api_url(&self, region: &str) -> String {
        let addr = self
            .node(region)
            .api_addr()
            .expect("harness nodes are started with their API");
        format!("http://{addr}")
    }

    /// Where `region` speaks the Redis protocol.
    pub(crate) fn resp_addr(&self, region: &str) -> SocketAddr {
        self.node(region)
            .resp_addr()
            .expect("harness nodes are started with a RESP listener")
    }

    /// The impairment layer under `region`'s QUIC endpoint.
    pub(crate) fn impairment(&self, region: &str) -> &ImpairmentHandle {
        self.node(region)
            .impairment()
            .expect("harness nodes are started with the impairment layer")
    }

    // ---- reads and writes --------------------------------------------------------------

    /// Writes `value` (or a tombstone) at `region` with an optional context; panics unless the
    /// write is accepted and durable there.
    pub(crate) async fn write_with(
        &self,
        region: &str,
        table: &str,
        key: &str,
        value: Value,
        context: Option<VersionVector>,
    ) -> WriteReceipt {
        self.handle(region)
            .write(table, key.as_bytes(), value, context)
            .await
            .unwrap_or_else(|e| panic!("{region}: write {table}/{key}: {e}"))
            .unwrap_or_else(|e| panic!("{region}: write {table}/{key} refused: {e}"))
    }

    /// A blind write of `value` at `region`.
    pub(crate) async fn put(
        &self,
        region: &str,
        table: &str,
        key: &str,
        value: &str,
    ) -> WriteReceipt {
        let value = Value::Bytes(value.as_bytes().to_vec());
        self.write_with(region, table, key, value, None).await
    }

    /// A blind delete at `region`.
    pub(crate) async fn delete(&self, region: &str, table: &str, key: &str) -> WriteReceipt {
        self.write_with(region, table, key, Value::Tombstone, None)
            .await
    }

    /// Reads a key at `region`.
    pub(crate) async fn read(&self, region: &str, table: &str, key: &str) -> Read {
        let result = self
            .handle(region)
            .read(table, key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{region}: read {table}/{key}: {e}"))
            .unwrap_or_else(|e| panic!("{region}: read {table}/{key}: {e}"));
        match result {
            ReadResult::Found {
                state, resolver, ..
            } => Read {
                resolved: state.resolve(resolver.as_ref()),
                state,
            },
            ReadResult::UnknownTable => panic!("{region}: table {table} is not configured"),
        }
    }

    /// Waits until every running region has applied every write in `dots` to the key (its
    /// context covers them: each is a sibling or superseded) and returns each region's read.
    pub(crate) async fn wait_key(
        &self,
        table: &str,
        key: &str,
        dots: &[Dot],
    ) -> BTreeMap<String, Read> {
        let running = self.running();
        let regions: Vec<&str> = running.iter().map(String::as_str).collect();
        self.wait_key_in(&regions, table, key, dots).await
    }

    /// Like [`Cluster::wait_key`], for the given regions only.
    pub(crate) async fn wait_key_in(
        &self,
        regions: &[&str],
        table: &str,
        key: &str,
        dots: &[Dot],
    ) -> BTreeMap<String, Read> {
        let what = format!("{regions:?} to apply {dots:?} to {table}/{key}");
        wait_until(&what, async || {
            let mut reads = BTreeMap::new();
            for region in regions {
                let read = self.read(region, table, key).await;
                if let Some(missing) = dots.iter().find(|d| !read.state.context.covers(d)) {
                    return Err(format!("{region} lacks {missing}: {:?}", read.state));
                }
                reads.insert((*region).to_owned(), read);
            }
            Ok(reads)
        })
        .await
    }

    // ---- status, digests, convergence --------------------------------------------------

    /// The status of `region`.
    pub(crate) async fn status(&self, region: &str) -> Status {
        self.handle(region)
            .status()
            .await
            .unwrap_or_else(|e| panic!("{region}: status: {e}"))
    }

    /// The conflict log of `region`.
    pub(crate) async fn conflicts(&self, region: &str) -> Vec<ConflictRecord> {
        self.handle(region)
            .conflicts()
            .await
            .unwrap_or_else(|e| panic!("{region}: conflicts: {e}"))
            .unwrap_or_else(|e| panic!("{region}: conflicts: {e}"))
    }

    /// What `region` has durably applied: origin region → highest sequence number.
    pub(crate) async fn applied(&self, region: &str) -> BTreeMap<String, u64> {
        let status = self.status(region).await;
        status
            .applied
            .into_iter()
            .map(|(origin, _, seq)| (origin, seq))
            .collect()
    }

    /// The digest of all key states of every running region.
    pub(crate) async fn digests(&self) -> BTreeMap<String, [u8; 32]> {
        let mut digests = BTreeMap::new();
        for region in self.running() {
            let digest = self
                .handle(&region)
                .digest()
                .await
                .unwrap_or_else(|e| panic!("{region}: digest: {e}"))
                .unwrap_or_else(|e| panic!("{region}: digest: {e}"));
            digests.insert(region, digest);
        }
        digests
    }

    /// Waits until every running region has durably applied the same writes, then asserts
    /// that their data is identical (equal digests) and returns the digest.
    ///
    /// Call it once no more writes are being made: every write acknowledged so far is in its
    /// origin's applied vector, so equal vectors mean every region has every write.
    pub(crate) async fn wait_converged(&self) -> [u8; 32] {
        let applied = wait_until("every region to apply the same writes", async || {
            let mut all = BTreeMap::new();
            for region in self.running() {
                all.insert(region.clone(), self.applied(&region).await);
            }
            let distinct: BTreeSet<&BTreeMap<String, u64>> = all.values().collect();
            if distinct.len() == 1 {
                Ok(all)
            } else {
                Err(format!("applied vectors {all:?}"))
            }
        })
        .await;
        let digests = self.digests().await;
        let distinct: BTreeSet<[u8; 32]> = digests.values().copied().collect();
        assert_eq!(
            distinct.len(),
            1,
            "regions applied the same writes {applied:?} but hold different data: {}",
            hex_digests(&digests)
        );
        *distinct.first().expect("at least one region runs")
    }

    /// Waits until every running region has an accepted, live connection to every other one.
    pub(crate) async fn wait_connected(&self) {
        wait_until("every region to connect to every other", async || {
            let mut missing = Vec::new();
            for region in self.running() {
                let status = self.status(&region).await;
                for peer in &status.peers {
                    let running = self.nodes.contains_key(&peer.region);
                    if running && !peer.connected {
                        missing.push(format!("{region}->{}", peer.region));
                    }
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not connected: {missing:?}"))
            }
        })
        .await;
    }

    // ---- faults ------------------------------------------------------------------------

    /// Cuts `a` and `b` off from each other in both directions, on both sides' impairment
    /// layers (each blocks what it sends to and receives from the other).
    pub(crate) fn partition(&self, a: &str, b: &str) {
        self.impairment(a).partition(self.peer_addr(b));
        self.impairment(b).partition(self.peer_addr(a));
    }

    /// Undoes [`Cluster::partition`].
    pub(crate) fn heal(&self, a: &str, b: &str) {
        self.impairment(a).heal(self.peer_addr(b));
        self.impairment(b).heal(self.peer_addr(a));
    }

    /// Adds `one_way` latency to the packets `a` and `b` send each other (a round trip between
    /// them then takes twice as long); `Duration::ZERO` makes the link perfect again. A
    /// partition of the pair keeps the latency for when it heals.
    pub(crate) fn set_latency(&self, a: &str, b: &str, one_way: Duration) {
        for (from, to) in [(a, b), (b, a)] {
            let link = transport::impair::LinkImpairment {
                latency: one_way,
                ..self
                    .impairment(from)
                    .get(self.peer_addr(to))
                    .unwrap_or_default()
            };
            self.impairment(from)
                .set(self.peer_addr(to), link)
                .unwrap_or_else(|e| panic!("{from} -> {to}: latency {one_way:?}: {e}"));
        }
    }

    /// Shuts `region` down cleanly ([`Node::shutdown`]); panics if the shutdown fails.
    pub(crate) async fn stop(&mut self, region: &str) {
        let node = self
            .nodes
            .remove(region)
            .unwrap_or_else(|| panic!("region {region} is not running"));
        match tokio::time::timeout(SHUTDOWN_DEADLINE, node.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("region {region} shut down with an error: {e}"),
            Err(_) => panic!("region {region} did not shut down within {SHUTDOWN_DEADLINE:?}"),
        }
    }

    /// From its next restart on, `region` runs the configuration `other` runs (as an operator
    /// rolling out a changed file region by region would).
    pub(crate) fn adopt_config_of(&mut self, region: &str, other: &str) {
        let config = self
            .region_configs
            .get(other)
            .unwrap_or(&self.config)
            .clone();
        self.region_configs.insert(region.to_owned(), config);
    }

    /// Starts `region` again from its data directory, on the same QUIC address (so the other
    /// regions' configuration stays right). The new node has a fresh impairment layer.
    pub(crate) async fn restart(&mut self, region: &str) {
        assert!(
            !self.nodes.contains_key(region),
            "region {region} is still running"
        );
        let addr = self.peer_addr(region);
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| {
            panic!("cannot bind {region}'s old QUIC address {addr} again after its shutdown: {e}")
        });
        let node = self.start_node(region, socket).await;
        self.nodes.insert(region.to_owned(), node);
    }

    /// Runs a test body against the cluster, then shuts every node down — also when the body
    /// panics, in which case the panic is raised again once the nodes are down. On success,
    /// every node must shut down cleanly.
    pub(crate) async fn run(mut self, body: impl AsyncFnOnce(&mut Cluster)) {
        let outcome = CatchUnwind(Box::pin(body(&mut self))).await;
        match outcome {
            Err(panic) => {
                self.shutdown_all().await;
                std::panic::resume_unwind(panic)
            }
            Ok(()) => self.shutdown().await,
        }
    }

    /// Shuts every running node down; panics unless each shut down cleanly.
    pub(crate) async fn shutdown(mut self) {
        for (region, result) in self.shutdown_all().await {
            if let Err(e) = result {
                panic!("region {region} did not shut down cleanly: {e}");
            }
        }
    }

    /// Shuts every running node down concurrently; returns how each went.
    async fn shutdown_all(&mut self) -> Vec<(String, Result<(), String>)> {
        let mut set = tokio::task::JoinSet::new();
        for (region, node) in std::mem::take(&mut self.nodes) {
            set.spawn(async move {
                let result = match tokio::time::timeout(SHUTDOWN_DEADLINE, node.shutdown()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no shutdown within {SHUTDOWN_DEADLINE:?}")),
                };
                (region, result)
            });
        }
        let mut stopped = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => stopped.push(r),
                Err(e) => stopped.push(("?".to_owned(), Err(format!("shutdown task: {e}")))),
            }
        }
        stopped.sort();
        stopped
    }
}

/// Resolves to the inner future's output, or to the panic it raised while being polled.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
