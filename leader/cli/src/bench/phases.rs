//! The phases of a run, the 250 ms sampler behind the chart, and the final checks.
//!
//! # Why one file of about 1,000 lines
//! The phases are methods of one `Bench` run that share its clients, figures and deadlines, and
//! read as the run's script in order (warm-up, load, partition, heal, checks); the sampler and
//! the figures it derives are the chart's half of the same run. About 140 lines are its tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use leader::api::SESSION_HEADER;
use leader::status::{Counters, MatrixEntry, Status};

use super::cluster::{self, Cluster};
use super::procstat::{self, ProcSample};
use super::report::{
    Catchup, Convergence, Lag, LatencyLevel, Quantiles, ReadLevelLatency, RegionThroughput, Report,
    Sample, Summary, Throughput, Wan, WanSample, Wire, per,
};
use super::workload::{self, Load, LoadControl, Schedule, Until, histogram};
use super::{BenchArgs, Durability, LagRate, Phase, Progress, summarize};

/// How often the sampler reads every region's status.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long the regions have to apply everything after a load.
pub(super) const DRAIN_WAIT: Duration = Duration::from_secs(120);
/// How long a cut region has to catch up after the heal.
const CATCHUP_WAIT: Duration = Duration::from_secs(300);
/// Lag probes in flight at once; beyond it the dispatcher waits (and the wait shows as lag).
const PROBES_IN_FLIGHT_MAX: usize = 4096;
/// A lag probe's read waits for the write to arrive; past this it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the wan phase reads every region's status.
const WAN_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A run in progress.
pub(crate) struct Bench {
    client: reqwest::Client,
    cluster: Cluster,
    progress: Progress,
    sampler: Arc<Sampler>,
}

/// What the sampler shares with the phases.
#[derive(Debug, Default)]
struct Sampler {
    phase: Mutex<String>,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

/// Locks a mutex, ignoring poisoning: the data are samples, valid after any panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Bench {
    /// A run against `cluster`.
    pub(crate) fn new(client: reqwest::Client, cluster: Cluster, progress: Progress) -> Self {
        Bench {
            client,
            cluster,
            progress,
            sampler: Arc::default(),
        }
    }

    /// The regions, to stop them.
    pub(crate) fn into_cluster(self) -> Cluster {
        self.sampler.stop.store(true, Ordering::Relaxed);
        self.cluster
    }

    fn phase(&self, name: &str) {
        *lock(&self.sampler.phase) = name.to_owned();
    }

    /// Runs the phases `args` asks for, then the convergence check.
    pub(crate) async fn run_phases(&mut self, args: &BenchArgs) -> Result<Report> {
        let first = cluster::statuses(&self.client, &self.cluster.apis).await?;
        let sampler = tokio::spawn(sample_loop(
            self.client.clone(),
            self.cluster.apis.clone(),
            self.sampler.clone(),
        ));
        let mut notes = Vec::new();
        let on = |p: Phase| args.phases.contains(&p);
        let throughput = if on(Phase::Throughput) {
            Some(self.throughput(args, &mut notes).await?)
        } else {
            None
        };
        let latency = if on(Phase::Latency) {
            Some(self.latency(args).await?)
        } else {
            None
        };
        // Before lag, whose `auto` rate it sets when there is no throughput phase.
        let wan = if on(Phase::Wan) {
            Some(self.wan(args).await?)
        } else {
            None
        };
        let lag = if on(Phase::Lag) {
            let auto = throughput
                .as_ref()
                .map(|t| t.sustained_writes_per_sec)
                .or(wan.as_ref().map(|w| w.writes_per_sec));
            Some(self.lag(args, auto).await?)
        } else {
            None
        };
        let catchup = if on(Phase::Catchup) {
            self.catchup(args, throughput.as_ref(), &mut notes).await?
        } else {
            None
        };
        let reads = if on(Phase::Reads) {
            Some(self.reads(args).await?)
        } else {
            None
        };
        self.phase("converge");
        let convergence = self.converge().await?;
        self.sampler.stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        let last = cluster::statuses(&self.client, &self.cluster.apis).await?;
        let wire = wire(&first, &last);
        let mut report = Report {
            summary: Summary::of(0, None, None, None, None, None, false),
            machine: super::machine(),
            args: args.to_json(self.cluster.names.len()),
            throughput,
            latency,
            lag,
            catchup,
            wan,
            reads,
            wire: Some(wire),
            convergence: convergence.clone(),
            notes,
            timeseries: std::mem::take(&mut *lock(&self.sampler.samples)),
        };
        summarize(&mut report, self.cluster.names.len(), convergence);
        Ok(report)
    }

    /// A bar that follows `control.writes_done` (or the elapsed seconds) until `done`.
    fn follow(
        &self,
        phase: &str,
        len: u64,
        by_writes: bool,
        control: Arc<LoadControl>,
    ) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
        let bar = self
            .progress
            .bar(phase, len, if by_writes { "writes" } else { "s" });
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = control.writes_done.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = per((done - last.1) as f64, (now - last.0).as_secs_f64());
                last = (now, done);
                b.set_position(if by_writes {
                    done
                } else {
                    started.elapsed().as_secs()
                });
                b.set_message(format!("{rate:.0} writes/s"));
            }
        });
        (bar, ticker)
    }

    /// Runs `load` for `secs` (or until its write count), with a bar.
    async fn drive(&self, phase: &str, load: Load, secs: u64) -> (Vec<workload::RegionLoad>, f64) {
        let control = Arc::new(LoadControl::default());
        let (len, by_writes) = match load.until {
            Until::Writes(n) => (n, true),
            Until::Stopped => (secs, false),
        };
        let (bar, ticker) = self.follow(phase, len, by_writes, control.clone());
        let timer = matches!(load.until, Until::Stopped).then(|| {
            let control = control.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                control.stop.store(true, Ordering::Relaxed);
            })
        });
        let out = workload::run(&self.client, load, control).await;
        ticker.abort();
        if let Some(t) = timer {
            t.abort();
        }
        bar.finish_and_clear();
        out
    }

    async fn throughput(&self, args: &BenchArgs, notes: &mut Vec<String>) -> Result<Throughput> {
        self.phase("throughput");
        self.progress.line(match args.writes {
            Some(n) => format!(
                "bench: throughput phase ({n} writes, {} concurrent, all regions)",
                args.concurrency
            ),
            None => format!(
                "bench: throughput phase ({} s, {}, all regions)",
                args.duration_secs,
                args.rate.map_or_else(
                    || format!("{} concurrent", args.concurrency),
                    |r| format!("open loop at {r}/s")
                )
            ),
        });
        let apis = &self.cluster.apis;
        let before = cluster::statuses(&self.client, apis).await?;
        let pids = self.cluster.pids();
        if pids.is_none() {
            notes.push("CPU and peak RSS per region are read from /proc of the processes this bench starts; with --target they are not measured".into());
        }
        let cpu_before = proc_samples(pids.as_deref());
        let load = Load {
            targets: self.cluster.targets(),
            clients: args.concurrency,
            rate: args.rate,
            until: args.writes.map_or(Until::Stopped, Until::Writes),
            workload: args.workload(Some(args.durability), args.mix, args.conflict_share),
            seed: 1,
        };
        let (results, load_secs) = self.drive("throughput", load, args.duration_secs).await;
        self.phase("throughput drain");
        let drain = cluster::wait_applied_equal(&self.client, apis, DRAIN_WAIT)
            .await?
            .map_err(|v| {
                anyhow::anyhow!(
                    "the regions had not applied the same writes {} s after the throughput load ({v:?}); replication is stuck — see the region logs",
                    DRAIN_WAIT.as_secs()
                )
            })?;
        let window = load_secs + drain.as_secs_f64();
        let after = cluster::statuses(&self.client, apis).await?;
        let cpu_after = proc_samples(pids.as_deref());
        let regions: Vec<RegionThroughput> = results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let cpu = cpu_before
                    .as_ref()
                    .zip(cpu_after.as_ref())
                    .map(|(b, a)| (b[i], a[i]));
                let statuses = (&before[i], &after[i]);
                region_figures(
                    &self.cluster.names[i],
                    r,
                    statuses,
                    cpu,
                    (load_secs, window),
                )
            })
            .collect();
        let writes: u64 = regions.iter().map(|r| r.writes).sum();
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        let first_error = results.iter().find_map(|r| r.first_error.clone());
        if writes == 0 {
            bail!(
                "no write of the throughput phase succeeded ({errors} failed; the first: {}); check that the regions accept writes to table `default`",
                first_error.as_deref().unwrap_or("none")
            );
        }
        if let Some(e) = &first_error {
            notes.push(format!(
                "throughput: {errors} requests failed; the first: {e}"
            ));
        }
        Ok(Throughput {
            regions,
            load_secs,
            drain_secs: drain.as_secs_f64(),
            writes,
            total_writes_per_sec: per(writes as f64, load_secs),
            sustained_writes_per_sec: per(writes as f64, window),
            errors,
            first_error,
        })
    }

    async fn latency(&self, args: &BenchArgs) -> Result<Vec<LatencyLevel>> {
        let mut levels = Vec::new();
        for d in [
            Durability::Local,
            Durability::One,
            Durability::Quorum,
            Durability::All,
        ] {
            self.phase(&format!("latency {}", d.as_str()));
            self.progress.line(format!(
                "bench: latency phase, durability {} ({} s at {}/s, open loop)",
                d.as_str(),
                args.latency_secs,
                args.latency_rate
            ));
            let load = Load {
                targets: self.cluster.targets(),
                clients: args.concurrency,
                rate: Some(args.latency_rate),
                until: Until::Stopped,
                workload: args.workload(Some(d), workload::Mix::WriteOnly, 0.0),
                seed: 2,
            };
            let (results, _) = self
                .drive(&format!("latency {}", d.as_str()), load, args.latency_secs)
                .await;
            let mut h = histogram();
            for r in &results {
                // Same bounds everywhere: adding cannot fail.
                let _ = h.add(&r.writes);
            }
            levels.push(LatencyLevel {
                durability: d.as_str().to_owned(),
                rate_per_sec: args.latency_rate,
                latency: Quantiles::of(&h),
                accepted_not_reached: results.iter().map(|r| r.accepted).sum(),
                errors: results.iter().map(|r| r.errors).sum(),
            });
        }
        Ok(levels)
    }

    /// The reads phase: read latency per read level, open loop.
    async fn reads(&self, args: &BenchArgs) -> Result<Vec<ReadLevelLatency>> {
        let mut levels = Vec::new();
        for level in ["one", "quorum", "all"] {
            self.phase(&format!("reads {level}"));
            self.progress.line(format!(
                "bench: reads phase, read={level} ({} s at {}/s, open loop)",
                args.read_secs, args.read_rate
            ));
            let mut workload = args.workload(None, workload::Mix::ReadOnly, 0.0);
            workload.read_level = Some(level.to_owned());
            let load = Load {
                targets: self.cluster.targets(),
                clients: args.concurrency,
                rate: Some(args.read_rate),
                until: Until::Stopped,
                workload,
                seed: 6,
            };
            let (results, _) = self
                .drive(&format!("reads {level}"), load, args.read_secs)
                .await;
            let mut h = histogram();
            for r in &results {
                // Same bounds everywhere: adding cannot fail.
                let _ = h.add(&r.reads);
            }
            levels.push(ReadLevelLatency {
                level: level.to_owned(),
                rate_per_sec: args.read_rate,
                latency: Quantiles::of(&h),
                errors: results.iter().map(|r| r.errors).sum(),
            });
        }
        Ok(levels)
    }

    /// Phase 3; `sustained` is the rate `--lag-rate auto` halves (of the throughput phase,
    /// or else of the wan phase).
    async fn lag(&self, args: &BenchArgs, sustained: Option<f64>) -> Result<Lag> {
        self.phase("lag");
        let (rate, source) = match args.lag_rate {
            LagRate::Fixed(r) => (r, "flag"),
            LagRate::Auto => {
                let t = sustained.context("--lag-rate auto needs the throughput phase")?;
                ((t / 2.0).max(1.0), "auto")
            }
        };
        let probe_rate = rate.min(args.lag_probe_rate);
        self.progress.line(format!(
            "bench: lag phase ({} s at {rate:.0} writes/s{}, {probe_rate:.0}/s of them probes of every ordered pair)",
            args.lag_secs,
            if source == "auto" { ", half the sustained rate" } else { "" }
        ));
        let background = (rate > probe_rate).then(|| self.background(args, rate - probe_rate));
        let started = Instant::now();
        let (hists, probes, failed) = self.probes(args, probe_rate).await?;
        let (mut background_writes, mut background_errors) = (0, 0);
        if let Some((control, task)) = background {
            control.stop.store(true, Ordering::Relaxed);
            let (results, _) = task.await?;
            background_writes = results.iter().map(|r| r.writes.len()).sum();
            background_errors = results.iter().map(|r| r.errors).sum();
        }
        let secs = started.elapsed().as_secs_f64();
        let mut all = histogram();
        for h in hists.values() {
            let _ = all.add(h);
        }
        let all = Quantiles::of(&all);
        Ok(Lag {
            rate_per_sec: rate,
            probe_rate_per_sec: probe_rate,
            background_writes,
            background_errors,
            rate_source: source.to_owned(),
            secs,
            probes,
            failed_probes: failed,
            pairs: hists
                .iter()
                .map(|(p, h)| (p.clone(), Quantiles::of(h)))
                .collect(),
            all,
            injected_one_way_ms: args.latency_ms,
            p99_excess_ms: all.p99_ms - args.latency_ms as f64,
        })
    }

    /// Phase 5: a closed loop at every region for `--wan-secs`, every region's status read
    /// every second; then the drain until every region has applied everything.
    async fn wan(&self, args: &BenchArgs) -> Result<Wan> {
        self.phase("wan");
        self.progress.line(format!(
            "bench: wan phase ({} s, {} concurrent, all regions, links {} ± {} ms)",
            args.wan_secs, args.concurrency, args.latency_ms, args.jitter_ms
        ));
        let apis = &self.cluster.apis;
        let load = Load {
            targets: self.cluster.targets(),
            clients: args.concurrency,
            rate: None,
            until: Until::Stopped,
            workload: args.workload(Some(args.durability), args.mix, args.conflict_share),
            seed: 5,
        };
        let control = Arc::new(LoadControl::default());
        let (bar, ticker) = self.follow("wan", args.wan_secs, false, control.clone());
        let task = {
            let (client, control) = (self.client.clone(), control.clone());
            tokio::spawn(async move { workload::run(&client, load, control).await })
        };
        let started = Instant::now();
        let mut prev = (started, cluster::statuses(&self.client, apis).await?);
        let first = prev.1.clone();
        let mut samples = Vec::new();
        let mut tick =
            tokio::time::interval_at((started + WAN_SAMPLE_EVERY).into(), WAN_SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < Duration::from_secs(args.wan_secs) {
            tick.tick().await;
            let now_statuses = cluster::statuses(&self.client, apis).await?;
            let now = Instant::now();
            samples.push(wan_sample(
                (now - started).as_secs_f64(),
                (now - prev.0).as_secs_f64(),
                &prev.1,
                &now_statuses,
            ));
            prev = (now, now_statuses);
        }
        control.stop.store(true, Ordering::Relaxed);
        let (results, load_secs) = task.await?;
        ticker.abort();
        bar.finish_and_clear();
        let last = cluster::statuses(&self.client, apis).await?;
        self.phase("wan drain");
        let drain = cluster::wait_applied_equal(&self.client, apis, DRAIN_WAIT)
            .await?
            .map_err(|v| {
                anyhow::anyhow!(
                    "the regions had not applied the same writes {} s after the wan load ({v:?}); replication is stuck — see the region logs",
                    DRAIN_WAIT.as_secs()
                )
            })?;
        let delta = |counter: Counter| -> u64 {
            let sum = |ss: &[Status]| ss.iter().map(|s| counter(&s.counters)).sum::<u64>();
            sum(&last).saturating_sub(sum(&first))
        };
        let writes: u64 = results.iter().map(|r| r.writes.len()).sum();
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        let relayed = delta(|c| c.writes_relayed);
        let mut lag = histogram();
        let mut lag_writes_max = 0;
        for s in &samples {
            for ms in s.lag_ms.values() {
                let _ = lag.record(((ms * 1000.0) as u64).max(1));
            }
            lag_writes_max = lag_writes_max.max(s.lag_writes.values().copied().max().unwrap_or(0));
        }
        let (first_third, last_third, trend) = Wan::trend(&samples);
        Ok(Wan {
            secs: load_secs,
            injected_one_way_ms: args.latency_ms,
            jitter_ms: args.jitter_ms,
            clients: args.concurrency,
            writes,
            writes_per_sec: per(writes as f64, load_secs),
            region_writes_per_sec: self
                .cluster
                .names
                .iter()
                .zip(&results)
                .map(|(n, r)| (n.clone(), per(r.writes.len() as f64, load_secs)))
                .collect(),
            first_third_writes_per_sec: first_third,
            last_third_writes_per_sec: last_third,
            trend_pct_per_min: trend,
            relayed,
            relayed_per_client_write: per(relayed as f64, writes as f64),
            resyncs: delta(|c| c.resyncs),
            lag: Quantiles::of(&lag),
            lag_writes_max,
            drain_secs: drain.as_secs_f64(),
            errors,
            first_error: results.iter().find_map(|r| r.first_error.clone()),
            samples,
        })
    }

    /// Plain writes at `rate` over every region (open loop) until its control is stopped.
    fn background(
        &self,
        args: &BenchArgs,
        rate: f64,
    ) -> (
        Arc<LoadControl>,
        tokio::task::JoinHandle<(Vec<workload::RegionLoad>, f64)>,
    ) {
        let load = Load {
            targets: self.cluster.targets(),
            clients: args.concurrency,
            rate: Some(rate),
            until: Until::Stopped,
            workload: args.workload(None, workload::Mix::WriteOnly, 0.0),
            seed: 4,
        };
        let control = Arc::new(LoadControl::default());
        let (client, c) = (self.client.clone(), control.clone());
        let task = tokio::spawn(async move { workload::run(&client, load, c).await });
        (control, task)
    }

    /// Lag probes at `rate` for `--lag-secs`, origins in turn: the lag histogram of every
    /// ordered pair, the probes sent and those that failed.
    async fn probes(
        &self,
        args: &BenchArgs,
        rate: f64,
    ) -> Result<(BTreeMap<String, Histogram<u64>>, u64, u64)> {
        let targets = Arc::new(self.cluster.targets());
        let hists: Arc<Mutex<BTreeMap<String, Histogram<u64>>>> = Arc::default();
        let failed = Arc::new(AtomicU64::new(0));
        let control = Arc::new(LoadControl::default());
        let (bar, ticker) = self.follow("lag", args.lag_secs, false, control.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(PROBES_IN_FLIGHT_MAX));
        let value: Arc<[u8]> = Arc::from(vec![b'y'; args.value_bytes]);
        let started = Instant::now();
        let schedule = Schedule::new(started, rate);
        let end = started + Duration::from_secs(args.lag_secs);
        let mut tasks = tokio::task::JoinSet::new();
        let mut i = 0u64;
        while schedule.intended(i) < end {
            tokio::time::sleep_until(schedule.intended(i).into()).await;
            let permit = slots.clone().acquire_owned().await?;
            let (client, targets, hists, failed, control, value) = (
                self.client.clone(),
                targets.clone(),
                hists.clone(),
                failed.clone(),
                control.clone(),
                value.clone(),
            );
            tasks.spawn(async move {
                let origin = (i % targets.len() as u64) as usize;
                match probe(&client, &targets, origin, i, value).await {
                    Ok(samples) => {
                        control.writes_done.fetch_add(1, Ordering::Relaxed);
                        let mut h = lock(&hists);
                        for (pair, us) in samples {
                            let _ = h.entry(pair).or_insert_with(histogram).record(us.max(1));
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
            i += 1;
        }
        while tasks.join_next().await.is_some() {}
        ticker.abort();
        bar.finish_and_clear();
        let hists = std::mem::take(&mut *lock(&hists));
        Ok((hists, i, failed.load(Ordering::Relaxed)))
    }

    async fn catchup(
        &self,
        args: &BenchArgs,
        throughput: Option<&Throughput>,
        notes: &mut Vec<String>,
    ) -> Result<Option<Catchup>> {
        self.phase("catchup");
        let cut = self.cluster.names.len() - 1;
        let cut_api = self.cluster.apis[cut].clone();
        if let Err(why) = cluster::link_control(&self.client, &cut_api).await {
            let note = format!(
                "catchup phase skipped: it cuts links through the admin API, which is not available: {why}"
            );
            self.progress.line(format!("bench: {note}"));
            notes.push(note);
            return Ok(None);
        }
        let cut_name = self.cluster.names[cut].clone();
        self.progress.line(format!(
            "bench: catchup phase ({cut_name} cut off; {} writes at the others, {} concurrent)",
            args.backlog, args.backlog_concurrency
        ));
        // Start from a settled state, so the backlog is all the cut region misses.
        let apis = &self.cluster.apis;
        if let Err(v) = cluster::wait_applied_equal(&self.client, apis, DRAIN_WAIT).await? {
            bail!("the regions had not applied the same writes before the catchup phase: {v:?}");
        }
        let peers: Vec<String> = self.cluster.names[..cut].to_vec();
        for p in &peers {
            cluster::set_blocked(&self.client, &cut_api, p, true).await?;
        }
        let result = self.backlog_and_heal(args, cut, &peers).await;
        // Heal whatever happened, so a --target deployment is never left cut off.
        for p in &peers {
            let _ = cluster::set_blocked(&self.client, &cut_api, p, false).await;
        }
        let (backlog, (acked, backlog_secs), errors, missing, healed) = result?;
        let bar = self.progress.bar("catch-up", missing, "writes");
        let deadline = healed + CATCHUP_WAIT;
        let mut first_progress = None;
        let catchup = loop {
            let s = cluster::status(&self.client, &cut_api).await?;
            let have = s.applied_by_region();
            let lacking: u64 = backlog
                .iter()
                .map(|(o, seq)| seq.saturating_sub(have.get(o).copied().unwrap_or(0)))
                .sum();
            bar.set_position(missing.saturating_sub(lacking));
            if lacking < missing && first_progress.is_none() {
                first_progress = Some(healed.elapsed());
            }
            if lacking == 0 {
                break healed.elapsed();
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!(
                    "{cut_name} still lacked {lacking} of {missing} writes {} s after its links were healed; replication did not catch up — see its log",
                    CATCHUP_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        bar.finish_and_clear();
        let secs = catchup.as_secs_f64();
        let rate = per(missing as f64, secs);
        let first_progress = first_progress.unwrap_or(catchup).as_secs_f64();
        Ok(Some(Catchup {
            first_progress_ms: first_progress * 1000.0,
            apply_writes_per_sec: per(missing as f64, secs - first_progress),
            cut_region: cut_name,
            backlog_writes: acked,
            backlog_secs,
            backlog_errors: errors,
            missing_writes: missing,
            catchup_ms: secs * 1000.0,
            catchup_writes_per_sec: rate,
            ratio_to_steady_state: throughput
                .map(|t| per(rate, t.total_writes_per_sec))
                .filter(|r| *r > 0.0),
        }))
    }

    /// Writes the backlog at the regions other than `cut`, reads what they then have, and
    /// what `cut` has, and heals: (their applied maximum, (acked, secs), errors, missing
    /// writes at `cut`, heal time). The caller heals again on error.
    async fn backlog_and_heal(
        &self,
        args: &BenchArgs,
        cut: usize,
        peers: &[String],
    ) -> Result<(BTreeMap<String, u64>, (u64, f64), u64, u64, Instant)> {
        let targets: Vec<(String, String)> = self.cluster.targets()[..cut].to_vec();
        let load = Load {
            targets,
            clients: args.backlog_concurrency,
            rate: None,
            until: Until::Writes(args.backlog),
            workload: args.workload(None, workload::Mix::WriteOnly, 0.0),
            seed: 3,
        };
        let (results, secs) = self.drive("backlog", load, 0).await;
        let acked: u64 = results.iter().map(|r| r.writes.len()).sum();
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        if acked == 0 {
            let first = results.iter().find_map(|r| r.first_error.clone());
            bail!(
                "no backlog write succeeded ({errors} failed; the first: {})",
                first.as_deref().unwrap_or("none")
            );
        }
        let others = cluster::statuses(&self.client, &self.cluster.apis[..cut]).await?;
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for s in &others {
            for (o, seq) in s.applied_by_region() {
                let e = want.entry(o).or_default();
                *e = (*e).max(seq);
            }
        }
        let cut_api = &self.cluster.apis[cut];
        let have = cluster::status(&self.client, cut_api)
            .await?
            .applied_by_region();
        let missing = want
            .iter()
            .map(|(o, seq)| seq.saturating_sub(have.get(o).copied().unwrap_or(0)))
            .sum();
        self.phase("healed");
        for p in peers {
            cluster::set_blocked(&self.client, cut_api, p, false).await?;
        }
        Ok((want, (acked, secs), errors, missing, Instant::now()))
    }

    /// Equal applied vectors, then equal digests, at every region.
    async fn converge(&self) -> Result<Convergence> {
        let apis = &self.cluster.apis;
        let waited = cluster::wait_applied_equal(&self.client, apis, DRAIN_WAIT).await?;
        let digests = cluster::digests(&self.client, apis).await?;
        let names = &self.cluster.names;
        let digests: BTreeMap<String, String> = names
            .iter()
            .cloned()
            .zip(digests.into_iter().map(|d| d.digest))
            .collect();
        let equal = digests
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 1;
        Ok(Convergence {
            converged: waited.is_ok() && equal,
            digests,
            after_ms: waited.ok().map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

/// One region's figures of the throughput phase: its clients' results, its statuses before
/// and after, its process before and after, over `load_secs` of load and a `window` of load
/// and drain.
fn region_figures(
    name: &str,
    r: &workload::RegionLoad,
    (before, after): (&Status, &Status),
    cpu: Option<(ProcSample, ProcSample)>,
    (load_secs, window): (f64, f64),
) -> RegionThroughput {
    let delta = |c: Counter| growth(before, after, c);
    let fsyncs = delta(|c| c.fsyncs);
    let cpu_secs = cpu.map(|(b, a)| a.cpu_secs - b.cpu_secs);
    RegionThroughput {
        region: name.to_owned(),
        writes: r.writes.len(),
        reads: r.reads.len(),
        errors: r.errors,
        accepted_not_reached: r.accepted,
        writes_per_sec: per(r.writes.len() as f64, load_secs),
        conflicts: delta(|c| c.conflicts),
        fsyncs,
        fsyncs_per_sec: per(fsyncs as f64, window),
        stored_writes_per_fsync: per(
            (delta(|c| c.client_writes) + delta(|c| c.remote_applied)) as f64,
            fsyncs as f64,
        ),
        cpu_secs,
        cpu_pct: cpu_secs.map(|s| per(s * 100.0, window)),
        peak_rss_mib: cpu.map(|(_, a)| a.peak_rss_kib as f64 / 1024.0),
        write_latency: Quantiles::of(&r.writes),
        read_latency: Quantiles::of(&r.reads),
    }
}

/// Reads every process, or `None` when not all can be read (or there are none).
fn proc_samples(pids: Option<&[u32]>) -> Option<Vec<ProcSample>> {
    pids?.iter().map(|p| procstat::sample(*p)).collect()
}

/// Bytes sent between regions over replicated writes, from the first and last statuses.
fn wire(first: &[Status], last: &[Status]) -> Wire {
    let sum = |ss: &[Status], f: &dyn Fn(&Status) -> u64| ss.iter().map(f).sum::<u64>();
    let bytes_sent = sum(last, &cluster::bytes_sent) - sum(first, &cluster::bytes_sent);
    let applied = |s: &Status| s.counters.remote_applied;
    let replicated = sum(last, &applied) - sum(first, &applied);
    Wire {
        bytes_sent,
        replicated_writes: replicated,
        bytes_per_replicated_write: (replicated > 0).then(|| bytes_sent as f64 / replicated as f64),
    }
}

/// One lag probe: a write at `origin`, then a read with its session token at every other
/// region; each read's answer time after the write's ack is that pair's lag, in µs.
async fn probe(
    client: &reqwest::Client,
    targets: &[(String, String)],
    origin: usize,
    i: u64,
    value: Arc<[u8]>,
) -> Result<Vec<(String, u64)>> {
    let (origin_name, origin_api) = &targets[origin];
    let key = format!("lag-{origin_name}-{i}");
    let resp = client
        .put(format!("{origin_api}/v1/kv/default/{key}"))
        .body(value.to_vec())
        .timeout(PROBE_TIMEOUT)
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
    let reads: Vec<_> = targets
        .iter()
        .enumerate()
        .filter(|(d, _)| *d != origin)
        .map(|(_, (name, api))| {
            let pair = format!("{origin_name} -> {name}");
            let req = client
                .get(format!("{api}/v1/kv/default/{key}"))
                .header(SESSION_HEADER, token.clone())
                .timeout(PROBE_TIMEOUT);
            tokio::spawn(async move {
                let r = req.send().await?;
                let us = acked.elapsed().as_micros() as u64;
                if !r.status().is_success() {
                    bail!("the read of {pair} answered {}", r.status());
                }
                Ok::<_, anyhow::Error>((pair, us))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(reads.len());
    for r in reads {
        out.push(r.await??);
    }
    Ok(out)
}

/// One second of the wan phase from the statuses at its start and end (region order).
fn wan_sample(t_s: f64, secs: f64, before: &[Status], after: &[Status]) -> WanSample {
    let sum = |counter: Counter| -> u64 {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| growth(b, a, counter))
            .sum()
    };
    let region_writes_per_sec: Vec<f64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| per(growth(b, a, |c| c.client_writes) as f64, secs))
        .collect();
    let (mut lag_writes, mut lag_ms) = (BTreeMap::new(), BTreeMap::new());
    for (pair, cell) in after.iter().flat_map(own_rows) {
        lag_writes.insert(pair.clone(), cell.lag_writes);
        lag_ms.insert(pair, cell.lag_ms as f64);
    }
    WanSample {
        t_s,
        writes_per_sec: region_writes_per_sec.iter().sum(),
        region_writes_per_sec,
        relayed: sum(|c| c.writes_relayed),
        resyncs: sum(|c| c.resyncs),
        lag_writes,
        lag_ms,
    }
}

/// Picks one counter of a status.
type Counter = fn(&Counters) -> u64;

/// How much `counter` grew from `before` to `after` (0 if the region restarted meanwhile).
fn growth(before: &Status, after: &Status, counter: Counter) -> u64 {
    counter(&after.counters).saturating_sub(counter(&before.counters))
}

/// The cells of a region's lag matrix about its own writes ("origin -> destination", cell):
/// the ones it computed itself, on its own clock.
fn own_rows(s: &Status) -> impl Iterator<Item = (String, &MatrixEntry)> {
    s.matrix
        .iter()
        .filter(move |c| c.origin == s.region)
        .map(|c| (format!("{} -> {}", c.origin, c.destination), c))
}

/// Every [`SAMPLE_EVERY`]: client writes/s over all regions and each origin's lag matrix row.
async fn sample_loop(client: reqwest::Client, apis: Vec<String>, state: Arc<Sampler>) {
    let started = Instant::now();
    let mut prev: Option<(Instant, u64)> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !state.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Ok(Ok(statuses)) =
            tokio::time::timeout(SAMPLE_EVERY * 4, cluster::statuses(&client, &apis)).await
        else {
            continue;
        };
        let now = Instant::now();
        let writes: u64 = statuses.iter().map(|s| s.counters.client_writes).sum();
        let rate = prev.map_or(0.0, |(t, w)| {
            per(writes.saturating_sub(w) as f64, (now - t).as_secs_f64())
        });
        prev = Some((now, writes));
        let lag_ms = statuses
            .iter()
            .flat_map(own_rows)
            .map(|(pair, cell)| (pair, cell.lag_ms as f64))
            .collect();
        let phase = lock(&state.phase).clone();
        lock(&state.samples).push(Sample {
            t_s: (now - started).as_secs_f64(),
            phase,
            writes_per_sec: rate,
            lag_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conflict::ReplicaId;
    use leader::status::{Alarms, Peer};

    /// A status with these counters, lag matrix and peers, the rest empty.
    fn doc(region: &str, counters: Counters, matrix: Vec<MatrixEntry>, peers: Vec<Peer>) -> Status {
        Status {
            alarms: Alarms::default(),
            applied: Vec::new(),
            bootstrap: None,
            counters,
            held_back: BTreeMap::new(),
            hlc: String::new(),
            keys: 0,
            log: leader::status::Log {
                bytes: 0,
                retention_bytes: 0,
                segments: 0,
                start: Vec::new(),
            },
            matrix,
            peers,
            region: region.to_owned(),
            replica: ReplicaId::from_u128(1),
        }
    }

    fn cell(origin: &str, destination: &str, lag_writes: u64, lag_ms: u64) -> MatrixEntry {
        MatrixEntry {
            destination: destination.to_owned(),
            lag_ms,
            lag_writes,
            origin: origin.to_owned(),
            replicating: true,
            row_age_ms: 0,
        }
    }

    #[test]
    fn region_figures_come_from_counter_deltas_and_proc_samples() {
        let status = |fsyncs: u64, client_writes: u64, remote_applied: u64, conflicts: u64| {
            let counters = Counters {
                fsyncs,
                client_writes,
                remote_applied,
                conflicts,
                ..Counters::default()
            };
            doc("r0", counters, Vec::new(), Vec::new())
        };
        let (before, after) = (status(5, 10, 20, 1), status(15, 110, 120, 4));
        let mut r = workload::RegionLoad::new();
        for us in [1000, 2000, 3000, 4000] {
            r.writes.record(us).unwrap();
        }
        let cpu = |secs: f64, kib: u64| ProcSample {
            cpu_secs: secs,
            peak_rss_kib: kib,
        };
        let f = region_figures(
            "r0",
            &r,
            (&before, &after),
            Some((cpu(1.0, 1024), cpu(2.0, 2048))),
            (2.0, 4.0),
        );
        assert_eq!(f.writes, 4);
        assert_eq!(f.writes_per_sec, 2.0);
        assert_eq!(f.fsyncs, 10);
        assert_eq!(f.fsyncs_per_sec, 2.5);
        assert_eq!(f.stored_writes_per_fsync, 20.0);
        assert_eq!(f.conflicts, 3);
        assert_eq!(f.cpu_secs, Some(1.0));
        assert_eq!(f.cpu_pct, Some(25.0));
        assert_eq!(f.peak_rss_mib, Some(2.0));
        let none = region_figures("r1", &r, (&before, &after), None, (2.0, 4.0));
        assert_eq!(none.cpu_pct, None);
        assert_eq!(none.peak_rss_mib, None);
    }

    #[test]
    fn a_wan_sample_is_the_counter_deltas_and_the_origins_own_matrix_cells() {
        let status = |region: &str, client_writes: u64, writes_relayed: u64, resyncs: u64| {
            let counters = Counters {
                client_writes,
                writes_relayed,
                resyncs,
                ..Counters::default()
            };
            let matrix = vec![
                cell(region, "x", client_writes / 10, 25),
                cell("x", region, 999, 999),
            ];
            doc(region, counters, matrix, Vec::new())
        };
        let before = [status("a", 100, 5, 1), status("b", 200, 0, 0)];
        let after = [status("a", 1100, 5, 1), status("b", 2200, 10, 2)];
        let s = wan_sample(3.0, 2.0, &before, &after);
        assert_eq!(s.t_s, 3.0);
        assert_eq!(s.region_writes_per_sec, vec![500.0, 1000.0]);
        assert_eq!(s.writes_per_sec, 1500.0);
        assert_eq!((s.relayed, s.resyncs), (10, 2));
        assert_eq!(
            s.lag_writes,
            BTreeMap::from([("a -> x".to_owned(), 110), ("b -> x".to_owned(), 220)])
        );
        assert_eq!(s.lag_ms["a -> x"], 25.0);
        assert_eq!(s.lag_ms.len(), 2);
    }

    #[test]
    fn wire_divides_bytes_sent_by_replicated_writes() {
        let status = |sent: u64, remote_applied: u64| {
            let peer = Peer {
                bytes_recv: None,
                bytes_sent: Some(sent),
                clock_offset_ms: None,
                connections: None,
                lag_ms: 0,
                lag_writes: 0,
                link: None,
                log_behind_bytes: 0,
                log_note: None,
                needs_snapshot: false,
                quic: None,
                region: "x".to_owned(),
                replica: None,
                replicating: true,
                rtt_ms: None,
                unacked_bytes: 0,
            };
            let counters = Counters {
                remote_applied,
                ..Counters::default()
            };
            doc("r0", counters, Vec::new(), vec![peer.clone(), peer])
        };
        let w = wire(&[status(100, 5)], &[status(1100, 15)]);
        assert_eq!(w.bytes_sent, 2000);
        assert_eq!(w.replicated_writes, 10);
        assert_eq!(w.bytes_per_replicated_write, Some(200.0));
        assert_eq!(
            wire(&[status(1, 1)], &[status(1, 1)]).bytes_per_replicated_write,
            None
        );
    }
}
