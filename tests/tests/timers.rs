//! The machine's timer contract, as the simulator relies on it: after handling an event at
//! time `t`, `poll_timeout` names a time after `t` (or none). A deadline at or before `t`
//! would make a driver that sleeps until it (as `leader::node` does) wake at once, forever:
//! a busy loop.

use std::collections::BTreeMap;

use conflict::{Registry, ReplicaId, Value};
use leader_core::{Durability, Effect, Event, Options, PeerMsg, Recovered, Replica, Time};

fn replica(region: &str, peer: &str, id: u128) -> Replica {
    let opts = Options {
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
    };
    Replica::new(opts, &Registry::with_builtins(), Recovered::default()).unwrap()
}

fn at(ms: u64) -> Time {
    Time {
        wall_ms: 1_700_000_000_000 + ms,
        mono_ms: ms,
    }
}

/// A peer that stays connected but does not acknowledge (slow disk, one-way partition before
/// the idle timeout) for longer than the relay delay.
#[test]
fn poll_timeout_is_after_the_last_event_while_a_peer_lags() {
    let mut a = replica("a", "b", 1);
    let mut b = replica("b", "a", 2);
    let mut out = Vec::new();
    a.handle(
        at(0),
        Event::PeerUp {
            peer: "b".into(),
            conn: 1,
        },
        &mut out,
    );
    b.handle(
        at(0),
        Event::PeerUp {
            peer: "a".into(),
            conn: 1,
        },
        &mut out,
    );
    let hello_of = |r: &mut Replica, out: &mut Vec<Effect>| {
        let hello = out
            .drain(..)
            .find_map(|e| match e {
                Effect::Send {
                    msg: m @ PeerMsg::Hello(_),
                    ..
                } => Some(m),
                _ => None,
            })
            .unwrap();
        let _ = r;
        hello
    };
    let mut oa = Vec::new();
    a.handle(
        at(0),
        Event::PeerUp {
            peer: "b".into(),
            conn: 2,
        },
        &mut oa,
    );
    let mut ob = Vec::new();
    b.handle(
        at(0),
        Event::PeerUp {
            peer: "a".into(),
            conn: 2,
        },
        &mut ob,
    );
    let ha = hello_of(&mut a, &mut oa);
    let hb = hello_of(&mut b, &mut ob);
    a.handle(
        at(1),
        Event::Frame {
            peer: "b".into(),
            conn: 2,
            msg: hb,
        },
        &mut oa,
    );
    b.handle(
        at(1),
        Event::Frame {
            peer: "a".into(),
            conn: 2,
            msg: ha,
        },
        &mut ob,
    );
    let write = Event::ClientWrite {
        id: 1,
        table: "lww".into(),
        key: b"k".to_vec(),
        value: Value::Bytes(b"v".to_vec()),
        context: None,
        durability: Durability::Local,
        timeout_ms: 100,
    };
    a.handle(at(2), write, &mut oa);
    // Complete every persist a asks for (the write's may wait behind the hello's).
    while let Some(id) = oa.iter().find_map(|e| match e {
        Effect::Persist(p) => Some(p.id),
        _ => None,
    }) {
        oa.clear();
        a.handle(at(3), Event::Persisted { id }, &mut oa);
    }
    assert_eq!(
        a.peer_views(at(3))[0].lag_writes,
        1,
        "b lacks a's durable write"
    );
    // b never acknowledges. Tick a as a driver would, for a while past the relay delay.
    let mut now = 3;
    for _ in 0..50 {
        let next = a.poll_timeout().expect("a heartbeat is always due");
        assert!(
            next > now,
            "after an event at {now} the next deadline is {next}: a driver would spin"
        );
        now = next;
        oa.clear();
        a.handle(at(now), Event::Tick, &mut oa);
    }
    assert!(now > 1_000, "the test ran past the relay delay ({now} ms)");
}
