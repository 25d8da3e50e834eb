//! What the load generator sends: key choosers (uniform, Zipfian), operation mixes, the
//! open-loop schedule, and the client loop that drives them against the regions' HTTP API.
//!
//! # Closed and open loop
//!
//! A **closed loop** keeps `concurrency` requests in flight: each client sends its next
//! request when the previous one answered. It measures the most the system can take, but its
//! latencies hide stalls: while the server stalls, the clients send nothing, so the stall
//! shows up as one slow request instead of the many that a real client population would have
//! sent meanwhile (coordinated omission).
//!
//! An **open loop** (`--rate R`) sends on a fixed schedule: request `i` is due at
//! `start + i / R`, whatever happened to the requests before it. Its latency is measured from
//! that *intended* send time, not from when a client got round to sending it, so a stall
//! counts against every request that should have been sent during it: the figures are free of
//! coordinated omission. The clients are only the means to send; if all are busy, the next
//! request leaves late and its lateness is part of its latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conflict::rng::SplitMix64 as Rng;
use hdrhistogram::Histogram;
use leader::api::{DURABILITY_HEADER, TIMEOUT_HEADER};

/// The shared keys that every region writes when a write is drawn as conflicting.
pub(crate) const SHARED_KEYS: u64 = 16;

/// Latencies are recorded in microseconds; one hour is beyond any request's timeout.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A new latency histogram (microseconds, 3 significant figures).
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant figures is a valid histogram configuration.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// The Zipfian distribution over `0..n` of YCSB (Gray et al., "Quickly generating
/// billion-record synthetic databases"): rank `k` is drawn with probability
/// `(1 / (k+1)^theta) / zeta(n, theta)`, so rank 0 is the hottest key.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// YCSB's skew.
    pub(crate) const YCSB_THETA: f64 = 0.99;

    /// The distribution over `0..n` (`n >= 1`, `0 < theta < 1`).
    pub(crate) fn new(n: u64, theta: f64) -> Self {
        let n = n.max(1);
        let zetan = Self::zeta(n, theta);
        let zeta2 = Self::zeta(2.min(n), theta);
        let eta = if n > 1 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        } else {
            0.0
        };
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// `sum_{i=1..n} 1 / i^theta`.
    pub(crate) fn zeta(n: u64, theta: f64) -> f64 {
        (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
    }

    /// The analytic probability of rank `k`.
    #[cfg(test)]
    pub(crate) fn probability(&self, k: u64) -> f64 {
        1.0 / ((k + 1) as f64).powf(self.theta) / self.zetan
    }

    /// The rank for a uniform draw `u` from `[0, 1)`.
    pub(crate) fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let k = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        k.min(self.n - 1)
    }
}

/// How keys are drawn from `0..keys`.
#[derive(Debug, Clone)]
pub(crate) enum KeyChooser {
    /// Every key equally likely.
    Uniform(u64),
    /// YCSB Zipfian (theta 0.99).
    Zipfian(Zipf),
}

impl KeyChooser {
    /// The next key index.
    pub(crate) fn next(&self, rng: &mut Rng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.next_u64() % n.max(&1),
            KeyChooser::Zipfian(z) => z.sample(rng.unit()),
        }
    }
}

/// The operation mix (`--mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mix {
    /// Writes only.
    WriteOnly,
    /// YCSB workload A: 50% reads, 50% updates.
    YcsbA,
    /// YCSB workload B: 95% reads, 5% updates.
    YcsbB,
    /// Reads only (the reads phase).
    ReadOnly,
}

/// One client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A GET.
    Read,
    /// A PUT.
    Write,
}

impl Mix {
    /// The share of reads.
    pub(crate) fn read_share(self) -> f64 {
        match self {
            Mix::WriteOnly => 0.0,
            Mix::YcsbA => 0.5,
            Mix::YcsbB => 0.95,
            Mix::ReadOnly => 1.0,
        }
    }

    /// The operation for a uniform draw `u` from `[0, 1)`.
    pub(crate) fn pick(self, u: f64) -> Op {
        if u < self.read_share() {
            Op::Read
        } else {
            Op::Write
        }
    }
}

/// The fixed send times of an open loop: request `i` is due at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    /// `rate` requests per second from `start` (`rate > 0`).
    pub(crate) fn new(start: Instant, rate: f64) -> Self {
        Schedule {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
        }
    }

    /// When request `i` is due.
    pub(crate) fn intended(&self, i: u64) -> Instant {
        self.start + self.interval.mul_f64(i as f64)
    }
}

/// Where one client sends, and what.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Key space per region.
    pub(crate) keys: KeyChooser,
    /// Read/write mix.
    pub(crate) mix: Mix,
    /// Share of writes that go to the [`SHARED_KEYS`] every region writes.
    pub(crate) conflict_share: f64,
    /// The value written.
    pub(crate) value: Arc<[u8]>,
    /// `x-meridian-durability` of writes, if any.
    pub(crate) durability: Option<String>,
    /// `?read=` of reads (`one`, `quorum`, `all`), if any.
    pub(crate) read_level: Option<String>,
}

/// How long a load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// Until the stop flag is raised (closed loop with a duration).
    Stopped,
    /// Until this many writes were sent in total.
    Writes(u64),
}

/// A load to run against some regions.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// (region name, API base URL) of each region that takes clients.
    pub(crate) targets: Vec<(String, String)>,
    /// Clients in total, spread round robin over `targets`.
    pub(crate) clients: usize,
    /// Open-loop rate in requests/s over all clients, or `None` for a closed loop.
    pub(crate) rate: Option<f64>,
    /// When to stop.
    pub(crate) until: Until,
    /// What to send.
    pub(crate) workload: Workload,
    /// Seed of the clients' generators.
    pub(crate) seed: u64,
}

/// What one region's clients saw.
#[derive(Debug, Clone)]
pub(crate) struct RegionLoad {
    /// Acknowledged writes (2xx), latency in µs.
    pub(crate) writes: Histogram<u64>,
    /// Answered reads (200 or 404), latency in µs.
    pub(crate) reads: Histogram<u64>,
    /// Writes answered 202: durable here, the asked durability not reached in time.
    pub(crate) accepted: u64,
    /// Failed requests.
    pub(crate) errors: u64,
    /// The first error seen, for the report.
    pub(crate) first_error: Option<String>,
}

impl RegionLoad {
    /// Nothing seen yet.
    pub(crate) fn new() -> Self {
        RegionLoad {
            writes: histogram(),
            reads: histogram(),
            accepted: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: RegionLoad) {
        // Both histograms share the same bounds, so adding cannot fail.
        let _ = self.writes.add(&other.writes);
        let _ = self.reads.add(&other.reads);
        self.accepted += other.accepted;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Shared state of a running load.
#[derive(Debug, Default)]
pub(crate) struct LoadControl {
    /// Raised to stop every client after its current request.
    pub(crate) stop: AtomicBool,
    /// Requests handed out (the open-loop slot counter).
    next: AtomicU64,
    /// Writes handed out (for [`Until::Writes`]).
    writes_issued: AtomicU64,
    /// Acknowledged writes so far, for progress and sampling.
    pub(crate) writes_done: AtomicU64,
}

/// Runs `load` until it is done, returning per-region results in `targets` order and the
/// seconds it ran. Raise `control.stop` to end a [`Until::Stopped`] load.
pub(crate) async fn run(
    client: &reqwest::Client,
    load: Load,
    control: Arc<LoadControl>,
) -> (Vec<RegionLoad>, f64) {
    let started = Instant::now();
    let schedule = load.rate.map(|r| Schedule::new(started, r));
    let load = Arc::new(load);
    let mut tasks = Vec::with_capacity(load.clients);
    for c in 0..load.clients {
        let (client, load, control) = (client.clone(), load.clone(), control.clone());
        tasks.push(tokio::spawn(async move {
            let region = c % load.targets.len();
            let out = client_loop(&client, &load, region, c as u64, schedule, &control).await;
            (region, out)
        }));
    }
    let mut results: Vec<RegionLoad> = load.targets.iter().map(|_| RegionLoad::new()).collect();
    for t in tasks {
        match t.await {
            Ok((region, out)) => results[region].merge(out),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    (results, started.elapsed().as_secs_f64())
}

/// One client: draws operations and sends them until told to stop.
async fn client_loop(
    client: &reqwest::Client,
    load: &Load,
    region: usize,
    id: u64,
    schedule: Option<Schedule>,
    control: &LoadControl,
) -> RegionLoad {
    let (name, api) = &load.targets[region];
    let w = &load.workload;
    let mut rng = Rng::new(load.seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407));
    let mut out = RegionLoad::new();
    while !control.stop.load(Ordering::Relaxed) {
        let op = w.mix.pick(rng.unit());
        if op == Op::Write
            && let Until::Writes(n) = load.until
            && control.writes_issued.fetch_add(1, Ordering::Relaxed) >= n
        {
            break;
        }
        let began = match schedule {
            Some(s) => {
                let due = s.intended(control.next.fetch_add(1, Ordering::Relaxed));
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let result = send_once(client, (name, api), w, &mut rng, op).await;
        let us = began.elapsed().as_micros() as u64;
        match result {
            Ok(accepted) => {
                let h = if op == Op::Write {
                    control.writes_done.fetch_add(1, Ordering::Relaxed);
                    out.accepted += u64::from(accepted);
                    &mut out.writes
                } else {
                    &mut out.reads
                };
                let _ = h.record(us.clamp(1, LATENCY_US_MAX));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

/// The key a write or read goes to: shared by every region or private to `region`.
fn key(w: &Workload, region: &str, rng: &mut Rng, op: Op) -> String {
    if op == Op::Write && w.conflict_share > 0.0 && rng.unit() < w.conflict_share {
        format!("shared-{}", rng.next_u64() % SHARED_KEYS)
    } else {
        format!("{region}-k{}", w.keys.next(rng))
    }
}

/// One PUT or GET; `Ok(true)` when a PUT was answered 202 (durable here, the durability
/// asked not reached in time). A GET of a missing key (404) is a normal answer.
async fn send_once(
    client: &reqwest::Client,
    (region, api): (&str, &str),
    w: &Workload,
    rng: &mut Rng,
    op: Op,
) -> Result<bool, String> {
    let url = format!("{api}/v1/kv/default/{}", key(w, region, rng, op));
    let (method, req) = match op {
        Op::Write => {
            let mut req = client.put(url).body(w.value.to_vec());
            if let Some(d) = &w.durability {
                req = req
                    .header(DURABILITY_HEADER, d)
                    .header(TIMEOUT_HEADER, "5000");
            }
            ("PUT", req)
        }
        Op::Read => match &w.read_level {
            Some(level) => (
                "GET",
                client.get(format!("{url}?read={level}&timeout_ms=5000")),
            ),
            None => ("GET", client.get(url)),
        },
    };
    let missing_is_fine = op == Op::Read;
    match req.send().await {
        Ok(r) if op == Op::Write && r.status() == reqwest::StatusCode::ACCEPTED => Ok(true),
        Ok(r)
            if r.status().is_success()
                || (missing_is_fine && r.status() == reqwest::StatusCode::NOT_FOUND) =>
        {
            // Read the body so the connection can be reused.
            let _ = r.bytes().await;
            Ok(false)
        }
        Ok(r) => Err(format!("{method} at {region} answered {}", r.status())),
        Err(e) => Err(format!("{method} at {region}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_hottest_keys_get_their_analytic_share() {
        let z = Zipf::new(1000, Zipf::YCSB_THETA);
        let mut rng = Rng::new(7);
        let draws = 400_000;
        let mut counts = vec![0u64; 1000];
        for _ in 0..draws {
            counts[z.sample(rng.unit()) as usize] += 1;
        }
        // Ranks 0 and 1 are exact in YCSB's generator; the rest follow a continuous
        // approximation, so the top-100 share is checked more loosely.
        for (k, count) in counts.iter().enumerate().take(2) {
            let share = *count as f64 / draws as f64;
            let want = z.probability(k as u64);
            assert!(
                (share - want).abs() < 0.03 * want,
                "rank {k}: share {share:.4}, analytic {want:.4}"
            );
        }
        let top: u64 = counts[..100].iter().sum();
        let want: f64 = (0..100).map(|k| z.probability(k)).sum();
        let share = top as f64 / draws as f64;
        assert!(
            (share - want).abs() < 0.05 * want,
            "top 100: {share:.4} vs {want:.4}"
        );
        // Skewed: the hottest key alone takes more than 100 uniform keys' worth.
        assert!(counts[0] as f64 / draws as f64 > 100.0 / 1000.0);
        assert!(counts.iter().all(|&c| c < draws));
    }

    #[test]
    fn zipf_stays_in_range_for_tiny_spaces() {
        for n in [1, 2, 3] {
            let z = Zipf::new(n, Zipf::YCSB_THETA);
            let mut rng = Rng::new(1);
            for _ in 0..10_000 {
                assert!(z.sample(rng.unit()) < n);
            }
        }
        assert_eq!(Zipf::new(5, 0.99).sample(0.0), 0);
        assert!(Zipf::new(5, 0.99).sample(0.999_999) < 5);
    }

    #[test]
    fn uniform_chooser_covers_the_key_space() {
        let c = KeyChooser::Uniform(10);
        let mut rng = Rng::new(3);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[c.next(&mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn mixes_pick_reads_in_their_share() {
        assert_eq!(Mix::WriteOnly.pick(0.0), Op::Write);
        assert_eq!(Mix::WriteOnly.pick(0.99), Op::Write);
        assert_eq!(Mix::YcsbA.pick(0.49), Op::Read);
        assert_eq!(Mix::YcsbA.pick(0.5), Op::Write);
        assert_eq!(Mix::YcsbB.pick(0.94), Op::Read);
        assert_eq!(Mix::YcsbB.pick(0.95), Op::Write);
        let mut rng = Rng::new(11);
        let reads = (0..100_000)
            .filter(|_| Mix::YcsbB.pick(rng.unit()) == Op::Read)
            .count();
        assert!((94_000..96_000).contains(&reads), "{reads}");
    }

    #[test]
    fn open_loop_schedule_is_fixed_by_the_rate() {
        let start = Instant::now();
        let s = Schedule::new(start, 200.0);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.intended(1), start + Duration::from_millis(5));
        assert_eq!(s.intended(200), start + Duration::from_secs(1));
        assert_eq!(s.intended(1000), start + Duration::from_secs(5));
    }

    #[test]
    fn conflicting_writes_go_to_the_shared_keys() {
        let w = Workload {
            keys: KeyChooser::Uniform(100),
            mix: Mix::WriteOnly,
            conflict_share: 0.25,
            value: Arc::from(&b"v"[..]),
            durability: None,
            read_level: None,
        };
        let mut rng = Rng::new(5);
        let shared = (0..10_000)
            .filter(|_| key(&w, "r0", &mut rng, Op::Write).starts_with("shared-"))
            .count();
        assert!((2_300..2_700).contains(&shared), "{shared}");
        assert!(key(&w, "r1", &mut rng, Op::Read).starts_with("r1-k"));
    }
}
