//! KeyState rules, the leader's local-write checks, encodings and conflict records.

use conflict::limits::{MAX_SIBLINGS, MAX_VALUE_BYTES};
use conflict::{
    ApplyOutcome, Conflict, ConflictOutcome, Dot, Hlc, InvalidWrite, KeyState, Lww, MultiValue,
    ReplicaId, Resolved, Seq, StateError, Value, VersionVector, Write, WriteRefused,
};
use proptest::prelude::*;

use crate::bytes;

const T: u64 = 1_800_000_000_000;

fn dot(r: u128, s: u64) -> Dot {
    Dot::new(ReplicaId::from_u128(r), Seq(s))
}

fn write(d: Dot, hlc: u64, ctx: &[Dot], value: Value) -> Write {
    Write {
        dot: d,
        hlc: Hlc::new(T + hlc, 0),
        context: ctx.iter().copied().collect(),
        value,
    }
}

#[test]
fn apply_follows_the_three_rules_and_reports_them() {
    let mut s = KeyState::new();
    let a1 = write(dot(1, 1), 1, &[], bytes("a1"));
    let b1 = write(dot(2, 1), 2, &[], bytes("b1"));
    assert!(
        matches!(s.apply(&a1, &MultiValue), ApplyOutcome::Applied { ref concurrent, .. } if concurrent.is_empty())
    );
    let outcome = s.apply(&b1, &MultiValue);
    assert!(outcome.is_conflict());
    assert_eq!(
        outcome,
        ApplyOutcome::Applied {
            superseded: vec![],
            pruned: vec![],
            concurrent: vec![a1.sibling()]
        }
    );
    // Rule 1: a duplicate is ignored.
    assert_eq!(s.apply(&a1, &MultiValue), ApplyOutcome::Ignored);
    // Rule 2: only the write's context decides what it removes, not its dot's prefix: a2 with
    // an empty context does not supersede a1.
    let a2 = write(dot(1, 2), 3, &[], bytes("a2"));
    s.apply(&a2, &MultiValue);
    assert_eq!(s.len(), 3);
    // A context-carrying write supersedes exactly what its context covers.
    let c1 = write(dot(3, 1), 4, &[dot(1, 2)], bytes("c1"));
    let outcome = s.apply(&c1, &MultiValue);
    let ApplyOutcome::Applied {
        superseded,
        concurrent,
        ..
    } = outcome
    else {
        panic!("applied")
    };
    assert_eq!(superseded, vec![a1.sibling(), a2.sibling()]);
    assert_eq!(concurrent, vec![b1.sibling()]);
    // Rule 3: contexts are joined.
    assert_eq!(
        s.context,
        [dot(1, 2), dot(2, 1), dot(3, 1)].into_iter().collect()
    );
    assert_eq!(s.siblings, vec![b1.sibling(), c1.sibling()]);
    // A blind write supersedes everything this region has.
    let blind = write(dot(2, 2), 5, &[], bytes("blind"));
    let blind = Write {
        context: s.blind_context(),
        ..blind
    };
    assert_eq!(s.superseded_by(&blind.context).count(), 2);
    s.apply(&blind, &MultiValue);
    assert_eq!(s.siblings, vec![blind.sibling()]);
    assert_eq!(s.resolve(&MultiValue), Resolved::Value(b"blind".to_vec()));
}

#[test]
fn lww_conflicts_are_recorded_with_the_winner() {
    let mut s = KeyState::new();
    let a = write(dot(1, 1), 1, &[], bytes("a"));
    let b = write(dot(2, 1), 2, &[], bytes("b"));
    let first = s.apply(&a, &Lww);
    assert!(Conflict::from_apply("users", b"k", &a, &first, &s, &Lww).is_none());
    let outcome = s.apply(&b, &Lww);
    let c = Conflict::from_apply("users", b"k\x01", &b, &outcome, &s, &Lww).unwrap();
    assert_eq!(c.outcome, ConflictOutcome::Winner(b.dot));
    assert_eq!(c.siblings, vec![(a.dot, a.hlc), (b.dot, b.hlc)]);
    assert_eq!(c.resolver.to_string(), "lww@1");
    assert_eq!(c.table, "users");
    let line = c.to_string();
    assert!(
        line.starts_with("users/\"k\\x01\": 2 concurrent writes ["),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("] by lww@1 -> winner {}", b.dot)),
        "{line}"
    );
    let ignored = ApplyOutcome::Ignored;
    assert!(Conflict::from_apply("users", b"k", &a, &ignored, &s, &Lww).is_none());
}

#[test]
fn prepare_write_enforces_the_leaders_rules() {
    let mut s = KeyState::new();
    let me = ReplicaId::from_u128(9);
    // Blind write on an empty key.
    let w = s
        .prepare_write(Dot::new(me, Seq(1)), Hlc::new(T, 0), None, bytes("v"))
        .unwrap();
    assert_eq!(w.context, VersionVector::new());
    s.apply(&w, &MultiValue);
    // Reusing the dot is a leader bug, reported as such.
    assert_eq!(
        s.prepare_write(Dot::new(me, Seq(1)), Hlc::new(T, 1), None, bytes("v")),
        Err(WriteRefused::DotAlreadyUsed(Dot::new(me, Seq(1))))
    );
    // A context from a region that is ahead (or forged) is refused until this region catches up.
    let ahead: VersionVector = [dot(4, 7)].into_iter().collect();
    let err = s
        .prepare_write(
            Dot::new(me, Seq(2)),
            Hlc::new(T, 1),
            Some(&ahead),
            bytes("v"),
        )
        .unwrap_err();
    assert_eq!(
        err,
        WriteRefused::ContextAhead {
            missing: vec![(ReplicaId::from_u128(4), Seq::ZERO, Seq(7))]
        }
    );
    assert!(err.to_string().contains("retry"));
    // Too large.
    let big = Value::Bytes(vec![0; MAX_VALUE_BYTES + 1]);
    assert!(matches!(
        s.prepare_write(Dot::new(me, Seq(2)), Hlc::new(T, 1), None, big),
        Err(WriteRefused::ValueTooLarge { .. })
    ));
    // The stamp orders after every sibling, here one stamped far in the future.
    let future = write(dot(5, 1), 3_600_000, &[], bytes("future"));
    s.apply(&future, &MultiValue);
    let w = s
        .prepare_write(
            Dot::new(me, Seq(2)),
            Hlc::new(T, 2),
            Some(&VersionVector::new()),
            bytes("x"),
        )
        .unwrap();
    assert_eq!(w.hlc, future.hlc.successor());
}

#[test]
fn the_sibling_cap_refuses_local_writes_but_never_replicated_ones() {
    let mut s = KeyState::new();
    // Replicated concurrent writes are always applied, even past the cap.
    for r in 0..=MAX_SIBLINGS as u128 {
        let w = write(dot(100 + r, 1), r as u64, &[], bytes("x"));
        assert!(s.apply(&w, &MultiValue).is_applied());
    }
    assert_eq!(s.len(), MAX_SIBLINGS + 1);
    let me = Dot::new(ReplicaId::from_u128(1), Seq(1));
    let empty = VersionVector::new();
    assert!(s.would_exceed_cap(&empty));
    let err = s
        .prepare_write(me, Hlc::new(T, 0), Some(&empty), bytes("y"))
        .unwrap_err();
    assert_eq!(
        err,
        WriteRefused::TooManySiblings {
            siblings: MAX_SIBLINGS + 2,
            max: MAX_SIBLINGS
        }
    );
    assert!(
        err.to_string()
            .contains("write back with the context you read")
    );
    // A blind write (or one with the read context) resolves them, so it is accepted.
    assert!(!s.would_exceed_cap(&s.blind_context()));
    assert_eq!(s.siblings_after(&s.blind_context()), 1);
    let w = s
        .prepare_write(me, Hlc::new(T, 0), None, bytes("y"))
        .unwrap();
    s.apply(&w, &MultiValue);
    assert_eq!(s.len(), 1);
}

#[test]
fn writes_are_validated() {
    assert_eq!(
        write(dot(1, 0), 1, &[], bytes("x")).validate(),
        Err(InvalidWrite::ZeroSeq(dot(1, 0)))
    );
    assert_eq!(
        write(dot(1, 2), 1, &[dot(1, 2)], bytes("x")).validate(),
        Err(InvalidWrite::SupersedesItself(dot(1, 2)))
    );
    assert!(matches!(
        write(
            dot(1, 1),
            1,
            &[],
            Value::Bytes(vec![0; MAX_VALUE_BYTES + 1])
        )
        .validate(),
        Err(InvalidWrite::ValueTooLarge { .. })
    ));
    assert_eq!(
        write(dot(1, 1), 1, &[dot(2, 3)], Value::Tombstone).validate(),
        Ok(())
    );
    // A zero dot names no write: applying it changes nothing.
    let mut s = KeyState::new();
    assert_eq!(
        s.apply(&write(dot(1, 0), 1, &[], bytes("x")), &Lww),
        ApplyOutcome::Ignored
    );
}

#[test]
fn encoding_round_trips_and_rejects_broken_states() {
    let mut s = KeyState::new();
    s.apply(&write(dot(1, 1), 1, &[], bytes("a")), &MultiValue);
    s.apply(&write(dot(2, 1), 2, &[], Value::Tombstone), &MultiValue);
    let bytes = s.to_bytes();
    assert_eq!(KeyState::from_bytes(&bytes), Ok(s.clone()));
    assert_eq!(postcard::from_bytes::<KeyState>(&bytes).unwrap(), s);
    assert_ne!(s.digest(), KeyState::new().digest());

    let mut unordered = s.clone();
    unordered.siblings.reverse();
    assert_eq!(unordered.check_invariants(), Err(StateError::NotCanonical));
    assert!(KeyState::from_bytes(&unordered.to_bytes()).is_err());
    let mut outside = s.clone();
    outside.context = VersionVector::new();
    assert_eq!(
        outside.check_invariants(),
        Err(StateError::SiblingOutsideContext(dot(1, 1)))
    );
    let mut trailing = bytes.clone();
    trailing.push(7);
    assert!(matches!(
        KeyState::from_bytes(&trailing),
        Err(StateError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoding_garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(s) = KeyState::from_bytes(&raw) {
            prop_assert_eq!(s.check_invariants(), Ok(()));
        }
        let _ = postcard::from_bytes::<Write>(&raw);
    }
}
