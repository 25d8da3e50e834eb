//! A region's disk as `leader::storage::Store` keeps it, in memory: exactly what a crash
//! leaves behind, and the recovery a restart performs.
//!
//! What it models, after `leader/src/storage/mod.rs` (module docs "Key states are checkpointed,
//! the log is the record" and "Quarantined writes are recorded"):
//! - every commit writes the batch's log entries, applied vector, counters, peers, replica
//!   names and quarantine records (added by the batch that logs the write, removed by the one
//!   that releases it);
//! - key states are kept back in the process's memory and written to the key table only at a
//!   *checkpoint*: a batch with [`PersistBatch::checkpoint`], or once the kept-back states or
//!   the log entries since the last checkpoint pass a bound ([`DiskLimits`], the same four
//!   tests as `Store::persist`). A checkpoint records `keys_applied`, the applied vector the
//!   key table reflects;
//! - a checkpoint records the log start the batches carried ([`PersistBatch::truncate`]) and
//!   drops the log entries it covers (storage deletes whole segments then; this model drops
//!   every covered entry, the stricter case);
//! - a crash loses the kept-back states (they were only in memory) and the batch in flight
//!   (a batch reaches the disk whole when its fsync completes, never in part);
//! - [`Disk::recover`] is `Store::open` + `Store::replay` + the driver's start: a new
//!   [`Replica`] from the checkpointed key states, then the log after `keys_applied` replayed
//!   through [`Replica::replay`] in chunks of at most [`DiskLimits::replay_chunk_bytes`], then
//!   the quarantined writes this configuration accepts ([`Replica::to_release`]) read from
//!   the log in chunks of the same size and replayed.
//!
//! Committing also checks the batch against what the disk holds (applied vectors only grow,
//! each origin's log stays gap-free, quarantine records name logged writes), so a machine that
//! ever asks to persist something inconsistent is caught at the write, not at the end.

use std::collections::BTreeMap;

use conflict::{Dot, Hlc, KeyState, Registry, ReplicaId, Seq, VersionVector};

use crate::msg::SlotKey;
use crate::{
    Bootstrap, BuildError, LogEntry, Options, PersistBatch, Quarantined, Recovered, Replica,
    SnapshotPiece,
};

/// The bounds of `leader::storage` that decide when a checkpoint is due and how a replay is
/// chunked. [`Default`] is production's (`CHECKPOINT_KEYS`, `CHECKPOINT_ENTRIES` and the
/// defaults of `StoreLimits`); the simulator draws small ones so checkpoints and replays
/// happen within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// A checkpoint is due once this many key states are kept back.
    pub checkpoint_keys: usize,
    /// A checkpoint is due once this many log entries were committed since the last one.
    pub checkpoint_entries: usize,
    /// A checkpoint is due once the log since the last one, or the kept-back states, reach
    /// this many bytes.
    pub checkpoint_bytes: usize,
    /// Largest chunk of log entries handed to [`Replica::replay`] at once (at least one).
    pub replay_chunk_bytes: usize,
}

impl Default for DiskLimits {
    fn default() -> Self {
        DiskLimits {
            checkpoint_keys: 65_536,
            checkpoint_entries: 65_536,
            checkpoint_bytes: 64 * 1024 * 1024,
            replay_chunk_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Key states kept back in the process's memory until the next checkpoint (storage's
/// `Deferred`): lost at a crash.
#[derive(Debug, Clone, Default)]
struct KeptBack {
    keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// The largest [`PersistBatch::truncate`] since the last checkpoint.
    truncate: VersionVector,
    key_bytes: usize,
    entries: usize,
    entry_bytes: usize,
}

/// The durable state of one region, plus the key states its live process keeps back.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// When checkpoints are due and how replays are chunked.
    pub limits: DiskLimits,
    /// Last sequence number this replica assigned, as durable.
    pub own_seq: Seq,
    /// HLC high-water mark.
    pub hlc_high: Hlc,
    /// Durably applied, per origin (own writes included): the log's extent.
    pub applied: VersionVector,
    /// The key table: states as of `keys_applied` (the last checkpoint).
    pub keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// The applied vector the key table reflects; a restart replays the log after it.
    pub keys_applied: VersionVector,
    /// The log of every origin, by (origin, seq).
    pub log: BTreeMap<(ReplicaId, Seq), LogEntry>,
    /// The log's entries in the order they were committed (origins interleaved, as the
    /// segmented log's records hold them): the order a replay hands them over in.
    committed: Vec<(ReplicaId, Seq)>,
    /// Where in `committed` the replay starts: the end of the last checkpoint's batch
    /// (storage's `replay_pos`), so every entry before it is covered by `keys_applied`.
    replay_from: usize,
    /// Replica ids learned, with their regions.
    pub replicas: BTreeMap<ReplicaId, String>,
    /// Peers' acknowledged vectors.
    pub peer_acked: BTreeMap<String, VersionVector>,
    /// Logged writes held back (quarantined) and not released yet.
    pub quarantined: BTreeMap<Dot, Quarantined>,
    /// Where the log starts: entries it covers were dropped (recorded, then dropped, at a
    /// checkpoint, as `Store` drops whole segments before its checkpoint's replay position).
    pub log_start: VersionVector,
    /// Batches committed.
    pub commits: u64,
    /// Of those, checkpoints.
    pub checkpoints: u64,
    /// Log entries dropped because the log start covered them.
    pub truncated: u64,
    /// A snapshot transfer's progress as the last checkpoint recorded it.
    pub bootstrap: Option<Bootstrap>,
    /// The collected floor as the last checkpoint recorded it.
    pub collected: VersionVector,
    kept: KeptBack,
}

/// What [`Disk::recover`] did besides building the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Log entries replayed after the last checkpoint.
    pub replayed: u64,
    /// Chunks they came in.
    pub chunks: u64,
    /// Quarantined writes read back and handed to the machine for release.
    pub released: u64,
}

impl Disk {
    /// An empty disk with these bounds.
    pub fn with_limits(limits: DiskLimits) -> Self {
        Disk {
            limits,
            ..Disk::default()
        }
    }

    /// Writes `b` atomically, as `Store::persist` does, after checking it extends what is
    /// stored without gaps. `own` is this region's replica id. Returns whether the commit was
    /// a checkpoint, or a description of the first inconsistency (nothing is written then).
    pub fn commit(&mut self, b: &PersistBatch, own: ReplicaId) -> Result<bool, String> {
        self.check(b, own)?;
        let kept = &mut self.kept;
        kept.truncate.join(&b.truncate);
        kept.entries += b.log.len();
        kept.entry_bytes += b.log.iter().map(LogEntry::wire_size).sum::<usize>();
        for (table, key, state) in &b.keys {
            kept.key_bytes += state.estimated_bytes();
            if let Some(old) = kept
                .keys
                .insert((table.clone(), key.clone()), state.clone())
            {
                kept.key_bytes -= old.estimated_bytes();
            }
        }
        let l = &self.limits;
        let checkpoint = b.checkpoint
            || kept.keys.len() >= l.checkpoint_keys
            || kept.entries >= l.checkpoint_entries
            || kept.key_bytes >= l.checkpoint_bytes
            || kept.entry_bytes >= l.checkpoint_bytes;
        for e in &b.log {
            self.log.insert((e.write.dot.replica, e.seq()), e.clone());
            self.committed.push((e.write.dot.replica, e.seq()));
        }
        if checkpoint {
            // Everything committed so far is in the checkpoint: the replay starts after it,
            // so the order of those entries is no longer needed (kept short, as the segments
            // a checkpoint lets production delete).
            self.committed.clear();
            self.replay_from = 0;
            let kept = std::mem::take(&mut self.kept);
            for (slot, state) in kept.keys {
                // An empty state is a key tombstone collection dropped: deleted, as storage does.
                if state.siblings.is_empty() && state.context.is_empty() {
                    self.keys.remove(&slot);
                } else {
                    self.keys.insert(slot, state);
                }
            }
            self.keys_applied = b.applied.clone();
            self.checkpoints += 1;
            self.collected = b.collected.clone();
            if let Some(progress) = &b.bootstrap {
                self.bootstrap = Some((**progress).clone());
            }
            self.log_start.join(&kept.truncate);
            let start = &self.log_start;
            let before = self.log.len();
            self.log.retain(|(o, s), _| start.get(*o) < *s);
            self.truncated += (before - self.log.len()) as u64;
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
        Ok(checkpoint)
    }

    /// The process died: the key states it kept back are gone (the disk keeps the rest).
    pub fn crash(&mut self) {
        self.kept = KeptBack::default();
    }

    /// Key states kept back since the last checkpoint (in the live process's memory).
    pub fn kept_back(&self) -> usize {
        self.kept.keys.len()
    }

    /// The key table as the last commit left it: checkpointed states overlaid with those
    /// kept back. What the live machine's memory must equal once it is idle, and what a
    /// recovery rebuilds.
    pub fn keys_now(&self) -> BTreeMap<(String, Vec<u8>), KeyState> {
        let mut keys = self.keys.clone();
        for (slot, state) in &self.kept.keys {
            if state.siblings.is_empty() && state.context.is_empty() {
                keys.remove(slot);
            } else {
                keys.insert(slot.clone(), state.clone());
            }
        }
        keys
    }

    /// What `Store::open` recovers: the key table as of the last checkpoint, the rest as of
    /// the last commit. The log after `keys_applied` is not in it: [`Disk::recover`] replays it.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            own_seq: self.own_seq,
            hlc_high: self.hlc_high,
            applied: self.applied.clone(),
            keys: self.keys.clone(),
            replicas: self.replicas.clone(),
            peer_acked: self.peer_acked.clone(),
            quarantined: self.quarantined.values().cloned().collect(),
            log_start: self.log_start.clone(),
            bootstrap: self.bootstrap.clone(),
            collected: self.collected.clone(),
        }
    }

    /// What `Store::read_snapshot` reads: the checkpoint's key states strictly after `after`,
    /// in order, until `max_bytes` (table + key + [`KeyState::estimated_bytes`] each) is
    /// reached or passed by the last one taken (so at least one), with the vector they
    /// reflect.
    pub fn read_snapshot(&self, after: Option<&SlotKey>, max_bytes: usize) -> SnapshotPiece {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let mut states = Vec::new();
        let mut used = 0;
        let mut rest = self.keys.range((start, Bound::Unbounded));
        for ((t, k), s) in rest.by_ref() {
            used += t.len() + k.len() + s.estimated_bytes();
            states.push((t.clone(), k.clone(), s.clone()));
            if used >= max_bytes {
                break;
            }
        }
        SnapshotPiece {
            applied: self.keys_applied.clone(),
            states,
            done: rest.next().is_none(),
            total_keys: self.keys.len() as u64,
        }
    }

    /// A restart: the process's memory is gone ([`Disk::crash`]), and a new machine is built
    /// as `leader::node` builds it: [`Replica::new`] from [`Disk::recovered`], the log after
    /// `keys_applied` replayed in chunks ([`Disk::replay`]), then the quarantined writes this
    /// configuration accepts read from the log ([`Disk::read_writes`]) and replayed.
    pub fn recover(
        &mut self,
        opts: Options,
        registry: &Registry,
    ) -> Result<(Replica, Recovery), BuildError> {
        self.crash();
        let mut replica = Replica::new(opts, registry, self.recovered())?;
        let mut stats = Recovery::default();
        stats.replayed = self.replay(|chunk| {
            stats.chunks += 1;
            replica.replay(chunk);
        });
        let release = replica.to_release();
        stats.released = self.read_writes(&release, |chunk| replica.replay(chunk));
        Ok((replica, stats))
    }

    /// What `Store::replay` hands over after a start: the log entries the checkpointed key
    /// states do not reflect (after `keys_applied`), in the order they were committed (so each
    /// origin's in sequence order), in chunks of at most [`DiskLimits::replay_chunk_bytes`]
    /// (a larger entry comes alone). Returns how many.
    pub fn replay(&self, apply: impl FnMut(Vec<LogEntry>)) -> u64 {
        let replay = self.committed[self.replay_from..]
            .iter()
            .map(|key| {
                debug_assert!(
                    key.1 > self.keys_applied.get(key.0),
                    "{key:?} is checkpointed"
                );
                &self.log[key]
            })
            .collect();
        self.chunked(replay, apply)
    }

    /// What `Store::read_writes` hands over: the logged writes `dots` (one missing from the
    /// log is skipped), in chunks as [`Disk::replay`]'s. Returns how many.
    pub fn read_writes(&self, dots: &[Dot], apply: impl FnMut(Vec<LogEntry>)) -> u64 {
        let writes = dots
            .iter()
            .filter_map(|d| self.log.get(&(d.replica, d.seq)))
            .collect();
        self.chunked(writes, apply)
    }

    fn chunked(&self, entries: Vec<&LogEntry>, mut apply: impl FnMut(Vec<LogEntry>)) -> u64 {
        let count = entries.len() as u64;
        for chunk in chunks(entries, self.limits.replay_chunk_bytes) {
            apply(chunk);
        }
        count
    }

    /// Serves [`Effect::ReadLog`](crate::Effect::ReadLog) by the one rule,
    /// [`read_log`](super::read_log).
    pub fn read_log(
        &self,
        origin: ReplicaId,
        from: Seq,
        to: Seq,
        max_bytes: usize,
    ) -> Vec<LogEntry> {
        super::read_log(&self.log, origin, from, to, max_bytes)
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
        self.check_log(b)?;
        self.check_quarantine(b)?;
        self.check_truncate(b)?;
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

    /// Each origin's entries must continue its durable log exactly: from applied + 1, with no
    /// gap, up to the batch's applied vector.
    fn check_log(&self, b: &PersistBatch) -> Result<(), String> {
        let mut next: BTreeMap<ReplicaId, Seq> = BTreeMap::new();
        // A snapshot install raises the applied vector without log entries.
        let mut base = self.applied.clone();
        base.join(&b.installed);
        for e in &b.log {
            let origin = e.write.dot.replica;
            let want = next
                .get(&origin)
                .copied()
                .unwrap_or_else(|| base.get(origin))
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
                .unwrap_or_else(|| base.get(origin));
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
        Ok(())
    }

    /// The log may be truncated only within what is durable, and never past a write held
    /// back in quarantine (a later start applies it from the log).
    fn check_truncate(&self, b: &PersistBatch) -> Result<(), String> {
        if b.bootstrap.is_some() && !b.checkpoint {
            return Err(
                "a snapshot transfer's progress recorded by a batch that is not a checkpoint"
                    .into(),
            );
        }
        if !b.installed.is_empty() && b.bootstrap.is_none() {
            return Err("a snapshot install without the transfer's progress".into());
        }
        if !b.applied.dominates(&b.truncate) {
            return Err(format!(
                "truncate {:?} beyond the applied vector {:?}",
                b.truncate, b.applied
            ));
        }
        let held = self
            .quarantined
            .keys()
            .chain(b.quarantined.iter().map(|q| &q.dot));
        for dot in held.filter(|d| !b.released.contains(d)) {
            if b.truncate.covers(dot) {
                return Err(format!(
                    "truncate covers {dot}, which is held back in quarantine"
                ));
            }
        }
        Ok(())
    }

    /// A quarantine record names a write logged by the same batch, which is a checkpoint (a
    /// replay must never apply it); a release names a recorded write whose key state the same
    /// batch writes, applied.
    fn check_quarantine(&self, b: &PersistBatch) -> Result<(), String> {
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
            if !b.checkpoint {
                return Err(format!(
                    "quarantined write {} is logged by a batch that is not a checkpoint",
                    q.dot
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
        Ok(())
    }
}

/// Splits `entries` into chunks as `leader::storage`'s `Chunk` does: a chunk is handed over
/// whenever the next entry would take it past `max_bytes`; an entry larger than that comes
/// alone.
fn chunks(entries: Vec<&LogEntry>, max_bytes: usize) -> Vec<Vec<LogEntry>> {
    let mut out = Vec::new();
    let mut chunk: Vec<LogEntry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let size = e.wire_size();
        if !chunk.is_empty() && bytes + size > max_bytes {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(e.clone());
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}
