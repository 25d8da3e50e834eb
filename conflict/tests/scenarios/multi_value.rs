//! Multi-value: siblings are exactly the mutually concurrent writes.

use conflict::{Conflict, ConflictOutcome, MultiValue, Resolved};

use crate::{Region, bytes};

const T: u64 = 1_800_000_000_000;

#[test]
fn concurrent_writes_become_siblings_and_a_read_context_supersedes_them_all() {
    let mut a = Region::new(1);
    let mut b = Region::new(2);
    let mut c = Region::new(3);
    let wa = a.write(T, None, bytes("a"), &MultiValue);
    let wb = b.write(T + 3, None, bytes("b"), &MultiValue);
    let wc = c.write(T - 2, None, bytes("c"), &MultiValue);
    for (r, others) in [
        (&mut a, [&wb, &wc]),
        (&mut b, [&wa, &wc]),
        (&mut c, [&wa, &wb]),
    ] {
        for w in others {
            r.receive(T + 10, w, &MultiValue);
        }
    }
    assert_eq!(a.state, b.state);
    assert_eq!(b.state, c.state);
    let Resolved::Siblings(s) = a.state.resolve(&MultiValue) else {
        panic!("three concurrent writes are three siblings");
    };
    let values: Vec<_> = s.iter().map(|s| s.value.clone()).collect();
    assert_eq!(
        values,
        vec![bytes("c"), bytes("a"), bytes("b")],
        "canonical (hlc) order"
    );

    // A reader at b resolves by writing back with the context it read.
    let ctx = b.state.context.clone();
    let merged = b.write(T + 20, Some(&ctx), bytes("abc"), &MultiValue);
    for r in [&mut a, &mut c] {
        let outcome = r.receive(T + 30, &merged, &MultiValue);
        let conflict::ApplyOutcome::Applied {
            superseded,
            concurrent,
            ..
        } = outcome
        else {
            panic!("applied");
        };
        assert_eq!(superseded.len(), 3);
        assert!(concurrent.is_empty());
    }
    for r in [&a, &b, &c] {
        assert_eq!(
            r.state.resolve(&MultiValue),
            Resolved::Value(b"abc".to_vec())
        );
        assert_eq!(r.state.len(), 1);
    }
}

#[test]
fn causally_ordered_writes_never_produce_siblings() {
    let mut a = Region::new(1);
    let mut b = Region::new(2);
    let mut w = a.write(T, None, bytes("1"), &MultiValue);
    for i in 2..8 {
        let (from, to) = if i % 2 == 0 {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        from.receive(T + i, &w, &MultiValue);
        w = from.write(T - i * 100, None, bytes(&i.to_string()), &MultiValue);
        assert_eq!(from.state.len(), 1);
        to.receive(T + i, &w, &MultiValue);
        assert_eq!(to.state.len(), 1);
    }
    assert_eq!(a.state, b.state);
}

#[test]
fn a_write_with_an_old_context_keeps_what_it_did_not_see() {
    let mut a = Region::new(1);
    let mut b = Region::new(2);
    let w1 = a.write(T, None, bytes("1"), &MultiValue);
    let ctx = a.state.context.clone(); // a client reads "1"
    let w2 = b.write(T, None, bytes("2"), &MultiValue); // concurrently, elsewhere
    a.receive(T, &w2, &MultiValue);
    // The client writes back with what it read: it supersedes "1" but not "2", which it never
    // saw; that is a conflict to record.
    let w3 = a.write(T + 1, Some(&ctx), bytes("3"), &MultiValue);
    assert!(w3.context.covers(&w1.dot) && !w3.context.covers(&w2.dot));
    let outcome = b.receive(T + 1, &w3, &MultiValue);
    assert!(outcome.is_conflict());
    let record = Conflict::from_apply("t", b"k", &w3, &outcome, &b.state, &MultiValue).unwrap();
    assert_eq!(record.outcome, ConflictOutcome::Kept(2));
    assert_eq!(record.siblings.len(), 2);
    b.receive(T + 1, &w1, &MultiValue); // late, already superseded
    assert_eq!(a.state, b.state);
    let Resolved::Siblings(s) = b.state.resolve(&MultiValue) else {
        panic!("two siblings");
    };
    assert_eq!(
        s.iter().map(|s| s.dot).collect::<Vec<_>>(),
        vec![w2.dot, w3.dot]
    );
}
