//! Hostile input to the replication protocol's decoders and to the state machine (issue 6
//! §5): random and mutated frames never panic a decoder, oversized vectors are refused while
//! decoding, and decoded-but-hostile messages from an authenticated peer never panic a
//! [`Replica`] nor make it claim writes it never received.
//!
//! The state-machine checks run one region (`a`) against a hostile peer (`b`) that has made
//! a valid hello, so every message reaches the handler it targets. After every event the
//! invariants of [`Rig::check`] must hold:
//! - the applied vector (in memory and durable) never covers a sequence number of an origin
//!   that no batch carried (every seq `1..=n` of origin `o` was received when `o` stands at
//!   `n`) or that a snapshot it installed did not claim (the peer is authenticated: its
//!   snapshot's vector is taken as it says, once the chunks are well formed), and never
//!   covers an own write that was not made;
//! - durable ⊆ received; every key state satisfies its invariants;
//! - every batch the region sends is a contiguous run of one origin, of durable writes only.
//!
//! # Why one file of about 1,300 lines
//! One rig (a region and a hostile peer, with invariants checked after every event) serves
//! every test here; the tests are a catalogue of hostile messages, each a few dozen lines.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use conflict::limits::MAX_VV_ENTRIES;
use conflict::{Dot, Hlc, KeyState, Registry, ReplicaId, Seq, Value, VersionVector, Write};
use leader_core::msg::{
    Ack, Heartbeat, NeedsSnapshot, Refuse, Resync, SnapshotChunk, SnapshotRequest,
    SnapshotUnavailable,
};
use leader_core::testkit::{self, Node, Outgoing};
use leader_core::{
    AaeHashes, AaeRepair, AaeRequest, AaeStates, AaeStatesRequest, Alarm, Batch, Durability,
    Effect, Event, Hello, LogEntry, MatrixRow, Options, PROTOCOL_VERSION, PeerLag, PeerMsg, Time,
};
use proptest::prelude::*;

/// This region's replica id (region `a`).
const A: ReplicaId = ReplicaId::from_u128(0xA);
/// The hostile peer's replica id (region `b`).
const B: ReplicaId = ReplicaId::from_u128(0xB);
/// The third region's replica id (region `c`), never connected here.
const C: ReplicaId = ReplicaId::from_u128(0xC);

const CLUSTER: &str = "test";
const START_WALL_MS: u64 = 1_700_000_000_000;

fn opts() -> Options {
    Options {
        cluster: CLUSTER.into(),
        conflict_log_capacity: 16,
        ..testkit::options("a", A, &["b", "c"])
    }
}

// ---- the rig: one region and a hostile peer ---------------------------------------------

/// Region `a`'s state machine with an in-memory "disk" and a hostile peer `b`, plus what the
/// tests need to check its invariants.
struct Rig {
    /// Region `a`: its machine and disk, its effects performed by the kit's interpreter.
    node: Node,
    now: Time,
    /// The connection `b` is on.
    conn: u64,
    /// Complete persistence steps at once.
    auto_sync: bool,
    /// Per origin, every sequence number a batch fed to the region carried.
    fed: BTreeMap<ReplicaId, BTreeSet<u64>>,
    /// Client writes handed in (an upper bound on this region's own sequence number).
    client_writes: u64,
    /// The resolver ids `a` announces, so `b`'s hello can agree with them.
    resolvers: Vec<(String, String)>,
    /// Every effect of the last [`Rig::step`].
    effects: Vec<Effect>,
    /// What snapshot installs added to the applied vector ([`leader_core::PersistBatch::installed`]).
    installed: VersionVector,
}

impl Rig {
    /// Region `a` with `b` connected on connection 1 and its valid hello accepted.
    fn new() -> Rig {
        let mut rig = Rig {
            node: Node::new(opts(), &Registry::with_builtins()),
            now: Time {
                wall_ms: START_WALL_MS,
                mono_ms: 1,
            },
            conn: 0,
            auto_sync: true,
            fed: BTreeMap::new(),
            client_writes: 0,
            resolvers: Vec::new(),
            effects: Vec::new(),
            installed: VersionVector::new(),
        };
        rig.reconnect();
        rig
    }

    /// `b` (re)connects on a fresh connection and makes a valid hello.
    fn reconnect(&mut self) {
        if self.conn != 0 {
            self.step(Event::PeerDown {
                peer: "b".into(),
                conn: self.conn,
            });
        }
        self.conn += 1;
        self.step(Event::PeerUp {
            peer: "b".into(),
            conn: self.conn,
        });
        let ours = self
            .effects
            .iter()
            .find_map(|e| match e {
                Effect::Send {
                    msg: PeerMsg::Hello(h),
                    ..
                } => Some(h.clone()),
                _ => None,
            })
            .expect("a greets a new connection with its hello");
        self.resolvers = ours.resolvers;
        let hello = self.valid_hello();
        self.frame(PeerMsg::Hello(hello));
        assert!(self.b_connected(), "b's valid hello is accepted");
    }

    fn valid_hello(&self) -> Hello {
        // A live b has made at least every write of its own that reached `a`.
        let mut applied = VersionVector::new();
        let own = self.node.replica.received().get(B);
        if own > Seq::ZERO {
            applied.add_dot(&Dot {
                replica: B,
                seq: own,
            });
        }
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: CLUSTER.into(),
            region: "b".into(),
            replica: B,
            applied,
            resolvers: self.resolvers.clone(),
            replicas: vec![(C, "c".into())],
            standing: Default::default(),
        }
    }

    fn b_connected(&self) -> bool {
        self.node
            .replica
            .peer_views(self.now)
            .iter()
            .any(|v| v.region == "b" && v.connected)
    }

    /// Hands `msg` to the region as a frame from `b` on its connection.
    fn frame(&mut self, msg: PeerMsg) {
        if let PeerMsg::Batch(b) = &msg {
            for e in &b.entries {
                if e.write.dot.replica == b.origin {
                    self.fed.entry(b.origin).or_default().insert(e.seq().0);
                }
            }
        }
        self.step(Event::Frame {
            peer: "b".into(),
            conn: self.conn,
            msg,
        });
    }

    fn client_write(&mut self, key: &str, value: Value, context: Option<VersionVector>) {
        self.client_writes += 1;
        let id = self.client_writes;
        self.step(Event::ClientWrite {
            id,
            table: "default".into(),
            key: key.as_bytes().to_vec(),
            value,
            context,
            durability: Durability::Local,
            timeout_ms: 100,
        });
    }

    /// Handles `ev` and everything it leads to (log reads, persistence if `auto_sync`);
    /// keeps every effect in `self.effects` and checks the invariants.
    fn step(&mut self, ev: Event) {
        self.effects.clear();
        let mut queue = VecDeque::from([ev]);
        let mut handled = 0;
        while let Some(ev) = queue.pop_front() {
            handled += 1;
            assert!(handled < 10_000, "the region does not quiesce");
            let mut out = Vec::new();
            self.node.replica.handle(self.now, ev, &mut out);
            for effect in &out {
                if let Effect::Send {
                    msg: PeerMsg::Batch(b),
                    ..
                } = effect
                {
                    self.check_outgoing(b);
                }
            }
            self.effects.extend(out.iter().cloned());
            for effect in &out {
                if let Effect::Persist(b) = effect {
                    self.installed.join(&b.installed);
                }
            }
            for effect in out {
                if let Some(Outgoing::Again(ev)) = self.node.perform(effect) {
                    queue.push_back(ev);
                }
            }
            while self.auto_sync
                && let Some(ev) = self.node.complete_persist()
            {
                queue.push_back(ev);
            }
            self.check();
        }
    }

    /// Completes the outstanding persistence steps (when `auto_sync` is off).
    fn sync(&mut self) {
        while let Some(ev) = self.node.complete_persist() {
            self.step(ev);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.wall_ms += ms;
        self.step(Event::Tick);
    }

    /// A batch this region sends is a gap-free run of one origin's durable writes.
    fn check_outgoing(&self, b: &Batch) {
        let first = b.entries.first().map_or(0, |e| e.seq().0);
        for (i, e) in b.entries.iter().enumerate() {
            assert_eq!(
                e.write.dot.replica, b.origin,
                "a sent a batch mixing origins"
            );
            assert_eq!(e.seq().0, first + i as u64, "a sent a batch with a gap");
            assert!(
                self.node.replica.applied().covers(&e.write.dot),
                "a sent {} before it was durable",
                e.write.dot
            );
        }
    }

    /// The invariants listed in the module docs.
    fn check(&self) {
        let received = self.node.replica.received();
        let durable = self.node.replica.applied();
        assert!(
            received.dominates(durable),
            "durable {durable} is ahead of received {received}"
        );
        for (origin, seq) in received.iter() {
            if origin == A {
                assert!(
                    seq.0 <= self.client_writes,
                    "a claims own write {seq} after {} client writes",
                    self.client_writes
                );
                continue;
            }
            let fed = self.fed.get(&origin);
            let from = self.installed.get(origin).0;
            let all_fed = seq.0 <= from
                || fed.is_some_and(|f| f.range(from + 1..=seq.0).count() as u64 == seq.0 - from);
            assert!(
                all_fed,
                "a's applied vector covers {origin}:{seq} but not every write up to it was received"
            );
        }
        for ((table, key), state) in self.node.replica.keys() {
            assert_eq!(
                state.check_invariants(),
                Ok(()),
                "{table}/{}",
                key.escape_ascii()
            );
        }
    }

    fn alarms(&self) -> Vec<&Alarm> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Alarm(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn closed(&self) -> Vec<&str> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Close { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect()
    }

    fn sent_to_b(&self) -> Vec<&PeerMsg> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { peer, msg, .. } if peer == "b" => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn resyncs(&self) -> Vec<&Resync> {
        self.sent_to_b()
            .into_iter()
            .filter_map(|m| match m {
                PeerMsg::Resync(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

fn write(origin: ReplicaId, seq: u64, context: VersionVector, value: Value) -> Write {
    Write {
        dot: Dot::new(origin, Seq(seq)),
        hlc: Hlc::new(START_WALL_MS, seq as u16),
        context,
        value,
    }
}

fn entry(table: &str, key: &str, w: Write) -> LogEntry {
    LogEntry {
        table: table.into(),
        key: key.as_bytes().to_vec(),
        write: w,
    }
}

/// A run of `origin`'s writes with the given sequence numbers, blind, to distinct keys.
fn batch(origin: ReplicaId, seqs: &[u64]) -> Batch {
    Batch {
        origin,
        origin_region: "c".into(),
        entries: seqs
            .iter()
            .map(|&s| {
                let value = Value::Bytes(format!("v{s}").into_bytes());
                entry(
                    "default",
                    &format!("k{s}"),
                    write(origin, s, VersionVector::new(), value),
                )
            })
            .collect(),
    }
}

fn vv(entries: &[(ReplicaId, u64)]) -> VersionVector {
    entries.iter().map(|&(r, s)| Dot::new(r, Seq(s))).collect()
}

/// A vector with `n` entries for replicas that are none of `A`, `B`, `C`, each at `seq`.
fn wide_vv(n: usize, seq: u64) -> VersionVector {
    (1..=n as u128)
        .map(|i| Dot::new(ReplicaId::from_u128(0x1_0000 + i), Seq(seq)))
        .collect()
}

// ---- (a) and (b): decoders ---------------------------------------------------------------

/// Every decoder a peer's bytes can reach, fed the same bytes; none may panic.
fn decode_everything(bytes: &[u8]) {
    if let Ok(msg) = postcard::from_bytes::<PeerMsg>(bytes) {
        // Whatever decodes re-encodes and decodes to itself: no value the decoder accepts
        // is one the encoder cannot reproduce.
        let again = postcard::to_stdvec(&msg).expect("a decoded message encodes");
        assert_eq!(postcard::from_bytes::<PeerMsg>(&again).ok(), Some(msg));
    }
    let _ = postcard::take_from_bytes::<PeerMsg>(bytes);
    let _ = postcard::from_bytes::<Hello>(bytes);
    let _ = postcard::from_bytes::<Batch>(bytes);
    let _ = postcard::from_bytes::<LogEntry>(bytes);
    let _ = postcard::from_bytes::<Write>(bytes);
    let _ = postcard::from_bytes::<Heartbeat>(bytes);
    let _ = postcard::from_bytes::<MatrixRow>(bytes);
    let _ = postcard::from_bytes::<VersionVector>(bytes);
    let _ = VersionVector::from_bytes(bytes);
    let _ = KeyState::from_bytes(bytes);
}

fn arb_replica() -> impl Strategy<Value = ReplicaId> {
    prop_oneof![
        Just(A),
        Just(B),
        Just(C),
        any::<u128>().prop_map(ReplicaId::from_u128),
    ]
}

/// Sequence numbers biased to the edges: small ones (so runs line up), zero and the top.
fn arb_seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
}

fn arb_vv() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((arb_replica(), arb_seq()), 0..5)
        .prop_map(|es| es.into_iter().map(|(r, s)| Dot::new(r, Seq(s))).collect())
}

fn arb_hlc() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        (0u64..10_000).prop_map(|d| Hlc::new(START_WALL_MS + d, 0)),
        Just(Hlc::ZERO),
        Just(Hlc::MAX),
        any::<u64>().prop_map(Hlc::from_u64),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Tombstone),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
    ]
}

fn arb_table() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("default".to_owned()),
        Just("mv".to_owned()),
        "[a-z]{0,6}",
    ]
}

fn arb_region() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        ".{0,8}",
    ]
}

/// Contexts a well-behaved origin could send (other origins, small seqs) most of the time,
/// and anything at all otherwise.
fn arb_context() -> impl Strategy<Value = VersionVector> {
    let plausible = prop::collection::vec(
        (
            prop_oneof![Just(B), Just(C), Just(ReplicaId::from_u128(7))],
            0u64..4,
        ),
        0..3,
    )
    .prop_map(|es| es.into_iter().map(|(r, s)| Dot::new(r, Seq(s))).collect());
    prop_oneof![3 => plausible, 1 => arb_vv()]
}

fn arb_entry(origin: ReplicaId, seq: u64) -> impl Strategy<Value = LogEntry> {
    (
        arb_table(),
        prop_oneof![Just("k".to_owned()), "[a-z]{0,3}"],
        arb_hlc(),
        arb_context(),
        arb_value(),
    )
        .prop_map(move |(table, key, hlc, context, value)| LogEntry {
            table,
            key: key.into_bytes(),
            write: Write {
                dot: Dot::new(origin, Seq(seq)),
                hlc,
                context,
                value,
            },
        })
}

/// Batches that line up with what the region expects (so writes get applied) and batches
/// whose entries claim anything at all.
fn arb_batch() -> impl Strategy<Value = Batch> {
    let run = (
        prop_oneof![Just(B), Just(C), Just(A), Just(ReplicaId::from_u128(7))],
        1u64..5,
        0usize..5,
        arb_region(),
    )
        .prop_flat_map(|(origin, start, len, region)| {
            let entries: Vec<_> = (0..len as u64)
                .map(|i| arb_entry(origin, start + i))
                .collect();
            (Just(origin), Just(region), entries)
        });
    let chaos = (
        arb_replica(),
        arb_region(),
        prop::collection::vec(
            (arb_replica(), arb_seq()).prop_flat_map(|(o, s)| arb_entry(o, s)),
            0..5,
        ),
    );
    prop_oneof![3 => run, 1 => chaos].prop_map(|(origin, origin_region, entries)| Batch {
        origin,
        origin_region,
        entries,
    })
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
        prop_oneof![3 => Just(CLUSTER.to_owned()), 1 => ".{0,8}"],
        prop_oneof![3 => Just("b".to_owned()), 1 => arb_region()],
        prop_oneof![3 => Just(B), 1 => arb_replica()],
        arb_vv(),
        prop::collection::vec((arb_table(), ".{0,10}"), 0..3),
        prop::collection::vec((arb_replica(), arb_region()), 0..3),
    )
        .prop_map(
            |(protocol, cluster, region, replica, applied, resolvers, replicas)| Hello {
                protocol,
                cluster,
                region,
                replica,
                applied,
                resolvers,
                replicas,
                standing: Default::default(),
            },
        )
}

fn arb_row() -> impl Strategy<Value = MatrixRow> {
    let lag = (
        arb_region(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<Option<i64>>(),
    )
        .prop_map(
            |(peer, lag_writes, lag_ms, connected, clock_offset_ms)| PeerLag {
                peer,
                lag_writes,
                lag_ms,
                connected,
                clock_offset_ms,
            },
        );
    (
        arb_region(),
        arb_replica(),
        arb_hlc(),
        arb_vv(),
        prop::collection::vec(lag, 0..3),
        prop::collection::vec((arb_table(), ".{0,10}"), 0..3),
    )
        .prop_map(
            |(region, replica, version, applied, lags, resolvers)| MatrixRow {
                region,
                replica,
                version,
                applied,
                lags,
                resolvers,
            },
        )
}

/// Wall-clock times near the rig's clock, or anywhere at all.
fn arb_wall() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..20_000).prop_map(|d| START_WALL_MS - 10_000 + d),
        Just(0),
        Just(u64::MAX),
        Just(1 << 63),
        any::<u64>(),
    ]
}

fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        arb_wall(),
        arb_hlc(),
        prop::option::of((arb_wall(), arb_wall())),
        prop::collection::vec(arb_row(), 0..3),
    )
        .prop_map(|(wall_ms, hlc, echo, rows)| Heartbeat {
            wall_ms,
            hlc,
            echo,
            rows,
            standing: Default::default(),
        })
}

/// Messages of every variant, valid in shape and hostile in content.
fn arb_msg() -> impl Strategy<Value = PeerMsg> {
    prop_oneof![
        1 => arb_hello().prop_map(PeerMsg::Hello),
        4 => arb_batch().prop_map(PeerMsg::Batch),
        2 => arb_vv().prop_map(|applied| PeerMsg::Ack(Ack { applied })),
        2 => arb_heartbeat().prop_map(PeerMsg::Heartbeat),
        1 => (arb_replica(), arb_seq()).prop_map(|(origin, s)| PeerMsg::Resync(Resync {
            origin,
            applied: Seq(s),
        })),
        1 => ".{0,16}".prop_map(|reason| PeerMsg::Refuse(Refuse { reason })),
        1 => (arb_replica(), ".{0,8}", arb_seq(), arb_seq()).prop_map(
            |(origin, origin_region, from, start)| PeerMsg::NeedsSnapshot(NeedsSnapshot {
                origin,
                origin_region,
                from: Seq(from),
                log_start: Seq(start),
            })
        ),
        1 => (proptest::option::of((arb_table(), "[a-z]{0,4}")), any::<u64>(), proptest::option::of(arb_vv()))
            .prop_map(|(after, max_bytes, low)| PeerMsg::SnapshotRequest(SnapshotRequest {
                after: after.map(|(t, k)| (t, k.into_bytes())),
                max_bytes,
                low,
                partial_ok: false,
            })),
        1 => arb_chunk().prop_map(PeerMsg::SnapshotChunk),
        1 => ".{0,16}".prop_map(|reason| PeerMsg::SnapshotUnavailable(SnapshotUnavailable { reason })),
        1 => (any::<u64>(), 0u8..7, proptest::collection::vec(0u32..70_000, 0..20))
            .prop_map(|(round, level, nodes)| PeerMsg::AaeRequest(AaeRequest { round, level, nodes })),
        1 => (any::<u64>(), proptest::collection::vec(any::<[u8; 16]>(), 0..20))
            .prop_map(|(round, hashes)| PeerMsg::AaeHashes(AaeHashes { round, hashes })),
        1 => (any::<u64>(), proptest::collection::vec(0u32..70_000, 0..20))
            .prop_map(|(round, leaves)| PeerMsg::AaeStatesRequest(AaeStatesRequest { round, leaves })),
        1 => (any::<u64>(), arb_chunk()).prop_map(|(round, c)| PeerMsg::AaeRepair(AaeRepair {
            round,
            applied: c.applied,
            states: c.states,
            held_back: Vec::new(),
        })),
        1 => (any::<u64>(), arb_chunk(), proptest::collection::vec(0u32..70_000, 0..4))
            .prop_map(|(round, c, leaves)| PeerMsg::AaeStates(AaeStates {
                round,
                applied: c.applied,
                leaves,
                states: c.states,
                held_back: Vec::new(),
            })),
    ]
}

/// A snapshot chunk of random (well-formed) key states, in random key order.
fn arb_chunk() -> impl Strategy<Value = SnapshotChunk> {
    let state = proptest::collection::vec(arb_entry(B, 1), 0..3).prop_map(|entries| {
        let mut s = KeyState::new();
        for e in entries {
            s.apply(&e.write, &conflict::MultiValue);
        }
        s
    });
    (
        proptest::collection::vec((arb_table(), "[a-z]{0,4}", state), 0..4),
        arb_vv(),
        any::<bool>(),
        any::<bool>(),
        arb_hlc(),
    )
        .prop_map(|(states, applied, done, restart, hlc)| SnapshotChunk {
            after: None,
            upper: applied.clone(),
            partial: false,
            collected: VersionVector::new(),
            applied,
            states: states
                .into_iter()
                .map(|(t, k, s)| (t, k.into_bytes(), s))
                .collect(),
            done,
            total_keys: 3,
            replicas: vec![(C, "c".into())],
            hlc,
            restart,
        })
}

/// One way to damage an encoded frame.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// Repeats a slice, as a confused sender re-sending part of a buffer would.
    Duplicate {
        at: usize,
        len: usize,
    },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            at,
            prop_oneof![Just(0xff), Just(0x80), Just(0), any::<u8>()]
        )
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (at, prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, 1usize..16).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    let pos = |at: usize, extra: usize| at % (n + extra).max(1);
    match m {
        Mutation::Flip { at, bit } if n > 0 => bytes[pos(*at, 0)] ^= 1 << bit,
        Mutation::Set { at, byte } if n > 0 => bytes[pos(*at, 0)] = *byte,
        Mutation::Insert { at, bytes: ins } => {
            let at = pos(*at, 1);
            bytes.splice(at..at, ins.iter().copied());
        }
        Mutation::Delete { at, len } if n > 0 => {
            let at = pos(*at, 0);
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => bytes.truncate(pos(*at, 1)),
        Mutation::Duplicate { at, len } if n > 0 => {
            let at = pos(*at, 0);
            let piece = bytes[at..(at + len).min(n)].to_vec();
            bytes.splice(at..at, piece);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// (a) Random bytes never panic any decoder of the protocol.
    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// (a) Random bytes behind a valid variant tag reach each variant's own decoder.
    #[test]
    fn random_bodies_of_every_variant_never_panic(
        tag in 0u8..8,
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        decode_everything(&bytes);
    }

    /// (b) Valid frames of every variant, damaged, never panic a decoder; undamaged ones
    /// round-trip exactly.
    #[test]
    fn mutated_frames_never_panic_a_decoder(
        msg in arb_msg(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut bytes = postcard::to_stdvec(&msg).expect("a message encodes");
        prop_assert_eq!(postcard::from_bytes::<PeerMsg>(&bytes).ok(), Some(msg.clone()));
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        decode_everything(&bytes);
    }

    /// (b) + (c) A damaged frame that still decodes is handed to the state machine: no panic,
    /// no broken invariant.
    #[test]
    fn mutated_frames_that_decode_never_break_a_replica(
        msg in arb_msg(),
        mutations in prop::collection::vec(arb_mutation(), 1..3),
    ) {
        let mut bytes = postcard::to_stdvec(&msg).expect("a message encodes");
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        if let Ok(decoded) = postcard::from_bytes::<PeerMsg>(&bytes) {
            let mut rig = Rig::new();
            rig.client_write("k", Value::Bytes(b"mine".to_vec()), None);
            rig.frame(decoded);
            rig.tick(600);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// (c) Sequences of hostile messages from an authenticated peer, interleaved with client
    /// writes, persistence and time: the replica never panics and its invariants hold after
    /// every event (see [`Rig::check`]). When it closes or refuses `b`, `b` reconnects.
    #[test]
    fn hostile_message_sequences_never_break_a_replica(
        steps in prop::collection::vec(
            prop_oneof![
                6 => arb_msg().prop_map(Step::Frame),
                4 => (
                    prop_oneof![Just(B), Just(C), Just(ReplicaId::from_u128(7))],
                    prop_oneof![6 => Just(0i64), 1 => -3i64..0, 1 => 1i64..3],
                    prop::collection::vec(arb_entry(C, 1), 1..5),
                ).prop_map(|(origin, offset, entries)| Step::Run(origin, offset, entries)),
                1 => (arb_value(), prop::option::of(arb_vv())).prop_map(|(v, c)| Step::Write(v, c)),
                1 => Just(Step::Sync),
                1 => (1u64..1500).prop_map(Step::Tick),
            ],
            1..24,
        ),
        auto_sync in any::<bool>(),
    ) {
        let mut rig = Rig::new();
        rig.auto_sync = auto_sync;
        for step in steps {
            match step {
                Step::Frame(msg) => rig.frame(msg),
                Step::Run(origin, offset, mut entries) => {
                    // A run that starts where the region stands (or near it): it gets applied.
                    let next = rig.node.replica.received().get(origin).0 as i64 + 1;
                    let start = (next + offset).max(1) as u64;
                    for (i, e) in entries.iter_mut().enumerate() {
                        e.write.dot = Dot::new(origin, Seq(start + i as u64));
                    }
                    let origin_region = "c".to_owned();
                    rig.frame(PeerMsg::Batch(Batch { origin, origin_region, entries }));
                }
                Step::Write(value, context) => rig.client_write("k", value, context),
                Step::Sync => rig.sync(),
                Step::Tick(ms) => rig.tick(ms),
            }
            if !rig.b_connected() {
                rig.reconnect();
            }
        }
        rig.sync();
        rig.tick(2_000);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Frame(PeerMsg),
    /// A batch of `origin`'s writes starting `offset` from the one the region expects next.
    Run(ReplicaId, i64, Vec<LogEntry>),
    Write(Value, Option<VersionVector>),
    Sync,
    Tick(u64),
}

// ---- bounded memory: oversized vectors are refused while decoding ------------------------

/// Encodes a `PeerMsg` whose only vector is `v`, in each place a vector travels.
fn messages_carrying(v: &VersionVector) -> Vec<(&'static str, PeerMsg)> {
    let row = MatrixRow {
        region: "c".into(),
        replica: C,
        version: Hlc::ZERO,
        applied: v.clone(),
        lags: Vec::new(),
        resolvers: Vec::new(),
    };
    vec![
        (
            "Hello.applied",
            PeerMsg::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                cluster: CLUSTER.into(),
                region: "b".into(),
                replica: B,
                applied: v.clone(),
                resolvers: Vec::new(),
                replicas: Vec::new(),
                standing: Default::default(),
            }),
        ),
        ("Ack.applied", PeerMsg::Ack(Ack { applied: v.clone() })),
        (
            "Batch.entries[0].write.context",
            PeerMsg::Batch(Batch {
                origin: B,
                origin_region: "b".into(),
                entries: vec![entry(
                    "default",
                    "k",
                    write(B, u64::MAX, v.clone(), Value::Tombstone),
                )],
            }),
        ),
        (
            "Heartbeat.rows[0].applied",
            PeerMsg::Heartbeat(Heartbeat {
                wall_ms: 0,
                hlc: Hlc::ZERO,
                echo: None,
                rows: vec![row],
                standing: Default::default(),
            }),
        ),
    ]
}

#[test]
fn a_vector_over_the_entry_limit_is_refused_wherever_it_travels() {
    let at_limit = wide_vv(MAX_VV_ENTRIES, 1);
    for (place, msg) in messages_carrying(&at_limit) {
        let bytes = postcard::to_stdvec(&msg).unwrap();
        assert_eq!(
            postcard::from_bytes::<PeerMsg>(&bytes).ok(),
            Some(msg),
            "{place}: a vector of exactly {MAX_VV_ENTRIES} entries decodes"
        );
    }
    // One entry more: serialise the vector as plain pairs (VersionVector itself cannot hold
    // it) and splice it where the vector goes, by encoding a message around a marker vector.
    let over: Vec<(ReplicaId, Seq)> = (1..=MAX_VV_ENTRIES as u128 + 1)
        .map(|i| (ReplicaId::from_u128(i), Seq(1)))
        .collect();
    let over_bytes = postcard::to_stdvec(&over).unwrap();
    let marker = vv(&[(ReplicaId::from_u128(u128::MAX), 0x5eed)]);
    let marker_bytes = marker.to_bytes();
    for (place, msg) in messages_carrying(&marker) {
        let bytes = postcard::to_stdvec(&msg).unwrap();
        let at = bytes
            .windows(marker_bytes.len())
            .position(|w| w == marker_bytes)
            .expect("the marker vector is in the encoding");
        let mut hostile = bytes[..at].to_vec();
        hostile.extend_from_slice(&over_bytes);
        hostile.extend_from_slice(&bytes[at + marker_bytes.len()..]);
        assert!(
            postcard::from_bytes::<PeerMsg>(&hostile).is_err(),
            "{place}: a vector of {} entries must be refused while decoding",
            MAX_VV_ENTRIES + 1
        );
    }
}

#[test]
fn a_length_prefix_claiming_billions_of_elements_fails_without_allocating_them() {
    // Each of these claims u64::MAX elements (or bytes) and then ends. Decoding must fail;
    // serde caps what it preallocates for a claimed length (about 1 MiB), and postcard reads a
    // string in place, so nothing close to the claim is ever reserved.
    let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Hello (tag 0): protocol, then a cluster string of u64::MAX bytes.
    cases.push(("Hello.cluster", [&[0u8, 1][..], &huge].concat()));
    // Ack (tag 2): a vector of u64::MAX entries.
    cases.push(("Ack.applied", [&[2u8][..], &huge].concat()));
    // Batch (tag 1): origin, empty region, then u64::MAX entries.
    let mut batch = vec![1u8];
    batch.extend(postcard::to_stdvec(&B).unwrap());
    batch.push(0);
    batch.extend_from_slice(&huge);
    cases.push(("Batch.entries", batch));
    // Heartbeat (tag 3): wall, hlc, no echo, then u64::MAX rows.
    cases.push(("Heartbeat.rows", [&[3u8, 0, 0, 0][..], &huge].concat()));
    for (place, bytes) in cases {
        // Were the claim honoured, this would abort on allocation failure instead.
        assert!(
            postcard::from_bytes::<PeerMsg>(&bytes).is_err(),
            "{place}: a claim of u64::MAX elements with no data must not decode"
        );
    }
}

// ---- (c) hostile messages, one by one, with exact expectations --------------------------

#[test]
fn a_batch_carrying_another_origins_write_closes_the_connection() {
    let mut rig = Rig::new();
    let mut b = batch(C, &[1, 2]);
    b.entries[1].write.dot.replica = B;
    rig.frame(PeerMsg::Batch(b));
    assert!(
        matches!(rig.alarms()[..], [Alarm::ProtocolViolation { .. }]),
        "{:?}",
        rig.effects
    );
    assert_eq!(rig.closed().len(), 1);
    assert!(rig.closed()[0].contains("carries a write of"));
    assert_eq!(
        rig.node.replica.received().get(C),
        Seq::ZERO,
        "nothing applied"
    );
    assert!(!rig.b_connected());
}

#[test]
fn out_of_order_and_huge_sequence_numbers_are_answered_with_resync() {
    let mut rig = Rig::new();
    // Starts past what a has: nothing applies, a asks for a restart after 0.
    rig.frame(PeerMsg::Batch(batch(C, &[2, 1])));
    assert_eq!(rig.resyncs().len(), 1);
    assert_eq!(rig.resyncs()[0].applied, Seq::ZERO);
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
    // 1 applies, u64::MAX is a gap.
    rig.frame(PeerMsg::Batch(batch(C, &[1, u64::MAX])));
    assert_eq!(rig.resyncs().len(), 1);
    assert_eq!(rig.resyncs()[0].applied, Seq(1));
    assert_eq!(rig.node.replica.received().get(C), Seq(1));
    // u64::MAX alone: the request for a restart after 1 is unanswered, so this is taken for
    // the rest of the run already on the wire and dropped without asking again...
    rig.frame(PeerMsg::Batch(batch(C, &[u64::MAX])));
    assert_eq!(rig.resyncs().len(), 0);
    assert_eq!(rig.node.replica.received().get(C), Seq(1));
    assert_eq!(rig.node.replica.counters().gaps_dropped, 1);
    // ...until the request has gone unanswered for a second: it may have been lost.
    rig.now.mono_ms += 1_000;
    rig.frame(PeerMsg::Batch(batch(C, &[u64::MAX])));
    assert_eq!(rig.resyncs().len(), 1);
    assert_eq!(rig.resyncs()[0].applied, Seq(1));
    assert_eq!(rig.node.replica.received().get(C), Seq(1));
    assert!(rig.b_connected(), "gaps are normal with relays: no close");
    // Sequence number 0 names no write: a malformed batch.
    rig.frame(PeerMsg::Batch(batch(C, &[0])));
    assert!(
        rig.closed()[0].contains("sequence number 0"),
        "{:?}",
        rig.effects
    );
    assert_eq!(rig.node.replica.received().get(C), Seq(1));
}

#[test]
fn a_batch_of_our_own_writes_is_dropped() {
    let mut rig = Rig::new();
    rig.frame(PeerMsg::Batch(batch(A, &[1, 2, 3])));
    assert_eq!(rig.node.replica.received().get(A), Seq::ZERO);
    assert!(rig.node.replica.keys().next().is_none());
}

#[test]
fn a_write_that_supersedes_itself_is_refused() {
    let mut rig = Rig::new();
    let w = write(C, 1, vv(&[(C, 5)]), Value::Bytes(b"x".to_vec()));
    rig.frame(PeerMsg::Batch(Batch {
        origin: C,
        origin_region: "c".into(),
        entries: vec![entry("default", "k", w)],
    }));
    assert!(
        matches!(rig.alarms()[..], [Alarm::ProtocolViolation { .. }]),
        "{:?}",
        rig.effects
    );
    assert!(
        rig.closed()[0].contains("supersede itself"),
        "{:?}",
        rig.closed()
    );
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
}

#[test]
fn a_write_with_an_oversized_value_is_refused() {
    let mut rig = Rig::new();
    let value = Value::Bytes(vec![7; conflict::limits::MAX_VALUE_BYTES + 1]);
    let w = write(C, 1, VersionVector::new(), value);
    rig.frame(PeerMsg::Batch(Batch {
        origin: C,
        origin_region: "c".into(),
        entries: vec![entry("default", "k", w)],
    }));
    assert!(
        rig.closed()[0].contains("more than the limit"),
        "{:?}",
        rig.closed()
    );
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
}

/// A replicated write whose context claims writes of ours that we never made would poison
/// the key: our next write to it would find its dot already covered and be refused.
#[test]
fn a_write_whose_context_claims_our_future_writes_is_refused() {
    let mut rig = Rig::new();
    rig.client_write("k", Value::Bytes(b"mine".to_vec()), None);
    let w = write(C, 1, vv(&[(A, 1_000)]), Value::Bytes(b"x".to_vec()));
    rig.frame(PeerMsg::Batch(Batch {
        origin: C,
        origin_region: "c".into(),
        entries: vec![entry("default", "k", w)],
    }));
    assert!(
        matches!(rig.alarms()[..], [Alarm::ProtocolViolation { .. }]),
        "{:?}",
        rig.effects
    );
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
    // Our own writes to the key still work.
    rig.reconnect();
    rig.client_write("k", Value::Bytes(b"mine again".to_vec()), None);
    let replies: Vec<_> = rig
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(replies[..], [Ok(_)]),
        "the key still takes our writes: {replies:?}"
    );
}

#[test]
fn a_write_with_a_wide_context_and_an_unknown_table_is_quarantined_not_applied() {
    let mut rig = Rig::new();
    let w = write(
        C,
        1,
        wide_vv(MAX_VV_ENTRIES, u64::MAX),
        Value::Bytes(b"x".to_vec()),
    );
    rig.frame(PeerMsg::Batch(Batch {
        origin: C,
        origin_region: "c".into(),
        entries: vec![entry("no-such-table", "k", w)],
    }));
    assert!(
        matches!(rig.alarms()[..], [Alarm::UnknownTable { .. }]),
        "{:?}",
        rig.effects
    );
    assert_eq!(rig.node.replica.counters().quarantined, 1);
    assert!(rig.node.replica.keys().next().is_none());
}

#[test]
fn hellos_with_absurd_fields_are_refused_or_survived() {
    let mut rig = Rig::new();
    let cases: Vec<(&str, Hello)> = vec![
        (
            "protocol",
            Hello {
                protocol: u32::MAX,
                ..rig.valid_hello()
            },
        ),
        (
            "cluster",
            Hello {
                cluster: "other".into(),
                ..rig.valid_hello()
            },
        ),
        (
            "region",
            Hello {
                region: "c".into(),
                ..rig.valid_hello()
            },
        ),
        (
            "own replica id",
            Hello {
                replica: A,
                ..rig.valid_hello()
            },
        ),
    ];
    for (what, hello) in cases {
        rig.frame(PeerMsg::Hello(hello));
        assert!(
            matches!(rig.alarms()[..], [Alarm::HelloRefused { .. }]),
            "{what}: {:?}",
            rig.effects
        );
        assert!(
            rig.sent_to_b()
                .iter()
                .any(|m| matches!(m, PeerMsg::Refuse(_))),
            "{what}"
        );
        assert_eq!(rig.closed().len(), 1, "{what}");
        rig.reconnect();
    }
    // Absurd vectors: every entry at u64::MAX, including one claiming all of our writes.
    rig.client_write("k", Value::Bytes(b"mine".to_vec()), None);
    let mut applied = wide_vv(MAX_VV_ENTRIES - 2, u64::MAX);
    applied.join(&vv(&[(A, u64::MAX), (C, u64::MAX)]));
    rig.frame(PeerMsg::Hello(Hello {
        applied,
        replicas: vec![(C, "c".into()); 64],
        ..rig.valid_hello()
    }));
    assert!(rig.b_connected());
    rig.tick(600);
    rig.client_write("k2", Value::Bytes(b"more".to_vec()), None);
    rig.tick(600);
    assert_eq!(rig.node.replica.received().get(A), Seq(2));
}

#[test]
fn acks_beyond_anything_sent_do_not_break_streaming() {
    let mut rig = Rig::new();
    rig.client_write("k", Value::Bytes(b"mine".to_vec()), None);
    for claim in [5, u64::MAX - 1, u64::MAX] {
        rig.frame(PeerMsg::Ack(Ack {
            applied: vv(&[(A, claim), (C, claim), (ReplicaId::from_u128(99), claim)]),
        }));
        rig.tick(600);
    }
    rig.client_write("k", Value::Bytes(b"again".to_vec()), None);
    rig.tick(600);
    assert_eq!(rig.node.replica.received().get(A), Seq(2));
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
}

#[test]
fn a_second_replica_claiming_a_connected_region_is_refused_as_split_brain() {
    let mut rig = Rig::new();
    rig.step(Event::PeerUp {
        peer: "b".into(),
        conn: 99,
    });
    rig.step(Event::Frame {
        peer: "b".into(),
        conn: 99,
        msg: PeerMsg::Hello(Hello {
            replica: ReplicaId::from_u128(0xBB),
            ..rig.valid_hello()
        }),
    });
    assert!(
        matches!(rig.alarms()[..], [Alarm::SplitBrain { .. }]),
        "{:?}",
        rig.effects
    );
    assert!(rig.b_connected(), "the live connection stays");
}

#[test]
fn heartbeats_with_extreme_times_and_unknown_rows_do_not_panic() {
    let mut rig = Rig::new();
    let extremes = [0, 1, 1 << 63, u64::MAX, START_WALL_MS, START_WALL_MS * 2];
    for &wall_ms in &extremes {
        for &t1 in &extremes {
            for &t2 in &extremes {
                rig.frame(PeerMsg::Heartbeat(Heartbeat {
                    wall_ms,
                    hlc: Hlc::from_u64(wall_ms),
                    echo: Some((t1, t2)),
                    rows: Vec::new(),
                    standing: Default::default(),
                }));
            }
        }
    }
    let _ = rig.node.replica.peer_views(rig.now);
    // Rows for regions that do not exist, and one claiming to be us.
    let row = |region: &str| MatrixRow {
        region: region.into(),
        replica: ReplicaId::from_u128(0xDEAD),
        version: Hlc::MAX,
        applied: wide_vv(8, u64::MAX),
        lags: vec![PeerLag {
            peer: "nowhere".into(),
            lag_writes: u64::MAX,
            lag_ms: u64::MAX,
            connected: true,
            clock_offset_ms: Some(i64::MIN),
        }],
        resolvers: vec![("default".into(), "evil@9".into())],
    };
    rig.frame(PeerMsg::Heartbeat(Heartbeat {
        wall_ms: START_WALL_MS,
        hlc: Hlc::new(START_WALL_MS, 0),
        echo: None,
        rows: vec![row("a"), row("ghost"), row("b")],
        standing: Default::default(),
    }));
    let _ = rig.node.replica.matrix(rig.now);
    let _ = rig.node.replica.resolver_mismatches();
    rig.tick(600);
}

#[test]
fn resyncs_for_unknown_origins_and_huge_positions_do_not_panic() {
    let mut rig = Rig::new();
    rig.client_write("k", Value::Bytes(b"mine".to_vec()), None);
    for (origin, applied) in [
        (A, u64::MAX),
        (A, 0),
        (ReplicaId::from_u128(42), u64::MAX),
        (C, 3),
    ] {
        rig.frame(PeerMsg::Resync(Resync {
            origin,
            applied: Seq(applied),
        }));
        rig.tick(600);
    }
}

#[test]
fn frames_before_the_hello_or_from_strangers_are_not_acted_on() {
    let mut rig = Rig::new();
    rig.step(Event::PeerUp {
        peer: "c".into(),
        conn: 50,
    });
    rig.step(Event::Frame {
        peer: "c".into(),
        conn: 50,
        msg: PeerMsg::Batch(batch(C, &[1])),
    });
    assert_eq!(
        rig.node.replica.received().get(C),
        Seq::ZERO,
        "no hello yet"
    );
    rig.step(Event::Frame {
        peer: "mallory".into(),
        conn: 51,
        msg: PeerMsg::Batch(batch(C, &[1])),
    });
    assert_eq!(rig.closed().len(), 1, "a stranger is closed");
    assert_eq!(rig.node.replica.received().get(C), Seq::ZERO);
}

/// A peer can invent a region name per heartbeat; rows of regions outside the configuration
/// must not pile up in the lag matrix or the resolver table.
#[test]
fn heartbeat_rows_for_unknown_regions_do_not_accumulate() {
    let mut rig = Rig::new();
    for i in 0..1_000u64 {
        let row = MatrixRow {
            region: format!("ghost-{i}"),
            replica: ReplicaId::from_u128(0x1_0000 + u128::from(i)),
            version: Hlc::new(START_WALL_MS, 0),
            applied: VersionVector::new(),
            lags: vec![PeerLag {
                peer: "a".into(),
                lag_writes: 1,
                lag_ms: 1,
                connected: true,
                clock_offset_ms: None,
            }],
            resolvers: vec![("default".into(), "evil@9".into())],
        };
        rig.frame(PeerMsg::Heartbeat(Heartbeat {
            wall_ms: START_WALL_MS,
            hlc: Hlc::new(START_WALL_MS, 0),
            echo: None,
            rows: vec![row],
            standing: Default::default(),
        }));
    }
    let origins: BTreeSet<String> = rig
        .node
        .replica
        .matrix(rig.now)
        .into_iter()
        .map(|c| c.origin)
        .collect();
    assert_eq!(
        origins,
        BTreeSet::from(["a".to_owned()]),
        "only a's own row"
    );
    assert!(
        rig.node
            .replica
            .resolver_mismatches()
            .iter()
            .all(|(region, ..)| !region.starts_with("ghost")),
        "{:?}",
        rig.node.replica.resolver_mismatches()
    );
}

/// A hostile snapshot: `a` is told it needs one and asks `b`, which answers with malformed
/// chunks (keys out of order or before the cursor, a vector claiming writes `a` never made,
/// sequence numbers no replica reaches): each closes the connection and installs nothing;
/// `a` asks again on the next connection, and a well-formed chunk installs.
#[test]
fn malformed_snapshot_chunks_close_the_connection_and_install_nothing() {
    let mut rig = Rig::new();
    let needs = |rig: &mut Rig| {
        rig.frame(PeerMsg::NeedsSnapshot(NeedsSnapshot {
            origin: B,
            origin_region: "b".into(),
            from: Seq(1),
            log_start: Seq(5),
        }));
        rig.tick(1);
    };
    needs(&mut rig);
    assert!(
        rig.node.replica.bootstrap().is_some(),
        "a bootstraps from b"
    );
    let state = |seq: u64| one_write(B, seq);
    let chunk = |states: Vec<(&str, &str, KeyState)>, applied: VersionVector| SnapshotChunk {
        after: None,
        upper: applied.clone(),
        partial: false,
        collected: VersionVector::new(),
        applied,
        states: states
            .into_iter()
            .map(|(t, k, s)| (t.to_owned(), k.as_bytes().to_vec(), s))
            .collect(),
        done: true,
        total_keys: 2,
        replicas: vec![],
        hlc: Hlc::new(START_WALL_MS, 0),
        restart: false,
    };
    let bad = [
        (
            chunk(
                vec![("default", "k2", state(2)), ("default", "k1", state(1))],
                vv(&[(B, 4)]),
            ),
            "ascending",
        ),
        (
            chunk(vec![("default", "k1", state(1))], vv(&[(B, 4), (A, 3)])),
            "never made",
        ),
        (
            chunk(vec![("default", "k1", state(1))], vv(&[(B, u64::MAX)])),
            "unreachable",
        ),
    ];
    for (c, why) in bad {
        rig.frame(PeerMsg::SnapshotChunk(c));
        let closed = rig.closed();
        assert!(closed.iter().any(|r| r.contains(why)), "{why}: {closed:?}");
        assert!(
            rig.node.replica.keys().next().is_none(),
            "nothing installed"
        );
        assert_eq!(rig.node.replica.received().get(B), Seq::ZERO);
        rig.reconnect();
        assert!(
            rig.sent_to_b()
                .iter()
                .any(|m| matches!(m, PeerMsg::SnapshotRequest(r) if r.after.is_none())),
            "a asks again on the new connection"
        );
    }
    rig.frame(PeerMsg::SnapshotChunk(chunk(
        vec![("default", "k1", state(1)), ("default", "k2", state(2))],
        vv(&[(B, 4)]),
    )));
    rig.tick(1);
    assert_eq!(
        rig.node.replica.received().get(B),
        Seq(4),
        "installed at the chunk's vector"
    );
    assert_eq!(rig.node.replica.keys().count(), 2);
}

/// Hostile quorum-read traffic: a request for an oversized key, a reply or a repair whose
/// state claims writes of `a` it never made (or has a sibling its context does not cover)
/// close the connection and join nothing; an answer nobody asked for is ignored; a
/// well-formed repair is joined.
#[test]
fn hostile_quorum_read_messages_close_the_connection_and_join_nothing() {
    use leader_core::{ReadLevel, ReadRepair, ReadReply, ReadRequest};
    let mut rig = Rig::new();
    rig.frame(PeerMsg::ReadRequest(ReadRequest {
        id: 1,
        table: "default".into(),
        key: vec![b'k'; conflict::limits::MAX_KEY_BYTES + 1],
    }));
    assert!(rig.closed().iter().any(|r| r.contains("read request")));
    rig.reconnect();
    // An answer to a read never asked: ignored.
    rig.frame(PeerMsg::ReadReply(ReadReply {
        id: 77,
        state: Some(one_write(B, 1)),
        refused: None,
        spreadable: VersionVector::new(),
    }));
    assert!(rig.closed().is_empty());
    assert!(rig.node.replica.keys().next().is_none());
    // A read a asks of b, answered with a state claiming a's own writes.
    rig.step(Event::ClientRead {
        id: 5,
        table: "default".into(),
        key: b"k".to_vec(),
        level: ReadLevel::Quorum,
        timeout_ms: 100,
    });
    let asked = rig
        .sent_to_b()
        .iter()
        .find_map(|m| match m {
            PeerMsg::ReadRequest(r) => Some(r.id),
            _ => None,
        })
        .expect("a asks b");
    rig.frame(PeerMsg::ReadReply(ReadReply {
        id: asked,
        state: Some(one_write(A, 9)),
        refused: None,
        spreadable: VersionVector::new(),
    }));
    assert!(rig.closed().iter().any(|r| r.contains("never made")));
    assert!(rig.node.replica.keys().next().is_none(), "nothing joined");
    rig.reconnect();
    let mut uncovered = one_write(B, 2);
    uncovered.context = VersionVector::new();
    let bad_repairs = [one_write(A, 3), one_write(B, u64::MAX), uncovered];
    for s in bad_repairs {
        rig.frame(PeerMsg::ReadRepair(ReadRepair {
            table: "default".into(),
            key: b"k".to_vec(),
            state: s,
        }));
        assert!(rig.closed().iter().any(|r| r.contains("read repair")));
        assert!(rig.node.replica.keys().next().is_none(), "nothing joined");
        rig.reconnect();
    }
    rig.frame(PeerMsg::ReadRepair(ReadRepair {
        table: "default".into(),
        key: b"k".to_vec(),
        state: one_write(B, 2),
    }));
    assert!(rig.closed().is_empty());
    assert_eq!(
        rig.node.replica.keys().count(),
        1,
        "a well-formed repair joins"
    );
    assert_eq!(rig.node.replica.counters().read_repairs_applied, 1);
}

// ---- anti-entropy (issue 16) ---------------------------------------------------------------

/// A key state holding one write `origin:seq` (last-write-wins).
fn one_write(origin: ReplicaId, seq: u64) -> KeyState {
    let mut s = KeyState::new();
    s.apply(
        &write(
            origin,
            seq,
            VersionVector::new(),
            Value::Bytes(b"v".to_vec()),
        ),
        &conflict::Lww,
    );
    s
}

/// Malformed anti-entropy messages close the connection with the reason and change no key:
/// tree indices out of range, unordered or too many; states out of order, with keys too
/// long, or with vectors claiming writes `a` never made or sequence numbers no replica
/// reaches; an answer whose hashes do not match the nodes asked for. Answers to no round
/// of ours are ignored.
#[test]
fn malformed_anti_entropy_messages_close_the_connection_and_change_nothing() {
    let mut rig = Rig::new();
    rig.frame(PeerMsg::Batch(batch(B, &[1, 2])));
    let keys_before: Vec<_> = rig
        .node
        .replica
        .keys()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    let repair = |states: Vec<(&str, Vec<u8>, KeyState)>, applied: VersionVector| {
        PeerMsg::AaeRepair(AaeRepair {
            round: 1,
            applied,
            states: states
                .into_iter()
                .map(|(t, k, s)| (t.to_owned(), k, s))
                .collect(),
            held_back: Vec::new(),
        })
    };
    let bad = [
        (
            PeerMsg::AaeRequest(AaeRequest {
                round: 1,
                level: 5,
                nodes: vec![0],
            }),
            "level",
        ),
        (
            PeerMsg::AaeRequest(AaeRequest {
                round: 1,
                level: 1,
                nodes: vec![3, 2],
            }),
            "ascend",
        ),
        (
            PeerMsg::AaeRequest(AaeRequest {
                round: 1,
                level: 1,
                nodes: vec![16],
            }),
            "width",
        ),
        (
            PeerMsg::AaeRequest(AaeRequest {
                round: 1,
                level: 4,
                nodes: (0..5_000).collect(),
            }),
            "at most",
        ),
        (
            PeerMsg::AaeStatesRequest(AaeStatesRequest {
                round: 1,
                leaves: vec![65_536],
            }),
            "below",
        ),
        (
            repair(
                vec![
                    ("default", b"k2".to_vec(), one_write(B, 2)),
                    ("default", b"k1".to_vec(), one_write(B, 1)),
                ],
                vv(&[(B, 2)]),
            ),
            "ascending",
        ),
        (
            repair(
                vec![("default", b"k".to_vec(), one_write(A, 3))],
                vv(&[(B, 2)]),
            ),
            "never made",
        ),
        (
            repair(
                vec![("default", b"k".to_vec(), one_write(B, 1))],
                vv(&[(B, u64::MAX)]),
            ),
            "unreachable",
        ),
        (
            repair(
                vec![("default", vec![b'k'; 2000], one_write(B, 1))],
                vv(&[(B, 2)]),
            ),
            "limits",
        ),
    ];
    for (msg, why) in bad {
        rig.frame(msg);
        let closed = rig.closed();
        assert!(closed.iter().any(|r| r.contains(why)), "{why}: {closed:?}");
        let keys: Vec<_> = rig
            .node
            .replica
            .keys()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        assert_eq!(keys, keys_before, "{why}: nothing joined");
        rig.reconnect();
    }
    // Answers to no round of ours: ignored.
    rig.frame(PeerMsg::AaeHashes(AaeHashes {
        round: 7,
        hashes: vec![[0; 16]],
    }));
    rig.frame(PeerMsg::AaeStates(AaeStates {
        round: 7,
        applied: VersionVector::new(),
        leaves: vec![1],
        states: Vec::new(),
        held_back: Vec::new(),
    }));
    assert!(rig.closed().is_empty() && rig.b_connected());
    // A round of ours answered with the wrong number of hashes.
    rig.step(Event::AntiEntropy);
    let round = rig
        .sent_to_b()
        .iter()
        .find_map(|m| match m {
            PeerMsg::AaeRequest(r) => Some(r.round),
            _ => None,
        })
        .expect("a asks b for its root");
    rig.frame(PeerMsg::AaeHashes(AaeHashes {
        round,
        hashes: vec![[0; 16]; 3],
    }));
    assert!(
        rig.closed()
            .iter()
            .any(|r| r.contains("3 hashes for 1 nodes")),
        "{:?}",
        rig.closed()
    );
}

/// A repair joins only states whose every write this region has applied: a hostile (or
/// ahead) peer cannot slip in writes by anti-entropy that replication has not delivered.
#[test]
fn an_anti_entropy_repair_joins_nothing_this_region_has_not_applied() {
    let mut rig = Rig::new();
    rig.frame(PeerMsg::Batch(batch(B, &[1, 2])));
    let before = rig.node.replica.digest();
    rig.frame(PeerMsg::AaeRepair(AaeRepair {
        round: 1,
        applied: vv(&[(B, 9)]),
        states: vec![("default".into(), b"new".to_vec(), one_write(B, 9))],
        held_back: Vec::new(),
    }));
    assert!(rig.closed().is_empty());
    assert_eq!(
        rig.node.replica.digest(),
        before,
        "B:9 is in flight: not joined"
    );
    assert_eq!(rig.node.replica.counters().anti_entropy_in_flight, 1);
    assert!(rig.node.replica.get("default", b"new").is_none());
}
