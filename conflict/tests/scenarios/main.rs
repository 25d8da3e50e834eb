//! Scenario and property tests of the `conflict` crate, through its public API only.
//! One test binary (modules below) keeps link time low on small machines.

mod history;

mod convergence;
mod counter;
mod key_state;
mod laws_negative;
mod lww;
mod multi_value;

use conflict::{Dot, HybridClock, KeyState, ReplicaId, Resolver, Seq, Value, Write};

/// A region in a hand-written scenario: a replica id, its key state and its clock.
pub(crate) struct Region {
    pub(crate) id: ReplicaId,
    pub(crate) state: KeyState,
    pub(crate) clock: HybridClock,
    pub(crate) seq: Seq,
}

impl Region {
    pub(crate) fn new(n: u128) -> Self {
        Region {
            id: ReplicaId::from_u128(n),
            state: KeyState::new(),
            clock: HybridClock::new(500),
            seq: Seq::ZERO,
        }
    }

    /// A client write at this region at physical time `now_ms`: blind when `ctx` is `None`.
    pub(crate) fn write(
        &mut self,
        now_ms: u64,
        ctx: Option<&conflict::VersionVector>,
        value: Value,
        resolver: &dyn Resolver,
    ) -> Write {
        let tick = self.clock.tick(now_ms);
        self.seq = self.seq.next();
        let w = self
            .state
            .prepare_write(Dot::new(self.id, self.seq), tick, ctx, value)
            .expect("write accepted");
        assert!(self.state.apply(&w, resolver).is_applied());
        w
    }

    /// Receives a replicated write at physical time `now_ms`.
    pub(crate) fn receive(
        &mut self,
        now_ms: u64,
        w: &Write,
        resolver: &dyn Resolver,
    ) -> conflict::ApplyOutcome {
        self.clock.observe(w.hlc, now_ms);
        self.state.apply(w, resolver)
    }
}

pub(crate) fn bytes(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}
