//! Durable storage of one region: a redb database in the region's data directory.
//!
//! It holds key states, the per-origin log of writes, the applied vector, peers' acknowledged
//! positions, the HLC high-water mark and the replica id. The state machine decides *what* to
//! write ([`PersistBatch`]); [`Store::persist`] writes one batch in one transaction and returns
//! only after redb's commit has fsynced it (`Durability::Immediate`). Because the state machine
//! keeps at most one batch outstanding and stages everything that arrives meanwhile, client
//! writes and replicated batches that arrive together share one transaction and one fsync.
//!
//! The log is read by other threads concurrently with the writer (redb is MVCC), which is how a
//! lagging peer is served from disk rather than from memory.
//!
//! # Key states are checkpointed, the log is the record
//! Every commit writes the batch's log entries, the applied vector and the counters. The key
//! states of the batch are kept back in memory and written at the next *checkpoint* (a commit
//! that writes every kept-back state and records, as `keys_applied`, the applied vector they
//! reflect): when [`CHECKPOINT_KEYS`] states or [`CHECKPOINT_ENTRIES`] log entries have
//! accumulated, or when either the log written since the last checkpoint or the states kept
//! back reach [`StoreLimits::checkpoint_bytes`], or when the batch asks for one
//! ([`PersistBatch::checkpoint`]). A write is durable once its log entry is: recovery loads the
//! checkpointed states, and [`Store::replay`] hands the log entries after `keys_applied` to the
//! state machine in chunks of at most [`StoreLimits::replay_chunk_bytes`]
//! ([`leader_core::Replica::replay`]), so a restart never holds the whole replay in memory.
//! Why: a key state lives in a random leaf page of the key table, so writing each batch's
//! states dirtied about one 4 KiB page per write (plus the branch pages above them), while
//! the log is appended; measured, a commit of ~26 writes wrote ~187 KB. A checkpoint rewrites
//! a dirty leaf once for all the writes that touched it since the last one.

//!
//! # Quarantined writes are recorded
//! A replicated write the state machine logged without applying (its table unknown here, or
//! resolved differently by its origin) is recorded in the `quarantine` table, with the resolver
//! its origin used, by the batch that logs it ([`PersistBatch::quarantined`]). A start hands
//! the records to the state machine ([`Recovered::quarantined`]), which picks those its
//! configuration accepts; [`Store::read_writes`] reads them from the log for it, and the batch
//! that carries their applied key states deletes the records ([`PersistBatch::released`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, VersionVector};
use leader_core::{LogEntry, PersistBatch, Quarantined, Recovered};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("keys");
const LOG: TableDefinition<'_, (u128, u64), &[u8]> = TableDefinition::new("log");
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
const FORMAT_VERSION: u64 = 3;

/// What the `quarantine` table stores of a [`Quarantined`] write (its dot is the key).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct QuarantineRecord {
    table: String,
    origin_resolver: Option<String>,
}
/// A checkpoint is due once this many key states are kept back: bounds the memory they take
/// and the size of one checkpoint commit.
const CHECKPOINT_KEYS: usize = 4096;
/// A checkpoint is due once this many log entries were committed since the last one: bounds
/// the replay on the next start.
const CHECKPOINT_ENTRIES: usize = 65_536;
/// Name of the database file inside the data directory.
const DB_FILE: &str = "meridian.redb";

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
}

impl Default for StoreLimits {
    /// The defaults of `[limits]`.
    fn default() -> Self {
        StoreLimits {
            checkpoint_bytes: 64 * 1024 * 1024,
            replay_chunk_bytes: 8 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
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
    db: Database,
    dir: PathBuf,
    commits: AtomicU64,
    /// Key states committed in the log but not yet in the key table. Only [`Store::persist`]
    /// takes the lock, and persists run one at a time, so it is never contended.
    deferred: Mutex<Deferred>,
    limits: StoreLimits,
    /// The log a restart must replay: after `keys_applied` (first), up to `applied` (second).
    replay_range: (VersionVector, VersionVector),
}

/// Key states kept back until the next checkpoint.
#[derive(Debug, Default)]
struct Deferred {
    /// The newest state of every key changed since the last checkpoint.
    keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// Estimated bytes of `keys` ([`state_bytes`]).
    key_bytes: usize,
    /// Log entries committed since the last checkpoint.
    entries: usize,
    /// Their bytes ([`LogEntry::wire_size`]).
    entry_bytes: usize,
}

/// Estimated memory of a key state: its values, plus room for dots, stamps and context.
fn state_bytes(state: &KeyState) -> usize {
    let values: usize = state
        .siblings
        .iter()
        .map(|s| 48 + s.value.as_bytes().map_or(0, <[u8]>::len))
        .sum();
    64 + values + 24 * state.context.len()
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
        let mut store = Store {
            db,
            dir: dir.to_owned(),
            commits: AtomicU64::new(0),
            deferred: Mutex::new(Deferred::default()),
            limits,
            replay_range: Default::default(),
        };
        let (replica, created) = store.identity(cluster, region)?;
        let (recovered, replay_from) = store.recover()?;
        store.replay_range = (replay_from, recovered.applied.clone());
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

    /// Number of transactions committed (each one fsync) since open.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Reads or creates the identity records; checks ownership.
    fn identity(&self, cluster: &str, region: &str) -> Result<(ReplicaId, bool), StorageError> {
        let txn = self.db.begin_write().map_err(|e| engine(&self.dir, e))?;
        let result = {
            let mut meta = txn.open_table(META).map_err(|e| engine(&self.dir, e))?;
            let get = |meta: &redb::Table<'_, &str, &[u8]>,
                       k: &str|
             -> Result<Option<Vec<u8>>, StorageError> {
                Ok(meta
                    .get(k)
                    .map_err(|e| engine(&self.dir, e))?
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
                            dir: self.dir.clone(),
                            found: format,
                        });
                    }
                    if found_cluster != cluster || found_region != region {
                        return Err(StorageError::WrongOwner {
                            dir: self.dir.clone(),
                            found_region,
                            found_cluster,
                            region: region.to_owned(),
                            cluster: cluster.to_owned(),
                        });
                    }
                    let bytes: [u8; 16] = raw.try_into().map_err(|_| StorageError::Corrupt {
                        dir: self.dir.clone(),
                        table: "meta",
                        detail: "replica id is not 16 bytes".into(),
                    })?;
                    (ReplicaId(uuid::Uuid::from_bytes(bytes)), false)
                }
                None => {
                    let replica = ReplicaId::new_random();
                    let put = |meta: &mut redb::Table<'_, &str, &[u8]>, k: &str, v: &[u8]| {
                        meta.insert(k, v)
                            .map(|_| ())
                            .map_err(|e| engine(&self.dir, e))
                    };
                    put(&mut meta, "replica", replica.0.as_bytes())?;
                    put(&mut meta, "cluster", cluster.as_bytes())?;
                    put(&mut meta, "region", region.as_bytes())?;
                    put(&mut meta, "format", &FORMAT_VERSION.to_le_bytes())?;
                    put(&mut meta, "keys_applied", &VersionVector::new().to_bytes())?;
                    (replica, true)
                }
            }
        };
        txn.commit().map_err(|e| engine(&self.dir, e))?;
        Ok(result)
    }

    /// Loads everything the state machine needs but the replay, and where the replay starts
    /// (the checkpoint's `keys_applied`).
    fn recover(&self) -> Result<(Recovered, VersionVector), StorageError> {
        let dir = &self.dir;
        let txn = self.db.begin_read().map_err(|e| engine(dir, e))?;
        let mut rec = Recovered::default();
        if let Some(meta) = open_read(&txn, META, dir)? {
            if let Some(v) = meta.get("own_seq").map_err(|e| engine(dir, e))? {
                rec.own_seq = Seq(decode_u64(v.value(), dir)?);
            }
            if let Some(v) = meta.get("hlc_high").map_err(|e| engine(dir, e))? {
                rec.hlc_high = Hlc::from_u64(decode_u64(v.value(), dir)?);
            }
        }
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
                let dot = conflict::Dot {
                    replica: ReplicaId(uuid::Uuid::from_u128(k.value())),
                    seq: Seq(v.value()),
                };
                rec.applied.add_dot(&dot);
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
        let keys_applied = match open_read(&txn, META, dir)? {
            Some(meta) => match meta.get("keys_applied").map_err(|e| engine(dir, e))? {
                Some(v) => Some(VersionVector::from_bytes(v.value()).map_err(|e| {
                    StorageError::Corrupt {
                        dir: dir.clone(),
                        table: "meta",
                        detail: format!("keys_applied: {e}"),
                    }
                })?),
                None => None,
            },
            None => None,
        };
        let format = match open_read(&txn, META, dir)? {
            Some(meta) => match meta.get("format").map_err(|e| engine(dir, e))? {
                Some(v) => decode_u64(v.value(), dir)?,
                None => 0,
            },
            None => 0,
        };
        let replay_from = match keys_applied {
            Some(checkpoint) => checkpoint,
            // A version-1 directory: its key states are current. Record that before any batch
            // keeps states back, so a crash after it replays from here.
            None => rec.applied.clone(),
        };
        if format < FORMAT_VERSION {
            self.upgrade(&txn, &replay_from)?;
        }
        if let Some(quarantine) = open_read(
            &self.db.begin_read().map_err(|e| engine(dir, e))?,
            QUARANTINE,
            dir,
        )? {
            for item in quarantine.iter().map_err(|e| engine(dir, e))? {
                let (k, v) = item.map_err(|e| engine(dir, e))?;
                let (origin, seq) = k.value();
                let record: QuarantineRecord = decode(v.value(), "quarantine", dir)?;
                rec.quarantined.push(Quarantined {
                    dot: Dot {
                        replica: ReplicaId(uuid::Uuid::from_u128(origin)),
                        seq: Seq(seq),
                    },
                    table: record.table,
                    origin_resolver: record.origin_resolver,
                });
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
        Ok((rec, replay_from))
    }

    /// Hands the log entries that the recovered key states do not reflect (after the last
    /// checkpoint, up to the recovered applied vector) to `apply`, each origin's in sequence
    /// order, in chunks of at most [`StoreLimits::replay_chunk_bytes`] (by
    /// [`LogEntry::wire_size`]; a larger entry comes alone). Call it once, after
    /// [`Store::open`] and before the first [`Store::persist`]; feed each chunk to
    /// [`leader_core::Replica::replay`]. Returns the number of entries replayed.
    pub fn replay(&self, mut apply: impl FnMut(Vec<LogEntry>)) -> Result<u64, StorageError> {
        let dir = &self.dir;
        let (from_vv, to_vv) = &self.replay_range;
        let txn = self.db.begin_read().map_err(|e| engine(dir, e))?;
        let Some(log) = open_read(&txn, LOG, dir)? else {
            return Ok(0);
        };
        let mut chunk = Chunk::new(self.limits.replay_chunk_bytes);
        let mut count = 0;
        for (origin, last) in to_vv.iter() {
            let from = from_vv.get(origin).next();
            if from > last {
                continue;
            }
            let o = origin.0.as_u128();
            for item in log
                .range((o, from.0)..=(o, last.0))
                .map_err(|e| engine(dir, e))?
            {
                let (_, v) = item.map_err(|e| engine(dir, e))?;
                chunk.push(decode(v.value(), "log", dir)?, &mut apply);
                count += 1;
            }
        }
        chunk.finish(&mut apply);
        Ok(count)
    }

    /// Upgrades a directory of an older format, whose key table reflects `keys_applied` (for
    /// format 1, everything applied). Formats before 3 kept no record of quarantined writes:
    /// they are the logged writes up to `keys_applied` whose dot their key's context lacks
    /// (applying a write joins its dot into the context for good, superseded or not), and
    /// whose origin's resolver is unknown now. Reads the whole log once.
    fn upgrade(
        &self,
        read: &redb::ReadTransaction,
        keys_applied: &VersionVector,
    ) -> Result<(), StorageError> {
        let dir = &self.dir;
        let mut found = Vec::new();
        if let (Some(log), keys) = (open_read(read, LOG, dir)?, open_read(read, KEYS, dir)?) {
            for item in log.iter().map_err(|e| engine(dir, e))? {
                let (_, v) = item.map_err(|e| engine(dir, e))?;
                let entry: LogEntry = decode(v.value(), "log", dir)?;
                if !keys_applied.covers(&entry.write.dot) {
                    continue;
                }
                let state = match &keys {
                    Some(keys) => keys
                        .get((entry.table.as_str(), entry.key.as_slice()))
                        .map_err(|e| engine(dir, e))?
                        .map(|v| decode::<KeyState>(v.value(), "keys", dir))
                        .transpose()?,
                    None => None,
                };
                if !state.is_some_and(|s| s.context.covers(&entry.write.dot)) {
                    found.push((entry.write.dot, entry.table));
                }
            }
        }
        let txn = self.db.begin_write().map_err(|e| engine(dir, e))?;
        {
            let mut quarantine = txn.open_table(QUARANTINE).map_err(|e| engine(dir, e))?;
            for (dot, table) in found {
                let record = QuarantineRecord {
                    table,
                    origin_resolver: None,
                };
                quarantine
                    .insert(
                        (dot.replica.0.as_u128(), dot.seq.0),
                        encode(&record).as_slice(),
                    )
                    .map_err(|e| engine(dir, e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| engine(dir, e))?;
            meta.insert("keys_applied", keys_applied.to_bytes().as_slice())
                .map_err(|e| engine(dir, e))?;
            meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(|e| engine(dir, e))?;
        }
        txn.commit().map_err(|e| engine(dir, e))
    }

    /// Hands the logged writes `dots` (each origin's in sequence order, as
    /// [`leader_core::Replica::to_release`] lists them) to `apply`, in chunks of at most
    /// [`StoreLimits::replay_chunk_bytes`]. A dot missing from the log is skipped.
    pub fn read_writes(
        &self,
        dots: &[Dot],
        mut apply: impl FnMut(Vec<LogEntry>),
    ) -> Result<u64, StorageError> {
        let dir = &self.dir;
        let txn = self.db.begin_read().map_err(|e| engine(dir, e))?;
        let Some(log) = open_read(&txn, LOG, dir)? else {
            return Ok(0);
        };
        let mut chunk = Chunk::new(self.limits.replay_chunk_bytes);
        let mut count = 0;
        for dot in dots {
            let Some(v) = log
                .get((dot.replica.0.as_u128(), dot.seq.0))
                .map_err(|e| engine(dir, e))?
            else {
                continue;
            };
            chunk.push(decode(v.value(), "log", dir)?, &mut apply);
            count += 1;
        }
        chunk.finish(&mut apply);
        Ok(count)
    }

    /// Writes one batch atomically and durably: returns after the fsync. Its key states are
    /// written now if this commit is a checkpoint, else kept back for the next one (the log
    /// entries committed now rebuild them after a crash).
    pub fn persist(&self, batch: PersistBatch) -> Result<(), StorageError> {
        let dir = &self.dir;
        // Poisoned only if an earlier persist panicked; its commit never happened and the
        // node stopped, so what the lock holds is still what earlier commits kept back.
        let mut deferred = self
            .deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        deferred.entries += batch.log.len();
        deferred.entry_bytes += batch.log.iter().map(LogEntry::wire_size).sum::<usize>();
        for (table, key, state) in batch.keys {
            deferred.key_bytes += state_bytes(&state);
            if let Some(old) = deferred.keys.insert((table, key), state) {
                deferred.key_bytes -= state_bytes(&old);
            }
        }
        let checkpoint = batch.checkpoint
            || deferred.keys.len() >= CHECKPOINT_KEYS
            || deferred.entries >= CHECKPOINT_ENTRIES
            || deferred.key_bytes >= self.limits.checkpoint_bytes
            || deferred.entry_bytes >= self.limits.checkpoint_bytes;
        let txn = self.db.begin_write().map_err(|e| engine(dir, e))?;
        {
            if checkpoint {
                let mut keys = txn.open_table(KEYS).map_err(|e| engine(dir, e))?;
                for ((table, key), state) in &deferred.keys {
                    let bytes = encode(state);
                    keys.insert((table.as_str(), key.as_slice()), bytes.as_slice())
                        .map_err(|e| engine(dir, e))?;
                }
            }
            let mut log = txn.open_table(LOG).map_err(|e| engine(dir, e))?;
            for entry in &batch.log {
                let id = (entry.write.dot.replica.0.as_u128(), entry.write.dot.seq.0);
                log.insert(id, encode(entry).as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
            let mut applied = txn.open_table(APPLIED).map_err(|e| engine(dir, e))?;
            for (replica, seq) in batch.applied.iter() {
                applied
                    .insert(replica.0.as_u128(), seq.0)
                    .map_err(|e| engine(dir, e))?;
            }
            let mut peers = txn.open_table(PEERS).map_err(|e| engine(dir, e))?;
            for (peer, vv) in &batch.peer_acked {
                peers
                    .insert(peer.as_str(), vv.to_bytes().as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
            let mut quarantine = txn.open_table(QUARANTINE).map_err(|e| engine(dir, e))?;
            for q in &batch.quarantined {
                let record = QuarantineRecord {
                    table: q.table.clone(),
                    origin_resolver: q.origin_resolver.clone(),
                };
                quarantine
                    .insert(
                        (q.dot.replica.0.as_u128(), q.dot.seq.0),
                        encode(&record).as_slice(),
                    )
                    .map_err(|e| engine(dir, e))?;
            }
            for dot in &batch.released {
                quarantine
                    .remove((dot.replica.0.as_u128(), dot.seq.0))
                    .map_err(|e| engine(dir, e))?;
            }
            let mut replicas = txn.open_table(REPLICAS).map_err(|e| engine(dir, e))?;
            for (replica, region) in &batch.replicas {
                replicas
                    .insert(replica.0.as_u128(), region.as_str())
                    .map_err(|e| engine(dir, e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| engine(dir, e))?;
            meta.insert("own_seq", batch.own_seq.0.to_le_bytes().as_slice())
                .map_err(|e| engine(dir, e))?;
            meta.insert("hlc_high", batch.hlc_high.as_u64().to_le_bytes().as_slice())
                .map_err(|e| engine(dir, e))?;
            if checkpoint {
                // The batch's key states were cloned at the same instant as its applied
                // vector, and every kept-back state is the newest of its key: together they
                // are the key table as of `batch.applied`.
                meta.insert("keys_applied", batch.applied.to_bytes().as_slice())
                    .map_err(|e| engine(dir, e))?;
            }
        }
        txn.commit().map_err(|e| engine(dir, e))?;
        if checkpoint {
            *deferred = Deferred::default();
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
        let dir = &self.dir;
        let txn = self.db.begin_read().map_err(|e| engine(dir, e))?;
        let Some(log) = open_read(&txn, LOG, dir)? else {
            return Ok(Vec::new());
        };
        let o = origin.0.as_u128();
        let mut out = Vec::new();
        let mut used = 0;
        for item in log
            .range((o, from.0)..=(o, to.0))
            .map_err(|e| engine(dir, e))?
        {
            let (_, v) = item.map_err(|e| engine(dir, e))?;
            let entry: LogEntry = decode(v.value(), "log", dir)?;
            used += entry.wire_size();
            out.push(entry);
            if used >= max_bytes {
                break;
            }
        }
        Ok(out)
    }
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

fn decode_u64(bytes: &[u8], dir: &Path) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        dir: dir.to_owned(),
        table: "meta",
        detail: "counter is not 8 bytes".into(),
    })?;
    Ok(u64::from_le_bytes(arr))
}
