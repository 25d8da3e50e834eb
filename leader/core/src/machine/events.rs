//! The state machine's public vocabulary: what goes in ([`Event`], [`Options`],
//! [`Recovered`]), what comes out ([`Effect`] and what it carries), and what the driver may
//! read back ([`Counters`], [`ConflictRecord`], [`PeerView`]).

use std::collections::BTreeMap;

use conflict::{Dot, Hlc, KeyState, ReplicaId, Seq, Value, VersionVector};

use super::snapshot::Bootstrap;
use super::{ConnId, RequestId};
use crate::consistency::{Durability, ReadLevel};
use crate::msg::{LogEntry, PeerMsg, SlotKey, SnapshotRequest};

/// Tunables of the replication protocol. Every bound is named here.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster name, exchanged in hellos.
    pub cluster: String,
    /// This region's name.
    pub region: String,
    /// This region's replica id (created by the runtime on first start).
    pub replica: ReplicaId,
    /// The other regions of the cluster.
    pub peers: Vec<String>,
    /// table → resolver name; every table a client may write.
    pub tables: BTreeMap<String, String>,
    /// A remote HLC further ahead than this is applied but never drags the local clock along.
    pub max_clock_offset_ms: u64,
    /// A peer that lags on a third region's writes for this long gets them relayed from here.
    pub relay_delay_ms: u64,
    /// Interval between heartbeats to each connected peer.
    pub heartbeat_interval_ms: u64,
    /// Bound on bytes sent to one peer and not yet acknowledged; the log is the buffer.
    pub peer_window_bytes: usize,
    /// Bound on one batch frame's estimated size.
    pub max_batch_bytes: usize,
    /// Bound on siblings per key: a local write that would exceed it is refused.
    pub max_siblings: usize,
    /// Capacity of the in-memory conflict log (oldest entries are dropped first).
    pub conflict_log_capacity: usize,
    /// Bytes of durable writes (by [`LogEntry::wire_size`]) kept in memory per origin to
    /// stream without reading the disk log; the oldest go first. A write larger than this is
    /// never kept: it is streamed from the log.
    pub log_tail_bytes: usize,
    /// Flow control: the most of this region's own writes an in-sync peer may lack. A client
    /// write that would let one lack more waits (is *paced*) until the peer acknowledges
    /// enough, or its timeout passes (then [`WriteError::Overloaded`]). A peer is in sync once
    /// it lacks no more than this; it drops out while disconnected or after making no progress
    /// on our writes for [`Options::relay_delay_ms`], and is back once it has caught up again.
    /// 0 turns pacing off. See "Flow control" in docs/design.md.
    pub pace_lag_writes: u64,
    /// Retention bound of the log: a peer that lacks more than this many bytes of writes
    /// (by [`LogEntry::wire_size`]) no longer holds back log truncation here; the log is
    /// truncated past it and it is told it needs a snapshot. See "Log truncation" in
    /// docs/design.md.
    pub log_retention_bytes: u64,
    /// Bytes of key states asked for, and served at most, in one snapshot chunk (at least
    /// one state goes in each): one frame and one checkpoint at the receiver. See "Snapshot
    /// bootstrap" in docs/design.md.
    pub snapshot_chunk_bytes: usize,
    /// A region whose data directory holds nothing (new, or rebuilt on an empty disk) serves
    /// nothing until its peers show whether it needs a snapshot: see "A fresh data directory
    /// starts gated" in docs/design.md. Every node and the simulator set it; tests of other
    /// behaviour leave it off to write before they connect regions.
    pub learn_when_empty: bool,
    /// How often (ms) this region compares its hash tree with each connected peer's
    /// (anti-entropy; docs/design.md, "Anti-entropy"); 0 turns the periodic rounds off
    /// ([`Event::AntiEntropy`] still starts one).
    pub anti_entropy_interval_ms: u64,
}

/// What a region recovered from its data directory on start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The last sequence number this replica assigned.
    pub own_seq: Seq,
    /// The highest HLC this replica ever issued or observed.
    pub hlc_high: Hlc,
    /// Durably applied writes, per origin.
    pub applied: VersionVector,
    /// Every stored key.
    pub keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// Replica ids known with their regions.
    pub replicas: BTreeMap<ReplicaId, String>,
    /// Each peer's last acknowledged applied vector, per region.
    pub peer_acked: BTreeMap<String, VersionVector>,
    /// Logged writes that were not applied (quarantined) and not released since. Those that
    /// this region's configuration now accepts are applied at start: see
    /// [`Replica::to_release`](crate::Replica::to_release).
    pub quarantined: Vec<Quarantined>,
    /// Where the log starts, per origin: writes this vector covers may have been dropped
    /// ([`PersistBatch::truncate`] as storage last recorded it). Never streamed again.
    pub log_start: VersionVector,
    /// The snapshot transfer's progress as last recorded ([`PersistBatch::bootstrap`]).
    pub bootstrap: Option<Bootstrap>,
    /// The collected floor as last recorded ([`PersistBatch::collected`]).
    pub collected: VersionVector,
}

/// A replicated write that was logged but not applied here, because its table was unknown or
/// its origin resolved the table differently. Storage keeps the record until the write is
/// applied (released) by a start whose configuration accepts it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// The write.
    pub dot: Dot,
    /// Its table.
    pub table: String,
    /// The resolver id (`name@version`) its origin region used for the table, as this region
    /// knew it when the write arrived; `None` when it did not know.
    pub origin_resolver: Option<String>,
}

/// An input to the state machine.
#[derive(Debug, Clone)]
pub enum Event {
    /// A client writes (or deletes, with [`Value::Tombstone`]) a key here.
    ClientWrite {
        /// Routes the reply.
        id: RequestId,
        /// The table.
        table: String,
        /// The key.
        key: Vec<u8>,
        /// New value or tombstone.
        value: Value,
        /// The causal context the client read; `None` for a blind write.
        context: Option<VersionVector>,
        /// How durable the write must be before the client is answered.
        durability: Durability,
        /// How long to wait for `durability` beyond the local fsync, in ms. The write is
        /// never rolled back when this passes; the reply says where it is durable so far.
        timeout_ms: u64,
    },
    /// A client adds `by` (negative: subtracts) to a counter here: the machine reads the
    /// key's resolved value, builds the next one with the table resolver's counter operations
    /// ([`conflict::Resolver::counter`]) under this replica's id, and writes it with the key's
    /// whole context, in one step, so concurrent additions at this region never overwrite one
    /// another (Redis's `INCRBY`). Answered like a write; the receipt's `total` is the new
    /// value.
    ClientAdd {
        /// Routes the reply.
        id: RequestId,
        /// The table (its resolver must be a counter).
        table: String,
        /// The key.
        key: Vec<u8>,
        /// What to add.
        by: i64,
        /// As for [`Event::ClientWrite`].
        durability: Durability,
        /// As for [`Event::ClientWrite`].
        timeout_ms: u64,
    },
    /// A client waits until `regions` other regions have this region's writes up to `seq`
    /// durably, or `timeout_ms` passes (Redis's `WAIT`); answered with
    /// [`Effect::Waited`].
    ClientWait {
        /// Routes the reply.
        id: RequestId,
        /// The last of this region's writes the client made (`Seq::ZERO`: none).
        seq: Seq,
        /// How many other regions must have it.
        regions: usize,
        /// How long to wait at most, in ms.
        timeout_ms: u64,
    },
    /// A client reads a key at `level` (docs/design.md, "Quorum reads"): this region's state
    /// joined with the states of enough other regions, asked over the mesh. Answered with
    /// [`Effect::ReadDone`]; at [`ReadLevel::One`] at once, from this region alone.
    ClientRead {
        /// Routes the reply.
        id: RequestId,
        /// The table.
        table: String,
        /// The key.
        key: Vec<u8>,
        /// How many regions must answer.
        level: ReadLevel,
        /// How long to wait for them at most, in ms; then the read fails, naming who answered
        /// (never a silent local read).
        timeout_ms: u64,
    },
    /// The client of an [`Event::ClientWait`] went away: forget the wait (no answer follows).
    CancelWait {
        /// The request.
        id: RequestId,
    },
    /// The transport established an authenticated connection to `peer`.
    PeerUp {
        /// Region name, as authenticated by its certificate.
        peer: String,
        /// The connection.
        conn: ConnId,
    },
    /// A connection to `peer` ended.
    PeerDown {
        /// Region name.
        peer: String,
        /// The connection that ended.
        conn: ConnId,
    },
    /// A message arrived from `peer` on `conn`.
    Frame {
        /// Region name, as authenticated by its certificate.
        peer: String,
        /// The connection it came on.
        conn: ConnId,
        /// The message.
        msg: PeerMsg,
    },
    /// The driver could not queue a frame for `peer` (queue full or link gone).
    SendFailed {
        /// Region name.
        peer: String,
        /// The connection.
        conn: ConnId,
    },
    /// The outstanding [`Effect::Persist`] with this id is durable.
    Persisted {
        /// The batch id from [`PersistBatch::id`].
        id: u64,
    },
    /// Entries read from the durable log in answer to [`Effect::ReadLog`].
    LogRead {
        /// The peer they are for.
        peer: String,
        /// The connection they are for.
        conn: ConnId,
        /// The origin.
        origin: ReplicaId,
        /// Contiguous entries starting at the requested sequence number (maybe fewer).
        entries: Vec<LogEntry>,
    },
    /// Key states read from the last checkpoint in answer to [`Effect::ReadSnapshot`], or
    /// why the read failed.
    SnapshotRead {
        /// The peer they are for.
        peer: String,
        /// The connection they are for.
        conn: ConnId,
        /// The request the read answers.
        request: SnapshotRequest,
        /// The states, or the storage error.
        result: Result<SnapshotPiece, String>,
    },
    /// A timer fired (or the driver just wants the machine to look at the clock).
    Tick,
    /// An operator asks for anti-entropy now (`meridian repair`): a round starts with every
    /// connected peer that has none under way ([`Replica::anti_entropy_rounds`] lists them).
    ///
    /// [`Replica::anti_entropy_rounds`]: crate::Replica::anti_entropy_rounds
    AntiEntropy,
}

/// An output of the state machine for the driver to perform.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Write this batch in one transaction and fsync it, then report [`Event::Persisted`].
    Persist(PersistBatch),
    /// Send a message to a peer on a connection (drop it if that connection is gone).
    Send {
        /// Region name.
        peer: String,
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: PeerMsg,
    },
    /// Close a connection, telling the peer why.
    Close {
        /// Region name.
        peer: String,
        /// The connection.
        conn: ConnId,
        /// The reason, for the operator on both ends.
        reason: String,
    },
    /// Read `origin`'s log from `from` to `to` (inclusive), up to about `max_bytes`, and report
    /// [`Event::LogRead`].
    ReadLog {
        /// The peer to stream to.
        peer: String,
        /// The connection to stream on.
        conn: ConnId,
        /// The origin.
        origin: ReplicaId,
        /// First sequence number wanted.
        from: Seq,
        /// Last sequence number available.
        to: Seq,
        /// Budget for the read.
        max_bytes: usize,
    },
    /// Read key states from the last checkpoint (one consistent view: redb's read
    /// transaction), in (table, key) order strictly after `request.after`, until about
    /// `max_bytes` of them (at least one), and report [`Event::SnapshotRead`].
    ReadSnapshot {
        /// The peer to serve.
        peer: String,
        /// The connection to serve on.
        conn: ConnId,
        /// What the peer asked for (`after` is where the read starts).
        request: SnapshotRequest,
        /// Budget for the read, by [`conflict::KeyState::estimated_bytes`] plus the key.
        max_bytes: usize,
    },
    /// Answer a client write.
    Reply {
        /// The request.
        id: RequestId,
        /// What happened.
        result: Result<WriteReceipt, WriteError>,
    },
    /// Answer an [`Event::ClientWait`].
    Waited {
        /// The request.
        id: RequestId,
        /// The other regions that have the write durably (by name).
        regions: Vec<String>,
    },
    /// Answer an [`Event::ClientRead`].
    ReadDone {
        /// The request.
        id: RequestId,
        /// The key's state as the read joined it, or why there was none.
        result: Result<ReadAnswer, ReadError>,
    },
    /// Something an operator must hear about (log it, count it, show it).
    Alarm(Alarm),
}

/// What an [`Event::ClientRead`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadAnswer {
    /// The join of the answering regions' states of the key (default when none holds it).
    /// Its context includes this region's collected floor ([`Replica::read_context`]), so
    /// it may be written back here as the context of a write.
    ///
    /// [`Replica::read_context`]: crate::Replica::read_context
    pub state: KeyState,
    /// The regions whose state was joined: this one first, then the others in the order they
    /// answered.
    pub answered: Vec<String>,
}

/// Why an [`Event::ClientRead`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The table is not configured here.
    #[error("table '{0}' is not configured; add it under [tables] in regions.toml")]
    UnknownTable(String),
    /// Not enough regions answered within the read's timeout. Nothing is answered from fewer
    /// regions than asked: a silent local read could miss an acknowledged write.
    #[error(
        "read={level} needs {needed} regions, and only {} answered within {waited_ms} ms ({}); retry, or read at a lower level",
        answered.len(),
        answered.join(", ")
    )]
    TooFewRegions {
        /// The level asked for.
        level: ReadLevel,
        /// How many regions it needs, counting this one.
        needed: usize,
        /// The regions that answered, this one first.
        answered: Vec<String>,
        /// Regions that could not answer, with why (not connected, bootstrapping, ...).
        missing: Vec<(String, String)>,
        /// How long the read waited.
        waited_ms: u64,
    },
    /// Too many quorum reads are waiting for answers already ([`crate::limits::MAX_QUORUM_READS`]).
    #[error("{waiting} quorum reads are already waiting for other regions; retry shortly")]
    Overloaded {
        /// Reads waiting.
        waiting: usize,
    },
    /// This region is being bootstrapped from a snapshot.
    #[error(
        "this region is being bootstrapped from a snapshot ({progress}); it serves reads once that is done: retry later, or read at another region"
    )]
    Bootstrapping {
        /// Where the transfer stands.
        progress: String,
    },
}

/// Everything one persistence step must write atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistBatch {
    /// Identifies the batch in [`Event::Persisted`].
    pub id: u64,
    /// New states of the keys that changed.
    pub keys: Vec<(String, Vec<u8>, KeyState)>,
    /// Log entries to append, per origin, in sequence order.
    pub log: Vec<LogEntry>,
    /// The applied vector once this batch is durable.
    pub applied: VersionVector,
    /// The last sequence number this replica has assigned.
    pub own_seq: Seq,
    /// The highest HLC issued or observed.
    pub hlc_high: Hlc,
    /// Replica → region names learned since the last batch.
    pub replicas: Vec<(ReplicaId, String)>,
    /// What peers are known to have durably applied (acks joined with their lag-matrix
    /// rows), for those whose vector changed since the last batch.
    pub peer_acked: Vec<(String, VersionVector)>,
    /// The key states of this batch, and of every earlier one, must be durable once this
    /// batch is. Storage may otherwise keep key states back and rebuild them after a crash by
    /// replaying the log ([`Replica::replay`](crate::Replica::replay)); this batch logs a write that was *not*
    /// applied to its key (quarantined: unknown table or mismatched resolver), which a replay
    /// would wrongly apply.
    pub checkpoint: bool,
    /// Writes of this batch's log that were not applied: storage records them so a later
    /// start can apply them once the configuration accepts them.
    pub quarantined: Vec<Quarantined>,
    /// Quarantined writes applied since the last batch (at start): their records go.
    pub released: Vec<Dot>,
    /// Log entries this vector covers may be dropped: every region durably applied them (or
    /// lacks more than the retention bound). Carried whole and only ever grows; storage drops
    /// whole segments with it once they are checkpointed, and records it first
    /// ([`Recovered::log_start`]).
    pub truncate: VersionVector,
    /// What a snapshot install adds to the applied vector without log entries
    /// (docs/design.md, "Snapshot bootstrap"): the log of each origin continues after it,
    /// and `truncate` covers it. Empty but for the one batch that installs a snapshot.
    pub installed: VersionVector,
    /// A snapshot transfer's progress, recorded with this batch's key states: `Some` only on
    /// a checkpoint (the states a chunk joined exist nowhere else), and it replaces the
    /// recorded one ([`Recovered::bootstrap`]).
    pub bootstrap: Option<Box<Bootstrap>>,
    /// The collected floor (docs/design.md, "Tombstone collection"), whole; storage records
    /// it at checkpoints ([`Recovered::collected`]). A batch that drops keys is a checkpoint.
    pub collected: VersionVector,
}

/// What a client learns when its write is durable here.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReceipt {
    /// The write's identity.
    pub dot: Dot,
    /// Its HLC.
    pub hlc: Hlc,
    /// The key's causal context right after the write: pass it back to supersede it.
    pub context: VersionVector,
    /// Whether the write met concurrent siblings it did not supersede.
    pub conflict: bool,
    /// The durability the client asked for.
    pub durability: Durability,
    /// Regions where the write is known to be durable when the reply is sent (this one first).
    pub durable_in: Vec<String>,
    /// True when the requested durability was not reached in time. The write is committed
    /// here and keeps replicating; it is not rolled back.
    pub timed_out: bool,
    /// For an addition to a counter ([`Event::ClientAdd`]): the counter's total here right
    /// after it.
    pub total: Option<i64>,
}

/// Why a client write was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The table is not configured.
    #[error(
        "table '{0}' is not configured; add it under [tables] in regions.toml or use one of the configured tables"
    )]
    UnknownTable(String),
    /// The table's resolver cannot read the value (e.g. a custom merge with its own format).
    #[error("the value is not valid for table '{table}': {reason}")]
    InvalidValue {
        /// The table.
        table: String,
        /// What the resolver expects instead.
        reason: String,
    },
    /// The key's rules refused the write (context ahead of this region, value too large...).
    #[error(transparent)]
    Refused(conflict::WriteRefused),
    /// The key's causal context would name more replicas than storage can read back.
    #[error(
        "the key's causal context would name more than {max} replicas; write it under a new key (this happens only after very many rebuilt regions wrote it)"
    )]
    ContextTooLarge {
        /// The limit.
        max: usize,
    },
    /// A region in sync with this one lacks too many of its writes: writes here are paced
    /// until it catches up, and this one waited its timeout (or the queue was full).
    #[error(
        "region '{peer}' lacks {lag_writes} of this region's writes (the limit is {limit}, [limits] pace_lag_writes): writes here are paced until it catches up; retry shortly, or write at another region"
    )]
    Overloaded {
        /// The region that lags.
        peer: String,
        /// How many of this region's writes it lacks.
        lag_writes: u64,
        /// The limit.
        limit: u64,
    },
    /// An addition ([`Event::ClientAdd`]) to a table whose resolver keeps no counters.
    #[error(
        "table '{table}' uses the resolver '{resolver}', which keeps no counters: add to keys of a table whose resolver is a counter (e.g. resolver \"counter\" in regions.toml)"
    )]
    NotACounter {
        /// The table.
        table: String,
        /// Its resolver's name.
        resolver: String,
    },
    /// The key would carry more siblings than the configured limit.
    #[error(
        "key has {count} concurrent siblings and the limit is {max}; read it with ?siblings=true and write back with its context to resolve them"
    )]
    TooManySiblings {
        /// Siblings the key would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// This region already holds [`crate::limits::MAX_UNANSWERED_WRITES`] client writes it
    /// accepted and has not answered (waiting for the disk, or for other regions to have them
    /// durably): one more would grow its memory without bound.
    #[error(
        "this region holds {limit} client writes not yet answered (waiting for its disk or for other regions); retry shortly, lower the durability asked for, or write at another region"
    )]
    Backlogged {
        /// The limit ([`crate::limits::MAX_UNANSWERED_WRITES`]).
        limit: usize,
    },
    /// This region is being bootstrapped from a snapshot and takes no writes until it has
    /// the snapshot and has caught up with what it reflects.
    #[error(
        "this region is being bootstrapped from a snapshot ({progress}); it takes writes once that is done: retry later, or write at another region"
    )]
    Bootstrapping {
        /// Where the transfer stands, for the client.
        progress: String,
    },
}

/// Key states read from the last checkpoint for a peer's snapshot ([`Effect::ReadSnapshot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPiece {
    /// The applied vector the checkpoint's states reflect exactly.
    pub applied: VersionVector,
    /// (table, key, state) in ascending order, strictly after the request's `after`.
    pub states: Vec<(String, Vec<u8>, KeyState)>,
    /// No key follows the last one.
    pub done: bool,
    /// How many keys the checkpoint holds.
    pub total_keys: u64,
}

/// The cursor of a transfer: the last key a piece holds, or where it started when empty.
pub(super) fn piece_end(
    after: &Option<SlotKey>,
    states: &[(String, Vec<u8>, KeyState)],
) -> Option<SlotKey> {
    states
        .last()
        .map(|(t, k, _)| (t.clone(), k.clone()))
        .or_else(|| after.clone())
}

/// Conditions an operator must know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alarm {
    /// A second live replica claims a region that is already connected: two processes run as
    /// one region (split brain). The newcomer was refused. `live == refused` when the two
    /// share a replica id (a copied data directory) and were told apart by two different
    /// writes under one dot.
    SplitBrain {
        /// The region.
        region: String,
        /// Replica id of the live connection.
        live: ReplicaId,
        /// Replica id of the refused newcomer.
        refused: ReplicaId,
    },
    /// A peer's hello was refused (wrong cluster, protocol or region).
    HelloRefused {
        /// The peer, as authenticated.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A remote HLC was further ahead of our physical clock than `max_clock_offset_ms`.
    ClockSkew {
        /// The region whose stamp it was.
        peer: String,
        /// How far ahead, in milliseconds.
        ahead_ms: u64,
    },
    /// A peer's resolver for a table differs from ours.
    ResolverMismatch {
        /// The peer.
        peer: String,
        /// The table.
        table: String,
        /// Ours (`name@version`), if we have the table.
        ours: Option<String>,
        /// Theirs, if they have it.
        theirs: Option<String>,
    },
    /// A peer broke the protocol; the connection was closed.
    ProtocolViolation {
        /// The peer.
        peer: String,
        /// What it did.
        detail: String,
    },
    /// A replicated write for a table this region does not know was logged but not applied.
    UnknownTable {
        /// The table.
        table: String,
        /// The origin's region.
        origin: String,
    },
    /// Reading the durable log to stream to a peer failed (storage error, or entries that
    /// should be there are missing). The read is retried after `retry_ms`, doubling up to
    /// [`LOG_READ_RETRY_MAX_MS`](crate::limits::LOG_READ_RETRY_MAX_MS); the peer's stream of that origin waits meanwhile.
    LogReadFailed {
        /// The peer the read was for.
        peer: String,
        /// The origin whose log was read.
        origin: ReplicaId,
        /// The first sequence number asked for.
        from: Seq,
        /// When the read is tried again, ms from now.
        retry_ms: u64,
    },
    /// A replicated write broke the per-key causality rule: its HLC does not exceed the HLC
    /// of a local sibling that its context supersedes. It is applied all the same (the key
    /// state stays a join-semilattice, so every region still converges, and refusing it in
    /// some regions but not others would diverge them), but last-write-wins may now rank it
    /// wrongly: the origin's clock or code is broken. Rate-limited per origin region.
    CausalityViolation {
        /// The region the write came from (as the batch named it).
        origin: String,
        /// The write.
        dot: Dot,
        /// Its HLC.
        hlc: Hlc,
        /// The superseded sibling whose HLC is not below it.
        sibling: Dot,
        /// That sibling's HLC.
        sibling_hlc: Hlc,
    },
    /// A replicated write would have grown its key's causal context past
    /// [`conflict::limits::MAX_VV_ENTRIES`] replicas, beyond what storage can read back. It
    /// was logged but not applied (quarantined).
    ContextTooLarge {
        /// The region the write came from.
        origin: String,
        /// The table.
        table: String,
        /// The write.
        dot: Dot,
    },
    /// This region's log no longer holds writes that `peer` lacks: it fell further behind
    /// than the retention bound (`log_retention_bytes`) and the log was truncated past it.
    /// It needs a snapshot to catch up (unless another region still holds those writes).
    PeerNeedsSnapshot {
        /// The region behind.
        peer: String,
        /// Bytes of writes it lacked when it was passed.
        behind_bytes: u64,
    },
    /// `peer` told this region that its log no longer holds `origin`'s writes from `from`
    /// on ([`crate::NeedsSnapshot`]): this region cannot catch up from it and needs a
    /// snapshot, unless another region can still serve them.
    NeedsSnapshot {
        /// The region that answered.
        peer: String,
        /// The origin's region.
        origin: String,
        /// The first write of the origin this region lacks.
        from: Seq,
        /// The first write of the origin the peer's log still holds.
        log_start: Seq,
    },
    /// This region started (or restarted) bootstrapping from a snapshot of `peer`: it takes
    /// no writes and serves no reads until it has it (docs/design.md, "Snapshot bootstrap").
    SnapshotStarted {
        /// The region that serves it.
        peer: String,
        /// Why.
        reason: String,
    },
    /// This region installed a snapshot: `keys` key states received in `chunks` chunks; it
    /// now catches up from the snapshot's vector as from any other point.
    SnapshotInstalled {
        /// The region that served the last chunk.
        peer: String,
        /// Key states received.
        keys: u64,
        /// Chunks received.
        chunks: u64,
    },
    /// Anti-entropy found keys whose states differ between this region and `peer` although
    /// both have applied every write either state holds: a divergence replication should
    /// have prevented (a bug, a disk that returned wrong bytes, a copied data directory).
    /// They were joined (docs/design.md, "Anti-entropy").
    Divergence {
        /// The other region.
        peer: String,
        /// Keys found diverged (by this region's comparison, or sent by the peer's).
        found: u64,
        /// Of those, keys whose state here changed by the join.
        repaired: u64,
        /// The first [`AAE_ALARM_KEYS`](crate::limits::AAE_ALARM_KEYS) of them, (table, key).
        keys: Vec<(String, Vec<u8>)>,
    },
}

/// One entry of the conflict log.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictRecord {
    /// Increasing id, for paging.
    pub id: u64,
    /// Wall clock when it was detected here, Unix ms.
    pub detected_ms: u64,
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// The resolver that settled it, `name@version`.
    pub resolver: String,
    /// The writes that met: the new one first, then the concurrent siblings it found.
    pub siblings: Vec<(Dot, Hlc, bool)>,
    /// What readers see now.
    pub outcome: String,
}

/// Monotonic counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client writes accepted.
    pub client_writes: u64,
    /// Remote writes applied.
    pub remote_applied: u64,
    /// Remote writes dropped as duplicates.
    pub duplicates: u64,
    /// Conflicts detected.
    pub conflicts: u64,
    /// Persistence steps issued.
    pub persists: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Writes sent (own and relayed).
    pub writes_sent: u64,
    /// Writes relayed for a third region.
    pub writes_relayed: u64,
    /// Resync requests sent after a gap.
    pub resyncs: u64,
    /// Batches (their rest from the first gap) dropped for a gap while a `Resync` of their
    /// origin to their sender was still unanswered: no further request was sent.
    pub gaps_dropped: u64,
    /// Replicated writes logged but not applied: their table is unknown here or resolved
    /// differently by their origin.
    pub quarantined: u64,
    /// Log reads that failed or returned nothing ([`Alarm::LogReadFailed`]).
    pub log_read_failures: u64,
    /// Replicated writes that broke the per-key causality rule ([`Alarm::CausalityViolation`]).
    pub causality_violations: u64,
    /// Duplicates that were not the write this region holds under the same dot: two processes
    /// write as one replica ([`Alarm::SplitBrain`] with the same id twice).
    pub dots_reused: u64,
    /// Writes not applied because their key's context would outgrow the storage limit
    /// ([`Alarm::ContextTooLarge`]); replicated ones are also counted as quarantined.
    pub context_overflows: u64,
    /// Quarantined writes applied at a start whose configuration accepts them.
    pub released: u64,
    /// Client writes that waited for an in-sync peer to catch up ([`Options::pace_lag_writes`]).
    pub writes_paced: u64,
    /// Client writes refused because a peer stayed too far behind for their whole timeout, or
    /// the queue of paced writes was full ([`WriteError::Overloaded`]), or too many writes
    /// were not answered yet ([`WriteError::Backlogged`]).
    pub writes_overloaded: u64,
    /// Peers this region's log was truncated past ([`Alarm::PeerNeedsSnapshot`]).
    pub peers_truncated_past: u64,
    /// "Needs snapshot" answers sent to peers asking for writes the log no longer holds.
    pub snapshot_answers_sent: u64,
    /// "Needs snapshot" answers received ([`Alarm::NeedsSnapshot`]).
    pub snapshot_answers_received: u64,
    /// Snapshot chunks sent to bootstrapping peers.
    pub snapshot_chunks_sent: u64,
    /// Snapshot chunks received and joined into the key states here.
    pub snapshot_chunks_received: u64,
    /// Key states received in snapshot chunks.
    pub snapshot_keys_received: u64,
    /// Snapshot states of tables not configured here, not installed.
    pub snapshot_keys_skipped: u64,
    /// Snapshots installed ([`Alarm::SnapshotInstalled`]).
    pub snapshots_installed: u64,
    /// Snapshot transfers started, new rounds included ([`Alarm::SnapshotStarted`]).
    pub snapshots_started: u64,
    /// Tombstone siblings collected once causally stable.
    pub tombstones_collected: u64,
    /// Keys dropped whole by tombstone collection (nothing left in them).
    pub keys_collected: u64,
    /// Reads above level `one` answered ([`Event::ClientRead`]).
    pub quorum_reads: u64,
    /// Reads above level `one` that failed: too few regions answered in time.
    pub quorum_reads_failed: u64,
    /// Keys a quorum read found this region lacking part of, joined here (read repair).
    pub read_repairs: u64,
    /// Read repairs sent to regions whose answer lacked part of the joined state.
    pub read_repairs_sent: u64,
    /// Read repairs received from other regions that changed a key here.
    pub read_repairs_applied: u64,
    /// Anti-entropy rounds this region started and finished.
    pub anti_entropy_rounds: u64,
    /// Keys anti-entropy found diverged ([`Alarm::Divergence`]), by this region's
    /// comparisons or its peers'.
    pub anti_entropy_diverged: u64,
    /// Keys whose state here changed by an anti-entropy repair.
    pub anti_entropy_repaired: u64,
    /// Keys whose states differed while a write of them was still in flight: not compared.
    pub anti_entropy_in_flight: u64,
}

/// Why a [`Replica`](crate::Replica) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A table names a resolver that is not registered.
    #[error(
        "table '{table}' uses resolver '{resolver}', which is not registered; register it in code or use one of: {known}"
    )]
    UnknownResolver {
        /// The table.
        table: String,
        /// The resolver it names.
        resolver: String,
        /// The registered names.
        known: String,
    },
}

/// What this region knows about replication towards one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// The peer's region.
    pub region: String,
    /// Its replica id, once a hello was accepted.
    pub replica: Option<ReplicaId>,
    /// Whether a connection with an accepted hello is up.
    pub connected: bool,
    /// What the peer has durably applied, per origin, as far as we know.
    pub acked: VersionVector,
    /// Writes durable here that the peer has not acknowledged (all origins).
    pub lag_writes: u64,
    /// How long the oldest of this region's own writes that the peer lacks has been durable
    /// here, in ms (0 when it has them all). Never mixes two machines' clocks.
    pub lag_ms: u64,
    /// Bytes sent and not yet acknowledged.
    pub unacked_bytes: usize,
    /// Estimated offset of the peer's wall clock from ours, ms (positive: the peer is ahead),
    /// from heartbeat echoes (NTP-style, the sample with the smallest round trip).
    pub clock_offset_ms: Option<i64>,
    /// Bytes of writes (by [`LogEntry::wire_size`]) the peer lacks that this region's log
    /// still holds for it; past [`Options::log_retention_bytes`] the log is truncated past
    /// it. Counts writes logged since this process started.
    pub log_behind_bytes: u64,
    /// This region's log no longer holds writes the peer lacks: it needs a snapshot.
    pub needs_snapshot: bool,
}
