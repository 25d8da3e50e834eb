//! The machine's timer contract, as the simulator relies on it: after handling an event at
//! time `t`, `poll_timeout` names a time after `t` (or none). A deadline at or before `t`
//! would make a driver that sleeps until it (as `leader::node` does) wake at once, forever:
//! a busy loop.

use std::collections::BTreeMap;

use conflict::{Registry, ReplicaId};
use leader_core::testkit::Cluster;
use leader_core::{Event, Options};

fn opts(region: &str, peer: &str, id: u128) -> Options {
    Options {
        cluster: "t".into(),
        region: region.into(),
        replica: ReplicaId::from_u128(id),
        peers: vec![peer.into()],
        tables: BTreeMap::from([("lww".to_owned(), "lww".to_owned())]),
        max_clock_offset_ms: 500,
        relay_delay_ms: 1_000,
        heartbeat_interval_ms: 300,
        peer_window_bytes: 4_096,
        max_batch_bytes: 1_024,
        max_siblings: 4,
        conflict_log_capacity: 10,
        log_tail_bytes: 8 * 200,
        pace_lag_writes: 0,
        log_retention_bytes: u64::MAX,
        snapshot_chunk_bytes: 2048,
        learn_when_empty: false,
        anti_entropy_interval_ms: 0,
    }
}

/// A peer that stays connected but does not acknowledge (slow disk, one-way partition before
/// the idle timeout) for longer than the relay delay.
#[test]
fn poll_timeout_is_after_the_last_event_while_a_peer_lags() {
    let mut w = Cluster::new(
        [opts("a", "b", 1), opts("b", "a", 2)],
        &Registry::with_builtins(),
    );
    // A first connection replaced by a second before any hello arrives.
    w.connect("a", "b");
    w.connect("a", "b");
    w.deliver();
    w.now.mono_ms += 2;
    w.now.wall_ms += 2;
    // The write persists at once; its batch to b stays on the wire: b never acknowledges.
    w.write("a", "lww", "k", Some("v"));
    let now = w.now;
    assert_eq!(
        w.nodes["a"].replica.peer_views(now)[0].lag_writes,
        1,
        "b lacks a's durable write"
    );
    // Tick a as a driver would, for a while past the relay delay.
    let start = w.now.mono_ms;
    for _ in 0..50 {
        let now = w.now.mono_ms;
        let next = w.nodes["a"]
            .replica
            .poll_timeout()
            .expect("a heartbeat is always due");
        assert!(
            next > now,
            "after an event at {now} the next deadline is {next}: a driver would spin"
        );
        w.now.wall_ms += next - now;
        w.now.mono_ms = next;
        w.handle("a", Event::Tick);
    }
    assert!(
        w.now.mono_ms > start + 1_000,
        "the test ran past the relay delay ({} ms)",
        w.now.mono_ms
    );
}
