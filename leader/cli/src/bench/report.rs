//! The results of a run: what each phase measured, the summary other tools read
//! (`bench/compare.sh`), the table printed at the end and the JSON written with `--out`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency quantiles of a histogram of microseconds, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Quantiles {
    /// Samples.
    pub(crate) count: u64,
    /// Median, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile, ms.
    pub(crate) p999_ms: f64,
    /// Largest, ms.
    pub(crate) max_ms: f64,
}

impl Quantiles {
    /// The quantiles of `h` (all zero when it is empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles {
                count: 0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn triple(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2}",
            self.p50_ms, self.p99_ms, self.p999_ms
        )
    }
}

/// One region in the throughput phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegionThroughput {
    /// The region.
    pub(crate) region: String,
    /// Writes its clients had acknowledged.
    pub(crate) writes: u64,
    /// Reads its clients had answered.
    pub(crate) reads: u64,
    /// Failed requests.
    pub(crate) errors: u64,
    /// Writes answered 202: durable here, `--durability` not reached within 5 s.
    pub(crate) accepted_not_reached: u64,
    /// Acknowledged writes per second of load.
    pub(crate) writes_per_sec: f64,
    /// Concurrent writes that met at this region (its `conflicts` counter): the effect of
    /// `--conflict-share`.
    pub(crate) conflicts: u64,
    /// Storage commits (each one fsync) over load and drain.
    pub(crate) fsyncs: u64,
    /// `fsyncs` per second of load and drain.
    pub(crate) fsyncs_per_sec: f64,
    /// Writes it stored (its clients' and the other regions') per fsync: the group commit.
    pub(crate) stored_writes_per_fsync: f64,
    /// CPU seconds over load and drain (started regions only).
    pub(crate) cpu_secs: Option<f64>,
    /// `cpu_secs` as a share of one core over load and drain, %.
    pub(crate) cpu_pct: Option<f64>,
    /// Peak resident set of the process since it started, MiB.
    pub(crate) peak_rss_mib: Option<f64>,
    /// Client write latency.
    pub(crate) write_latency: Quantiles,
    /// Client read latency (mixes with reads).
    pub(crate) read_latency: Quantiles,
}

/// Phase 1: closed-loop load at every region at once.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    /// Per region.
    pub(crate) regions: Vec<RegionThroughput>,
    /// Seconds of load.
    pub(crate) load_secs: f64,
    /// Seconds from the end of the load until every region had applied every write.
    pub(crate) drain_secs: f64,
    /// Acknowledged writes over all regions.
    pub(crate) writes: u64,
    /// `writes / load_secs`.
    pub(crate) total_writes_per_sec: f64,
    /// `writes / (load_secs + drain_secs)`: the rate at which writes were acknowledged *and*
    /// replicated everywhere (as for PostgreSQL logical replication: rows executed ÷ time
    /// until the subscriber caught up).
    pub(crate) sustained_writes_per_sec: f64,
    /// Failed requests.
    pub(crate) errors: u64,
    /// The first failure, if any.
    pub(crate) first_error: Option<String>,
}

/// Phase 2, one durability level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyLevel {
    /// `local`, `one`, `quorum` or `all`.
    pub(crate) durability: String,
    /// Open-loop rate, writes/s.
    pub(crate) rate_per_sec: f64,
    /// Client latency from the intended send time.
    pub(crate) latency: Quantiles,
    /// Writes answered 202 (the level was not reached within the timeout).
    pub(crate) accepted_not_reached: u64,
    /// Failed requests.
    pub(crate) errors: u64,
}

/// The reads phase: client read latency at one read level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReadLevelLatency {
    /// `one`, `quorum` or `all`.
    pub(crate) level: String,
    /// Open-loop rate, reads/s.
    pub(crate) rate_per_sec: f64,
    /// Client latency from the intended send time.
    pub(crate) latency: Quantiles,
    /// Failed requests (a `503 quorum_unavailable` among them).
    pub(crate) errors: u64,
}

/// Phase 3: replication lag per ordered pair.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Lag {
    /// Write rate over all regions (probes and plain writes), writes/s.
    pub(crate) rate_per_sec: f64,
    /// Of those, probes/s (over all origins).
    pub(crate) probe_rate_per_sec: f64,
    /// Plain writes acknowledged beside the probes.
    pub(crate) background_writes: u64,
    /// Plain writes that failed.
    pub(crate) background_errors: u64,
    /// `"auto"` (half the sustained rate of phase 1) or `"flag"`.
    pub(crate) rate_source: String,
    /// Seconds of probing.
    pub(crate) secs: f64,
    /// Probes sent.
    pub(crate) probes: u64,
    /// Probes that failed (write or read).
    pub(crate) failed_probes: u64,
    /// `"origin -> destination"` → lag from the origin's ack to the destination's answer.
    pub(crate) pairs: BTreeMap<String, Quantiles>,
    /// Every pair together.
    pub(crate) all: Quantiles,
    /// The injected one-way latency of every link, ms.
    pub(crate) injected_one_way_ms: u64,
    /// `all.p99_ms - injected_one_way_ms`: the target is at most 5 ms at half the
    /// sustainable rate.
    pub(crate) p99_excess_ms: f64,
}

/// Phase 4: one region cut off, a backlog written elsewhere, then healed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Catchup {
    /// The region that was cut off.
    pub(crate) cut_region: String,
    /// Writes acknowledged at the other regions while it was cut off.
    pub(crate) backlog_writes: u64,
    /// Seconds it took to write them.
    pub(crate) backlog_secs: f64,
    /// Failed backlog writes.
    pub(crate) backlog_errors: u64,
    /// Writes the cut region lacked at the heal (from the applied vectors).
    pub(crate) missing_writes: u64,
    /// From the heal until its applied vector equalled the others', ms.
    pub(crate) catchup_ms: f64,
    /// `missing_writes / catchup`, writes/s.
    pub(crate) catchup_writes_per_sec: f64,
    /// From the heal until the cut region had applied its first missing write, ms: the
    /// links' reconnection (a cut longer than the QUIC idle timeout closes them, and the
    /// redial waits out its backoff) and the first batch.
    pub(crate) first_progress_ms: f64,
    /// `missing_writes` over the time from the first progress to the end, writes/s: the
    /// apply rate once data flows.
    pub(crate) apply_writes_per_sec: f64,
    /// `catchup_writes_per_sec` ÷ the total write rate of phase 1.
    pub(crate) ratio_to_steady_state: Option<f64>,
}

/// Phase 5, one second of it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WanSample {
    /// Seconds since the phase began (end of this second).
    pub(crate) t_s: f64,
    /// Client writes/s accepted over all regions during this second.
    pub(crate) writes_per_sec: f64,
    /// The same, per region (region order).
    pub(crate) region_writes_per_sec: Vec<f64>,
    /// Writes relayed during this second, over all regions.
    pub(crate) relayed: u64,
    /// `Resync` requests sent during this second, over all regions.
    pub(crate) resyncs: u64,
    /// `"origin -> destination"` → writes of the origin the destination lacks (the origin's
    /// lag matrix row).
    pub(crate) lag_writes: BTreeMap<String, u64>,
    /// `"origin -> destination"` → age of the oldest such write, ms.
    pub(crate) lag_ms: BTreeMap<String, f64>,
}

/// Phase 5: closed-loop load for minutes over links with latency and jitter.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Wan {
    /// Seconds of load.
    pub(crate) secs: f64,
    /// The injected one-way latency and jitter of every link (started regions), ms.
    pub(crate) injected_one_way_ms: u64,
    /// See `injected_one_way_ms`.
    pub(crate) jitter_ms: u64,
    /// Concurrent clients over all regions.
    pub(crate) clients: usize,
    /// Client writes acknowledged.
    pub(crate) writes: u64,
    /// `writes / secs`.
    pub(crate) writes_per_sec: f64,
    /// Per region, writes/s over the phase (region order).
    pub(crate) region_writes_per_sec: Vec<(String, f64)>,
    /// Mean writes/s over the first and the last third of the phase.
    pub(crate) first_third_writes_per_sec: f64,
    /// See `first_third_writes_per_sec`.
    pub(crate) last_third_writes_per_sec: f64,
    /// Least-squares slope of writes/s over the samples, in % of the mean per minute:
    /// negative is a downward trend.
    pub(crate) trend_pct_per_min: f64,
    /// Writes relayed by all regions during the phase.
    pub(crate) relayed: u64,
    /// `relayed / writes`; with every link up it should be far below 0.01.
    pub(crate) relayed_per_client_write: f64,
    /// `Resync` requests during the phase.
    pub(crate) resyncs: u64,
    /// Lag of every pair, sampled every second (origin's view: age of its oldest write the
    /// destination lacks), quantiles over all samples.
    pub(crate) lag: Quantiles,
    /// Largest lag in writes of any pair in any sample.
    pub(crate) lag_writes_max: u64,
    /// From the end of the load until every region had applied everything, s.
    pub(crate) drain_secs: f64,
    /// Failed requests.
    pub(crate) errors: u64,
    /// The first failure, if any.
    pub(crate) first_error: Option<String>,
    /// Every second of the phase.
    pub(crate) samples: Vec<WanSample>,
}

impl Wan {
    /// The throughput figures of `samples`: (first third, last third, trend in % of the mean
    /// per minute). Zero when there are fewer than three samples.
    pub(crate) fn trend(samples: &[WanSample]) -> (f64, f64, f64) {
        let n = samples.len();
        if n < 3 {
            return (0.0, 0.0, 0.0);
        }
        let mean = |s: &[WanSample]| per(s.iter().map(|x| x.writes_per_sec).sum(), s.len() as f64);
        let third = n / 3;
        let (first, last) = (mean(&samples[..third]), mean(&samples[n - third..]));
        let (mx, my) = (
            samples.iter().map(|s| s.t_s).sum::<f64>() / n as f64,
            mean(samples),
        );
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for s in samples {
            sxy += (s.t_s - mx) * (s.writes_per_sec - my);
            sxx += (s.t_s - mx) * (s.t_s - mx);
        }
        let slope_per_sec = per(sxy, sxx);
        (first, last, per(slope_per_sec * 60.0 * 100.0, my))
    }
}

/// Bytes on the wire per replicated write, over the whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Wire {
    /// Frame bytes sent between regions (every region, every peer).
    pub(crate) bytes_sent: u64,
    /// Writes applied from other regions (every region).
    pub(crate) replicated_writes: u64,
    /// `bytes_sent / replicated_writes`, when any were.
    pub(crate) bytes_per_replicated_write: Option<f64>,
}

/// The final convergence check.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Convergence {
    /// Equal applied vectors and equal digests at every region.
    pub(crate) converged: bool,
    /// Region → state digest.
    pub(crate) digests: BTreeMap<String, String>,
    /// From the end of the last phase until the applied vectors were equal, ms.
    pub(crate) after_ms: Option<f64>,
}

/// One sample of the time series (every 250 ms, all phases).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the first phase began.
    pub(crate) t_s: f64,
    /// The phase running.
    pub(crate) phase: String,
    /// Client writes accepted per second at all regions since the previous sample.
    pub(crate) writes_per_sec: f64,
    /// `"origin -> destination"` → lag from the lag matrix of the origin's status, ms.
    pub(crate) lag_ms: BTreeMap<String, f64>,
}

/// The object `bench/compare.sh` reads. Rates and lags are 0 when their phase did not run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Summary {
    /// Regions.
    pub(crate) regions: usize,
    /// Phase 1's sustained rate.
    pub(crate) sustained_writes_per_sec: f64,
    /// Phase 1's acknowledged rate.
    pub(crate) total_writes_per_sec: f64,
    /// Phase 3, every pair together.
    pub(crate) lag_p50_ms: f64,
    /// Phase 3, every pair together.
    pub(crate) lag_p99_ms: f64,
    /// Phase 3, every pair together.
    pub(crate) lag_max_ms: f64,
    /// Phase 4.
    pub(crate) catchup_ms: Option<f64>,
    /// Phase 4.
    pub(crate) catchup_writes_per_sec: Option<f64>,
    /// Phase 5: client writes/s over the phase.
    pub(crate) wan_writes_per_sec: Option<f64>,
    /// Phase 5: writes relayed per client write.
    pub(crate) wan_relayed_per_client_write: Option<f64>,
    /// Phase 5: throughput trend, % of the mean per minute.
    pub(crate) wan_trend_pct_per_min: Option<f64>,
    /// Phase 5: lag p99 over the samples of every pair, ms.
    pub(crate) wan_lag_p99_ms: Option<f64>,
    /// Over the whole run.
    pub(crate) bytes_per_replicated_write: Option<f64>,
    /// The final check.
    pub(crate) converged: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// See [`Summary`].
    pub(crate) summary: Summary,
    /// CPUs and model of this machine.
    pub(crate) machine: serde_json::Value,
    /// The options of the run.
    pub(crate) args: serde_json::Value,
    /// Phase 1.
    pub(crate) throughput: Option<Throughput>,
    /// Phase 2.
    pub(crate) latency: Option<Vec<LatencyLevel>>,
    /// Phase 3.
    pub(crate) lag: Option<Lag>,
    /// Phase 4.
    pub(crate) catchup: Option<Catchup>,
    /// Phase 5.
    pub(crate) wan: Option<Wan>,
    /// Read latency per read level.
    pub(crate) reads: Option<Vec<ReadLevelLatency>>,
    /// Bytes per replicated write.
    pub(crate) wire: Option<Wire>,
    /// The final check.
    pub(crate) convergence: Convergence,
    /// What was skipped and why.
    pub(crate) notes: Vec<String>,
    /// The 250 ms samples.
    pub(crate) timeseries: Vec<Sample>,
}

impl Summary {
    /// The summary of the phases that ran.
    pub(crate) fn of(
        regions: usize,
        throughput: Option<&Throughput>,
        lag: Option<&Lag>,
        catchup: Option<&Catchup>,
        wan: Option<&Wan>,
        wire: Option<&Wire>,
        converged: bool,
    ) -> Summary {
        Summary {
            regions,
            sustained_writes_per_sec: throughput.map_or(0.0, |t| t.sustained_writes_per_sec),
            total_writes_per_sec: throughput.map_or(0.0, |t| t.total_writes_per_sec),
            lag_p50_ms: lag.map_or(0.0, |l| l.all.p50_ms),
            lag_p99_ms: lag.map_or(0.0, |l| l.all.p99_ms),
            lag_max_ms: lag.map_or(0.0, |l| l.all.max_ms),
            catchup_ms: catchup.map(|c| c.catchup_ms),
            catchup_writes_per_sec: catchup.map(|c| c.catchup_writes_per_sec),
            wan_writes_per_sec: wan.map(|w| w.writes_per_sec),
            wan_relayed_per_client_write: wan.map(|w| w.relayed_per_client_write),
            wan_trend_pct_per_min: wan.map(|w| w.trend_pct_per_min),
            wan_lag_p99_ms: wan.map(|w| w.lag.p99_ms),
            bytes_per_replicated_write: wire.and_then(|w| w.bytes_per_replicated_write),
            converged,
        }
    }
}

/// `x / y`, or 0 when `y` is 0.
pub(crate) fn per(x: f64, y: f64) -> f64 {
    if y > 0.0 { x / y } else { 0.0 }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The table printed at the end of a run.
    pub(crate) fn table(&self) -> String {
        let mut t = crate::cli::table(["figure", "value"]);
        let mut row = |k: String, v: String| {
            t.add_row([k, v]);
        };
        if let Some(tp) = &self.throughput {
            for r in &tp.regions {
                row(
                    format!("{} writes/s · fsyncs/s · stored writes/fsync", r.region),
                    format!(
                        "{:.0} · {:.0} · {:.1}",
                        r.writes_per_sec, r.fsyncs_per_sec, r.stored_writes_per_fsync
                    ),
                );
                row(
                    format!("{} CPU s (% of a core) · peak RSS MiB", r.region),
                    format!(
                        "{} ({}) · {}",
                        opt(r.cpu_secs, 1),
                        opt(r.cpu_pct, 0),
                        opt(r.peak_rss_mib, 0)
                    ),
                );
                row(
                    format!("{} write latency p50 / p99 / p999 ms", r.region),
                    r.write_latency.triple(),
                );
            }
            if tp
                .regions
                .iter()
                .any(|r| r.conflicts > 0 || r.accepted_not_reached > 0)
            {
                let each: Vec<String> = tp
                    .regions
                    .iter()
                    .map(|r| format!("{} {} · {}", r.region, r.conflicts, r.accepted_not_reached))
                    .collect();
                row(
                    "conflicts met · writes answered 202, per region".into(),
                    each.join(" | "),
                );
            }
            row(
                "total writes/s (acknowledged)".into(),
                format!("{:.0}", tp.total_writes_per_sec),
            );
            row(
                "sustained writes/s (until replicated everywhere)".into(),
                format!(
                    "{:.0} (load {:.1} s + drain {:.2} s)",
                    tp.sustained_writes_per_sec, tp.load_secs, tp.drain_secs
                ),
            );
            row("throughput errors".into(), tp.errors.to_string());
        }
        for l in self.latency.iter().flatten() {
            row(
                format!(
                    "latency {} p50 / p99 / p999 ms @ {:.0}/s",
                    l.durability, l.rate_per_sec
                ),
                l.latency.triple(),
            );
        }
        for l in self.reads.iter().flatten() {
            row(
                format!(
                    "read={} p50 / p99 / p999 ms @ {:.0}/s ({} errors)",
                    l.level, l.rate_per_sec, l.errors
                ),
                l.latency.triple(),
            );
        }
        if let Some(lag) = &self.lag {
            for (pair, q) in &lag.pairs {
                row(
                    format!("lag {pair} p50 / p99 / max ms"),
                    format!("{:.2} / {:.2} / {:.2}", q.p50_ms, q.p99_ms, q.max_ms),
                );
            }
            row(
                format!(
                    "lag all pairs @ {:.0} writes/s ({}), {:.0} probes/s",
                    lag.rate_per_sec, lag.rate_source, lag.probe_rate_per_sec
                ),
                format!(
                    "{:.2} / {:.2} / {:.2} (p99 − injected {} ms = {:.2} ms)",
                    lag.all.p50_ms,
                    lag.all.p99_ms,
                    lag.all.max_ms,
                    lag.injected_one_way_ms,
                    lag.p99_excess_ms
                ),
            );
        }
        if let Some(c) = &self.catchup {
            row(
                format!("backlog at others while {} cut off", c.cut_region),
                format!(
                    "{} writes in {:.1} s ({} errors)",
                    c.backlog_writes, c.backlog_secs, c.backlog_errors
                ),
            );
            row(
                format!("{} catch-up after heal", c.cut_region),
                format!(
                    "{:.0} ms · {:.0} writes/s · {}× steady state",
                    c.catchup_ms,
                    c.catchup_writes_per_sec,
                    opt(c.ratio_to_steady_state, 2)
                ),
            );
            row(
                "  first missing write applied after · rate from then".into(),
                format!(
                    "{:.0} ms · {:.0} writes/s",
                    c.first_progress_ms, c.apply_writes_per_sec
                ),
            );
        }
        if let Some(w) = &self.wan {
            wan_rows(w, &mut row);
        }
        if let Some(w) = &self.wire {
            row(
                "bytes on the wire per replicated write".into(),
                opt(w.bytes_per_replicated_write, 1),
            );
        }
        row(
            "converged (equal applied vectors and digests)".into(),
            format!(
                "{}{}",
                self.convergence.converged,
                self.convergence
                    .after_ms
                    .map_or(String::new(), |ms| format!(" after {ms:.0} ms"))
            ),
        );
        t.to_string()
    }
}

/// The rows of the wan phase: totals, throughput over time (ten spans), lag, relays.
fn wan_rows(w: &Wan, row: &mut impl FnMut(String, String)) {
    row(
        format!(
            "wan: {} s, {} clients, links {} ± {} ms",
            w.secs.round(),
            w.clients,
            w.injected_one_way_ms,
            w.jitter_ms
        ),
        format!("{} writes · {:.0} writes/s", w.writes, w.writes_per_sec),
    );
    let each: Vec<String> = w
        .region_writes_per_sec
        .iter()
        .map(|(r, x)| format!("{r} {x:.0}"))
        .collect();
    row("wan writes/s per region".into(), each.join(" · "));
    let spans = w.samples.len().min(10);
    if spans > 0 {
        let len = w.samples.len().div_ceil(spans);
        let over_time: Vec<String> = w
            .samples
            .chunks(len)
            .map(|c| {
                format!(
                    "{:.0}",
                    per(c.iter().map(|s| s.writes_per_sec).sum(), c.len() as f64)
                )
            })
            .collect();
        row(
            format!("wan writes/s over time ({len} s spans)"),
            over_time.join(" "),
        );
    }
    row(
        "wan writes/s first third · last third · trend".into(),
        format!(
            "{:.0} · {:.0} · {:+.1} %/min",
            w.first_third_writes_per_sec, w.last_third_writes_per_sec, w.trend_pct_per_min
        ),
    );
    row(
        "wan lag (sampled, all pairs) p50 / p99 / max ms · max writes".into(),
        format!(
            "{:.0} / {:.0} / {:.0} · {}",
            w.lag.p50_ms, w.lag.p99_ms, w.lag.max_ms, w.lag_writes_max
        ),
    );
    row(
        "wan writes relayed · per client write · resyncs".into(),
        format!(
            "{} · {:.4} · {}",
            w.relayed, w.relayed_per_client_write, w.resyncs
        ),
    );
    row(
        "wan drain after the load".into(),
        format!("{:.2} s", w.drain_secs),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::histogram;

    #[test]
    fn quantiles_of_a_known_histogram() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let q = Quantiles::of(&h);
        assert_eq!(q.count, 1000);
        assert!((q.p50_ms - 5.0).abs() < 0.01, "{q:?}");
        assert!((q.p99_ms - 9.9).abs() < 0.01, "{q:?}");
        assert!((q.p999_ms - 9.99).abs() < 0.01, "{q:?}");
        assert!((q.max_ms - 10.0).abs() < 0.01, "{q:?}");
        assert_eq!(Quantiles::of(&histogram()).count, 0);
        assert_eq!(Quantiles::of(&histogram()).p99_ms, 0.0);
    }

    fn quantiles(p50: f64, p99: f64, max: f64) -> Quantiles {
        Quantiles {
            count: 10,
            p50_ms: p50,
            p99_ms: p99,
            p999_ms: max,
            max_ms: max,
        }
    }

    #[test]
    fn summary_takes_each_figure_from_its_phase() {
        let tp = Throughput {
            regions: vec![],
            load_secs: 10.0,
            drain_secs: 0.5,
            writes: 21_000,
            total_writes_per_sec: 2_100.0,
            sustained_writes_per_sec: 2_000.0,
            errors: 0,
            first_error: None,
        };
        let lag = Lag {
            rate_per_sec: 1000.0,
            probe_rate_per_sec: 200.0,
            background_writes: 4000,
            background_errors: 0,
            rate_source: "auto".into(),
            secs: 5.0,
            probes: 5000,
            failed_probes: 0,
            pairs: BTreeMap::new(),
            all: quantiles(1.0, 4.0, 9.0),
            injected_one_way_ms: 0,
            p99_excess_ms: 4.0,
        };
        let wire = Wire {
            bytes_sent: 1000,
            replicated_writes: 10,
            bytes_per_replicated_write: Some(100.0),
        };
        let s = Summary::of(3, Some(&tp), Some(&lag), None, None, Some(&wire), true);
        assert_eq!(
            s,
            Summary {
                regions: 3,
                sustained_writes_per_sec: 2_000.0,
                total_writes_per_sec: 2_100.0,
                lag_p50_ms: 1.0,
                lag_p99_ms: 4.0,
                lag_max_ms: 9.0,
                catchup_ms: None,
                catchup_writes_per_sec: None,
                wan_writes_per_sec: None,
                wan_relayed_per_client_write: None,
                wan_trend_pct_per_min: None,
                wan_lag_p99_ms: None,
                bytes_per_replicated_write: Some(100.0),
                converged: true,
            }
        );
        let json = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 14, "{keys:?}");
        assert!(json["catchup_ms"].is_null());
        let none = Summary::of(2, None, None, None, None, None, false);
        assert_eq!(none.total_writes_per_sec, 0.0);
        assert_eq!(none.lag_p99_ms, 0.0);
        assert_eq!(per(10.0, 0.0), 0.0);
        assert_eq!(per(10.0, 4.0), 2.5);
    }

    fn wan_sample(t_s: f64, writes_per_sec: f64) -> WanSample {
        WanSample {
            t_s,
            writes_per_sec,
            region_writes_per_sec: vec![writes_per_sec],
            relayed: 0,
            resyncs: 0,
            lag_writes: BTreeMap::new(),
            lag_ms: BTreeMap::new(),
        }
    }

    #[test]
    fn wan_trend_is_the_slope_in_percent_of_the_mean_per_minute() {
        // Flat: no trend, both thirds equal.
        let flat: Vec<WanSample> = (1..=6).map(|t| wan_sample(t as f64, 100.0)).collect();
        assert_eq!(Wan::trend(&flat), (100.0, 100.0, 0.0));
        // Falling by 1 write/s every second around a mean of 100: -60 %/min.
        let falling: Vec<WanSample> = (0..=10)
            .map(|t| wan_sample(t as f64, 105.0 - t as f64))
            .collect();
        let (first, last, trend) = Wan::trend(&falling);
        assert!((first - 104.0).abs() < 1e-9, "{first}");
        assert!((last - 96.0).abs() < 1e-9, "{last}");
        assert!((trend + 60.0).abs() < 1e-9, "{trend}");
        assert_eq!(Wan::trend(&falling[..2]), (0.0, 0.0, 0.0));
    }
}
