//! Client writes: flow control (pacing to the slowest in-sync region), stamping and applying
//! a local write, the conflict log, and the durability waits that answer clients once enough
//! regions have their write.

use std::collections::BTreeSet;

use conflict::{
    ApplyOutcome, Dot, Hlc, KeyState, Resolver, ResolverId, Sibling, Value, VersionVector, Write,
};

use super::persist::PendingReply;
use super::{
    ConflictRecord, Effect, MAX_PACED_WRITES, Replica, RequestId, Time, WriteError, WriteReceipt,
};
use crate::consistency::Durability;
use crate::limits::{MAX_CLIENT_WAITS, MAX_UNANSWERED_WRITES};
use crate::msg::LogEntry;

/// The fields of [`Event::ClientWrite`] and [`Event::ClientAdd`], kept together on their way
/// through the machine.
#[derive(Debug)]
pub(super) struct WriteRequest {
    pub(super) id: RequestId,
    pub(super) table: String,
    pub(super) key: Vec<u8>,
    pub(super) change: Change,
    pub(super) durability: Durability,
    pub(super) timeout_ms: u64,
}

/// What a client write does to its key.
#[derive(Debug)]
pub(super) enum Change {
    /// Writes a value or tombstone with the context the client read (`None`: blind).
    Put {
        value: Value,
        context: Option<VersionVector>,
    },
    /// Adds to a counter: the value is built from the key's state when the write is taken.
    Add(i64),
}

/// A client waiting for other regions to have one of this region's writes durably: a durable
/// write's reply ([`Effect::Reply`]), or a `WAIT` ([`Effect::Waited`]) when `receipt` is
/// `None`.
#[derive(Debug)]
pub(super) struct Wait {
    pub(super) id: RequestId,
    pub(super) dot: Dot,
    pub(super) receipt: Option<WriteReceipt>,
    /// Other regions that must have the write.
    pub(super) need: usize,
    pub(super) deadline_ms: u64,
}

impl Replica {
    /// Takes a client write now, or queues it behind the writes already paced while an
    /// in-sync peer lacks too many of ours (see "Flow control" in docs/design.md).
    pub(super) fn client_write_paced(
        &mut self,
        now: Time,
        req: WriteRequest,
        out: &mut Vec<Effect>,
    ) {
        let pacer = if self.paced.is_empty() {
            self.paced_by(now)
        } else {
            None
        };
        if self.paced.is_empty() && pacer.is_none() {
            return self.client_write(now, req, out);
        }
        if self.paced.len() >= MAX_PACED_WRITES {
            let (peer, lag_writes) = pacer.or_else(|| self.paced_by(now)).unwrap_or_default();
            return self.refuse_overloaded(req.id, peer, lag_writes, out);
        }
        self.counters.writes_paced += 1;
        let deadline = now.mono_ms.saturating_add(req.timeout_ms);
        self.paced.push_back((req, deadline));
    }

    /// Admits paced writes, oldest first, while no in-sync peer lacks too many of ours; then
    /// refuses those whose timeout has passed.
    pub(super) fn admit_paced(&mut self, now: Time, out: &mut Vec<Effect>) {
        while !self.paced.is_empty() {
            match self.paced_by(now) {
                None => {
                    let (req, _) = self.paced.pop_front().expect("not empty");
                    self.client_write(now, req, out);
                }
                Some((peer, lag_writes)) => {
                    while let Some(i) = self.paced.iter().position(|(_, d)| *d <= now.mono_ms) {
                        let (req, _) = self.paced.remove(i).expect("position is in range");
                        self.refuse_overloaded(req.id, peer.clone(), lag_writes, out);
                    }
                    return;
                }
            }
        }
    }

    fn refuse_overloaded(&mut self, id: RequestId, peer: String, lag: u64, out: &mut Vec<Effect>) {
        self.counters.writes_overloaded += 1;
        let result = Err(WriteError::Overloaded {
            peer,
            lag_writes: lag,
            limit: self.opts.pace_lag_writes,
        });
        out.push(Effect::Reply { id, result });
    }

    /// The in-sync peer (and how many of our writes it lacks) that the next client write must
    /// wait for, if any; updates which peers are in sync. A peer is in sync while connected,
    /// making progress on our writes, and lacking no more than [`Options::pace_lag_writes`]
    /// of them since it last caught up. Like Kafka's in-sync replicas: a peer that fell
    /// behind while away catches up without stopping writes here, and paces them once it has.
    fn paced_by(&mut self, now: Time) -> Option<(String, u64)> {
        let limit = self.opts.pace_lag_writes;
        if limit == 0 {
            return None;
        }
        let own = self.opts.replica;
        let mut pacer: Option<(String, u64)> = None;
        for (name, peer) in &mut self.peers {
            let acked = peer.acked.get(own);
            // A stall whose recorded position is not the current ack is stale: the peer has
            // progressed since `update_lag` last looked.
            let stalled = peer.stalled.get(&own).is_some_and(|s| {
                s.acked == acked
                    && now.mono_ms.saturating_sub(s.since_ms) >= self.opts.relay_delay_ms
            });
            if peer.active.is_none() || stalled {
                peer.in_sync = false;
                continue;
            }
            let lag = self.own_seq.0.saturating_sub(acked.0);
            if lag <= limit {
                peer.in_sync = true;
            }
            if peer.in_sync && lag >= limit && pacer.as_ref().is_none_or(|(_, l)| lag > *l) {
                pacer = Some((name.clone(), lag));
            }
        }
        pacer
    }

    fn client_write(&mut self, now: Time, req: WriteRequest, out: &mut Vec<Effect>) {
        let WriteRequest {
            id,
            table,
            key,
            change,
            durability,
            timeout_ms,
        } = req;
        if self.unanswered_writes() >= MAX_UNANSWERED_WRITES {
            self.counters.writes_overloaded += 1;
            let result = Err(WriteError::Backlogged {
                limit: MAX_UNANSWERED_WRITES,
            });
            out.push(Effect::Reply { id, result });
            return;
        }
        let Some(resolver) = self.resolvers.get(&table).cloned() else {
            let result = Err(WriteError::UnknownTable(table));
            out.push(Effect::Reply { id, result });
            return;
        };
        let (value, context, total) = match change {
            Change::Put { value, context } => (value, context, None),
            Change::Add(by) => match self.counter_after(&table, &key, resolver.as_ref(), by) {
                Ok((value, context, total)) => (Value::Bytes(value), Some(context), Some(total)),
                Err(e) => {
                    out.push(Effect::Reply { id, result: Err(e) });
                    return;
                }
            },
        };
        if let Value::Bytes(bytes) = &value
            && let Err(e) = resolver.check_value(bytes)
        {
            let result = Err(WriteError::InvalidValue {
                table,
                reason: e.reason,
            });
            out.push(Effect::Reply { id, result });
            return;
        }
        let slot = (table, key);
        let empty = KeyState::default();
        let state = self.keys.get(&slot).unwrap_or(&empty);
        let after = state.siblings_after(context.as_ref().unwrap_or(&state.context));
        if after > self.opts.max_siblings {
            let max = self.opts.max_siblings;
            let result = Err(WriteError::TooManySiblings { count: after, max });
            out.push(Effect::Reply { id, result });
            return;
        }
        let dot = Dot {
            replica: self.opts.replica,
            seq: self.own_seq.next(),
        };
        // prepare_write stamps above every sibling of the key (the per-key causality rule).
        // A refused write still consumed a tick, which is harmless: HLCs only need to grow.
        let tick = self.clock.tick(now.wall_ms);
        let floor = &self.collected;
        let mut write = match state.prepare_write_above(dot, tick, context.as_ref(), value, floor) {
            Ok(w) => w,
            Err(e) => {
                out.push(Effect::Reply {
                    id,
                    result: Err(WriteError::Refused(e)),
                });
                return;
            }
        };
        if self.wall_clock_stamps {
            write.hlc = Hlc::new(now.wall_ms, 0);
        }
        if self.context_overflows(&slot.0, &slot.1, &write) {
            self.counters.context_overflows += 1;
            let result = Err(WriteError::ContextTooLarge {
                max: conflict::MAX_VV_ENTRIES,
            });
            out.push(Effect::Reply { id, result });
            return;
        }
        self.own_seq = dot.seq;
        let hlc = write.hlc;
        if !self.stable.contains_key(&slot) {
            // The key's own writes are all durable (an entry would exist otherwise): its
            // current state is what readers keep seeing until this write is durable too.
            let before = self.keys.get(&slot).cloned().unwrap_or_default();
            self.stable.insert(slot.clone(), before);
        }
        let (table, key) = slot;
        let conflict = self.apply(now, &table, &key, &write, resolver.as_ref());
        self.received.add_dot(&dot);
        let context = self.keys[&(table.clone(), key.clone())].context.clone();
        let receipt = WriteReceipt {
            dot,
            hlc,
            context,
            conflict,
            durability,
            durable_in: Vec::new(),
            timed_out: false,
            total,
        };
        self.counters.client_writes += 1;
        self.staged.replies.push(PendingReply {
            id,
            receipt,
            timeout_ms,
        });
        self.staged.log.push(LogEntry { table, key, write });
    }

    /// The value and context of `by` added to the counter at `key` now, and its new total:
    /// the key's resolved value (every sibling merged) is the base, and the write's context
    /// is the key's whole context, so it supersedes every sibling it merged. The writer is
    /// this replica, which takes client writes one at a time (see [`conflict::examples::Counter`]).
    fn counter_after(
        &self,
        table: &str,
        key: &[u8],
        resolver: &dyn Resolver,
        by: i64,
    ) -> Result<(Vec<u8>, VersionVector, i64), WriteError> {
        let Some(counter) = resolver.counter() else {
            return Err(WriteError::NotACounter {
                table: table.to_owned(),
                resolver: resolver.name().to_owned(),
            });
        };
        let slot = (table.to_owned(), key.to_vec());
        let empty = KeyState::default();
        let state = self.keys.get(&slot).unwrap_or(&empty);
        let current = match state.resolve(resolver) {
            conflict::Resolved::Value(bytes) => Some(bytes),
            conflict::Resolved::Absent | conflict::Resolved::Siblings(_) => None,
        };
        let (value, total) = counter
            .add(current.as_deref(), self.opts.replica, by)
            .map_err(|e| WriteError::InvalidValue {
                table: table.to_owned(),
                reason: e.reason,
            })?;
        Ok((value, state.context.clone(), total))
    }

    /// Takes a client's `WAIT`: answered at once if `regions` other regions already have this
    /// region's writes up to `seq`, else when they do or the timeout passes.
    pub(super) fn client_wait(
        &mut self,
        now: Time,
        id: RequestId,
        seq: conflict::Seq,
        regions: usize,
        timeout_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        if self.client_waits >= MAX_CLIENT_WAITS {
            let regions = self.durable_at_peers(seq);
            out.push(Effect::Waited { id, regions });
            return;
        }
        let have = self.durable_at_peers(seq);
        if have.len() >= regions || timeout_ms == 0 {
            out.push(Effect::Waited { id, regions: have });
            return;
        }
        self.client_waits += 1;
        let dot = Dot {
            replica: self.opts.replica,
            seq,
        };
        self.waits.push(Wait {
            id,
            dot,
            receipt: None,
            need: regions,
            deadline_ms: now.mono_ms.saturating_add(timeout_ms),
        });
    }

    /// Forgets the `WAIT` `id` (its client went away).
    pub(super) fn cancel_wait(&mut self, id: RequestId) {
        let before = self.waits.len();
        self.waits.retain(|w| w.id != id || w.receipt.is_some());
        self.client_waits -= before - self.waits.len();
        debug_assert_eq!(self.client_waits, self.counted_client_waits());
    }

    /// Applies a write to a key's in-memory state and stages the key for persistence.
    /// Returns whether the write met concurrent siblings (a conflict, now logged).
    pub(super) fn apply(
        &mut self,
        now: Time,
        table: &str,
        key: &[u8],
        w: &Write,
        r: &dyn Resolver,
    ) -> bool {
        let slot = (table.to_owned(), key.to_vec());
        let outcome = self.keys.update(&slot, |state| state.apply(w, r));
        let conflict = match &outcome {
            ApplyOutcome::Ignored => return false,
            ApplyOutcome::Applied { concurrent, .. } => {
                (!concurrent.is_empty()).then(|| concurrent.clone())
            }
        };
        if w.value.is_tombstone() {
            self.tombstones.insert(slot.clone());
        }
        self.staged.keys.insert(slot);
        if let Some(concurrent) = conflict {
            // What readers see now, for the conflict log only: not worth computing otherwise.
            let resolved = self.keys[&(table.to_owned(), key.to_vec())].resolve(r);
            self.record_conflict(now, table, key, w, &concurrent, r, &resolved);
            return true;
        }
        false
    }

    #[allow(clippy::too_many_arguments, reason = "one conflict's facts")]
    fn record_conflict(
        &mut self,
        now: Time,
        table: &str,
        key: &[u8],
        w: &Write,
        concurrent: &[Sibling],
        r: &dyn Resolver,
        resolved: &conflict::Resolved,
    ) {
        let state = &self.keys[&(table.to_owned(), key.to_vec())];
        let live: BTreeSet<Dot> = state.siblings.iter().map(|s| s.dot).collect();
        let mut siblings = vec![(w.dot, w.hlc, live.contains(&w.dot))];
        siblings.extend(
            concurrent
                .iter()
                .map(|s| (s.dot, s.hlc, live.contains(&s.dot))),
        );
        let outcome = match resolved {
            conflict::Resolved::Absent => "absent (a tombstone won)".to_owned(),
            conflict::Resolved::Value(_) => {
                let winners: Vec<String> = live.iter().map(|d| self.dot_name(d)).collect();
                format!("resolved to one value (kept {})", winners.join(", "))
            }
            conflict::Resolved::Siblings(s) => format!("{} siblings kept for readers", s.len()),
        };
        self.counters.conflicts += 1;
        if self.conflicts.len() >= self.opts.conflict_log_capacity {
            self.conflicts.pop_front();
        }
        self.conflicts.push_back(ConflictRecord {
            id: self.next_conflict_id,
            detected_ms: now.wall_ms,
            table: table.to_owned(),
            key: key.to_vec(),
            resolver: ResolverId::of(r).to_string(),
            siblings,
            outcome,
        });
        self.next_conflict_id += 1;
    }

    fn dot_name(&self, dot: &Dot) -> String {
        match self.replicas.get(&dot.replica) {
            Some(region) => format!("{region}:{}", dot.seq.0),
            None => format!("{}:{}", dot.replica, dot.seq.0),
        }
    }

    /// Client writes accepted (they took a dot) and not answered yet: staged for the next
    /// persistence step, in the step in flight, or durable here and waiting for other regions.
    /// Each is in exactly one of the three; [`MAX_UNANSWERED_WRITES`] bounds them together.
    pub(super) fn unanswered_writes(&self) -> usize {
        let in_flight = self.in_flight.as_ref().map_or(0, |f| f.replies.len());
        self.staged.replies.len() + in_flight + self.waits.len() - self.client_waits
    }

    /// Answers every durability wait that is met or past its deadline.
    pub(super) fn check_waits(&mut self, now: Time, out: &mut Vec<Effect>) {
        if self.waits.is_empty() {
            return;
        }
        let waits = std::mem::take(&mut self.waits);
        for w in waits {
            let peers = self.durable_at_peers(w.dot.seq);
            let met = peers.len() >= w.need;
            if !met && now.mono_ms < w.deadline_ms {
                self.waits.push(w);
                continue;
            }
            match w.receipt {
                Some(mut receipt) => {
                    receipt.timed_out = !met;
                    receipt.durable_in = std::iter::once(self.opts.region.clone())
                        .chain(peers)
                        .collect();
                    out.push(Effect::Reply {
                        id: w.id,
                        result: Ok(receipt),
                    });
                }
                None => {
                    self.client_waits -= 1;
                    out.push(Effect::Waited {
                        id: w.id,
                        regions: peers,
                    });
                }
            }
        }
    }

    /// The `WAIT`s among the durability waits, counted (checks the `client_waits` bookkeeping
    /// in debug builds).
    fn counted_client_waits(&self) -> usize {
        self.waits.iter().filter(|w| w.receipt.is_none()).count()
    }

    /// Peers known to have this region's writes up to `seq` durably, by name. A peer counts
    /// when its own ack says so, or when its latest matrix row (maybe relayed by a third
    /// region) does: both report durable applies only. (A wait starts once the write is
    /// durable here, so this region always has it.)
    fn durable_at_peers(&self, seq: conflict::Seq) -> Vec<String> {
        let dot = &Dot {
            replica: self.opts.replica,
            seq,
        };
        let mut regions = Vec::new();
        for (name, p) in &self.peers {
            let by_row = self
                .matrix
                .rows
                .get(name)
                .is_some_and(|(r, _)| r.applied.covers(dot));
            if p.acked.covers(dot) || by_row {
                regions.push(name.clone());
            }
        }
        regions
    }
}
