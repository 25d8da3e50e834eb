//! Directories of older storage formats, upgraded on open.
//!
//! - Format 1 kept every key state current (no `keys_applied`).
//! - Formats 1 and 2 kept no record of quarantined writes.
//! - Formats 1 to 3 kept the log in redb's `log` table, (origin, seq) → postcard of
//!   [`LogEntry`]; format 4 moves it into the segmented log.
//!
//! Each step commits before the next, so a crash in the middle leaves a directory that the
//! next open upgrades from where it stopped: the segmented log is rebuilt from the `log` table
//! until the commit that drops the table and records format 4.

use std::borrow::Cow;
use std::path::Path;

use conflict::{Dot, KeyState, ReplicaId, Seq, VersionVector};
use leader_core::LogEntry;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::log::{Pos, SegmentLog};
use super::{
    APPLIED, FORMAT_VERSION, KEYS, LOG_DIR, META, QUARANTINE, QuarantineRecord, Record,
    StorageError, StoreLimits, decode, encode, engine, open_read,
};

/// The log table of formats 1 to 3.
const LOG: TableDefinition<'_, (u128, u64), &[u8]> = TableDefinition::new("log");
/// Entries per record when the old log is moved: large enough to write the log in big
/// sequential appends, small enough to read one record for one entry cheaply.
const MOVE_RECORD_BYTES: usize = 1024 * 1024;

/// Upgrades a directory of `format` (below [`FORMAT_VERSION`]) to the current format.
pub(super) fn upgrade(
    db: &Database,
    dir: &Path,
    format: u64,
    limits: StoreLimits,
) -> Result<(), StorageError> {
    let keys_applied = keys_applied(db, dir)?;
    if format < 3 {
        record_quarantined(db, dir, &keys_applied)?;
    }
    move_log(db, dir, &keys_applied, limits)
}

/// The applied vector the key table reflects: `keys_applied`, or for format 1 (whose key
/// states are current) the applied vector.
fn keys_applied(db: &Database, dir: &Path) -> Result<VersionVector, StorageError> {
    let txn = db.begin_read().map_err(|e| engine(dir, e))?;
    if let Some(meta) = open_read(&txn, META, dir)?
        && let Some(v) = meta.get("keys_applied").map_err(|e| engine(dir, e))?
    {
        return VersionVector::from_bytes(v.value()).map_err(|e| StorageError::Corrupt {
            dir: dir.to_owned(),
            table: "meta",
            detail: format!("keys_applied: {e}"),
        });
    }
    let mut applied = VersionVector::new();
    if let Some(table) = open_read(&txn, APPLIED, dir)? {
        for item in table.iter().map_err(|e| engine(dir, e))? {
            let (k, v) = item.map_err(|e| engine(dir, e))?;
            applied.add_dot(&Dot {
                replica: ReplicaId(uuid::Uuid::from_u128(k.value())),
                seq: Seq(v.value()),
            });
        }
    }
    Ok(applied)
}

/// Formats before 3 kept no record of quarantined writes: they are the logged writes up to
/// `keys_applied` whose dot their key's context lacks (applying a write joins its dot into the
/// context for good, superseded or not), origin resolver unknown. Reads the whole log once.
fn record_quarantined(
    db: &Database,
    dir: &Path,
    keys_applied: &VersionVector,
) -> Result<(), StorageError> {
    let mut found = Vec::new();
    {
        let read = db.begin_read().map_err(|e| engine(dir, e))?;
        if let (Some(log), keys) = (open_read(&read, LOG, dir)?, open_read(&read, KEYS, dir)?) {
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
    }
    let txn = db.begin_write().map_err(|e| engine(dir, e))?;
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
        meta.insert("format", 3u64.to_le_bytes().as_slice())
            .map_err(|e| engine(dir, e))?;
    }
    txn.commit().map_err(|e| engine(dir, e))
}

/// Moves the `log` table into a new segmented log (whatever an interrupted move left in
/// `log/` is discarded first), then drops the table and records format 4 in one commit. The
/// checkpoint's metadata is already in redb, so the moved records carry entries only; the
/// next start replays them from the start of the log, filtered by `keys_applied`.
fn move_log(
    db: &Database,
    dir: &Path,
    keys_applied: &VersionVector,
    limits: StoreLimits,
) -> Result<(), StorageError> {
    let log_dir = dir.join(LOG_DIR);
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).map_err(|source| StorageError::Io {
            dir: log_dir.clone(),
            source,
        })?;
    }
    let log = SegmentLog::open(&log_dir, limits.segment_bytes)?;
    {
        let read = db.begin_read().map_err(|e| engine(dir, e))?;
        if let Some(table) = open_read(&read, LOG, dir)? {
            let mut entries = Vec::new();
            let mut bytes = 0;
            for item in table.iter().map_err(|e| engine(dir, e))? {
                let (_, v) = item.map_err(|e| engine(dir, e))?;
                bytes += v.value().len();
                entries.push(decode::<LogEntry>(v.value(), "log", dir)?);
                if bytes >= MOVE_RECORD_BYTES {
                    append_entries(&log, std::mem::take(&mut entries))?;
                    bytes = 0;
                }
            }
            append_entries(&log, entries)?;
        }
    }
    let end = log.end();
    let txn = db.begin_write().map_err(|e| engine(dir, e))?;
    {
        match txn.delete_table(LOG) {
            Ok(_) => {}
            Err(e) => return Err(engine(dir, e)),
        }
        let mut meta = txn.open_table(META).map_err(|e| engine(dir, e))?;
        let values: [(&str, &[u8]); 4] = [
            ("keys_applied", &keys_applied.to_bytes()),
            ("log_pos", &end.to_bytes()),
            ("replay_pos", &Pos::default().to_bytes()),
            ("format", &FORMAT_VERSION.to_le_bytes()),
        ];
        for (k, v) in values {
            meta.insert(k, v).map_err(|e| engine(dir, e))?;
        }
    }
    txn.commit().map_err(|e| engine(dir, e))
}

/// Appends one record of moved entries (none: nothing).
fn append_entries(log: &SegmentLog, entries: Vec<LogEntry>) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    let applied = VersionVector::new();
    let record = Record {
        entries: Cow::Owned(entries),
        applied: Cow::Borrowed(&applied),
        own_seq: Seq(0),
        hlc_high: conflict::Hlc::from_u64(0),
        replicas: Cow::Borrowed(&[]),
        peer_acked: Cow::Borrowed(&[]),
        quarantined: Cow::Borrowed(&[]),
        released: Cow::Borrowed(&[]),
    };
    log.append(super::log::frame(&record), &record.ranges())
        .map(drop)
}
