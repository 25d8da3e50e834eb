//! Real `meridian` processes on localhost for tests: a temporary deployment (regions.toml,
//! certificates, data directories, one log file per region), its children, and the small HTTP
//! helpers the tests use to talk to them.
//!
//! Every child runs `meridian run --exit-with-stdin` with its standard input piped from the
//! test, so it exits by itself if the test process dies in any way; [`Cluster`]'s `Drop` also
//! kills every child still running and, when the test is panicking, prints the tail of each
//! region's log.
//!
//! [`Cluster::start_simulated`] runs the regions over the impairment layer
//! (`--simulate-links`), so a test can partition them through `/v1/admin/links`
//! ([`Cluster::block_link`], [`Cluster::heal_link`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leader::status::{Digest, LinkChange, Links, Status};
use meridian::launch::{Launcher, RegionProcess, Stopped, stop_all};
use tempfile::TempDir;

/// How often readiness is polled.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// Longest a region may take to stop after its standard input closes; after that it is killed
/// and the test fails.
const STOP_BOUND: Duration = Duration::from_secs(10);
/// Lines of each region's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// Bound on a single HTTP request; a request to a live region never comes near it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `meridian` binary built for this test run.
pub(crate) fn meridian() -> &'static str {
    env!("CARGO_BIN_EXE_meridian")
}

/// An HTTP client for the regions' APIs: no proxy (a proxy from the environment must never
/// see loopback test traffic) and a bound on every request.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building an HTTP client with no TLS and no proxy cannot fail")
}

/// One region of the deployment and, while it runs, its process.
pub(crate) struct Region {
    /// The region's name in regions.toml.
    pub(crate) name: String,
    /// Base URL of its API, e.g. `http://127.0.0.1:40123`.
    pub(crate) api: String,
    log: PathBuf,
    /// Its process, while it runs.
    process: Option<RegionProcess>,
}

/// A deployment of real processes in a temporary directory.
pub(crate) struct Cluster {
    /// The regions, in the order of regions.toml.
    pub(crate) regions: Vec<Region>,
    /// How regions (and impostors) are started: with `--simulate-links` or not, a heap cap or
    /// not.
    launcher: Launcher,
    /// (region, peer port, API port) as written to regions.toml.
    layout: Vec<(String, u16, u16)>,
    /// The `[timeouts]` text of regions.toml.
    timeouts: String,
    // Kept last so the directory outlives the children during `Drop`.
    dir: TempDir,
    /// This test's turn on the machine (see [`one_at_a_time`]), held until the children are
    /// gone.
    _turn: MutexGuard<'static, ()>,
}

/// Taken by every test that starts regions (or a benchmark of them) for as long as they run.
/// These tests share one binary, whose tests run in parallel, but each expects the machine
/// to itself, as when every file was its own test binary (run one after another): timing
/// bounds and rates measured by one must not depend on another's load.
static ONE_DEPLOYMENT: Mutex<()> = Mutex::new(());

/// Waits for the machine to be free of other tests' regions; it is again when the guard is
/// dropped. A test that panicked while holding it has stopped its regions (they are killed on
/// drop), so a poisoned lock is still a free machine.
pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_DEPLOYMENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lowest port [`free_ports`] considers: clear of the fixed ports that example deployments
/// and local services commonly use (regions.toml's 7101 and 8101, for one).
const PORT_FLOOR: u16 = 20_000;
/// Where the kernel's ephemeral ports start when /proc does not say.
const EPHEMERAL_LOW_DEFAULT: u16 = 32_768;

/// `n` distinct loopback ports, each free for both UDP and TCP when chosen.
///
/// `meridian run` binds the fixed ports written in regions.toml itself (`peer_addr` must name
/// a fixed port: the other regions dial it), so the ports are chosen here, held until all are
/// chosen (so none repeats), and released for the children to bind. They are taken *below*
/// the kernel's ephemeral range, from a random starting point: binding port 0 would return an
/// ephemeral port, and every outgoing connection on the machine (this test's own HTTP client
/// opens hundreds while the killed region refuses them) may take an ephemeral port as its
/// local port, so a released ephemeral port can be gone by the time a region binds it, or
/// while a killed region is down before its restart. What remains is a small race with
/// another process that binds a fixed port in the same place at the same moment; it would
/// show up as a region that exits early with a bind error in its log, never as a wrong result.
fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(EPHEMERAL_LOW_DEFAULT);
    // An unusual range that leaves no room below it: search above the floor anyway.
    let top = if ephemeral_low > PORT_FLOOR + 1_000 {
        ephemeral_low
    } else {
        u16::MAX
    };
    let span = u32::from(top - PORT_FLOOR);
    let start = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut held = Vec::new();
    for k in 0..span {
        if held.len() == n {
            break;
        }
        let port = PORT_FLOOR + (start.wrapping_add(k) % span) as u16;
        if let (Ok(udp), Ok(tcp)) = (
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)),
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
        ) {
            held.push((udp, tcp, port));
        }
    }
    assert_eq!(
        held.len(),
        n,
        "found only {} free loopback ports in {PORT_FLOOR}..{top}",
        held.len()
    );
    held.into_iter().map(|(_, _, port)| port).collect()
}

/// The regions.toml of a test deployment: fast heartbeats, relays and redials so that a
/// restart is noticed and healed within a second or two, and a 1 s idle timeout so that a
/// region killed for longer than that has its links time out at the live regions, as after a
/// real crash, rather than being replaced only when it comes back.
fn config_text(cluster: &str, regions: &[(String, u16, u16)], timeouts: &str) -> String {
    config_text_with(cluster, regions, timeouts, &BTreeMap::new())
}

/// [`config_text`] with some regions' data directories replaced (region → directory).
fn config_text_with(
    cluster: &str,
    regions: &[(String, u16, u16)],
    timeouts: &str,
    data_dirs: &BTreeMap<String, String>,
) -> String {
    let mut text = format!(
        r#"cluster = "{cluster}"
tls_dir = "certs"

[timeouts]
{timeouts}
[tables]
default = "lww"
"#
    );
    for (name, peer, api) in regions {
        let data_dir = data_dirs
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("data/{name}"));
        text.push_str(&format!(
            r#"
[[region]]
name = "{name}"
peer_addr = "127.0.0.1:{peer}"
api_addr = "127.0.0.1:{api}"
data_dir = "{data_dir}"
"#
        ));
    }
    text
}

/// The `[timeouts]` of a test deployment (see [`config_text`]).
const FAST_TIMEOUTS: &str = "heartbeat_interval_ms = 100
relay_delay_ms = 300
reconnect_min_ms = 50
reconnect_max_ms = 500
idle_timeout_ms = 1000
keep_alive_ms = 250
";

impl Cluster {
    /// Writes a deployment of `names` into a new temporary directory, creates its certificates
    /// and starts every region. Does not wait for anything: see [`Cluster::wait_healthy`].
    pub(crate) fn start(names: &[&str]) -> Cluster {
        Cluster::start_with(names, false, FAST_TIMEOUTS)
    }

    /// [`Cluster::start`], with every region (and every restart of one) run over the impairment
    /// layer, so that links can be cut and healed through the admin API.
    pub(crate) fn start_simulated(names: &[&str]) -> Cluster {
        Cluster::start_with(names, true, FAST_TIMEOUTS)
    }

    /// [`Cluster::start_simulated`] with the production timers (the defaults of
    /// `[timeouts]`) instead of the fast ones of the other tests.
    pub(crate) fn start_simulated_default_timeouts(names: &[&str]) -> Cluster {
        Cluster::start_with_options(names, true, "", None)
    }

    /// [`Cluster::start`], with every process (and every restart) capped at `bytes` of heap
    /// (`RLIMIT_DATA`): a region that needs more fails an allocation and aborts.
    pub(crate) fn start_with_data_limit(names: &[&str], bytes: u64) -> Cluster {
        Cluster::start_with_options(names, false, FAST_TIMEOUTS, Some(bytes))
    }

    /// [`Cluster::start`] with the production timers and a `[limits]` section (its lines,
    /// e.g. `pace_lag_writes = 300`).
    pub(crate) fn start_default_timeouts_with_limits(names: &[&str], limits: &str) -> Cluster {
        // The text goes where `[timeouts]`'s lines would, so it opens its own section.
        let sections = format!("\n[limits]\n{limits}\n");
        Cluster::start_with(names, false, &sections)
    }

    /// [`Cluster::start_simulated`] with a `[limits]` section (its lines).
    pub(crate) fn start_simulated_with_limits(names: &[&str], limits: &str) -> Cluster {
        let sections = format!("{FAST_TIMEOUTS}\n[limits]\n{limits}\n");
        Cluster::start_with(names, true, &sections)
    }

    fn start_with(names: &[&str], simulate_links: bool, timeouts: &str) -> Cluster {
        Cluster::start_with_options(names, simulate_links, timeouts, None)
    }

    fn start_with_options(
        names: &[&str],
        simulate_links: bool,
        timeouts: &str,
        data_limit_bytes: Option<u64>,
    ) -> Cluster {
        let turn = one_at_a_time();
        let dir = tempfile::Builder::new()
            .prefix("meridian-procs-")
            .tempdir()
            .expect("creating a temporary directory");
        let ports = free_ports(2 * names.len());
        let (udp, tcp) = ports.split_at(names.len());
        let layout: Vec<(String, u16, u16)> = names
            .iter()
            .zip(udp.iter().zip(tcp))
            .map(|(n, (p, a))| ((*n).to_owned(), *p, *a))
            .collect();
        let config = dir.path().join("regions.toml");
        std::fs::write(&config, config_text("procs-test", &layout, timeouts))
            .expect("writing regions.toml");
        let out = std::process::Command::new(meridian())
            .args(["certs", "init", "--config"])
            .arg(&config)
            .output()
            .expect("running `meridian certs init`");
        assert!(
            out.status.success(),
            "`meridian certs init` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let regions = layout
            .iter()
            .map(|(name, _, api)| Region {
                name: name.clone(),
                api: format!("http://127.0.0.1:{api}"),
                log: dir.path().join(format!("{name}.log")),
                process: None,
            })
            .collect();
        let mut cluster = Cluster {
            regions,
            launcher: Launcher::new(meridian(), config)
                .log_filter("info")
                .simulate_links(simulate_links)
                .data_limit_bytes(data_limit_bytes),
            layout,
            timeouts: timeouts.to_owned(),
            dir,
            _turn: turn,
        };
        for i in 0..names.len() {
            cluster.spawn(i);
        }
        cluster
    }

    /// Starts region `i`'s process, appending its log to the region's log file.
    pub(crate) fn spawn(&mut self, i: usize) {
        let r = &mut self.regions[i];
        assert!(r.process.is_none(), "region {} is already running", r.name);
        r.process = Some(start_child(&self.launcher, &r.name, &r.log));
    }

    /// Sends SIGKILL to region `i` and reaps it: no shutdown path of the leader runs.
    /// The process id of region `i` (which must be running).
    pub(crate) fn pid(&self, i: usize) -> u32 {
        let process = self.regions[i].process.as_ref().expect("region is running");
        process.id().expect("a running child has a pid")
    }

    /// The data directory of region `i`.
    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(&self.regions[i].name)
    }

    /// Starts a second process that claims region `i` (split brain), with its own ports and
    /// the data directory `data/<data_dir>` (empty, or a copy the caller made): same
    /// certificate, same peers. It stops when the returned [`Region`] is dropped.
    pub(crate) fn spawn_impostor(&mut self, i: usize, data_dir: &str) -> Region {
        let ports = free_ports(2);
        let mut layout = self.layout.clone();
        layout[i].1 = ports[0];
        layout[i].2 = ports[1];
        let name = layout[i].0.clone();
        let dirs = BTreeMap::from([(name.clone(), format!("data/{data_dir}"))]);
        let config = self.dir.path().join(format!("regions-{data_dir}.toml"));
        std::fs::write(
            &config,
            config_text_with("procs-test", &layout, &self.timeouts, &dirs),
        )
        .expect("writing the impostor's regions.toml");
        let log = self.dir.path().join(format!("{data_dir}.log"));
        let process = start_child(&self.launcher.for_config(config), &name, &log);
        Region {
            name,
            api: format!("http://127.0.0.1:{}", ports[1]),
            log,
            process: Some(process),
        }
    }

    pub(crate) async fn sigkill(&mut self, i: usize) {
        let r = &mut self.regions[i];
        let process = r.process.take().expect("the region to kill is running");
        process.kill().await.expect("sending SIGKILL");
        append_marker(&r.log, "===== test: SIGKILL =====");
    }

    /// Whether region `i`'s process was started and not killed since (it may have exited by
    /// itself: [`Cluster::wait_healthy`] and [`Cluster::wait_replicating`] check that).
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.regions[i].process.is_some()
    }

    /// Cuts region `i` off from region `peer` in both directions at `i`'s socket
    /// (`PUT /v1/admin/links/{peer}` with `{"blocked": true}`). Needs
    /// [`Cluster::start_simulated`]; fails the test if the region does not confirm.
    pub(crate) async fn block_link(&self, client: &reqwest::Client, i: usize, peer: usize) {
        let (r, p) = (&self.regions[i], &self.regions[peer].name);
        let resp = client
            .put(format!("{}/v1/admin/links/{p}", r.api))
            .json(&LinkChange::BLOCK)
            .send()
            .await;
        expect_link_state(resp, &r.name, p, true).await;
    }

    /// Adds `latency_ms` of one-way latency to what region `i` sends to region `peer`
    /// (`PUT /v1/admin/links/{peer}`). Needs [`Cluster::start_simulated`].
    pub(crate) async fn delay_link(
        &self,
        client: &reqwest::Client,
        i: usize,
        peer: usize,
        latency_ms: u64,
    ) {
        let (r, p) = (&self.regions[i], &self.regions[peer].name);
        let change = LinkChange {
            latency_ms: Some(latency_ms),
            ..LinkChange::default()
        };
        let resp = client
            .put(format!("{}/v1/admin/links/{p}", r.api))
            .json(&change)
            .send()
            .await;
        expect_link_state(resp, &r.name, p, false).await;
    }

    /// Heals what [`Cluster::block_link`] cut, at region `i`'s socket
    /// (`DELETE /v1/admin/links/{peer}`).
    pub(crate) async fn heal_link(&self, client: &reqwest::Client, i: usize, peer: usize) {
        let (r, p) = (&self.regions[i], &self.regions[peer].name);
        let resp = client
            .delete(format!("{}/v1/admin/links/{p}", r.api))
            .send()
            .await;
        expect_link_state(resp, &r.name, p, false).await;
    }

    /// Packets region `i`'s impairment layer has dropped on blocked links since the process
    /// started, both directions (`GET /v1/admin/links`): the proof that a partition fired.
    pub(crate) async fn blocked_packets(&self, client: &reqwest::Client, i: usize) -> u64 {
        let r = &self.regions[i];
        let view: Links = async {
            client
                .get(format!("{}/v1/admin/links", r.api))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .unwrap_or_else(|e: reqwest::Error| panic!("{}: reading its links: {e}", r.name));
        view.blocked_outbound + view.blocked_inbound
    }

    /// Waits until `/healthz` answers on region `i`, failing the test at `deadline`.
    pub(crate) async fn wait_healthy(
        &mut self,
        client: &reqwest::Client,
        i: usize,
        deadline: Instant,
    ) {
        let url = format!("{}/healthz", self.regions[i].api);
        loop {
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return;
            }
            self.assert_running(i);
            assert!(
                Instant::now() < deadline,
                "region {} did not become healthy in time",
                self.regions[i].name
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every region reports every peer as replicating, failing at `deadline`.
    /// Waits until `r` (a region process outside the cluster's list, e.g. an impostor)
    /// answers `/healthz`.
    pub(crate) async fn wait_healthy_region(
        &self,
        client: &reqwest::Client,
        r: &mut Region,
        deadline: Instant,
    ) {
        let url = format!("{}/healthz", r.api);
        loop {
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return;
            }
            if let Some(process) = r.process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                panic!("process of {} exited early: {status}", r.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become healthy",
                r.api
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The log of region `r` so far.
    pub(crate) fn log_of(&self, r: &Region) -> String {
        std::fs::read_to_string(&r.log).unwrap_or_default()
    }

    /// Waits until every region is healthy and replicating to every peer, failing the test
    /// after `bound`.
    pub(crate) async fn wait_up(&mut self, client: &reqwest::Client, bound: Duration) {
        for i in 0..self.regions.len() {
            self.wait_healthy(client, i, Instant::now() + bound).await;
        }
        self.wait_replicating(client, Instant::now() + bound).await;
    }

    pub(crate) async fn wait_replicating(&mut self, client: &reqwest::Client, deadline: Instant) {
        loop {
            let mut lagging = Vec::new();
            for r in &self.regions {
                match status(client, &r.api).await {
                    Ok(st) => {
                        for p in st.peers.iter().filter(|p| !p.replicating) {
                            lagging.push(format!("{} -> {:?}", r.name, p.region));
                        }
                    }
                    Err(e) => lagging.push(format!("{}: {e}", r.name)),
                }
            }
            if lagging.is_empty() {
                return;
            }
            for i in 0..self.regions.len() {
                self.assert_running(i);
            }
            assert!(
                Instant::now() < deadline,
                "links not replicating in time: {lagging:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails the test if region `i`'s process has exited.
    fn assert_running(&mut self, i: usize) {
        let r = &mut self.regions[i];
        if let Some(process) = r.process.as_mut()
            && let Ok(Some(status)) = process.try_wait()
        {
            panic!("region {} exited early: {status}", r.name);
        }
    }

    /// Stops every running region by closing its standard input, as `meridian simulate`
    /// does, and returns each region's exit status (`None`: it had to be killed after
    /// [`STOP_BOUND`]).
    pub(crate) async fn shutdown(&mut self) -> BTreeMap<String, Option<std::process::ExitStatus>> {
        let running = self.regions.iter_mut().filter_map(|r| r.process.take());
        stop_all(running.collect(), STOP_BOUND)
            .await
            .into_iter()
            .map(|(name, stopped)| match stopped {
                Stopped::Exited(status) => (name, Some(status)),
                Stopped::Killed | Stopped::Lost(_) => (name, None),
            })
            .collect()
    }

    /// The last lines of every region's log, for a failure message.
    pub(crate) fn log_tails(&self) -> String {
        let mut out = String::new();
        for r in &self.regions {
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!(
                "----- {} ({}), last {} lines -----\n",
                r.name,
                r.log.display(),
                lines.len() - from
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.regions {
            if let Some(process) = r.process.as_mut() {
                process.start_kill();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
            // Keep the directory (logs, data) for a post-mortem.
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("creating a placeholder directory"),
            )
            .keep();
            eprintln!("the deployment is kept in {}", kept.display());
        }
    }
}

/// Fails the test unless `resp` is a 200 from the link admin API of `region` showing its link
/// to `peer` as `blocked`.
async fn expect_link_state(
    resp: Result<reqwest::Response, reqwest::Error>,
    region: &str,
    peer: &str,
    blocked: bool,
) {
    let what = if blocked { "block" } else { "heal" };
    let resp = resp.unwrap_or_else(|e| panic!("{region}: {what} link to {peer}: {e}"));
    let code = resp.status();
    let body = resp.text().await.unwrap_or_else(|e| {
        panic!("{region}: {what} link to {peer}: {code}, body unreadable: {e}")
    });
    let shown = serde_json::from_str::<Links>(&body)
        .ok()
        .and_then(|links| Some(links.to(peer)?.blocked));
    assert!(
        code.is_success() && shown == Some(blocked),
        "{region}: {what} link to {peer} answered {code}: {body}"
    );
}

fn append_marker(log: &Path, marker: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "{marker}");
    }
}

/// Starts `region` with `launcher`, appending its output to `log`, with no API token and no
/// colours from this environment.
fn start_child(launcher: &Launcher, region: &str, log: &Path) -> RegionProcess {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the region's log file");
    writeln!(log, "===== test: starting {region} =====").expect("writing the log file");
    let mut command = launcher
        .command(region, Some(log))
        .expect("duplicating the log file handle");
    command
        .env("NO_COLOR", "1")
        .env_remove("MERIDIAN_API_TOKEN");
    RegionProcess::spawn(region, command).expect("starting `meridian run`")
}

/// `GET /v1/status` of the region at `api`.
pub(crate) async fn status(client: &reqwest::Client, api: &str) -> Result<Status, reqwest::Error> {
    get_json(client, &format!("{api}/v1/status")).await
}

/// `GET /v1/status/digest` of the region at `api`.
pub(crate) async fn digest(client: &reqwest::Client, api: &str) -> Result<Digest, reqwest::Error> {
    get_json(client, &format!("{api}/v1/status/digest")).await
}

/// A JSON document of a region's API.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, reqwest::Error> {
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// The `applied` vector of a status: seq per replica id (the full UUID, as write receipts
/// name it), with the origin's region name.
pub(crate) fn applied(status: &Status) -> BTreeMap<String, (String, u64)> {
    status
        .applied
        .iter()
        .map(|e| (format!("{:#}", e.replica), (e.region.clone(), e.seq)))
        .collect()
}

/// How long the regions may take to apply the same writes once the load has stopped.
pub(crate) const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

impl Cluster {
    /// Waits until every region's applied vector covers `expected` (highest acknowledged seq
    /// per replica id, see [`highest_acked`]) and all applied vectors are equal, failing the
    /// test after [`CONVERGENCE_BOUND`]. Returns the common vector.
    pub(crate) async fn wait_converged(
        &self,
        client: &reqwest::Client,
        expected: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, (String, u64)> {
        let deadline = Instant::now() + CONVERGENCE_BOUND;
        loop {
            let mut vectors = Vec::new();
            for r in &self.regions {
                match status(client, &r.api).await {
                    Ok(st) => vectors.push(applied(&st)),
                    Err(e) => panic!("status of {} failed after the load: {e}", r.name),
                }
            }
            let covers = |v: &BTreeMap<String, (String, u64)>| {
                expected
                    .iter()
                    .all(|(replica, seq)| v.get(replica).is_some_and(|(_, s)| s >= seq))
            };
            if vectors.iter().all(covers) && vectors.windows(2).all(|w| w[0] == w[1]) {
                return vectors.swap_remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "no convergence within {CONVERGENCE_BOUND:?}: applied vectors {vectors:#?}, \
                 acknowledged up to {expected:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Cluster {
    /// Waits until every region answers the same digest and applied vector
    /// (`GET /v1/status/digest`), failing the test after [`CONVERGENCE_BOUND`].
    pub(crate) async fn wait_same_digests(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + CONVERGENCE_BOUND;
        loop {
            let mut digests = Vec::new();
            for r in &self.regions {
                digests.push(digest(client, &r.api).await.map(|d| (d.digest, d.applied)));
            }
            let same = digests.windows(2).all(|w| match (&w[0], &w[1]) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            });
            if same && digests.iter().all(Result::is_ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no common digest within {CONVERGENCE_BOUND:?}: {digests:#?}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Highest acknowledged seq per replica id, from the `(replica, seq)` of each acknowledgement.
pub(crate) fn highest_acked<'a>(
    acks: impl IntoIterator<Item = (&'a str, u64)>,
) -> BTreeMap<String, u64> {
    let mut top = BTreeMap::new();
    for (replica, seq) in acks {
        let s = top.entry(replica.to_owned()).or_insert(0);
        *s = (*s).max(seq);
    }
    top
}
