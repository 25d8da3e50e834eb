//! A region's disk: exactly what a crash leaves behind.
//!
//! A [`PersistBatch`] reaches the disk atomically when its fsync completes, and not before;
//! a crash loses the batch in flight and everything only in memory. A restart rebuilds the
//! machine from [`Disk::recovered`]. Committing checks the batch against what the disk
//! already holds (applied vectors only grow, each origin's log stays gap-free), so a machine
//! that ever asks to persist something inconsistent is caught at the write, not at the end.

use std::collections::BTreeMap;

use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, VersionVector};
use leader_core::{LogEntry, PersistBatch, Quarantined, Recovered};

/// The durable state of one region.
#[derive(Debug, Default)]
pub struct Disk {
    /// Last sequence number this replica assigned, as durable.
    pub own_seq: Seq,
    /// HLC high-water mark.
    pub hlc_high: Hlc,
    /// Durably applied, per origin (own writes included).
    pub applied: VersionVector,
    /// Every stored key.
    pub keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// The log of every origin, by (origin, seq).
    pub log: BTreeMap<(ReplicaId, Seq), LogEntry>,
    /// Replica ids learned, with their regions.
    pub replicas: BTreeMap<ReplicaId, String>,
    /// Peers' acknowledged vectors.
    pub peer_acked: BTreeMap<String, VersionVector>,
    /// Logged writes held back (quarantined) and not released yet, as storage records them
    /// (`leader::storage`'s `quarantine` table).
    pub quarantined: BTreeMap<Dot, Quarantined>,
    /// Batches committed.
    pub commits: u64,
}

impl Disk {
    /// Writes `b` atomically, after checking it extends what is stored without gaps. `own` is
    /// this region's replica id. Returns a description of the first inconsistency.
    pub fn commit(&mut self, b: &PersistBatch, own: ReplicaId) -> Result<(), String> {
        self.check(b, own)?;
        for e in &b.log {
            self.log.insert((e.write.dot.replica, e.seq()), e.clone());
        }
        for (table, key, state) in &b.keys {
            self.keys
                .insert((table.clone(), key.clone()), state.clone());
        }
        self.applied = b.applied.clone();
        self.own_seq = b.own_seq;
        self.hlc_high = b.hlc_high;
        for (r, name) in &b.replicas {
            self.replicas.insert(*r, name.clone());
        }
        for (peer, vv) in &b.peer_acked {
            self.peer_acked.insert(peer.clone(), vv.clone());
        }
        for q in &b.quarantined {
            self.quarantined.insert(q.dot, q.clone());
        }
        for dot in &b.released {
            self.quarantined.remove(dot);
        }
        self.commits += 1;
        Ok(())
    }

    fn check(&self, b: &PersistBatch, own: ReplicaId) -> Result<(), String> {
        if !b.applied.dominates(&self.applied) {
            return Err(format!(
                "applied vector shrinks on disk: {:?} after {:?}",
                b.applied, self.applied
            ));
        }
        if b.own_seq < self.own_seq || b.hlc_high < self.hlc_high {
            return Err(format!(
                "own_seq/hlc_high go backwards on disk: {}/{:?} after {}/{:?}",
                b.own_seq, b.hlc_high, self.own_seq, self.hlc_high
            ));
        }
        if b.applied.get(own) != b.own_seq {
            return Err(format!(
                "own_seq {} differs from the applied vector's own entry {}",
                b.own_seq,
                b.applied.get(own)
            ));
        }
        // Each origin's entries must continue its durable log exactly: from applied + 1, with
        // no gap, up to the batch's applied vector.
        let mut next: BTreeMap<ReplicaId, Seq> = BTreeMap::new();
        for e in &b.log {
            let origin = e.write.dot.replica;
            let want = next
                .get(&origin)
                .copied()
                .unwrap_or_else(|| self.applied.get(origin))
                .next();
            if e.seq() != want {
                return Err(format!(
                    "log of {origin} would get seq {} where {want} is next: a gap or a repeat",
                    e.seq()
                ));
            }
            next.insert(origin, e.seq());
        }
        for (origin, seq) in b.applied.iter() {
            let have = next
                .get(&origin)
                .copied()
                .unwrap_or_else(|| self.applied.get(origin));
            if have != seq {
                return Err(format!(
                    "applied vector says {origin}:{seq} but the durable log ends at {have}"
                ));
            }
        }
        for (origin, seq) in &next {
            if b.applied.get(*origin) != *seq {
                return Err(format!(
                    "durable log of {origin} ends at {seq} but the applied vector says {}",
                    b.applied.get(*origin)
                ));
            }
        }
        // A quarantine record names a write logged by the same batch (storage could not tell
        // it from an applied one later); a release names a recorded write whose key state
        // the same batch writes, applied.
        for q in &b.quarantined {
            if !b
                .log
                .iter()
                .any(|e| e.write.dot == q.dot && e.table == q.table)
            {
                return Err(format!(
                    "quarantine record {q:?} for a write this batch does not log"
                ));
            }
            if self.quarantined.contains_key(&q.dot) {
                return Err(format!("write {} quarantined twice", q.dot));
            }
        }
        for dot in &b.released {
            let Some(q) = self.quarantined.get(dot) else {
                return Err(format!("released write {dot} was not quarantined"));
            };
            let Some(e) = self.log.get(&(dot.replica, dot.seq)) else {
                return Err(format!("released write {dot} is not in the log"));
            };
            let applied = b
                .keys
                .iter()
                .any(|(t, k, s)| *t == q.table && *k == e.key && s.context.covers(dot));
            if !applied {
                return Err(format!(
                    "released write {dot} is not applied to its key in the batch"
                ));
            }
        }
        for (table, key, state) in &b.keys {
            state.check_invariants().map_err(|e| {
                format!(
                    "key {table}/{} is malformed: {e}",
                    String::from_utf8_lossy(key)
                )
            })?;
        }
        Ok(())
    }

    /// What a restart recovers. This disk writes every batch's key states with it, so there
    /// is no log to replay ([`leader_core::Replica::replay`]).
    pub fn recovered(&self) -> Recovered {
        Recovered {
            own_seq: self.own_seq,
            hlc_high: self.hlc_high,
            applied: self.applied.clone(),
            keys: self.keys.clone(),
            replicas: self.replicas.clone(),
            peer_acked: self.peer_acked.clone(),
            quarantined: self.quarantined.values().cloned().collect(),
        }
    }

    /// Contiguous entries of `origin` from `from` up to `to`, within about `max_bytes` (at
    /// least one entry when there is one), as the storage layer serves `Effect::ReadLog`.
    pub fn read_log(
        &self,
        origin: ReplicaId,
        from: Seq,
        to: Seq,
        max_bytes: usize,
    ) -> Vec<LogEntry> {
        let mut used = 0;
        let mut out = Vec::new();
        for (_, e) in self.log.range((origin, from)..=(origin, to)) {
            if !out.is_empty() && used + e.wire_size() > max_bytes {
                break;
            }
            used += e.wire_size();
            out.push(e.clone());
        }
        out
    }
}
