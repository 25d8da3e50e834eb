//! The replication protocol's wire messages: what one region's leader says to another.
//!
//! Frames are postcard-encoded by the transport. The format is versioned from the first
//! release: [`PeerMsg`] variants and struct fields are only ever appended, and
//! [`PROTOCOL_VERSION`] is exchanged in the [`Hello`] so an incompatible peer is refused with a
//! clear reason instead of being misread.

use conflict::{Hlc, KeyState, ReplicaId, Seq, VersionVector, Write};

use crate::consistency::MatrixRow;
use serde::{Deserialize, Serialize};

/// Version of the replication protocol spoken by this build. Bumped only for changes that old
/// peers cannot read; appending a message variant does not need a bump.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every message one leader sends another over their link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// First message on every connection, in both directions.
    Hello(Hello),
    /// A contiguous run of one origin's writes, in sequence order.
    Batch(Batch),
    /// The sender's durably applied vector: everything it covers survives a crash there.
    Ack(Ack),
    /// Liveness, clock and lag information, sent periodically.
    Heartbeat(Heartbeat),
    /// "Your run for this origin did not start where I am; resend from `applied + 1`."
    Resync(Resync),
    /// The sender refuses this connection; the reason is for the operator.
    Refuse(Refuse),
    /// "I cannot stream you this origin's writes from where you are: my log no longer holds
    /// them (truncated once every other region had them, or past the retention bound)." The
    /// receiver needs a snapshot unless another region can still serve them.
    NeedsSnapshot(NeedsSnapshot),
    /// "Send me your key states after this key": a region bootstrapping from a snapshot.
    SnapshotRequest(SnapshotRequest),
    /// Key states in key order, exactly as of the sender's applied vector `applied`: the
    /// answer to a [`SnapshotRequest`].
    SnapshotChunk(SnapshotChunk),
    /// The sender cannot serve a snapshot now (it is bootstrapping itself, or its storage
    /// failed): ask another region.
    SnapshotUnavailable(SnapshotUnavailable),
    /// "Send me your state of this key": a quorum read at the sender (docs/design.md,
    /// "Quorum reads").
    ReadRequest(ReadRequest),
    /// The answer to a [`ReadRequest`].
    ReadReply(ReadReply),
    /// "Here is a key's state as a quorum read joined it; yours lacked some of it": read
    /// repair, ahead of normal streaming.
    ReadRepair(ReadRepair),
    /// Anti-entropy: "send me your hashes of these nodes of your hash tree"
    /// (docs/design.md, "Anti-entropy").
    AaeRequest(AaeRequest),
    /// Anti-entropy: the answer to an [`AaeRequest`], the hashes in the order asked.
    AaeHashes(AaeHashes),
    /// Anti-entropy: "send me your key states in these leaves of your hash tree".
    AaeStatesRequest(AaeStatesRequest),
    /// Anti-entropy: the answer to an [`AaeStatesRequest`].
    AaeStates(AaeStates),
    /// Anti-entropy: the sender's states of keys it found diverged, to be joined by the
    /// receiver after its own checks. The round's last message.
    AaeRepair(AaeRepair),
}

/// Sent first by both sides of a connection: who I am and what I already have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// Cluster name; regions of different clusters never replicate.
    pub cluster: String,
    /// The region the sender claims to be; must match the region its certificate names.
    pub region: String,
    /// The sender's replica id (its data directory's identity).
    pub replica: ReplicaId,
    /// Everything the sender has durably applied, per origin: the receiver streams from here.
    pub applied: VersionVector,
    /// table → `resolver@version` at the sender, so mismatched resolvers are detected.
    pub resolvers: Vec<(String, String)>,
    /// Replica ids the sender knows, with their regions, so relayed writes can be named.
    pub replicas: Vec<(ReplicaId, String)>,
    /// Whether the sender serves clients and where its log starts: a region on a fresh data
    /// directory learns from it whether it needs a snapshot.
    pub standing: Standing,
}

/// What a region on a fresh data directory must know of a peer to decide whether it needs a
/// snapshot before it serves (docs/design.md, "A fresh data directory starts gated"). Sent in
/// every [`Hello`] and [`Heartbeat`], so a change reaches the peers within a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Whether the sender serves clients, and if not, why.
    pub serving: Serving,
    /// The sender's log start: its log no longer holds the writes this vector covers. Empty
    /// when it can stream every write it applied from each origin's first.
    pub log_start: VersionVector,
}

/// Whether a region serves clients (reads and writes). Variants are only ever appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serving {
    /// It serves.
    #[default]
    Yes,
    /// Its data directory holds nothing and it has not learned yet whether it needs a
    /// snapshot.
    Learning,
    /// It is being bootstrapped from a snapshot.
    Bootstrapping,
}

/// One replicated write as it travels and as it is kept in the per-origin log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Table the key belongs to.
    pub table: String,
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The write itself; `write.dot` names the origin and the sequence number.
    pub write: Write,
}

impl LogEntry {
    /// Approximate size in bytes on the wire, used for flow-control windows and batch caps.
    /// An estimate is enough: the transport enforces the exact frame limit.
    pub fn wire_size(&self) -> usize {
        let value = match &self.write.value {
            conflict::Value::Bytes(b) => b.len(),
            conflict::Value::Tombstone => 0,
        };
        64 + self.table.len() + self.key.len() + value + 24 * self.write.context.len()
    }

    /// The origin's sequence number of this write.
    pub fn seq(&self) -> Seq {
        self.write.dot.seq
    }
}

/// A contiguous run of one origin's writes: `entries[i].seq() == entries[0].seq() + i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The replica that made these writes.
    pub origin: ReplicaId,
    /// The origin's region name, so a region that never met the origin can still name it.
    pub origin_region: String,
    /// The writes, in sequence order without gaps.
    pub entries: Vec<LogEntry>,
}

/// The sender's durably applied vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Per origin, the highest sequence number applied and fsynced at the sender.
    pub applied: VersionVector,
}

/// Periodic liveness, clock and lag information.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's wall clock when sending, in Unix milliseconds (NTP's t3 for an echo).
    pub wall_ms: u64,
    /// Sender's latest HLC, so a quiet region still pulls the others' clocks along.
    pub hlc: Hlc,
    /// The receiver's previous heartbeat echoed back: (its send time t1, our receive time
    /// t2), so the receiver can estimate our clock offset NTP-style.
    pub echo: Option<(u64, u64)>,
    /// The sender's own lag-matrix row first, then the freshest row it knows of every other
    /// region, so every region can show the whole matrix even across a broken link.
    pub rows: Vec<MatrixRow>,
    /// As in [`Hello::standing`], now: a fresh region waiting on the sender learns of a change.
    pub standing: Standing,
}

/// Asks the sender of a batch to restart an origin's run after `applied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    /// The origin whose run had a gap.
    pub origin: ReplicaId,
    /// The highest sequence number of that origin the receiver has (applied, maybe not yet durable).
    pub applied: Seq,
}

/// Refusal of a connection, with the reason written for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refuse {
    /// What was wrong and what to do about it.
    pub reason: String,
}

/// The sender's log of `origin` starts after what the receiver has: catch-up from it is
/// impossible, and the sender says so instead of leaving a gap (docs/design.md, "Log
/// truncation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedsSnapshot {
    /// The origin whose writes the receiver lacks.
    pub origin: ReplicaId,
    /// The origin's region name, so a region that never met the origin can still name it.
    pub origin_region: String,
    /// The first sequence number of the origin that the receiver lacks (as the sender knows).
    pub from: Seq,
    /// The first sequence number of the origin the sender's log still serves: everything
    /// before it was dropped.
    pub log_start: Seq,
}

/// A key of a table: where a snapshot transfer stands (the last key received).
pub type SlotKey = (String, Vec<u8>);

/// Asks for the sender's key states after `after` (from the first key when `None`), at most
/// about `max_bytes` of them. Every request is answered on its own, from the sender's latest
/// checkpoint, so a transfer resumes anywhere (another connection, another sender, after a
/// crash of either side) from the last key received. See "Snapshot bootstrap" in
/// docs/design.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The last key the receiver has; `None` starts from the first key.
    pub after: Option<SlotKey>,
    /// How many bytes of key states the receiver wants in one chunk (the sender caps it).
    pub max_bytes: u64,
    /// The applied vector the receiver will have once it installs what it received so far
    /// (the meet of the chunks' vectors): the sender keeps its log from there for it while
    /// the transfer lasts, within its retention bound.
    pub low: Option<VersionVector>,
    /// A sender that is being bootstrapped itself may serve its partial states (bounded by
    /// [`SnapshotChunk::upper`]): every region this one asked said it is bootstrapping.
    pub partial_ok: bool,
}

/// Key states of the sender, in key order, strictly after the request's `after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The request's `after`, echoed so a late answer to an old request is recognised.
    pub after: Option<SlotKey>,
    /// The sender's applied vector that these states reflect exactly (its last checkpoint).
    pub applied: VersionVector,
    /// (table, key, state), in ascending (table, key) order.
    pub states: Vec<(String, Vec<u8>, KeyState)>,
    /// No key follows the last one: the snapshot is complete.
    pub done: bool,
    /// How many keys the sender's checkpoint holds (for a progress figure).
    pub total_keys: u64,
    /// Replica ids the sender knows, with their regions, so the receiver can name origins.
    pub replicas: Vec<(ReplicaId, String)>,
    /// The sender's HLC high-water mark: the receiver's clock moves past every stamp it holds.
    pub hlc: Hlc,
    /// The receiver's `low` was already truncated from the sender's log: the sender served
    /// this chunk from the first key and the receiver starts its transfer over from here.
    pub restart: bool,
    /// No state of the chunk reflects more than this vector (`applied` joined with what the
    /// sender's own snapshot install may have brought, if it is being bootstrapped itself).
    pub upper: VersionVector,
    /// The sender is being bootstrapped itself (it served because the request allowed it).
    pub partial: bool,
    /// The sender's collected floor: writes of keys whose tombstones it collected, which the
    /// chunk no longer shows (docs/design.md, "Tombstone collection").
    pub collected: VersionVector,
}

/// The sender cannot serve a snapshot; the reason is for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotUnavailable {
    /// Why, and what the receiver does about it.
    pub reason: String,
}

/// Asks for the sender's state of one key, for a quorum read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The read, echoed in the reply.
    pub id: u64,
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
}

/// The sender's state of the key a [`ReadRequest`] named: its newest durable state, as a
/// local read there would see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The request's `id`.
    pub id: u64,
    /// The key's state there; `None` when it holds nothing for the key.
    pub state: Option<KeyState>,
    /// Set when the sender cannot answer for the key (it is being bootstrapped, or does not
    /// know the table): the reason, for the operator. The read does not count it.
    pub refused: Option<String>,
}

/// A key's state joined from the answers of a quorum read, sent to the regions whose answer
/// lacked part of it. The receiver joins it into its own (rule 1 of
/// `conflict::KeyState::apply` makes the log's later delivery of the same writes a no-op).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRepair {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// The joined state.
    pub state: KeyState,
}

/// Asks for the receiver's hashes of nodes `nodes` of level `level` of its hash tree
/// ([`crate::hashtree`]): one round of anti-entropy descends the tree from the root through
/// the nodes whose hashes differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AaeRequest {
    /// The asker's round, echoed in the answer.
    pub round: u64,
    /// The level, 0 (the root) to [`crate::hashtree::LEAF_LEVEL`].
    pub level: u8,
    /// Node indices at that level, ascending, at most
    /// [`MAX_AAE_NODES`](crate::limits::MAX_AAE_NODES).
    pub nodes: Vec<u32>,
}

/// The answer to an [`AaeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AaeHashes {
    /// The request's round.
    pub round: u64,
    /// The hashes of the nodes asked for, in their order.
    pub hashes: Vec<[u8; 16]>,
}

/// Asks for the receiver's key states in these leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AaeStatesRequest {
    /// The asker's round, echoed in the answer.
    pub round: u64,
    /// Leaf indices, ascending, at most [`MAX_AAE_LEAVES`](crate::limits::MAX_AAE_LEAVES).
    pub leaves: Vec<u32>,
}

/// Key states of whole leaves, as the sender holds them when it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AaeStates {
    /// The request's round.
    pub round: u64,
    /// The sender's applied vector (in memory) when it answered: its states reflect it.
    pub applied: VersionVector,
    /// The leaves answered: a prefix of those asked for, every key of each (the rest did not
    /// fit the sender's chunk size and wait for the next round).
    pub leaves: Vec<u32>,
    /// (table, key, state) of every key in those leaves, tombstones included, in ascending
    /// (table, key) order.
    pub states: Vec<(String, Vec<u8>, KeyState)>,
    /// Tables with writes held back (quarantined) at the sender: not compared.
    pub held_back: Vec<String>,
}

/// States of keys the sender found diverged (after it joined the receiver's states in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AaeRepair {
    /// The round.
    pub round: u64,
    /// The sender's applied vector (in memory) when it sent them.
    pub applied: VersionVector,
    /// (table, key, state), in ascending (table, key) order.
    pub states: Vec<(String, Vec<u8>, KeyState)>,
    /// Tables with writes held back (quarantined) at the sender.
    pub held_back: Vec<String>,
}
