//! Client load for the process tests: writers at every region, each writing until stopped,
//! with the outcome of every write recorded per region. What a write is (key, value, options)
//! and what counts as its acknowledgement (`A`) belong to the test.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

/// The outcome of one PUT.
pub(crate) enum Put<A> {
    /// Acknowledged: durable at the region (what else the test requires is in `A`).
    Acked(A),
    /// Never reached the region (connection refused): it was down.
    Refused,
    /// Sent without a readable reply.
    Unanswered,
    /// Answered with an error status, or a success without what an acknowledgement carries.
    Rejected(String),
}

/// Sends one write: a refused connection (the region is down) or a reply that never came is
/// already the write's [`Put`]; otherwise the reply.
pub(crate) async fn send<A>(req: reqwest::RequestBuilder) -> Result<reqwest::Response, Put<A>> {
    match req.send().await {
        Ok(resp) => Ok(resp),
        Err(e) if e.is_connect() => Err(Put::Refused),
        Err(_) => Err(Put::Unanswered),
    }
}

/// [`send`], then the reply's status and JSON body. A reply whose body cannot be read carries
/// no dot; it counts as unanswered (the stricter choice: the write is then not required to be
/// present).
pub(crate) async fn send_json<A>(
    req: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, serde_json::Value), Put<A>> {
    let resp = send(req).await?;
    let code = resp.status();
    match resp.json().await {
        Ok(body) => Ok((code, body)),
        Err(_) => Err(Put::Unanswered),
    }
}

/// What happened to the writes sent to one region.
#[derive(Debug)]
pub(crate) struct Outcomes<A> {
    pub(crate) acked: Vec<A>,
    /// Never reached the region (connection refused): it was down.
    pub(crate) refused: u64,
    /// Sent without a reply (key, value): in flight when the process died, or sent on a
    /// connection it had reset. Not acknowledged, so not required, but it may have been
    /// written.
    pub(crate) unanswered: Vec<(String, String)>,
    /// Answered with an error status, or a success without what an acknowledgement carries.
    pub(crate) rejected: Vec<String>,
}

impl<A> Default for Outcomes<A> {
    fn default() -> Self {
        Outcomes {
            acked: Vec::new(),
            refused: 0,
            unanswered: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

/// One write in flight: its key, its value and the request.
pub(crate) type Attempt<A> = (String, String, Pin<Box<dyn Future<Output = Put<A>> + Send>>);

/// The attempt to write `value` at `key` with `put`, which is handed copies of both.
pub(crate) fn attempt<A, F>(
    key: String,
    value: String,
    put: impl FnOnce(String, String) -> F,
) -> Attempt<A>
where
    F: Future<Output = Put<A>> + Send + 'static,
{
    let request = put(key.clone(), value.clone());
    (key, value, Box::pin(request))
}

/// Writers at every region until stopped.
pub(crate) struct Load<A> {
    regions: Vec<&'static str>,
    /// Bound on [`Load::wait_acked`].
    phase_bound: Duration,
    stop: Arc<AtomicBool>,
    outcomes: Vec<Arc<Mutex<Outcomes<A>>>>,
    tasks: JoinSet<()>,
}

impl<A: Clone + Send + 'static> Load<A> {
    /// Starts `writers` writers at each of `regions`. `writer(r, w)` builds writer `w` of
    /// region `r`: called with its request number, it returns the next attempt. A writer
    /// pauses `failed_pause` after a write that was not acknowledged, so a dead region is not
    /// hammered in a busy loop.
    pub(crate) fn start<W>(
        regions: &[&'static str],
        writers: usize,
        failed_pause: Duration,
        phase_bound: Duration,
        mut writer: impl FnMut(usize, usize) -> W,
    ) -> Self
    where
        W: FnMut(u64) -> Attempt<A> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let mut outcomes = Vec::new();
        let mut tasks = JoinSet::new();
        for r in 0..regions.len() {
            let out = Arc::new(Mutex::new(Outcomes::default()));
            for w in 0..writers {
                let (stop, out) = (Arc::clone(&stop), Arc::clone(&out));
                let mut next = writer(r, w);
                tasks.spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value, attempt) = next(i);
                        i += 1;
                        let outcome = attempt.await;
                        let failed = !matches!(outcome, Put::Acked(_));
                        {
                            let mut o = out.lock().expect("no writer panics holding the lock");
                            match outcome {
                                Put::Acked(ack) => o.acked.push(ack),
                                Put::Refused => o.refused += 1,
                                Put::Unanswered => o.unanswered.push((key, value)),
                                Put::Rejected(why) => o.rejected.push(why),
                            }
                        }
                        if failed {
                            tokio::time::sleep(failed_pause).await;
                        }
                    }
                });
            }
            outcomes.push(out);
        }
        Load {
            regions: regions.to_vec(),
            phase_bound,
            stop,
            outcomes,
            tasks,
        }
    }

    /// Writes region `region` has acknowledged so far.
    pub(crate) fn acked(&self, region: usize) -> usize {
        self.outcomes[region].lock().expect("lock").acked.len()
    }

    /// The acknowledgements of region `region` so far.
    pub(crate) fn acks_of(&self, region: usize) -> Vec<A> {
        self.outcomes[region].lock().expect("lock").acked.clone()
    }

    /// Waits until each region of `targets` has acknowledged at least its target.
    pub(crate) async fn wait_acked(&self, targets: &[(usize, usize)], what: &str) {
        let deadline = Instant::now() + self.phase_bound;
        while targets.iter().any(|&(r, n)| self.acked(r) < n) {
            let have: Vec<(&str, usize)> = targets
                .iter()
                .map(|&(r, _)| (self.regions[r], self.acked(r)))
                .collect();
            assert!(
                Instant::now() < deadline,
                "{what}: acknowledged writes stalled at {have:?}, wanted {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers after their current request and returns every region's outcomes.
    pub(crate) async fn stop(mut self) -> Vec<Outcomes<A>> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a writer task panicked");
        }
        self.outcomes
            .into_iter()
            .map(|o| std::mem::take(&mut *o.lock().expect("lock")))
            .collect()
    }
}
