//! The regions a benchmark runs against: started here as child processes (killed on drop), or
//! already running elsewhere (`--target`). Also the HTTP calls the phases make to them besides
//! the load itself: status, digest, link control.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use leader::status::{Digest, LinkChange, Status};
use meridian::launch::{Launcher, RegionProcess, stop_all};

/// How long regions have to connect to each other after start.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long started regions get to stop once asked, before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The regions of a run.
pub(crate) struct Cluster {
    /// Region names, in the order of `apis`.
    pub(crate) names: Vec<String>,
    /// API base URLs (`http://host:port`).
    pub(crate) apis: Vec<String>,
    /// The child processes when this run started the regions; `None` with `--target`.
    local: Option<Local>,
}

/// Regions started by this run; `kill_on_drop` makes sure none outlives it, also on error or
/// Ctrl-C (and each child exits by itself when its stdin pipe closes).
struct Local {
    children: Vec<RegionProcess>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `regions` regions on localhost, every link with `latency_ms` ± `jitter_ms` of
    /// one-way latency, always over the impairment layer so the catch-up phase can cut links.
    pub(crate) async fn start(regions: usize, latency_ms: u64, jitter_ms: u64) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let names: Vec<String> = (0..regions).map(|i| format!("r{i}")).collect();
        let mut text =
            String::from("cluster = \"bench\"\ntls_dir = \"certs\"\n[tables]\ndefault = \"lww\"\n");
        let mut apis = Vec::new();
        for name in &names {
            let (peer, api) = free_port_pair()?;
            text.push_str(&format!(
                "[[region]]\nname = \"{name}\"\npeer_addr = \"{peer}\"\napi_addr = \"{api}\"\n"
            ));
            apis.push(format!("http://{api}"));
        }
        if latency_ms > 0 || jitter_ms > 0 {
            text.push_str("[simulation]\n");
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    text.push_str(&format!(
                        "[[simulation.link]]\nfrom = \"{a}\"\nto = \"{b}\"\nlatency_ms = {latency_ms}\njitter_ms = {jitter_ms}\n"
                    ));
                }
            }
        }
        let config = dir.path().join("regions.toml");
        std::fs::write(&config, text)?;
        crate::certs_init(&config, false)?;
        let launcher = Launcher::this_binary(&config)
            .context("finding the meridian executable")?
            .simulate_links(true)
            .log_filter("warn");
        let children = names
            .iter()
            .map(|name| {
                let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
                launcher
                    .spawn(name, Some(log))
                    .with_context(|| format!("starting region {name}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster {
            names,
            apis,
            local: Some(Local {
                children,
                _dir: dir,
            }),
        })
    }

    /// Regions already running at `apis`; their names come from their status.
    pub(crate) async fn target(client: &reqwest::Client, apis: &[String]) -> Result<Cluster> {
        let mut names = Vec::new();
        for api in apis {
            let s = status(client, api)
                .await
                .with_context(|| format!("reading the status of --target {api}"))?;
            let name = s.region;
            if names.contains(&name) {
                bail!("--target {api} is region {name} again; give each region once");
            }
            names.push(name);
        }
        Ok(Cluster {
            names,
            apis: apis
                .iter()
                .map(|a| a.trim_end_matches('/').to_owned())
                .collect(),
            local: None,
        })
    }

    /// Whether this run started the regions (and can read their processes).
    pub(crate) fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The child PIDs, in region order, when this run started the regions.
    pub(crate) fn pids(&self) -> Option<Vec<u32>> {
        let local = self.local.as_ref()?;
        local.children.iter().map(RegionProcess::id).collect()
    }

    /// (name, API) of every region.
    pub(crate) fn targets(&self) -> Vec<(String, String)> {
        self.names
            .iter()
            .cloned()
            .zip(self.apis.iter().cloned())
            .collect()
    }

    /// Waits until every region replicates to every peer.
    pub(crate) async fn wait_connected(&self, client: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            let mut down = Vec::new();
            for (name, api) in self.names.iter().zip(&self.apis) {
                let up = status(client, api)
                    .await
                    .is_ok_and(|s| s.all_peers_replicating());
                if !up {
                    down.push(name.as_str());
                }
            }
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "regions {} did not connect to all their peers within {} s; see their logs",
                    down.join(", "),
                    CONNECT_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the started regions (stdin closed, then a kill after 10 s); nothing with
    /// `--target`.
    pub(crate) async fn stop(self) {
        if let Some(local) = self.local {
            stop_all(local.children, STOP_GRACE).await;
        }
    }
}

fn free_port_pair() -> Result<(SocketAddr, SocketAddr)> {
    // Bind port 0, read the port, release it: the region binds it a moment later. Another
    // process could take it in between; on a benchmark machine that is not a concern.
    let udp = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let tcp = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok((udp, tcp))
}

/// `GET /v1/status`.
pub(crate) async fn status(client: &reqwest::Client, api: &str) -> Result<Status> {
    Ok(client
        .get(format!("{api}/v1/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Every region's status, in region order, asked concurrently.
pub(crate) async fn statuses(client: &reqwest::Client, apis: &[String]) -> Result<Vec<Status>> {
    let tasks: Vec<_> = apis
        .iter()
        .map(|api| {
            let (client, api) = (client.clone(), api.clone());
            tokio::spawn(async move { status(&client, &api).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Frame bytes this region sent to all its peers.
pub(crate) fn bytes_sent(status: &Status) -> u64 {
    status.peers.iter().filter_map(|p| p.bytes_sent).sum()
}

/// Waits until every region has applied the same writes (equal applied vectors), up to
/// `wait`; returns how long it took, or the vectors when they never matched.
pub(crate) async fn wait_applied_equal(
    client: &reqwest::Client,
    apis: &[String],
    wait: Duration,
) -> Result<Result<Duration, Vec<BTreeMap<String, u64>>>> {
    let started = Instant::now();
    loop {
        let vectors: Vec<_> = statuses(client, apis)
            .await?
            .iter()
            .map(Status::applied_by_region)
            .collect();
        if vectors.windows(2).all(|w| w[0] == w[1]) {
            return Ok(Ok(started.elapsed()));
        }
        if started.elapsed() > wait {
            return Ok(Err(vectors));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /v1/status/digest` of every region.
pub(crate) async fn digests(client: &reqwest::Client, apis: &[String]) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for api in apis {
        let d: Digest = client
            .get(format!("{api}/v1/status/digest"))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("{api}/v1/status/digest (a region older than this bench?)"))?
            .json()
            .await?;
        out.push(d);
    }
    Ok(out)
}

/// Whether `api` serves link control (`/v1/admin/links`); the reason when not.
pub(crate) async fn link_control(client: &reqwest::Client, api: &str) -> Result<(), String> {
    match client.get(format!("{api}/v1/admin/links")).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!(
            "{api}/v1/admin/links answered {} (start regions with --simulate-links to allow cutting links)",
            r.status()
        )),
        Err(e) => Err(format!("{api}/v1/admin/links: {e}")),
    }
}

/// Cuts (`blocked = true`) or heals the link from the region at `api` to `peer`. A cut at one
/// region drops the traffic in both directions.
pub(crate) async fn set_blocked(
    client: &reqwest::Client,
    api: &str,
    peer: &str,
    blocked: bool,
) -> Result<()> {
    let url = format!("{api}/v1/admin/links/{peer}");
    let req = if blocked {
        client.put(url).json(&LinkChange::BLOCK)
    } else {
        client.delete(url)
    };
    req.send().await?.error_for_status().with_context(|| {
        format!(
            "{} the link {api} -> {peer}",
            if blocked { "cutting" } else { "healing" }
        )
    })?;
    Ok(())
}
