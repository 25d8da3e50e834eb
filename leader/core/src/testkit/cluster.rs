//! One region's process ([`Node`]) with the one interpreter of the machine's effects, and
//! regions wired by an in-memory network ([`Cluster`]) for protocol scripts.
//!
//! The interpreter does what `leader::node` does with each effect: a persist goes to the
//! disk (here when the caller completes it: at once with [`Cluster::auto_sync`], or when a
//! test or the simulator decides), a log read is served from the disk by
//! [`read_log`](super::read_log), replies and alarms are recorded, and frames and closes go
//! to the network. A close ends the connection on both ends (each gets `PeerDown`), as the
//! QUIC close does in production; the pair stays down until the test connects it again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use conflict::{Registry, ReplicaId, Resolved, Value};

use super::Disk;
use super::disk::Recovery;
use crate::{
    Alarm, Batch, BuildError, Durability, Effect, Event, LogEntry, Options, PeerMsg, PersistBatch,
    ReadAnswer, ReadError, ReadLevel, Replica, Time, WriteError, WriteReceipt,
};

/// What an effect leaves for the world outside the process: the network's part, or an event
/// for the same machine (a log read served from its disk).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Hand this event back to the machine that asked (the answer to a log read).
    Again(Event),
    /// A frame for `peer` on `conn`.
    Send {
        /// Region name.
        peer: String,
        /// The connection.
        conn: u64,
        /// The message.
        msg: PeerMsg,
    },
    /// Close connection `conn` to `peer`.
    Close {
        /// Region name.
        peer: String,
        /// The connection.
        conn: u64,
        /// Why.
        reason: String,
    },
}

/// One region's process: its machine, its disk, and what its effects left to do or to see.
pub struct Node {
    /// The machine.
    pub replica: Replica,
    /// Its replica id.
    pub id: ReplicaId,
    /// Its disk.
    pub disk: Disk,
    /// Persists issued and not completed yet, oldest first.
    pub persisting: VecDeque<PersistBatch>,
    /// `checkpoint` of every batch persisted, in order (as the machine asked).
    pub checkpoints: Vec<bool>,
    /// Every reply, in order.
    pub replies: Vec<(u64, Result<WriteReceipt, WriteError>)>,
    /// Answers to `WAIT`s ([`Effect::Waited`]): request id and the other regions that had
    /// the write.
    pub waited: Vec<(u64, Vec<String>)>,
    /// Answers to reads ([`Effect::ReadDone`]), in order.
    pub reads: Vec<(u64, Result<ReadAnswer, ReadError>)>,
    /// Every alarm, in order.
    pub alarms: Vec<Alarm>,
    /// Every close: (peer, reason).
    pub closed: Vec<(String, String)>,
    /// `Effect::ReadLog`s served: each streams from the disk log, not the memory tail.
    pub log_reads: usize,
    /// `Effect::ReadSnapshot`s served (from the disk's checkpoint).
    pub snapshot_reads: usize,
}

impl Node {
    /// A process on an empty disk.
    pub fn new(opts: Options, registry: &Registry) -> Node {
        let (node, _) = Node::start(opts, registry, Disk::default())
            .expect("the registry covers the tables of a test's options");
        node
    }

    /// A process started on `disk` as a start does ([`Disk::recover`]): the machine from the
    /// checkpointed key states and the replayed log.
    pub fn start(
        opts: Options,
        registry: &Registry,
        mut disk: Disk,
    ) -> Result<(Node, Recovery), BuildError> {
        let id = opts.replica;
        let (replica, recovery) = disk.recover(opts, registry)?;
        let node = Node {
            replica,
            id,
            disk,
            persisting: VecDeque::new(),
            checkpoints: Vec::new(),
            replies: Vec::new(),
            waited: Vec::new(),
            reads: Vec::new(),
            alarms: Vec::new(),
            closed: Vec::new(),
            log_reads: 0,
            snapshot_reads: 0,
        };
        Ok((node, recovery))
    }

    /// Performs one effect as `leader::node` does; returns what the network (or the machine
    /// again) must handle.
    pub fn perform(&mut self, effect: Effect) -> Option<Outgoing> {
        match effect {
            Effect::Persist(batch) => {
                self.persisting.push_back(batch);
                None
            }
            Effect::Send { peer, conn, msg } => Some(Outgoing::Send { peer, conn, msg }),
            Effect::Close { peer, conn, reason } => {
                self.closed.push((peer.clone(), reason.clone()));
                Some(Outgoing::Close { peer, conn, reason })
            }
            Effect::ReadLog {
                peer,
                conn,
                origin,
                from,
                to,
                max_bytes,
            } => {
                self.log_reads += 1;
                let entries = self.disk.read_log(origin, from, to, max_bytes);
                Some(Outgoing::Again(Event::LogRead {
                    peer,
                    conn,
                    origin,
                    entries,
                }))
            }
            Effect::ReadSnapshot {
                peer,
                conn,
                request,
                max_bytes,
            } => {
                self.snapshot_reads += 1;
                let piece = self.disk.read_snapshot(request.after.as_ref(), max_bytes);
                Some(Outgoing::Again(Event::SnapshotRead {
                    peer,
                    conn,
                    request,
                    result: Ok(piece),
                }))
            }
            Effect::Reply { id, result } => {
                self.replies.push((id, result));
                None
            }
            Effect::Waited { id, regions } => {
                self.waited.push((id, regions));
                None
            }
            Effect::ReadDone { id, result } => {
                self.reads.push((id, result));
                None
            }
            Effect::Alarm(a) => {
                self.alarms.push(a);
                None
            }
        }
    }

    /// Commits the oldest outstanding persist to the disk ([`Disk::commit`]): the batch and
    /// whether it was a checkpoint, or why the disk refused it (the machine asked for
    /// something inconsistent; nothing is written then).
    pub fn commit_persist(&mut self) -> Option<Result<(PersistBatch, bool), String>> {
        let batch = self.persisting.pop_front()?;
        self.checkpoints.push(batch.checkpoint);
        Some(match self.disk.commit(&batch, self.id) {
            Ok(checkpoint) => Ok((batch, checkpoint)),
            Err(e) => Err(format!("the disk refuses batch {}: {e}", batch.id)),
        })
    }

    /// Completes the oldest outstanding persist: commits it to the disk and returns the
    /// `Persisted` event to hand to the machine. Panics if the disk refuses the batch.
    pub fn complete_persist(&mut self) -> Option<Event> {
        let (batch, _) = self.commit_persist()?.unwrap_or_else(|e| panic!("{e}"));
        Some(Event::Persisted { id: batch.id })
    }

    /// The process dies: its persists in flight and the key states it kept back are lost
    /// (the disk keeps the rest). [`Node::replica`] is the dead process's until
    /// [`Node::recover`].
    pub fn crash(&mut self) {
        self.persisting.clear();
        self.disk.crash();
    }

    /// Starts a new process on the disk after a [`Node::crash`] ([`Disk::recover`]).
    pub fn recover(&mut self, opts: Options, registry: &Registry) -> Result<Recovery, BuildError> {
        let (replica, recovery) = self.disk.recover(opts, registry)?;
        self.replica = replica;
        Ok(recovery)
    }

    /// Restarts the process: a [`Node::crash`], then [`Node::recover`].
    pub fn restart(&mut self, opts: Options, registry: &Registry) {
        self.crash();
        self.recover(opts, registry)
            .expect("the registry covers the tables of a test's options");
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

/// Regions on an in-memory network that delivers every frame in order, with explicit
/// control over links, time and persistence.
pub struct Cluster {
    /// The regions, by name.
    pub nodes: BTreeMap<String, Node>,
    /// Frames in flight, in order: (from, to, conn, msg).
    pub wire: VecDeque<(String, String, u64, PeerMsg)>,
    /// Connection id per unordered pair while the link is up.
    pub conns: BTreeMap<(String, String), u64>,
    next_conn: u64,
    /// The time every region sees.
    pub now: Time,
    /// Complete persists at once (true) or hold them until [`Cluster::sync`].
    pub auto_sync: bool,
    next_request: u64,
}

impl Cluster {
    /// Regions with these options, on empty disks, not connected, at a fixed start time.
    pub fn new(opts: impl IntoIterator<Item = Options>, registry: &Registry) -> Cluster {
        let nodes = opts
            .into_iter()
            .map(|o| (o.region.clone(), Node::new(o, registry)))
            .collect();
        Cluster {
            nodes,
            wire: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            now: Time {
                wall_ms: 1_700_000_000_000,
                mono_ms: 0,
            },
            auto_sync: true,
            next_request: 1,
        }
    }

    /// Region `region`'s process.
    pub fn node(&mut self, region: &str) -> &mut Node {
        self.nodes
            .get_mut(region)
            .unwrap_or_else(|| panic!("no region {region}"))
    }

    /// Hands `ev` to `region`'s machine and performs every effect, in order.
    pub fn handle(&mut self, region: &str, ev: Event) {
        let mut out = Vec::new();
        let now = self.now;
        self.node(region).replica.handle(now, ev, &mut out);
        for effect in out {
            self.perform(region, effect);
        }
    }

    /// Performs one effect of `region`'s machine.
    pub fn perform(&mut self, region: &str, effect: Effect) {
        let persist = matches!(effect, Effect::Persist(_));
        match self.node(region).perform(effect) {
            None => {}
            Some(Outgoing::Again(ev)) => self.handle(region, ev),
            Some(Outgoing::Send { peer, conn, msg })
                if self.conns.get(&pair(region, &peer)) == Some(&conn) =>
            {
                self.wire.push_back((region.into(), peer, conn, msg));
            }
            Some(Outgoing::Close { peer, conn, .. })
                if self.conns.get(&pair(region, &peer)) == Some(&conn) =>
            {
                self.cut(region, &peer);
            }
            // A frame or close for a connection that is gone: dropped, as the transport does.
            Some(Outgoing::Send { .. } | Outgoing::Close { .. }) => {}
        }
        if persist && self.auto_sync {
            self.sync(region);
        }
    }

    /// Completes every outstanding persist of `region`.
    pub fn sync(&mut self, region: &str) {
        while let Some(ev) = self.node(region).complete_persist() {
            self.handle(region, ev);
        }
    }

    /// Opens a new connection between `a` and `b` (`PeerUp` on both ends).
    pub fn connect(&mut self, a: &str, b: &str) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(pair(a, b), conn);
        self.handle(
            a,
            Event::PeerUp {
                peer: b.into(),
                conn,
            },
        );
        self.handle(
            b,
            Event::PeerUp {
                peer: a.into(),
                conn,
            },
        );
    }

    /// Ends the connection between `a` and `b`, losing its frames in flight (`PeerDown` on
    /// both ends).
    pub fn cut(&mut self, a: &str, b: &str) {
        if let Some(conn) = self.conns.remove(&pair(a, b)) {
            self.wire
                .retain(|(f, t, c, _)| !(*c == conn && pair(f, t) == pair(a, b)));
            self.handle(
                a,
                Event::PeerDown {
                    peer: b.into(),
                    conn,
                },
            );
            self.handle(
                b,
                Event::PeerDown {
                    peer: a.into(),
                    conn,
                },
            );
        }
    }

    /// Connects every pair.
    pub fn mesh(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                self.connect(a, b);
            }
        }
    }

    /// Delivers the first frame on the wire, if any (dropped if its connection is gone).
    pub fn deliver_one(&mut self) {
        let Some((from, to, conn, msg)) = self.wire.pop_front() else {
            return;
        };
        if self.conns.get(&pair(&from, &to)) == Some(&conn) {
            self.handle(
                &to,
                Event::Frame {
                    peer: from,
                    conn,
                    msg,
                },
            );
        }
    }

    /// Delivers frames until the wire is empty (bounded, so a livelock fails the test).
    pub fn deliver(&mut self) {
        for _ in 0..100_000 {
            if self.wire.is_empty() {
                return;
            }
            self.deliver_one();
        }
        panic!("the network did not quiesce");
    }

    /// Moves time on by `ms`, ticks every region and delivers what follows.
    pub fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.wall_ms += ms;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for r in &names {
            self.handle(r, Event::Tick);
        }
        self.deliver();
    }

    /// A blind write (`None`: a delete) at `durability: local`; returns its request id.
    pub fn write(&mut self, region: &str, table: &str, key: &str, value: Option<&str>) -> u64 {
        let value = value.map_or(Value::Tombstone, |v| Value::Bytes(v.as_bytes().to_vec()));
        self.write_with(region, table, key, value, Durability::Local)
    }

    /// A blind write at `durability`, with a 1 s timeout.
    pub fn write_with(
        &mut self,
        region: &str,
        table: &str,
        key: &str,
        value: Value,
        durability: Durability,
    ) -> u64 {
        self.write_timeout(region, table, key, value, durability, 1_000)
    }

    /// A blind write at `durability` with `timeout_ms`.
    pub fn write_timeout(
        &mut self,
        region: &str,
        table: &str,
        key: &str,
        value: Value,
        durability: Durability,
        timeout_ms: u64,
    ) -> u64 {
        let id = self.next_id();
        let ev = Event::ClientWrite {
            id,
            table: table.into(),
            key: key.into(),
            value,
            context: None,
            durability,
            timeout_ms,
        };
        self.handle(region, ev);
        id
    }

    /// A fresh request id, for a client event a test builds itself.
    pub fn next_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request - 1
    }

    /// The reply to request `id` at `region`, if it came.
    pub fn reply(&self, region: &str, id: u64) -> Option<&Result<WriteReceipt, WriteError>> {
        self.nodes[region]
            .replies
            .iter()
            .find(|(rid, _)| *rid == id)
            .map(|(_, r)| r)
    }

    /// A client read of `table/key` at `region` at `level` ([`Event::ClientRead`]); returns
    /// its request id. The answer is in [`Cluster::read_answer`] once it came.
    pub fn read_at(
        &mut self,
        region: &str,
        table: &str,
        key: &str,
        level: ReadLevel,
        timeout_ms: u64,
    ) -> u64 {
        let id = self.next_id();
        let ev = Event::ClientRead {
            id,
            table: table.into(),
            key: key.as_bytes().to_vec(),
            level,
            timeout_ms,
        };
        self.handle(region, ev);
        id
    }

    /// The answer to read `id` at `region`, if it came.
    pub fn read_answer(&self, region: &str, id: u64) -> Option<&Result<ReadAnswer, ReadError>> {
        self.nodes[region]
            .reads
            .iter()
            .find(|(rid, _)| *rid == id)
            .map(|(_, r)| r)
    }

    /// What a reader sees of `table/key` at `region` (in memory).
    pub fn read(&self, region: &str, table: &str, key: &str) -> Resolved {
        let r = &self.nodes[region].replica;
        let resolver = r
            .resolver(table)
            .unwrap_or_else(|| panic!("table {table} is configured"))
            .clone();
        r.get(table, key.as_bytes())
            .cloned()
            .unwrap_or_default()
            .resolve(resolver.as_ref())
    }

    /// Hands `to` a batch of `from`'s own writes, as if `from` sent it on their connection.
    pub fn inject_batch(&mut self, to: &str, from: &str, entries: Vec<LogEntry>) {
        let conn = self.conns[&pair(to, from)];
        let msg = PeerMsg::Batch(Batch {
            origin: self.nodes[from].id,
            origin_region: from.into(),
            entries,
        });
        self.handle(
            to,
            Event::Frame {
                peer: from.into(),
                conn,
                msg,
            },
        );
    }

    /// The digests of every region's key states.
    pub fn digests(&self) -> BTreeSet<[u8; 32]> {
        self.nodes.values().map(|n| n.replica.digest()).collect()
    }
}
