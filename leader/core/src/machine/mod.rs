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
//!
//! # Rooms
//! One [`Replica`], its methods spread over the files by what they do (as quinn-proto does
//! with `Connection`). This file holds the struct, [`Replica::new`], [`Replica::handle`], the
//! timers ([`Replica::poll_timeout`] and the tick that serves them, in one place) and the
//! getters. The others:
//! - `events`: the public vocabulary ([`Event`], [`Effect`], [`Options`], [`Alarm`]...).
//! - `client`: client writes, flow control, the conflict log, durability waits.
//! - `persist`: staging and group commit; what a durable batch releases.
//! - `peer`: `Peer`, one other region; connections, hellos, frames.
//! - `receive`: batches in: gaps and `Resync`, validation, applying replicated writes.
//! - `stream`: batches out: the log tail, the send window, catch-up, relays.
//! - `matrix`: heartbeats, lag and the lag matrix.
//! - `truncate`: log truncation by causal stability and the retention bound.
//! - `snapshot`: snapshot bootstrap: serving chunks, fetching, installing.
//! - `learn`: a fresh data directory starts gated until its peers show whether it needs a
//!   snapshot.
//! - `collect`: tombstone collection by causal stability.
//! - `quorum`: reads above level `one`: other regions' states of a key joined; read repair.
//! - `repair`: key states learned from other regions (snapshots, quorum reads, anti-entropy)
//!   joined into this region's.
//! - `resolvers`: which regions' writes of a table may be applied here; quarantine.
//! - `alarms`: clock skew, causality violations, reused dots.
//! - `keys`: the key table; every change of a key state goes through it, which keeps the
//!   anti-entropy hash tree ([`crate::hashtree`]) up to date.
//! - `aae`: anti-entropy rounds with peers: compare hash trees top-down, join and report
//!   keys that diverged although both regions applied their writes.

mod aae;
mod alarms;
mod client;
mod collect;
mod events;
mod keys;
mod learn;
mod matrix;
mod peer;
mod persist;
mod quorum;
mod receive;
mod repair;
mod resolvers;
mod snapshot;
mod stream;
mod truncate;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use conflict::{
    Dot, Hlc, HybridClock, KeyState, Registry, ReplicaId, Resolver, ResolverId, Seq, VersionVector,
};

pub use self::aae::Divergence;
pub use self::events::{
    Alarm, BuildError, ConflictRecord, Counters, Effect, Event, Options, PeerView, PersistBatch,
    Quarantined, ReadAnswer, ReadError, Recovered, SnapshotPiece, WriteError, WriteReceipt,
};
pub use self::resolvers::resolver_accepts;
pub use self::snapshot::{Bootstrap, BootstrapPhase};
pub use crate::limits::{LOG_READ_RETRY_MAX_MS, LOG_READ_RETRY_MIN_MS, MAX_PACED_WRITES};

use crate::limits::{MAX_UNANSWERED_WRITES, OWN_COMMITS_MAX};

use self::client::{Change, Wait, WriteRequest};
use self::keys::KeyTable;
use self::peer::Peer;
use self::persist::{InFlight, Staged};
use self::stream::Tail;
use self::truncate::{HeldDots, LogBytes};
use crate::consistency::{Matrix, MatrixRow};
use crate::msg::NeedsSnapshot;
use crate::msg::{Heartbeat, LogEntry, PeerMsg};

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

/// The replication state machine of one region. See the module docs for the call order.
pub struct Replica {
    opts: Options,
    resolvers: BTreeMap<String, Arc<dyn Resolver>>,
    /// table → [`ResolverId`] of ours, in its wire form (`name@version`, as hellos and matrix
    /// rows carry it), in table order. Not a [`conflict::Fingerprints`]: what we compare it
    /// with is a peer's text, which need not parse, and comparing per replicated write in
    /// the wire form costs no allocation.
    resolver_ids: Vec<(String, String)>,
    clock: HybridClock,
    own_seq: Seq,
    /// Everything applied in memory (maybe not yet durable), per origin.
    received: VersionVector,
    /// Everything durably applied, per origin.
    durable: VersionVector,
    /// Every key's state, and their anti-entropy hash tree (`keys.rs`).
    keys: KeyTable,
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
    /// How many of `waits` are `WAIT`s (the others are durable writes' replies).
    client_waits: usize,
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
    /// Where the log starts: entries it covers may be dropped and are never streamed
    /// (`truncate.rs`). Only grows.
    truncated: VersionVector,
    /// Per origin, bytes of its durable log since this start: how far behind peers are.
    log_bytes: BTreeMap<ReplicaId, LogBytes>,
    /// Writes held back in quarantine and not released durably: they pin their origin's log.
    held_dots: HeldDots,
    /// "Needs snapshot" answers received, by (peer, origin); at most `MAX_VV_ENTRIES`.
    snapshot_needed: BTreeMap<(String, ReplicaId), NeedsSnapshot>,
    /// The snapshot transfer under way, if this region is being bootstrapped (`snapshot.rs`).
    bootstrap: Option<Bootstrap>,
    /// The outstanding snapshot request: (peer, when it was sent, mono ms).
    snapshot_asked: Option<(String, u64)>,
    /// Peers that said they cannot serve a snapshot, with when to ask them again (mono ms).
    snapshot_skip: BTreeMap<String, u64>,
    /// Test-only negative control (see [`Replica::unsafe_stamp_with_wall_clock`]).
    wall_clock_stamps: bool,
    /// Test-only negative control (see [`Replica::unsafe_truncate_at_durable`]).
    truncate_unstable: bool,
    /// Test-only negative control (see [`Replica::unsafe_install_snapshot_at_high`]).
    install_at_high: bool,
    /// Keys holding a tombstone sibling, or no sibling: candidates for collection
    /// (`collect.rs`).
    tombstones: collect::Candidates,
    /// When (mono ms) collection last looked at its candidates.
    last_collect_ms: u64,
    /// The collected floor: the join of the stable vectors collection has dropped keys
    /// under. Every write it covers was applied here, so it is part of every key's context
    /// when a client reads or writes (`Replica::read_context`, `prepare_write_above`).
    collected: VersionVector,
    /// Test-only negative control (see [`Replica::unsafe_collect_tombstones_unstably`]).
    collect_unstable: bool,
    /// Test-only negative control (see [`Replica::unsafe_answer_short_reads`]).
    short_reads: bool,
    /// Monotonic time of the last event handled (every `handle` ends with `on_tick`).
    last_event_ms: u64,
    /// Reads above level `one` waiting for other regions' answers (`quorum.rs`); at most
    /// [`crate::limits::MAX_QUORUM_READS`].
    quorum_reads: BTreeMap<RequestId, quorum::QuorumRead>,
    /// Anti-entropy's rounds and findings (`aae.rs`).
    aae: aae::AntiEntropy,
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
            resolver_ids.push((table.clone(), ResolverId::of(r.as_ref()).to_string()));
            resolvers.insert(table.clone(), r);
        }
        let peers = opts
            .peers
            .iter()
            .map(|p| {
                let acked = rec.peer_acked.get(p).cloned().unwrap_or_default();
                (p.clone(), Peer::new(p.clone(), acked))
            })
            .collect();
        let mut release = BTreeSet::new();
        let mut held_back: BTreeMap<String, u64> = BTreeMap::new();
        let held_dots = rec.quarantined.iter().map(|q| q.dot).collect();
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
        // A transfer recorded as caught up is over; one recorded as received is installed by
        // the first batch (the crash came between its last chunk and the install).
        // (A learning region is never recorded; it starts learning again below if it still
        // holds nothing.)
        let bootstrap = rec.bootstrap.filter(|b| {
            b.phase != BootstrapPhase::Learning
                && (b.phase != BootstrapPhase::CatchingUp || !durable.dominates(&b.high))
        });
        let mut replica = Self {
            clock: HybridClock::resume(rec.hlc_high, opts.max_clock_offset_ms),
            own_seq: rec.own_seq,
            received: durable.clone(),
            durable,
            keys: KeyTable::new(rec.keys),
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
            client_waits: 0,
            matrix: Matrix::default(),
            region_resolvers: BTreeMap::new(),
            mismatch_alarmed: BTreeSet::new(),
            skew_alarms: BTreeMap::new(),
            causality_alarmed: BTreeMap::new(),
            reuse_alarmed: BTreeMap::new(),
            release,
            held_back,
            truncated: rec.log_start,
            log_bytes: BTreeMap::new(),
            held_dots,
            snapshot_needed: BTreeMap::new(),
            bootstrap,
            snapshot_asked: None,
            snapshot_skip: BTreeMap::new(),
            wall_clock_stamps: false,
            truncate_unstable: false,
            install_at_high: false,
            tombstones: collect::Candidates::new(),
            last_collect_ms: 0,
            collected: rec.collected,
            collect_unstable: false,
            short_reads: false,
            last_event_ms: 0,
            quorum_reads: BTreeMap::new(),
            aae: aae::AntiEntropy::default(),
            resolvers,
            resolver_ids,
            opts,
        };
        replica.tombstones = replica
            .keys
            .iter()
            .filter(|(_, s)| collect::holds_nothing_live(s))
            .map(|(slot, _)| slot.clone())
            .collect();
        if replica.starts_learning() {
            replica.bootstrap = Some(Bootstrap::learning(replica.learning_reason()));
        }
        replica.install_snapshot(None);
        Ok(replica)
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
            self.keys.update(&slot, |s| s.apply(&e.write, r.as_ref()));
            if e.write.value.is_tombstone() {
                self.tombstones.insert(slot.clone());
            }
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
                if let Some(e) = self.bootstrapping_error() {
                    out.push(Effect::Reply { id, result: Err(e) });
                    return self.after_event(now, out);
                }
                let req = WriteRequest {
                    id,
                    table,
                    key,
                    change: Change::Put { value, context },
                    durability,
                    timeout_ms,
                };
                self.client_write_paced(now, req, out)
            }
            Event::ClientAdd {
                id,
                table,
                key,
                by,
                durability,
                timeout_ms,
            } => {
                if let Some(e) = self.bootstrapping_error() {
                    out.push(Effect::Reply { id, result: Err(e) });
                    return self.after_event(now, out);
                }
                let req = WriteRequest {
                    id,
                    table,
                    key,
                    change: Change::Add(by),
                    durability,
                    timeout_ms,
                };
                self.client_write_paced(now, req, out)
            }
            Event::ClientWait {
                id,
                seq,
                regions,
                timeout_ms,
            } => self.client_wait(now, id, seq, regions, timeout_ms, out),
            Event::ClientRead {
                id,
                table,
                key,
                level,
                timeout_ms,
            } => self.client_read(now, id, (table, key), level, timeout_ms, out),
            Event::CancelWait { id } => self.cancel_wait(id),
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
            Event::SnapshotRead {
                peer,
                conn,
                request,
                result,
            } => self.snapshot_read(&peer, conn, request, result, out),
            Event::Tick => {}
            Event::AntiEntropy => self.start_anti_entropy(now, out),
        }
        self.after_event(now, out);
    }

    /// What follows every event: paced writes admitted, the next batch flushed, timers.
    fn after_event(&mut self, now: Time, out: &mut Vec<Effect>) {
        // Before the flush: what collection drops goes to disk with this event's batch.
        self.collect_tombstones(now);
        self.admit_paced(now, out);
        self.flush(out);
        self.on_tick(now, out);
        self.last_event_ms = now.mono_ms;
        self.debug_check();
    }

    /// The invariants that hold between events, checked after each one (debug builds only;
    /// the simulator runs millions of events with them on). Cheap checks only, independent of
    /// the number of keys or writes: the others sit where their state changes
    /// (`Peer::debug_check`, a batch's log in `flush`, the tail in `Tail::push`).
    fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (origin, durable) in self.durable.iter() {
            debug_assert!(
                self.received.get(origin) >= durable,
                "durable ⊆ received: {origin} durable to {durable}, received to {}",
                self.received.get(origin)
            );
        }
        debug_assert_eq!(
            self.received.get(self.opts.replica),
            self.own_seq,
            "every write of this region is applied when it is made"
        );
        debug_assert!(
            self.paced.len() <= MAX_PACED_WRITES,
            "paced writes are bounded"
        );
        debug_assert!(
            self.unanswered_writes() <= MAX_UNANSWERED_WRITES,
            "unanswered writes are bounded"
        );
        if let Some(f) = &self.in_flight {
            debug_assert!(
                f.id < self.next_persist_id,
                "the batch in flight was issued"
            );
        }
        debug_assert!(
            self.conflicts.len() <= self.opts.conflict_log_capacity.max(1),
            "the conflict log is bounded"
        );
        debug_assert!(
            self.own_commits.len() <= OWN_COMMITS_MAX,
            "own commit times are bounded"
        );
    }

    /// **Test-only; breaks convergence.** From now on, stamps local writes with the raw wall
    /// clock, as plain wall-clock last-write-wins would, skipping the HLC and the per-key
    /// causality rule. It exists so the deterministic simulator can prove its oracles catch
    /// that mistake (a negative control); nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_stamp_with_wall_clock(&mut self) {
        self.wall_clock_stamps = true;
    }

    /// **Test-only; breaks catch-up.** From now on, truncates the log up to what this region
    /// has durably applied, without waiting for the other regions to have it (as a log kept
    /// by local retention alone would). It exists so the deterministic simulator can prove its
    /// oracles catch that mistake (a negative control); nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_truncate_at_durable(&mut self) {
        self.truncate_unstable = true;
    }

    /// **Test-only; breaks snapshot installs.** From now on, a snapshot install raises the
    /// applied vector to the *join* of the chunks' vectors instead of their meet, claiming
    /// writes that keys of older chunks do not reflect (and that catch-up then never
    /// delivers). It exists so the deterministic simulator can prove its oracles catch that
    /// mistake (a negative control); nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_install_snapshot_at_high(&mut self) {
        self.install_at_high = true;
    }

    /// **Test-only; breaks convergence.** From now on, collects a tombstone once it is
    /// durable here, as collection after a grace period would, instead of once it is
    /// causally stable. It exists so the deterministic simulator can prove its oracles catch
    /// that mistake (a negative control); nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_collect_tombstones_unstably(&mut self) {
        self.collect_unstable = true;
    }

    /// **Test-only; breaks quorum reads.** From now on, a read above `one` that too few
    /// regions answer in time is answered from the answers it has (at worst this region's
    /// own state), as a read that silently falls back to a local one would. It exists so the
    /// deterministic simulator can prove its oracles catch that mistake (a negative control);
    /// nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_answer_short_reads(&mut self) {
        self.short_reads = true;
    }

    /// **Test-only; breaks the data.** Replaces the state of one key in memory and on disk
    /// (the next batch writes it; `None` drops the key), as a lost write, a disk that returned
    /// wrong bytes or a copied data directory would, bypassing replication. It exists so tests
    /// can prove anti-entropy finds and repairs such a divergence; nothing else may call it.
    #[doc(hidden)]
    pub fn unsafe_set_key_state(&mut self, table: &str, key: &[u8], state: Option<KeyState>) {
        let slot = (table.to_owned(), key.to_vec());
        match state {
            Some(s) => self.keys.update(&slot, |old| *old = s),
            None => drop(self.keys.remove(&slot)),
        }
        self.staged.keys.insert(slot);
        self.staged.checkpoint = true;
    }

    /// Whether the anti-entropy hash tree kept up to date key by key equals the tree built
    /// from scratch of the current states (for tests: every change went through the hook).
    #[doc(hidden)]
    pub fn hash_tree_is_exact(&self) -> bool {
        *self.keys.tree() == crate::hashtree::HashTree::build(self.keys.iter())
    }

    /// The root of this region's anti-entropy hash tree: two regions with equal roots hold
    /// the same live values (docs/design.md, "Anti-entropy").
    pub fn hash_tree_root(&self) -> crate::hashtree::NodeHash {
        self.keys.tree().root()
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
        if let Some(due) = self.snapshot_deadline() {
            consider(due);
        }
        if let Some(due) = self.reads_deadline() {
            consider(due);
        }
        if let Some(due) = self.aae_deadline() {
            consider(due);
        }
        if !self.tombstones.is_empty() {
            // As for relays: a pass due by the last event was made then.
            let due = self.last_collect_ms + crate::limits::COLLECT_INTERVAL_MS;
            if due > self.last_event_ms {
                consider(due);
            }
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

    fn on_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let mut rows: Option<Vec<MatrixRow>> = None;
        let standing = self.standing();
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
                    standing: standing.clone(),
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
        self.expire_reads(now, out);
        self.pump_snapshot(now, out);
        self.aae_tick(now, out);
    }

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

    /// The causal context a read of a key returns (with [`Replica::read`]'s state): the
    /// key's context joined with the collected floor, which covers the writes of keys whose
    /// tombstones were collected here (docs/design.md, "Tombstone collection"). Every region
    /// has applied the floor, so a client may write the context back anywhere.
    pub fn read_context(&self, state: Option<&KeyState>) -> VersionVector {
        let mut ctx = state.map(|s| s.context.clone()).unwrap_or_default();
        ctx.join(&self.collected);
        ctx
    }

    /// Lists keys of `table` that start with `prefix` and read as present ([`Replica::read`]'s
    /// view: a key whose only value is a write not yet durable is not listed yet), in key
    /// order, strictly after `after`, at most `limit` of them; with whether more may follow.
    /// A listing resumed from the last key it returned stays valid whatever is written
    /// meanwhile: a key present throughout is listed exactly once, one added or deleted meanwhile
    /// may or may not be (Redis's `SCAN` guarantee).
    pub fn scan(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<Vec<u8>>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded((table.to_owned(), a.to_vec())),
            _ => Bound::Included((table.to_owned(), prefix.to_vec())),
        };
        let mut keys = Vec::new();
        let candidates = self
            .keys
            .range((start, Bound::Unbounded))
            .take_while(|((t, k), _)| t == table && k.starts_with(prefix));
        for ((_, key), _) in candidates {
            if keys.len() == limit {
                return (keys, true);
            }
            if self.read(table, key).is_some_and(|s| !s.is_absent()) {
                keys.push(key.clone());
            }
        }
        (keys, false)
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
        for ((table, key), state) in self.keys.iter() {
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
}
