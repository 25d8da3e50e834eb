//! The counter example: concurrent increments from different regions all count.

use conflict::examples::Counter;
use conflict::{Conflict, ConflictOutcome, Resolved, Resolver, Value};

use crate::Region;

const T: u64 = 1_800_000_000_000;

fn read(r: &Region) -> Option<Vec<u8>> {
    match r.state.resolve(&Counter) {
        Resolved::Value(b) => Some(b),
        _ => None,
    }
}

fn increment(r: &mut Region, now: u64) -> conflict::Write {
    let ctx = r.state.context.clone();
    let next = Counter::increment(read(r).as_deref(), r.id, 1);
    Counter
        .check_value(&next)
        .expect("a counter the helper built is valid");
    r.write(now, Some(&ctx), Value::Bytes(next), &Counter)
}

#[test]
fn concurrent_increments_from_different_regions_all_count() {
    let mut regions: Vec<Region> = (1..=3).map(Region::new).collect();
    // Every region increments twice without hearing from the others.
    let writes: Vec<Vec<conflict::Write>> = regions
        .iter_mut()
        .map(|r| vec![increment(r, T), increment(r, T + 1)])
        .collect();
    for (i, r) in regions.iter_mut().enumerate() {
        for (j, ws) in writes.iter().enumerate() {
            if i != j {
                for w in ws {
                    let outcome = r.receive(T + 5, w, &Counter);
                    if let Some(c) =
                        Conflict::from_apply("hits", b"page", w, &outcome, &r.state, &Counter)
                    {
                        assert_eq!(c.outcome, ConflictOutcome::Merged);
                    }
                }
            }
        }
    }
    for r in &regions {
        assert_eq!(Counter::read(&r.state.resolve(&Counter)), 6);
        assert_eq!(
            r.state.len(),
            3,
            "one sibling per region until someone writes back"
        );
    }
    // One read-modify-write with the read context folds the siblings into one.
    let w = increment(&mut regions[0], T + 10);
    for r in &mut regions[1..] {
        r.receive(T + 11, &w, &Counter);
    }
    for r in &regions {
        assert_eq!(Counter::read(&r.state.resolve(&Counter)), 7);
        assert_eq!(r.state.len(), 1);
        assert_eq!(r.state, regions[0].state);
    }
}
