//! Protocol scripts for the replication state machine: a few regions wired by an in-memory
//! network that delivers every frame in order, with explicit control over links and
//! persistence. Each test reads as a sequence of steps and asserts exact outcomes.
//!
//! # Why one file of about 1,600 lines
//! Each test is a self-contained protocol script on the test kit's `Cluster` (no helpers
//! beyond a few lines at the top), so the file is a catalogue: splitting it would spread the
//! scripts over files without sharing anything more, and `cargo test --test machine NAME`
//! finds one by name.

use std::collections::{BTreeSet, VecDeque};

use conflict::{Dot, Registry, ReplicaId, Resolved, Seq, Value};
use leader_core::testkit::{self, Cluster};
use leader_core::{
    Alarm, Durability, Effect, Event, Options, PeerMsg, ReadError, ReadLevel, Recovered, Replica,
    Time, WriteError,
};

const REGIONS: [&str; 3] = ["a", "b", "c"];

fn opts(region: &str, replica: ReplicaId) -> Options {
    let peers: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != region).collect();
    testkit::options(region, replica, &peers)
}

/// The kit's cluster of regions `a`, `b`, `c` (replica ids 1, 2, 3) on an in-memory network.
type World = Cluster;

fn world() -> World {
    world_with(|_| {})
}

/// A world whose regions' options are adjusted by `tweak`.
fn world_with(tweak: impl Fn(&mut Options)) -> World {
    let opts = REGIONS.iter().enumerate().map(|(i, r)| {
        let mut o = opts(r, ReplicaId::from_u128(i as u128 + 1));
        tweak(&mut o);
        o
    });
    Cluster::new(opts, &Registry::with_builtins())
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

fn bytes(s: &str) -> Resolved {
    Resolved::Value(s.as_bytes().to_vec())
}

#[test]
fn a_write_is_answered_only_after_it_is_durable_and_then_replicates() {
    let mut w = world();
    w.auto_sync = false;
    w.mesh();
    w.deliver();
    let id = w.write("a", "default", "k", Some("v1"));
    assert!(w.nodes["a"].replies.is_empty(), "no reply before the fsync");
    w.deliver();
    assert_eq!(
        w.read("b", "default", "k"),
        Resolved::Absent,
        "nothing is streamed before it is durable"
    );
    w.sync("a");
    assert_eq!(w.nodes["a"].replies.len(), 1);
    assert_eq!(w.nodes["a"].replies[0].0, id);
    w.deliver();
    for r in ["b", "c"] {
        w.sync(r);
    }
    w.deliver();
    for r in REGIONS {
        assert_eq!(w.read(r, "default", "k"), bytes("v1"), "region {r}");
    }
    let a_id = w.nodes["a"].id;
    for view in w.nodes["a"].replica.peer_views(w.now) {
        assert_eq!(
            view.acked.get(a_id),
            Seq(1),
            "{} acked after its durable apply",
            view.region
        );
        assert_eq!(view.lag_writes, 0);
    }
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn concurrent_writes_converge_and_are_logged_as_conflicts() {
    let mut w = world();
    w.mesh();
    w.deliver();
    // Every region writes the same keys before hearing from the others.
    for r in REGIONS {
        w.write(r, "default", "hot", Some(r));
        w.write(r, "mv", "hot", Some(r));
    }
    w.deliver();
    w.advance(10);
    assert_eq!(w.digests().len(), 1, "all regions hold identical state");
    let winner = w.read("a", "default", "hot");
    for r in REGIONS {
        assert_eq!(w.read(r, "default", "hot"), winner);
        match w.read(r, "mv", "hot") {
            Resolved::Siblings(s) => assert_eq!(s.len(), 3, "multi-value keeps all three"),
            other => panic!("expected siblings at {r}, got {other:?}"),
        }
        assert!(
            w.nodes[r].replica.counters().conflicts >= 2,
            "region {r} logged the conflicts"
        );
    }
}

#[test]
fn writes_reach_a_cut_off_region_through_a_third_after_the_relay_delay() {
    let mut w = world();
    w.connect("a", "c");
    w.connect("b", "c");
    w.deliver();
    w.write("a", "default", "k", Some("from-a"));
    w.deliver();
    assert_eq!(w.read("c", "default", "k"), bytes("from-a"));
    assert_eq!(w.read("b", "default", "k"), Resolved::Absent);
    w.advance(999);
    assert_eq!(
        w.read("b", "default", "k"),
        Resolved::Absent,
        "not before the relay delay"
    );
    w.advance(2);
    assert_eq!(w.read("b", "default", "k"), bytes("from-a"), "relayed by c");
    assert!(w.nodes["c"].replica.counters().writes_relayed >= 1);
    // A region never lags on its own writes, even when its acks cannot reach us.
    let views = w.nodes["b"].replica.peer_views(w.now);
    let a_view = views.iter().find(|v| v.region == "a").unwrap();
    assert!(!a_view.connected);
    assert_eq!(
        a_view.lag_writes, 0,
        "b holds only a's own write, which a has"
    );
    // b's ack reaches a only through c's view; a still sees b lagging, c does not.
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn a_reconnecting_peer_catches_up_from_the_log_beyond_the_memory_tail() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.cut("a", "b");
    w.cut("b", "c");
    // More writes than the in-memory tail (8) holds, so some must come from the log.
    for i in 0..30 {
        w.write("a", "default", &format!("k{i}"), Some("x"));
    }
    w.deliver();
    w.connect("a", "b");
    w.deliver();
    for i in 0..30 {
        assert_eq!(w.read("b", "default", &format!("k{i}")), bytes("x"), "k{i}");
    }
    w.connect("b", "c");
    w.advance(10);
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn unacknowledged_bytes_stay_within_the_window() {
    let mut w = world();
    w.mesh();
    w.deliver();
    for i in 0..200 {
        w.write("a", "default", &format!("key-{i}"), Some(&"v".repeat(100)));
    }
    // Nothing delivered yet: a may have sent at most one window (plus one batch) to each peer.
    for view in w.nodes["a"].replica.peer_views(w.now) {
        assert!(
            view.unacked_bytes <= 4096 + 1024,
            "{} has {} unacked",
            view.region,
            view.unacked_bytes
        );
    }
    w.deliver();
    w.advance(10);
    for r in ["b", "c"] {
        assert_eq!(w.read(r, "default", "key-199"), bytes(&"v".repeat(100)));
    }
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn a_second_live_replica_claiming_a_connected_region_is_refused() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    // A second process claims region b with another replica id on a new connection.
    let impostor = ReplicaId::from_u128(99);
    let hello = PeerMsg::Hello(leader_core::Hello {
        protocol: leader_core::PROTOCOL_VERSION,
        cluster: "test".into(),
        region: "b".into(),
        replica: impostor,
        applied: Default::default(),
        resolvers: vec![],
        replicas: vec![],
        standing: Default::default(),
    });
    w.handle(
        "a",
        Event::PeerUp {
            peer: "b".into(),
            conn: 77,
        },
    );
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn: 77,
            msg: hello,
        },
    );
    assert!(
        w.nodes["a"]
            .alarms
            .iter()
            .any(|a| matches!(a, Alarm::SplitBrain { refused, .. } if *refused == impostor))
    );
    let (_, reason) = w.nodes["a"]
        .closed
        .last()
        .expect("the impostor's connection is closed");
    assert!(reason.contains("second live replica"), "{reason}");
    // The legitimate link keeps replicating.
    w.write("a", "default", "k", Some("still"));
    w.deliver();
    assert_eq!(w.read("b", "default", "k"), bytes("still"));
}

#[test]
fn a_hello_claiming_another_region_or_cluster_is_refused() {
    let mut w = world();
    let bad = |region: &str, cluster: &str| {
        PeerMsg::Hello(leader_core::Hello {
            protocol: leader_core::PROTOCOL_VERSION,
            cluster: cluster.into(),
            region: region.into(),
            replica: ReplicaId::from_u128(50),
            applied: Default::default(),
            resolvers: vec![],
            replicas: vec![],
            standing: Default::default(),
        })
    };
    w.handle(
        "a",
        Event::PeerUp {
            peer: "b".into(),
            conn: 5,
        },
    );
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn: 5,
            msg: bad("c", "test"),
        },
    );
    assert!(
        w.nodes["a"].closed[0]
            .1
            .contains("claims region 'c' but its certificate names 'b'")
    );
    w.handle(
        "a",
        Event::PeerUp {
            peer: "b".into(),
            conn: 6,
        },
    );
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn: 6,
            msg: bad("b", "other"),
        },
    );
    assert!(w.nodes["a"].closed[1].1.contains("cluster 'other'"));
}

/// a and b connected; a wrote k1 and k2, and b got only the second (a gap at b), with
/// the wire empty: what b does next is on the wire.
fn gap_at_b() -> World {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    w.write("a", "default", "k1", Some("1"));
    w.write("a", "default", "k2", Some("2"));
    // Take a's second write off the wire and hand b only that one on a fresh view.
    let entry = w.nodes["a"].disk.log.values().nth(1).unwrap().clone();
    w.wire.clear();
    w.inject_batch("b", "a", vec![entry]);
    w
}

#[test]
fn a_gap_in_a_run_is_answered_with_a_resync_and_nothing_is_applied_out_of_order() {
    let mut w = gap_at_b();
    assert_eq!(
        w.read("b", "default", "k2"),
        Resolved::Absent,
        "seq 2 without seq 1 is not applied"
    );
    let resync = w
        .wire
        .iter()
        .find(|(f, _, _, m)| f == "b" && matches!(m, PeerMsg::Resync(_)));
    assert!(resync.is_some(), "b asks a to resend");
    w.deliver();
    assert_eq!(w.read("b", "default", "k1"), bytes("1"));
    assert_eq!(w.read("b", "default", "k2"), bytes("2"));
}

#[test]
fn local_writes_beyond_the_sibling_cap_are_refused_with_advice() {
    let mut w = world();
    for (i, r) in REGIONS.iter().enumerate() {
        w.write(r, "mv", "k", Some(&i.to_string()));
    }
    w.mesh();
    w.deliver();
    // Three concurrent siblings at a; one more concurrent one from a stale context is fine
    // (cap 4), a fifth is refused.
    let stale = Some(Default::default());
    for (id, expect_ok) in [(900, true), (901, false)] {
        let ev = Event::ClientWrite {
            id,
            table: "mv".into(),
            key: "k".into(),
            value: Value::Bytes(b"x".to_vec()),
            context: stale.clone(),
            durability: Durability::Local,
            timeout_ms: 1_000,
        };
        w.handle("a", ev);
        let (_, result) = w.nodes["a"]
            .replies
            .iter()
            .find(|(rid, _)| *rid == id)
            .unwrap();
        assert_eq!(result.is_ok(), expect_ok, "{result:?}");
        if let Err(e) = result {
            assert!(matches!(
                e,
                WriteError::TooManySiblings { count: 5, max: 4 }
            ));
            assert!(e.to_string().contains("write back with its context"));
        }
    }
}

#[test]
fn unknown_tables_are_refused() {
    let mut w = world();
    let id = w.write("a", "nope", "k", Some("v"));
    let (rid, result) = &w.nodes["a"].replies[0];
    assert_eq!(*rid, id);
    assert_eq!(result, &Err(WriteError::UnknownTable("nope".into())));
}

fn receipt<'a>(w: &'a World, region: &str, id: u64) -> &'a leader_core::WriteReceipt {
    match w.reply(region, id) {
        Some(Ok(r)) => r,
        other => panic!("expected a receipt for request {id} at {region}, got {other:?}"),
    }
}

#[test]
fn durability_one_waits_for_a_durable_apply_elsewhere() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.auto_sync = false; // every region persists only when the test says so
    let id = w.write_with(
        "a",
        "default",
        "k",
        Value::Bytes(b"v".to_vec()),
        Durability::One,
    );
    w.sync("a");
    assert!(
        w.reply("a", id).is_none(),
        "durable here is not enough for `one`"
    );
    w.deliver();
    assert!(
        w.reply("a", id).is_none(),
        "applied but not yet durable at b or c"
    );
    w.sync("b");
    w.deliver();
    let r = receipt(&w, "a", id);
    assert!(!r.timed_out);
    assert_eq!(r.durable_in, vec!["a".to_owned(), "b".to_owned()]);
}

#[test]
fn durability_all_times_out_naming_exactly_the_regions_that_have_it() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    let id = w.write_with(
        "a",
        "default",
        "k",
        Value::Bytes(b"v".to_vec()),
        Durability::All,
    );
    w.deliver();
    assert!(
        w.reply("a", id).is_none(),
        "c is unreachable, so `all` waits"
    );
    w.advance(999);
    assert!(
        w.reply("a", id).is_none(),
        "still within the 1000 ms timeout"
    );
    w.advance(2);
    let r = receipt(&w, "a", id);
    assert!(r.timed_out, "the reply says the wait timed out");
    assert_eq!(r.durable_in, vec!["a".to_owned(), "b".to_owned()]);
    // It is not rolled back: c gets it once connected.
    w.connect("a", "c");
    w.deliver();
    assert_eq!(w.read("c", "default", "k"), bytes("v"));
}

#[test]
fn durability_quorum_needs_a_majority_counting_this_region() {
    assert_eq!(Durability::Quorum.peers_needed(3), 1);
    assert_eq!(Durability::Quorum.peers_needed(5), 2);
    assert_eq!(Durability::All.peers_needed(5), 4);
    assert_eq!(Durability::One.peers_needed(1), 0);
    let mut w = world();
    w.connect("a", "c");
    w.deliver();
    let id = w.write_with(
        "a",
        "default",
        "k",
        Value::Bytes(b"v".to_vec()),
        Durability::Quorum,
    );
    w.deliver();
    let r = receipt(&w, "a", id);
    assert!(!r.timed_out);
    assert_eq!(r.durable_in, vec!["a".to_owned(), "c".to_owned()]);
}

#[test]
fn the_lag_matrix_reaches_every_region_and_shows_a_cut_pair() {
    let mut w = world();
    w.connect("a", "c");
    w.connect("b", "c");
    w.deliver();
    w.write("a", "default", "k", Some("v"));
    w.deliver();
    w.advance(600); // a heartbeat round: rows travel a -> c -> b
    w.advance(600);
    let cells = w.nodes["b"].replica.matrix(w.now);
    let a_to_b = cells
        .iter()
        .find(|c| c.origin == "a" && c.destination == "b")
        .expect("b knows a's row via c");
    assert_eq!(
        a_to_b.lag_writes, 1,
        "b never acked a's write to a directly"
    );
    assert!(!a_to_b.connected);
    // a made its row at 600 ms (lag 600 on a's clock); c passed it on at its 1200 ms beat.
    assert_eq!(a_to_b.lag_ms, 600, "lag as measured on a's own clock");
    let a_to_c = cells
        .iter()
        .find(|c| c.origin == "a" && c.destination == "c")
        .unwrap();
    assert_eq!(a_to_c.lag_writes, 0);
    assert!(
        a_to_c.row_age_ms <= 1200,
        "the row is fresh: {}",
        a_to_c.row_age_ms
    );
}

#[test]
fn clock_offsets_are_estimated_from_heartbeat_echoes() {
    let mut w = world();
    w.mesh();
    w.deliver();
    // b's wall clock runs 10 s ahead; the network delivers instantly here.
    let skewed = |w: &mut World, region: &str, ev: Event| {
        let mut now = w.now;
        if region == "b" {
            now.wall_ms += 10_000;
        }
        let mut out = Vec::new();
        w.nodes
            .get_mut(region)
            .unwrap()
            .replica
            .handle(now, ev, &mut out);
        out
    };
    for _ in 0..3 {
        w.now.mono_ms += 600;
        w.now.wall_ms += 600;
        let mut queue: VecDeque<(String, Event)> = REGIONS
            .iter()
            .map(|r| ((*r).to_owned(), Event::Tick))
            .collect();
        let mut steps = 0;
        while let Some((region, ev)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000);
            for effect in skewed(&mut w, &region, ev) {
                if let Effect::Send { peer, conn, msg } = effect {
                    queue.push_back((
                        peer,
                        Event::Frame {
                            peer: region.clone(),
                            conn,
                            msg,
                        },
                    ));
                }
            }
        }
    }
    let views = w.nodes["a"].replica.peer_views(w.now);
    let b = views.iter().find(|v| v.region == "b").unwrap();
    assert_eq!(
        b.clock_offset_ms,
        Some(10_000),
        "instant network: the estimate is exact"
    );
    let c = views.iter().find(|v| v.region == "c").unwrap();
    assert_eq!(c.clock_offset_ms, Some(0));
    assert!(
        w.nodes["a"]
            .replica
            .skew_alarms()
            .iter()
            .any(|(r, ms)| r == "b" && *ms >= 9_000)
    );
}

#[test]
fn a_table_resolved_differently_elsewhere_is_not_applied_but_others_are() {
    // c resolves `mv` with lww instead of multi-value.
    let mut w = world();
    let id = ReplicaId::from_u128(3);
    let mut o = opts("c", id);
    o.tables.insert("mv".into(), "lww".into());
    let node = w.nodes.get_mut("c").unwrap();
    node.replica = Replica::new(o, &Registry::with_builtins(), Recovered::default()).unwrap();
    w.mesh();
    w.deliver();
    let mismatch = w.nodes["a"].alarms.iter().find_map(|a| match a {
        Alarm::ResolverMismatch {
            peer,
            table,
            ours,
            theirs,
        } => Some((peer.clone(), table.clone(), ours.clone(), theirs.clone())),
        _ => None,
    });
    assert_eq!(
        mismatch,
        Some((
            "c".into(),
            "mv".into(),
            Some("multi-value@1".into()),
            Some("lww@1".into())
        ))
    );
    w.write("c", "mv", "k", Some("from-c"));
    w.write("c", "default", "k", Some("from-c"));
    w.deliver();
    assert_eq!(
        w.read("a", "mv", "k"),
        Resolved::Absent,
        "mismatched table is held back"
    );
    assert_eq!(
        w.read("a", "default", "k"),
        bytes("from-c"),
        "other tables replicate"
    );
    assert_eq!(w.nodes["a"].replica.counters().quarantined, 1);
    assert_eq!(w.nodes["a"].replica.resolver_mismatches().len(), 1);
    // The batch that logged the held-back write also makes every key state durable: a
    // restart replays only the log after the last checkpoint, and must not apply it.
    let a = &w.nodes["a"];
    assert_eq!(
        a.checkpoints.iter().filter(|c| **c).count(),
        1,
        "{:?}",
        a.checkpoints
    );
}

/// Storage may write key states back lazily and rebuild them after a crash from the log
/// ([`Replica::replay`]): replaying a region's log, with origins interleaved in another
/// order than they arrived, rebuilds exactly the states it had.
#[test]
fn a_restart_rebuilds_key_states_by_replaying_the_log() {
    let mut w = world();
    w.mesh();
    w.deliver();
    for (i, region) in REGIONS.iter().enumerate() {
        for k in 0..6 {
            let value = format!("{region}-{k}");
            w.write(region, "default", &format!("k{}", k % 3), Some(&value));
            w.write(region, "mv", &format!("k{}", (k + i) % 2), Some(&value));
        }
        w.write(region, "default", "k0", None);
    }
    w.deliver();
    assert_eq!(w.digests().len(), 1, "the regions converged");
    let node = &w.nodes["a"];
    // Replayed origin by origin, last origin first.
    let mut replay: Vec<leader_core::LogEntry> = Vec::new();
    for origin in REGIONS.iter().rev() {
        let id = w.nodes[*origin].id;
        replay.extend(
            node.disk
                .log
                .range((id, Seq(1))..=(id, Seq(u64::MAX)))
                .map(|(_, e)| e.clone()),
        );
    }
    assert_eq!(replay.len(), 3 * 13);
    let rec = Recovered {
        own_seq: node.replica.applied().get(node.id),
        hlc_high: node.replica.hlc(),
        applied: node.replica.applied().clone(),
        ..Recovered::default()
    };
    let mut again = Replica::new(opts("a", node.id), &Registry::with_builtins(), rec).unwrap();
    // In chunks, as storage hands them over (never the whole replay at once).
    for chunk in replay.chunks(5) {
        again.replay(chunk.to_vec());
    }
    assert_eq!(again.digest(), node.replica.digest());
    assert_eq!(again.keys().count(), node.replica.keys().count());
    // The rebuilt states are only in memory: the first batch makes them durable, as a
    // checkpoint, so the replayed log is never needed again.
    let mut out = Vec::new();
    again.handle(w.now, Event::Tick, &mut out);
    let batch = out.iter().find_map(|e| match e {
        Effect::Persist(b) => Some(b),
        _ => None,
    });
    let batch = batch.expect("the replayed states are persisted at once");
    assert!(batch.checkpoint);
    assert!(batch.log.is_empty());
    assert_eq!(batch.keys.len(), node.replica.keys().count());
}

/// Issue 11, item 4: the in-memory log tail is bounded in bytes (`log_tail_bytes`, 1600 here),
/// not in entries. Small writes stream to a live peer from the tail; a write larger than the
/// whole tail is never held in memory and reaches the peer from the disk log. With a bound of
/// 8 entries, the large write was kept in the tail and streamed from memory.
#[test]
fn the_log_tail_is_bounded_in_bytes_and_a_larger_write_streams_from_the_log() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.write("a", "default", "small", Some("v"));
    w.deliver();
    assert_eq!(
        w.nodes["a"].log_reads, 0,
        "a small write streams from the tail"
    );
    let big = "x".repeat(4_000);
    w.write("a", "default", "big", Some(&big));
    w.deliver();
    assert!(
        w.nodes["a"].log_reads > 0,
        "the large write came from the log"
    );
    for r in ["b", "c"] {
        assert_eq!(w.read(r, "default", "big"), bytes(&big), "{r}");
    }
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn a_value_the_tables_resolver_cannot_read_is_refused_before_anything_is_written() {
    let mut registry = Registry::with_builtins();
    registry
        .register(std::sync::Arc::new(conflict::examples::Counter))
        .unwrap();
    let mut o = opts("a", ReplicaId::from_u128(1));
    o.tables.insert("counters".into(), "counter".into());
    let mut replica = Replica::new(o, &registry, Recovered::default()).unwrap();
    let now = Time {
        wall_ms: 1_700_000_000_000,
        mono_ms: 0,
    };
    let mut out = Vec::new();
    let ev = Event::ClientWrite {
        id: 1,
        table: "counters".into(),
        key: b"k".to_vec(),
        value: Value::Bytes(b"not a counter".to_vec()),
        context: None,
        durability: Durability::Local,
        timeout_ms: 1_000,
    };
    replica.handle(now, ev, &mut out);
    let reply = out.iter().find_map(|e| match e {
        Effect::Reply { id: 1, result } => Some(result.clone()),
        _ => None,
    });
    match reply {
        Some(Err(WriteError::InvalidValue { table, reason })) => {
            assert_eq!(table, "counters");
            assert!(!reason.is_empty());
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
    assert!(
        !out.iter().any(|e| matches!(e, Effect::Persist(_))),
        "nothing was written"
    );
    assert!(replica.get("counters", b"k").is_none());
}

/// Issue 11, item 5: a lag-matrix row relayed by a third region may be older than what a
/// region's own hello said; it must not replace the resolvers the hello announced, or writes
/// that match this region's resolvers are quarantined (and were never re-applied).
#[test]
fn a_stale_relayed_matrix_row_does_not_overwrite_the_resolvers_a_hello_announced() {
    let mut w = world();
    w.connect("a", "b");
    w.connect("a", "c");
    w.deliver();
    let c_id = w.nodes["c"].id;
    // b relays a row of c made before c's restart, when c resolved `mv` with lww. a has no
    // row of c yet (no heartbeat came from c since its hello), so the matrix takes it.
    let stale = leader_core::MatrixRow {
        region: "c".into(),
        replica: c_id,
        version: conflict::Hlc::new(1_600_000_000_000, 0),
        applied: conflict::VersionVector::new(),
        lags: Vec::new(),
        resolvers: vec![
            ("default".into(), "lww@1".into()),
            ("mv".into(), "lww@1".into()),
        ],
    };
    let heartbeat = |rows| {
        PeerMsg::Heartbeat(leader_core::msg::Heartbeat {
            wall_ms: 1_700_000_000_000,
            hlc: conflict::Hlc::new(1_700_000_000_000, 0),
            echo: None,
            rows,
            standing: Default::default(),
        })
    };
    let ab = w.conns[&pair("a", "b")];
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn: ab,
            msg: heartbeat(vec![stale.clone()]),
        },
    );
    assert!(
        w.nodes["a"].replica.resolver_mismatches().is_empty(),
        "a relayed row older than c's hello replaced its resolvers: {:?}",
        w.nodes["a"].replica.resolver_mismatches()
    );
    w.write("c", "mv", "k", Some("from-c"));
    w.deliver();
    assert_eq!(w.read("a", "mv", "k"), bytes("from-c"));
    assert_eq!(w.nodes["a"].replica.counters().quarantined, 0);

    // Once c's own rows have come in, a staler one relayed later is refused by the matrix
    // and leaves the resolvers alone too.
    w.advance(600);
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn: ab,
            msg: heartbeat(vec![stale]),
        },
    );
    assert!(w.nodes["a"].replica.resolver_mismatches().is_empty());
    w.write("c", "mv", "k2", Some("again"));
    w.deliver();
    assert_eq!(w.read("a", "mv", "k2"), bytes("again"));
    assert_eq!(w.nodes["a"].replica.counters().quarantined, 0);
}

/// Fills a's window towards b with writes b has not acknowledged yet, on a two-region link.
/// Returns the request ids of the writes.
fn fill_window(w: &mut World, n: usize) -> Vec<u64> {
    let value = "x".repeat(300);
    (0..n)
        .map(|i| w.write("a", "default", &format!("k{i}"), Some(&value)))
        .collect()
}

/// Issue 11, item 7: an ack dropped by a full send queue (the receiver hears `SendFailed`)
/// with the sender's window full used to stall the stream until the receiver's next commit.
/// The ack is sent again after the rewind, and heartbeats carry the same vector.
#[test]
fn a_dropped_ack_with_a_full_window_does_not_stall_the_stream() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    fill_window(&mut w, 40); // 40 × ~350 bytes: far more than the 4 KiB window
    let ab = w.conns[&pair("a", "b")];
    // Deliver everything, but drop every ack b sends, as a full queue would, and tell b.
    for _ in 0..10_000 {
        let Some((from, to, conn, msg)) = w.wire.pop_front() else {
            break;
        };
        if from == "b" && matches!(msg, PeerMsg::Ack(_)) {
            w.handle(
                "b",
                Event::SendFailed {
                    peer: "a".into(),
                    conn,
                },
            );
            continue;
        }
        w.handle(
            &to,
            Event::Frame {
                peer: from,
                conn,
                msg,
            },
        );
    }
    // No new write anywhere: only timers and the retransmitted ack may move things now.
    for _ in 0..6 {
        w.advance(500);
    }
    let a_id = w.nodes["a"].id;
    assert_eq!(
        w.nodes["b"].replica.applied().get(a_id),
        Seq(40),
        "b got all of a's writes"
    );
    let view = w.nodes["a"].replica.peer_views(w.now);
    let b = view.iter().find(|p| p.region == "b").unwrap();
    assert_eq!(b.acked.get(a_id), Seq(40), "a learned that b has them");
    assert_eq!(b.unacked_bytes, 0, "a's window towards b is free again");
    let _ = ab;
}

/// Issue 11, item 7: the same with only heartbeats left (every ack lost and no rewind):
/// the receiver's own row in its heartbeat acknowledges what it has.
#[test]
fn heartbeats_acknowledge_what_the_receiver_has_durably_applied() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    fill_window(&mut w, 40);
    for round in 0..5 {
        if round > 0 {
            w.now.mono_ms += 500;
            w.now.wall_ms += 500;
            for r in REGIONS {
                w.handle(r, Event::Tick);
            }
        }
        for _ in 0..10_000 {
            w.wire
                .retain(|(f, _, _, m)| !(f == "b" && matches!(m, PeerMsg::Ack(_))));
            let Some((from, to, conn, msg)) = w.wire.pop_front() else {
                break;
            };
            w.handle(
                &to,
                Event::Frame {
                    peer: from,
                    conn,
                    msg,
                },
            );
        }
    }
    let a_id = w.nodes["a"].id;
    let view = w.nodes["a"].replica.peer_views(w.now);
    let b = view.iter().find(|p| p.region == "b").unwrap();
    assert_eq!(
        b.acked.get(a_id),
        Seq(40),
        "no ack arrived, yet b's heartbeat rows told a what b has"
    );
    assert_eq!(b.unacked_bytes, 0);
}

/// Issue 11, item 7: a `Resync` lost with the receiver's send queue is asked for again
/// after the rewind, so the sender does not keep a window of writes the receiver dropped.
#[test]
fn a_dropped_resync_is_sent_again_after_the_rewind() {
    let mut w = gap_at_b();
    let conn = w.conns[&pair("a", "b")];
    let a_id = w.nodes["a"].id;
    // The resync never leaves b: its queue was full.
    let before = w.wire.len();
    w.wire
        .retain(|(f, _, _, m)| !(f == "b" && matches!(m, PeerMsg::Resync(_))));
    assert_eq!(w.wire.len() + 1, before, "b asked for a resync");
    w.handle(
        "b",
        Event::SendFailed {
            peer: "a".into(),
            conn,
        },
    );
    let again = w
        .wire
        .iter()
        .any(|(f, _, _, m)| f == "b" && matches!(m, PeerMsg::Resync(r) if r.origin == a_id));
    assert!(again, "b asks again after the rewind");
}

/// Issue 11, item 8: a failed log read (storage error: nothing came back) used to be asked
/// for again at once, a tight loop. It is retried after a growing backoff, with an alarm.
#[test]
fn a_failed_log_read_backs_off_and_raises_an_alarm() {
    let mut w = world();
    // a writes more than its in-memory tail holds while b is away, so b's catch-up reads
    // the log.
    let value = "v".repeat(200);
    for i in 0..20 {
        w.write("a", "default", &format!("k{i}"), Some(&value));
    }
    let conn = 99;
    w.conns.insert(pair("a", "b"), conn);
    let mut out = Vec::new();
    let now = w.now;
    let node = w.nodes.get_mut("a").unwrap();
    node.replica.handle(
        now,
        Event::PeerUp {
            peer: "b".into(),
            conn,
        },
        &mut out,
    );
    let b_hello = {
        let mut o = Vec::new();
        let b = w.nodes.get_mut("b").unwrap();
        b.replica.handle(
            now,
            Event::PeerUp {
                peer: "a".into(),
                conn,
            },
            &mut o,
        );
        o.into_iter()
            .find_map(|e| match e {
                Effect::Send {
                    msg: m @ PeerMsg::Hello(_),
                    ..
                } => Some(m),
                _ => None,
            })
            .unwrap()
    };
    out.clear();
    let node = w.nodes.get_mut("a").unwrap();
    node.replica.handle(
        now,
        Event::Frame {
            peer: "b".into(),
            conn,
            msg: b_hello,
        },
        &mut out,
    );
    let read = out.iter().find_map(|e| match e {
        Effect::ReadLog { origin, .. } => Some(*origin),
        _ => None,
    });
    let origin = read.expect("b's catch-up starts with a log read");
    // Storage fails: nothing comes back.
    out.clear();
    let ev = Event::LogRead {
        peer: "b".into(),
        conn,
        origin,
        entries: Vec::new(),
    };
    node.replica.handle(now, ev, &mut out);
    assert!(
        !out.iter().any(|e| matches!(e, Effect::ReadLog { .. })),
        "no immediate re-read: {out:?}"
    );
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Alarm(Alarm::LogReadFailed { retry_ms: 100, .. })))
    );
    assert_eq!(node.replica.counters().log_read_failures, 1);
    let due = node.replica.poll_timeout().expect("a retry is scheduled");
    assert!(due <= now.mono_ms + 100, "retry due at {due}");
    // Before the backoff has passed nothing is read; after it, the read is retried.
    out.clear();
    node.replica.handle(
        Time {
            mono_ms: now.mono_ms + 50,
            ..now
        },
        Event::Tick,
        &mut out,
    );
    assert!(!out.iter().any(|e| matches!(e, Effect::ReadLog { .. })));
    out.clear();
    node.replica.handle(
        Time {
            mono_ms: now.mono_ms + 100,
            ..now
        },
        Event::Tick,
        &mut out,
    );
    assert!(
        out.iter().any(|e| matches!(e, Effect::ReadLog { .. })),
        "retried: {out:?}"
    );
    // A second failure doubles the backoff.
    out.clear();
    let ev = Event::LogRead {
        peer: "b".into(),
        conn,
        origin,
        entries: Vec::new(),
    };
    node.replica.handle(
        Time {
            mono_ms: now.mono_ms + 100,
            ..now
        },
        ev,
        &mut out,
    );
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Alarm(Alarm::LogReadFailed { retry_ms: 200, .. })))
    );
}

/// Issue 11, item 8: a replicated write whose HLC does not exceed a sibling its context
/// supersedes breaks the per-key causality rule; it is counted and alarmed on receipt (and
/// still applied: every region converges either way).
#[test]
fn a_replicated_write_breaking_the_causality_rule_is_counted_and_alarmed() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    w.write("b", "default", "k", Some("from-b"));
    w.deliver();
    let b_write = w.nodes["a"].replica.get("default", b"k").unwrap().siblings[0].clone();
    // A buggy a-like peer: a write that supersedes b's write with an older stamp.
    let c_id = w.nodes["c"].id;
    let mut context = conflict::VersionVector::new();
    context.add_dot(&b_write.dot);
    let bad = leader_core::LogEntry {
        table: "default".into(),
        key: b"k".to_vec(),
        write: conflict::Write {
            dot: conflict::Dot {
                replica: c_id,
                seq: Seq(1),
            },
            hlc: conflict::Hlc::new(b_write.hlc.physical_ms() - 1000, 0),
            context,
            value: Value::Bytes(b"from-c".to_vec()),
        },
    };
    w.connect("a", "c");
    w.deliver();
    w.inject_batch("a", "c", vec![bad]);
    let a = &w.nodes["a"];
    assert_eq!(a.replica.counters().causality_violations, 1);
    assert!(a.alarms.iter().any(|x| matches!(
        x,
        Alarm::CausalityViolation { origin, sibling, .. } if origin == "c" && *sibling == b_write.dot
    )));
    assert_eq!(
        w.read("a", "default", "k"),
        bytes("from-c"),
        "applied all the same"
    );
}

/// Issue 11, item 8: a key's context may not grow past what storage decodes
/// (`MAX_VV_ENTRIES`): a replicated write that would make it so is logged, not applied.
#[test]
fn a_replicated_write_that_would_overgrow_its_keys_context_is_quarantined() {
    let mut w = world();
    w.connect("a", "c");
    w.deliver();
    let c_id = w.nodes["c"].id;
    // Two writes whose contexts together name more replicas than storage reads back; each
    // alone is within the wire limit.
    let context = |base: u128| {
        let mut vv = conflict::VersionVector::new();
        for i in 0..(conflict::MAX_VV_ENTRIES as u128 - 1) {
            vv.add_dot(&conflict::Dot {
                replica: ReplicaId::from_u128(base + i),
                seq: Seq(1),
            });
        }
        vv
    };
    let entry = |seq, ctx| leader_core::LogEntry {
        table: "mv".into(),
        key: b"k".to_vec(),
        write: conflict::Write {
            dot: conflict::Dot {
                replica: c_id,
                seq: Seq(seq),
            },
            hlc: conflict::Hlc::new(1_700_000_000_000 + seq, 0),
            context: ctx,
            value: Value::Bytes(b"v".to_vec()),
        },
    };
    w.inject_batch(
        "a",
        "c",
        vec![entry(1, context(1_000)), entry(2, context(10_000))],
    );
    let a = &w.nodes["a"];
    let state = a.replica.get("mv", b"k").unwrap();
    assert!(
        state.context.len() <= conflict::MAX_VV_ENTRIES,
        "{}",
        state.context.len()
    );
    assert_eq!(a.replica.counters().context_overflows, 1);
    assert_eq!(a.replica.applied().get(c_id), Seq(2), "logged all the same");
    assert!(
        a.alarms
            .iter()
            .any(|x| matches!(x, Alarm::ContextTooLarge { .. }))
    );
}

/// Issue 11, item 3: under a stream of writes to one key, a read never waits for a commit.
/// Before, a read waited while the key held a write of this region that was not durable
/// (`read_ready` false), which with a write in every batch could be any number of commits;
/// now it is served at once from the newest durable state, which is never older than the
/// last acknowledged write and never holds a write that is not durable.
#[test]
fn reads_of_a_hot_key_are_served_from_its_newest_durable_state_without_waiting() {
    let mut w = world();
    w.auto_sync = false;
    let a_id = w.nodes["a"].id;
    let mut last_acked = None;
    for round in 0..20 {
        // Two writes per commit: one in the batch in flight, one staged behind it.
        w.write("a", "default", "hot", Some(&format!("v{round}")));
        w.write("a", "default", "hot", Some(&format!("w{round}")));
        let r = &w.nodes["a"].replica;
        let state = r.read("default", b"hot").cloned().unwrap_or_default();
        assert!(
            state.context.get(a_id) <= r.applied().get(a_id),
            "round {round}: the read shows a write that is not durable"
        );
        if let Some(dot) = last_acked {
            assert!(
                state.context.covers(&dot),
                "round {round}: older than the last ack"
            );
        }
        // One commit completes: its writes are acknowledged.
        let persisted = w.node("a").complete_persist().unwrap();
        w.handle("a", persisted);
        let acked = w.nodes["a"]
            .replies
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.dot)
            .max();
        last_acked = acked;
        let r = &w.nodes["a"].replica;
        let state = r.read("default", b"hot").cloned().unwrap_or_default();
        assert!(
            state.context.covers(&acked.unwrap()),
            "round {round}: sees the ack"
        );
        assert!(state.context.get(a_id) <= r.applied().get(a_id));
    }
}

/// Issue 11, item 6: which resolver's writes a region applies. The same resolver, or an older
/// version of it (a version changes what `resolve` answers, not what a key stores); never a
/// newer version (the region must upgrade first) nor another resolver (it may prune
/// differently).
#[test]
fn a_resolver_accepts_its_own_and_older_versions_only() {
    use leader_core::resolver_accepts;
    assert!(resolver_accepts("lww@1", "lww@1"));
    assert!(resolver_accepts("counter@2", "counter@1"));
    assert!(!resolver_accepts("counter@1", "counter@2"));
    assert!(!resolver_accepts("lww@1", "multi-value@1"));
    assert!(!resolver_accepts("multi-value@2", "lww@1"));
    assert!(!resolver_accepts("lww@2", "lww"), "an id without a version");
    assert!(!resolver_accepts("my@res@2", "my@res@x"));
    assert!(resolver_accepts("my@res@2", "my@res@1"));
}

/// Issue 11, item 2: two processes with one replica id (a copied data directory) give one
/// dot to two different writes. The second to arrive is dropped as a duplicate, which alone
/// would go unseen; it is compared with the write held under that dot and raises a
/// split-brain alarm naming the replica.
#[test]
fn a_second_write_under_a_dot_already_held_raises_a_split_brain_alarm() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    w.write("b", "default", "k", Some("from-b"));
    w.deliver();
    let b_id = w.nodes["b"].id;
    let held = w.nodes["b"].disk.log.values().next().unwrap().clone();
    // The same write again (a relay, a resend): a plain duplicate, no alarm.
    let conn = w.conns[&pair("a", "b")];
    let batch = |entry: leader_core::LogEntry| {
        PeerMsg::Batch(leader_core::Batch {
            origin: b_id,
            origin_region: "b".into(),
            entries: vec![entry],
        })
    };
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn,
            msg: batch(held.clone()),
        },
    );
    assert!(
        !w.nodes["a"]
            .alarms
            .iter()
            .any(|x| matches!(x, Alarm::SplitBrain { .. }))
    );
    // A twin of b wrote something else as b:1.
    let mut twin = held;
    twin.write.value = Value::Bytes(b"from-the-twin".to_vec());
    w.handle(
        "a",
        Event::Frame {
            peer: "b".into(),
            conn,
            msg: batch(twin),
        },
    );
    let a = &w.nodes["a"];
    assert_eq!(a.replica.counters().dots_reused, 1);
    assert!(a.alarms.iter().any(|x| matches!(
        x,
        Alarm::SplitBrain { region, live, refused } if region == "b" && *live == b_id && *refused == b_id
    )));
    assert_eq!(
        w.read("a", "default", "k"),
        bytes("from-b"),
        "the first write stays"
    );
}

/// Issue 11, item 1 (bounded lag under overload): a region writes faster than peer `b` applies
/// (b never fsyncs, so it never acknowledges). Before flow control, every write was taken and
/// b's lag grew without bound (this test failed at the sixth write). Now, with
/// `pace_lag_writes = 5`, the sixth write waits until b catches up, is refused `Overloaded`
/// when its timeout passes first, and is taken at once when b makes no progress for the relay
/// delay (b is no longer in sync) or when b disconnects; a peer that comes back far behind
/// catches up without pacing writes, and paces them again once within the bound.
#[test]
fn writes_are_paced_to_an_in_sync_peer_that_lags_and_the_lag_stays_bounded() {
    let mut w = world_with(|o| {
        o.pace_lag_writes = 5;
        o.relay_delay_ms = 5_000;
    });
    w.auto_sync = false;
    w.mesh();
    w.deliver();
    let a_id = w.nodes["a"].id;
    let lag_at = |w: &World, peer: &str| {
        let acked = w.nodes["a"]
            .replica
            .peer_views(w.now)
            .into_iter()
            .find(|v| v.region == peer)
            .unwrap()
            .acked
            .get(a_id);
        w.nodes["a"].replica.received().get(a_id).0 - acked.0
    };
    let settle = |w: &mut World, regions: &[&str]| {
        for _ in 0..4 {
            for r in regions {
                w.sync(r);
            }
            w.deliver();
        }
    };
    // Five writes: c keeps up, b applies them in memory but never makes them durable.
    for i in 0..5 {
        w.write("a", "default", &format!("k{i}"), Some("v"));
    }
    settle(&mut w, &["a", "c"]);
    assert_eq!(lag_at(&w, "b"), 5);
    assert_eq!(lag_at(&w, "c"), 0);
    assert_eq!(w.nodes["a"].replies.len(), 5);

    // The sixth waits for b: nothing is taken (no dot), nothing is answered.
    let paced = w.write("a", "default", "k5", Some("v"));
    settle(&mut w, &["a", "c"]);
    assert!(w.reply("a", paced).is_none(), "paced, not answered");
    assert_eq!(
        w.nodes["a"].replica.received().get(a_id),
        Seq(5),
        "no dot taken"
    );
    assert_eq!(w.nodes["a"].replica.counters().writes_paced, 1);
    // b catches up: the write is taken, made durable and answered.
    settle(&mut w, &["a", "b", "c"]);
    let receipt = w.reply("a", paced).unwrap().as_ref().unwrap();
    assert_eq!(receipt.dot.seq, Seq(6));
    assert_eq!(lag_at(&w, "b"), 0);

    // b falls behind again; a paced write whose timeout passes first is refused, unwritten.
    for i in 0..5 {
        w.write("a", "default", &format!("again{i}"), Some("v"));
    }
    settle(&mut w, &["a", "c"]);
    let refused = w.write("a", "default", "late", Some("v"));
    assert!(
        w.nodes["a"].replica.poll_timeout() <= Some(w.now.mono_ms + 1_000),
        "the machine asks to be woken for the paced write's deadline"
    );
    w.advance(1_000);
    assert_eq!(
        w.reply("a", refused),
        Some(&Err(WriteError::Overloaded {
            peer: "b".into(),
            lag_writes: 5,
            limit: 5
        }))
    );
    assert_eq!(
        w.nodes["a"].replica.received().get(a_id),
        Seq(11),
        "not written"
    );
    assert_eq!(w.nodes["a"].replica.counters().writes_overloaded, 1);
    assert!(
        w.reply("a", refused)
            .unwrap()
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("pace_lag_writes"),
        "the error names the limit"
    );

    // b makes no progress for the relay delay: it is out of sync and paces nothing; the write
    // that was waiting is taken when that time comes, without any other event.
    let waiting = w.write_timeout(
        "a",
        "default",
        "waits",
        Value::Bytes(b"v".to_vec()),
        Durability::Local,
        60_000,
    );
    let start = w.now.mono_ms;
    while w.reply("a", waiting).is_none() && w.now.mono_ms < start + 10_000 {
        // Only the machine's own timers move time here (no busy loop: each is in the future).
        let due = w.nodes["a"].replica.poll_timeout().unwrap();
        assert!(due > w.now.mono_ms, "no busy loop while paced");
        w.now.wall_ms += due - w.now.mono_ms;
        w.now.mono_ms = due;
        w.handle("a", Event::Tick);
        settle(&mut w, &["a", "c"]);
    }
    assert!(
        matches!(w.reply("a", waiting), Some(Ok(_))),
        "taken once b stalled for the relay delay: {:?}",
        w.reply("a", waiting)
    );
    assert!(w.now.mono_ms - start <= 5_000, "within the relay delay");
    for i in 0..20 {
        let id = w.write("a", "default", &format!("free{i}"), Some("v"));
        settle(&mut w, &["a", "c"]);
        assert!(matches!(w.reply("a", id), Some(Ok(_))), "b is out of sync");
    }
    assert_eq!(lag_at(&w, "b"), 26);

    // b comes back: it is far behind, so it catches up without pacing writes here...
    w.cut("a", "b");
    w.connect("a", "b");
    let during = w.write("a", "default", "during", Some("v"));
    w.sync("a");
    assert!(
        matches!(w.reply("a", during), Some(Ok(_))),
        "a lagging returning peer paces nothing"
    );
    settle(&mut w, &["a", "b", "c"]);
    assert_eq!(lag_at(&w, "b"), 0);
    // ... and once caught up it is in sync again: six unacknowledged writes pace the sixth.
    for i in 0..5 {
        w.write("a", "default", &format!("sync{i}"), Some("v"));
    }
    settle(&mut w, &["a", "c"]);
    let paced = w.write("a", "default", "sync5", Some("v"));
    settle(&mut w, &["a", "c"]);
    assert!(w.reply("a", paced).is_none(), "paced again");
    // A disconnected peer paces nothing: the write is taken at once.
    w.cut("a", "b");
    w.sync("a");
    assert!(matches!(w.reply("a", paced), Some(Ok(_))));
}

/// The queue of paced writes is bounded: the write past [`leader_core::MAX_PACED_WRITES`] is
/// refused at once, and the queued ones keep their order.
#[test]
fn the_queue_of_paced_writes_is_bounded() {
    let mut w = world_with(|o| o.pace_lag_writes = 1);
    w.auto_sync = false;
    w.mesh();
    w.deliver();
    w.write("a", "default", "first", Some("v"));
    w.sync("a");
    w.deliver();
    let queued: Vec<u64> = (0..leader_core::MAX_PACED_WRITES)
        .map(|i| w.write("a", "default", &format!("q{i}"), Some("v")))
        .collect();
    let over = w.write("a", "default", "over", Some("v"));
    assert!(matches!(
        w.reply("a", over),
        Some(Err(WriteError::Overloaded { .. }))
    ));
    assert!(queued.iter().all(|id| w.reply("a", *id).is_none()));
    // b and c catch up one write at a time: the queue drains in arrival order.
    for _ in 0..3 {
        for r in REGIONS {
            w.sync(r);
        }
        w.deliver();
    }
    let answered: Vec<Seq> = queued
        .iter()
        .map_while(|id| w.reply("a", *id))
        .map(|r| r.as_ref().unwrap().dot.seq)
        .collect();
    assert!(
        !answered.is_empty(),
        "the queue drains as the peers catch up"
    );
    let expected: Vec<Seq> = (2..2 + answered.len() as u64).map(Seq).collect();
    assert_eq!(answered, expected, "in arrival order");
    let later = &queued[answered.len()..];
    assert!(
        later.iter().all(|id| w.reply("a", *id).is_none()),
        "a prefix is answered"
    );
}

/// Client writes accepted and not answered yet are bounded: with the disk stalled, the write
/// past [`leader_core::limits::MAX_UNANSWERED_WRITES`] is refused at once (`503 overloaded`)
/// without taking a dot, and the others are all answered once the disk catches up.
#[test]
fn unanswered_writes_are_bounded() {
    let mut w = world();
    w.auto_sync = false;
    let taken: Vec<u64> = (0..leader_core::limits::MAX_UNANSWERED_WRITES)
        .map(|i| w.write("a", "default", &format!("k{i}"), Some("v")))
        .collect();
    let over = w.write("a", "default", "over", Some("v"));
    assert_eq!(
        w.reply("a", over),
        Some(&Err(WriteError::Backlogged {
            limit: leader_core::limits::MAX_UNANSWERED_WRITES
        }))
    );
    assert_eq!(w.nodes["a"].replica.counters().writes_overloaded, 1);
    w.sync("a");
    w.sync("a");
    let replies: std::collections::BTreeMap<u64, Seq> = w.nodes["a"]
        .replies
        .iter()
        .filter_map(|(id, r)| Some((*id, r.as_ref().ok()?.dot.seq)))
        .collect();
    let seqs: Vec<Seq> = taken.iter().map(|id| replies[id]).collect();
    let expected: Vec<Seq> = (1..=taken.len() as u64).map(Seq).collect();
    assert_eq!(seqs, expected, "the refused write took no dot");
}

/// The kit's disk keeps key states back until a checkpoint, as `leader::storage` does; a
/// restart loses them and rebuilds them by replaying the log after the last checkpoint, in
/// chunks, so the restarted region has exactly the states it had.
#[test]
fn a_restart_between_checkpoints_rebuilds_the_kept_back_states_from_the_log() {
    let mut w = world();
    let limits = leader_core::testkit::DiskLimits {
        checkpoint_keys: 1_000,
        checkpoint_entries: 7,
        checkpoint_bytes: usize::MAX,
        replay_chunk_bytes: 300,
    };
    for node in w.nodes.values_mut() {
        node.disk.limits = limits;
    }
    w.mesh();
    w.deliver();
    for i in 0..10 {
        let region = REGIONS[i % 3];
        w.write(
            region,
            "default",
            &format!("k{}", i % 4),
            Some(&format!("v{i}")),
        );
        w.write(region, "mv", "m", Some(&format!("{region}{i}")));
        w.deliver();
    }
    let before = w.nodes["a"].replica.digest();
    let disk = &w.nodes["a"].disk;
    assert!(disk.checkpoints > 0, "a checkpoint was taken");
    assert!(disk.kept_back() > 0, "states are kept back since it");
    assert_ne!(disk.keys, disk.keys_now(), "the key table lags the log");
    let (_, recovery) = disk
        .clone()
        .recover(opts("a", w.nodes["a"].id), &Registry::with_builtins())
        .unwrap();
    assert!(
        recovery.chunks > 1,
        "the replay came in chunks: {recovery:?}"
    );
    w.node("a").restart(
        opts("a", ReplicaId::from_u128(1)),
        &Registry::with_builtins(),
    );
    assert_eq!(w.nodes["a"].replica.digest(), before);
    assert_eq!(
        w.nodes["a"].disk.kept_back(),
        0,
        "a crash loses what was kept back"
    );
}

/// Log reads follow `leader::storage::Store::read_log`: an entry is taken before the budget
/// is looked at, so a read passes the budget by at most its last entry, and returns one
/// entry even when that alone is over it.
#[test]
fn a_log_read_takes_entries_until_the_budget_is_reached() {
    let mut w = world();
    for i in 0..5 {
        w.write("a", "default", &format!("k{i}"), Some("0123456789"));
    }
    let a = w.nodes["a"].id;
    let disk = &w.nodes["a"].disk;
    let size = disk.log.values().next().unwrap().wire_size();
    let read = |max| disk.read_log(a, Seq(1), Seq(5), max).len();
    assert_eq!(read(1), 1, "one entry even over the budget");
    assert_eq!(read(size), 1, "the budget reached by the first entry");
    assert_eq!(read(size + 1), 2, "the second entry passes the budget");
    assert_eq!(read(usize::MAX), 5);
    assert!(disk.read_log(a, Seq(4), Seq(3), usize::MAX).is_empty());
}

/// A world whose table `ctr` is kept by the example counter resolver.
fn counter_world() -> World {
    let mut registry = Registry::with_builtins();
    registry
        .register(std::sync::Arc::new(conflict::examples::Counter))
        .unwrap();
    let opts = REGIONS.iter().enumerate().map(|(i, r)| {
        let mut o = opts(r, ReplicaId::from_u128(i as u128 + 1));
        o.tables.insert("ctr".into(), "counter".into());
        o
    });
    Cluster::new(opts, &registry)
}

/// Sends `Event::ClientAdd` of `by` to `table/key` at `region`; returns the request id.
fn add(w: &mut World, region: &str, table: &str, key: &str, by: i64) -> u64 {
    let id = w.next_id();
    w.handle(
        region,
        Event::ClientAdd {
            id,
            table: table.into(),
            key: key.as_bytes().to_vec(),
            by,
            durability: Durability::Local,
            timeout_ms: 1_000,
        },
    );
    id
}

/// Redis's INCRBY through the machine: additions at one region in the same step build on one
/// another (the second sees the first before either is durable), additions at different
/// regions at the same time all count after the merge, and each receipt carries the total.
#[test]
fn additions_to_a_counter_build_on_each_other_here_and_merge_across_regions() {
    let mut w = counter_world();
    w.mesh();
    w.deliver();
    w.auto_sync = false;
    let first = add(&mut w, "a", "ctr", "k", 5);
    let second = add(&mut w, "a", "ctr", "k", 7);
    let at_b = add(&mut w, "b", "ctr", "k", -3);
    for r in REGIONS {
        w.sync(r);
    }
    assert_eq!(receipt(&w, "a", first).total, Some(5));
    assert_eq!(receipt(&w, "a", second).total, Some(12));
    assert_eq!(receipt(&w, "b", at_b).total, Some(-3));
    w.auto_sync = true;
    w.deliver();
    for r in REGIONS {
        let resolved = w.read(r, "ctr", "k");
        assert_eq!(conflict::examples::Counter::read(&resolved), 9, "{r}");
    }
    // The next addition anywhere starts from the merged total and supersedes every sibling.
    let next = add(&mut w, "c", "ctr", "k", 1);
    w.deliver();
    assert_eq!(receipt(&w, "c", next).total, Some(10));
    let state = w.nodes["a"].replica.get("ctr", b"k").unwrap().clone();
    assert_eq!(state.siblings.len(), 1, "{state:?}");
    assert_eq!(w.digests().len(), 1);
}

#[test]
fn an_addition_to_a_table_without_counters_or_past_i64_is_refused_and_writes_nothing() {
    let mut w = counter_world();
    let id = add(&mut w, "a", "default", "k", 1);
    match w.reply("a", id) {
        Some(Err(WriteError::NotACounter { table, resolver })) => {
            assert_eq!((table.as_str(), resolver.as_str()), ("default", "lww"));
        }
        other => panic!("expected NotACounter, got {other:?}"),
    }
    let max = add(&mut w, "a", "ctr", "k", i64::MAX);
    assert_eq!(receipt(&w, "a", max).total, Some(i64::MAX));
    let over = add(&mut w, "a", "ctr", "k", 1);
    match w.reply("a", over) {
        Some(Err(WriteError::InvalidValue { reason, .. })) => {
            assert!(reason.contains("overflow"), "{reason}");
        }
        other => panic!("expected an overflow refusal, got {other:?}"),
    }
    assert!(w.nodes["a"].replica.get("default", b"k").is_none());
    let resolved = w.read("a", "ctr", "k");
    assert_eq!(conflict::examples::Counter::read(&resolved), i64::MAX);
}

/// Redis's WAIT through the machine: answered once enough other regions have the write
/// durably (applied is not enough), or at the timeout with the regions that do.
#[test]
fn a_wait_is_answered_once_enough_regions_have_the_write_durably_or_at_its_timeout() {
    let mut w = world();
    w.connect("a", "b");
    w.deliver();
    w.auto_sync = false;
    let id = w.write("a", "default", "k", Some("v"));
    w.sync("a");
    let seq = receipt(&w, "a", id).dot.seq;
    let wait = |w: &mut World, req: u64, regions: usize| {
        let ev = Event::ClientWait {
            id: req,
            seq,
            regions,
            timeout_ms: 1_000,
        };
        w.handle("a", ev);
    };
    let waited = |w: &World, req: u64| {
        w.nodes["a"]
            .waited
            .iter()
            .find(|(id, _)| *id == req)
            .map(|(_, regions)| regions.clone())
    };
    wait(&mut w, 100, 1);
    w.deliver();
    assert_eq!(
        waited(&w, 100),
        None,
        "b applied it but has not made it durable"
    );
    w.sync("b");
    w.deliver();
    assert_eq!(waited(&w, 100), Some(vec!["b".to_owned()]));
    // Two other regions: c is cut off, so the wait runs to its timeout and names b.
    wait(&mut w, 101, 2);
    w.advance(999);
    assert_eq!(waited(&w, 101), None);
    w.advance(2);
    assert_eq!(waited(&w, 101), Some(vec!["b".to_owned()]));
    // Asking for none is answered at once.
    wait(&mut w, 102, 0);
    assert_eq!(waited(&w, 102), Some(vec!["b".to_owned()]));
}

/// `WAIT`s have a bound of their own (they cannot keep writes out), the one past it is
/// answered at once, and a cancelled wait (its client went away) frees its place unanswered.
#[test]
fn waits_are_bounded_apart_from_writes_and_a_cancelled_wait_is_forgotten() {
    use leader_core::limits::MAX_CLIENT_WAITS;
    let mut w = world();
    let id = w.write("a", "default", "k", Some("v"));
    let seq = receipt(&w, "a", id).dot.seq;
    let wait = |w: &mut World, id: u64| {
        let ev = Event::ClientWait {
            id,
            seq,
            regions: 2,
            timeout_ms: u64::MAX,
        };
        w.handle("a", ev);
    };
    for i in 0..MAX_CLIENT_WAITS as u64 {
        wait(&mut w, 1_000_000 + i);
    }
    assert!(
        w.nodes["a"].waited.is_empty(),
        "no peer has the write: every wait waits"
    );
    // Writes are still taken: waits do not count against the unanswered-writes bound.
    let more = w.write("a", "default", "k2", Some("v"));
    assert!(
        matches!(w.reply("a", more), Some(Ok(_))),
        "{:?}",
        w.reply("a", more)
    );
    // One wait past the bound is answered at once, with the regions that have it (none).
    wait(&mut w, 2_000_000);
    assert_eq!(w.nodes["a"].waited, vec![(2_000_000, Vec::new())]);
    // A cancelled wait is never answered, and frees a place: the next one waits.
    w.handle("a", Event::CancelWait { id: 1_000_000 });
    wait(&mut w, 2_000_001);
    assert_eq!(w.nodes["a"].waited.len(), 1, "{:?}", w.nodes["a"].waited);
    w.connect("a", "b");
    w.connect("a", "c");
    w.deliver();
    let answered: Vec<u64> = w.nodes["a"].waited.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        answered.len(),
        MAX_CLIENT_WAITS + 1,
        "every wait but the cancelled one"
    );
    assert!(
        !answered.contains(&1_000_000),
        "the cancelled wait was answered"
    );
}

/// Disk bounds that checkpoint every `entries` log entries and replay in small chunks, so
/// checkpoints, replays and the drops of a truncated log happen within a short script.
fn small_checkpoints(w: &mut World, entries: usize) {
    let limits = leader_core::testkit::DiskLimits {
        checkpoint_keys: 1_000,
        checkpoint_entries: entries,
        checkpoint_bytes: usize::MAX,
        replay_chunk_bytes: 300,
    };
    for node in w.nodes.values_mut() {
        node.disk.limits = limits;
    }
}

/// Item 2 of issue 13: an entry is dropped only once every region has it durably. A region
/// that never connected pins the log of every origin; once it has caught up (and acked),
/// the log start moves to what all three have, and the disk drops those entries.
#[test]
fn the_log_is_truncated_only_once_every_region_has_durably_applied_it() {
    let mut w = world();
    small_checkpoints(&mut w, 4);
    w.connect("a", "b");
    w.deliver();
    for i in 0..10 {
        w.write("a", "default", &format!("k{i}"), Some("x"));
        w.deliver();
    }
    let a = w.nodes["a"].id;
    assert_eq!(w.nodes["b"].replica.applied().get(a), Seq(10));
    for r in ["a", "b"] {
        assert_eq!(
            w.nodes[r].replica.log_start().get(a),
            Seq::ZERO,
            "{r}: c has none of a's writes, so none may go"
        );
        assert_eq!(w.nodes[r].disk.log.len(), 10, "{r} keeps all of them");
    }
    w.connect("a", "c");
    w.connect("b", "c");
    w.deliver();
    w.advance(600);
    for i in 0..10 {
        w.write("a", "default", &format!("after{i}"), Some("y"));
        w.deliver();
    }
    w.advance(600);
    assert_eq!(w.digests().len(), 1);
    for r in REGIONS {
        let n = &w.nodes[r];
        assert_eq!(
            n.replica.log_start().get(a),
            Seq(20),
            "{r}: every region has 1..=20"
        );
        assert!(
            n.disk
                .log
                .keys()
                .all(|(o, s)| *o != a || *s > n.disk.log_start.get(a)),
            "{r}: the disk dropped what its recorded log start covers"
        );
        assert!(
            n.disk.log_start.get(a) > Seq::ZERO,
            "{r}: a checkpoint dropped some"
        );
    }
}

/// The retention bound: a region that stays away is shown approaching it, then the others
/// truncate past it and tell it, when it returns, that it needs a snapshot: never a batch
/// with a gap. A restart of the region that truncated keeps its log start.
#[test]
fn a_region_past_the_retention_bound_is_told_it_needs_a_snapshot_never_sent_a_gap() {
    let mut w = world_with(|o| o.log_retention_bytes = 4_000);
    small_checkpoints(&mut w, 4);
    w.connect("a", "b");
    w.deliver();
    let a = w.nodes["a"].id;
    let view = |w: &World| {
        w.nodes["a"]
            .replica
            .peer_views(w.now)
            .into_iter()
            .find(|v| v.region == "c")
            .unwrap()
    };
    let mut shown_before = None;
    for i in 0..100 {
        w.write("a", "default", &format!("k{i}"), Some("0123456789"));
        w.deliver();
        let v = view(&w);
        if !v.needs_snapshot && v.log_behind_bytes > 2_000 {
            shown_before = Some(v.log_behind_bytes);
        }
    }
    let behind = shown_before.expect("status showed c approaching the bound first");
    assert!(behind <= 4_000 + 64 * 1024, "{behind}");
    let v = view(&w);
    assert!(v.needs_snapshot, "a truncated past c: {v:?}");
    let passed: Vec<_> = w.nodes["a"]
        .alarms
        .iter()
        .filter(|x| matches!(x, Alarm::PeerNeedsSnapshot { peer, .. } if peer == "c"))
        .collect();
    assert_eq!(passed.len(), 1, "one alarm when it happened: {passed:?}");
    assert_eq!(
        w.nodes["a"].replica.counters().peers_truncated_past,
        1,
        "{:?}",
        w.nodes["a"].alarms
    );
    let start = w.nodes["a"].replica.log_start().get(a);
    assert!(
        start > Seq(50),
        "b has everything, so a's log starts late: {start}"
    );
    // A restart keeps what the disk recorded (a checkpoint recorded it).
    let recorded = w.nodes["a"].disk.log_start.clone();
    assert!(recorded.get(a) > Seq::ZERO);
    w.node("a").restart(
        {
            let mut o = opts("a", a);
            o.log_retention_bytes = 4_000;
            o
        },
        &Registry::with_builtins(),
    );
    assert_eq!(w.nodes["a"].replica.log_start(), &recorded);
    w.connect("a", "c");
    let mut frames = Vec::new();
    for _ in 0..100 {
        let Some(f) = w.wire.front().cloned() else {
            break;
        };
        frames.push(f);
        w.deliver_one();
    }
    let to_c: Vec<&PeerMsg> = frames
        .iter()
        .filter(|(from, to, _, _)| from == "a" && to == "c")
        .map(|(_, _, _, m)| m)
        .take_while(|m| !matches!(m, PeerMsg::SnapshotChunk(_)))
        .collect();
    assert!(
        !to_c
            .iter()
            .any(|m| matches!(m, PeerMsg::Batch(b) if b.origin == a)),
        "no batch of a's writes reaches c before a snapshot: they would start after a gap"
    );
    let told = to_c
        .iter()
        .find_map(|m| match m {
            PeerMsg::NeedsSnapshot(n) => Some(n.clone()),
            _ => None,
        })
        .expect("a answers needs snapshot");
    assert_eq!((told.origin, told.from), (a, Seq(1)));
    assert_eq!(
        told.log_start,
        w.nodes["a"].replica.log_start().get(a).next()
    );
    assert!(
        told.log_start > recorded.get(a),
        "never before what the disk recorded"
    );
    assert!(
        w.nodes["c"].alarms.iter().any(
            |x| matches!(x, Alarm::NeedsSnapshot { peer, origin, .. } if peer == "a" && origin == "a")
        ),
        "c raises the alarm: {:?}",
        w.nodes["c"].alarms
    );
    // From there c bootstraps from a snapshot of a and catches up: nothing is needed any more.
    w.deliver();
    w.advance(600);
    let c = &w.nodes["c"];
    assert!(
        c.replica.bootstrap().is_none(),
        "{:?}",
        c.replica.bootstrap()
    );
    assert_eq!(
        c.replica.received().get(a),
        w.nodes["a"].replica.received().get(a)
    );
    assert!(c.replica.snapshot_needed().is_empty());
    assert_eq!(c.replica.digest(), w.nodes["a"].replica.digest());
}

/// A world after ten writes at `a` with every region connected, checkpointing every four log
/// entries, so that every region's log is truncated past the first writes; then `c` is
/// rebuilt on an empty disk (a new replica id) and connected to `peers` only. Snapshot
/// chunks hold about `chunk_bytes` of key states.
fn rebuilt_c(keys: usize, chunk_bytes: usize, peers: &[&str]) -> (World, ReplicaId) {
    let mut w = world_with(|o| o.snapshot_chunk_bytes = chunk_bytes);
    small_checkpoints(&mut w, 4);
    w.mesh();
    w.deliver();
    for i in 0..keys {
        w.write("a", "default", &format!("k{i:03}"), Some("x"));
        w.deliver();
    }
    w.write("b", "mv", "m", Some("from b"));
    w.deliver();
    w.advance(600);
    let a = w.nodes["a"].id;
    assert_eq!(
        w.nodes["a"].replica.log_start().get(a),
        Seq(keys as u64),
        "every region has every write: a's log is truncated to its end"
    );
    w.cut("a", "c");
    w.cut("b", "c");
    let rebuilt = ReplicaId::from_u128(4);
    let mut o = opts("c", rebuilt);
    o.snapshot_chunk_bytes = chunk_bytes;
    w.nodes.insert(
        "c".into(),
        leader_core::testkit::Node::new(o, &Registry::with_builtins()),
    );
    for p in peers {
        w.connect(p, "c");
    }
    (w, rebuilt)
}

/// Delivers frames one by one until `c` has received `n` snapshot chunks.
fn deliver_until_chunks(w: &mut World, n: u64) {
    for _ in 0..10_000 {
        if w.nodes["c"].replica.counters().snapshot_chunks_received >= n {
            return;
        }
        w.deliver_one();
    }
    panic!("c received fewer than {n} chunks");
}

/// A region rebuilt on an empty disk comes back with a new replica id and nothing applied:
/// once the others have truncated (every region had the writes), it cannot catch up from
/// their logs. It is told it needs a snapshot (never streamed a run from the middle of the
/// log: the kit's disk refuses a gap), the region that truncated raises the alarm, and the
/// rebuilt region bootstraps from a snapshot of it, installs it, catches up and converges.
#[test]
fn a_region_rebuilt_on_an_empty_disk_after_truncation_bootstraps_from_a_snapshot() {
    let (mut w, rebuilt) = rebuilt_c(10, 1024, &["a"]);
    w.deliver();
    w.advance(600);
    let a = w.nodes["a"].id;
    let alarms = &w.nodes["c"].alarms;
    assert!(
        alarms.iter().any(|x| matches!(
            x,
            Alarm::NeedsSnapshot { peer, from: Seq(1), log_start: Seq(11), .. } if peer == "a"
        )),
        "{alarms:?}"
    );
    assert!(
        alarms
            .iter()
            .any(|x| matches!(x, Alarm::SnapshotStarted { peer, .. } if peer == "a")),
        "{alarms:?}"
    );
    assert!(
        alarms
            .iter()
            .any(|x| matches!(x, Alarm::SnapshotInstalled { peer, keys: 11, .. } if peer == "a")),
        "{alarms:?}"
    );
    assert!(
        w.nodes["a"]
            .alarms
            .iter()
            .any(|x| matches!(x, Alarm::PeerNeedsSnapshot { peer, .. } if peer == "c")),
        "{:?}",
        w.nodes["a"].alarms
    );
    assert!(w.nodes["a"].snapshot_reads >= 1);
    let c = &w.nodes["c"];
    assert!(
        c.replica.bootstrap().is_none(),
        "{:?}",
        c.replica.bootstrap()
    );
    assert_eq!(c.replica.received().get(a), Seq(10));
    assert_eq!(
        c.replica.digest(),
        w.nodes["a"].replica.digest(),
        "the same key states as the region it bootstrapped from"
    );
    assert_eq!(w.read("c", "mv", "m"), bytes("from b"));
    // It writes again, under its new replica id, and the others get it.
    w.connect("b", "c");
    w.deliver();
    w.write("c", "default", "k000", Some("after"));
    w.deliver();
    w.advance(600);
    assert_eq!(w.read("a", "default", "k000"), bytes("after"));
    assert_eq!(w.nodes["a"].replica.received().get(rebuilt), Seq(1));
    assert_eq!(w.digests().len(), 1, "converged");
}

/// While the transfer lasts, the region takes no writes (the reply says why); it still serves
/// a snapshot to others (two regions past each other's bound need each other), saying that
/// its states may reflect up to what its own chunks did; the chunks arrive in order, each
/// recorded by a checkpoint.
#[test]
fn a_region_being_bootstrapped_takes_no_writes_and_serves_with_its_upper_bound() {
    let (mut w, _) = rebuilt_c(12, 100, &["a"]);
    deliver_until_chunks(&mut w, 1);
    w.auto_sync = false;
    assert!(w.nodes["c"].replica.bootstrap().is_some());
    let id = w.write("c", "default", "x", Some("refused"));
    match w.reply("c", id) {
        Some(Err(WriteError::Bootstrapping { progress })) => {
            assert!(progress.contains("from a"), "{progress}")
        }
        other => panic!("{other:?}"),
    }
    // b asks c for a snapshot: c serves its checkpoint, bounded above by its own chunks.
    w.connect("b", "c");
    w.deliver();
    assert!(
        w.nodes["c"].replica.bootstrap().is_some(),
        "c's disk is held"
    );
    let conn = w.conns[&pair("b", "c")];
    let req = leader_core::SnapshotRequest {
        after: None,
        max_bytes: 1000,
        low: None,
        partial_ok: true,
    };
    w.handle(
        "c",
        Event::Frame {
            peer: "b".into(),
            conn,
            msg: PeerMsg::SnapshotRequest(req),
        },
    );
    let high = w.nodes["c"].replica.bootstrap().unwrap().high.clone();
    assert!(!high.is_empty());
    assert!(
        w.wire.iter().any(|(f, t, _, m)| f == "c"
            && t == "b"
            && matches!(m, PeerMsg::SnapshotChunk(ch) if ch.upper.dominates(&high))),
        "{:?}",
        w.wire
    );
    w.auto_sync = true;
    for _ in 0..40 {
        w.sync("a");
        w.sync("b");
        w.sync("c");
        w.deliver();
    }
    w.advance(600);
    let c = &w.nodes["c"];
    assert!(c.replica.bootstrap().is_none());
    assert!(
        c.replica.counters().snapshot_chunks_received >= 3,
        "{:?}",
        c.replica.counters()
    );
    assert_eq!(c.replica.digest(), w.nodes["a"].replica.digest());
}

/// The receiver dies in the middle of the transfer: its restart resumes after the last chunk
/// it had made durable, not from the first key, and the result is the same.
#[test]
fn a_snapshot_transfer_resumes_after_the_receiver_crashes() {
    let (mut w, rebuilt) = rebuilt_c(30, 100, &["a"]);
    // Let a few chunks arrive and persist, then crash c.
    deliver_until_chunks(&mut w, 4);
    let recorded = w.nodes["c"]
        .disk
        .bootstrap
        .clone()
        .expect("progress recorded");
    assert!(
        recorded.keys > 0 && recorded.after.is_some(),
        "{recorded:?}"
    );
    w.cut("a", "c");
    w.node("c").crash();
    let mut o = opts("c", rebuilt);
    o.snapshot_chunk_bytes = 100;
    w.node("c").restart(o, &Registry::with_builtins());
    let resumed = w.nodes["c"]
        .replica
        .bootstrap()
        .cloned()
        .expect("still bootstrapping");
    assert_eq!(
        resumed.after, recorded.after,
        "resumes from the recorded key"
    );
    let sent_before = w.nodes["a"].replica.counters().snapshot_chunks_sent;
    w.connect("a", "c");
    w.deliver();
    w.advance(600);
    let c = &w.nodes["c"];
    assert!(
        c.replica.bootstrap().is_none(),
        "{:?}",
        c.replica.bootstrap()
    );
    let total = c.replica.counters().snapshot_chunks_received;
    let sent_after = w.nodes["a"].replica.counters().snapshot_chunks_sent - sent_before;
    assert_eq!(
        sent_after, total,
        "after the restart only the rest was sent"
    );
    assert!(
        sent_before + sent_after < 2 * total + 4,
        "{sent_before} + {sent_after}"
    );
    assert_eq!(c.replica.digest(), w.nodes["a"].replica.digest());
}

/// The link to the source is cut in the middle of the transfer: the next request goes to
/// another region, from the last key received, and the chunks of the two sources (which
/// reflect different vectors) install to a state that converges once caught up.
#[test]
fn a_snapshot_transfer_continues_from_another_region_when_the_link_is_cut() {
    let (mut w, _) = rebuilt_c(30, 100, &["a", "b"]);
    deliver_until_chunks(&mut w, 3);
    let source = w.nodes["c"]
        .replica
        .bootstrap()
        .and_then(|b| b.source.clone())
        .expect("fetching");
    let other = if source == "a" { "b" } else { "a" };
    // The link to the source goes: the next request goes to the other region at once (not
    // after the request's timeout), from the last key received.
    let after = w.nodes["c"]
        .replica
        .bootstrap()
        .and_then(|b| b.after.clone());
    w.cut(&source, "c");
    assert!(
        w.wire.iter().any(|(f, t, _, m)| f == "c"
            && t == other
            && matches!(m, PeerMsg::SnapshotRequest(r) if r.after == after)),
        "{:?}",
        w.wire
    );
    // More writes at the other region meanwhile, so its chunks reflect a newer vector.
    for i in 0..5 {
        w.write(other, "default", &format!("k{i:03}"), Some("newer"));
    }
    w.deliver();
    w.advance(600);
    let c = &w.nodes["c"];
    assert!(
        c.replica.bootstrap().is_none(),
        "{:?}",
        c.replica.bootstrap()
    );
    assert_eq!(w.read("c", "default", "k000"), bytes("newer"));
    w.connect(&source, "c");
    w.deliver();
    w.advance(600);
    assert_eq!(w.digests().len(), 1, "converged");
}

/// While a region fetches a snapshot from us, our log is kept from the vector it will
/// install (the pin), although the other regions keep writing and every one of them has
/// everything: its catch-up after the install finds the writes made meanwhile, with no
/// second round.
#[test]
fn the_source_keeps_its_log_for_a_region_fetching_a_snapshot() {
    let (mut w, _) = rebuilt_c(30, 100, &["a"]);
    deliver_until_chunks(&mut w, 2);
    let a = w.nodes["a"].id;
    let start = w.nodes["a"].replica.log_start().get(a);
    // a and b write on while c fetches; both have everything, yet a keeps its log for c.
    for i in 0..20 {
        w.write("a", "default", &format!("n{i}"), Some("during"));
        w.sync("a");
        w.sync("b");
    }
    assert_eq!(
        w.nodes["a"].replica.log_start().get(a),
        start,
        "the log start stays at the pin"
    );
    w.deliver();
    w.advance(600);
    w.advance(1_100);
    let c = &w.nodes["c"];
    assert!(
        c.replica.bootstrap().is_none(),
        "{:?}",
        c.replica.bootstrap()
    );
    let rounds = c
        .alarms
        .iter()
        .filter(|x| matches!(x, Alarm::SnapshotStarted { .. }))
        .count();
    assert_eq!(rounds, 1, "{:?}", c.alarms);
    assert_eq!(c.replica.digest(), w.nodes["a"].replica.digest());
    assert_eq!(c.replica.received().get(a), Seq(50));
}

/// Lets acks and heartbeats carry every region's durable vector to every other, and one
/// collection pass run everywhere.
fn settle_for_collection(w: &mut World) {
    for _ in 0..4 {
        w.advance(600);
    }
}

/// Issue 13, item 4: deletes every region has durably applied are collected, and the keys
/// they leave empty go, in memory and on disk: deleting every key brings the key count back
/// to 0 everywhere once the cluster is quiet. A restart does not bring them back.
#[test]
fn deleting_every_key_collects_them_once_every_region_has_the_deletes() {
    let mut w = world();
    w.mesh();
    w.deliver();
    for i in 0..10 {
        w.write("a", "default", &format!("k{i}"), Some("v"));
        w.write("b", "mv", &format!("m{i}"), Some("v"));
    }
    w.deliver();
    for i in 0..10 {
        w.write("a", "default", &format!("k{i}"), None);
        w.write("c", "mv", &format!("m{i}"), None);
    }
    w.deliver();
    for node in w.nodes.values() {
        assert_eq!(node.replica.keys().count(), 20, "tombstones until stable");
    }
    settle_for_collection(&mut w);
    for (name, node) in &w.nodes {
        assert_eq!(node.replica.keys().count(), 0, "{name} collected every key");
        assert_eq!(node.replica.counters().keys_collected, 20, "{name}");
        assert!(
            node.disk.keys_now().is_empty(),
            "{name}'s disk dropped them"
        );
    }
    assert_eq!(w.digests().len(), 1);
    // Reading a collected key still returns a context that covers its delete.
    let a = w.nodes["a"].id;
    let ctx = w.nodes["b"].replica.read_context(None);
    assert!(ctx.covers(&Dot::new(a, Seq(20))), "{ctx:?}");
    let opts_a = w.nodes["a"].replica.options().clone();
    w.node("a").crash();
    w.node("a").restart(opts_a, &Registry::with_builtins());
    assert_eq!(
        w.nodes["a"].replica.keys().count(),
        0,
        "a restart keeps them gone"
    );
    assert!(
        w.nodes["a"]
            .replica
            .read_context(None)
            .covers(&Dot::new(a, Seq(20)))
    );
}

/// A region away pins collection: the others keep the delete (they cannot know what the
/// region wrote meanwhile). A write it made concurrently with the delete, stamped later,
/// wins over it everywhere once it returns; then the delete is gone from every region and
/// the key holds the write alone, the same everywhere.
#[test]
fn a_region_away_pins_collection_and_its_concurrent_write_resolves_the_same_everywhere() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.write("a", "default", "k", Some("v1"));
    w.deliver();
    w.cut("a", "c");
    w.cut("b", "c");
    w.write("a", "default", "k", None);
    w.deliver();
    w.advance(1_000);
    w.write("c", "default", "k", Some("from c, later"));
    w.deliver();
    settle_for_collection(&mut w);
    for r in ["a", "b"] {
        assert_eq!(
            w.nodes[r].replica.counters().tombstones_collected,
            0,
            "{r} waits for c"
        );
        assert_eq!(w.read(r, "default", "k"), Resolved::Absent);
    }
    w.connect("a", "c");
    w.connect("b", "c");
    w.deliver();
    settle_for_collection(&mut w);
    for r in ["a", "b", "c"] {
        assert_eq!(w.read(r, "default", "k"), bytes("from c, later"), "{r}");
    }
    assert_eq!(w.digests().len(), 1, "converged");
}

/// A multi-value write carrying a context read before a delete, made after every region
/// collected the delete, ends the same everywhere: the write alone (the delete, stable, is
/// no sibling of it any more), and the key's context still covers the delete.
#[test]
fn a_write_with_a_context_read_before_a_collected_delete_converges() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.write("a", "mv", "k", Some("v1"));
    w.deliver();
    let before = w.nodes["b"]
        .replica
        .get("mv", b"k")
        .unwrap()
        .context
        .clone();
    w.write("a", "mv", "k", None);
    w.deliver();
    settle_for_collection(&mut w);
    assert!(w.nodes.values().all(|n| n.replica.keys().count() == 0));
    let id = w.next_id();
    w.handle(
        "b",
        Event::ClientWrite {
            id,
            table: "mv".into(),
            key: b"k".to_vec(),
            value: Value::Bytes(b"v2".to_vec()),
            context: Some(before),
            durability: Durability::Local,
            timeout_ms: 1_000,
        },
    );
    w.deliver();
    settle_for_collection(&mut w);
    for r in ["a", "b", "c"] {
        assert_eq!(w.read(r, "mv", "k"), bytes("v2"), "{r}");
    }
    assert_eq!(w.digests().len(), 1, "converged");
}

/// The value a quorum read's answer resolves to.
fn answer_value(w: &World, region: &str, id: u64) -> (Resolved, Vec<String>) {
    let a = match w.read_answer(region, id) {
        Some(Ok(a)) => a,
        other => panic!("read {id} at {region}: expected an answer, got {other:?}"),
    };
    let resolver = w.nodes[region]
        .replica
        .resolver("default")
        .expect("default table")
        .clone();
    (a.state.resolve(resolver.as_ref()), a.answered.clone())
}

#[test]
fn a_quorum_read_sees_a_quorum_write_made_elsewhere_through_a_third_region() {
    assert_eq!(ReadLevel::Quorum.peers_needed(3), 1);
    assert_eq!(ReadLevel::Quorum.peers_needed(5), 2);
    assert_eq!(ReadLevel::All.peers_needed(5), 4);
    assert_eq!(ReadLevel::One.peers_needed(5), 0);
    let mut w = world();
    w.mesh();
    w.deliver();
    // The direct link between the writer's region and the reader's is cut.
    w.cut("a", "b");
    let wid = w.write_with(
        "a",
        "default",
        "k",
        Value::Bytes(b"v".to_vec()),
        Durability::Quorum,
    );
    w.deliver();
    assert_eq!(receipt(&w, "a", wid).durable_in, vec!["a", "c"]);
    // b has not got it (c relays it only after the relay delay): a local read misses it...
    let local = w.read_at("b", "default", "k", ReadLevel::One, 1_000);
    assert_eq!(
        answer_value(&w, "b", local),
        (Resolved::Absent, vec!["b".into()])
    );
    // ...a quorum read does not: c answers for the majority {b, c}, which meets {a, c}.
    let id = w.read_at("b", "default", "k", ReadLevel::Quorum, 1_000);
    assert!(
        w.read_answer("b", id).is_none(),
        "answered before any region did"
    );
    w.deliver();
    assert_eq!(
        answer_value(&w, "b", id),
        (bytes("v"), vec!["b".into(), "c".into()])
    );
    // Read repair: b holds the write now, without claiming a's log (its stream brings that).
    assert_eq!(w.read("b", "default", "k"), bytes("v"));
    assert_eq!(w.nodes["b"].replica.counters().read_repairs, 1);
    let a_id = w.nodes["a"].id;
    assert_eq!(w.nodes["b"].replica.applied().get(a_id), Seq::ZERO);
    // The key's context in the answer can be written back at b at once.
    let ctx = match w.read_answer("b", id) {
        Some(Ok(a)) => a.state.context.clone(),
        other => panic!("{other:?}"),
    };
    let rid = w.next_id();
    w.handle(
        "b",
        Event::ClientWrite {
            id: rid,
            table: "default".into(),
            key: b"k".to_vec(),
            value: Value::Bytes(b"w".to_vec()),
            context: Some(ctx),
            durability: Durability::Local,
            timeout_ms: 1_000,
        },
    );
    assert!(
        !receipt(&w, "b", rid).conflict,
        "the write-back supersedes what the quorum read saw"
    );
    // Once the link is back the log delivers a's write to b as a duplicate of what the
    // repair brought: every region converges.
    w.connect("a", "b");
    w.deliver();
    w.advance(1_000);
    assert_eq!(w.nodes["b"].replica.applied().get(a_id), Seq(1));
    assert_eq!(w.digests().len(), 1, "regions converge");
    assert_eq!(w.read("a", "default", "k"), bytes("w"));
}

#[test]
fn a_quorum_read_that_too_few_regions_answer_fails_naming_those_that_did() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.write("a", "default", "k", Some("v"));
    w.deliver();
    // b alone: a quorum read waits for one more region, and fails at its timeout; it is
    // never answered from b alone.
    w.cut("a", "b");
    w.cut("b", "c");
    let id = w.read_at("b", "default", "k", ReadLevel::Quorum, 500);
    w.advance(499);
    assert!(w.read_answer("b", id).is_none());
    w.advance(1);
    match w.read_answer("b", id) {
        Some(Err(ReadError::TooFewRegions {
            needed,
            answered,
            missing,
            ..
        })) => {
            assert_eq!(*needed, 2);
            assert_eq!(answered, &vec!["b".to_owned()]);
            let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["a", "c"]);
        }
        other => panic!("expected too few regions, got {other:?}"),
    }
    // `all` with one region away: the others answer, the read still fails, naming them.
    w.connect("b", "c");
    w.deliver();
    let id = w.read_at("b", "default", "k", ReadLevel::All, 500);
    w.deliver();
    w.advance(500);
    match w.read_answer("b", id) {
        Some(Err(ReadError::TooFewRegions { answered, .. })) => {
            assert_eq!(answered, &vec!["b".to_owned(), "c".to_owned()]);
        }
        other => panic!("expected too few regions, got {other:?}"),
    }
    // A region that reconnects while a read waits is asked at once.
    let id = w.read_at("b", "default", "k", ReadLevel::All, 500);
    w.deliver();
    w.connect("a", "b");
    w.deliver();
    assert_eq!(
        answer_value(&w, "b", id),
        (bytes("v"), vec!["b".into(), "c".into(), "a".into()])
    );
    assert_eq!(w.nodes["b"].replica.counters().quorum_reads_failed, 2);
}

#[test]
fn read_repair_sends_the_joined_state_to_regions_that_answered_with_less() {
    let mut w = world();
    w.mesh();
    w.deliver();
    w.cut("a", "c");
    w.write("a", "default", "k", Some("v"));
    w.deliver();
    assert_eq!(w.read("c", "default", "k"), Resolved::Absent);
    // b reads at `all`: a answers with the write, c without it; c gets the joined state.
    let id = w.read_at("b", "default", "k", ReadLevel::All, 1_000);
    w.deliver();
    assert_eq!(answer_value(&w, "b", id).0, bytes("v"));
    assert_eq!(w.nodes["b"].replica.counters().read_repairs_sent, 1);
    assert_eq!(w.nodes["c"].replica.counters().read_repairs_applied, 1);
    assert_eq!(w.read("c", "default", "k"), bytes("v"));
    // Durably: the repair is a checkpoint (the log does not hold it), and survives a restart.
    let c_opts = w.nodes["c"].replica.options().clone();
    w.cut("b", "c");
    w.node("c").restart(c_opts, &Registry::with_builtins());
    w.connect("b", "c");
    w.deliver();
    assert_eq!(w.read("c", "default", "k"), bytes("v"));
    let a_id = w.nodes["a"].id;
    assert_eq!(w.nodes["c"].replica.applied().get(a_id), Seq::ZERO);
    w.connect("a", "c");
    w.deliver();
    w.advance(1_000);
    assert_eq!(w.digests().len(), 1, "regions converge");
}

#[test]
fn a_key_too_large_for_one_frame_is_refused_to_a_quorum_read_not_sent() {
    let mut w = world_with(|o| o.max_batch_bytes = 64);
    w.mesh();
    w.deliver();
    w.write("a", "default", "k", Some(&"x".repeat(100)));
    w.deliver();
    w.cut("a", "b");
    let id = w.read_at("b", "default", "k", ReadLevel::Quorum, 300);
    w.deliver();
    w.advance(300);
    match w.read_answer("b", id) {
        Some(Err(ReadError::TooFewRegions { missing, .. })) => {
            let c = missing.iter().find(|(n, _)| n == "c").expect("c is named");
            assert!(c.1.contains("more than one frame carries"), "{c:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- a fresh data directory starts gated (issue 13, the known gaps) ------------------------

/// A world of `a`, `b`, `c` that gate a fresh data directory (`learn_when_empty`).
fn learning_world() -> World {
    world_with(|o| o.learn_when_empty = true)
}

/// Whether `region` is gated on learning, and what it says it waits for.
fn learning(w: &World, region: &str) -> Option<String> {
    let b = w.nodes[region].replica.bootstrap()?;
    (b.phase == leader_core::BootstrapPhase::Learning).then(|| b.progress())
}

/// A region rebuilt on an empty disk after the others truncated: it refuses reads and writes
/// from its start, not only once a peer's "needs snapshot" arrives, and the first hello of a
/// region whose log starts past it starts the transfer.
#[test]
fn a_rebuilt_region_refuses_reads_and_writes_until_a_peer_shows_it_needs_a_snapshot() {
    let (mut w, _) = rebuilt_c(10, 1024, &[]);
    let mut o = opts("c", ReplicaId::from_u128(5));
    o.learn_when_empty = true;
    w.nodes.insert(
        "c".into(),
        leader_core::testkit::Node::new(o, &Registry::with_builtins()),
    );
    let waits = learning(&w, "c").expect("gated from the start");
    assert!(
        waits.contains("waiting to learn") && waits.contains("not connected: a, b"),
        "{waits}"
    );
    let id = w.write("c", "default", "k000", Some("refused"));
    match w.reply("c", id) {
        Some(Err(WriteError::Bootstrapping { progress })) => {
            assert!(
                progress.contains("whether it needs a snapshot"),
                "{progress}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Time alone changes nothing: no peer has said anything.
    w.advance(5_000);
    assert!(learning(&w, "c").is_some());
    // a's hello: its log starts past what c has, so the transfer starts at once, from a.
    w.connect("a", "c");
    for _ in 0..100 {
        if learning(&w, "c").is_none() {
            break;
        }
        w.deliver_one();
    }
    let b = w.nodes["c"].replica.bootstrap().expect("a transfer now");
    assert_eq!(b.source.as_deref(), Some("a"));
    assert!(
        b.reason.contains("no longer holds the writes of a"),
        "{}",
        b.reason
    );
    assert_eq!(
        w.nodes["c"].replica.counters().snapshot_answers_received,
        0,
        "decided by a's hello, before any \"needs snapshot\""
    );
    w.deliver();
    w.advance(600);
    assert!(w.nodes["c"].replica.bootstrap().is_none());
    assert_eq!(w.nodes["c"].replica.digest(), w.nodes["a"].replica.digest());
    assert_eq!(w.nodes["c"].replica.counters().snapshots_started, 1);
}

/// A brand-new cluster: every region starts empty and gated, and serves as soon as it has
/// heard peers that hold nothing either and make a majority with it (at the hello: no
/// heartbeat needed). A region alone waits: a minority of regions rebuilt at once must not
/// take each other's emptiness for a new cluster while the ones holding the writes are
/// away. The region that comes last is vouched for by one that serves.
#[test]
fn a_new_cluster_serves_once_a_majority_has_heard_each_other_hold_nothing() {
    let mut w = learning_world();
    for r in REGIONS {
        assert!(learning(&w, r).is_some(), "{r} starts gated");
    }
    w.advance(2_000);
    let waits = learning(&w, "a").expect("alone: a minority");
    assert!(waits.contains("not connected: b, c"), "{waits}");
    w.connect("a", "b");
    w.deliver();
    assert_eq!(learning(&w, "a"), None, "a and b are a majority");
    assert_eq!(learning(&w, "b"), None);
    assert!(learning(&w, "c").is_some());
    w.connect("a", "c");
    w.deliver();
    assert_eq!(learning(&w, "c"), None, "a serves and vouches for c");
    w.write("a", "default", "k", Some("v"));
    w.deliver();
    w.advance(600);
    assert_eq!(w.read("c", "default", "k"), bytes("v"));
    for r in REGIONS {
        assert_eq!(w.nodes[r].replica.counters().snapshots_started, 0, "{r}");
    }
}

/// A region rebuilt while its log was never truncated anywhere (it had acknowledged
/// nothing, so nothing could be): the first serving peer shows it can stream every write
/// from the first, and it serves at once; it catches up by the log, with no snapshot. A
/// second region rebuilt meanwhile learns the same from the one that serves, within a
/// hello.
#[test]
fn a_rebuilt_region_serves_once_a_serving_peer_can_stream_it_every_write() {
    let mut w = learning_world();
    w.connect("a", "b");
    w.connect("a", "c");
    w.connect("b", "c");
    w.deliver();
    w.cut("a", "c");
    w.cut("b", "c");
    w.write("a", "default", "k", Some("v"));
    w.deliver();
    w.advance(600);
    assert!(
        w.nodes["a"].replica.log_start().is_empty(),
        "c has nothing yet"
    );
    // c is rebuilt; b too, and b is connected to nobody (alone, a minority).
    w.cut("a", "b");
    for (r, id) in [("c", 7), ("b", 8)] {
        let mut o = opts(r, ReplicaId::from_u128(id));
        o.learn_when_empty = true;
        let node = leader_core::testkit::Node::new(o, &Registry::with_builtins());
        w.nodes.insert(r.into(), node);
    }
    w.advance(2_000);
    assert!(learning(&w, "b").is_some() && learning(&w, "c").is_some());
    w.connect("a", "c");
    w.deliver();
    assert_eq!(learning(&w, "c"), None, "a vouches at its hello");
    w.advance(600);
    assert_eq!(w.read("c", "default", "k"), bytes("v"));
    assert_eq!(w.nodes["c"].replica.counters().snapshots_started, 0);
    // b learns from c's hello (serving, or a log start past what b has: then a snapshot),
    // and serves what the others have.
    w.connect("b", "c");
    w.deliver();
    assert_eq!(learning(&w, "b"), None);
    w.advance(600);
    assert!(w.nodes["b"].replica.bootstrap().is_none());
    assert_eq!(w.read("b", "default", "k"), bytes("v"));
}

/// A single-region cluster is never gated.
#[test]
fn a_single_region_is_never_gated() {
    let mut o = testkit::options("solo", ReplicaId::from_u128(1), &[]);
    o.learn_when_empty = true;
    let replica = Replica::new(o, &Registry::with_builtins(), Recovered::default()).unwrap();
    assert!(replica.bootstrap().is_none());
}

// ---- Anti-entropy (issue 16; docs/design.md, "Anti-entropy") ----

/// Whether a frame is one of anti-entropy's.
fn is_aae(msg: &PeerMsg) -> bool {
    matches!(
        msg,
        PeerMsg::AaeRequest(_)
            | PeerMsg::AaeHashes(_)
            | PeerMsg::AaeStatesRequest(_)
            | PeerMsg::AaeStates(_)
            | PeerMsg::AaeRepair(_)
    )
}

/// Delivers every frame on the wire, as `Cluster::deliver` does, except those `hold` keeps
/// back (left on the wire, in order); returns the postcard bytes of anti-entropy's frames.
fn deliver_counting(w: &mut World, hold: impl Fn(&str, &str, &PeerMsg) -> bool) -> usize {
    let mut bytes = 0;
    let mut held = VecDeque::new();
    for _ in 0..1_000_000 {
        let Some((from, to, conn, msg)) = w.wire.pop_front() else {
            w.wire = held;
            return bytes;
        };
        if hold(&from, &to, &msg) {
            held.push_back((from, to, conn, msg));
            continue;
        }
        if is_aae(&msg) {
            bytes += postcard::to_allocvec(&msg).unwrap().len();
        }
        if w.conns.get(&pair(&from, &to)) == Some(&conn) {
            w.handle(
                &to,
                Event::Frame {
                    peer: from,
                    conn,
                    msg,
                },
            );
        }
    }
    panic!("the network did not quiesce");
}

/// An `Alarm::Divergence`: (peer, found, repaired, keys).
type Found = (String, u64, u64, Vec<(String, Vec<u8>)>);

fn divergence_alarms(w: &World, region: &str) -> Vec<Found> {
    w.nodes[region]
        .alarms
        .iter()
        .filter_map(|a| match a {
            Alarm::Divergence {
                peer,
                found,
                repaired,
                keys,
            } => Some((peer.clone(), *found, *repaired, keys.clone())),
            _ => None,
        })
        .collect()
}

/// Three regions with the same 300 keys (some deleted, some with two siblings), fully
/// replicated, and then two silent divergences injected behind replication's back: `b`
/// loses key `default/k7` (a lost write, a damaged disk), and `c` holds the multi-value
/// key `mv/m` with a sibling that a later write superseded (wrong bytes from the disk).
fn diverged_world(interval_ms: u64) -> World {
    let mut w = world_with(|o| {
        o.anti_entropy_interval_ms = interval_ms;
        o.max_siblings = 8;
        o.snapshot_chunk_bytes = 64 * 1024;
    });
    w.mesh();
    w.deliver();
    for i in 0..300 {
        let region = REGIONS[i % 3];
        w.write(region, "default", &format!("k{i}"), Some(&format!("v{i}")));
        if i % 10 == 0 {
            w.write(region, "default", &format!("k{i}"), None);
        }
    }
    w.write("a", "mv", "m", Some("old"));
    w.deliver();
    let superseded = w.nodes["c"].replica.get("mv", b"m").unwrap().clone();
    w.write("b", "mv", "m", Some("new"));
    w.write("a", "mv", "two", Some("x"));
    w.write("c", "mv", "two", Some("y"));
    w.deliver();
    assert_eq!(w.digests().len(), 1, "replication converged");
    assert_eq!(
        w.nodes["a"].replica.hash_tree_root(),
        w.nodes["c"].replica.hash_tree_root()
    );
    w.node("b")
        .replica
        .unsafe_set_key_state("default", b"k7", None);
    let mut resurrected = w.nodes["c"].replica.get("mv", b"m").unwrap().clone();
    resurrected.siblings.extend(superseded.siblings);
    resurrected.siblings.sort_by_key(|s| s.order_key());
    w.node("c")
        .replica
        .unsafe_set_key_state("mv", b"m", Some(resurrected));
    // The injections are persisted too: a restart would not undo them.
    w.advance(1);
    assert_eq!(w.digests().len(), 3, "b and c each diverged");
    w
}

/// Two or three regions that agree: a round finds nothing, reports nothing and moves a
/// few hundred bytes (the roots only).
#[test]
fn anti_entropy_between_regions_that_agree_reports_nothing_and_moves_little() {
    let mut w = world();
    w.mesh();
    w.deliver();
    for i in 0..200 {
        w.write(REGIONS[i % 3], "default", &format!("k{i}"), Some("v"));
    }
    w.deliver();
    w.handle("a", Event::AntiEntropy);
    assert_eq!(
        w.nodes["a"]
            .replica
            .anti_entropy_rounds()
            .collect::<Vec<_>>(),
        ["b", "c"]
    );
    let bytes = deliver_counting(&mut w, |_, _, _| false);
    let c = w.nodes["a"].replica.counters().clone();
    assert_eq!((c.anti_entropy_rounds, c.anti_entropy_diverged), (2, 0));
    assert_eq!(
        w.nodes["a"].replica.anti_entropy_rounds().count(),
        0,
        "both over"
    );
    assert!(w.nodes.keys().all(|r| divergence_alarms(&w, r).is_empty()));
    // Two requests of the root and two answers of 16 bytes, with their framing.
    assert!(bytes < 100, "{bytes} bytes");
    for n in w.nodes.values() {
        assert!(n.replica.hash_tree_is_exact());
    }
}

/// Silent divergence injected on purpose is found by the periodic rounds, reported (counter,
/// alarm naming the keys) and repaired by join at both ends: the digests become equal. The
/// lost key comes back at `b`; the resurrected sibling goes at `c`.
#[test]
fn silent_divergence_is_found_reported_and_repaired_by_join() {
    let mut w = diverged_world(10_000);
    for _ in 0..4 {
        w.advance(5_000);
    }
    assert_eq!(w.digests().len(), 1, "repaired everywhere");
    assert_eq!(w.read("b", "default", "k7"), bytes("v7"));
    assert_eq!(w.read("c", "mv", "m"), bytes("new"));
    let found: u64 = w
        .nodes
        .values()
        .map(|n| n.replica.counters().anti_entropy_diverged)
        .sum();
    let repaired: u64 = w
        .nodes
        .values()
        .map(|n| n.replica.counters().anti_entropy_repaired)
        .sum();
    assert!(found >= 2, "found {found}");
    assert_eq!(repaired, 2, "one key joined at b, one at c");
    let named: BTreeSet<(String, Vec<u8>)> = w
        .nodes
        .keys()
        .flat_map(|r| divergence_alarms(&w, r))
        .flat_map(|(_, _, _, keys)| keys)
        .collect();
    assert_eq!(
        named,
        BTreeSet::from([
            ("default".to_owned(), b"k7".to_vec()),
            ("mv".to_owned(), b"m".to_vec())
        ])
    );
    for n in w.nodes.values() {
        assert_eq!(n.replica.counters().anti_entropy_in_flight, 0);
        assert!(n.replica.hash_tree_is_exact());
    }
    // Durable too: a restart of b keeps the repaired key.
    let opts = w.nodes["b"].replica.options().clone();
    w.node("b").restart(opts, &Registry::with_builtins());
    assert_eq!(w.read("b", "default", "k7"), bytes("v7"));
}

/// The negative control: the same divergence with anti-entropy off stays, however long the
/// cluster runs and whatever it writes meanwhile.
#[test]
fn without_anti_entropy_the_injected_divergence_stays() {
    let mut w = diverged_world(0);
    w.write("a", "default", "other", Some("x"));
    for _ in 0..4 {
        w.advance(5_000);
    }
    assert_eq!(w.digests().len(), 3);
    assert_eq!(w.read("b", "default", "k7"), Resolved::Absent);
    assert!(w.nodes.keys().all(|r| divergence_alarms(&w, r).is_empty()));
}

/// Writes in flight during a round are not reported: keys whose states differ because one
/// region has not applied a write yet are skipped (counted), and converge by replication.
#[test]
fn writes_in_flight_during_a_round_are_not_reported() {
    let mut w = world();
    w.mesh();
    w.deliver();
    for i in 0..50 {
        w.write("a", "default", &format!("k{i}"), Some("v"));
    }
    w.deliver();
    // New values, a delete and a new key, held on the way to b.
    w.write("a", "default", "k1", Some("newer"));
    w.write("a", "default", "k2", None);
    w.write("a", "mv", "fresh", Some("x"));
    let to_b = |from: &str, to: &str, m: &PeerMsg| {
        from == "a" && to == "b" && matches!(m, PeerMsg::Batch(_))
    };
    w.handle("a", Event::AntiEntropy);
    w.handle("b", Event::AntiEntropy);
    deliver_counting(&mut w, to_b);
    for r in ["a", "b"] {
        assert!(divergence_alarms(&w, r).is_empty(), "{r}");
        assert_eq!(w.nodes[r].replica.counters().anti_entropy_diverged, 0);
    }
    let skipped: u64 = ["a", "b"]
        .iter()
        .map(|r| w.nodes[*r].replica.counters().anti_entropy_in_flight)
        .sum();
    assert!(skipped >= 3, "skipped {skipped}");
    assert_eq!(w.read("b", "default", "k1"), bytes("v"), "still in flight");
    w.deliver();
    assert_eq!(w.digests().len(), 1);
}

/// The cost of a round: 100,000 keys (`AAE_KEYS` to change it) that two regions agree on,
/// then the same with a few keys diverged. Prints the bytes; asserts "a few KB".
#[test]
fn the_bytes_a_round_moves_for_many_keys() {
    let keys: usize = std::env::var("AAE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut w = Cluster::new(
        ["a", "b"].iter().enumerate().map(|(i, r)| Options {
            peer_window_bytes: 64 << 20,
            max_batch_bytes: 1 << 20,
            log_tail_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            ..testkit::options(r, ReplicaId::from_u128(i as u128 + 1), &[["b", "a"][i]])
        }),
        &Registry::with_builtins(),
    );
    w.mesh();
    w.deliver();
    w.auto_sync = false;
    for i in 0..keys {
        w.write("a", "default", &format!("key-{i:08}"), Some("value"));
        if i % 10_000 == 9_999 {
            // Group commits of 10,000 writes (unanswered writes are bounded).
            w.sync("a");
        }
    }
    w.sync("a");
    w.auto_sync = true;
    w.deliver();
    w.sync("b");
    w.deliver();
    assert_eq!(w.digests().len(), 1);
    assert_eq!(w.nodes["b"].replica.keys().count(), keys);
    w.handle("a", Event::AntiEntropy);
    let agreeing = deliver_counting(&mut w, |_, _, _| false);
    let mut report = vec![format!("{keys} keys agreeing: {agreeing} bytes")];
    assert!(agreeing < 100);
    for k in [1usize, 10, 100] {
        for i in 0..k {
            let key = format!("key-{:08}", i * 997 % keys);
            w.node("b")
                .replica
                .unsafe_set_key_state("default", key.as_bytes(), None);
        }
        w.advance(1);
        w.handle("a", Event::AntiEntropy);
        let bytes = deliver_counting(&mut w, |_, _, _| false);
        assert_eq!(w.digests().len(), 1, "repaired");
        report.push(format!("{keys} keys, {k} diverged: {bytes} bytes"));
        assert!(bytes < 4_000 * k + 1_000, "{bytes} bytes for {k}");
    }
    println!("anti-entropy round cost: {}", report.join("; "));
}
