//! The law checker can fail: resolvers that break a law are caught, with a minimal
//! counterexample and a readable report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use conflict::laws::{self, Law};
use conflict::{Resolved, Resolver, Sibling, Value};
use proptest::prelude::*;

fn values() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..4)
}

fn config() -> laws::Config {
    laws::Config {
        cases: 64,
        ..laws::Config::default()
    }
}

fn live(siblings: &[Sibling]) -> impl Iterator<Item = &[u8]> {
    siblings.iter().filter_map(|s| s.value.as_bytes())
}

/// Answers with a global call counter: different on every call.
struct GlobalCounter(AtomicU64);

impl Resolver for GlobalCounter {
    fn name(&self) -> &str {
        "global-counter"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        if live(siblings).next().is_none() {
            return Resolved::Absent;
        }
        Resolved::Value(
            self.0
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes()
                .to_vec(),
        )
    }
}

/// Deterministic within a run of calls but dependent on the previous call: answers with the
/// greatest value of the *previous* input it saw.
struct RemembersPrevious(Mutex<Option<Vec<u8>>>);

impl Resolver for RemembersPrevious {
    fn name(&self) -> &str {
        "remembers-previous"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let current = live(siblings).last().map(<[u8]>::to_vec);
        let mut previous = self.0.lock().unwrap();
        let answer = std::mem::replace(&mut *previous, current.clone());
        match (current, answer) {
            (None, _) => Resolved::Absent,
            (Some(now), None) => Resolved::Value(now),
            (Some(_), Some(before)) => Resolved::Value(before),
        }
    }
}

/// Claims to be a semilattice, but the first live sibling wins: the answer depends on which
/// sibling holds which value.
struct FirstWins;

impl Resolver for FirstWins {
    fn name(&self) -> &str {
        "first-wins"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        true
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        live(siblings)
            .next()
            .map_or(Resolved::Absent, |v| Resolved::Value(v.to_vec()))
    }
}

/// Claims to be a semilattice; commutative (it sorts) and idempotent, but the mean of the first
/// bytes is not associative.
struct Mean;

impl Resolver for Mean {
    fn name(&self) -> &str {
        "mean"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        true
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let firsts: Vec<u64> = live(siblings)
            .map(|v| u64::from(v.first().copied().unwrap_or(0)))
            .collect();
        if firsts.is_empty() {
            return Resolved::Absent;
        }
        let mean = firsts.iter().sum::<u64>() / firsts.len() as u64;
        Resolved::Value(vec![u8::try_from(mean).unwrap()])
    }
}

/// Claims to prune losers but answers with the smallest sibling.
struct PrunesWrongly;

impl Resolver for PrunesWrongly {
    fn name(&self) -> &str {
        "prunes-wrongly"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn prunes_losers(&self) -> bool {
        true
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        match siblings.first().map(|s| &s.value) {
            Some(Value::Bytes(b)) => Resolved::Value(b.clone()),
            _ => Resolved::Absent,
        }
    }
}

/// Forgets that deletes read as absent.
struct IgnoresTombstones;

impl Resolver for IgnoresTombstones {
    fn name(&self) -> &str {
        "ignores-tombstones"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        Resolved::Value(vec![siblings.len() as u8])
    }
}

/// Returns tombstones among multi-value siblings.
struct LeaksTombstones;

impl Resolver for LeaksTombstones {
    fn name(&self) -> &str {
        "leaks-tombstones"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        match siblings {
            [] => Resolved::Absent,
            _ if siblings.iter().all(|s| s.value.is_tombstone()) => Resolved::Absent,
            [one] => Resolved::Value(one.value.as_bytes().unwrap_or_default().to_vec()),
            many => Resolved::Siblings(many.to_vec()),
        }
    }
}

#[test]
fn catches_a_resolver_with_a_global_counter() {
    let v = laws::check(&GlobalCounter(AtomicU64::new(0)), values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Determinism);
    assert_eq!(v.counterexample.len(), 1, "one live sibling is enough: {v}");
    assert!(v.detail.contains("different answers"), "{v}");
}

#[test]
fn catches_a_resolver_that_depends_on_the_previous_call() {
    let v = laws::check(&RemembersPrevious(Mutex::new(None)), values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Determinism);
    assert_eq!(v.resolver.to_string(), "remembers-previous@1");
    println!("{v}");
}

#[test]
fn catches_a_non_commutative_semilattice_with_a_minimal_counterexample() {
    let v = laws::check(&FirstWins, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Commutativity);
    // Shrunk to the smallest case: two different live values.
    assert_eq!(v.counterexample.len(), 2, "{v}");
    let [a, b] = [&v.counterexample[0].value, &v.counterexample[1].value];
    assert!(!a.is_tombstone() && !b.is_tombstone() && a != b, "{v}");
    let text = v.to_string();
    assert!(
        text.starts_with("resolver first-wins@1 breaks commutativity"),
        "{text}"
    );
    assert!(
        text.contains("minimal counterexample (2 siblings"),
        "{text}"
    );
}

#[test]
fn catches_a_non_associative_semilattice() {
    let v = laws::check(&Mean, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Associativity, "{v}");
    assert_eq!(v.counterexample.len(), 3);
    assert!(v.detail.contains("grouping changed the answer"), "{v}");
}

#[test]
fn catches_unsafe_pruning_missing_absence_and_leaked_tombstones() {
    let v = laws::check(&PrunesWrongly, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::PruneSafety, "{v}");
    assert_eq!(v.counterexample.len(), 2, "{v}");
    let v = laws::check(&IgnoresTombstones, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::TombstonesReadAbsent, "{v}");
    let v = laws::check(&LeaksTombstones, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Shape, "{v}");
    assert!(v.detail.contains("tombstone"), "{v}");
}

#[test]
#[should_panic(expected = "breaks commutativity")]
fn assert_laws_panics_with_the_report() {
    laws::assert_laws(&FirstWins, values());
}

#[test]
fn checking_is_reproducible() {
    let a = laws::check(&FirstWins, values(), &config()).unwrap_err();
    let b = laws::check(&FirstWins, values(), &config()).unwrap_err();
    assert_eq!(a, b);
}

/// Panics on some inputs: a panic in a region's read path is a bug the checker must report
/// as a violation, not as an unreadable crash of the user's test.
struct PanicsOnPairs;

impl Resolver for PanicsOnPairs {
    fn name(&self) -> &str {
        "panics-on-pairs"
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_semilattice(&self) -> bool {
        false
    }
    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        assert!(
            siblings.len() < 2,
            "cannot merge {} siblings",
            siblings.len()
        );
        Resolved::Absent
    }
}

#[test]
fn a_panicking_resolver_is_a_violation() {
    let v = laws::check(&PanicsOnPairs, values(), &config()).unwrap_err();
    assert_eq!(v.law, Law::Determinism);
    assert_eq!(v.counterexample.len(), 2, "{v}");
    assert!(v.detail.contains("cannot merge 2 siblings"), "{v}");
}
