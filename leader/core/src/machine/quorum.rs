//! Reads above level `one` (docs/design.md, "Quorum reads"): this region's state of a key
//! joined with the states of enough other regions, and read repair.
//!
//! A read at `quorum` asks every connected peer for its newest durable state of the key
//! ([`ReadRequest`]) and answers once a majority of all regions, counting this one, have
//! answered: any majority meets the majority where a write acknowledged at
//! `durability=quorum` is durable, so the join holds that write or something that supersedes
//! it. Key states form a join-semilattice, so joining the answers is the same operation a
//! region applies to replicated state, and the result does not depend on who answered first.
//! Too few answers within the read's timeout fail the read, naming who answered: a read is
//! never silently downgraded to a local one.
//!
//! Read repair: what the join holds that this region lacked is joined into it here at once
//! ([`Replica::join_state`]), and the regions whose answer lacked part of it are sent the
//! joined state ([`ReadRepair`]), ahead of normal streaming. Writes carry their dots, so a
//! write joined early is ignored when the log delivers it later.

use std::collections::BTreeMap;

use conflict::limits::{MAX_KEY_BYTES, MAX_TABLE_NAME_BYTES};
use conflict::{KeyState, VersionVector};

use super::{ConnId, Effect, ReadAnswer, ReadError, Replica, RequestId, Time};
use crate::consistency::ReadLevel;
use crate::limits::MAX_QUORUM_READS;
use crate::msg::{PeerMsg, ReadRepair, ReadReply, ReadRequest, SlotKey};

/// A read waiting for other regions' answers.
#[derive(Debug)]
pub(super) struct QuorumRead {
    slot: SlotKey,
    level: ReadLevel,
    /// Other regions that must answer.
    need: usize,
    started_ms: u64,
    deadline_ms: u64,
    /// Peers asked, with the connection the request went out on.
    asked: BTreeMap<String, ConnId>,
    /// Answers, in arrival order.
    answers: Vec<(String, Option<KeyState>)>,
    /// The join of the answering regions' spreadable vectors ([`Replica::spreadable`]).
    spreadable: VersionVector,
    /// Peers that could not answer, with why.
    refused: BTreeMap<String, String>,
}

impl Replica {
    /// A client read at `level` ([`super::Event::ClientRead`]).
    pub(super) fn client_read(
        &mut self,
        now: Time,
        id: RequestId,
        slot: SlotKey,
        level: ReadLevel,
        timeout_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        if let Some(b) = &self.bootstrap {
            let progress = b.progress();
            return out.push(Effect::ReadDone {
                id,
                result: Err(ReadError::Bootstrapping { progress }),
            });
        }
        if !self.resolvers.contains_key(&slot.0) {
            return out.push(Effect::ReadDone {
                id,
                result: Err(ReadError::UnknownTable(slot.0)),
            });
        }
        let need = level.peers_needed(self.opts.peers.len() + 1);
        if need > 0 && self.quorum_reads.len() >= MAX_QUORUM_READS {
            self.counters.quorum_reads_failed += 1;
            return out.push(Effect::ReadDone {
                id,
                result: Err(ReadError::Overloaded {
                    waiting: self.quorum_reads.len(),
                }),
            });
        }
        let read = QuorumRead {
            slot,
            level,
            need,
            started_ms: now.mono_ms,
            deadline_ms: now.mono_ms.saturating_add(timeout_ms),
            asked: BTreeMap::new(),
            answers: Vec::new(),
            refused: BTreeMap::new(),
            spreadable: VersionVector::new(),
        };
        if need == 0 {
            return self.finish_read(id, read, out);
        }
        self.quorum_reads.insert(id, read);
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.ask_for_read(id, &name, out);
        }
    }

    /// Asks `name` for its state of the key of read `id`, if it is connected and has not
    /// been asked on its current connection.
    fn ask_for_read(&mut self, id: RequestId, name: &str, out: &mut Vec<Effect>) {
        let Some(conn) = self.peers.get(name).and_then(|p| p.active) else {
            return;
        };
        let Some(read) = self.quorum_reads.get_mut(&id) else {
            return;
        };
        let answered = read.answers.iter().any(|(n, _)| n == name);
        if answered || read.asked.get(name) == Some(&conn) {
            return;
        }
        read.asked.insert(name.to_owned(), conn);
        read.refused.remove(name);
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::ReadRequest(ReadRequest {
                id,
                table: read.slot.0.clone(),
                key: read.slot.1.clone(),
            }),
        });
    }

    /// A peer's hello was accepted: the reads waiting for answers ask it (again: an answer on
    /// an earlier connection may have been lost with it).
    pub(super) fn ask_pending_reads(&mut self, name: &str, out: &mut Vec<Effect>) {
        let ids: Vec<RequestId> = self.quorum_reads.keys().copied().collect();
        for id in ids {
            self.ask_for_read(id, name, out);
        }
    }

    /// A peer asks for our state of a key: the newest durable one, as a local read sees it.
    pub(super) fn on_read_request(
        &mut self,
        name: &str,
        conn: ConnId,
        r: ReadRequest,
        out: &mut Vec<Effect>,
    ) {
        if r.table.len() > MAX_TABLE_NAME_BYTES || r.key.len() > MAX_KEY_BYTES {
            let detail = format!(
                "read request with a table name of {} bytes or a key of {} bytes (limits {MAX_TABLE_NAME_BYTES} and {MAX_KEY_BYTES})",
                r.table.len(),
                r.key.len()
            );
            return self.violation(name, conn, detail, out);
        }
        let refused = if let Some(b) = &self.bootstrap {
            Some(format!(
                "region {} is being bootstrapped from a snapshot ({})",
                self.opts.region,
                b.progress()
            ))
        } else if !self.resolvers.contains_key(&r.table) {
            Some(format!(
                "table '{}' is not configured in region {}",
                r.table, self.opts.region
            ))
        } else {
            None
        };
        let mut state = match refused {
            Some(_) => None,
            None => self.read(&r.table, &r.key).cloned(),
        };
        // A key of many large siblings may not fit one frame: refused rather than sent (the
        // transport would refuse the frame and reset the stream).
        let size = state.as_ref().map_or(0, KeyState::estimated_bytes);
        let refused = if size > self.opts.max_batch_bytes {
            state = None;
            Some(format!(
                "the key's state in region {} is {size} bytes, more than one frame carries ({}); read it there at read=one",
                self.opts.region, self.opts.max_batch_bytes
            ))
        } else {
            refused
        };
        let spreadable = self.spreadable();
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::ReadReply(ReadReply {
                id: r.id,
                state,
                refused,
                spreadable,
            }),
        });
    }

    /// The writes whose copy in a key state read repair may hand to another region: those
    /// durable in this region's log and in another's — a third region's writes this region
    /// applied durably (their origin has them too), and this region's own once another
    /// region has acknowledged them durably. A write only one log holds must not be spread
    /// by repair: if that region were lost for good, the repaired regions would hold it in a
    /// key state that no log can deliver to the others, and the regions would never agree
    /// (the simulator's seed 383: an origin lost right after a quorum read spread its write).
    pub(super) fn spreadable(&self) -> VersionVector {
        let own = self.opts.replica;
        let replicated = self
            .peers
            .iter()
            .map(|(name, p)| self.known_applied(name, p).get(own))
            .max()
            .unwrap_or(conflict::Seq::ZERO);
        let mut out = VersionVector::new();
        for (origin, seq) in self.durable.iter() {
            let seq = if origin == own {
                seq.min(replicated)
            } else {
                seq
            };
            if seq > conflict::Seq::ZERO {
                out.add_dot(&conflict::Dot {
                    replica: origin,
                    seq,
                });
            }
        }
        out
    }

    /// A peer's answer to one of our reads.
    pub(super) fn on_read_reply(
        &mut self,
        name: &str,
        conn: ConnId,
        r: ReadReply,
        out: &mut Vec<Effect>,
    ) {
        if let Some(state) = &r.state
            && let Some(detail) = self.foreign_state_problem(state)
        {
            return self.violation(name, conn, format!("read reply: {detail}"), out);
        }
        let Some(read) = self.quorum_reads.get_mut(&r.id) else {
            return; // answered or timed out already: a late answer
        };
        if read.asked.get(name) != Some(&conn) || read.answers.iter().any(|(n, _)| n == name) {
            return; // not asked on this connection, or answered already
        }
        match r.refused {
            Some(why) => {
                read.refused.insert(name.to_owned(), why);
            }
            None => {
                read.answers.push((name.to_owned(), r.state));
                read.spreadable.join(&r.spreadable);
            }
        }
        if read.answers.len() >= read.need {
            let read = self.quorum_reads.remove(&r.id).expect("found above");
            self.finish_read(r.id, read, out);
        }
    }

    /// A peer sends a key's state joined by one of its quorum reads: join it here.
    pub(super) fn on_read_repair(
        &mut self,
        name: &str,
        conn: ConnId,
        r: ReadRepair,
        out: &mut Vec<Effect>,
    ) {
        if r.table.len() > MAX_TABLE_NAME_BYTES || r.key.len() > MAX_KEY_BYTES {
            let detail = format!(
                "read repair with a table name of {} bytes or a key of {} bytes",
                r.table.len(),
                r.key.len()
            );
            return self.violation(name, conn, detail, out);
        }
        if let Some(detail) = self.foreign_state_problem(&r.state) {
            return self.violation(name, conn, format!("read repair: {detail}"), out);
        }
        if self.bootstrap.is_some() {
            return; // the transfer brings every key; this one is joined from the log later
        }
        if self.join_state((r.table, r.key), r.state) {
            self.counters.read_repairs_applied += 1;
        }
    }

    /// Why a key state sent by a peer must not be joined here, if it must not: its context
    /// claims writes of this region it never made (joining it would poison the key, as for a
    /// replicated write) or sequence numbers no replica reaches (`Replica::impossible_vector`,
    /// as for snapshot chunks), or it holds a sibling its context does not cover.
    fn foreign_state_problem(&self, state: &KeyState) -> Option<String> {
        let uncovered = state.siblings.iter().any(|s| !state.context.covers(&s.dot));
        (self.impossible_vector(&state.context) || uncovered).then(|| {
            format!(
                "a key state whose context {:?} claims writes of this region it never made ({} made), unreachable sequence numbers, or siblings it does not cover",
                state.context, self.own_seq
            )
        })
    }

    /// Reads whose deadline has passed fail, naming who answered.
    pub(super) fn expire_reads(&mut self, now: Time, out: &mut Vec<Effect>) {
        let due: Vec<RequestId> = self
            .quorum_reads
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now.mono_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let read = self.quorum_reads.remove(&id).expect("listed above");
            if self.short_reads {
                self.finish_read(id, read, out);
                continue;
            }
            let mut answered = vec![self.opts.region.clone()];
            answered.extend(read.answers.iter().map(|(n, _)| n.clone()));
            let missing = self
                .peers
                .keys()
                .filter(|n| !read.answers.iter().any(|(a, _)| a == *n))
                .map(|n| {
                    let why = match (read.refused.get(n), read.asked.contains_key(n)) {
                        (Some(why), _) => why.clone(),
                        (None, true) => "no answer in time".to_owned(),
                        (None, false) => "not connected".to_owned(),
                    };
                    (n.clone(), why)
                })
                .collect();
            self.counters.quorum_reads_failed += 1;
            out.push(Effect::ReadDone {
                id,
                result: Err(ReadError::TooFewRegions {
                    level: read.level,
                    needed: read.need + 1,
                    answered,
                    missing,
                    waited_ms: now.mono_ms.saturating_sub(read.started_ms),
                }),
            });
        }
    }

    /// The earliest deadline of a read waiting for answers.
    pub(super) fn reads_deadline(&self) -> Option<u64> {
        self.quorum_reads.values().map(|r| r.deadline_ms).min()
    }

    /// Enough regions answered: join their states with ours, repair whoever lacked part of
    /// the join (here and there), and answer.
    fn finish_read(&mut self, id: RequestId, read: QuorumRead, out: &mut Vec<Effect>) {
        let resolver = self
            .resolvers
            .get(&read.slot.0)
            .cloned()
            .expect("checked when the read began; tables do not change while running");
        let (table, key) = &read.slot;
        let ours = self.read(table, key).cloned().unwrap_or_default();
        let mut joined = ours.clone();
        for (_, state) in &read.answers {
            if let Some(s) = state {
                joined.join(s, resolver.as_ref());
            }
        }
        if read.need > 0 {
            self.counters.quorum_reads += 1;
        }
        // Repair only with writes two logs hold (see `spreadable`); otherwise the log brings
        // them in time, or they were never more than one region's.
        let mut spreadable = self.spreadable();
        spreadable.join(&read.spreadable);
        let repairable = spreadable.dominates(&joined.context);
        if joined != ours {
            if !repairable {
                self.counters.read_repairs_skipped += 1;
            } else if self.join_state(read.slot.clone(), joined.clone()) {
                self.counters.read_repairs += 1;
            }
        }
        for (name, state) in &read.answers {
            let lacks = state.as_ref().is_none_or(|s| *s != joined)
                && joined != KeyState::default()
                && repairable
                && joined.estimated_bytes() <= self.opts.max_batch_bytes;
            let conn = self.peers.get(name).and_then(|p| p.active);
            if let (true, Some(conn)) = (lacks, conn) {
                self.counters.read_repairs_sent += 1;
                out.push(Effect::Send {
                    peer: name.clone(),
                    conn,
                    msg: PeerMsg::ReadRepair(ReadRepair {
                        table: table.clone(),
                        key: key.clone(),
                        state: joined.clone(),
                    }),
                });
            }
        }
        let mut answered = vec![self.opts.region.clone()];
        answered.extend(read.answers.into_iter().map(|(n, _)| n));
        joined.context = self.read_context(Some(&joined));
        out.push(Effect::ReadDone {
            id,
            result: Ok(ReadAnswer {
                state: joined,
                answered,
            }),
        });
    }
}
