//! Durable storage of one region: an append-only segmented write log beside a redb database,
//! both in the region's data directory.
//!
//! # Layout
//! - `log`: the per-origin logs of writes, interleaved in one append-only sequence of
//!   segment files. Each group commit appends **one record** (its log entries and everything
//!   else the commit must make durable: applied vector, own sequence, HLC high-water mark, peer
//!   acks, replica names, quarantine records added and released), with a CRC32, and returns
//!   after one `fdatasync`.
//! - `meridian.redb`: identity (replica id, cluster, region, format), and, as of a *checkpoint*,
//!   the key states and the metadata above, with `log_pos`, the log position they reflect.
//! - `legacy`: the upgrade of directories written by older formats.
//!
//! The state machine decides *what* to write ([`PersistBatch`]); [`Store::persist`] appends it
//! and returns only once it is durable. Because the state machine keeps at most one batch
//! outstanding and stages everything that arrives meanwhile, client writes and replicated
//! batches that arrive together share one record and one `fdatasync`.
//!
//! The log is read by other threads concurrently with the writer (readers see whole, durable
//! records only), which is how a lagging peer is served from disk rather than from memory.
//!
//! # Key states are checkpointed, the log is the record
//! A commit appends to the log only. Key states and the metadata are kept back in memory and
//! written to redb at the next *checkpoint* (one redb transaction after the batch's record is
//! durable, recording as `keys_applied` the applied vector the states reflect and as `log_pos`
//! the end of that record): when `CHECKPOINT_KEYS` states or `CHECKPOINT_ENTRIES` log
//! entries have accumulated, or when either the log written since the last checkpoint or the
//! states kept back reach [`StoreLimits::checkpoint_bytes`], or when the batch asks for one
//! ([`PersistBatch::checkpoint`]). A write is durable once its record is: recovery loads the
//! checkpoint, folds the metadata of the records after `log_pos` into it, and
//! [`Store::replay`] hands the log entries after `keys_applied` to the state machine in chunks
//! of at most [`StoreLimits::replay_chunk_bytes`] ([`leader_core::Replica::replay`]), so a
//! restart never holds the whole replay in memory. Why: a key state lives in a random leaf
//! page of the key table, and any redb commit rewrites the leaf and branch pages it touches and
//! syncs twice; a log record is appended where the last one ended. Measured in
//! `docs/performance.md`.
//!
//! # The log is truncated by whole segments
//! Each batch carries the state machine's log start ([`PersistBatch::truncate`]: writes every
//! region has durably applied, or that only a region past the retention bound lacks). The
//! next checkpoint records it (`log_start` in `meta`, in the checkpoint's transaction) and
//! then deletes the oldest segments whose every write it covers and that come before the
//! checkpoint (a restart replays the log after it). Recorded first, deleted after: a crash in
//! between leaves files that the next open deletes, never a log start older than what is
//! gone. A start hands the recorded log start back ([`Recovered::log_start`]), and the state
//! machine never asks for a write it covers.
//!
//! # Quarantined writes are recorded
//! A replicated write the state machine logged without applying (its table unknown here, or
//! resolved differently by its origin) is recorded, with the resolver its origin used, by the
//! record of the batch that logs it ([`PersistBatch::quarantined`]) and in the `quarantine`
//! table at the next checkpoint. A start hands the records to the state machine
//! ([`Recovered::quarantined`]), which picks those its configuration accepts;
//! [`Store::read_writes`] reads them from the log for it, and the batch that carries their
//! applied key states releases the records ([`PersistBatch::released`]).
//!
//! # Snapshots are served from the checkpoint
//! [`Store::read_snapshot`] reads a peer's snapshot piece from one redb read transaction: the
//! checkpoint's key states after a cursor with the `keys_applied` vector they reflect exactly
//! (states kept back since are not included: they reflect no recorded vector). A region
//! being bootstrapped records the transfer's progress ([`PersistBatch::bootstrap`]) as
//! `bootstrap` in `meta` (postcard of [`Bootstrap`]) in the checkpoint's transaction that
//! writes the chunk's states, so both survive a crash together ([`Recovered::bootstrap`]). The
//! key is optional: a directory without it (every one written before snapshots existed) has
//! no transfer under way, so the format version did not change. An install's jump of the
//! applied vector ([`PersistBatch::installed`]) needs nothing here: the record's applied
//! vector carries it and the log of each origin continues after it.
//!
//! # Why one file of about 1000 lines
//! `Store` is one type whose open, recovery, commit, checkpoint, replay and read paths share
//! its private state (the states kept back for the next checkpoint, the checkpoint's log
//! positions, the redb tables and their encodings); the segmented log (`log`) and the
//! upgrades of older formats (`legacy`) are already apart. Splitting the rest would spread one
//! invariant (what a checkpoint records versus what the log holds) over several files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};

use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, VersionVector};
use leader_core::msg::SlotKey;
use leader_core::{Bootstrap, LogEntry, PersistBatch, Quarantined, Recovered, SnapshotPiece};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use log::{Pos, SegmentLog};

mod legacy;
mod log;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("keys");
const APPLIED: TableDefinition<'_, u128, u64> = TableDefinition::new("applied");
const PEERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("peers");
const REPLICAS: TableDefinition<'_, u128, &str> = TableDefinition::new("replicas");
/// Logged writes that were not applied (quarantined), by (origin, seq): postcard of
/// [`QuarantineRecord`]. A record goes when a start applies the write.
const QUARANTINE: TableDefinition<'_, (u128, u64), &[u8]> = TableDefinition::new("quarantine");

/// Version of the on-disk layout; a directory written by a newer layout is refused.
/// 2: key states are checkpointed (`keys_applied` in `meta`); a version-1 directory, whose key
/// states are all current, is upgraded on open.
/// 3: quarantined writes are recorded (`quarantine`); an older directory is upgraded on open
/// by finding the logged writes that their keys never applied.
/// 4: the log is the segmented log in `log/`, and redb holds checkpoints only (`log_pos`,
/// `replay_pos` in `meta`); an older directory's `log` table is moved there on open.
const FORMAT_VERSION: u64 = 4;

/// What the `quarantine` table stores of a [`Quarantined`] write (its dot is the key).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct QuarantineRecord {
    table: String,
    origin_resolver: Option<String>,
}
/// A checkpoint is due once this many key states are kept back: bounds the memory they take
/// and the size of one checkpoint commit.
pub const CHECKPOINT_KEYS: usize = 65_536;
/// A checkpoint is due once this many log entries were committed since the last one: bounds
/// the replay on the next start.
pub const CHECKPOINT_ENTRIES: usize = 65_536;
/// redb's file is compacted after a checkpoint that deleted keys (tombstone collection) once
/// the key table holds at most half the keys it held at its peak since the last compaction,
/// and at least this many fewer (or none), and the file grew since: redb reuses freed pages
/// but never gives them back to the file system, so a table that shrank for good would keep
/// its largest size (docs/design.md, "Storage"). Halving bounds the cost: a compaction follows
/// at least as many deletions as the keys it moves.
pub const COMPACT_KEYS_MIN: u64 = 256;
/// Most calls of redb's compaction per compaction (each moves what it can; it says when
/// nothing more moved).
const COMPACT_PASSES_MAX: usize = 8;
/// The segment being appended to is sealed early, before the record of a batch that logs no
/// write (a quiet moment), once the log start covers every write in it and it holds at least
/// this many bytes: the batch is then a checkpoint, which deletes it, and a quiet region's log
/// shrinks to nearly nothing instead of keeping the last segment's writes (up to
/// `segment_bytes`) for ever. At most one such checkpoint per this many bytes of log.
pub const ROLL_COVERED_BYTES_MIN: u64 = 64 * 1024;
/// Name of the database file inside the data directory.
const DB_FILE: &str = "meridian.redb";
/// Name of the log's directory inside the data directory.
const LOG_DIR: &str = "log";

/// One group commit as the log stores it. Fields are only ever appended.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record<'a> {
    entries: Cow<'a, [LogEntry]>,
    applied: Cow<'a, VersionVector>,
    own_seq: Seq,
    hlc_high: Hlc,
    replicas: Cow<'a, [(ReplicaId, String)]>,
    peer_acked: Cow<'a, [(String, VersionVector)]>,
    quarantined: Cow<'a, [Quarantined]>,
    released: Cow<'a, [Dot]>,
}

impl Record<'_> {
    /// Origins of the record's entries with their first and last sequence numbers (for the
    /// log's index).
    fn ranges(&self) -> Vec<(u128, u64, u64)> {
        log::origin_ranges(
            self.entries
                .iter()
                .map(|e| (e.write.dot.replica.0.as_u128(), e.write.dot.seq.0)),
        )
    }
}

/// [`Record::ranges`] of an encoded record (the log rebuilding its index).
fn record_ranges(payload: &[u8]) -> Result<Vec<(u128, u64, u64)>, String> {
    postcard::from_bytes::<Record<'_>>(payload)
        .map(|r| r.ranges())
        .map_err(|e| e.to_string())
}

/// Memory bounds of the store, in bytes (`[limits]` in regions.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// A checkpoint is due once the log committed since the last one, or the key states kept
    /// back for it, reach this many bytes.
    pub checkpoint_bytes: usize,
    /// Largest chunk of log entries [`Store::replay`] hands over at once (at least one entry).
    pub replay_chunk_bytes: usize,
    /// redb's page cache and write buffer.
    pub cache_bytes: usize,
    /// A log segment is sealed, and the next record starts a new one, once it reaches this
    /// many bytes.
    pub segment_bytes: u64,
}

impl Default for StoreLimits {
    /// The defaults of `[limits]`.
    fn default() -> Self {
        StoreLimits {
            checkpoint_bytes: 64 * 1024 * 1024,
            replay_chunk_bytes: 8 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            segment_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Errors of the storage layer. Each says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data directory belongs to another region or cluster.
    #[error(
        "data directory {dir} belongs to region '{found_region}' of cluster '{found_cluster}', but this process runs region '{region}' of cluster '{cluster}'; point data_dir at this region's own directory (or an empty one)"
    )]
    WrongOwner {
        /// The directory.
        dir: PathBuf,
        /// Region recorded in it.
        found_region: String,
        /// Cluster recorded in it.
        found_cluster: String,
        /// Region of this process.
        region: String,
        /// Cluster of this process.
        cluster: String,
    },
    /// Another process has the database open.
    #[error(
        "data directory {0} is in use by another process; two processes must never run as one region. Stop the other one first"
    )]
    InUse(PathBuf),
    /// The directory was written by a newer, incompatible version.
    #[error(
        "data directory {dir} has storage format {found}, this binary understands {FORMAT_VERSION}; run a newer meridian"
    )]
    Format {
        /// The directory.
        dir: PathBuf,
        /// The format found.
        found: u64,
    },
    /// A stored record could not be decoded: the file is damaged.
    #[error(
        "data directory {dir}: stored record in '{table}' is damaged ({detail}); restore this region from a backup or rebuild it from an empty directory"
    )]
    Corrupt {
        /// The directory.
        dir: PathBuf,
        /// The table.
        table: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A log record before the last one is damaged: acknowledged writes are unreadable.
    #[error(
        "write log {file} is damaged at byte {offset} ({detail}); this is not the torn end of a write interrupted by a crash, so records after it hold acknowledged writes. Restore this region from a backup or rebuild it from an empty directory"
    )]
    LogCorrupt {
        /// The segment file.
        file: PathBuf,
        /// Offset of the damaged record in it.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The file system failed.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// redb failed.
    #[error("data directory {dir}: storage engine error: {detail}")]
    Engine {
        /// The directory.
        dir: PathBuf,
        /// The error.
        detail: String,
    },
}

/// The durable store of one region.
pub struct Store {
    /// Shared by every reader and the writer; taken exclusively only by a compaction
    /// ([`Store::compact`]), which redb requires to have no transaction open.
    db: RwLock<Database>,
    log: SegmentLog,
    dir: PathBuf,
    commits: AtomicU64,
    /// What commits since the last checkpoint changed and redb does not have yet. Only
    /// [`Store::persist`] takes the lock, and persists run one at a time, so it is never
    /// contended.
    deferred: Mutex<Deferred>,
    limits: StoreLimits,
    /// The log a restart must replay: from `replay_pos`, the writes after `keys_applied`
    /// (first) up to `applied` (second).
    replay_range: (VersionVector, VersionVector),
    replay_pos: Pos,
    /// The log start recorded in redb (`log_start` in `meta`): the segments it wholly covers
    /// are deleted once they are before the checkpoint. Only persists take the lock.
    log_start: Mutex<VersionVector>,
    /// The most keys the key table held since its last compaction (or this start). Only
    /// persists touch it.
    key_peak: AtomicU64,
    /// Bytes of redb's file after its last compaction (or at open).
    compacted_bytes: AtomicU64,
}

/// Everything kept back until the next checkpoint.
#[derive(Debug, Default)]
struct Deferred {
    /// The newest state of every key changed since the last checkpoint. A hash map: each
    /// commit inserts every key it changed, and comparing keys in a B-tree cost more than
    /// hashing them (measured); a checkpoint sorts them before writing.
    keys: HashMap<(String, Vec<u8>), KeyState>,
    /// Estimated bytes of `keys` ([`KeyState::estimated_bytes`]).
    key_bytes: usize,
    /// Log entries committed since the last checkpoint.
    entries: usize,
    /// Their bytes ([`LogEntry::wire_size`]).
    entry_bytes: usize,
    /// Metadata changed since the last checkpoint.
    meta: MetaChanges,
    /// The largest [`PersistBatch::truncate`] since the last checkpoint: recorded, and the
    /// segments it covers deleted, at the next one.
    truncate: VersionVector,
}

/// The metadata records carry as changes (the applied vector and counters are carried whole).
#[derive(Debug, Default)]
struct MetaChanges {
    peer_acked: BTreeMap<String, VersionVector>,
    replicas: BTreeMap<ReplicaId, String>,
    /// A record added (`Some`) or released (`None`), by dot.
    quarantine: BTreeMap<Dot, Option<QuarantineRecord>>,
}

impl MetaChanges {
    /// Takes in a record's changes, in the order a commit makes them.
    fn add(&mut self, record: &Record<'_>) {
        for (peer, vv) in record.peer_acked.iter() {
            self.peer_acked.insert(peer.clone(), vv.clone());
        }
        for (replica, region) in record.replicas.iter() {
            self.replicas.insert(*replica, region.clone());
        }
        for q in record.quarantined.iter() {
            let kept = QuarantineRecord {
                table: q.table.clone(),
                origin_resolver: q.origin_resolver.clone(),
            };
            self.quarantine.insert(q.dot, Some(kept));
        }
        for dot in record.released.iter() {
            self.quarantine.insert(*dot, None);
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What [`Store::open`] found or created.
#[derive(Debug)]
pub struct Opened {
    /// The store, ready for writes.
    pub store: Store,
    /// This data directory's replica id (created on first start).
    pub replica: ReplicaId,
    /// Whether the directory was initialised just now.
    pub created: bool,
    /// Everything needed to rebuild the state machine.
    pub recovered: Recovered,
}

/// Where a checkpoint leaves the log: metadata folded up to `log_pos`, replay from
/// `replay_pos` of the writes after `keys_applied`.
struct Checkpoint {
    log_pos: Pos,
    replay_pos: Pos,
    keys_applied: VersionVector,
}

impl Store {
    /// Opens (or initialises) the data directory of `region` in `cluster`, with the default
    /// [`StoreLimits`].
    ///
    /// A directory initialised for another region or cluster is refused, so a misconfigured
    /// process can never mix two regions' histories.
    pub fn open(dir: &Path, cluster: &str, region: &str) -> Result<Opened, StorageError> {
        Store::open_with(dir, cluster, region, StoreLimits::default())
    }

    /// [`Store::open`] with explicit memory bounds.
    pub fn open_with(
        dir: &Path,
        cluster: &str,
        region: &str,
        limits: StoreLimits,
    ) -> Result<Opened, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        let db = match Database::builder()
            .set_cache_size(limits.cache_bytes)
            .create(dir.join(DB_FILE))
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StorageError::InUse(dir.to_owned()));
            }
            Err(e) => return Err(engine(dir, e)),
        };
        let (replica, created, format) = identity(&db, dir, cluster, region)?;
        if format < FORMAT_VERSION {
            legacy::upgrade(&db, dir, format, limits)?;
        }
        let log = SegmentLog::open(&dir.join(LOG_DIR), limits.segment_bytes)?;
        let mut store = Store {
            db: RwLock::new(db),
            log,
            dir: dir.to_owned(),
            commits: AtomicU64::new(0),
            deferred: Mutex::new(Deferred::default()),
            limits,
            replay_range: Default::default(),
            replay_pos: Pos::default(),
            log_start: Mutex::new(VersionVector::new()),
            key_peak: AtomicU64::new(0),
            compacted_bytes: AtomicU64::new(
                std::fs::metadata(dir.join(DB_FILE)).map_or(0, |m| m.len()),
            ),
        };
        let (recovered, checkpoint) = store.recover()?;
        // A crash after the last checkpoint recorded a log start and before its segments were
        // deleted left them behind: finish the job.
        let before = checkpoint
            .replay_pos
            .segment
            .min(checkpoint.log_pos.segment);
        store.log.drop_covered(&recovered.log_start, before)?;
        store.log_start = Mutex::new(recovered.log_start.clone());
        store.replay_range = (checkpoint.keys_applied, recovered.applied.clone());
        store.replay_pos = checkpoint.replay_pos;
        Ok(Opened {
            store,
            replica,
            created,
            recovered,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of group commits (each one `fdatasync` of the log) since open.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Bytes of the write log's segment files, and how many segments there are.
    pub fn log_size(&self) -> (u64, usize) {
        self.log.size()
    }

    /// Loads the checkpoint, folds the records after it into it, and says where the replay
    /// starts.
    fn recover(&self) -> Result<(Recovered, Checkpoint), StorageError> {
        let dir = &self.dir;
        let db = self.db();
        let txn = db.begin_read().map_err(|e| engine(dir, e))?;
        let mut rec = Recovered::default();
        let meta = open_read(&txn, META, dir)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
            match &meta {
                Some(meta) => Ok(meta
                    .get(key)
                    .map_err(|e| engine(dir, e))?
                    .map(|v| v.value().to_vec())),
                None => Ok(None),
            }
        };
        if let Some(v) = get("own_seq")? {
            rec.own_seq = Seq(decode_u64(&v, dir)?);
        }
        if let Some(v) = get("hlc_high")? {
            rec.hlc_high = Hlc::from_u64(decode_u64(&v, dir)?);
        }
        if let Some(v) = get("bootstrap")? {
            rec.bootstrap = Some(decode(&v, "meta", dir)?);
        }
        if let Some(v) = get("collected")? {
            rec.collected = VersionVector::from_bytes(&v).map_err(|e| StorageError::Corrupt {
                dir: dir.clone(),
                table: "meta",
                detail: format!("collected: {e}"),
            })?;
        }
        if let Some(v) = get("log_start")? {
            rec.log_start = VersionVector::from_bytes(&v).map_err(|e| StorageError::Corrupt {
                dir: dir.clone(),
                table: "meta",
                detail: format!("log_start: {e}"),
            })?;
        }
        let pos = |key: &'static str| -> Result<Pos, StorageError> {
            match get(key)? {
                Some(v) => Pos::from_bytes(&v).ok_or_else(|| corrupt_meta(dir, key)),
                None => Ok(Pos::default()),
            }
        };
        let checkpoint = Checkpoint {
            log_pos: pos("log_pos")?,
            replay_pos: pos("replay_pos")?,
            keys_applied: match get("keys_applied")? {
                Some(v) => VersionVector::from_bytes(&v).map_err(|e| StorageError::Corrupt {
                    dir: dir.clone(),
                    table: "meta",
                    detail: format!("keys_applied: {e}"),
                })?,
                None => VersionVector::new(),
            },
        };
        if let Some(keys) = open_read(&txn, KEYS, dir)? {
            for item in keys.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                let (table, key) = k.value();
                let state: KeyState = decode(v.value(), "keys", dir)?;
                rec.keys.insert((table.to_owned(), key.to_vec()), state);
            }
        }
        if let Some(applied) = open_read(&txn, APPLIED, dir)? {
            for item in applied.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                rec.applied.add_dot(&Dot {
                    replica: ReplicaId(uuid::Uuid::from_u128(k.value())),
                    seq: Seq(v.value()),
                });
            }
        }
        if let Some(peers) = open_read(&txn, PEERS, dir)? {
            for item in peers.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                let vv =
                    VersionVector::from_bytes(v.value()).map_err(|e| StorageError::Corrupt {
                        dir: dir.clone(),
                        table: "peers",
                        detail: e.to_string(),
                    })?;
                rec.peer_acked.insert(k.value().to_owned(), vv);
            }
        }
        let mut quarantined = BTreeMap::new();
        if let Some(quarantine) = open_read(&txn, QUARANTINE, dir)? {
            for item in quarantine.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                let (origin, seq) = k.value();
                let record: QuarantineRecord = decode(v.value(), "quarantine", dir)?;
                let dot = Dot {
                    replica: ReplicaId(uuid::Uuid::from_u128(origin)),
                    seq: Seq(seq),
                };
                quarantined.insert(dot, record);
            }
        }
        if let Some(replicas) = open_read(&txn, REPLICAS, dir)? {
            for item in replicas.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                rec.replicas.insert(
                    ReplicaId(uuid::Uuid::from_u128(k.value())),
                    v.value().to_owned(),
                );
            }
        }
        // The commits after the checkpoint: their metadata, and the changes the next
        // checkpoint must write.
        let mut deferred = self
            .deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.log
            .records_from(checkpoint.log_pos, |file, offset, payload| {
                let record: Record<'_> = decode_record(payload, file, offset)?;
                rec.applied.join(&record.applied);
                rec.own_seq = rec.own_seq.max(record.own_seq);
                rec.hlc_high = rec.hlc_high.max(record.hlc_high);
                deferred.meta.add(&record);
                Ok(true)
            })?;
        for (peer, vv) in &deferred.meta.peer_acked {
            rec.peer_acked.insert(peer.clone(), vv.clone());
        }
        for (replica, region) in &deferred.meta.replicas {
            rec.replicas.insert(*replica, region.clone());
        }
        for (dot, change) in &deferred.meta.quarantine {
            match change {
                Some(record) => quarantined.insert(*dot, record.clone()),
                None => quarantined.remove(dot),
            };
        }
        rec.quarantined = quarantined
            .into_iter()
            .map(|(dot, r)| Quarantined {
                dot,
                table: r.table,
                origin_resolver: r.origin_resolver,
            })
            .collect();
        Ok((rec, checkpoint))
    }

    /// Hands the log entries that the recovered key states do not reflect (after the last
    /// checkpoint, up to the recovered applied vector) to `apply`, each origin's in sequence
    /// order, in chunks of at most [`StoreLimits::replay_chunk_bytes`] (by
    /// [`LogEntry::wire_size`]; a larger entry comes alone). Call it once, after
    /// [`Store::open`] and before the first [`Store::persist`]; feed each chunk to
    /// [`leader_core::Replica::replay`]. Returns the number of entries replayed.
    pub fn replay(&self, mut apply: impl FnMut(Vec<LogEntry>)) -> Result<u64, StorageError> {
        let (from_vv, to_vv) = &self.replay_range;
        let mut chunk = Chunk::new(self.limits.replay_chunk_bytes);
        let mut count = 0;
        self.log
            .records_from(self.replay_pos, |file, offset, payload| {
                let record = decode_record(payload, file, offset)?;
                for entry in record.entries.into_owned() {
                    let dot = &entry.write.dot;
                    if !from_vv.covers(dot) && to_vv.covers(dot) {
                        chunk.push(entry, &mut apply);
                        count += 1;
                    }
                }
                Ok(true)
            })?;
        chunk.finish(&mut apply);
        Ok(count)
    }

    /// Hands the logged writes `dots` (each origin's in sequence order, as
    /// [`leader_core::Replica::to_release`] lists them) to `apply`, in chunks of at most
    /// [`StoreLimits::replay_chunk_bytes`]. A dot missing from the log is skipped.
    pub fn read_writes(
        &self,
        dots: &[Dot],
        mut apply: impl FnMut(Vec<LogEntry>),
    ) -> Result<u64, StorageError> {
        let mut chunk = Chunk::new(self.limits.replay_chunk_bytes);
        let mut count = 0;
        for dot in dots {
            for entry in self.read_log(dot.replica, dot.seq, dot.seq, 0)? {
                chunk.push(entry, &mut apply);
                count += 1;
            }
        }
        chunk.finish(&mut apply);
        Ok(count)
    }

    /// Writes one batch atomically and durably: returns after the log's `fdatasync`. Its
    /// key states and metadata are written to redb now if this commit is a checkpoint, else
    /// kept back for the next one (the record appended now rebuilds them after a crash).
    pub fn persist(&self, batch: PersistBatch) -> Result<(), StorageError> {
        // Poisoned only if an earlier persist panicked; its commit never happened and the
        // node stopped, so what the lock holds is still what earlier commits kept back.
        let mut deferred = self
            .deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = Record {
            entries: Cow::Borrowed(&batch.log),
            applied: Cow::Borrowed(&batch.applied),
            own_seq: batch.own_seq,
            hlc_high: batch.hlc_high,
            replicas: Cow::Borrowed(&batch.replicas),
            peer_acked: Cow::Borrowed(&batch.peer_acked),
            quarantined: Cow::Borrowed(&batch.quarantined),
            released: Cow::Borrowed(&batch.released),
        };
        // Poisoned only if an earlier persist panicked (see `deferred`).
        let mut covered = self
            .log_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        covered.join(&deferred.truncate);
        covered.join(&batch.truncate);
        // Only in a quiet moment (a batch that logs no write): under load the segment always
        // ends with writes some region lacks, and a roll would only add checkpoints.
        let rolled =
            batch.log.is_empty() && self.log.seal_if_covered(&covered, ROLL_COVERED_BYTES_MIN)?;
        let end = self.log.append(log::frame(&record), &record.ranges())?;
        deferred.meta.add(&record);
        deferred.truncate.join(&batch.truncate);
        deferred.entries += batch.log.len();
        deferred.entry_bytes += batch.log.iter().map(LogEntry::wire_size).sum::<usize>();
        for (table, key, state) in batch.keys {
            deferred.key_bytes += state.estimated_bytes();
            if let Some(old) = deferred.keys.insert((table, key), state) {
                deferred.key_bytes -= old.estimated_bytes();
            }
        }
        // A transfer's progress is only ever recorded with the states it joined (the core
        // marks such a batch a checkpoint; this keeps the two together regardless).
        // A sealed segment that the log start covers goes at a checkpoint: this one.
        let checkpoint = batch.checkpoint
            || rolled
            || batch.bootstrap.is_some()
            || deferred.keys.len() >= CHECKPOINT_KEYS
            || deferred.entries >= CHECKPOINT_ENTRIES
            || deferred.key_bytes >= self.limits.checkpoint_bytes
            || deferred.entry_bytes >= self.limits.checkpoint_bytes;
        if checkpoint {
            // Poisoned only if an earlier persist panicked (see `deferred`).
            let mut log_start = self
                .log_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut start = log_start.clone();
            start.join(&deferred.truncate);
            let compact = self.checkpoint(
                &deferred,
                &batch.applied,
                batch.own_seq,
                batch.hlc_high,
                end,
                &start,
                batch.bootstrap.as_deref(),
                &batch.collected,
            )?;
            *deferred = Deferred::default();
            // Recorded first, deleted after: a crash in between leaves files the next
            // checkpoint (or open) deletes, never a log start that claims too little.
            if let Err(e) = self.log.drop_covered(&start, end.segment) {
                tracing::warn!(error = %e, "could not delete truncated log segments; the next checkpoint tries again");
            }
            *log_start = start;
            drop(log_start);
            drop(deferred);
            if let Some(live) = compact {
                self.compact(live)?;
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of redb's file now.
    fn db_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(DB_FILE)).map_or(0, |m| m.len())
    }

    /// redb's database, shared (a compaction takes it exclusively).
    fn db(&self) -> RwLockReadGuard<'_, Database> {
        // Poisoned only if a compaction panicked; redb's file is consistent after any commit
        // or compaction step (its own crash safety), so the database is still usable.
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compacts redb's file (it holds `live` keys now, at most half its peak): after a
    /// checkpoint, in the storage thread, holding the database exclusively (snapshot reads
    /// and the next persist wait for it). redb moves the live pages to the start of the file
    /// and cuts the rest; a crash meanwhile leaves a consistent file (redb's own guarantee).
    fn compact(&self, live: u64) -> Result<(), StorageError> {
        let before = self.db_bytes();
        let started = std::time::Instant::now();
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // One call may leave pages that the transactions it ran still held: it says whether
        // it moved anything, and a few more calls finish the job.
        for _ in 0..COMPACT_PASSES_MAX {
            if !db.compact().map_err(|e| engine(&self.dir, e))? {
                break;
            }
        }
        drop(db);
        self.key_peak.store(live, Ordering::Relaxed);
        let after = self.db_bytes();
        self.compacted_bytes.store(after, Ordering::Relaxed);
        tracing::info!(
            keys = live,
            before_bytes = before,
            after_bytes = after,
            ms = started.elapsed().as_millis() as u64,
            "compacted the key table's file: tombstone collection left at most half its keys"
        );
        Ok(())
    }

    /// Writes the kept-back key states and metadata to redb as of `end`, the log position
    /// after the record whose batch carried `applied`, and the snapshot transfer's progress
    /// when the batch carries one (replacing the recorded one). Returns the keys left when
    /// a compaction is due ([`COMPACT_KEYS_MIN`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "one checkpoint's parts, named at the one call"
    )]
    fn checkpoint(
        &self,
        deferred: &Deferred,
        applied: &VersionVector,
        own_seq: Seq,
        hlc_high: Hlc,
        end: Pos,
        log_start: &VersionVector,
        bootstrap: Option<&Bootstrap>,
        collected: &VersionVector,
    ) -> Result<Option<u64>, StorageError> {
        let dir = &self.dir;
        let db = self.db();
        let txn = db.begin_write().map_err(|e| engine(dir, e))?;
        let mut compact = None;
        {
            let mut keys = txn.open_table(KEYS).map_err(|e| engine(dir, e))?;
            let mut removed = 0u64;
            let mut sorted: Vec<_> = deferred.keys.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for ((table, key), state) in sorted {
                if is_collected(state) {
                    // Tombstone collection dropped the key (docs/design.md): so does the disk.
                    removed += 1;
                    keys.remove((table.as_str(), key.as_slice()))
                        .map_err(|e| engine(dir, e))?;
                    continue;
                }
                keys.insert((table.as_str(), key.as_slice()), encode(state).as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
            let live = keys.len().map_err(|e| engine(dir, e))?;
            let peak = self.key_peak.fetch_max(live, Ordering::Relaxed).max(live);
            let halved = peak >= 2 * live && (peak - live >= COMPACT_KEYS_MIN || live == 0);
            if removed > 0
                && halved
                && self.db_bytes() > self.compacted_bytes.load(Ordering::Relaxed)
            {
                compact = Some(live);
            }
            let mut table = txn.open_table(APPLIED).map_err(|e| engine(dir, e))?;
            for (replica, seq) in applied.iter() {
                table
                    .insert(replica.0.as_u128(), seq.0)
                    .map_err(|e| engine(dir, e))?;
            }
            let mut peers = txn.open_table(PEERS).map_err(|e| engine(dir, e))?;
            for (peer, vv) in &deferred.meta.peer_acked {
                peers
                    .insert(peer.as_str(), vv.to_bytes().as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
            let mut quarantine = txn.open_table(QUARANTINE).map_err(|e| engine(dir, e))?;
            for (dot, change) in &deferred.meta.quarantine {
                let id = (dot.replica.0.as_u128(), dot.seq.0);
                match change {
                    Some(record) => quarantine.insert(id, encode(record).as_slice()).map(drop),
                    None => quarantine.remove(id).map(drop),
                }
                .map_err(|e| engine(dir, e))?;
            }
            let mut replicas = txn.open_table(REPLICAS).map_err(|e| engine(dir, e))?;
            for (replica, region) in &deferred.meta.replicas {
                replicas
                    .insert(replica.0.as_u128(), region.as_str())
                    .map_err(|e| engine(dir, e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| engine(dir, e))?;
            // The batch's key states were cloned at the same instant as its applied vector,
            // and every kept-back state is the newest of its key: together they are the key
            // table as of `applied`, and every record up to `end` is reflected.
            let pos = end.to_bytes();
            let values: [(&str, &[u8]); 6] = [
                ("log_start", &log_start.to_bytes()),
                ("own_seq", &own_seq.0.to_le_bytes()),
                ("hlc_high", &hlc_high.as_u64().to_le_bytes()),
                ("keys_applied", &applied.to_bytes()),
                ("log_pos", &pos),
                ("replay_pos", &pos),
            ];
            for (key, value) in values {
                meta.insert(key, value).map_err(|e| engine(dir, e))?;
            }
            if let Some(progress) = bootstrap {
                meta.insert("bootstrap", encode(progress).as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
            // Tombstone collection's floor, with the key states it dropped.
            meta.insert("collected", collected.to_bytes().as_slice())
                .map_err(|e| engine(dir, e))?;
        }
        txn.commit().map_err(|e| engine(dir, e))?;
        Ok(compact)
    }

    /// A peer's snapshot piece from the last checkpoint, in one read transaction: the key
    /// states strictly after `after` in (table, key) order, each adding its table, key and
    /// [`KeyState::estimated_bytes`] to a sum that stops the read once it reaches `max_bytes`
    /// (so at least one state when any follows), with the applied vector they reflect
    /// (`keys_applied`), whether any key follows, and how many keys the checkpoint holds.
    pub fn read_snapshot(
        &self,
        after: Option<&SlotKey>,
        max_bytes: usize,
    ) -> Result<SnapshotPiece, StorageError> {
        use std::ops::Bound;
        let dir = &self.dir;
        let db = self.db();
        let txn = db.begin_read().map_err(|e| engine(dir, e))?;
        let applied = match open_read(&txn, META, dir)? {
            Some(meta) => match meta.get("keys_applied").map_err(|e| engine(dir, e))? {
                Some(v) => {
                    VersionVector::from_bytes(v.value()).map_err(|e| StorageError::Corrupt {
                        dir: dir.clone(),
                        table: "meta",
                        detail: format!("keys_applied: {e}"),
                    })?
                }
                None => VersionVector::new(),
            },
            None => VersionVector::new(),
        };
        let mut piece = SnapshotPiece {
            applied,
            states: Vec::new(),
            done: true,
            total_keys: 0,
        };
        let Some(keys) = open_read(&txn, KEYS, dir)? else {
            return Ok(piece);
        };
        piece.total_keys = keys.len().map_err(|e| engine(dir, e))?;
        let start = match after {
            Some((table, key)) => Bound::Excluded((table.as_str(), key.as_slice())),
            None => Bound::Unbounded,
        };
        let mut range = keys
            .range::<(&str, &[u8])>((start, Bound::Unbounded))
            .map_err(|e| engine(dir, e))?;
        let mut used = 0;
        for item in range.by_ref() {
            let (k, v) = item.map_err(|e| engine(dir, e))?;
            let (table, key) = k.value();
            let state: KeyState = decode(v.value(), "keys", dir)?;
            used += table.len() + key.len() + state.estimated_bytes();
            piece.states.push((table.to_owned(), key.to_vec(), state));
            if used >= max_bytes {
                break;
            }
        }
        piece.done = range.next().is_none();
        Ok(piece)
    }

    /// Reads `origin`'s log from `from` to `to` inclusive, stopping after about `max_bytes`
    /// (at least one entry is returned if any exists in the range).
    pub fn read_log(
        &self,
        origin: ReplicaId,
        from: Seq,
        to: Seq,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let mut out = Vec::new();
        let mut used = 0;
        self.log
            .records_of(origin.0.as_u128(), from.0, to.0, |file, offset, payload| {
                let record = decode_record(payload, file, offset)?;
                for entry in record.entries.into_owned() {
                    let dot = entry.write.dot;
                    if dot.replica != origin || dot.seq < from {
                        continue;
                    }
                    if dot.seq > to {
                        return Ok(false);
                    }
                    used += entry.wire_size();
                    out.push(entry);
                    if used >= max_bytes {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
        Ok(out)
    }
}

/// Reads or creates the identity records; checks ownership. Returns the replica id, whether
/// the directory was initialised now, and its format.
fn identity(
    db: &Database,
    dir: &Path,
    cluster: &str,
    region: &str,
) -> Result<(ReplicaId, bool, u64), StorageError> {
    let txn = db.begin_write().map_err(|e| engine(dir, e))?;
    let result = {
        let mut meta = txn.open_table(META).map_err(|e| engine(dir, e))?;
        let get = |meta: &redb::Table<'_, &str, &[u8]>,
                   k: &str|
         -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta
                .get(k)
                .map_err(|e| engine(dir, e))?
                .map(|v| v.value().to_vec()))
        };
        match get(&meta, "replica")? {
            Some(raw) => {
                let found_cluster =
                    String::from_utf8_lossy(&get(&meta, "cluster")?.unwrap_or_default())
                        .into_owned();
                let found_region =
                    String::from_utf8_lossy(&get(&meta, "region")?.unwrap_or_default())
                        .into_owned();
                let format = get(&meta, "format")?
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                if format > FORMAT_VERSION {
                    return Err(StorageError::Format {
                        dir: dir.to_owned(),
                        found: format,
                    });
                }
                if found_cluster != cluster || found_region != region {
                    return Err(StorageError::WrongOwner {
                        dir: dir.to_owned(),
                        found_region,
                        found_cluster,
                        region: region.to_owned(),
                        cluster: cluster.to_owned(),
                    });
                }
                let bytes: [u8; 16] = raw.try_into().map_err(|_| StorageError::Corrupt {
                    dir: dir.to_owned(),
                    table: "meta",
                    detail: "replica id is not 16 bytes".into(),
                })?;
                (ReplicaId(uuid::Uuid::from_bytes(bytes)), false, format)
            }
            None => {
                let replica = ReplicaId::new_random();
                let values: [(&str, &[u8]); 5] = [
                    ("replica", replica.0.as_bytes()),
                    ("cluster", cluster.as_bytes()),
                    ("region", region.as_bytes()),
                    ("format", &FORMAT_VERSION.to_le_bytes()),
                    ("keys_applied", &VersionVector::new().to_bytes()),
                ];
                for (k, v) in values {
                    meta.insert(k, v).map_err(|e| engine(dir, e))?;
                }
                (replica, true, FORMAT_VERSION)
            }
        }
    };
    txn.commit().map_err(|e| engine(dir, e))?;
    Ok(result)
}

/// Log entries gathered for a callback, handed over whenever the next one would pass the
/// byte budget.
struct Chunk {
    entries: Vec<LogEntry>,
    bytes: usize,
    max_bytes: usize,
}

impl Chunk {
    fn new(max_bytes: usize) -> Self {
        Chunk {
            entries: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn push(&mut self, entry: LogEntry, apply: &mut impl FnMut(Vec<LogEntry>)) {
        let size = entry.wire_size();
        if !self.entries.is_empty() && self.bytes + size > self.max_bytes {
            apply(std::mem::take(&mut self.entries));
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push(entry);
    }

    fn finish(self, apply: &mut impl FnMut(Vec<LogEntry>)) {
        if !self.entries.is_empty() {
            apply(self.entries);
        }
    }
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'_, K, V>,
    dir: &Path,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StorageError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(engine(dir, e)),
    }
}

fn engine(dir: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Engine {
        dir: dir.to_owned(),
        detail: e.to_string(),
    }
}

fn corrupt_meta(dir: &Path, key: &str) -> StorageError {
    StorageError::Corrupt {
        dir: dir.to_owned(),
        table: "meta",
        detail: format!("{key} has the wrong length"),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own in-memory types into a Vec cannot fail: postcard only fails on
    // writer errors (none for a Vec) or on types serde cannot express (none here).
    postcard::to_stdvec(value).expect("postcard encoding of in-memory state cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    table: &'static str,
    dir: &Path,
) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        dir: dir.to_owned(),
        table,
        detail: e.to_string(),
    })
}

/// Decodes a log record whose checksum held (so a failure is damage, or a newer writer).
fn decode_record<'a>(
    payload: &'a [u8],
    file: &Path,
    offset: u64,
) -> Result<Record<'a>, StorageError> {
    postcard::from_bytes(payload).map_err(|e| StorageError::LogCorrupt {
        file: file.to_owned(),
        offset,
        detail: format!("record does not decode: {e}"),
    })
}

fn decode_u64(bytes: &[u8], dir: &Path) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt_meta(dir, "a counter"))?;
    Ok(u64::from_le_bytes(arr))
}

/// A batch carries a key the state machine dropped (its tombstones collected) as the empty
/// state, which no write ever leaves behind (a write always adds its dot to the context).
fn is_collected(state: &KeyState) -> bool {
    state.siblings.is_empty() && state.context.is_empty()
}
