//! The law checker: property tests a resolver's author runs in their own test suite, the way an
//! openraft storage implementation runs openraft's conformance suite.
//!
//! ```
//! use conflict::{examples::Counter, laws};
//! use proptest::prelude::*;
//!
//! // Values the resolver will really meet: here, counters built with the helper.
//! let counters = proptest::collection::vec((0u128..4, 1u64..5), 0..4).prop_map(|incs| {
//!     incs.into_iter().fold(Vec::new(), |v, (w, by)| {
//!         let cur = if v.is_empty() { None } else { Some(v.as_slice()) };
//!         Counter::increment(cur, conflict::ReplicaId::from_u128(w), by)
//!     })
//! });
//! let config = laws::Config { cases: 32, ..laws::Config::default() };
//! let report = laws::check(&Counter, counters, &config).expect("counter obeys its laws");
//! assert!(report.laws.contains(&laws::Law::Associativity));
//! ```
//!
//! Every resolver is checked for [`Law::Determinism`], [`Law::Shape`] and
//! [`Law::TombstonesReadAbsent`]; one that prunes losers also for [`Law::PruneSafety`]; one that
//! claims to be a semilattice also for [`Law::Commutativity`], [`Law::Associativity`] and
//! [`Law::Idempotence`]. A failure comes back as a [`Violation`] naming the law, with a minimal
//! counterexample found by proptest's shrinking, so tests can assert on it or print it.
//!
//! Sibling sets are generated from the caller's value strategy, with tombstones mixed in (every
//! resolver must handle them), distinct dots, and HLCs that often tie so that the replica and
//! sequence parts of the canonical order are exercised. Runs are seeded ([`Config::seed`]):
//! the same resolver and config always explore the same cases.

use std::fmt;

use proptest::prelude::*;
use proptest::test_runner::{
    Config as RunnerConfig, RngSeed, TestCaseError, TestError, TestRunner,
};

use crate::hlc::Hlc;
use crate::id::{Dot, ReplicaId, Seq};
use crate::key::{Sibling, Value};
use crate::resolver::{Resolved, Resolver, ResolverId};

/// How hard to look for a counterexample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Random cases per law. A few hundred is a good default for a unit test; raise it in a
    /// nightly job.
    pub cases: u32,
    /// Most siblings in a generated set (at least 3 is needed for associativity to be
    /// meaningful; it is clamped to 3..=64).
    pub max_siblings: usize,
    /// Seed of the case generator: fixed so a failure reproduces; change it to explore more.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cases: 256,
            max_siblings: 6,
            seed: 0x6d65_7269_6469_616e,
        }
    }
}

/// A law a resolver must obey.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Law {
    /// The same siblings (in canonical order) always give the same answer, whatever was
    /// resolved before: no hidden state, no randomness, no clocks. Every region resolves on its
    /// own and must agree.
    Determinism,
    /// A [`Resolved::Siblings`] answer holds at least two live siblings, taken from the input,
    /// in canonical order: what the multi-value read contract promises readers.
    Shape,
    /// No siblings, or only tombstones, read as [`Resolved::Absent`].
    TombstonesReadAbsent,
    /// For a resolver that prunes losers: the answer equals the answer for the greatest sibling
    /// alone, so pruning the others changes nothing readers see.
    PruneSafety,
    /// For a semilattice: the answer depends only on the values, not on which sibling (which
    /// stamp, which replica) carries which.
    Commutativity,
    /// For a semilattice: merging `a` with `b` and then with `c`, merging `b` with `c` and then
    /// with `a`, and resolving all three at once agree.
    Associativity,
    /// For a semilattice: merging a value with itself changes nothing, and resolving a merged
    /// value again gives it back.
    Idempotence,
}

impl fmt::Display for Law {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Law::Determinism => "determinism",
            Law::Shape => "shape of multi-value answers",
            Law::TombstonesReadAbsent => "tombstones read as absent",
            Law::PruneSafety => "prune safety",
            Law::Commutativity => "commutativity",
            Law::Associativity => "associativity",
            Law::Idempotence => "idempotence",
        })
    }
}

/// The laws that were checked and held.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Report {
    /// The resolver checked.
    pub resolver: ResolverId,
    /// The laws checked, all of which held.
    pub laws: Vec<Law>,
    /// Random cases run per law.
    pub cases: u32,
}

/// A law a resolver broke, with a minimal counterexample.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The resolver checked.
    pub resolver: ResolverId,
    /// The law it broke.
    pub law: Law,
    /// The smallest sibling set found that shows the violation, in canonical order. For the
    /// semilattice laws these are the values merged, on siblings with ascending stamps.
    pub counterexample: Vec<Sibling>,
    /// What went wrong on the counterexample: the answers that should have been equal.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "resolver {} breaks {}", self.resolver, self.law)?;
        writeln!(
            f,
            "minimal counterexample ({} siblings, canonical order):",
            self.counterexample.len()
        )?;
        for s in &self.counterexample {
            writeln!(f, "  {} at {:?}: {:?}", s.dot, s.hlc, s.value)?;
        }
        write!(f, "{}", self.detail)
    }
}

impl std::error::Error for Violation {}

/// The laws [`check`] runs for `resolver`, from its claims.
pub fn laws_for(resolver: &dyn Resolver) -> Vec<Law> {
    let mut laws = vec![Law::Determinism, Law::Shape, Law::TombstonesReadAbsent];
    if resolver.prunes_losers() {
        laws.push(Law::PruneSafety);
    }
    if resolver.is_semilattice() {
        laws.extend([Law::Commutativity, Law::Associativity, Law::Idempotence]);
    }
    laws
}

/// Runs every law that applies to `resolver` ([`laws_for`]) on sibling sets whose live values
/// come from `values`, and stops at the first violation, shrunk to a minimal counterexample.
/// A panic inside the resolver is a violation of the law being checked (a panicking read path
/// would take a region down), reported with the panic message.
pub fn check<S>(resolver: &dyn Resolver, values: S, config: &Config) -> Result<Report, Violation>
where
    S: Strategy<Value = Vec<u8>>,
{
    let max = config.max_siblings.clamp(3, 64);
    let value = prop_oneof![4 => (&values).prop_map(Value::Bytes), 1 => Just(Value::Tombstone)];
    let value = &value;
    let laws = laws_for(resolver);
    let checker = Checker { resolver, config };
    for &law in &laws {
        match law {
            Law::Determinism => {
                checker.run(law, sibling_sets(value, max), |s| determinism(resolver, s))
            }
            Law::Shape => checker.run(law, sibling_sets(value, max), |s| shape(resolver, s)),
            Law::TombstonesReadAbsent => {
                checker.run(law, sibling_sets(Just(Value::Tombstone), max), |s| {
                    tombstones_read_absent(resolver, s)
                })
            }
            Law::PruneSafety => {
                checker.run(law, sibling_sets(value, max), |s| prune_safety(resolver, s))
            }
            Law::Commutativity => checker.run(
                law,
                proptest::collection::vec(value, 2..=max).prop_map(|v| positions(&v)),
                |s| commutativity(resolver, s),
            ),
            Law::Associativity => checker.run(
                law,
                (value, value, value).prop_map(|(a, b, c)| positions(&[a, b, c])),
                |s| associativity(resolver, s),
            ),
            Law::Idempotence => checker.run(law, value.prop_map(|a| positions(&[a])), |s| {
                idempotence(resolver, s)
            }),
        }?;
    }
    Ok(Report {
        resolver: ResolverId::of(resolver),
        laws,
        cases: config.cases,
    })
}

/// [`check`] with the default [`Config`], panicking with the readable report on a violation:
/// the one-liner for a user's `#[test]`.
pub fn assert_laws<S>(resolver: &dyn Resolver, values: S)
where
    S: Strategy<Value = Vec<u8>>,
{
    if let Err(v) = check(resolver, values, &Config::default()) {
        panic!("{v}");
    }
}

struct Checker<'a> {
    resolver: &'a dyn Resolver,
    config: &'a Config,
}

impl Checker<'_> {
    /// Runs one law over one strategy of sibling sets and turns a proptest failure into a
    /// [`Violation`] carrying the shrunk input.
    fn run(
        &self,
        law: Law,
        strategy: impl Strategy<Value = Vec<Sibling>>,
        test: impl Fn(&[Sibling]) -> Result<(), String>,
    ) -> Result<(), Violation> {
        let mut runner = TestRunner::new(RunnerConfig {
            cases: self.config.cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(self.config.seed),
            max_shrink_iters: 4096,
            // Forking would need a test name and re-running the user's binary; the checker is a
            // library call, so it always runs in process.
            fork: false,
            timeout: 0,
            ..RunnerConfig::default()
        });
        let violation = |counterexample: Vec<Sibling>, detail: String| Violation {
            resolver: ResolverId::of(self.resolver),
            law,
            counterexample,
            detail,
        };
        match runner.run(&strategy, |s| test(&s).map_err(TestCaseError::fail)) {
            Ok(()) => Ok(()),
            Err(TestError::Fail(reason, minimal)) => {
                Err(violation(minimal, reason.message().to_owned()))
            }
            Err(TestError::Abort(reason)) => Err(violation(
                Vec::new(),
                format!("the checker gave up: {}", reason.message()),
            )),
        }
    }
}

/// Sibling sets of 1..=max siblings with distinct dots, from 3 replicas, with HLCs drawn from a
/// small range so they often tie; in canonical order.
fn sibling_sets<V>(value: V, max: usize) -> impl Strategy<Value = Vec<Sibling>>
where
    V: Strategy<Value = Value>,
{
    proptest::collection::vec((value, 0u64..4, 1u128..=3), 1..=max).prop_map(|raw| {
        let mut siblings: Vec<Sibling> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (value, step, replica))| Sibling {
                // The index makes the dot unique.
                dot: Dot::new(ReplicaId::from_u128(replica), Seq(i as u64 + 1)),
                hlc: Hlc::new(1_000 + step, 0),
                value,
            })
            .collect();
        siblings.sort_by_key(Sibling::order_key);
        siblings
    })
}

/// Values on siblings at fixed positions: the i-th value on replica i+1 at HLC 1000+i. Used by
/// the semilattice laws, which move values between positions.
fn positions(values: &[Value]) -> Vec<Sibling> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| Sibling {
            dot: Dot::new(ReplicaId::from_u128(i as u128 + 1), Seq(1)),
            hlc: Hlc::new(1_000 + i as u64, 0),
            value: value.clone(),
        })
        .collect()
}

fn values_of(siblings: &[Sibling]) -> Vec<Value> {
    siblings.iter().map(|s| s.value.clone()).collect()
}

fn determinism(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let first = r.resolve(s);
    let again = r.resolve(s);
    let copy: Vec<Sibling> = s.to_vec();
    let from_copy = r.resolve(&copy);
    // Calls with other inputs in between expose state kept from one call to the next.
    let _ = r.resolve(&s[..s.len() - 1]);
    let _ = r.resolve(&positions(&values_of(s)));
    let after_others = r.resolve(s);
    let answers = [&again, &from_copy, &after_others];
    if answers.iter().all(|a| **a == first) {
        Ok(())
    } else {
        Err(format!(
            "the same siblings gave different answers:\n  first call:           {first:?}\n  second call:          {again:?}\n  on an equal copy:     {from_copy:?}\n  after other inputs:   {after_others:?}"
        ))
    }
}

fn shape(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let Resolved::Siblings(out) = r.resolve(s) else {
        return Ok(());
    };
    let problem = if out.len() < 2 {
        Some("fewer than two siblings (answer Value or Absent instead)")
    } else if out.iter().any(|o| o.value.is_tombstone()) {
        Some("a tombstone among the siblings readers see")
    } else if out.iter().any(|o| !s.contains(o)) {
        Some("a sibling that is not one of the input siblings")
    } else if !out.windows(2).all(|w| w[0].order_key() < w[1].order_key()) {
        Some("siblings not in canonical order")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!("Resolved::Siblings has {p}: {out:?}")),
    }
}

fn tombstones_read_absent(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let none = r.resolve(&[]);
    let tombstones = r.resolve(s);
    if none == Resolved::Absent && tombstones == Resolved::Absent {
        Ok(())
    } else {
        Err(format!(
            "expected Absent for no siblings and for only tombstones, got {none:?} and {tombstones:?}"
        ))
    }
}

fn prune_safety(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let all = r.resolve(s);
    let greatest = r.resolve(&s[s.len() - 1..]);
    if all == greatest {
        Ok(())
    } else {
        Err(format!(
            "the resolver prunes losers, but the answer for all siblings ({all:?}) differs from the answer for the greatest alone ({greatest:?})"
        ))
    }
}

fn commutativity(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let values = values_of(s);
    let as_given = r.resolve(s);
    let mut reversed = values.clone();
    reversed.reverse();
    let mut rotated = values;
    rotated.rotate_left(1);
    let reversed_answer = r.resolve(&positions(&reversed));
    let rotated_answer = r.resolve(&positions(&rotated));
    if reversed_answer == as_given && rotated_answer == as_given {
        Ok(())
    } else {
        Err(format!(
            "moving values between siblings changed the answer:\n  values in order:   {as_given:?}\n  values reversed:   {reversed_answer:?}\n  values rotated:    {rotated_answer:?}"
        ))
    }
}

/// Turns an answer back into a sibling value, to merge it again.
fn as_value(resolved: Resolved) -> Result<Value, String> {
    match resolved {
        Resolved::Absent => Ok(Value::Tombstone),
        Resolved::Value(b) => Ok(Value::Bytes(b)),
        Resolved::Siblings(s) => Err(format!(
            "a semilattice must merge to one value (or Absent), but it answered with siblings {s:?}"
        )),
    }
}

/// The binary merge a semilattice resolver induces: resolve two siblings.
fn merge(r: &dyn Resolver, a: &Value, b: &Value) -> Result<Value, String> {
    as_value(r.resolve(&positions(&[a.clone(), b.clone()])))
}

fn associativity(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let [a, b, c] = [&s[0].value, &s[1].value, &s[2].value];
    let left = merge(r, &merge(r, a, b)?, c)?;
    let right = merge(r, a, &merge(r, b, c)?)?;
    let all = as_value(r.resolve(s))?;
    if left == right && right == all {
        Ok(())
    } else {
        Err(format!(
            "grouping changed the answer:\n  (a ⊔ b) ⊔ c:  {left:?}\n  a ⊔ (b ⊔ c):  {right:?}\n  all at once:  {all:?}"
        ))
    }
}

fn idempotence(r: &dyn Resolver, s: &[Sibling]) -> Result<(), String> {
    let a = &s[0].value;
    let alone = as_value(r.resolve(s))?;
    let twice = merge(r, a, a)?;
    let resolved_again = as_value(r.resolve(&positions(std::slice::from_ref(&alone))))?;
    if twice == alone && resolved_again == alone {
        Ok(())
    } else {
        Err(format!(
            "repeating a value changed the answer:\n  a alone:          {alone:?}\n  a ⊔ a:            {twice:?}\n  answer resolved:  {resolved_again:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::{Counter, UnionSet};
    use crate::resolver::{Lww, MultiValue};

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..4)
    }

    fn quick() -> Config {
        Config {
            cases: 64,
            ..Config::default()
        }
    }

    #[test]
    fn builtins_obey_their_laws() {
        let lww = check(&Lww, bytes(), &quick()).unwrap();
        assert_eq!(
            lww.laws,
            vec![
                Law::Determinism,
                Law::Shape,
                Law::TombstonesReadAbsent,
                Law::PruneSafety
            ]
        );
        let mv = check(&MultiValue, bytes(), &quick()).unwrap();
        assert_eq!(mv.laws.len(), 3);
    }

    #[test]
    fn examples_obey_the_semilattice_laws() {
        let counters = proptest::collection::vec((1u128..4, -4i64..5), 0..4).prop_map(|adds| {
            adds.into_iter().fold(Vec::new(), |v, (w, by)| {
                let cur = (!v.is_empty()).then_some(v.as_slice());
                Counter::add(cur, ReplicaId::from_u128(w), by).unwrap().0
            })
        });
        let report = check(&Counter, counters, &quick()).unwrap();
        assert_eq!(report.laws.len(), 6);
        let sets =
            proptest::collection::btree_set(bytes(), 0..3).prop_map(|s| UnionSet::encode(&s));
        check(&UnionSet, sets, &quick()).unwrap();
        // Garbage values must not break them either (they merge as empty).
        check(&Counter, bytes(), &quick()).unwrap();
        check(&UnionSet, bytes(), &quick()).unwrap();
    }

    #[test]
    fn violation_display_is_readable() {
        let v = Violation {
            resolver: ResolverId::new("x", 1),
            law: Law::Commutativity,
            counterexample: positions(&[Value::Bytes(b"a".to_vec()), Value::Tombstone]),
            detail: "details".into(),
        };
        let text = v.to_string();
        assert!(
            text.starts_with(
                "resolver x@1 breaks commutativity\nminimal counterexample (2 siblings"
            )
        );
        assert!(text.contains("Bytes(\"a\")"));
        assert!(text.ends_with("details"));
    }
}
