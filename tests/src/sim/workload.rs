//! Clients: blind writes, deletes, stale-context writes, read-modify-writes with the context
//! read (here, or in another region a little later) and counter increments, on a few hot keys
//! of three tables, at every durability level; and what each request was answered.

use conflict::examples::Counter;
use conflict::{Dot, KeyState, Resolved, Seq, Value, VersionVector, WriteRefused};
use leader_core::{Durability, Event, ReadAnswer, ReadError, ReadLevel, WriteError, WriteReceipt};

use super::truth::{Slot, show};
use super::world::NEW_TABLE;
use super::world::{Ev, Phase, World};
use super::{Failure, Rollout};

/// What became of a client write.
#[derive(Debug, Clone)]
pub(super) enum OpOutcome {
    /// Not answered yet.
    Pending,
    /// Answered with a receipt (maybe `timed_out`).
    Acked(WriteReceipt),
    /// Refused; nothing was written.
    Refused,
    /// The region crashed before answering.
    Abandoned,
}

/// One client write and its fate.
#[derive(Debug, Clone)]
pub(super) struct OpRec {
    pub(super) region: usize,
    pub(super) slot: Slot,
    pub(super) value: Value,
    pub(super) durability: Durability,
    /// For a counter increment: the writer's own count after it.
    pub(super) counter_own: Option<u64>,
    /// An addition made inside the machine ([`Event::ClientAdd`]): its value, and so
    /// `counter_own`, are learnt from the write its reply names.
    pub(super) add: bool,
    /// When the context it carries was read, for a read-modify-write.
    pub(super) read_ms: Option<u64>,
    /// When it was issued, and when it was answered (virtual ms).
    pub(super) issued_ms: u64,
    pub(super) answered_ms: Option<u64>,
    pub(super) outcome: OpOutcome,
}

/// Request ids of quorum reads start here, apart from the client writes' (`ops` index + 1).
const QUORUM_READ_IDS: u64 = 1 << 40;

/// A quorum read waiting for its answer.
#[derive(Debug, Clone)]
pub(super) struct QuorumRead {
    region: usize,
    slot: Slot,
    level: ReadLevel,
    issued_ms: u64,
}

/// The write half of a read-modify-write whose read happened in another region.
#[derive(Debug, Clone)]
pub(super) struct Deferred {
    region: usize,
    slot: Slot,
    value: Value,
    context: VersionVector,
    read_ms: u64,
}

impl World {
    /// A client operation at region `r`; schedules the next one.
    pub(super) fn client_op(&mut self, r: usize) -> Result<(), Failure> {
        if self.phase != Phase::Workload {
            return Ok(());
        }
        let next = self.now + self.rng_work.range(1, 2 * self.p.op_interval_ms);
        self.push(next, Ev::Op(r));
        if !self.alive(r) {
            self.work.unavailable += 1;
            return Ok(());
        }
        let key = self.pick_key();
        let roll = self.rng_work.below(100);
        // A region being bootstrapped serves no reads (the API refuses them); its writes are
        // handed in and refused by the machine.
        if (42..68).contains(&roll) && self.bootstrapping(r) {
            self.work.bootstrapping += 1;
            return Ok(());
        }
        let table = if self.rng_work.chance(0.5) {
            "lww"
        } else {
            "mv"
        };
        // During a table's rollout, a client writes it where it is configured.
        let table = if self.opts.rollout == Some(Rollout::AddTable)
            && self.regions[r].opts.tables.contains_key(NEW_TABLE)
            && self.rng_work.chance(0.4)
        {
            NEW_TABLE
        } else {
            table
        };
        let slot = (table.to_owned(), key);
        match roll {
            0..30 => {
                let value = self.fresh_value(r);
                self.issue(r, slot, value, None, None, None)
            }
            30..38 => self.issue(r, slot, Value::Tombstone, None, None, None),
            38..42 => {
                // A context that supersedes nothing (a client that read long ago, or nothing):
                // the write stays concurrent with every sibling, which grows towards the cap.
                let value = self.fresh_value(r);
                self.issue(r, slot, value, Some(VersionVector::new()), None, None)
            }
            42..58 => {
                let context = self.context_at(r, &slot)?;
                let value = if self.rng_work.chance(0.1) {
                    Value::Tombstone
                } else {
                    self.fresh_value(r)
                };
                self.issue(r, slot, value, Some(context), None, Some(self.now))
            }
            58..68 => self.read_for_later(r, slot),
            _ => self.increment(r),
        }
    }

    /// A hot key, skewed towards the first ones.
    fn pick_key(&mut self) -> Vec<u8> {
        let n = self.p.hot_keys as u64;
        let i = self.rng_work.below(n).min(self.rng_work.below(n));
        format!("k{i}").into_bytes()
    }

    fn fresh_value(&mut self, r: usize) -> Value {
        Value::Bytes(format!("{}-{}", self.regions[r].name, self.ops.len() + 1).into_bytes())
    }

    /// A client read of `slot` at live region `r`, served as the API serves it
    /// ([`Replica::read`](leader_core::Replica::read)): at once, from the newest durable state
    /// of the key, which never waits for a commit. Like a real client it never gives up (an
    /// earlier simulator skipped reads the API would have parked until a commit, which is how
    /// unbounded read waits on a hot key went unseen); a state older than the last write this
    /// region acknowledged to the key fails the run (`stale-read`).
    fn read_state(&mut self, r: usize, slot: &Slot) -> Result<KeyState, Failure> {
        let m = self.regions[r].machine().expect("callers check alive");
        let mut state = m.read(&slot.0, &slot.1).cloned().unwrap_or_default();
        state.context = m.read_context(Some(&state));
        if let Some(dot) = self.last_acked.get(&(r, slot.clone()))
            && !state.context.covers(dot)
        {
            let detail = format!(
                "a read of {} at {} does not see {dot}, which that region acknowledged to its client",
                show(slot),
                self.regions[r].name
            );
            return Err(self.fail(("stale-read", detail)));
        }
        self.work.reads += 1;
        Ok(state)
    }

    /// Whether live region `r` is being bootstrapped from a snapshot.
    fn bootstrapping(&self, r: usize) -> bool {
        self.regions[r]
            .machine()
            .is_some_and(|m| m.bootstrap().is_some())
    }

    fn context_at(&mut self, r: usize, slot: &Slot) -> Result<VersionVector, Failure> {
        Ok(self.read_state(r, slot)?.context)
    }

    /// Reads at `r` and writes back, with the context read, at another region later.
    fn read_for_later(&mut self, r: usize, slot: (String, Vec<u8>)) -> Result<(), Failure> {
        let context = self.context_at(r, &slot)?;
        let others: Vec<usize> = (0..self.regions.len()).filter(|q| *q != r).collect();
        let region = others[self.rng_work.index(others.len())];
        let value = self.fresh_value(r);
        // One client operation per event, so the event count names it uniquely.
        let token = self.work.events;
        let at = self.now + self.rng_work.range(1, 5_000);
        let read_ms = self.now;
        self.deferred.insert(
            token,
            Deferred {
                region,
                slot,
                value,
                context,
                read_ms,
            },
        );
        self.push(at, Ev::OpWrite(token));
        Ok(())
    }

    pub(super) fn deferred_write(&mut self, token: u64) -> Result<(), Failure> {
        let Some(d) = self.deferred.remove(&token) else {
            return Ok(());
        };
        if self.phase != Phase::Workload || !self.alive(d.region) {
            self.work.unavailable += 1;
            return Ok(());
        }
        self.issue(
            d.region,
            d.slot,
            d.value,
            Some(d.context),
            None,
            Some(d.read_ms),
        )
    }

    /// A counter increment, half the time as a client does it (read the merged counter here,
    /// add one to this region's entry, write it back with the context read), half the time
    /// inside the machine ([`Event::ClientAdd`], Redis's `INCR`).
    fn increment(&mut self, r: usize) -> Result<(), Failure> {
        let key = self.pick_key();
        let slot = ("ctr".to_owned(), key);
        if self.rng_work.below(2) == 0 {
            return self.add(r, slot);
        }
        if self.bootstrapping(r) {
            self.work.bootstrapping += 1;
            return Ok(());
        }
        let state = self.read_state(r, &slot)?;
        let current = match state.resolve(&Counter) {
            Resolved::Value(b) => Some(b),
            Resolved::Absent | Resolved::Siblings(_) => None,
        };
        let writer = self.regions[r].id;
        let value = Counter::increment(current.as_deref(), writer, 1);
        let own = Counter::decode(&value)
            .and_then(|m| m.get(&writer).copied())
            .unwrap_or(0);
        let now = Some(self.now);
        self.issue(
            r,
            slot,
            Value::Bytes(value),
            Some(state.context),
            Some(own),
            now,
        )
    }

    /// Hands region `r` an addition of one to the counter at `slot`, made inside the machine.
    fn add(&mut self, r: usize, slot: Slot) -> Result<(), Failure> {
        // The value is learnt from the reply: the machine builds it.
        let (id, durability, timeout_ms) =
            self.record(r, &slot, Value::Tombstone, None, true, None);
        let ev = Event::ClientAdd {
            id,
            table: slot.0,
            key: slot.1,
            by: 1,
            durability,
            timeout_ms,
        };
        self.handle(r, ev)
    }

    fn pick_durability(&mut self) -> Durability {
        match self.rng_work.below(100) {
            0..40 => Durability::Local,
            40..65 => Durability::One,
            65..85 => Durability::Quorum,
            _ => Durability::All,
        }
    }

    /// Records a client request to region `r` (drawing its durability and timeout) as waiting
    /// for a dot; returns its id, durability and timeout.
    fn record(
        &mut self,
        r: usize,
        slot: &Slot,
        value: Value,
        counter_own: Option<u64>,
        add: bool,
        read_ms: Option<u64>,
    ) -> (u64, Durability, u64) {
        let durability = self.pick_durability();
        let timeout_ms = self.rng_work.range(50, 3_000);
        self.ops.push(OpRec {
            region: r,
            slot: slot.clone(),
            value,
            durability,
            counter_own,
            add,
            read_ms,
            issued_ms: self.now,
            answered_ms: None,
            outcome: OpOutcome::Pending,
        });
        let id = self.ops.len() as u64;
        self.work.writes += 1;
        self.regions[r].untaken.push_back((id, slot.clone()));
        (id, durability, timeout_ms)
    }

    /// Hands a client write to region `r` and records it.
    fn issue(
        &mut self,
        r: usize,
        slot: Slot,
        value: Value,
        context: Option<VersionVector>,
        counter_own: Option<u64>,
        read_ms: Option<u64>,
    ) -> Result<(), Failure> {
        let (id, durability, timeout_ms) =
            self.record(r, &slot, value.clone(), counter_own, false, read_ms);
        let ev = Event::ClientWrite {
            id,
            table: slot.0,
            key: slot.1,
            value,
            context,
            durability,
            timeout_ms,
        };
        self.handle(r, ev)
    }

    /// Region `r`'s step took its own dots `before + 1 ..= after`: they went to the oldest
    /// client writes without one, in order. Each is checked against the sibling cap, and a dot
    /// taken a second time (a crash freed it before it was durable) is recorded as reused.
    pub(super) fn took_dots(&mut self, r: usize, before: Seq, after: Seq) -> Result<(), Failure> {
        let own = self.regions[r].id;
        for seq in before.0 + 1..=after.0 {
            let Some((_, slot)) = self.regions[r].untaken.pop_front() else {
                let detail = format!(
                    "{} took dot {seq} with no client write waiting for one",
                    self.regions[r].name
                );
                return Err(self.fail(("dots", detail)));
            };
            let dot = Dot::new(own, Seq(seq));
            if self.created.insert(dot, self.now).is_some() {
                self.reused.insert(dot, self.now);
            }
            if self.opts.step_checks {
                self.check_sibling_cap(r, &slot)?;
            }
        }
        Ok(())
    }

    /// Records the answer to request `id` of region `r`.
    pub(super) fn on_reply(
        &mut self,
        r: usize,
        id: u64,
        result: Result<WriteReceipt, WriteError>,
    ) -> Result<(), Failure> {
        let idx = id as usize - 1;
        self.ops[idx].answered_ms = Some(self.now);
        let receipt = match result {
            Err(e) => {
                self.regions[r].untaken.retain(|(i, _)| *i != id);
                match &e {
                    WriteError::Refused(WriteRefused::ContextAhead { .. }) => {
                        self.work.refused_context += 1;
                    }
                    WriteError::TooManySiblings { .. }
                    | WriteError::Refused(WriteRefused::TooManySiblings { .. }) => {
                        self.work.refused_siblings += 1;
                    }
                    // Paced for a lagging in-sync peer past the write's timeout: not written.
                    WriteError::Overloaded { .. } => self.work.overloaded += 1,
                    // Only while the region really is being bootstrapped.
                    WriteError::Bootstrapping { .. } if self.bootstrapping(r) => {
                        self.work.bootstrapping += 1;
                    }
                    // A read-modify-write of the new table, written back at a region that
                    // does not have it yet.
                    WriteError::UnknownTable(_) if self.opts.rollout == Some(Rollout::AddTable) => {
                        self.work.unavailable += 1;
                    }
                    other => {
                        let detail = format!("request #{id} refused unexpectedly: {other}");
                        return Err(self.fail(("refusal", detail)));
                    }
                }
                self.ops[idx].outcome = OpOutcome::Refused;
                return Ok(());
            }
            Ok(receipt) => receipt,
        };
        if self.ops[idx].add {
            self.learn_addition(r, idx, &receipt)?;
        }
        if self.opts.step_checks {
            self.check_receipt(r, idx, &receipt)?;
        }
        if receipt.timed_out {
            self.work.timed_out += 1;
        } else {
            self.work.acked[receipt.durability as usize] += 1;
            let doom_due = self.doom.is_some_and(|d| self.now >= d.after_ms);
            if doom_due && receipt.durability >= Durability::One && self.pending_doom.is_none() {
                self.pending_doom = Some(r);
            }
        }
        let last = self.last_acked.entry((r, self.ops[idx].slot.clone()));
        let last = last.or_insert(receipt.dot);
        if receipt.dot.seq > last.seq || receipt.dot.replica != last.replica {
            // A restarted region keeps its replica id; a newer dot of it is the newer write.
            *last = receipt.dot;
        }
        self.ops[idx].outcome = OpOutcome::Acked(receipt);
        Ok(())
    }

    /// An acknowledged addition: its value is the write its dot names (the machine built it),
    /// its total must be that value's, and the writer's own count in it is what the final
    /// check holds the cluster to.
    fn learn_addition(
        &mut self,
        r: usize,
        idx: usize,
        receipt: &WriteReceipt,
    ) -> Result<(), Failure> {
        let written = self.truth.get(&receipt.dot).map(|(_, w)| w.value.clone());
        let Some(Value::Bytes(bytes)) = written else {
            let detail = format!(
                "{} acknowledged addition #{} as {}, which wrote no counter ({written:?})",
                self.regions[r].name,
                idx + 1,
                receipt.dot
            );
            return Err(self.fail(("counter", detail)));
        };
        if receipt.total != Some(Counter::total(&bytes)) {
            let detail = format!(
                "{} answered addition #{} with total {:?}; the value it wrote totals {}",
                self.regions[r].name,
                idx + 1,
                receipt.total,
                Counter::total(&bytes)
            );
            return Err(self.fail(("counter", detail)));
        }
        let own = Counter::decode(&bytes)
            .and_then(|m| m.get(&receipt.dot.replica).copied())
            .unwrap_or(0);
        if own == 0 {
            let detail = format!(
                "{}'s addition #{} ({}) left its own count at 0: it was not made under the region's id",
                self.regions[r].name,
                idx + 1,
                receipt.dot
            );
            return Err(self.fail(("counter", detail)));
        }
        let op = &mut self.ops[idx];
        op.value = Value::Bytes(bytes);
        op.counter_own = Some(own);
        Ok(())
    }

    /// Marks every unanswered request of region `r` as abandoned (its process died).
    pub(super) fn abandon_requests(&mut self, r: usize) {
        for op in &mut self.ops {
            if op.region == r && matches!(op.outcome, OpOutcome::Pending) {
                op.outcome = OpOutcome::Abandoned;
                self.work.abandoned += 1;
            }
        }
        // A quorum read dies with its region's process, unanswered.
        self.quorum_reads.retain(|_, q| q.region != r);
    }

    /// A client read at `read=quorum` (or, one time in five, `read=all`) at region `r`;
    /// schedules the next one. Its draws come from a stream of their own.
    pub(super) fn quorum_read(&mut self, r: usize) -> Result<(), Failure> {
        if self.phase != Phase::Workload {
            return Ok(());
        }
        let next = self.now + self.rng_read.range(1, 8 * self.p.op_interval_ms);
        self.push(next, Ev::QuorumRead(r));
        if !self.alive(r) {
            return Ok(());
        }
        let n = self.p.hot_keys as u64;
        let key = format!("k{}", self.rng_read.below(n)).into_bytes();
        let table = if self.rng_read.chance(0.5) {
            "lww"
        } else {
            "mv"
        };
        let level = if self.rng_read.chance(0.2) {
            ReadLevel::All
        } else {
            ReadLevel::Quorum
        };
        let timeout_ms = self.rng_read.range(100, 3_000);
        let id = QUORUM_READ_IDS + self.quorum_reads_issued;
        self.quorum_reads_issued += 1;
        let slot: Slot = (table.to_owned(), key);
        self.quorum_reads.insert(
            id,
            QuorumRead {
                region: r,
                slot: slot.clone(),
                level,
                issued_ms: self.now,
            },
        );
        let ev = Event::ClientRead {
            id,
            table: slot.0,
            key: slot.1,
            level,
            timeout_ms,
        };
        self.handle(r, ev)
    }

    /// The answer to quorum read `id` at region `r`: it must see every write acknowledged
    /// before it was issued at a level whose regions every set of its level's regions meets
    /// (`quorum-read`).
    pub(super) fn on_read_done(
        &mut self,
        r: usize,
        id: u64,
        result: Result<ReadAnswer, ReadError>,
    ) -> Result<(), Failure> {
        let Some(q) = self.quorum_reads.remove(&id) else {
            return Ok(());
        };
        let answer = match result {
            Ok(a) => a,
            Err(ReadError::TooFewRegions { .. }) => {
                self.work.quorum_reads_failed += 1;
                return Ok(());
            }
            Err(ReadError::Bootstrapping { .. }) if self.bootstrapping(r) => {
                self.work.bootstrapping += 1;
                return Ok(());
            }
            Err(e) => {
                let detail = format!("quorum read #{id} at {} refused: {e}", self.regions[r].name);
                return Err(self.fail(("refusal", detail)));
            }
        };
        self.work.quorum_reads += 1;
        let binding = |op: &OpRec| match &op.outcome {
            OpOutcome::Acked(receipt) if !receipt.timed_out => {
                let level_meets = match q.level {
                    ReadLevel::All => true,
                    _ => receipt.durability >= Durability::Quorum,
                };
                let acked = op.answered_ms.unwrap_or(u64::MAX);
                let before_loss = self.last_loss_ms.is_some_and(|l| acked <= l);
                (level_meets && acked < q.issued_ms && !before_loss && op.slot == q.slot)
                    .then_some(receipt.dot)
            }
            _ => None,
        };
        let missed: Vec<Dot> = self
            .ops
            .iter()
            .filter_map(binding)
            .filter(|dot| !answer.state.context.covers(dot))
            .collect();
        if let Some(dot) = missed.first() {
            let detail = format!(
                "a read={} of {} at {} issued at {} ms, answered by {:?}, does not see {dot} ({} missed), acknowledged before it at a level it must meet; it saw context {:?}",
                q.level,
                show(&q.slot),
                self.regions[r].name,
                q.issued_ms,
                answer.answered,
                missed.len(),
                answer.state.context
            );
            return Err(self.fail(("quorum-read", detail)));
        }
        Ok(())
    }
}
