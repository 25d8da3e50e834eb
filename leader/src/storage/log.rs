//! The write log: append-only segment files in `<data_dir>/log/`, one record per group commit.
//!
//! # Layout
//! A segment `NNNNNNNNNNNNNNNNNNNN.seg` (its number, from 1) starts with the 8-byte [`MAGIC`]
//! and holds records back to back: `len: u32 LE | crc32(payload): u32 LE | payload`. Once a
//! segment reaches the segment size the next record opens a new one and the sealed segment's
//! index is written beside it (`.idx`: `crc32: u32 LE | postcard of` [`SegmentIndex`]), so a
//! start reads the small index files instead of scanning every sealed segment; a missing or
//! damaged index is rebuilt by scanning its segment.
//!
//! # Recovery
//! Only the last segment can hold a record that was being written when the process died, and
//! that record was never acknowledged (its `fdatasync` had not returned). Opening scans the last
//! segment: a record that fails its checksum or runs past the end of the file, or a header of
//! zeros (a page of the last write that never reached the disk) with no whole record anywhere
//! after it, is a torn tail when nothing but it follows, and the file is cut there. Any other damage is an error naming the file and
//! the offset, never skipped: a sealed segment, or a bad record with data after it, holds
//! acknowledged writes.
//!
//! # Truncation
//! Whole segments only, the oldest first, never the one being appended to
//! ([`SegmentLog::drop_covered`]); numbering goes on, so the first segment of a truncated
//! log is not number 1.
//!
//! # Index
//! Per segment and per origin, the first and last sequence numbers and a sparse list of
//! (first sequence number of the origin in a record, record offset), one point every
//! [`INDEX_INTERVAL_BYTES`]: a read of an origin's log from a position seeks to the last point
//! at or before it and scans forward from there. It lives in memory for every segment (about 16
//! bytes per origin per 64 KiB of log).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::StorageError;

/// First bytes of every segment file: the log format's name and version.
const MAGIC: &[u8; 8] = b"MRDNLOG1";
/// Bytes of a record's header (length and checksum).
const RECORD_HEADER: u64 = 8;
/// Largest record payload accepted when reading: a longer length field is damage. A group
/// commit is bounded far below it by the frame and batch limits.
const MAX_RECORD_BYTES: u64 = 1 << 30;
/// An origin gets an index point once its previous one is this many bytes back.
const INDEX_INTERVAL_BYTES: u64 = 64 * 1024;
/// Buffer of a sequential reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// A place in the log: a segment number and a byte offset in it. `Pos::default()` is the
/// start of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) segment: u64,
    pub(super) offset: u64,
}

impl Pos {
    /// The 16 bytes stored in redb's `meta`.
    pub(super) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..].copy_from_slice(&self.offset.to_le_bytes());
        out
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Pos> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        let (segment, offset) = bytes.split_at(8);
        Some(Pos {
            segment: u64::from_le_bytes(segment.try_into().ok()?),
            offset: u64::from_le_bytes(offset.try_into().ok()?),
        })
    }
}

/// One origin's part of a segment.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OriginIndex {
    /// (first sequence number of the origin in a record, that record's offset), ascending.
    points: Vec<(u64, u64)>,
    /// The origin's last sequence number in the segment.
    last: u64,
}

/// What is known of a segment without reading it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct SegmentIndex {
    /// Bytes of whole, durable records (with the magic): readers stop here.
    len: u64,
    /// By origin (`u128` of its replica id).
    origins: BTreeMap<u128, OriginIndex>,
}

impl SegmentIndex {
    fn add(&mut self, offset: u64, ranges: &[(u128, u64, u64)]) {
        for &(origin, first, last) in ranges {
            let index = self.origins.entry(origin).or_default();
            if index
                .points
                .last()
                .is_none_or(|&(_, at)| offset - at >= INDEX_INTERVAL_BYTES)
            {
                index.points.push((first, offset));
            }
            index.last = last;
        }
    }
}

/// The appending end of the log. Only [`SegmentLog::append`] takes it.
struct Writer {
    file: File,
    segment: u64,
    len: u64,
}

/// The segmented log of one data directory.
pub(super) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    /// Every segment's index, by number. Readers copy what they need and read without it.
    index: RwLock<BTreeMap<u64, SegmentIndex>>,
}

/// Why a record could not be read.
struct BadRecord {
    detail: String,
    /// Nothing but this record follows: a write torn by a crash.
    torn: bool,
}

/// `value` encoded after room for the record header, ready for [`SegmentLog::append`] (one
/// buffer, no copy).
pub(super) fn frame<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own in-memory types into a Vec cannot fail (see `super::encode`).
    postcard::to_extend(value, vec![0u8; RECORD_HEADER as usize])
        .expect("postcard encoding of in-memory state cannot fail")
}

/// Origins of `entries` (each origin's in sequence order) with their first and last sequence
/// numbers.
pub(super) fn origin_ranges<'a>(
    dots: impl Iterator<Item = (u128, u64)> + 'a,
) -> Vec<(u128, u64, u64)> {
    let mut ranges: BTreeMap<u128, (u64, u64)> = BTreeMap::new();
    for (origin, seq) in dots {
        let range = ranges.entry(origin).or_insert((seq, seq));
        range.1 = seq;
    }
    ranges.into_iter().map(|(o, (f, l))| (o, f, l)).collect()
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing): loads sealed segments' indexes, scans the
    /// last segment and cuts a torn tail.
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> Result<SegmentLog, StorageError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            // The new directory's entry must be durable before any record in it is.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let name = item.map_err(|e| io(dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut index = BTreeMap::new();
        let last = match numbers.pop() {
            Some(last) => last,
            None => {
                create_segment(dir, 1)?;
                1
            }
        };
        for n in numbers {
            index.insert(n, load_sealed(dir, n)?);
        }
        let path = segment_path(dir, last);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut magic = [0u8; 8];
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        if len <= MAGIC.len() as u64 {
            // A segment whose creation was interrupted before its magic was durable.
            file.read_at(&mut magic, 0).map_err(|e| io(&path, e))?;
            if &magic != MAGIC {
                file.set_len(0).map_err(|e| io(&path, e))?;
                file.write_all_at(MAGIC, 0).map_err(|e| io(&path, e))?;
                file.sync_all().map_err(|e| io(&path, e))?;
            }
        }
        let tail = scan(&path, true)?;
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        if len != tail.len {
            tracing::warn!(
                file = %path.display(),
                offset = tail.len,
                "cutting a torn record at the end of the write log (a write interrupted by a crash; it was never acknowledged)"
            );
            file.set_len(tail.len).map_err(|e| io(&path, e))?;
            file.sync_all().map_err(|e| io(&path, e))?;
        }
        index.insert(last, tail);
        let len = index[&last].len;
        Ok(SegmentLog {
            dir: dir.to_owned(),
            segment_bytes,
            writer: Mutex::new(Writer {
                file,
                segment: last,
                len,
            }),
            index: RwLock::new(index),
        })
    }

    /// Appends one record (made by [`frame`]) and returns after `fdatasync`, with the
    /// position just after it. `ranges` are the record's origins with their first and last
    /// sequence numbers.
    pub(super) fn append(
        &self,
        mut record: Vec<u8>,
        ranges: &[(u128, u64, u64)],
    ) -> Result<Pos, StorageError> {
        // Poisoned only if an append panicked; the node stops on that, and the length below
        // is what was durably written before it.
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writer.len >= self.segment_bytes {
            self.seal(&mut writer)?;
        }
        let offset = writer.len;
        let path = segment_path(&self.dir, writer.segment);
        let payload_len = record.len().saturating_sub(RECORD_HEADER as usize);
        let len = u32::try_from(payload_len)
            .ok()
            .filter(|&n| u64::from(n) <= MAX_RECORD_BYTES && record.len() >= RECORD_HEADER as usize)
            .ok_or_else(|| StorageError::Io {
                dir: path.clone(),
                source: std::io::Error::other(format!(
                    "a group commit of {payload_len} bytes is larger than a log record may be ({MAX_RECORD_BYTES})"
                )),
            })?;
        let crc = crc32fast::hash(&record[RECORD_HEADER as usize..]);
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = writer
            .file
            .write_all_at(&record, offset)
            .and_then(|()| writer.file.sync_data());
        if let Err(e) = written {
            // Leave no partial record behind for the next append to follow.
            let _ = writer.file.set_len(offset);
            return Err(io(&path, e));
        }
        writer.len += record.len() as u64;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let segment = index.entry(writer.segment).or_default();
        segment.add(offset, ranges);
        segment.len = writer.len;
        Ok(Pos {
            segment: writer.segment,
            offset: writer.len,
        })
    }

    /// Seals the segment being appended to, so that the next record starts a new one, if it
    /// holds at least `min_bytes` of records and `start` (the log start) covers every write
    /// in it: [`SegmentLog::drop_covered`] may then delete it once a checkpoint follows it.
    /// Returns whether it sealed.
    pub(super) fn seal_if_covered(
        &self,
        start: &conflict::VersionVector,
        min_bytes: u64,
    ) -> Result<bool, StorageError> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writer.len < MAGIC.len() as u64 + min_bytes {
            return Ok(false);
        }
        let covered = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index.get(&writer.segment).is_some_and(|s| {
                s.origins
                    .iter()
                    .all(|(o, oi)| oi.last <= start.get(conflict::ReplicaId::from_u128(*o)).0)
            })
        };
        if !covered {
            return Ok(false);
        }
        self.seal(&mut writer)?;
        Ok(true)
    }

    /// Writes the active segment's index and starts the next segment.
    fn seal(&self, writer: &mut Writer) -> Result<(), StorageError> {
        let sealed = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index.get(&writer.segment).cloned().unwrap_or_default()
        };
        write_index(&self.dir, writer.segment, &sealed)?;
        let next = writer.segment + 1;
        let file = create_segment(&self.dir, next)?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                next,
                SegmentIndex {
                    len: MAGIC.len() as u64,
                    ..SegmentIndex::default()
                },
            );
        *writer = Writer {
            file,
            segment: next,
            len: MAGIC.len() as u64,
        };
        Ok(())
    }

    /// Deletes the oldest segments while every write in them is covered by `start` (the
    /// recorded log start) and they come before segment `before` (the checkpoint's replay
    /// position: the log after it rebuilds what a crash loses). Whole files only, oldest
    /// first, never the segment being appended to; their index leaves memory first, so no
    /// read is planned on them. Returns the numbers deleted.
    ///
    /// The caller records `start` durably before calling: a crash in between leaves files
    /// that [`SegmentLog::drop_covered`] deletes at the next call, never a log start that
    /// claims writes are still there.
    pub(super) fn drop_covered(
        &self,
        start: &conflict::VersionVector,
        before: u64,
    ) -> Result<Vec<u64>, StorageError> {
        let active = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .segment;
        let doomed: Vec<u64> = {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            let doomed: Vec<u64> = index
                .iter()
                .take_while(|(n, s)| {
                    **n < before.min(active)
                        && s.origins.iter().all(|(o, oi)| {
                            oi.last <= start.get(conflict::ReplicaId::from_u128(*o)).0
                        })
                })
                .map(|(n, _)| *n)
                .collect();
            for n in &doomed {
                index.remove(n);
            }
            doomed
        };
        for n in &doomed {
            for path in [
                segment_path(&self.dir, *n),
                self.dir.join(format!("{n:020}.idx")),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path, e)),
                }
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed)
    }

    /// Bytes of the log's segment files (records and headers) and how many there are.
    pub(super) fn size(&self) -> (u64, usize) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        (index.values().map(|s| s.len).sum(), index.len())
    }

    /// The position after the last durable record.
    pub(super) fn end(&self) -> Pos {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .iter()
            .next_back()
            .map(|(&segment, s)| Pos {
                segment,
                offset: s.len,
            })
            .unwrap_or_default()
    }

    /// Hands every durable record from `from` on to `visit`, with its file and offset (for
    /// errors). Stops early when `visit` returns `Ok(false)`.
    pub(super) fn records_from(
        &self,
        from: Pos,
        visit: impl FnMut(&Path, u64, &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let plan = |index: &BTreeMap<u64, SegmentIndex>| {
            index
                .range(from.segment..)
                .map(|(&n, s)| {
                    let start = if n == from.segment { from.offset } else { 0 };
                    (n, start.max(MAGIC.len() as u64), s.len)
                })
                .collect()
        };
        self.read_plan(plan, visit)
    }

    /// Hands the records that may hold `origin`'s writes from `from` to `to` to `visit`, in
    /// log order, starting at the last index point at or before `from`.
    pub(super) fn records_of(
        &self,
        origin: u128,
        from: u64,
        to: u64,
        visit: impl FnMut(&Path, u64, &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let plan = |index: &BTreeMap<u64, SegmentIndex>| {
            index
                .iter()
                .filter_map(|(&n, s)| {
                    let o = s.origins.get(&origin)?;
                    let first = o.points.first()?;
                    if o.last < from || first.0 > to {
                        return None;
                    }
                    let at = o.points.iter().rev().find(|p| p.0 <= from).unwrap_or(first);
                    Some((n, at.1, s.len))
                })
                .collect()
        };
        self.read_plan(plan, visit)
    }

    /// Reads the (segment, from offset, to offset) ranges that `plan` picks from the index in
    /// order; the index is locked only while `plan` runs, not while reading.
    fn read_plan(
        &self,
        plan: impl FnOnce(&BTreeMap<u64, SegmentIndex>) -> Vec<(u64, u64, u64)>,
        mut visit: impl FnMut(&Path, u64, &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let plan = plan(&self.index.read().unwrap_or_else(|e| e.into_inner()));
        for (segment, start, end) in plan {
            let path = segment_path(&self.dir, segment);
            let file = File::open(&path).map_err(|e| io(&path, e))?;
            let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
            reader
                .seek(SeekFrom::Start(start))
                .map_err(|e| io(&path, e))?;
            let mut offset = start;
            while offset < end {
                let payload = read_record(&mut reader, offset, end)
                    .map_err(|e| io(&path, e))?
                    .map_err(|bad| corrupt(&path, offset, bad.detail))?;
                if !visit(&path, offset, &payload)? {
                    return Ok(());
                }
                offset += RECORD_HEADER + payload.len() as u64;
            }
        }
        Ok(())
    }
}

/// What a scan of a segment found: its index, `len` the end of its last whole record.
fn scan(path: &Path, last: bool) -> Result<SegmentIndex, StorageError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let file_len = file.metadata().map_err(|e| io(path, e))?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut magic = [0u8; 8];
    let mut index = SegmentIndex {
        len: MAGIC.len() as u64,
        ..SegmentIndex::default()
    };
    if file_len < MAGIC.len() as u64 {
        return Err(corrupt(path, 0, "shorter than its header".into()));
    }
    reader.read_exact(&mut magic).map_err(|e| io(path, e))?;
    if &magic != MAGIC {
        return Err(corrupt(
            path,
            0,
            "not a Meridian log segment (wrong magic)".into(),
        ));
    }
    let mut offset = MAGIC.len() as u64;
    while offset < file_len {
        match read_record(&mut reader, offset, file_len).map_err(|e| io(path, e))? {
            Ok(payload) => {
                let ranges = super::record_ranges(&payload).map_err(|detail| {
                    corrupt(path, offset, format!("record does not decode: {detail}"))
                })?;
                index.add(offset, &ranges);
                offset += RECORD_HEADER + payload.len() as u64;
                index.len = offset;
            }
            Err(bad) if bad.torn && last => {
                // A header of zeros says nothing of where its record ends: it is the torn
                // tail only if no whole record follows it.
                if let Some(at) = whole_record_after(path, offset + RECORD_HEADER, file_len)? {
                    let detail =
                        format!("{}, with a whole record after it at byte {at}", bad.detail);
                    return Err(corrupt(path, offset, detail));
                }
                break;
            }
            Err(bad) => return Err(corrupt(path, offset, bad.detail)),
        }
    }
    Ok(index)
}

/// The first offset from `from` on where a whole record (a length that fits and a checksum
/// that holds) starts, if any. Only a damaged tail is searched this way.
fn whole_record_after(path: &Path, from: u64, file_len: u64) -> Result<Option<u64>, StorageError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let mut rest = vec![0u8; usize::try_from(file_len.saturating_sub(from)).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut rest, from)
        .map_err(|e| io(path, e))?;
    let header = RECORD_HEADER as usize;
    for at in 0..rest.len().saturating_sub(header) {
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let len = word(at) as usize;
        let fits = len > 0 && len <= rest.len() - at - header;
        if fits && crc32fast::hash(&rest[at + header..at + header + len]) == word(at + 4) {
            return Ok(Some(from + at as u64));
        }
    }
    Ok(None)
}

/// Reads the record at `offset` (the reader is there) of a file whose readable part ends at
/// `end`: its payload, or why it is not a whole record.
fn read_record(
    reader: &mut impl Read,
    offset: u64,
    end: u64,
) -> std::io::Result<Result<Vec<u8>, BadRecord>> {
    let rest = end - offset;
    if rest < RECORD_HEADER {
        return Ok(Err(BadRecord {
            detail: format!("{rest} bytes where a record header should be"),
            torn: true,
        }));
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    reader.read_exact(&mut header)?;
    let (len, crc) = header.split_at(4);
    // Both halves are 4 bytes by construction.
    let len = u64::from(u32::from_le_bytes(len.try_into().expect("4 bytes")));
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if header == [0; 8] {
        return Ok(Err(BadRecord {
            detail: "a record header of zeros".into(),
            torn: true,
        }));
    }
    if len > MAX_RECORD_BYTES {
        return Ok(Err(BadRecord {
            detail: format!("record length {len} is impossible"),
            torn: false,
        }));
    }
    if RECORD_HEADER + len > rest {
        return Ok(Err(BadRecord {
            detail: format!("record of {len} bytes runs past the end ({rest} bytes left)"),
            torn: true,
        }));
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(Err(BadRecord {
            detail: "checksum mismatch".into(),
            torn: RECORD_HEADER + len == rest,
        }));
    }
    Ok(Ok(payload))
}

/// A sealed segment's index: from its `.idx` file, or rebuilt by scanning it.
fn load_sealed(dir: &Path, n: u64) -> Result<SegmentIndex, StorageError> {
    let path = dir.join(format!("{n:020}.idx"));
    if let Ok(bytes) = std::fs::read(&path)
        && let Some((crc, body)) = bytes.split_first_chunk::<4>()
        && crc32fast::hash(body) == u32::from_le_bytes(*crc)
        && let Ok(index) = postcard::from_bytes::<SegmentIndex>(body)
    {
        return Ok(index);
    }
    let index = scan(&segment_path(dir, n), false)?;
    write_index(dir, n, &index)?;
    Ok(index)
}

/// Writes a sealed segment's index file (through a temporary file and a rename, so it is
/// whole or absent; a damaged one is rebuilt anyway).
fn write_index(dir: &Path, n: u64, index: &SegmentIndex) -> Result<(), StorageError> {
    let body = super::encode(index);
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let tmp = dir.join(format!("{n:020}.idx.tmp"));
    let path = dir.join(format!("{n:020}.idx"));
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(&bytes).map_err(|e| io(&tmp, e))?;
    file.sync_data().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
}

/// Creates segment `n` with its magic, durably (the file and its directory entry).
fn create_segment(dir: &Path, n: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    file.write_all_at(MAGIC, 0).map_err(|e| io(&path, e))?;
    file.sync_all().map_err(|e| io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes `dir`'s entries (a file created or renamed in it) durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

fn io(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        dir: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, detail: String) -> StorageError {
    StorageError::LogCorrupt {
        file: path.to_owned(),
        offset,
        detail,
    }
}
