//! Persistence and group commit: what is staged for the next [`Effect::Persist`], the one
//! batch in flight, and what becomes true once it is durable (replies, acks, the log tail).

use std::collections::{BTreeMap, BTreeSet};

use conflict::{Dot, KeyState, ReplicaId, Seq, VersionVector};

use super::client::Wait;
use super::snapshot::BootstrapPhase;
use super::{Effect, PersistBatch, Quarantined, Replica, RequestId, Time, WriteReceipt};
use crate::limits::OWN_COMMITS_MAX;
use crate::msg::LogEntry;

/// A write waiting for its persistence step, with the client to answer.
#[derive(Debug)]
pub(super) struct PendingReply {
    pub(super) id: RequestId,
    pub(super) receipt: WriteReceipt,
    pub(super) timeout_ms: u64,
}

/// Work accumulated for the next persistence step.
#[derive(Debug, Default)]
pub(super) struct Staged {
    pub(super) keys: BTreeSet<(String, Vec<u8>)>,
    pub(super) log: Vec<LogEntry>,
    pub(super) replies: Vec<PendingReply>,
    pub(super) replicas: Vec<(ReplicaId, String)>,
    /// A staged log entry was quarantined: see [`PersistBatch::checkpoint`].
    pub(super) checkpoint: bool,
    pub(super) quarantined: Vec<Quarantined>,
    pub(super) released: Vec<Dot>,
    /// The snapshot transfer's progress changed: the batch records it (and is a checkpoint).
    pub(super) bootstrap: bool,
    /// A snapshot install: what it adds to the applied vector ([`PersistBatch::installed`]).
    pub(super) installed: Option<VersionVector>,
}

/// A persistence step in flight.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) log: Vec<LogEntry>,
    pub(super) replies: Vec<PendingReply>,
    pub(super) applied: VersionVector,
    /// The states, as this batch writes them, of the keys that readers are served from
    /// [`Replica::read`]'s durable copy: they become that copy when the batch is durable.
    pub(super) stable: Vec<((String, Vec<u8>), KeyState)>,
    /// Held-back writes this batch releases: they stop pinning the log once it is durable.
    pub(super) released: Vec<Dot>,
    /// The phase of the snapshot transfer this batch records, if it records one.
    pub(super) bootstrap: Option<BootstrapPhase>,
    /// This batch installs a snapshot ([`PersistBatch::installed`]).
    pub(super) installs: bool,
}

impl Replica {
    /// Issues the next persistence step if none is outstanding and anything is staged.
    pub(super) fn flush(&mut self, out: &mut Vec<Effect>) {
        if self.in_flight.is_some() {
            return;
        }
        // A log start that moved rides the next batch: a batch of its own would cost an fsync
        // after every quiet write (storage acts on it only at checkpoints anyway).
        self.advance_truncation(out);
        // What each peer is known to have durably applied, its acks joined with its lag-matrix
        // row, is persisted with the log start it allowed: a restart forgets the rows, and
        // with acks alone would take peers the log was truncated for as truncated past.
        let mut dirty_peers: Vec<(String, VersionVector)> = Vec::new();
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let known = self.known_applied(&name, &self.peers[&name]);
            let p = self
                .peers
                .get_mut(&name)
                .expect("names come from self.peers");
            if p.acked_dirty || p.known_persisted != known {
                p.acked_dirty = false;
                p.known_persisted = known.clone();
                dirty_peers.push((name, known));
            }
        }
        let staged = std::mem::take(&mut self.staged);
        self.debug_check_staged_log(&staged.log, staged.installed.as_ref());
        if staged.keys.is_empty()
            && staged.log.is_empty()
            && staged.released.is_empty()
            && dirty_peers.is_empty()
            && !staged.checkpoint
            && !staged.bootstrap
        {
            self.staged = staged;
            return;
        }
        let mut stable = Vec::new();
        let keys = staged
            .keys
            .into_iter()
            .map(|slot| {
                let state = self.keys.get(&slot).cloned().unwrap_or_default();
                if self.stable.contains_key(&slot) {
                    stable.push((slot.clone(), state.clone()));
                }
                (slot.0, slot.1, state)
            })
            .collect();
        let id = self.next_persist_id;
        self.next_persist_id += 1;
        self.counters.persists += 1;
        let batch = PersistBatch {
            id,
            keys,
            log: staged.log.clone(),
            applied: self.received.clone(),
            own_seq: self.own_seq,
            hlc_high: self.clock.last(),
            replicas: staged.replicas,
            peer_acked: dirty_peers,
            checkpoint: staged.checkpoint,
            quarantined: staged.quarantined,
            released: staged.released.clone(),
            truncate: self.truncated.clone(),
            installed: staged.installed.unwrap_or_default(),
            bootstrap: self
                .bootstrap
                .clone()
                .filter(|_| staged.bootstrap)
                .map(Box::new),
            collected: self.collected.clone(),
        };
        debug_assert!(
            batch.bootstrap.is_none() || batch.checkpoint,
            "a transfer's progress is recorded with the states it joined, by a checkpoint"
        );
        self.in_flight = Some(InFlight {
            id,
            log: staged.log,
            replies: staged.replies,
            applied: self.received.clone(),
            stable,
            released: staged.released,
            bootstrap: batch.bootstrap.as_ref().map(|b| b.phase),
            installs: !batch.installed.is_empty(),
        });
        out.push(Effect::Persist(batch));
    }

    pub(super) fn persisted(&mut self, now: Time, id: u64, out: &mut Vec<Effect>) {
        let Some(done) = self.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        self.durable.join(&done.applied);
        // A transfer is over once its install is durable and the catch-up reached `high`;
        // the install itself comes last (below), after this batch's entries entered the tail.
        self.finish_bootstrap(now, out);
        self.retry_snapshot_reads(out);
        let own = self.opts.replica;
        for (slot, state) in done.stable {
            let pending = self
                .keys
                .get(&slot)
                .is_some_and(|s| s.context.get(own) > self.durable.get(own));
            if pending {
                self.stable.insert(slot, state);
            } else {
                self.stable.remove(&slot);
            }
        }
        let regions = self.opts.peers.len() + 1;
        for reply in done.replies {
            let need = reply.receipt.durability.peers_needed(regions);
            let deadline_ms = now.mono_ms.saturating_add(reply.timeout_ms);
            self.waits.push(Wait {
                id: reply.id,
                dot: reply.receipt.dot,
                receipt: Some(reply.receipt),
                need,
                deadline_ms,
            });
        }
        self.check_waits(now, out);
        self.release_from_log(&done.released);
        self.count_log_bytes(&done.log);
        for entry in done.log {
            if entry.write.dot.replica == self.opts.replica {
                if self.own_commits.len() == OWN_COMMITS_MAX {
                    self.own_commits.pop_front();
                }
                self.own_commits.push_back((entry.seq(), now.mono_ms));
            }
            self.tail
                .entry(entry.write.dot.replica)
                .or_default()
                .push(entry, self.opts.log_tail_bytes);
        }
        if done.bootstrap == Some(BootstrapPhase::Received) {
            self.install_snapshot(Some(out));
        }
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.send_ack(&name, out);
            self.update_lag(now, &name);
            self.pump(&name, now, out);
        }
    }

    /// A batch's log holds, per origin, exactly the writes applied since the last batch:
    /// the contiguous run after what is durable up to what is received. Storage appends it to
    /// the per-origin log, which must stay gap-free (debug builds only).
    fn debug_check_staged_log(&self, log: &[LogEntry], installed: Option<&VersionVector>) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut base = self.durable.clone();
        if let Some(installed) = installed {
            base.join(installed);
        }
        let mut next: BTreeMap<ReplicaId, Seq> = BTreeMap::new();
        for e in log {
            let origin = e.write.dot.replica;
            let expected = *next
                .entry(origin)
                .or_insert_with(|| base.get(origin).next());
            debug_assert_eq!(
                e.seq(),
                expected,
                "persisted batches are contiguous per origin"
            );
            next.insert(origin, e.seq().next());
        }
        for (origin, received) in self.received.iter() {
            let upto = next.get(&origin).map_or(base.get(origin), |n| Seq(n.0 - 1));
            debug_assert_eq!(
                upto, received,
                "a batch logs every write received since the last"
            );
        }
    }
}
