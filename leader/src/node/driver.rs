//! The driver: the one task that owns the [`Replica`]. `select!` turns inputs (client
//! commands, mesh events, storage completions, timers) into [`Event`]s; every decision is the
//! core's, and this file performs the [`Effect`]s it returns, in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use conflict::VersionVector;
use leader_core::{
    Alarm, ConnId, Counters, Durability, Effect, Event, PeerMsg, ReadLevel, Replica, RequestId,
    Time,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use transport::{Mesh, MeshEvent};

use super::{
    Behind, Bootstrapping, Change, Command, Listing, NodeError, ReadResult, Repair, RequestError,
    SPLIT_BRAIN_SHOWN_FOR, Status, Written, now,
};
use crate::metrics::Metrics;
use crate::storage::{StorageError, Store};

/// Bound on requests parked waiting for their session token; beyond it they are answered
/// "behind your session" at once rather than queued without limit.
const MAX_PARKED: usize = 10_000;
/// How long a peer's stream pauses after a frame could not be queued for it (link gone or
/// queue full) before the core hears of it and rewinds. Telling the core at once recursed
/// without bound: the rewind resends at once, and while the link is gone every resend fails
/// again (a stack overflow when a peer's link timed out under load). The pause also keeps a
/// congested link from spinning the driver.
const SEND_RETRY_DELAY: Duration = Duration::from_millis(20);
/// Bound on the frames held back for one stream whose send queue is full (see
/// [`Driver::held`]). Batches are bounded by the core's window (`peer_window_bytes`) and the
/// other frames come a few per commit and heartbeat, so this is reached only when a link stays
/// stuck for long; then the stream is rewound as for a lost link.
const HELD_FRAMES_MAX: usize = 65_536;

/// The session token to hand back after seeing a key with context `seen`: the caller's
/// session joined with the part of `seen` this region has applied (a context can name writes
/// that a concurrent write superseded before they arrived here; promising those would make
/// the next read here wait for nothing it needs).
fn session_after(
    session: Option<&VersionVector>,
    seen: &VersionVector,
    applied: &VersionVector,
) -> VersionVector {
    let mut token = session.cloned().unwrap_or_default();
    for (replica, seq) in seen.iter() {
        let seq = seq.min(applied.get(replica));
        if seq > conflict::Seq::ZERO {
            token.add_dot(&conflict::Dot { replica, seq });
        }
    }
    token
}

/// A client write handed to the state machine: its session token and where to reply.
pub(super) type PendingWrite = (
    Option<VersionVector>,
    oneshot::Sender<Result<Written, RequestError>>,
);

/// A read above `one` handed to the state machine: its table, its session token and where
/// to reply.
#[derive(Debug)]
pub(super) struct PendingRead {
    table: String,
    session: Option<VersionVector>,
    reply: oneshot::Sender<Result<(ReadResult, VersionVector), RequestError>>,
}

/// A request waiting for this region to catch up with its session token.
#[derive(Debug)]
pub(super) struct Parked {
    need: VersionVector,
    since: Instant,
    deadline: Instant,
    cmd: Command,
}

/// Inputs that come back to the driver from storage and log reads.
#[derive(Debug)]
pub(super) enum Completion {
    Persisted(u64),
    PersistFailed(StorageError),
    /// A log or snapshot read for a peer ([`Event::LogRead`], [`Event::SnapshotRead`]).
    LogRead(Event),
}

/// Everything the driver owns.
pub(super) struct Driver {
    pub(super) replica: Replica,
    pub(super) mesh: Mesh<PeerMsg>,
    pub(super) store: Arc<Store>,
    pub(super) completions_tx: mpsc::Sender<Completion>,
    pub(super) pending: BTreeMap<RequestId, PendingWrite>,
    /// `WAIT`s handed to the state machine, by request id (it bounds them with the writes).
    pub(super) waits: BTreeMap<RequestId, oneshot::Sender<Vec<String>>>,
    /// Reads above `one` handed to the state machine: their session token and where to reply.
    pub(super) reads: BTreeMap<RequestId, PendingRead>,
    pub(super) parked: Vec<Parked>,
    /// Split brains seen, per region: (live, refused, when last seen).
    pub(super) split_brain: BTreeMap<String, (String, String, Instant)>,
    /// `meridian repair` runs waiting for their rounds to end: (peers, counters when
    /// started, reply).
    pub(super) repairs: Vec<(Vec<String>, Counters, oneshot::Sender<Repair>)>,
    pub(super) table_durability: BTreeMap<String, Durability>,
    /// table → the level a read consults when the request names none (`[read]`).
    pub(super) table_read: BTreeMap<String, ReadLevel>,
    pub(super) write_timeout: Duration,
    pub(super) session_wait: Duration,
    pub(super) next_request: RequestId,
    pub(super) start: Instant,
    pub(super) clock_offset_ms: i64,
    /// See [`Wiring::wall_clock_start_ms`].
    pub(super) wall_clock_start_ms: Option<u64>,
    pub(super) metrics: Arc<Metrics>,
    /// Streams with a frame that could not be queued, and when the core is told
    /// ([`Event::SendFailed`]). Until then nothing more is sent on them, so the peer never
    /// sees a gap: the core's rewind resends everything from the peer's acknowledged position.
    pub(super) broken: BTreeMap<(String, ConnId), Instant>,
    /// Streams whose send queue was full: the frames not queued yet, in order, and when to
    /// try again. They are sent as the queue drains. (Dropping them and rewinding the stream
    /// to the peer's acknowledged position, as for a lost link, resent everything the peer had
    /// not acknowledged yet, most of it still queued: on a congested link every rewind added
    /// up to a window of duplicates, which congested it further.)
    pub(super) held: BTreeMap<(String, ConnId), (VecDeque<PeerMsg>, Instant)>,
}

impl Driver {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut mesh_events: mpsc::Receiver<MeshEvent<PeerMsg>>,
        mut completions: mpsc::Receiver<Completion>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let mut effects = Vec::new();
        let result = loop {
            let parked_deadline = self.parked.iter().map(|p| p.deadline).min();
            let wake = self
                .replica
                .poll_timeout()
                // A deadline too far to represent (a WAIT with no timeout) never wakes us.
                .and_then(|ms| self.start.checked_add(Duration::from_millis(ms)))
                .into_iter()
                .chain(parked_deadline)
                .chain(self.broken.values().min().copied())
                .chain(self.held.values().map(|(_, at)| *at).min())
                .min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
                Some(cmd) = commands.recv() => match self.command(cmd) {
                    Some(ev) => ev,
                    None => continue,
                },
                Some(ev) = mesh_events.recv() => match self.mesh_event(ev) {
                    Some(ev) => ev,
                    None => continue,
                },
                Some(done) = completions.recv() => match done {
                    Completion::Persisted(id) => Event::Persisted { id },
                    Completion::LogRead(ev) => ev,
                    Completion::PersistFailed(e) => {
                        error!("storage failed, stopping this region: {e}");
                        break Err(NodeError::Storage(e));
                    }
                },
                () = sleep => Event::Tick,
            };
            self.handle(event, &mut effects);
            self.answer_repairs();
            self.unpark(&mut effects);
            self.rewind_broken(&mut effects);
            self.flush_held();
        };
        self.finish(completions).await;
        result
    }

    /// Lets the outstanding persist finish (its writes reach the disk even though their clients
    /// are no longer answered) and closes the links.
    async fn finish(self, mut completions: mpsc::Receiver<Completion>) {
        let Driver {
            mesh,
            completions_tx,
            ..
        } = self;
        // With the driver's sender gone the channel closes once the persist and any log read
        // in progress have reported (their blocking tasks hold the other senders).
        drop(completions_tx);
        let drain = async { while completions.recv().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            warn!("storage did not finish within 10 s of shutdown");
        }
        mesh.shutdown().await;
    }

    /// The time as the core sees it.
    fn now(&self) -> Time {
        now(self.start, self.clock_offset_ms, self.wall_clock_start_ms)
    }

    fn handle(&mut self, event: Event, effects: &mut Vec<Effect>) {
        self.replica.handle(self.now(), event, effects);
        for effect in effects.drain(..) {
            self.perform(effect);
        }
    }

    /// Tells the core about the streams whose pause after a failed send is over. A resend that
    /// fails again pauses its stream anew: it is not retried within this call.
    fn rewind_broken(&mut self, effects: &mut Vec<Effect>) {
        let at = Instant::now();
        let due: Vec<(String, ConnId)> = self
            .broken
            .iter()
            .filter(|(_, when)| **when <= at)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in due {
            self.broken.remove(&stream);
            let (peer, conn) = stream;
            self.handle(Event::SendFailed { peer, conn }, effects);
        }
    }

    /// Queues the held frames of every stream whose retry time has come, in order, until its
    /// queue is full again; a stream whose link is gone is rewound instead.
    fn flush_held(&mut self) {
        let at = Instant::now();
        let due: Vec<(String, ConnId)> = self
            .held
            .iter()
            .filter(|(_, (_, when))| *when <= at)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in due {
            let Some((mut frames, _)) = self.held.remove(&stream) else {
                continue;
            };
            while let Some(msg) = frames.pop_front() {
                match self.mesh.try_send(&stream.0, &msg) {
                    Ok(()) => {}
                    Err(transport::SendError::Full(_)) => {
                        frames.push_front(msg);
                        self.held
                            .insert(stream.clone(), (frames, at + SEND_RETRY_DELAY));
                        break;
                    }
                    Err(e) => {
                        debug!(peer = %stream.0, conn = stream.1, "held frames not sent: {e}; rewinding in {SEND_RETRY_DELAY:?}");
                        self.broken.insert(stream.clone(), at + SEND_RETRY_DELAY);
                        break;
                    }
                }
            }
        }
    }

    /// Serves parked requests whose session this region now covers, and answers those whose
    /// wait has run out with "behind your session".
    fn unpark(&mut self, effects: &mut Vec<Effect>) {
        if self.parked.is_empty() {
            return;
        }
        let at = Instant::now();
        for p in std::mem::take(&mut self.parked) {
            if self.covers(&p.cmd, &p.need) {
                if let Some(ev) = self.serve(p.cmd) {
                    self.handle(ev, effects);
                }
            } else if at >= p.deadline {
                let behind = self.behind(&p.cmd, &p.need, at.duration_since(p.since));
                refuse_behind(p.cmd, behind);
            } else {
                self.parked.push(p);
            }
        }
    }

    /// Whether this region has what a session token needs for `cmd`. A write needs the
    /// token's writes applied (its context is checked against what is applied). A read needs
    /// them durable too: it is served from the newest durable state of its key
    /// ([`Replica::read`]), which holds a write applied here only once it is persisted.
    fn covers(&self, cmd: &Command, need: &VersionVector) -> bool {
        self.have(cmd).dominates(need)
    }

    fn have(&self, cmd: &Command) -> &VersionVector {
        match cmd {
            Command::Read { .. } => self.replica.applied(),
            _ => self.replica.received(),
        }
    }

    fn behind(&self, cmd: &Command, need: &VersionVector, waited: Duration) -> Behind {
        let have = self.have(cmd);
        let missing = need
            .iter()
            .filter(|(r, s)| have.get(*r) < *s)
            .map(|(r, s)| {
                let region = self
                    .replica
                    .region_of(&r)
                    .map_or_else(|| r.to_string(), str::to_owned);
                (region, have.get(r).0, s.0)
            })
            .collect();
        Behind {
            region: self.replica.options().region.clone(),
            missing,
            waited_ms: waited.as_millis() as u64,
            session: need.clone(),
        }
    }

    /// Serves a command, or parks it while this region is behind its session token.
    fn command(&mut self, cmd: Command) -> Option<Event> {
        let cmd = self.refuse_while_bootstrapping(cmd)?;
        let session = match &cmd {
            Command::Write { opts, .. } => opts.session.as_ref(),
            Command::Read { opts, .. } => opts.session.as_ref(),
            _ => None,
        };
        if let Some(need) = session.filter(|s| !self.covers(&cmd, s)) {
            if self.parked.len() >= MAX_PARKED {
                let behind = self.behind(&cmd, need, Duration::ZERO);
                refuse_behind(cmd, behind);
                return None;
            }
            let since = Instant::now();
            let need = need.clone();
            self.parked.push(Parked {
                need,
                since,
                deadline: since + self.session_wait,
                cmd,
            });
            return None;
        }
        self.serve(cmd)
    }

    /// Answers a read, a listing, the conflict log or the digest with "bootstrapping" while
    /// this region is being bootstrapped from a snapshot (its key states are partial, or
    /// behind what they will reflect); hands every other command back. Writes go on: the
    /// state machine refuses them.
    fn refuse_while_bootstrapping(&self, cmd: Command) -> Option<Command> {
        let Some(b) = self.replica.bootstrap() else {
            return Some(cmd);
        };
        let refusal = Bootstrapping {
            region: self.replica.options().region.clone(),
            progress: b.progress(),
        };
        match cmd {
            Command::Read { reply, .. } => drop(reply.send(Err(refusal.into()))),
            Command::Scan { reply, .. } => drop(reply.send(Err(refusal))),
            Command::Conflicts { reply } => drop(reply.send(Err(refusal))),
            Command::Digest { reply } => drop(reply.send(Err(refusal))),
            other => return Some(other),
        }
        None
    }

    fn serve(&mut self, cmd: Command) -> Option<Event> {
        let cmd = self.refuse_while_bootstrapping(cmd)?;
        match cmd {
            Command::Write {
                table,
                key,
                change,
                opts,
                reply,
            } => {
                let id = self.next_request;
                self.next_request += 1;
                let durability = opts
                    .durability
                    .or_else(|| self.table_durability.get(&table).copied())
                    .unwrap_or_default();
                let timeout_ms = opts.timeout.unwrap_or(self.write_timeout).as_millis() as u64;
                self.pending.insert(id, (opts.session, reply));
                return Some(match change {
                    Change::Put(value) => Event::ClientWrite {
                        id,
                        table,
                        key,
                        value,
                        context: opts.context,
                        durability,
                        timeout_ms,
                    },
                    Change::Add(by) => Event::ClientAdd {
                        id,
                        table,
                        key,
                        by,
                        durability,
                        timeout_ms,
                    },
                });
            }
            Command::Wait {
                seq,
                regions,
                timeout,
                reply,
            } => {
                // Waits whose clients went away (a closed connection drops its receiver)
                // are cancelled here, so a client cannot leave waits behind without bound.
                let gone: Vec<RequestId> = self
                    .waits
                    .iter()
                    .filter(|(_, tx)| tx.is_closed())
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    self.waits.remove(&id);
                    let mut none = Vec::new();
                    self.replica
                        .handle(self.now(), Event::CancelWait { id }, &mut none);
                    debug_assert!(none.is_empty(), "a cancelled wait is not answered");
                }
                let id = self.next_request;
                self.next_request += 1;
                self.waits.insert(id, reply);
                return Some(Event::ClientWait {
                    id,
                    seq,
                    regions,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            Command::Read {
                table,
                key,
                opts,
                reply,
            } => {
                let level = opts
                    .level
                    .or_else(|| self.table_read.get(&table).copied())
                    .unwrap_or_default();
                if level == ReadLevel::One || self.replica.resolver(&table).is_none() {
                    let _ = reply.send(Ok(self.read(&table, &key, opts.session)));
                    return None;
                }
                let id = self.next_request;
                self.next_request += 1;
                let timeout = opts.timeout.unwrap_or(self.write_timeout);
                let pending = PendingRead {
                    table: table.clone(),
                    session: opts.session,
                    reply,
                };
                self.reads.insert(id, pending);
                return Some(Event::ClientRead {
                    id,
                    table,
                    key,
                    level,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Conflicts { reply } => {
                let _ = reply.send(Ok(self.replica.conflicts().cloned().collect()));
            }
            Command::Digest { reply } => {
                let _ = reply.send(Ok(self.replica.digest()));
            }
            Command::Repair { reply } => {
                let before = self.replica.counters().clone();
                let mut effects = Vec::new();
                self.handle(Event::AntiEntropy, &mut effects);
                let peers = self.replica.anti_entropy_rounds().map(str::to_owned);
                self.repairs.push((peers.collect(), before, reply));
                self.answer_repairs();
            }
            Command::Scan { scan, reply } => {
                let listing = self.replica.resolver(&scan.table).is_some().then(|| {
                    let after = scan.after.as_deref();
                    let limit = scan.limit.max(1);
                    let (keys, more) = self.replica.scan(&scan.table, &scan.prefix, after, limit);
                    Listing { keys, more }
                });
                let _ = reply.send(Ok(listing));
            }
        }
        None
    }

    fn read(
        &self,
        table: &str,
        key: &[u8],
        session: Option<VersionVector>,
    ) -> (ReadResult, VersionVector) {
        let Some(resolver) = self.replica.resolver(table) else {
            return (ReadResult::UnknownTable, session.unwrap_or_default());
        };
        // The newest durable state: never waits for a commit (see Replica::read).
        let mut state = self.replica.read(table, key).cloned().unwrap_or_default();
        // The context a client writes back: the key's, joined with the collected floor that
        // stands for the writes of keys whose tombstones were collected here.
        state.context = self.replica.read_context(Some(&state));
        let region = self.replica.options().region.clone();
        self.found(resolver.clone(), state, vec![region], session.as_ref())
    }

    /// What a read answers: the state, with its siblings' regions named, and the session
    /// token to pass on.
    fn found(
        &self,
        resolver: Arc<dyn conflict::Resolver>,
        state: conflict::KeyState,
        answered: Vec<String>,
        session: Option<&VersionVector>,
    ) -> (ReadResult, VersionVector) {
        let token = session_after(session, &state.context, self.replica.received());
        let regions = state
            .siblings
            .iter()
            .filter_map(|s| {
                self.replica
                    .region_of(&s.dot.replica)
                    .map(|r| (s.dot.replica, r.to_owned()))
            })
            .collect();
        (
            ReadResult::Found {
                state,
                resolver,
                regions,
                answered,
            },
            token,
        )
    }

    fn status(&self) -> Status {
        let applied = self
            .replica
            .applied()
            .iter()
            .map(|(r, s)| (self.replica.region_of(&r).unwrap_or("?").to_owned(), r, s.0))
            .collect();
        Status {
            region: self.replica.options().region.clone(),
            replica: self.replica.options().replica,
            applied,
            peers: self.replica.peer_views(self.now()),
            links: self.mesh.links(),
            counters: self.replica.counters().clone(),
            commits: self.store.commits(),
            send_queue_full: self.metrics.send_queue_full(),
            keys: self.replica.keys().count(),
            hlc: self.replica.hlc(),
            matrix: self.replica.matrix(self.now()),
            skew_alarms: self.replica.skew_alarms(),
            resolver_mismatches: self.replica.resolver_mismatches(),
            held_back: self.replica.held_back().clone(),
            log_retention_bytes: self.replica.options().log_retention_bytes,
            log_size: self.store.log_size(),
            log_start: self
                .replica
                .log_start()
                .iter()
                .map(|(r, s)| (self.replica.region_of(&r).unwrap_or("?").to_owned(), r, s.0))
                .collect(),
            snapshot_needed: self.replica.snapshot_needed(),
            bootstrap: self.replica.bootstrap().cloned(),
            divergences: self
                .replica
                .divergences()
                .iter()
                .map(|(p, d)| (p.clone(), d.clone()))
                .collect(),
            max_clock_offset_ms: self.replica.options().max_clock_offset_ms,
            split_brain: self
                .split_brain
                .iter()
                .filter(|(_, (_, _, at))| at.elapsed() < SPLIT_BRAIN_SHOWN_FOR)
                .map(|(region, (live, refused, at))| {
                    let ago = at.elapsed().as_millis() as u64;
                    (region.clone(), live.clone(), refused.clone(), ago)
                })
                .collect(),
        }
    }

    /// Answers the `meridian repair` runs whose rounds are all over.
    fn answer_repairs(&mut self) {
        if self.repairs.is_empty() {
            return;
        }
        let running: Vec<&str> = self.replica.anti_entropy_rounds().collect();
        let (done, waiting) = std::mem::take(&mut self.repairs)
            .into_iter()
            .partition(|(peers, _, _)| peers.iter().all(|p| !running.contains(&p.as_str())));
        self.repairs = waiting;
        let now = self.replica.counters();
        let found = self.replica.divergences();
        for (peers, before, reply) in done {
            let keys = peers
                .iter()
                .filter_map(|p| found.get(p))
                .flat_map(|d| d.keys.iter())
                .map(|k| crate::snapshot::key_list(std::slice::from_ref(k)))
                .collect();
            let report = Repair {
                rounds: now.anti_entropy_rounds - before.anti_entropy_rounds,
                diverged: now.anti_entropy_diverged - before.anti_entropy_diverged,
                repaired: now.anti_entropy_repaired - before.anti_entropy_repaired,
                in_flight: now.anti_entropy_in_flight - before.anti_entropy_in_flight,
                keys,
                peers,
            };
            let _ = reply.send(report);
        }
    }

    fn mesh_event(&mut self, ev: MeshEvent<PeerMsg>) -> Option<Event> {
        Some(match ev {
            MeshEvent::Up { peer, conn_id } => {
                info!(%peer, conn_id, "link up");
                Event::PeerUp {
                    peer,
                    conn: conn_id,
                }
            }
            MeshEvent::Down {
                peer,
                conn_id,
                reason,
            } => {
                info!(%peer, conn_id, %reason, "link down");
                // Frames held for it would go out on the peer's next connection, ahead of its
                // hello: the core restarts that stream from the acknowledgements anyway.
                self.held.remove(&(peer.clone(), conn_id));
                Event::PeerDown {
                    peer,
                    conn: conn_id,
                }
            }
            MeshEvent::Frame { peer, conn_id, msg } => Event::Frame {
                peer,
                conn: conn_id,
                msg,
            },
            MeshEvent::Rejected { remote, reason } => {
                warn!(%remote, %reason, "refused a peer connection");
                return None;
            }
            MeshEvent::SplitBrain {
                peer,
                live,
                refused,
            } => {
                // The transport refused the second process already; here it is counted,
                // logged and shown (the state machine never saw that connection).
                let parse = |s: &str| s.parse::<uuid::Uuid>().ok().map(conflict::ReplicaId);
                if let (Some(l), Some(r)) = (parse(&live), parse(&refused)) {
                    self.perform(Effect::Alarm(Alarm::SplitBrain {
                        region: peer,
                        live: l,
                        refused: r,
                    }));
                } else {
                    warn!(%peer, %live, %refused, "split brain: two live processes claim one region");
                    self.split_brain
                        .insert(peer, (live, refused, Instant::now()));
                }
                return None;
            }
        })
    }

    /// Runs a read for a peer's stream off the async workers (storage is synchronous) and
    /// hands the event it makes back through the completions.
    fn read_for_peer(&self, read: impl FnOnce(&Store) -> Event + Send + 'static) {
        let store = Arc::clone(&self.store);
        let tx = self.completions_tx.clone();
        tokio::task::spawn_blocking(move || {
            // A closed channel means the driver has gone: nobody waits for the answer.
            let _ = tx.blocking_send(Completion::LogRead(read(&store)));
        });
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(batch) => {
                self.metrics.persist_batch(&batch);
                let store = Arc::clone(&self.store);
                let tx = self.completions_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let id = batch.id;
                    let completion = match store.persist(batch) {
                        Ok(()) => Completion::Persisted(id),
                        Err(e) => Completion::PersistFailed(e),
                    };
                    // A closed channel means the driver has gone: nobody waits for the reply.
                    let _ = tx.blocking_send(completion);
                });
            }
            Effect::Send { peer, conn, msg } => {
                let stream = (peer, conn);
                if self.broken.contains_key(&stream) {
                    // Behind a lost frame: dropped, the rewind resends it.
                    return;
                }
                if let Some((frames, _)) = self.held.get_mut(&stream) {
                    if frames.len() < HELD_FRAMES_MAX {
                        frames.push_back(msg);
                        return;
                    }
                    warn!(peer = %stream.0, conn, "{HELD_FRAMES_MAX} frames held for a full send queue; dropping them and rewinding the stream");
                    self.held.remove(&stream);
                    self.broken
                        .insert(stream, Instant::now() + SEND_RETRY_DELAY);
                    return;
                }
                match self.mesh.try_send(&stream.0, &msg) {
                    Ok(()) => {}
                    Err(transport::SendError::Full(_)) => {
                        self.metrics.count_send_queue_full();
                        let retry = Instant::now() + SEND_RETRY_DELAY;
                        self.held.insert(stream, (VecDeque::from([msg]), retry));
                    }
                    Err(e) => {
                        debug!(peer = %stream.0, conn, "send failed: {e}; rewinding in {SEND_RETRY_DELAY:?}");
                        self.broken
                            .insert(stream, Instant::now() + SEND_RETRY_DELAY);
                    }
                }
            }
            Effect::Close { peer, conn, reason } => {
                // The QUIC close frame carries the reason to the peer; the link redials with
                // backoff and the next hello is judged afresh.
                warn!(%peer, conn, %reason, "closing connection");
                self.mesh.close(&peer, conn, &reason);
            }
            Effect::ReadLog {
                peer,
                conn,
                origin,
                from,
                to,
                max_bytes,
            } => self.read_for_peer(move |store| {
                let entries = store
                    .read_log(origin, from, to, max_bytes)
                    .unwrap_or_else(|e| {
                        error!(%peer, "log read failed: {e}");
                        Vec::new()
                    });
                Event::LogRead {
                    peer,
                    conn,
                    origin,
                    entries,
                }
            }),
            Effect::ReadSnapshot {
                peer,
                conn,
                request,
                max_bytes,
            } => self.read_for_peer(move |store| {
                let result = store
                    .read_snapshot(request.after.as_ref(), max_bytes)
                    .map_err(|e| {
                        error!(%peer, "snapshot read failed: {e}");
                        e.to_string()
                    });
                Event::SnapshotRead {
                    peer,
                    conn,
                    request,
                    result,
                }
            }),
            Effect::Reply { id, result } => {
                if let Some((session, reply)) = self.pending.remove(&id) {
                    let result = result.map_err(RequestError::from).map(|receipt| {
                        let applied = self.replica.received();
                        let session = session_after(session.as_ref(), &receipt.context, applied);
                        Written { receipt, session }
                    });
                    let _ = reply.send(result);
                }
            }
            Effect::ReadDone { id, result } => {
                let Some(p) = self.reads.remove(&id) else {
                    return;
                };
                let resolver = self.replica.resolver(&p.table).cloned();
                let answer = match (result, resolver) {
                    (Ok(a), Some(resolver)) => {
                        Ok(self.found(resolver, a.state, a.answered, p.session.as_ref()))
                    }
                    (Ok(_), None) => Ok((ReadResult::UnknownTable, p.session.unwrap_or_default())),
                    (Err(e), _) => Err(e.into()),
                };
                let _ = p.reply.send(answer);
            }
            Effect::Waited { id, regions } => {
                if let Some(reply) = self.waits.remove(&id) {
                    let _ = reply.send(regions);
                }
            }
            Effect::Alarm(alarm) => {
                self.metrics.alarm(&alarm);
                if let Alarm::SplitBrain {
                    region,
                    live,
                    refused,
                } = &alarm
                {
                    let seen = (format!("{live:#}"), format!("{refused:#}"), Instant::now());
                    self.split_brain.insert(region.clone(), seen);
                }
                match &alarm {
                    Alarm::ClockSkew { .. } => debug!(?alarm, "alarm"),
                    Alarm::Divergence {
                        peer,
                        found,
                        repaired,
                        keys,
                    } => warn!(
                        peer,
                        found,
                        repaired,
                        keys = %crate::snapshot::key_list(keys),
                        "anti-entropy found keys that differ from the peer's although both applied every write they hold; joined both ways"
                    ),
                    _ => warn!(?alarm, "alarm"),
                }
            }
        }
    }
}

/// Answers a parked request with "behind your session".
fn refuse_behind(cmd: Command, behind: Behind) {
    match cmd {
        Command::Write { reply, .. } => drop(reply.send(Err(behind.into()))),
        Command::Read { reply, .. } => drop(reply.send(Err(behind.into()))),
        // Only writes and reads carry session tokens.
        Command::Status { .. }
        | Command::Wait { .. }
        | Command::Conflicts { .. }
        | Command::Digest { .. }
        | Command::Repair { .. }
        | Command::Scan { .. } => {}
    }
}
