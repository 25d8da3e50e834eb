//! The replication state machine of one region: events in, effects out.
//!
//! # Call order
//! The driver owns one [`Replica`]. For every input it calls [`Replica::handle`] with the
//! current [`Time`] and the [`Event`], then performs every [`Effect`] pushed to the output
//! vector, in order. It then sleeps until [`Replica::poll_timeout`] (or the next input) and calls
//! `handle` with [`Event::Tick`]. Effects of one peer must be performed in the order given:
//! frames of one origin are sent in sequence order.
//!
//! # Durability
//! Writes are applied to the in-memory key states at once, and queued for persistence. At most
//! one [`Effect::Persist`] is outstanding; everything that arrives meanwhile waits for the next
//! one, which is how client writes and replicated batches that arrive together share one
//! transaction and one fsync (group commit). Only after [`Event::Persisted`]:
//! - clients are answered;
//! - the new applied vector is acknowledged to peers;
//! - the writes enter the durable log tail and may be streamed to other regions. Nothing that
//!   is not durable here is ever sent, so a crash can never make this region reuse a sequence
//!   number that a peer has already seen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use conflict::{
    ApplyOutcome, Dot, Hlc, HybridClock, KeyState, Registry, ReplicaId, Resolver, Seq, Sibling,
    Value, VersionVector, Write,
};

use crate::consistency::{Durability, Matrix, MatrixCell, MatrixRow, PeerLag, SkewEstimate};
use crate::msg::{
    Ack, Batch, Heartbeat, Hello, LogEntry, PROTOCOL_VERSION, PeerMsg, Refuse, Resync,
};

/// The time as the driver sees it when it hands an event in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Wall clock, Unix milliseconds: feeds the hybrid logical clock. May jump or be skewed.
    pub wall_ms: u64,
    /// Monotonic milliseconds since an arbitrary start: drives timers and lag durations.
    pub mono_ms: u64,
}

/// Identifies a client request so its reply can be routed back.
pub type RequestId = u64;

/// Identifies one connection to a peer, as the transport numbers them.
pub type ConnId = u64;

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
}

/// Bound on client writes waiting to be paced ([`Options::pace_lag_writes`]): one more is
/// refused at once with [`WriteError::Overloaded`], so a flood of clients cannot grow the queue.
pub const MAX_PACED_WRITES: usize = 16_384;

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
    /// [`Replica::to_release`].
    pub quarantined: Vec<Quarantined>,
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

/// Whether a write made under resolver `theirs` may be applied with resolver `ours` (both
/// `name@version`): the same resolver, or a newer version of it. A version changes what
/// `resolve` answers, never what a key stores (siblings and context), so a write made under an
/// older version becomes exactly the key state its origin will have once it upgrades too;
/// a resolver of another name may prune differently and is never mixed.
pub fn resolver_accepts(ours: &str, theirs: &str) -> bool {
    if ours == theirs {
        return true;
    }
    let split = |id: &str| {
        id.rsplit_once('@')
            .and_then(|(n, v)| Some((n.to_owned(), v.parse::<u32>().ok()?)))
    };
    match (split(ours), split(theirs)) {
        (Some((on, ov)), Some((tn, tv))) => on == tn && tv < ov,
        _ => false,
    }
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
    /// A timer fired (or the driver just wants the machine to look at the clock).
    Tick,
}

/// The fields of [`Event::ClientWrite`], kept together on their way through the machine.
#[derive(Debug)]
struct WriteRequest {
    id: RequestId,
    table: String,
    key: Vec<u8>,
    value: Value,
    context: Option<VersionVector>,
    durability: Durability,
    timeout_ms: u64,
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
    /// Answer a client write.
    Reply {
        /// The request.
        id: RequestId,
        /// What happened.
        result: Result<WriteReceipt, WriteError>,
    },
    /// Something an operator must hear about (log it, count it, show it).
    Alarm(Alarm),
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
    /// Peers' acknowledged vectors that changed since the last batch.
    pub peer_acked: Vec<(String, VersionVector)>,
    /// The key states of this batch, and of every earlier one, must be durable once this
    /// batch is. Storage may otherwise keep key states back and rebuild them after a crash by
    /// replaying the log ([`Replica::replay`]); this batch logs a write that was *not*
    /// applied to its key (quarantined: unknown table or mismatched resolver), which a replay
    /// would wrongly apply.
    pub checkpoint: bool,
    /// Writes of this batch's log that were not applied: storage records them so a later
    /// start can apply them once the configuration accepts them.
    pub quarantined: Vec<Quarantined>,
    /// Quarantined writes applied since the last batch (at start): their records go.
    pub released: Vec<Dot>,
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
    /// [`LOG_READ_RETRY_MAX_MS`]; the peer's stream of that origin waits meanwhile.
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
}

/// First retry delay after a failed log read ([`Alarm::LogReadFailed`]).
pub const LOG_READ_RETRY_MIN_MS: u64 = 100;
/// Largest retry delay after repeated failed log reads.
pub const LOG_READ_RETRY_MAX_MS: u64 = 5_000;
/// Minimum interval between two [`Alarm::CausalityViolation`]s (or two reused-dot
/// [`Alarm::SplitBrain`]s) about one origin region.
const CAUSALITY_ALARM_INTERVAL_MS: u64 = 10_000;

/// Whether an alarm about `region` may be raised now (none in the last
/// [`CAUSALITY_ALARM_INTERVAL_MS`]); if so, records that it is.
fn alarm_due(last: &mut BTreeMap<String, u64>, region: &str, now: Time) -> bool {
    let due = last
        .get(region)
        .is_none_or(|t| now.mono_ms >= t.saturating_add(CAUSALITY_ALARM_INTERVAL_MS));
    if due {
        last.insert(region.to_owned(), now.mono_ms);
    }
    due
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

/// Per-peer replication state.
#[derive(Debug, Default)]
struct Peer {
    /// Connections the transport reported up, with the replica id their hello named.
    conns: BTreeMap<ConnId, Option<ReplicaId>>,
    /// The connection we stream on: the one whose hello we accepted.
    active: Option<ConnId>,
    /// The peer's replica id, from the accepted hello.
    replica: Option<ReplicaId>,
    /// The peer's durably applied vector (from its hello and acks).
    acked: VersionVector,
    /// Per origin, the highest sequence number sent on the active connection.
    sent: BTreeMap<ReplicaId, Seq>,
    /// Sent and not yet acknowledged: (origin, seq, bytes).
    inflight: VecDeque<(ReplicaId, Seq, usize)>,
    /// Sum of bytes in `inflight`.
    inflight_bytes: usize,
    /// Origins with a log read outstanding.
    reading: BTreeSet<ReplicaId>,
    /// Per origin the peer lags behind us on: since when (mono ms) it has made no progress on
    /// it, and what it had acknowledged then. Progress (a higher ack) restarts the clock.
    stalled: BTreeMap<ReplicaId, Stall>,
    /// Receive side: per origin, the `Resync` we sent this peer that it has not answered yet
    /// (our applied position then, and when, mono ms). Further gapped batches of that origin
    /// are the rest of the run already on the wire: they are dropped without asking again.
    resync_asked: BTreeMap<ReplicaId, (Seq, u64)>,
    /// When the last heartbeat went out (mono ms).
    last_heartbeat_ms: u64,
    /// Our applied vector as last acknowledged to this peer.
    last_ack_sent: Option<VersionVector>,
    /// Whether `acked` changed since it was last persisted.
    acked_dirty: bool,
    /// Clock-offset estimate from heartbeat echoes.
    skew: SkewEstimate,
    /// The peer's last heartbeat (its send time, our receive time), to echo in ours.
    echo: Option<(u64, u64)>,
    /// Origins whose last log read failed: (retry at, mono ms; current backoff, ms). Kept
    /// across reconnections so a broken log is not re-read in a tight loop.
    read_retry: BTreeMap<ReplicaId, (u64, u64)>,
    /// The peer's resolvers were last set by its hello, and no heartbeat row has come from it
    /// directly since. Until one does, rows of it relayed by third regions may predate the
    /// hello (a stale row carries the resolvers of before a restart) and must not replace
    /// what the hello said; once its own row is in the matrix, staler rows are refused there.
    resolvers_from_hello: bool,
    /// Whether our client writes are paced to this peer ([`Options::pace_lag_writes`]): it
    /// lacked no more than the limit since it last connected or last made progress.
    in_sync: bool,
}

/// How long a peer has lagged on one origin without progress.
#[derive(Debug, Clone, Copy)]
struct Stall {
    /// Since when (mono ms).
    since_ms: u64,
    /// The peer's acknowledged position on the origin at that time.
    acked: Seq,
}

impl Peer {
    /// The next sequence number of `origin` to send this peer: one past what was sent on the
    /// active connection or what it acknowledged, whichever is further. Saturating: a peer's
    /// ack may claim anything, up to `u64::MAX`.
    fn next_seq(&self, origin: ReplicaId) -> Seq {
        let sent = self.sent.get(&origin).copied().unwrap_or_default();
        Seq(sent.max(self.acked.get(origin)).0.saturating_add(1))
    }
}

/// A write waiting for its persistence step, with the client to answer.
#[derive(Debug)]
struct PendingReply {
    id: RequestId,
    receipt: WriteReceipt,
    timeout_ms: u64,
}

/// A durable write waiting for other regions to have it durably too.
#[derive(Debug)]
struct Wait {
    id: RequestId,
    receipt: WriteReceipt,
    need: usize,
    deadline_ms: u64,
}

/// Work accumulated for the next persistence step.
#[derive(Debug, Default)]
struct Staged {
    keys: BTreeSet<(String, Vec<u8>)>,
    log: Vec<LogEntry>,
    replies: Vec<PendingReply>,
    replicas: Vec<(ReplicaId, String)>,
    /// A staged log entry was quarantined: see [`PersistBatch::checkpoint`].
    checkpoint: bool,
    quarantined: Vec<Quarantined>,
    released: Vec<Dot>,
}

/// A persistence step in flight.
#[derive(Debug)]
struct InFlight {
    id: u64,
    log: Vec<LogEntry>,
    replies: Vec<PendingReply>,
    applied: VersionVector,
    /// The states, as this batch writes them, of the keys that readers are served from
    /// [`Replica::read`]'s durable copy: they become that copy when the batch is durable.
    stable: Vec<((String, Vec<u8>), KeyState)>,
}

/// The durable writes of one origin kept in memory for live streaming: a contiguous run.
#[derive(Debug, Default)]
struct Tail {
    entries: VecDeque<LogEntry>,
    /// Sum of the entries' [`LogEntry::wire_size`].
    bytes: usize,
}

impl Tail {
    /// Appends the next entry of the origin and drops the oldest ones beyond `max_bytes`
    /// (the new one too, when it alone is larger: the run stays contiguous either way).
    fn push(&mut self, entry: LogEntry, max_bytes: usize) {
        self.bytes += entry.wire_size();
        self.entries.push_back(entry);
        while self.bytes > max_bytes {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.wire_size();
        }
    }
}

/// Bound on `own_commits`: 16 bytes each, so 1 MiB. Past it the oldest commit times are
/// dropped and a peer lagging further back shows the oldest time kept (an underestimate).
const OWN_COMMITS_MAX: usize = 65_536;

/// Minimum interval between two clock-skew alarms about one region.
const SKEW_ALARM_INTERVAL_MS: u64 = 10_000;

/// How long a receiver waits for the answer to a `Resync` before it asks again (the first
/// may have been lost with a full send queue). Gapped batches that arrive meanwhile are the
/// rest of a run the sender sent before it saw the request: asking again for each of them
/// would rewind the sender once per batch in flight, each rewind resending the whole run.
const RESYNC_REPEAT_MS: u64 = 1_000;

/// The replication state machine of one region. See the module docs for the call order.
pub struct Replica {
    opts: Options,
    resolvers: BTreeMap<String, Arc<dyn Resolver>>,
    resolver_ids: Vec<(String, String)>,
    clock: HybridClock,
    own_seq: Seq,
    /// Everything applied in memory (maybe not yet durable), per origin.
    received: VersionVector,
    /// Everything durably applied, per origin.
    durable: VersionVector,
    keys: BTreeMap<(String, Vec<u8>), KeyState>,
    /// The newest durable state of every key whose in-memory state holds a write of ours that
    /// is not durable yet: what readers see of it ([`Replica::read`]). An entry is made by the
    /// first such write, advanced by each persisted batch that holds the key, and dropped once
    /// the key's own writes are all durable. Bounded by the keys written since the last commit.
    stable: BTreeMap<(String, Vec<u8>), KeyState>,
    replicas: BTreeMap<ReplicaId, String>,
    peers: BTreeMap<String, Peer>,
    /// Recent durable writes per origin, within [`Options::log_tail_bytes`] each.
    tail: BTreeMap<ReplicaId, Tail>,
    /// When (mono ms) recent own writes became durable, for lag in milliseconds; at most
    /// [`OWN_COMMITS_MAX`].
    own_commits: VecDeque<(Seq, u64)>,
    staged: Staged,
    /// Client writes waiting for an in-sync peer to catch up, in arrival order, each with its
    /// deadline (mono ms); at most [`MAX_PACED_WRITES`].
    paced: VecDeque<(WriteRequest, u64)>,
    in_flight: Option<InFlight>,
    next_persist_id: u64,
    conflicts: VecDeque<ConflictRecord>,
    next_conflict_id: u64,
    counters: Counters,
    /// Writes waiting for durability in other regions.
    waits: Vec<Wait>,
    /// The freshest lag-matrix row of every other region.
    matrix: Matrix,
    /// table → resolver id per region, from hellos and matrix rows.
    region_resolvers: BTreeMap<String, BTreeMap<String, String>>,
    /// (region, table) pairs already alarmed as mismatched.
    mismatch_alarmed: BTreeSet<(String, String)>,
    /// Per region whose stamps ran too far ahead: (largest lead ms, when last alarmed, mono).
    skew_alarms: BTreeMap<String, (u64, u64)>,
    /// Per origin region: when (mono ms) the last causality alarm about it was raised.
    causality_alarmed: BTreeMap<String, u64>,
    /// Per origin region: when (mono ms) the last reused-dot split-brain alarm was raised.
    reuse_alarmed: BTreeMap<String, u64>,
    /// Quarantined writes this configuration accepts, to apply at start ([`Replica::replay`]).
    release: BTreeSet<Dot>,
    /// Writes held back (quarantined and not released), per table.
    held_back: BTreeMap<String, u64>,
    /// Test-only negative control (see [`Replica::unsafe_stamp_with_wall_clock`]).
    wall_clock_stamps: bool,
    /// Monotonic time of the last event handled (every `handle` ends with `on_tick`).
    last_event_ms: u64,
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
    /// the queue of paced writes was full ([`WriteError::Overloaded`]).
    pub writes_overloaded: u64,
}

/// Why a [`Replica`] could not be built.
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

impl Replica {
    /// Builds the state machine from options, the resolver registry and what was recovered.
    pub fn new(opts: Options, registry: &Registry, rec: Recovered) -> Result<Self, BuildError> {
        let mut resolvers = BTreeMap::new();
        let mut resolver_ids = Vec::new();
        for (table, name) in &opts.tables {
            let r = registry
                .get(name)
                .ok_or_else(|| BuildError::UnknownResolver {
                    table: table.clone(),
                    resolver: name.clone(),
                    known: registry.names().collect::<Vec<_>>().join(", "),
                })?;
            resolver_ids.push((table.clone(), format!("{}@{}", r.name(), r.version())));
            resolvers.insert(table.clone(), r);
        }
        let peers = opts
            .peers
            .iter()
            .map(|p| {
                let acked = rec.peer_acked.get(p).cloned().unwrap_or_default();
                (
                    p.clone(),
                    Peer {
                        acked,
                        ..Peer::default()
                    },
                )
            })
            .collect();
        let mut release = BTreeSet::new();
        let mut held_back: BTreeMap<String, u64> = BTreeMap::new();
        for q in rec.quarantined {
            let ours = resolver_ids.iter().find(|(t, _)| *t == q.table);
            let accepted = ours.is_some_and(|(_, ours)| {
                q.origin_resolver
                    .as_deref()
                    .is_none_or(|theirs| resolver_accepts(ours, theirs))
            });
            if accepted {
                release.insert(q.dot);
            } else {
                *held_back.entry(q.table).or_default() += 1;
            }
        }
        let mut replicas = rec.replicas;
        replicas.insert(opts.replica, opts.region.clone());
        let mut durable = rec.applied;
        if rec.own_seq > Seq::ZERO {
            // Our own log is durable up to own_seq: both are written by the same batches.
            durable.add_dot(&Dot {
                replica: opts.replica,
                seq: rec.own_seq,
            });
        }
        Ok(Self {
            clock: HybridClock::resume(rec.hlc_high, opts.max_clock_offset_ms),
            own_seq: rec.own_seq,
            received: durable.clone(),
            durable,
            keys: rec.keys,
            stable: BTreeMap::new(),
            replicas,
            peers,
            tail: BTreeMap::new(),
            own_commits: VecDeque::new(),
            staged: Staged::default(),
            paced: VecDeque::new(),
            in_flight: None,
            next_persist_id: 1,
            conflicts: VecDeque::new(),
            next_conflict_id: 1,
            counters: Counters::default(),
            waits: Vec::new(),
            matrix: Matrix::default(),
            region_resolvers: BTreeMap::new(),
            mismatch_alarmed: BTreeSet::new(),
            skew_alarms: BTreeMap::new(),
            causality_alarmed: BTreeMap::new(),
            reuse_alarmed: BTreeMap::new(),
            release,
            held_back,
            wall_clock_stamps: false,
            last_event_ms: 0,
            resolvers,
            resolver_ids,
            opts,
        })
    }

    /// Applies durable log entries that the recovered key states do not reflect yet (storage
    /// writes key states back lazily and rebuilds them after a crash from the log after its
    /// last checkpoint). The driver calls it **before the first [`Replica::handle`]**, once
    /// per chunk, so the replay never has to be held in memory at once; each origin's entries
    /// come in sequence order. Key states are a join-semilattice, so any interleaving of
    /// origins, and any chunking, rebuilds exactly the states the region had.
    ///
    /// The replayed states exist only in memory: the first batch carries them and is a
    /// checkpoint, so storage never needs this part of the log to rebuild them again.
    ///
    /// The driver then hands over, the same way, the quarantined writes that this
    /// configuration accepts ([`Replica::to_release`]): they are applied, and the first batch
    /// (a checkpoint) releases their records.
    pub fn replay(&mut self, entries: impl IntoIterator<Item = LogEntry>) {
        for e in entries {
            if self.release.remove(&e.write.dot) {
                self.staged.released.push(e.write.dot);
                self.counters.released += 1;
            }
            // A write of a table no longer configured was quarantined when it arrived, and a
            // batch holding a quarantined write is a checkpoint, so it is never replayed; this
            // only skips writes whose table was removed from the configuration since.
            let Some(r) = self.resolvers.get(&e.table) else {
                continue;
            };
            let slot = (e.table, e.key);
            self.keys
                .entry(slot.clone())
                .or_default()
                .apply(&e.write, r.as_ref());
            self.staged.keys.insert(slot);
            self.staged.checkpoint = true;
        }
    }

    /// The quarantined writes ([`Recovered::quarantined`]) that this configuration accepts,
    /// each origin's in sequence order: their table is configured here, and with the resolver
    /// their origin used, or a newer version of it ([`resolver_accepts`]), or their origin's
    /// resolver was not known. The driver reads them from the log and hands them to
    /// [`Replica::replay`] before the first event. This is how adding a table, or upgrading a
    /// resolver, region by region converges: what a region held back while its configuration
    /// lagged is applied when it starts with the new one.
    pub fn to_release(&self) -> Vec<Dot> {
        self.release.iter().copied().collect()
    }

    /// Writes held back here (logged, not applied) per table: quarantined since this start,
    /// or earlier and still not accepted by this configuration.
    pub fn held_back(&self) -> &BTreeMap<String, u64> {
        &self.held_back
    }

    /// Handles one event, pushing the effects to perform onto `out`.
    pub fn handle(&mut self, now: Time, event: Event, out: &mut Vec<Effect>) {
        match event {
            Event::ClientWrite {
                id,
                table,
                key,
                value,
                context,
                durability,
                timeout_ms,
            } => {
                let req = WriteRequest {
                    id,
                    table,
                    key,
                    value,
                    context,
                    durability,
                    timeout_ms,
                };
                self.client_write_paced(now, req, out)
            }
            Event::PeerUp { peer, conn } => self.peer_up(peer, conn, out),
            Event::PeerDown { peer, conn } => self.peer_down(&peer, conn),
            Event::Frame { peer, conn, msg } => self.frame(now, peer, conn, msg, out),
            Event::SendFailed { peer, conn } => self.send_failed(now, &peer, conn, out),
            Event::Persisted { id } => self.persisted(now, id, out),
            Event::LogRead {
                peer,
                conn,
                origin,
                entries,
            } => self.log_read(now, &peer, conn, origin, entries, out),
            Event::Tick => {}
        }
        self.admit_paced(now, out);
        self.flush(out);
        self.on_tick(now, out);
        self.last_event_ms = now.mono_ms;
    }

    /// **Test-only; breaks convergence.** From now on, stamps local writes with the raw wall
    /// clock, as plain wall-clock last-write-wins would, skipping the HLC and the per-key
    /// causality rule. It exists so the deterministic simulator can prove its oracles catch
    /// that mistake (a negative control); nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_stamp_with_wall_clock(&mut self) {
        self.wall_clock_stamps = true;
    }

    /// The next time (mono ms) at which [`Event::Tick`] must be delivered, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for peer in self.peers.values() {
            if peer.active.is_none() {
                continue;
            }
            consider(peer.last_heartbeat_ms + self.opts.heartbeat_interval_ms);
            for stall in peer.stalled.values() {
                // A relay deadline that had passed by the last event was acted on then (its
                // `on_tick` pumps every due relay; acks drive it from there). Naming it again
                // would wake the driver at once, forever, while the peer lags: a busy loop.
                let due = stall.since_ms + self.opts.relay_delay_ms;
                if due > self.last_event_ms {
                    consider(due);
                }
            }
        }
        for peer in self.peers.values().filter(|p| p.active.is_some()) {
            for (due, _) in peer.read_retry.values() {
                // As for relays: a deadline passed by the last event was acted on then.
                if *due > self.last_event_ms {
                    consider(*due);
                }
            }
        }
        for w in &self.waits {
            consider(w.deadline_ms);
        }
        if !self.paced.is_empty() {
            for (_, deadline) in &self.paced {
                consider(*deadline);
            }
            // An in-sync peer that stops making progress stops pacing after the relay delay.
            let own = self.opts.replica;
            for peer in self.peers.values().filter(|p| p.in_sync) {
                if let Some(stall) = peer.stalled.get(&own) {
                    let due = stall.since_ms + self.opts.relay_delay_ms;
                    if due > self.last_event_ms {
                        consider(due);
                    }
                }
            }
        }
        next
    }

    // ---- client writes -------------------------------------------------------------------

    /// Takes a client write now, or queues it behind the writes already paced while an
    /// in-sync peer lacks too many of ours (see "Flow control" in docs/design.md).
    fn client_write_paced(&mut self, now: Time, req: WriteRequest, out: &mut Vec<Effect>) {
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
    fn admit_paced(&mut self, now: Time, out: &mut Vec<Effect>) {
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
            value,
            context,
            durability,
            timeout_ms,
        } = req;
        let Some(resolver) = self.resolvers.get(&table).cloned() else {
            let result = Err(WriteError::UnknownTable(table));
            out.push(Effect::Reply { id, result });
            return;
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
        let mut write = match state.prepare_write(dot, tick, context.as_ref(), value) {
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
        };
        self.counters.client_writes += 1;
        self.staged.replies.push(PendingReply {
            id,
            receipt,
            timeout_ms,
        });
        self.staged.log.push(LogEntry { table, key, write });
    }

    /// Applies a write to a key's in-memory state and stages the key for persistence.
    /// Returns whether the write met concurrent siblings (a conflict, now logged).
    fn apply(&mut self, now: Time, table: &str, key: &[u8], w: &Write, r: &dyn Resolver) -> bool {
        let slot = (table.to_owned(), key.to_vec());
        let state = self.keys.entry(slot.clone()).or_default();
        let outcome = state.apply(w, r);
        let conflict = match &outcome {
            ApplyOutcome::Ignored => return false,
            ApplyOutcome::Applied { concurrent, .. } => {
                (!concurrent.is_empty()).then(|| concurrent.clone())
            }
        };
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
        if self.conflicts.len() == self.opts.conflict_log_capacity {
            self.conflicts.pop_front();
        }
        self.conflicts.push_back(ConflictRecord {
            id: self.next_conflict_id,
            detected_ms: now.wall_ms,
            table: table.to_owned(),
            key: key.to_vec(),
            resolver: format!("{}@{}", r.name(), r.version()),
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

    // ---- persistence ---------------------------------------------------------------------

    /// Issues the next persistence step if none is outstanding and anything is staged.
    fn flush(&mut self, out: &mut Vec<Effect>) {
        if self.in_flight.is_some() {
            return;
        }
        let dirty_peers: Vec<(String, VersionVector)> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.acked_dirty)
            .map(|(name, p)| {
                p.acked_dirty = false;
                (name.clone(), p.acked.clone())
            })
            .collect();
        let staged = std::mem::take(&mut self.staged);
        if staged.keys.is_empty()
            && staged.log.is_empty()
            && staged.released.is_empty()
            && dirty_peers.is_empty()
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
            released: staged.released,
        };
        self.in_flight = Some(InFlight {
            id,
            log: staged.log,
            replies: staged.replies,
            applied: self.received.clone(),
            stable,
        });
        out.push(Effect::Persist(batch));
    }

    fn persisted(&mut self, now: Time, id: u64, out: &mut Vec<Effect>) {
        let Some(done) = self.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        self.durable.join(&done.applied);
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
                receipt: reply.receipt,
                need,
                deadline_ms,
            });
        }
        self.check_waits(now, out);
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
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.send_ack(&name, out);
            self.update_lag(now, &name);
            self.pump(&name, now, out);
        }
    }

    fn send_ack(&mut self, name: &str, out: &mut Vec<Effect>) {
        let durable = self.durable.clone();
        let peer = self
            .peers
            .get_mut(name)
            .expect("peer names come from self.peers");
        let Some(conn) = peer.active else { return };
        if peer.last_ack_sent.as_ref() == Some(&durable) {
            return;
        }
        peer.last_ack_sent = Some(durable.clone());
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Ack(Ack { applied: durable }),
        });
    }

    // ---- connections and hellos ----------------------------------------------------------

    fn peer_up(&mut self, name: String, conn: ConnId, out: &mut Vec<Effect>) {
        let hello = self.hello();
        let Some(peer) = self.peers.get_mut(&name) else {
            out.push(Effect::Close {
                peer: name.clone(),
                conn,
                reason: format!("region '{name}' is not a peer in this region's configuration"),
            });
            return;
        };
        peer.conns.insert(conn, None);
        out.push(Effect::Send {
            peer: name,
            conn,
            msg: PeerMsg::Hello(hello),
        });
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: self.opts.cluster.clone(),
            region: self.opts.region.clone(),
            replica: self.opts.replica,
            applied: self.durable.clone(),
            resolvers: self.resolver_ids.clone(),
            replicas: self.replicas.iter().map(|(r, n)| (*r, n.clone())).collect(),
        }
    }

    fn peer_down(&mut self, name: &str, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        peer.conns.remove(&conn);
        if peer.active == Some(conn) {
            Self::reset_stream(peer);
            peer.active = None;
        }
    }

    /// Forgets what was sent on the active connection: the next one starts from the acks.
    fn reset_stream(peer: &mut Peer) {
        peer.sent.clear();
        peer.inflight.clear();
        peer.inflight_bytes = 0;
        peer.reading.clear();
        peer.last_ack_sent = None;
        peer.resync_asked.clear();
    }

    fn send_failed(&mut self, now: Time, name: &str, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.active != Some(conn) {
            return;
        }
        // Something was lost on the way out: rewind to what the peer acknowledged and resend
        // from the log (the receiver drops anything it already has). Besides data, the lost
        // frames may include our last ack or a resync request; without them the peer keeps a
        // full window of writes we have (or dropped) and the stream stalls, so both are sent
        // again now.
        let asked: Vec<ReplicaId> = peer.resync_asked.keys().copied().collect();
        Self::reset_stream(peer);
        for origin in asked {
            self.ask_resync(now, name, conn, origin, out);
        }
        self.send_ack(name, out);
    }

    fn refuse(
        &mut self,
        name: &str,
        conn: ConnId,
        alarm: Alarm,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Alarm(alarm));
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Refuse(Refuse {
                reason: reason.clone(),
            }),
        });
        out.push(Effect::Close {
            peer: name.to_owned(),
            conn,
            reason,
        });
        if let Some(peer) = self.peers.get_mut(name) {
            peer.conns.remove(&conn);
        }
    }

    fn on_hello(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        hello: Hello,
        out: &mut Vec<Effect>,
    ) {
        if let Some(reason) = self.hello_problem(name, &hello) {
            let alarm = Alarm::HelloRefused {
                peer: name.to_owned(),
                reason: reason.clone(),
            };
            self.refuse(name, conn, alarm, reason, out);
            return;
        }
        let peer = self
            .peers
            .get_mut(name)
            .expect("hello_problem checked the peer exists");
        let live = peer
            .active
            .filter(|a| *a != conn)
            .and_then(|a| peer.conns.get(&a).copied().flatten());
        if let Some(live) = live.filter(|l| *l != hello.replica) {
            let alarm = Alarm::SplitBrain {
                region: name.to_owned(),
                live,
                refused: hello.replica,
            };
            let reason = format!(
                "region '{name}' is already connected as replica {live}; a second live replica {} claims it. Two processes are running as one region: stop one of them",
                hello.replica
            );
            self.refuse(name, conn, alarm, reason, out);
            return;
        }
        peer.conns.insert(conn, Some(hello.replica));
        peer.active = Some(conn);
        if peer.replica != Some(hello.replica) {
            // A new replica (or the first we meet): its own claim is the truth; a rebuilt region
            // must not inherit what its predecessor had acknowledged.
            peer.acked = hello.applied.clone();
        } else {
            peer.acked.join(&hello.applied);
        }
        peer.replica = Some(hello.replica);
        peer.acked_dirty = true;
        Self::reset_stream(peer);
        peer.last_heartbeat_ms = now.mono_ms;
        let mut learned = Vec::new();
        for (replica, region) in hello
            .replicas
            .iter()
            .chain([(hello.replica, hello.region.clone())].iter())
        {
            if !self.replicas.contains_key(replica) {
                self.replicas.insert(*replica, region.clone());
                learned.push((*replica, region.clone()));
            }
        }
        self.staged.replicas.extend(learned);
        let resolvers = hello.resolvers.iter().cloned().collect();
        self.region_resolvers.insert(name.to_owned(), resolvers);
        if let Some(peer) = self.peers.get_mut(name) {
            peer.resolvers_from_hello = true;
        }
        self.check_mismatches(out);
        self.send_ack(name, out);
        self.update_lag(now, name);
        self.pump(name, now, out);
    }

    fn hello_problem(&self, name: &str, hello: &Hello) -> Option<String> {
        if !self.peers.contains_key(name) {
            return Some(format!(
                "region '{name}' is not a peer in this region's configuration"
            ));
        }
        if hello.protocol != PROTOCOL_VERSION {
            return Some(format!(
                "peer speaks replication protocol {} and this region speaks {PROTOCOL_VERSION}; upgrade the older binary",
                hello.protocol
            ));
        }
        if hello.cluster != self.opts.cluster {
            return Some(format!(
                "peer belongs to cluster '{}' and this region to '{}'; check `cluster` in regions.toml",
                hello.cluster, self.opts.cluster
            ));
        }
        if hello.region != name {
            return Some(format!(
                "peer claims region '{}' but its certificate names '{name}'; check the peer's --region and certificates",
                hello.region
            ));
        }
        if hello.replica == self.opts.replica {
            return Some(format!(
                "peer uses this region's own replica id {}; its data directory is a copy of this one. Give it its own empty data directory",
                hello.replica
            ));
        }
        None
    }

    // ---- frames --------------------------------------------------------------------------

    fn frame(
        &mut self,
        now: Time,
        name: String,
        conn: ConnId,
        msg: PeerMsg,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get(&name) else {
            let reason = format!("region '{name}' is not a peer in this region's configuration");
            out.push(Effect::Close {
                peer: name,
                conn,
                reason,
            });
            return;
        };
        let accepted = peer.active == Some(conn);
        match msg {
            PeerMsg::Hello(h) => self.on_hello(now, &name, conn, h, out),
            PeerMsg::Refuse(r) => {
                let alarm = Alarm::HelloRefused {
                    peer: name.clone(),
                    reason: r.reason.clone(),
                };
                out.push(Effect::Alarm(alarm));
                self.peer_down(&name, conn);
            }
            _ if !accepted => {
                // Frames before the hello, or on a connection we refused or replaced: ignore.
                // (A refused connection is being closed already.)
            }
            PeerMsg::Batch(b) => self.on_batch(now, &name, conn, b, out),
            PeerMsg::Ack(a) => self.on_ack(now, &name, a, out),
            PeerMsg::Heartbeat(h) => self.on_heartbeat(now, &name, h, out),
            PeerMsg::Resync(r) => self.on_resync(now, &name, r, out),
        }
    }

    fn violation(&mut self, name: &str, conn: ConnId, detail: String, out: &mut Vec<Effect>) {
        out.push(Effect::Alarm(Alarm::ProtocolViolation {
            peer: name.to_owned(),
            detail: detail.clone(),
        }));
        out.push(Effect::Close {
            peer: name.to_owned(),
            conn,
            reason: detail,
        });
        self.peer_down(name, conn);
    }

    fn on_batch(&mut self, now: Time, name: &str, conn: ConnId, b: Batch, out: &mut Vec<Effect>) {
        if b.origin == self.opts.replica {
            // Our own writes coming back (a relay that raced our direct stream): we have them.
            self.counters.duplicates += b.entries.len() as u64;
            return;
        }
        if let Some(bad) = b.entries.iter().find(|e| e.write.dot.replica != b.origin) {
            let detail = format!(
                "batch for origin {} carries a write of {}",
                b.origin, bad.write.dot.replica
            );
            self.violation(name, conn, detail, out);
            return;
        }
        if let Some(detail) = b.entries.iter().find_map(|e| self.malformed(&e.write)) {
            self.violation(name, conn, detail, out);
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.replicas.entry(b.origin) {
            slot.insert(b.origin_region.clone());
            self.staged
                .replicas
                .push((b.origin, b.origin_region.clone()));
        }
        let mut applied_any = false;
        if let Some(first) = b.entries.first().map(LogEntry::seq) {
            self.resync_answered(name, b.origin, first);
        }
        for entry in b.entries {
            let expected = self.received.get(b.origin).next();
            let seq = entry.seq();
            if seq < expected {
                self.counters.duplicates += 1;
                self.check_duplicate(now, &b.origin_region, &entry, out);
                continue;
            }
            if seq > expected {
                self.ask_resync(now, name, conn, b.origin, out);
                break;
            }
            self.apply_remote(now, &b.origin_region, entry, out);
            applied_any = true;
        }
        if !applied_any {
            // Nothing new: tell the sender where we stand so it can release its window.
            if let Some(peer) = self.peers.get_mut(name) {
                peer.last_ack_sent = None;
            }
            self.send_ack(name, out);
        }
    }

    /// Asks the sender of a batch that skipped sequence numbers of `origin` to restart the
    /// origin's run after what we have, unless an earlier request is still unanswered: the
    /// gapped batches that follow it were on the wire before the sender saw it.
    fn ask_resync(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        origin: ReplicaId,
        out: &mut Vec<Effect>,
    ) {
        let applied = self.received.get(origin);
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        let pending = peer
            .resync_asked
            .get(&origin)
            .is_some_and(|(_, at)| now.mono_ms < at.saturating_add(RESYNC_REPEAT_MS));
        if pending {
            self.counters.gaps_dropped += 1;
            return;
        }
        peer.resync_asked.insert(origin, (applied, now.mono_ms));
        self.counters.resyncs += 1;
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Resync(Resync { origin, applied }),
        });
    }

    /// Forgets an unanswered `Resync` of `origin` once `name` sends a batch of it that starts
    /// no later than the position we asked from: the sender has rewound.
    fn resync_answered(&mut self, name: &str, origin: ReplicaId, first: Seq) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        if let Some((asked, _)) = peer.resync_asked.get(&origin)
            && first <= asked.next()
        {
            peer.resync_asked.remove(&origin);
        }
    }

    /// Why a replicated write is malformed, if it is: [`Write::validate`], or a context that
    /// covers writes of this region it never made (applying it would poison the key: every
    /// later local write to it would find its dot already covered and be refused).
    fn malformed(&self, w: &Write) -> Option<String> {
        if let Err(e) = w.validate() {
            return Some(e.to_string());
        }
        let claimed = w.context.get(self.opts.replica);
        (claimed > self.own_seq).then(|| {
            format!(
                "write {} supersedes write {}:{claimed} of this region, which has made only {} writes",
                w.dot, self.opts.replica, self.own_seq
            )
        })
    }

    fn apply_remote(&mut self, now: Time, origin_region: &str, e: LogEntry, out: &mut Vec<Effect>) {
        // The stamp feeds the clock (capped at the offset bound) but never raises the skew
        // alarm: the per-key causality rule stamps a write above the siblings it met, so a
        // write from a region with a correct clock that overwrote a write from a region far
        // ahead carries that region's lead, and alarming would blame the wrong region.
        // Heartbeats carry each region's own clock and raise the alarm (`on_heartbeat`).
        self.clock.observe(e.write.hlc, now.wall_ms);
        match self.resolvers.get(&e.table).cloned() {
            Some(_) if self.mismatched(origin_region, &e.table) => {
                // Applying it with a different resolver would silently diverge the table. It
                // stays in the log (nothing is lost, and it is relayed to regions that agree)
                // and is counted, while the alarm tells the operator which resolvers differ.
                self.quarantine(origin_region, &e);
            }
            Some(_) if self.context_overflows(&e.table, &e.key, &e.write) => {
                // Storage could not read the key back (see `context_overflows`): keep the
                // write in the log, apply nothing, and say so.
                self.counters.quarantined += 1;
                self.counters.context_overflows += 1;
                self.staged.checkpoint = true;
                out.push(Effect::Alarm(Alarm::ContextTooLarge {
                    origin: origin_region.to_owned(),
                    table: e.table.clone(),
                    dot: e.write.dot,
                }));
            }
            Some(r) => {
                self.check_causality(now, origin_region, &e, out);
                self.apply(now, &e.table, &e.key, &e.write, r.as_ref());
            }
            None => {
                self.quarantine(origin_region, &e);
                out.push(Effect::Alarm(Alarm::UnknownTable {
                    table: e.table.clone(),
                    origin: origin_region.to_owned(),
                }));
            }
        }
        self.received.add_dot(&e.write.dot);
        self.counters.remote_applied += 1;
        self.staged.log.push(e);
    }

    /// Whether applying `w` would grow the key's causal context past
    /// [`conflict::MAX_VV_ENTRIES`] replicas: storage refuses to decode a longer vector (a
    /// hostile or broken peer could otherwise make the data directory unreadable at the next
    /// start, two writes with long contexts at a time).
    fn context_overflows(&self, table: &str, key: &[u8], w: &Write) -> bool {
        let slot = (table.to_owned(), key.to_vec());
        let current = self.keys.get(&slot).map(|s| &s.context);
        let upper = current.map_or(0, VersionVector::len) + w.context.len() + 1;
        if upper <= conflict::MAX_VV_ENTRIES {
            return false; // the cheap bound settles nearly every write
        }
        let mut joined = current.cloned().unwrap_or_default();
        joined.join(&w.context);
        joined.add_dot(&w.dot);
        joined.len() > conflict::MAX_VV_ENTRIES
    }

    /// Checks the per-key causality rule on a replicated write: its HLC must exceed that of
    /// every local sibling its context supersedes (the origin stamps it so). A violation is
    /// counted and alarmed (rate-limited per origin), not refused: see
    /// [`Alarm::CausalityViolation`].
    fn check_causality(&mut self, now: Time, origin: &str, e: &LogEntry, out: &mut Vec<Effect>) {
        let slot = (e.table.clone(), e.key.clone());
        let Some(state) = self.keys.get(&slot) else {
            return;
        };
        let w = &e.write;
        let Some(bad) = state
            .siblings
            .iter()
            .find(|s| w.context.covers(&s.dot) && s.hlc >= w.hlc)
        else {
            return;
        };
        let (sibling, sibling_hlc) = (bad.dot, bad.hlc);
        self.counters.causality_violations += 1;
        if alarm_due(&mut self.causality_alarmed, origin, now) {
            out.push(Effect::Alarm(Alarm::CausalityViolation {
                origin: origin.to_owned(),
                dot: w.dot,
                hlc: w.hlc,
                sibling,
                sibling_hlc,
            }));
        }
    }

    /// A duplicate of a write we hold must be that write. Two different writes under one dot
    /// mean two processes use one replica id (a copied data directory running beside the
    /// original): the first one to arrive was applied, the other is dropped like any
    /// duplicate, and regions that got them in the other order diverge. That cannot be
    /// undone here, but it must not go unseen: a split-brain alarm names the replica, at most
    /// every [`CAUSALITY_ALARM_INTERVAL_MS`] per origin region. Checked against the in-memory
    /// tail (recent writes, where two processes' writes meet).
    fn check_duplicate(&mut self, now: Time, origin: &str, e: &LogEntry, out: &mut Vec<Effect>) {
        let replica = e.write.dot.replica;
        let Some(tail) = self.tail.get(&replica).map(|t| &t.entries) else {
            return;
        };
        let Some(first) = tail.front().map(LogEntry::seq) else {
            return;
        };
        let Some(ours) = e
            .seq()
            .0
            .checked_sub(first.0)
            .and_then(|i| tail.get(usize::try_from(i).ok()?))
        else {
            return;
        };
        if ours.seq() != e.seq() || ours == e {
            return;
        }
        self.counters.dots_reused += 1;
        if alarm_due(&mut self.reuse_alarmed, origin, now) {
            out.push(Effect::Alarm(Alarm::SplitBrain {
                region: origin.to_owned(),
                live: replica,
                refused: replica,
            }));
        }
    }

    /// Feeds a remote stamp to the clock; a stamp too far ahead raises a (rate-limited) alarm.
    fn observe(&mut self, now: Time, region: &str, hlc: Hlc, out: &mut Vec<Effect>) {
        let observed = self.clock.observe(hlc, now.wall_ms);
        let Some(ahead_ms) = observed.skew_ahead_ms else {
            return;
        };
        let entry = self.skew_alarms.entry(region.to_owned()).or_insert((0, 0));
        let first = entry.0 == 0;
        entry.0 = entry.0.max(ahead_ms);
        if first || now.mono_ms >= entry.1 + SKEW_ALARM_INTERVAL_MS {
            entry.1 = now.mono_ms;
            out.push(Effect::Alarm(Alarm::ClockSkew {
                peer: region.to_owned(),
                ahead_ms,
            }));
        }
    }

    /// Logs a write without applying it, and records what its origin resolved the table with,
    /// so that a start whose configuration accepts it applies it ([`Replica::to_release`]).
    fn quarantine(&mut self, origin_region: &str, e: &LogEntry) {
        self.counters.quarantined += 1;
        *self.held_back.entry(e.table.clone()).or_default() += 1;
        self.staged.checkpoint = true;
        let origin_resolver = self
            .region_resolvers
            .get(origin_region)
            .and_then(|theirs| theirs.get(&e.table))
            .cloned();
        self.staged.quarantined.push(Quarantined {
            dot: e.write.dot,
            table: e.table.clone(),
            origin_resolver,
        });
    }

    /// Whether writes of `region` to `table` must not be applied here: as far as we know, it
    /// resolves the table with another resolver, or with a newer version of ours. Writes made
    /// under an older version of our resolver are applied ([`resolver_accepts`]), so a region
    /// that upgrades first takes the others' writes during a rolling upgrade. When we do not
    /// know the origin's resolver for the table (no hello or row yet, or a row older than the
    /// origin's configuration, which cannot name a table the origin writes) the write is
    /// applied, as a release at start would apply it.
    fn mismatched(&self, region: &str, table: &str) -> bool {
        let ours = self
            .resolver_ids
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, r)| r);
        let theirs = self
            .region_resolvers
            .get(region)
            .and_then(|theirs| theirs.get(table));
        match (ours, theirs) {
            (Some(ours), Some(theirs)) => !resolver_accepts(ours, theirs),
            _ => false,
        }
    }

    fn on_ack(&mut self, now: Time, name: &str, a: Ack, out: &mut Vec<Effect>) {
        self.acknowledged(now, name, &a.applied, out);
    }

    /// `name` has durably applied `applied`: from an [`Ack`], or from the peer's own row in
    /// its heartbeat (the same vector, so an ack lost on the way is made good within one
    /// heartbeat interval instead of stalling a full window until the peer's next commit).
    fn acknowledged(
        &mut self,
        now: Time,
        name: &str,
        applied: &VersionVector,
        out: &mut Vec<Effect>,
    ) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        let before = peer.acked.clone();
        peer.acked.join(applied);
        if peer.acked != before {
            peer.acked_dirty = true;
        }
        while let Some(&(origin, seq, bytes)) = peer.inflight.front() {
            if peer.acked.get(origin) < seq {
                break;
            }
            peer.inflight.pop_front();
            peer.inflight_bytes -= bytes;
        }
        self.update_lag(now, name);
        self.pump(name, now, out);
        self.check_waits(now, out);
    }

    fn on_heartbeat(&mut self, now: Time, name: &str, h: Heartbeat, out: &mut Vec<Effect>) {
        self.observe(now, name, h.hlc, out);
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        peer.echo = Some((h.wall_ms, now.wall_ms));
        if let Some((t1, t2)) = h.echo {
            peer.skew.sample(t1, t2, h.wall_ms, now.wall_ms);
        }
        for row in h.rows {
            // Rows of regions outside the configuration would only grow the matrix without
            // bound (a hostile peer can invent a new name per heartbeat).
            let Some(about) = self.peers.get(&row.region) else {
                continue;
            };
            let direct = row.region == name;
            // A row names the replica it describes: one of a predecessor (a region rebuilt
            // since) says nothing about the region as it is now.
            let current = about.replica.is_none_or(|r| r == row.replica);
            let hello_pending = about.resolvers_from_hello;
            if direct && current {
                self.acknowledged(now, name, &row.applied.clone(), out);
            }
            let resolvers: BTreeMap<String, String> = row.resolvers.iter().cloned().collect();
            let region = row.region.clone();
            // Only a row the matrix accepts as fresher may update what we know of the
            // region's resolvers: a stale row relayed by a third region would otherwise
            // overwrite a newer hello, and writes that match our resolvers would be
            // quarantined during a resolver upgrade.
            if self.matrix.offer(row, now.mono_ms) && current && (direct || !hello_pending) {
                self.region_resolvers.insert(region.clone(), resolvers);
            }
            if direct && current {
                let peer = self.peers.get_mut(&region).expect("looked up above");
                peer.resolvers_from_hello = false;
            }
        }
        self.check_mismatches(out);
        self.check_waits(now, out);
    }

    /// This region's own row of the lag matrix, as of `now`.
    fn own_row(&self, now: Time) -> MatrixRow {
        let lags = self
            .peers
            .iter()
            .map(|(name, p)| {
                let known = self.known_applied(name, p);
                PeerLag {
                    peer: name.clone(),
                    lag_writes: self.own_lag_writes(&known),
                    lag_ms: self.own_lag_ms(&known, now),
                    connected: p.active.is_some(),
                    clock_offset_ms: p.skew.offset_ms(),
                }
            })
            .collect();
        MatrixRow {
            region: self.opts.region.clone(),
            replica: self.opts.replica,
            version: self.clock.last(),
            applied: self.durable.clone(),
            lags,
            resolvers: self.resolver_ids.clone(),
        }
    }

    /// What `name` is known to have durably applied: its acknowledgements joined with its
    /// latest lag-matrix row (for the replica we know it as). When the link to it is cut, a
    /// third region relays our writes to it and its row, passed on in that region's
    /// heartbeats, is the only news of them: without it the matrix would show the peer
    /// lagging on writes it has, for as long as the link stays cut.
    fn known_applied(&self, name: &str, p: &Peer) -> VersionVector {
        let mut known = p.acked.clone();
        let row = self.matrix.rows.get(name).map(|(r, _)| r);
        if let Some(row) = row.filter(|r| p.replica.is_none_or(|id| id == r.replica)) {
            known.join(&row.applied);
        }
        known
    }

    /// This region's own writes, durable here, that a peer with applied vector `acked` lacks:
    /// a matrix row's cell, like its `lag_ms`, is about the row's origin's own writes only.
    /// (Counting third regions' writes too would show a cut between two other regions, or
    /// acknowledgements that cannot reach us, as lag on this region's links.)
    fn own_lag_writes(&self, acked: &VersionVector) -> u64 {
        let own = self.opts.replica;
        self.durable.get(own).0.saturating_sub(acked.get(own).0)
    }

    /// Writes durable here that `peer` lacks, over every origin but the peer itself (a region
    /// always has its own writes, even when its acks cannot reach us).
    fn lag_writes(&self, name: &str, peer: &Peer) -> u64 {
        self.durable
            .iter()
            .filter(|(o, _)| self.replicas.get(o).is_none_or(|r| r != name))
            .map(|(o, s)| s.0.saturating_sub(peer.acked.get(o).0))
            .sum()
    }

    /// Raises one alarm per (region, table) whose resolver differs from ours.
    fn check_mismatches(&mut self, out: &mut Vec<Effect>) {
        let ours: BTreeMap<&str, &str> = self
            .resolver_ids
            .iter()
            .map(|(t, r)| (t.as_str(), r.as_str()))
            .collect();
        for (region, theirs) in &self.region_resolvers {
            let tables: BTreeSet<&str> = theirs
                .keys()
                .map(String::as_str)
                .chain(ours.keys().copied())
                .collect();
            for table in tables {
                let (o, t) = (
                    ours.get(table).copied(),
                    theirs.get(table).map(String::as_str),
                );
                if o == t
                    || !self
                        .mismatch_alarmed
                        .insert((region.clone(), table.to_owned()))
                {
                    continue;
                }
                out.push(Effect::Alarm(Alarm::ResolverMismatch {
                    peer: region.clone(),
                    table: table.to_owned(),
                    ours: o.map(str::to_owned),
                    theirs: t.map(str::to_owned),
                }));
            }
        }
    }

    /// Answers every durability wait that is met or past its deadline.
    fn check_waits(&mut self, now: Time, out: &mut Vec<Effect>) {
        if self.waits.is_empty() {
            return;
        }
        let waits = std::mem::take(&mut self.waits);
        for mut w in waits {
            let have = self.durable_at(&w.receipt.dot);
            let met = have.len() > w.need;
            if !met && now.mono_ms < w.deadline_ms {
                self.waits.push(w);
                continue;
            }
            w.receipt.timed_out = !met;
            w.receipt.durable_in = have;
            out.push(Effect::Reply {
                id: w.id,
                result: Ok(w.receipt),
            });
        }
    }

    /// Regions known to have `dot` durably: this one first, then peers by name. A peer counts
    /// when its own ack says so, or when its latest matrix row (maybe relayed by a third
    /// region) does: both report durable applies only.
    fn durable_at(&self, dot: &Dot) -> Vec<String> {
        let mut regions = Vec::new();
        if self.durable.covers(dot) {
            regions.push(self.opts.region.clone());
        }
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

    fn on_resync(&mut self, now: Time, name: &str, r: Resync, out: &mut Vec<Effect>) {
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        let sent = peer.sent.entry(r.origin).or_default();
        if *sent > r.applied {
            *sent = r.applied;
        }
        let mut kept = VecDeque::with_capacity(peer.inflight.len());
        for item in peer.inflight.drain(..) {
            if item.0 == r.origin && item.1 > r.applied {
                peer.inflight_bytes -= item.2;
            } else {
                kept.push_back(item);
            }
        }
        peer.inflight = kept;
        self.pump(name, now, out);
    }

    // ---- streaming -----------------------------------------------------------------------

    /// Keeps `stalled` up to date: since when has the peer lagged on each origin without
    /// progress. Progress restarts the clock unless the lag matrix shows the origin's direct
    /// link to the peer down: then the progress is our relay's, which must go on.
    fn update_lag(&mut self, now: Time, name: &str) {
        let peer = &self.peers[name];
        let down: BTreeSet<ReplicaId> = peer
            .stalled
            .keys()
            .copied()
            .filter(|o| self.link_down(*o, name, peer))
            .collect();
        let durable = &self.durable;
        let peer = self
            .peers
            .get_mut(name)
            .expect("peer names come from self.peers");
        for (origin, seq) in durable.iter() {
            let acked = peer.acked.get(origin);
            if acked >= seq {
                peer.stalled.remove(&origin);
                continue;
            }
            let stall = peer.stalled.entry(origin).or_insert(Stall {
                since_ms: now.mono_ms,
                acked,
            });
            if stall.acked != acked {
                stall.acked = acked;
                if !down.contains(&origin) {
                    stall.since_ms = now.mono_ms;
                }
            }
        }
    }

    /// Origins whose writes this region streams to `peer` right now: its own, and each third
    /// region's that the peer has lacked, without progress, for the relay delay. A peer that
    /// merely lags (it always does, under sustained load over links with latency) but keeps
    /// progressing gets them from their origin: relaying them too would only duplicate that
    /// stream. See "Refinements" in docs/design.md.
    fn origins_for(&self, peer: &Peer, now: Time) -> Vec<ReplicaId> {
        let mut origins = vec![self.opts.replica];
        for (origin, stall) in &peer.stalled {
            let relay = *origin != self.opts.replica
                && Some(*origin) != peer.replica
                && now.mono_ms.saturating_sub(stall.since_ms) >= self.opts.relay_delay_ms;
            if relay {
                origins.push(*origin);
            }
        }
        origins
    }

    /// Whether the lag matrix shows the direct link between `origin` and the peer `name` down:
    /// the origin's latest row, or the peer's, says it does not replicate to the other.
    fn link_down(&self, origin: ReplicaId, name: &str, peer: &Peer) -> bool {
        let Some(origin_region) = self.replicas.get(&origin) else {
            return false;
        };
        let says_down = |region: &str, replica: Option<ReplicaId>, other: &str| {
            self.matrix.rows.get(region).is_some_and(|(row, _)| {
                replica.is_none_or(|id| id == row.replica)
                    && row.lags.iter().any(|l| l.peer == other && !l.connected)
            })
        };
        says_down(origin_region, Some(origin), name) || says_down(name, peer.replica, origin_region)
    }

    /// Sends whatever `peer` lacks, within its window, from the tail or via log reads.
    fn pump(&mut self, name: &str, now: Time, out: &mut Vec<Effect>) {
        let Some(peer) = self.peers.get(name) else {
            return;
        };
        let Some(conn) = peer.active else { return };
        let origins = self.origins_for(peer, now);
        for origin in origins {
            let peer = &self.peers[name];
            if peer
                .read_retry
                .get(&origin)
                .is_some_and(|(due, _)| *due > now.mono_ms)
            {
                continue;
            }
            self.pump_origin(name, conn, origin, out);
        }
    }

    fn pump_origin(&mut self, name: &str, conn: ConnId, origin: ReplicaId, out: &mut Vec<Effect>) {
        let last = self.durable.get(origin);
        let window = self.opts.peer_window_bytes;
        loop {
            let peer = self.peers.get(name).expect("pump checked the peer exists");
            if peer.reading.contains(&origin) || peer.inflight_bytes >= window {
                return;
            }
            let next = peer.next_seq(origin);
            if next > last {
                return;
            }
            let room = (window - peer.inflight_bytes).min(self.opts.max_batch_bytes);
            let entries = self.tail_run(origin, next, last, room);
            if entries.is_empty() {
                let peer = self
                    .peers
                    .get_mut(name)
                    .expect("pump checked the peer exists");
                peer.reading.insert(origin);
                out.push(Effect::ReadLog {
                    peer: name.to_owned(),
                    conn,
                    origin,
                    from: next,
                    to: last,
                    max_bytes: room,
                });
                return;
            }
            self.send_batch(name, conn, origin, entries, out);
        }
    }

    /// Contiguous durable entries of `origin` from `from` held in memory, within `budget`.
    fn tail_run(&self, origin: ReplicaId, from: Seq, to: Seq, budget: usize) -> Vec<LogEntry> {
        let Some(tail) = self.tail.get(&origin).map(|t| &t.entries) else {
            return Vec::new();
        };
        let Some(first) = tail.front().map(LogEntry::seq) else {
            return Vec::new();
        };
        if from < first {
            return Vec::new();
        }
        let start = (from.0 - first.0) as usize;
        let mut used = 0;
        let mut entries = Vec::new();
        for e in tail.iter().skip(start) {
            if e.seq() > to || (used > 0 && used + e.wire_size() > budget) {
                break;
            }
            used += e.wire_size();
            entries.push(e.clone());
        }
        entries
    }

    fn send_batch(
        &mut self,
        name: &str,
        conn: ConnId,
        origin: ReplicaId,
        entries: Vec<LogEntry>,
        out: &mut Vec<Effect>,
    ) {
        let relayed = origin != self.opts.replica;
        let peer = self
            .peers
            .get_mut(name)
            .expect("callers checked the peer exists");
        let Some(last) = entries.last().map(LogEntry::seq) else {
            return;
        };
        for e in &entries {
            let size = e.wire_size();
            peer.inflight.push_back((origin, e.seq(), size));
            peer.inflight_bytes += size;
        }
        peer.sent.insert(origin, last);
        self.counters.batches_sent += 1;
        self.counters.writes_sent += entries.len() as u64;
        if relayed {
            self.counters.writes_relayed += entries.len() as u64;
        }
        let origin_region = self.replicas.get(&origin).cloned().unwrap_or_default();
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg: PeerMsg::Batch(Batch {
                origin,
                origin_region,
                entries,
            }),
        });
    }

    fn log_read(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        origin: ReplicaId,
        entries: Vec<LogEntry>,
        out: &mut Vec<Effect>,
    ) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.active != Some(conn) {
            return;
        }
        peer.reading.remove(&origin);
        if entries.is_empty() {
            // A read is only asked for durable entries past what the tail holds, so nothing
            // back means storage failed. Asking again at once would spin: back off, alarm.
            let backoff = peer
                .read_retry
                .get(&origin)
                .map_or(LOG_READ_RETRY_MIN_MS, |(_, b)| {
                    (b.saturating_mul(2)).min(LOG_READ_RETRY_MAX_MS)
                });
            peer.read_retry
                .insert(origin, (now.mono_ms.saturating_add(backoff), backoff));
            let from = peer.next_seq(origin);
            self.counters.log_read_failures += 1;
            out.push(Effect::Alarm(Alarm::LogReadFailed {
                peer: name.to_owned(),
                origin,
                from,
                retry_ms: backoff,
            }));
            return;
        }
        peer.read_retry.remove(&origin);
        let expected = peer.next_seq(origin);
        // Keep only the contiguous run that starts where the stream stands now.
        let run: Vec<LogEntry> = entries
            .into_iter()
            .skip_while(|e| e.seq() < expected)
            .enumerate()
            .take_while(|(i, e)| {
                e.seq().0 == expected.0 + *i as u64 && e.write.dot.replica == origin
            })
            .map(|(_, e)| e)
            .collect();
        if !run.is_empty() {
            self.send_batch(name, conn, origin, run, out);
        }
        self.pump_origin(name, conn, origin, out);
    }

    // ---- timers --------------------------------------------------------------------------

    fn on_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let mut rows: Option<Vec<MatrixRow>> = None;
        for name in names {
            let due = self.peers[&name].active.is_some()
                && now.mono_ms
                    >= self.peers[&name].last_heartbeat_ms + self.opts.heartbeat_interval_ms;
            if due {
                let rows = rows.get_or_insert_with(|| {
                    let mut rows = vec![self.own_row(now)];
                    rows.extend(self.matrix.rows.values().map(|(r, _)| r.clone()));
                    rows
                });
                let hlc = self.clock.last();
                let peer = self
                    .peers
                    .get_mut(&name)
                    .expect("names come from self.peers");
                let conn = peer.active.expect("due implies an active connection");
                peer.last_heartbeat_ms = now.mono_ms;
                let hb = Heartbeat {
                    wall_ms: now.wall_ms,
                    hlc,
                    echo: peer.echo.take(),
                    rows: rows.clone(),
                };
                out.push(Effect::Send {
                    peer: name.clone(),
                    conn,
                    msg: PeerMsg::Heartbeat(hb),
                });
            }
            self.update_lag(now, &name);
            self.pump(&name, now, out);
        }
        self.check_waits(now, out);
    }

    /// The full lag matrix as this region knows it: its own row (fresh) and every other
    /// region's latest row, each computed by its origin on the origin's own clock.
    pub fn matrix(&self, now: Time) -> Vec<MatrixCell> {
        let own = self.own_row(now);
        let rows = std::iter::once((&own, now.mono_ms))
            .chain(self.matrix.rows.values().map(|(r, at)| (r, *at)));
        rows.flat_map(|(row, at)| {
            row.lags.iter().map(move |l| MatrixCell {
                origin: row.region.clone(),
                destination: l.peer.clone(),
                lag_writes: l.lag_writes,
                lag_ms: l.lag_ms,
                connected: l.connected,
                row_age_ms: now.mono_ms.saturating_sub(at),
            })
        })
        .collect()
    }

    /// Regions whose stamps ran further ahead than the offset bound: (region, largest lead ms).
    pub fn skew_alarms(&self) -> Vec<(String, u64)> {
        self.skew_alarms
            .iter()
            .map(|(r, (ms, _))| (r.clone(), *ms))
            .collect()
    }

    /// (region, table, ours, theirs) for every table resolved differently elsewhere.
    pub fn resolver_mismatches(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        let ours: BTreeMap<&String, &String> =
            self.resolver_ids.iter().map(|(t, r)| (t, r)).collect();
        let mut out = Vec::new();
        for (region, theirs) in &self.region_resolvers {
            let tables: BTreeSet<&String> = theirs.keys().chain(ours.keys().copied()).collect();
            for table in tables {
                let (o, t) = (ours.get(table).copied(), theirs.get(table));
                if o != t {
                    out.push((region.clone(), table.clone(), o.cloned(), t.cloned()));
                }
            }
        }
        out
    }

    // ---- queries -------------------------------------------------------------------------

    /// The state of a key as a client may read it now: the newest state whose own writes are
    /// all durable. A read that saw a write of this region that is not durable yet, and a
    /// crash that lost it, would let the restarted region hand the same sequence number to
    /// another write, and the reader's context would then supersede a write it never saw.
    /// So while a key holds such a write, readers get the key as the last persisted batch
    /// left it (never older than the last acknowledged write: acknowledgements follow the
    /// same persistence) instead of waiting for the next fsync, which under a stream of
    /// writes to one key could be any number of fsyncs away. Writes of other regions need no
    /// wait: a crash here cannot change them (their origin resends the same write).
    pub fn read(&self, table: &str, key: &[u8]) -> Option<&KeyState> {
        let slot = (table.to_owned(), key.to_vec());
        self.stable.get(&slot).or_else(|| self.keys.get(&slot))
    }

    /// The state of a key as applied here, maybe holding writes that are not durable yet.
    /// Clients read through [`Replica::read`]; see there why.
    pub fn get(&self, table: &str, key: &[u8]) -> Option<&KeyState> {
        self.keys.get(&(table.to_owned(), key.to_vec()))
    }

    /// The resolver of a table, if the table is configured.
    pub fn resolver(&self, table: &str) -> Option<&Arc<dyn Resolver>> {
        self.resolvers.get(table)
    }

    /// Every key state, in (table, key) order.
    pub fn keys(&self) -> impl Iterator<Item = (&(String, Vec<u8>), &KeyState)> {
        self.keys.iter()
    }

    /// SHA-256 over every key's state in (table, key) order: equal digests mean equal data.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for ((table, key), state) in &self.keys {
            h.update((table.len() as u64).to_le_bytes());
            h.update(table.as_bytes());
            h.update((key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(state.digest());
        }
        h.finalize().into()
    }

    /// Durably applied writes per origin.
    pub fn applied(&self) -> &VersionVector {
        &self.durable
    }

    /// Applied in memory (maybe not yet durable) per origin.
    pub fn received(&self) -> &VersionVector {
        &self.received
    }

    /// The region that owns a replica id, if known.
    pub fn region_of(&self, replica: &ReplicaId) -> Option<&str> {
        self.replicas.get(replica).map(String::as_str)
    }

    /// This machine's options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The conflict log, oldest first.
    pub fn conflicts(&self) -> impl DoubleEndedIterator<Item = &ConflictRecord> {
        self.conflicts.iter()
    }

    /// Monotonic counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The latest HLC issued or observed.
    pub fn hlc(&self) -> Hlc {
        self.clock.last()
    }

    /// How long (ms) the oldest own write that `acked` lacks has been durable here; 0 when
    /// the peer has every own write. Measured on this region's monotonic clock only.
    fn own_lag_ms(&self, acked: &VersionVector, now: Time) -> u64 {
        let have = acked.get(self.opts.replica);
        if have >= self.durable.get(self.opts.replica) {
            return 0;
        }
        let since = self
            .own_commits
            .iter()
            .find(|(seq, _)| *seq > have)
            .or(self.own_commits.front())
            .map_or(now.mono_ms, |(_, t)| *t);
        now.mono_ms.saturating_sub(since)
    }

    /// Replication state towards each peer, as of `now`.
    pub fn peer_views(&self, now: Time) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(name, p)| PeerView {
                lag_ms: self.own_lag_ms(&p.acked, now),
                region: name.clone(),
                replica: p.replica,
                connected: p.active.is_some(),
                acked: p.acked.clone(),
                lag_writes: self.lag_writes(name, p),
                unacked_bytes: p.inflight_bytes,
                clock_offset_ms: p.skew.offset_ms(),
            })
            .collect()
    }
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
}
