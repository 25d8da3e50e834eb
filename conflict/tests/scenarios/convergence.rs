//! Random histories delivered in random orders with random duplicates converge, for every
//! built-in resolver and both examples.

use conflict::examples::{Counter, UnionSet};
use conflict::{Lww, MultiValue, Resolved};
use proptest::prelude::*;

use crate::history::{self, Mix, Outcome};

fn unique(_: &Resolved, _: conflict::ReplicaId, n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn increment(read: &Resolved, writer: conflict::ReplicaId, _: u64) -> Vec<u8> {
    let current = match read {
        Resolved::Value(b) => Some(b.as_slice()),
        Resolved::Absent | Resolved::Siblings(_) => None,
    };
    Counter::increment(current, writer, 1)
}

fn add(read: &Resolved, _: conflict::ReplicaId, n: u64) -> Vec<u8> {
    let current = match read {
        Resolved::Value(b) => Some(b.as_slice()),
        Resolved::Absent | Resolved::Siblings(_) => None,
    };
    UnionSet::insert(current, &n.to_be_bytes())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The multi-value oracle: siblings are exactly the writes no other write supersedes, and they
/// are pairwise concurrent.
fn assert_dvv_siblings(out: &Outcome) {
    let state = &out.delivered[0];
    let dots: std::collections::BTreeSet<_> = state.siblings.iter().map(|s| s.dot).collect();
    assert_eq!(dots, out.undominated());
    let write = |d| out.all_writes().find(|w| w.dot == d).expect("known write");
    for a in &dots {
        for b in &dots {
            assert!(
                a == b || !write(*a).context.covers(b),
                "{a} supersedes sibling {b}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn multi_value_converges_to_the_concurrent_writes(h in history::history(Mix::Full)) {
        let out = history::run(&h, &MultiValue, &unique);
        history::assert_converged(&out);
        assert_dvv_siblings(&out);
    }

    #[test]
    fn lww_converges_to_the_greatest_concurrent_write(h in history::history(Mix::Full)) {
        let out = history::run(&h, &Lww, &unique);
        history::assert_converged(&out);
        // Without pruning the key would keep every write no other write supersedes;
        // last-write-wins must end with exactly the greatest of those, although it pruned
        // along the way.
        let undominated = out.undominated();
        let expected = out
            .all_writes()
            .filter(|w| undominated.contains(&w.dot))
            .map(|w| w.sibling())
            .max_by_key(|s| s.order_key());
        let state = &out.delivered[0];
        prop_assert!(state.len() <= 1);
        prop_assert_eq!(state.siblings.last().cloned(), expected);
    }

    #[test]
    fn counter_converges(h in history::history(Mix::Full)) {
        let out = history::run(&h, &Counter, &increment);
        history::assert_converged(&out);
    }

    #[test]
    fn union_set_converges(h in history::history(Mix::Full)) {
        let out = history::run(&h, &UnionSet, &add);
        history::assert_converged(&out);
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Concurrent increments from different regions all count.
    #[test]
    fn counter_counts_every_increment(h in history::history(Mix::Monotone)) {
        let out = history::run(&h, &Counter, &increment);
        history::assert_converged(&out);
        let increments = out.all_writes().count() as i64;
        prop_assert_eq!(Counter::read(&out.delivered[0].resolve(&Counter)), increments);
    }

    #[test]
    fn union_set_keeps_every_added_element(h in history::history(Mix::Monotone)) {
        let out = history::run(&h, &UnionSet, &add);
        history::assert_converged(&out);
        let elements = UnionSet::elements(&out.delivered[0].resolve(&UnionSet));
        prop_assert_eq!(elements.len(), out.all_writes().count());
    }
}

/// The generator really produces what the properties need: concurrency, causality, deletes,
/// old contexts and stamps beyond the clock offset. Without this, a generator bug could make
/// every property above pass vacuously.
#[test]
fn histories_exercise_skew_conflicts_and_deletes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut skewed, mut multi_sibling, mut superseding, mut tombstones, mut lww_pruned) =
        (0, 0, 0, 0, 0);
    let (mut refused, mut foreign_accepted) = (0, 0);
    for _ in 0..64 {
        let h = history::history(Mix::Full)
            .new_tree(&mut runner)
            .expect("history")
            .current();
        let out = history::run(&h, &MultiValue, &unique);
        skewed += out.skewed_observations;
        refused += out.refused_context_ahead;
        foreign_accepted += out.foreign_context_writes;
        multi_sibling += usize::from(out.delivered[0].len() > 1);
        superseding += out
            .all_writes()
            .filter(|w| {
                out.all_writes()
                    .any(|v| v.dot != w.dot && w.context.covers(&v.dot))
            })
            .count();
        tombstones += out.all_writes().filter(|w| w.value.is_tombstone()).count();
        let lww = history::run(&h, &Lww, &unique);
        lww_pruned += usize::from(out.delivered[0].len() > lww.delivered[0].len());
    }
    assert!(skewed > 0, "no remote stamp was beyond the clock offset");
    assert!(
        multi_sibling > 5,
        "too few histories end with concurrent siblings"
    );
    assert!(superseding > 50, "too few writes supersede others");
    assert!(tombstones > 10, "too few deletes");
    assert!(lww_pruned > 5, "last-write-wins never had to prune");
    assert!(
        refused > 5,
        "no foreign context was ever ahead of the writer"
    );
    assert!(
        foreign_accepted > 5,
        "too few writes with a context read at another replica"
    );
}

/// The state of `writes`, applied in the order given.
fn state_of<'a>(
    writes: impl IntoIterator<Item = &'a conflict::Write>,
    r: &dyn conflict::Resolver,
) -> conflict::KeyState {
    let mut state = conflict::KeyState::new();
    for w in writes {
        state.apply(w, r);
    }
    state
}

/// `KeyState::join` (how a snapshot is installed) of the states of two sets of writes, each
/// a prefix of every origin's log (what an applied vector describes: a region applies each
/// origin's writes in order), is the state of their union.
fn assert_join_is_union(out: &Outcome, cuts: &[(usize, usize)], r: &dyn conflict::Resolver) {
    let cut = |side: usize| {
        out.logs.iter().enumerate().flat_map(move |(i, log)| {
            let (a, b) = cuts[i % cuts.len()];
            let n = [a % (log.len() + 1), b % (log.len() + 1)];
            log.iter().take([n[0], n[1], n[0].max(n[1])][side])
        })
    };
    let left = state_of(cut(0), r);
    let right = state_of(cut(1), r);
    let whole = state_of(cut(2), r);
    let mut joined = left.clone();
    joined.join(&right, r);
    assert_eq!(joined, whole, "join of two parts");
    let mut other_way = right;
    other_way.join(&left, r);
    assert_eq!(other_way, whole, "join is commutative");
    let mut again = joined.clone();
    again.join(&whole, r);
    assert_eq!(again, whole, "join is idempotent");
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn joining_two_states_gives_the_state_of_all_their_writes(h in history::history(Mix::Full), cuts in proptest::collection::vec((0usize..64, 0usize..64), 1..6)) {
        let out = history::run(&h, &MultiValue, &unique);
        assert_join_is_union(&out, &cuts, &MultiValue);
        let out = history::run(&h, &Lww, &unique);
        assert_join_is_union(&out, &cuts, &Lww);
        let out = history::run(&h, &Counter, &increment);
        assert_join_is_union(&out, &cuts, &Counter);
    }
}
