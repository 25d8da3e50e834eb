//! `meridian bench`: start N regions on localhost as separate processes and measure, through
//! the HTTP API a client uses:
//!
//! 1. **Durable write throughput at one region** (closed loop, `local` durability): writes/s,
//!    client latency p50/p99/p999, and the fsyncs it took (from the region's own counter), so
//!    the group-commit factor (writes per fsync) is visible.
//! 2. **Replication lag at a moderate rate** (open loop): each write acknowledged at the first
//!    region is immediately read at every other region with the write's session token; that
//!    read returns as soon as the destination has applied the write, so "ack at origin →
//!    answer at destination" is the replication lag, timed on this one machine's clock (it
//!    includes one local HTTP round trip, ~0.1–0.3 ms).
//!
//! Everything runs on one machine: the figures include the load generator's own CPU use.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use leader::api::SESSION_HEADER;
use serde_json::{Value as Json, json};
use tokio::process::{Child, Command};

/// Options of `meridian bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Regions to start on localhost.
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// Injected one-way latency between every pair of regions, ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Concurrent client requests in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the throughput phase, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Distinct keys written (uniformly at random).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Write rate of the lag phase, writes/s (open loop).
    #[arg(long, default_value_t = 200)]
    lag_rate: u64,
    /// Length of the lag phase, seconds.
    #[arg(long, default_value_t = 10)]
    lag_secs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The regions started for a run; killed on drop so none outlives the benchmark.
struct Regions {
    names: Vec<String>,
    apis: Vec<String>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.regions < 2 {
        bail!("--regions must be at least 2 to measure replication");
    }
    let regions = start_regions(&args).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    wait_connected(&client, &regions).await?;
    eprintln!(
        "bench: {} regions up; throughput phase ({} s, {} concurrent)",
        args.regions, args.duration_secs, args.concurrency
    );
    let throughput = throughput_phase(&client, &regions, &args).await?;
    eprintln!(
        "bench: lag phase ({} s at {} writes/s)",
        args.lag_secs, args.lag_rate
    );
    let lag = lag_phase(&client, &regions, &args).await?;
    let digests = converged(&client, &regions).await?;
    stop(regions).await;

    let result = json!({
        "machine": machine(),
        "args": { "regions": args.regions, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
                  "duration_secs": args.duration_secs, "keys": args.keys, "value_bytes": args.value_bytes,
                  "lag_rate": args.lag_rate, "lag_secs": args.lag_secs },
        "throughput": throughput,
        "lag": lag,
        "converged": digests,
    });
    print_report(&result);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn machine() -> Json {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cpus": cpus, "cpu": model })
}

fn free_port_pair() -> Result<(SocketAddr, SocketAddr)> {
    // Bind port 0, read the port, release it: the region binds it a moment later. Another
    // process could take it in between; on a benchmark machine that is not a concern.
    let udp = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let tcp = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok((udp, tcp))
}

async fn start_regions(args: &BenchArgs) -> Result<Regions> {
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..args.regions).map(|i| format!("r{i}")).collect();
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
    if args.latency_ms > 0 {
        text.push_str("[simulation]\n");
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                text.push_str(&format!(
                    "[[simulation.link]]\nfrom = \"{a}\"\nto = \"{b}\"\nlatency_ms = {}\n",
                    args.latency_ms
                ));
            }
        }
    }
    let config = dir.path().join("regions.toml");
    std::fs::write(&config, text)?;
    crate::certs_init(&config, false)?;
    let children = names
        .iter()
        .map(|name| spawn_region(&config, name, args.latency_ms > 0, dir.path()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Regions {
        names,
        apis,
        children,
        _dir: dir,
    })
}

fn spawn_region(config: &Path, region: &str, links: bool, dir: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the meridian executable")?;
    let log = std::fs::File::create(dir.join(format!("{region}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--region")
        .arg(region)
        .arg("--exit-with-stdin");
    if links {
        cmd.arg("--simulate-links");
    }
    cmd.env("MERIDIAN_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting region {region}"))
}

async fn status(client: &reqwest::Client, api: &str) -> Result<Json> {
    Ok(client
        .get(format!("{api}/v1/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn wait_connected(client: &reqwest::Client, regions: &Regions) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for api in &regions.apis {
            let up = match status(client, api).await {
                Ok(s) => s["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().all(|p| p["replicating"] == true)),
                Err(_) => false,
            };
            all &= up;
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("regions did not connect within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quantiles(h: &Histogram<u64>) -> Json {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({ "count": h.len(), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0 })
}

fn key_for(i: u64, keys: u64) -> u64 {
    // A multiplicative hash spreads the sequence over the key space without an RNG.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys
}

async fn throughput_phase(
    client: &reqwest::Client,
    regions: &Regions,
    args: &BenchArgs,
) -> Result<Json> {
    let api = regions.apis[0].clone();
    let before = status(client, &api).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; args.value_bytes];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, api, stop, next, value, keys) = (
            client.clone(),
            api.clone(),
            stop.clone(),
            next.clone(),
            value.clone(),
            args.keys,
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("3 significant figures is valid");
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let url = format!("{api}/v1/kv/default/k{}", key_for(i, keys));
                match client.put(url).body(value.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut h = Histogram::<u64>::new(3).expect("valid");
    let mut errors = 0;
    for t in tasks {
        let (th, e) = t.await?;
        h.add(th)?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = status(client, &api).await?;
    let fsyncs = after["counters"]["fsyncs"].as_u64().unwrap_or(0)
        - before["counters"]["fsyncs"].as_u64().unwrap_or(0);
    let writes = h.len();
    Ok(json!({
        "region": regions.names[0],
        "writes": writes,
        "errors": errors,
        "seconds": elapsed,
        "writes_per_sec": writes as f64 / elapsed,
        "fsyncs": fsyncs,
        "fsyncs_per_sec": fsyncs as f64 / elapsed,
        "writes_per_fsync": if fsyncs > 0 { writes as f64 / fsyncs as f64 } else { 0.0 },
        "latency": quantiles(&h),
    }))
}

async fn lag_phase(client: &reqwest::Client, regions: &Regions, args: &BenchArgs) -> Result<Json> {
    let origin = regions.apis[0].clone();
    let dests: Vec<(String, String)> = regions
        .names
        .iter()
        .cloned()
        .zip(regions.apis.iter().cloned())
        .skip(1)
        .collect();
    let interval = Duration::from_secs_f64(1.0 / args.lag_rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(args.lag_secs);
    let mut tasks = Vec::new();
    let mut i = 0u64;
    while Instant::now() < end {
        ticker.tick().await;
        i += 1;
        let (client, origin, dests, value) = (
            client.clone(),
            origin.clone(),
            dests.clone(),
            vec![b'y'; args.value_bytes],
        );
        tasks.push(tokio::spawn(async move {
            one_lag_probe(&client, &origin, &dests, i, value).await
        }));
    }
    let mut per_dest: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut failed = 0u64;
    for t in tasks {
        match t.await? {
            Ok(samples) => {
                for (dest, us) in samples {
                    let h = per_dest
                        .entry(dest)
                        .or_insert_with(|| Histogram::new(3).expect("valid"));
                    let _ = h.record(us);
                }
            }
            Err(_) => failed += 1,
        }
    }
    let pairs: BTreeMap<String, Json> = per_dest
        .iter()
        .map(|(dest, h)| (format!("{} -> {dest}", regions.names[0]), quantiles(h)))
        .collect();
    Ok(
        json!({ "rate_per_sec": args.lag_rate, "writes": i, "failed_probes": failed, "pairs": pairs }),
    )
}

async fn one_lag_probe(
    client: &reqwest::Client,
    origin: &str,
    dests: &[(String, String)],
    i: u64,
    value: Vec<u8>,
) -> Result<Vec<(String, u64)>> {
    let key = format!("lag{i}");
    let resp = client
        .put(format!("{origin}/v1/kv/default/{key}"))
        .body(value)
        .send()
        .await?
        .error_for_status()?;
    let acked = Instant::now();
    let token = resp
        .headers()
        .get(SESSION_HEADER)
        .context("no session token")?
        .to_str()?
        .to_owned();
    let mut samples = Vec::new();
    let reads = dests.iter().map(|(name, api)| {
        let name = name.clone();
        let (client, token, url) = (
            client.clone(),
            token.clone(),
            format!("{api}/v1/kv/default/{key}"),
        );
        async move {
            let r = client.get(url).header(SESSION_HEADER, token).send().await?;
            let done = acked.elapsed().as_micros() as u64;
            if !r.status().is_success() {
                bail!("read at {name} answered {}", r.status());
            }
            Ok::<_, anyhow::Error>((name, done))
        }
    });
    for r in futures_join(reads).await {
        samples.push(r?);
    }
    Ok(samples)
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

async fn converged(client: &reqwest::Client, regions: &Regions) -> Result<Json> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    loop {
        let mut applied = Vec::new();
        for api in &regions.apis {
            applied.push(status(client, api).await?["applied"].clone());
        }
        if applied.windows(2).all(|w| w[0] == w[1]) {
            return Ok(
                json!({ "applied_vectors_equal": true, "after_ms": started.elapsed().as_millis() as u64 }),
            );
        }
        if Instant::now() > deadline {
            bail!("regions did not converge within 30 s of the load stopping: {applied:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(mut regions: Regions) {
    for c in &mut regions.children {
        drop(c.stdin.take());
    }
    for c in &mut regions.children {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
}

fn print_report(r: &Json) {
    let t = &r["throughput"];
    let mut table = crate::cli::table(["figure", "value"]);
    let rows = [
        (
            "durable writes/s at one region",
            format!("{:.0}", t["writes_per_sec"].as_f64().unwrap_or(0.0)),
        ),
        (
            "fsyncs/s",
            format!("{:.0}", t["fsyncs_per_sec"].as_f64().unwrap_or(0.0)),
        ),
        (
            "writes per fsync (group commit)",
            format!("{:.1}", t["writes_per_fsync"].as_f64().unwrap_or(0.0)),
        ),
        (
            "write latency p50 / p99 / p999 ms",
            format!(
                "{} / {} / {}",
                t["latency"]["p50_ms"], t["latency"]["p99_ms"], t["latency"]["p999_ms"]
            ),
        ),
        ("errors", t["errors"].to_string()),
    ];
    for (k, v) in rows {
        table.add_row([k.to_owned(), v]);
    }
    for (pair, q) in r["lag"]["pairs"].as_object().into_iter().flatten() {
        table.add_row([
            format!("lag {pair} p50 / p99 / max ms"),
            format!("{} / {} / {}", q["p50_ms"], q["p99_ms"], q["max_ms"]),
        ]);
    }
    table.add_row([
        "converged after load (ms)".to_owned(),
        r["converged"]["after_ms"].to_string(),
    ]);
    println!("{table}");
}
