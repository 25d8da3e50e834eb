//! A random-history simulator for one key: several replicas write (blind, with a context read
//! earlier, or deletes), stamping with their own skewed hybrid clocks, and exchange writes
//! partially while they do; afterwards each origin's log is delivered to fresh key states in
//! random interleavings with random duplicates.

use std::collections::BTreeSet;

use conflict::{
    ApplyOutcome, Dot, HybridClock, KeyState, ReplicaId, Resolved, Resolver, Seq, Value,
    VersionVector, Write, WriteRefused,
};
use proptest::prelude::*;

pub(crate) const MAX_REPLICAS: usize = 4;

/// Which writes a history may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mix {
    /// Blind writes, writes with a context read earlier, and deletes.
    Full,
    /// Only read-modify-writes of the current value (blind or with the current context): the
    /// histories in which a counter must count every increment and a set keep every element.
    Monotone,
}

#[derive(Clone, Debug)]
pub(crate) enum WriteKind {
    Blind,
    /// With the context of the current state, passed explicitly.
    CurrentContext,
    /// With a context snapshot read earlier (index into the replica's snapshots).
    OldContext(u8),
    /// With a context a client read at another replica (`from`, read index `read`): accepted
    /// only once this replica has applied everything it covers.
    ForeignContext {
        from: u8,
        read: u8,
    },
    Delete {
        old_context: Option<u8>,
    },
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write {
        replica: u8,
        kind: WriteKind,
    },
    /// `to` applies the next `count` writes of origin `from` it has not applied yet.
    Sync {
        to: u8,
        from: u8,
        count: u8,
    },
    /// A replica reads the key and remembers the context and value.
    Read {
        replica: u8,
    },
    /// True time moves on.
    Advance {
        ms: u16,
    },
    /// One replica's clock is stepped (possibly backwards).
    Step {
        replica: u8,
        ms: i16,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct History {
    pub(crate) replicas: usize,
    pub(crate) offsets_ms: Vec<i64>,
    pub(crate) ops: Vec<Op>,
    /// One delivery schedule per fresh destination: (origin choice, duplicate choice).
    pub(crate) schedules: Vec<Vec<(u8, u8)>>,
}

fn write_kind(mix: Mix) -> BoxedStrategy<WriteKind> {
    match mix {
        Mix::Full => prop_oneof![
            3 => Just(WriteKind::Blind),
            1 => Just(WriteKind::CurrentContext),
            3 => any::<u8>().prop_map(WriteKind::OldContext),
            2 => any::<(u8, u8)>().prop_map(|(from, read)| WriteKind::ForeignContext { from, read }),
            1 => proptest::option::of(any::<u8>()).prop_map(|old_context| WriteKind::Delete { old_context }),
        ]
        .boxed(),
        Mix::Monotone => prop_oneof![Just(WriteKind::Blind), Just(WriteKind::CurrentContext)].boxed(),
    }
}

fn op(mix: Mix) -> impl Strategy<Value = Op> {
    let r = 0..MAX_REPLICAS as u8;
    prop_oneof![
        5 => (r.clone(), write_kind(mix)).prop_map(|(replica, kind)| Op::Write { replica, kind }),
        4 => (r.clone(), r.clone(), 1u8..4).prop_map(|(to, from, count)| Op::Sync { to, from, count }),
        2 => r.clone().prop_map(|replica| Op::Read { replica }),
        2 => (0u16..300).prop_map(|ms| Op::Advance { ms }),
        1 => (r, -400i16..400).prop_map(|(replica, ms)| Op::Step { replica, ms }),
    ]
}

/// Histories of up to 60 operations (so fewer writes than the sibling cap) over 2 to 4
/// replicas whose clocks are up to 3 s apart (far beyond the 500 ms offset), each delivered to
/// 3 fresh states.
pub(crate) fn history(mix: Mix) -> impl Strategy<Value = History> {
    (
        2..=MAX_REPLICAS,
        proptest::collection::vec(-3_000i64..3_000, MAX_REPLICAS),
        proptest::collection::vec(op(mix), 1..60),
        proptest::collection::vec(proptest::collection::vec(any::<(u8, u8)>(), 0..120), 3),
    )
        .prop_map(|(replicas, offsets_ms, ops, schedules)| History {
            replicas,
            offsets_ms,
            ops,
            schedules,
        })
}

/// Builds the value of a new write from the value its writer read.
pub(crate) type MakeValue = dyn Fn(&Resolved, ReplicaId, u64) -> Vec<u8>;

struct Replica {
    id: ReplicaId,
    state: KeyState,
    clock: HybridClock,
    offset_ms: i64,
    applied: Vec<usize>,
    reads: Vec<(VersionVector, Resolved)>,
    seq: Seq,
}

/// What a history produced.
pub(crate) struct Outcome {
    /// Each origin's log, in order.
    pub(crate) logs: Vec<Vec<Write>>,
    /// The simulated replicas' own states after they caught up on everything.
    pub(crate) replica_states: Vec<KeyState>,
    /// The fresh states the logs were delivered to.
    pub(crate) delivered: Vec<KeyState>,
    /// How many remote stamps were beyond the clock offset (to show skew really happened).
    pub(crate) skewed_observations: usize,
    /// Foreign-context writes refused because the writer had not applied the context yet.
    pub(crate) refused_context_ahead: usize,
    /// Writes accepted with a context read at another replica.
    pub(crate) foreign_context_writes: usize,
}

impl Outcome {
    pub(crate) fn all_writes(&self) -> impl Iterator<Item = &Write> {
        self.logs.iter().flatten()
    }

    /// Dots of the writes no other write's context covers: what a dotted version vector set
    /// must end with.
    pub(crate) fn undominated(&self) -> BTreeSet<Dot> {
        self.all_writes()
            .filter(|w| !self.all_writes().any(|v| v.context.covers(&w.dot)))
            .map(|w| w.dot)
            .collect()
    }
}

pub(crate) fn replica_id(i: usize) -> ReplicaId {
    ReplicaId::from_u128(0xA0 + i as u128)
}

/// Runs `h` with `resolver`, checks every apply's bookkeeping, and returns the final states.
pub(crate) fn run(h: &History, resolver: &dyn Resolver, make: &MakeValue) -> Outcome {
    let n = h.replicas;
    let mut time_ms: u64 = 1_800_000_000_000;
    let mut skewed = 0;
    let mut writes_made = 0u64;
    let mut refused = 0;
    let mut foreign_writes = 0;
    let mut replicas: Vec<Replica> = (0..n)
        .map(|i| Replica {
            id: replica_id(i),
            state: KeyState::new(),
            clock: HybridClock::new(500),
            offset_ms: h.offsets_ms[i],
            applied: vec![0; n],
            reads: Vec::new(),
            seq: Seq::ZERO,
        })
        .collect();
    let mut logs: Vec<Vec<Write>> = vec![Vec::new(); n];

    let phys = |r: &Replica, t: u64| t.saturating_add_signed(r.offset_ms);

    for op in &h.ops {
        match op {
            Op::Write { replica, kind } => {
                let i = *replica as usize % n;
                let foreign = match kind {
                    WriteKind::ForeignContext { from, read } => {
                        let reads = &replicas[*from as usize % n].reads;
                        reads.get(*read as usize % reads.len().max(1)).cloned()
                    }
                    _ => None,
                };
                let is_foreign = foreign.is_some();
                let r = &mut replicas[i];
                let tick = r.clock.tick(phys(r, time_ms));
                let current = (r.state.context.clone(), r.state.resolve(resolver));
                let old = |k: u8| r.reads.get(k as usize % r.reads.len().max(1)).cloned();
                let (ctx, read, delete) = match kind {
                    WriteKind::Blind => (None, current.1, false),
                    WriteKind::CurrentContext => (Some(current.0), current.1, false),
                    WriteKind::OldContext(k) => match old(*k) {
                        Some((c, v)) => (Some(c), v, false),
                        None => (None, current.1, false),
                    },
                    WriteKind::ForeignContext { .. } => match foreign {
                        Some((c, v)) => (Some(c), v, false),
                        None => (None, current.1, false),
                    },
                    WriteKind::Delete { old_context } => (
                        old_context.and_then(old).map(|(c, _)| c),
                        Resolved::Absent,
                        true,
                    ),
                };
                let value = if delete {
                    Value::Tombstone
                } else {
                    Value::Bytes(make(&read, r.id, writes_made + 1))
                };
                let dot = Dot::new(r.id, r.seq.next());
                let w = match r.state.prepare_write(dot, tick, ctx.as_ref(), value) {
                    Ok(w) => w,
                    Err(WriteRefused::ContextAhead { missing }) => {
                        let ctx = ctx.expect("only a client context can be ahead");
                        assert!(!r.state.context.dominates(&ctx));
                        assert!(!missing.is_empty());
                        refused += 1;
                        continue;
                    }
                    Err(e) => panic!("a local write within the limits is accepted: {e}"),
                };
                writes_made += 1;
                foreign_writes += usize::from(is_foreign);
                r.seq = dot.seq;
                assert!(w.hlc >= tick);
                w.validate().expect("prepared writes are well-formed");
                let outcome = r.state.apply(&w, resolver);
                assert!(outcome.is_applied(), "a fresh local write applies");
                r.applied[i] += 1;
                logs[i].push(w);
            }
            Op::Sync { to, from, count } => {
                let (to, from) = (*to as usize % n, *from as usize % n);
                if to == from {
                    continue;
                }
                let r = &mut replicas[to];
                for _ in 0..*count {
                    let Some(w) = logs[from].get(r.applied[from]) else {
                        break;
                    };
                    let observed = r.clock.observe(w.hlc, phys(r, time_ms));
                    skewed += usize::from(observed.skew_ahead_ms.is_some());
                    check_apply(&mut r.state, w, resolver);
                    r.applied[from] += 1;
                }
            }
            Op::Read { replica } => {
                let r = &mut replicas[*replica as usize % n];
                let read = (r.state.context.clone(), r.state.resolve(resolver));
                r.reads.push(read);
            }
            Op::Advance { ms } => time_ms += u64::from(*ms),
            Op::Step { replica, ms } => replicas[*replica as usize % n].offset_ms += i64::from(*ms),
        }
    }

    // The replicas catch up on everything, origin by origin in round-robin.
    for r in &mut replicas {
        while r.applied.iter().zip(&logs).any(|(&a, log)| a < log.len()) {
            for (log, applied) in logs.iter().zip(r.applied.iter_mut()) {
                if let Some(w) = log.get(*applied) {
                    check_apply(&mut r.state, w, resolver);
                    *applied += 1;
                }
            }
        }
    }
    let delivered = h
        .schedules
        .iter()
        .map(|s| deliver(&logs, s, resolver))
        .collect();
    Outcome {
        logs,
        replica_states: replicas.into_iter().map(|r| r.state).collect(),
        delivered,
        skewed_observations: skewed,
        refused_context_ahead: refused,
        foreign_context_writes: foreign_writes,
    }
}

/// Applies `w` and checks that the outcome's bookkeeping is consistent with the state.
fn check_apply(state: &mut KeyState, w: &Write, resolver: &dyn Resolver) -> ApplyOutcome {
    let before = state.clone();
    let outcome = state.apply(w, resolver);
    match &outcome {
        ApplyOutcome::Ignored => {
            assert!(before.context.covers(&w.dot));
            assert_eq!(*state, before);
        }
        ApplyOutcome::Applied {
            superseded,
            pruned,
            concurrent,
        } => {
            assert!(superseded.iter().all(|s| w.context.covers(&s.dot)));
            assert!(concurrent.iter().all(|s| !w.context.covers(&s.dot)));
            assert_eq!(superseded.len() + concurrent.len(), before.len());
            assert_eq!(state.len() + pruned.len(), concurrent.len() + 1);
            assert!(state.context.covers(&w.dot));
            assert!(state.context.dominates(&w.context));
        }
    }
    state
        .check_invariants()
        .expect("invariants hold after apply");
    outcome
}

/// Delivers every origin's log, in order, to a fresh state: origins interleaved as the schedule
/// says, with duplicates of already-delivered writes; then every write once more.
fn deliver(logs: &[Vec<Write>], schedule: &[(u8, u8)], resolver: &dyn Resolver) -> KeyState {
    let mut state = KeyState::new();
    let mut next = vec![0usize; logs.len()];
    let mut steps = schedule.iter().copied().chain(std::iter::repeat((0, 1)));
    loop {
        let pending: Vec<usize> = (0..logs.len())
            .filter(|&o| next[o] < logs[o].len())
            .collect();
        if pending.is_empty() {
            break;
        }
        let (origin_choice, dup) = steps.next().expect("the schedule is endless");
        let o = pending[origin_choice as usize % pending.len()];
        if dup % 4 == 0 && next[o] > 0 {
            let again = &logs[o][dup as usize % next[o]];
            assert_eq!(state.apply(again, resolver), ApplyOutcome::Ignored);
        } else {
            check_apply(&mut state, &logs[o][next[o]], resolver);
            next[o] += 1;
        }
    }
    // Every write delivered again, e.g. by a relay: nothing changes, pruned losers stay gone.
    let settled = state.clone();
    for w in logs.iter().flatten() {
        assert_eq!(state.apply(w, resolver), ApplyOutcome::Ignored);
    }
    assert_eq!(state, settled);
    state
}

/// All final states are identical, byte for byte, and causally later writes always order after
/// what they supersede.
pub(crate) fn assert_converged(out: &Outcome) {
    let first = &out.delivered[0];
    for s in out.delivered.iter().chain(&out.replica_states) {
        assert_eq!(s, first, "regions diverged");
        assert_eq!(s.digest(), first.digest());
        assert_eq!(s.to_bytes(), first.to_bytes());
    }
    let mut full = VersionVector::new();
    for w in out.all_writes() {
        full.add_dot(&w.dot);
        full.join(&w.context);
    }
    assert_eq!(first.context, full, "the context is every write seen");
    for w in out.all_writes() {
        for v in out.all_writes() {
            if w.dot != v.dot && w.context.covers(&v.dot) {
                assert!(
                    w.hlc > v.hlc,
                    "{} supersedes {} but is not stamped later ({:?} <= {:?})",
                    w.dot,
                    v.dot,
                    w.hlc,
                    v.hlc
                );
            }
        }
    }
}
