//! The harness every module of this test binary shares.
//!
//! # Layout
//! - [`cluster`]: N region leaders in this process over real QUIC on loopback (one region is
//!   a "solo" cluster), their reads, writes, status and faults, and [`Cluster::wait_converged`].
//! - [`logs`]: the binary's one tracing subscriber, and the capture of a test's warnings by
//!   the names of its runtime's threads.
//!
//! # How tests wait
//! Never by sleeping and then asserting: [`wait_until`] polls a condition every [`POLL`] until
//! it holds or [`DEADLINE`] passes, and the deadline only matters when the test fails (the
//! panic then shows the last observation). [`poll_until`] is the same with the bound and the
//! interval of a test that measures or needs longer.

mod cluster;
pub(crate) mod logs;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use cluster::{CLUSTER, Cluster, Read, SOLO};

/// How long any wait may take before the test fails. Generous: it only matters on failure,
/// and a loaded two-core machine can be slow.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// How often a waiting test polls the nodes.
pub(crate) const POLL: Duration = Duration::from_millis(15);

/// Polls `probe` until it returns `Ok`, at most for [`DEADLINE`]; panics with `what` and the
/// last `Err` (a description of what was observed) when the deadline passes.
pub(crate) async fn wait_until<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    poll_until(what, DEADLINE, POLL, probe).await
}

/// [`wait_until`] with its own bound and polling interval.
pub(crate) async fn poll_until<T>(
    what: &str,
    bound: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {bound:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Digests as short hex strings, for failure messages.
pub(crate) fn hex_digests<K: std::fmt::Display>(digests: &BTreeMap<K, [u8; 32]>) -> String {
    digests
        .iter()
        .map(|(region, d)| {
            let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("{region}={hex}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
