//! `meridian bench`: measure a Meridian deployment through the HTTP API a client uses.
//!
//! It starts N regions on localhost as separate processes (optionally with injected one-way
//! link latency), or targets regions already running (`--target`, repeated), and runs up to
//! four phases (`--phases`):
//!
//! 1. **throughput**: a closed loop with clients at every region at once. Per region and in
//!    total: acknowledged writes/s, fsyncs/s, CPU and peak RSS of each region's process, and
//!    the *sustained* rate = acknowledged writes ÷ (load time + time until every region has
//!    applied everything), the definition used for PostgreSQL logical replication.
//! 2. **latency**: client write latency p50/p99/p999 per durability level (`local`, `one`,
//!    `quorum`, `all`), open loop at `--latency-rate`, so the ladder is visible.
//! 3. **lag**: replication lag for every ordered pair of regions. Each probe writes at an
//!    origin (rotating over the regions) and reads the key at every other region with the
//!    write's session token; that read answers once the destination has applied the write, so
//!    "ack at origin → answer at destination" is the lag, timed on this one machine's clock (it
//!    includes one local HTTP round trip). Open loop at `--lag-rate` writes/s in total, of
//!    which `--lag-probe-rate` are probes and the rest plain writes at every region; `auto` is
//!    half the sustained rate of phase 1 (without it, of phase 5), the target
//!    condition.
//! 4. **catchup**: one region is cut off from all its peers through `/v1/admin/links`, a
//!    backlog of `--backlog` writes is written at the others as fast as they take it, the links
//!    are healed, and the time until the cut region has applied everything (equal applied
//!    vectors) gives the catch-up time and apply rate.
//! 6. **reads**: client read latency p50/p99/p999 per read level (`one`, `quorum`, `all`),
//!    open loop at `--read-rate` spread over the regions, on keys the earlier phases wrote
//!    (missing keys are read too: a quorum read costs the same round trip either way). With
//!    `--latency-ms` a `quorum` read pays one round trip to the nearest region, `all` to the
//!    farthest.
//! 5. **wan**: a closed loop at every region for `--wan-secs` (minutes, for a soak), meant
//!    for links with latency and jitter (`--latency-ms`, `--jitter-ms`): every second, client
//!    writes/s per region, writes relayed and `Resync`s, and the lag matrix; reported as
//!    throughput over time with its trend, lag quantiles over the samples, and writes relayed
//!    per client write (with every link up, relaying must stay a rare event).
//!
//! Bytes on the wire per replicated write come from the regions' link counters and applied
//! counters over the whole run. At the end every region must have equal applied vectors and
//! equal state digests; if not, the run fails with the digests named.
//!
//! Open-loop latencies are measured from each request's intended send time, so they are free
//! of coordinated omission (see [`workload`]). Everything runs on one machine: the figures
//! include the load generator's own CPU use.

mod chart;
mod cluster;
mod phases;
mod procstat;
mod report;
mod workload;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use cluster::Cluster;
use report::{Convergence, Report, Summary};
use workload::{KeyChooser, Mix, Workload, Zipf};

/// Options of `meridian bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Regions to start on localhost (default 3; not with --target).
    #[arg(long)]
    regions: Option<usize>,
    /// Run against regions already running at this API URL instead of starting any (repeat
    /// it once per region, e.g. --target http://us-east.example:8101).
    #[arg(long, value_name = "URL")]
    target: Vec<String>,
    /// Injected one-way latency between every pair of started regions, ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Jitter on every link of the started regions, ms: each packet's delay is drawn from
    /// latency ± jitter, which reorders packets sent closer together than that (as Linux
    /// netem does).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Phases to run, comma-separated: throughput, latency, lag, catchup, reads, wan (wan is
    /// not in the default set: it runs for minutes).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::all())]
    phases: Vec<Phase>,
    /// Distinct keys per region.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// How keys are drawn: uniform, or zipfian (YCSB, theta 0.99: a few hot keys).
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    key_dist: KeyDist,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Operation mix of the throughput phase: write-only, ycsb-a (50% reads) or ycsb-b (95%
    /// reads).
    #[arg(long, value_enum, default_value_t = Mix::WriteOnly)]
    mix: Mix,
    /// Share of writes that go to a few keys every region writes at once (conflicts); the
    /// others go to region-private keys.
    #[arg(long, default_value_t = 0.0)]
    conflict_share: f64,
    /// Durability the throughput phase's writes wait for: local, one, quorum or all.
    #[arg(long, value_enum, default_value_t = Durability::Local)]
    durability: Durability,
    /// Concurrent client requests in the throughput phase (spread over the regions).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the throughput phase, seconds (unless --writes).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// End the throughput phase after this many writes in total instead of after
    /// --duration-secs.
    #[arg(long)]
    writes: Option<u64>,
    /// Open loop for the throughput phase: this many requests/s in total on a fixed
    /// schedule (latency from the intended send time). Default: closed loop, as fast as
    /// the regions answer.
    #[arg(long)]
    rate: Option<f64>,
    /// Write rate of each durability level in the latency phase, writes/s (open loop).
    #[arg(long, default_value_t = 200.0)]
    latency_rate: f64,
    /// Length of each durability level in the latency phase, seconds.
    #[arg(long, default_value_t = 2)]
    latency_secs: u64,
    /// Read rate of each read level in the reads phase, reads/s (open loop).
    #[arg(long, default_value_t = 200.0)]
    read_rate: f64,
    /// Length of each read level in the reads phase, seconds.
    #[arg(long, default_value_t = 2)]
    read_secs: u64,
    /// Write rate of the lag phase, writes/s over all regions (open loop), or `auto`: half
    /// the sustained rate of the throughput phase (without it, of the wan phase).
    #[arg(long, default_value = "auto")]
    lag_rate: LagRate,
    /// Of the lag phase's writes, how many per second are probes (each read back at every
    /// other region); the rest are plain writes, so probing does not add its own load.
    #[arg(long, default_value_t = 200.0)]
    lag_probe_rate: f64,
    /// Length of the lag phase, seconds.
    #[arg(long, default_value_t = 8)]
    lag_secs: u64,
    /// Writes made at the other regions while one region is cut off (catchup phase).
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Concurrent client requests writing the backlog.
    #[arg(long, default_value_t = 256)]
    backlog_concurrency: usize,
    /// Length of the wan phase (closed loop at every region, `--concurrency` clients),
    /// seconds.
    #[arg(long, default_value_t = 60)]
    wan_secs: u64,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw writes/s and lag per pair over time as a PNG here.
    #[arg(long, value_name = "FILE.png")]
    chart: Option<PathBuf>,
}

/// A phase of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Phase {
    /// Closed-loop throughput at every region.
    Throughput,
    /// Latency per durability level.
    Latency,
    /// Lag per ordered pair.
    Lag,
    /// Catch-up of a region cut off and healed.
    Catchup,
    /// Closed-loop load for minutes over links with latency and jitter: throughput over
    /// time, lag, relays.
    Wan,
    /// Read latency per read level (`one`, `quorum`, `all`): a quorum read costs a round trip
    /// to the nearest regions.
    Reads,
}

impl Phase {
    fn all() -> Vec<Phase> {
        vec![
            Phase::Throughput,
            Phase::Latency,
            Phase::Lag,
            Phase::Catchup,
            Phase::Reads,
        ]
    }
}

/// `--key-dist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// YCSB Zipfian, theta 0.99.
    Zipfian,
}

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Durability {
    /// Durable at the region that took the write.
    Local,
    /// And at one other region.
    One,
    /// And at a majority.
    Quorum,
    /// And everywhere.
    All,
}

impl Durability {
    fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::One => "one",
            Durability::Quorum => "quorum",
            Durability::All => "all",
        }
    }
}

/// `--lag-rate`: a number or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LagRate {
    /// Half the sustained rate of the throughput phase (or, without it, of the wan phase).
    Auto,
    /// This many probes/s.
    Fixed(f64),
}

impl std::str::FromStr for LagRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(LagRate::Auto);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(LagRate::Fixed(r)),
            _ => Err(format!(
                "'{s}' is not a rate: give writes/s (a positive number) or auto"
            )),
        }
    }
}

impl BenchArgs {
    /// Checks the combination of flags; each message says what to do.
    fn validate(&self) -> Result<()> {
        if !self.target.is_empty() {
            if self.regions.is_some() {
                bail!(
                    "--regions starts regions here, --target uses running ones: give one of them"
                );
            }
            if self.latency_ms > 0 || self.jitter_ms > 0 {
                bail!(
                    "--latency-ms and --jitter-ms apply to regions the bench starts; with --target, set links with `meridian link --latency-ms --jitter-ms`"
                );
            }
        }
        if self.regions.unwrap_or(self.target.len().max(3)) < 2 {
            bail!("a benchmark of replication needs at least 2 regions (--regions 2 or more)");
        }
        if !self.target.is_empty() && self.target.len() < 2 {
            bail!("give --target at least twice: one URL per region, 2 regions or more");
        }
        if self.phases.is_empty() {
            bail!("--phases is empty: name at least one of throughput, latency, lag, catchup, wan");
        }
        if self.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.conflict_share) {
            bail!("--conflict-share is a fraction of writes: give a number from 0 to 1");
        }
        if self.concurrency == 0 || self.backlog_concurrency == 0 {
            bail!("--concurrency and --backlog-concurrency must be at least 1");
        }
        if self.writes == Some(0) {
            bail!("--writes must be at least 1 (or leave it out to run for --duration-secs)");
        }
        if self.writes.is_some() && self.rate.is_some() {
            bail!(
                "--writes ends a closed loop after N writes; --rate runs an open loop for --duration-secs: give one of them"
            );
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--rate must be a positive number of requests/s");
        }
        if !(self.lag_probe_rate > 0.0 && self.lag_probe_rate.is_finite()) {
            bail!("--lag-probe-rate must be a positive number of probes/s");
        }
        if !(self.latency_rate > 0.0 && self.latency_rate.is_finite()) {
            bail!("--latency-rate must be a positive number of writes/s");
        }
        if self.lag_rate == LagRate::Auto
            && self.phases.contains(&Phase::Lag)
            && !self.phases.contains(&Phase::Throughput)
            && !self.phases.contains(&Phase::Wan)
        {
            bail!(
                "--lag-rate auto is half the sustained rate of the throughput (or wan) phase: add throughput to --phases, or give --lag-rate a number"
            );
        }
        if self.phases.contains(&Phase::Wan) && self.wan_secs < 3 {
            bail!(
                "--wan-secs must be at least 3 (the phase reports throughput over time, sampled every second)"
            );
        }
        if self.phases.contains(&Phase::Catchup) && self.backlog == 0 {
            bail!(
                "--backlog must be at least 1 for the catchup phase (or leave catchup out of --phases)"
            );
        }
        if let Some(c) = &self.chart
            && c.extension().is_none_or(|e| !e.eq_ignore_ascii_case("png"))
        {
            bail!("--chart writes a PNG: give a file name ending in .png");
        }
        Ok(())
    }

    fn workload(&self, durability: Option<Durability>, mix: Mix, conflict: f64) -> Workload {
        Workload {
            keys: match self.key_dist {
                KeyDist::Uniform => KeyChooser::Uniform(self.keys),
                KeyDist::Zipfian => KeyChooser::Zipfian(Zipf::new(self.keys, Zipf::YCSB_THETA)),
            },
            mix,
            conflict_share: conflict,
            value: Arc::from(vec![b'x'; self.value_bytes]),
            durability: durability.map(|d| d.as_str().to_owned()),
            read_level: None,
        }
    }

    fn to_json(&self, regions: usize) -> serde_json::Value {
        json!({
            "regions": regions, "target": self.target, "latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "wan_secs": self.wan_secs,
            "phases": self.phases.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
            "keys": self.keys, "key_dist": format!("{:?}", self.key_dist).to_lowercase(),
            "value_bytes": self.value_bytes, "mix": self.mix, "conflict_share": self.conflict_share,
            "durability": self.durability.as_str(), "concurrency": self.concurrency,
            "duration_secs": self.duration_secs, "writes": self.writes, "rate": self.rate,
            "latency_rate": self.latency_rate, "latency_secs": self.latency_secs,
            "read_rate": self.read_rate, "read_secs": self.read_secs,
            "lag_rate": match self.lag_rate { LagRate::Auto => json!("auto"), LagRate::Fixed(r) => json!(r) },
            "lag_secs": self.lag_secs, "lag_probe_rate": self.lag_probe_rate, "backlog": self.backlog, "backlog_concurrency": self.backlog_concurrency,
        })
    }
}

/// Runs the benchmark; Ctrl-C stops it, and the started regions with it.
pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    args.validate()?;
    tokio::select! {
        r = run_inner(args) => r,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            // Dropping run_inner's future drops the regions, which kills them.
            bail!("interrupted (Ctrl-C); the regions started for the benchmark were stopped")
        }
    }
}

async fn run_inner(args: BenchArgs) -> Result<ExitCode> {
    let pool = (args.concurrency.max(args.backlog_concurrency) * 2).max(64);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .build()?;
    let cluster = if args.target.is_empty() {
        Cluster::start(args.regions.unwrap_or(3), args.latency_ms, args.jitter_ms).await?
    } else {
        Cluster::target(&client, &args.target).await?
    };
    cluster.wait_connected(&client).await?;
    let progress = Progress::new();
    progress.line(format!(
        "bench: {} regions up ({}): {}",
        cluster.names.len(),
        if cluster.is_local() {
            "started here"
        } else {
            "--target"
        },
        cluster.names.join(", ")
    ));
    let mut bench = phases::Bench::new(client, cluster, progress);
    let report = bench.run_phases(&args).await;
    let (report, cluster) = match report {
        Ok(r) => (r, bench.into_cluster()),
        Err(e) => {
            bench.into_cluster().stop().await;
            return Err(e);
        }
    };
    cluster.stop().await;
    finish(&args, report)
}

/// Prints, writes and draws the report; fails when the regions did not converge.
fn finish(args: &BenchArgs, report: Report) -> Result<ExitCode> {
    println!("{}", report.table());
    for note in &report.notes {
        println!("note: {note}");
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: results written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::draw(path, &report.timeseries)?;
        eprintln!("bench: chart drawn in {}", path.display());
    }
    if !report.convergence.converged {
        let digests: Vec<String> = report
            .convergence
            .digests
            .iter()
            .map(|(r, d)| format!("{r}={d}"))
            .collect();
        let why = if report.convergence.after_ms.is_none() {
            format!(
                "their applied vectors still differed {} s after the last phase",
                phases::DRAIN_WAIT.as_secs()
            )
        } else {
            "they applied the same writes but their state digests differ".to_owned()
        };
        eprintln!(
            "meridian bench: FAILED: the regions did not converge: {why} ({}); keep the JSON and the region logs and file a bug",
            digests.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr: a bar per phase on a terminal, one line per phase otherwise.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// A line of text, above the bars.
    pub(crate) fn line(&self, text: String) {
        eprintln!("{text}");
    }

    /// A bar of `len` units for a phase; hidden when stderr is not a terminal.
    pub(crate) fn bar(&self, phase: &str, len: u64, unit: &str) -> indicatif::ProgressBar {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let target = if self.tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(phase.to_owned());
        bar
    }
}

/// Fills the summary and the convergence of a report.
pub(crate) fn summarize(report: &mut Report, regions: usize, convergence: Convergence) {
    report.summary = Summary::of(
        regions,
        report.throughput.as_ref(),
        report.lag.as_ref(),
        report.catchup.as_ref(),
        report.wan.as_ref(),
        report.wire.as_ref(),
        convergence.converged,
    );
    report.convergence = convergence;
}

/// CPUs and model of this machine.
fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({ "cpus": cpus, "cpu": model, "loadavg_at_start": load })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        cli.bench.validate()?;
        Ok(cli.bench)
    }

    #[test]
    fn the_compare_script_invocation_parses() {
        let a = parse(&[
            "--regions",
            "3",
            "--keys",
            "10000",
            "--value-bytes",
            "100",
            "--concurrency",
            "64",
            "--writes",
            "200000",
            "--mix",
            "write-only",
            "--phases",
            "throughput,lag",
            "--lag-rate",
            "auto",
            "--lag-secs",
            "10",
            "--out",
            "f.json",
        ])
        .unwrap();
        assert_eq!(a.phases, vec![Phase::Throughput, Phase::Lag]);
        assert_eq!(a.lag_rate, LagRate::Auto);
        assert_eq!(a.writes, Some(200_000));
        assert_eq!(parse(&[]).unwrap().phases, Phase::all());
    }

    #[test]
    fn bad_combinations_say_what_to_do() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["--phases", "lag"]).contains("add throughput"));
        assert!(err(&["--regions", "1"]).contains("at least 2"));
        assert!(err(&["--target", "http://a", "--regions", "2"]).contains("give one of them"));
        assert!(err(&["--target", "http://a"]).contains("at least twice"));
        assert!(err(&["--conflict-share", "1.5"]).contains("0 to 1"));
        assert!(err(&["--writes", "10", "--rate", "5"]).contains("give one of them"));
        assert!(err(&["--chart", "x.svg"]).contains(".png"));
        assert!(err(&["--lag-rate", "fast"]).contains("auto"));
        assert!(parse(&["--phases", "lag", "--lag-rate", "500"]).is_ok());
        assert!(
            err(&[
                "--target",
                "http://a",
                "--target",
                "http://b",
                "--jitter-ms",
                "2"
            ])
            .contains("--jitter-ms")
        );
        assert!(err(&["--phases", "wan", "--wan-secs", "2"]).contains("at least 3"));
    }

    #[test]
    fn the_wan_phase_takes_latency_jitter_and_length_and_sets_the_auto_lag_rate() {
        let a = parse(&[
            "--phases",
            "wan,lag",
            "--latency-ms",
            "20",
            "--jitter-ms",
            "2",
            "--wan-secs",
            "300",
            "--concurrency",
            "18",
        ])
        .unwrap();
        assert_eq!(a.phases, vec![Phase::Wan, Phase::Lag]);
        assert_eq!((a.latency_ms, a.jitter_ms, a.wan_secs), (20, 2, 300));
        assert_eq!(a.lag_rate, LagRate::Auto);
        assert!(
            !Phase::all().contains(&Phase::Wan),
            "minutes long: not a default"
        );
        let json = a.to_json(3);
        assert_eq!(
            (json["jitter_ms"].as_u64(), json["wan_secs"].as_u64()),
            (Some(2), Some(300))
        );
    }
}
