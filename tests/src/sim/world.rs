//! The world: regions, the event queue, and the loop that hands events to the machines and
//! performs their effects, as `leader::node` does; plus crashes, restarts, clock jumps and
//! the end of a run (healing, quiescence, final oracles).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use conflict::examples::Counter;
use conflict::{Dot, Registry, ReplicaId, Seq, VersionVector};
use leader_core::{Effect, Event, Options, PersistBatch, Replica, Time};

use super::net::Net;
use super::params::{Doom, MAX_CLOCK_OFFSET_MS, Params, REGION_NAMES};
use super::rng::Rng;
use super::stats::{FaultCounts, WorkCounts};
use super::trace::Trace;
use super::truth::{Broken, Slot, TableKind, Truth};
use super::workload::{Deferred, OpRec};
use super::{Failure, Outcome, Rollout, RunOptions, Sabotage};
use leader_core::testkit::{Disk, DiskLimits};

/// Wall-clock time at virtual time zero (Unix ms, November 2023).
pub(super) const BASE_WALL_MS: i64 = 1_700_000_000_000;
/// Bound on events per run: a livelock fails the seed instead of hanging the test.
const MAX_EVENTS: u64 = 3_000_000;
/// How long the world may take to settle once the workload has ended and faults stopped.
const QUIESCE_LIMIT_MS: u64 = 60_000;
/// Size of the rare huge clock jumps, ms.
const HUGE_JUMP_MS: u64 = 3_600_000;
/// Interval between convergence probes once the workload has ended.
const PROBE_MS: u64 = 250;
/// The table [`Rollout::AddTable`] adds.
pub(super) const NEW_TABLE: &str = "new";
/// Longest a region being reconfigured stays down, ms.
const RECONFIGURE_DOWN_MS: u64 = 500;

/// Version 2 of the example counter resolver: the same merge under a new version, as a
/// release that changes what `resolve` answers for some input would ship it
/// ([`Rollout::UpgradeResolver`]).
#[derive(Debug)]
struct CounterV2;

impl conflict::Resolver for CounterV2 {
    fn name(&self) -> &str {
        Counter.name()
    }
    fn version(&self) -> u32 {
        Counter.version() + 1
    }
    fn is_semilattice(&self) -> bool {
        Counter.is_semilattice()
    }
    fn prunes_losers(&self) -> bool {
        Counter.prunes_losers()
    }
    fn resolve(&self, siblings: &[conflict::Sibling]) -> conflict::Resolved {
        Counter.resolve(siblings)
    }
    fn check_value(&self, value: &[u8]) -> Result<(), conflict::InvalidValue> {
        Counter.check_value(value)
    }
}

/// One region: its machine (while its process lives), its disk, its clock.
pub(super) struct Region {
    pub(super) name: String,
    pub(super) id: ReplicaId,
    pub(super) opts: Options,
    /// The machine; `None` while crashed.
    pub(super) replica: Option<Replica>,
    /// Incarnation: bumped at every crash, so events of a dead process are ignored.
    pub(super) inc: u64,
    /// Virtual time the current process started (its monotonic clock's zero).
    pub(super) boot_ms: u64,
    pub(super) disk: Disk,
    pub(super) offset_ms: i64,
    pub(super) drift_ppm: i64,
    /// The persist in flight (the machine promises at most one).
    pub(super) persisting: Option<PersistBatch>,
    pub(super) tick_gen: u64,
    pub(super) tick_at: Option<u64>,
    /// Lost for good.
    pub(super) doomed: bool,
    /// Vectors seen at the last check, for monotonicity and the gap check.
    pub(super) seen_applied: VersionVector,
    pub(super) seen_received: VersionVector,
    /// Log reads outstanding.
    pub(super) reads_out: u32,
    /// Whether the region runs the new configuration of the run's [`Rollout`].
    pub(super) reconfigured: bool,
    /// Client writes handed in that have not taken a dot yet (request id, key), in arrival
    /// order: the machine takes them in this order, at once or when flow control admits them.
    pub(super) untaken: VecDeque<(u64, Slot)>,
}

impl Region {
    pub(super) fn alive(&self) -> bool {
        self.replica.is_some()
    }
}

/// Something scheduled to happen at a virtual time.
#[derive(Debug)]
pub(super) enum Ev {
    /// A client operation at a region (and the next one is scheduled).
    Op(usize),
    /// The write half of a read-modify-write that read in another region.
    OpWrite(u64),
    Persisted {
        r: usize,
        inc: u64,
        id: u64,
    },
    LogRead {
        r: usize,
        inc: u64,
        peer: String,
        conn: u64,
        origin: ReplicaId,
        from: Seq,
        to: Seq,
        max_bytes: usize,
    },
    Tick {
        r: usize,
        generation: u64,
    },
    /// Deliver the head of a connection's channel in direction `dir`.
    Deliver {
        conn: u64,
        dir: usize,
    },
    Dial {
        a: usize,
        b: usize,
    },
    IdleCheck {
        conn: u64,
    },
    Partition,
    Heal,
    Crash,
    Restart(usize),
    /// Region `r` takes the new configuration of the rollout (restarted with it).
    Reconfigure(usize),
    ClockJump,
    ConnReset,
    EndWorkload,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Clients write and faults fire.
    Workload,
    /// Faults stopped and healed; waiting for the regions to settle.
    Quiesce,
    /// Settled and checked.
    Done,
}

/// The whole simulated deployment.
pub(super) struct World {
    pub(super) seed: u64,
    pub(super) p: Params,
    pub(super) opts: RunOptions,
    pub(super) now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    pub(super) regions: Vec<Region>,
    pub(super) net: Net,
    pub(super) truth: Truth,
    /// Client writes by request id - 1.
    pub(super) ops: Vec<OpRec>,
    pub(super) deferred: BTreeMap<u64, Deferred>,
    /// Per (region, key): the newest write of that region to the key acknowledged to its
    /// client (a successful reply, timed out or not). A read there must see it.
    pub(super) last_acked: BTreeMap<(usize, Slot), Dot>,
    /// When each dot was last handed to a client write at its origin.
    pub(super) created: BTreeMap<Dot, u64>,
    /// Dots handed out a second time (after a crash lost the first write), and when.
    pub(super) reused: BTreeMap<Dot, u64>,
    pub(super) rng_net: Rng,
    pub(super) rng_fault: Rng,
    pub(super) rng_work: Rng,
    pub(super) rng_disk: Rng,
    pub(super) faults: FaultCounts,
    pub(super) work: WorkCounts,
    pub(super) phase: Phase,
    quiesce_from: u64,
    pub(super) trace: Trace,
    registry: Registry,
    /// The registry of regions that took [`Rollout::UpgradeResolver`]'s new configuration.
    registry_v2: Registry,
    pub(super) tables: BTreeMap<String, TableKind>,
    /// A region to lose for good once the current event is fully handled.
    pub(super) pending_doom: Option<usize>,
    pub(super) doom: Option<Doom>,
}

/// The disk bounds of one region: in one seed in four production's (a checkpoint only when a
/// batch asks for one), else small enough that checkpoints, and replays after a crash, happen
/// within a run.
fn disk_limits(rng: &mut Rng) -> DiskLimits {
    if rng.chance(0.25) {
        return DiskLimits::default();
    }
    DiskLimits {
        checkpoint_keys: rng.range(2, 24) as usize,
        checkpoint_entries: rng.range(4, 96) as usize,
        checkpoint_bytes: rng.range(2_000, 40_000) as usize,
        replay_chunk_bytes: rng.range(100, 3_000) as usize,
    }
}

/// Options every region's machine gets.
fn options(p: &Params, r: usize) -> Options {
    let k = &p.knobs;
    Options {
        cluster: "sim".into(),
        region: REGION_NAMES[r].into(),
        replica: ReplicaId::from_u128(p.replica_ids[r]),
        peers: (0..p.regions)
            .filter(|q| *q != r)
            .map(|q| REGION_NAMES[q].to_owned())
            .collect(),
        tables: BTreeMap::from([
            ("lww".to_owned(), "lww".to_owned()),
            ("mv".to_owned(), "multi-value".to_owned()),
            ("ctr".to_owned(), "counter".to_owned()),
        ]),
        max_clock_offset_ms: MAX_CLOCK_OFFSET_MS,
        relay_delay_ms: k.relay_delay_ms,
        heartbeat_interval_ms: k.heartbeat_interval_ms,
        peer_window_bytes: k.peer_window_bytes,
        max_batch_bytes: k.max_batch_bytes,
        max_siblings: k.max_siblings,
        conflict_log_capacity: 64,
        log_tail_bytes: k.log_tail_bytes,
        pace_lag_writes: k.pace_lag_writes,
        log_retention_bytes: u64::MAX,
    }
}

impl World {
    pub(super) fn new(seed: u64, opts: RunOptions) -> Self {
        let p = Params::new(seed);
        let doom = match opts.doom {
            None => p.doom,
            Some(false) => None,
            Some(true) => Some(Doom {
                after_ms: p.doom.map_or(1_000 + seed % 5_000, |d| d.after_ms),
                correlated: true,
            }),
        };
        let mut registry = Registry::with_builtins();
        registry
            .register(Arc::new(Counter))
            .expect("the counter's name is valid and free");
        let mut registry_v2 = Registry::with_builtins();
        registry_v2
            .register(Arc::new(CounterV2))
            .expect("the counter's name is valid and free");
        // From a stream of its own, so the other draws of a seed keep their meaning.
        let mut rng_limits = Rng::stream(seed, 6);
        let disk_limits: Vec<DiskLimits> = (0..p.regions)
            .map(|_| disk_limits(&mut rng_limits))
            .collect();
        let regions = (0..p.regions)
            .map(|r| Region {
                name: REGION_NAMES[r].to_owned(),
                id: ReplicaId::from_u128(p.replica_ids[r]),
                opts: options(&p, r),
                replica: None,
                inc: 0,
                boot_ms: 0,
                disk: Disk::with_limits(disk_limits[r]),
                offset_ms: p.clocks[r].0,
                drift_ppm: p.clocks[r].1,
                persisting: None,
                tick_gen: 0,
                tick_at: None,
                doomed: false,
                seen_applied: VersionVector::new(),
                seen_received: VersionVector::new(),
                reads_out: 0,
                reconfigured: false,
                untaken: VecDeque::new(),
            })
            .collect();
        World {
            seed,
            trace: Trace::new(opts.verbose, opts.echo),
            opts,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            regions,
            net: Net::default(),
            truth: Truth::default(),
            ops: Vec::new(),
            deferred: BTreeMap::new(),
            last_acked: BTreeMap::new(),
            created: BTreeMap::new(),
            reused: BTreeMap::new(),
            rng_net: Rng::stream(seed, 2),
            rng_fault: Rng::stream(seed, 3),
            rng_work: Rng::stream(seed, 4),
            rng_disk: Rng::stream(seed, 5),
            faults: FaultCounts::default(),
            work: WorkCounts::default(),
            phase: Phase::Workload,
            quiesce_from: 0,
            registry,
            registry_v2,
            tables: BTreeMap::from([
                ("lww".to_owned(), TableKind::Lww),
                ("mv".to_owned(), TableKind::MultiValue),
                ("ctr".to_owned(), TableKind::Counter),
                (NEW_TABLE.to_owned(), TableKind::Lww),
            ]),
            pending_doom: None,
            doom,
            p,
        }
    }

    /// Runs the seed to the end and reports.
    pub(super) fn run(mut self) -> Outcome {
        let result = self.boot().and_then(|()| self.event_loop());
        for r in 0..self.regions.len() {
            self.count_machine(r);
        }
        let tail = self.trace.tail();
        Outcome {
            seed: self.seed,
            result,
            faults: self.faults,
            work: self.work,
            virtual_ms: self.now,
            tail,
            trace_hash: self.trace.finish(),
        }
    }

    pub(super) fn fail(&self, (oracle, detail): Broken) -> Failure {
        Failure {
            oracle,
            detail,
            at_ms: self.now,
        }
    }

    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    pub(super) fn alive(&self, r: usize) -> bool {
        self.regions[r].alive()
    }

    pub(super) fn index_of(&self, name: &str) -> usize {
        self.regions
            .iter()
            .position(|g| g.name == name)
            .expect("machines only name configured regions")
    }

    /// The time region `r` sees now: skewed wall clock, monotonic since its process started.
    pub(super) fn time(&self, r: usize) -> Time {
        let g = &self.regions[r];
        let now = self.now as i64;
        let wall = BASE_WALL_MS + now + g.offset_ms + now * g.drift_ppm / 1_000_000;
        Time {
            wall_ms: wall as u64,
            mono_ms: self.now - g.boot_ms,
        }
    }

    fn boot(&mut self) -> Result<(), Failure> {
        for r in 0..self.regions.len() {
            if self.regions[r].offset_ms.unsigned_abs() > MAX_CLOCK_OFFSET_MS {
                self.faults.skew_beyond_bound += 1;
            }
            self.start_process(r)?;
        }
        for a in 0..self.regions.len() {
            for b in a + 1..self.regions.len() {
                self.establish(a, b)?;
            }
        }
        for r in 0..self.regions.len() {
            let first = self.rng_work.range(0, self.p.op_interval_ms);
            self.push(first, Ev::Op(r));
        }
        let gaps = [
            (self.p.partition_gap_ms, Ev::Partition),
            (self.p.crash_gap_ms, Ev::Crash),
            (self.p.jump_gap_ms, Ev::ClockJump),
            (self.p.reset_gap_ms, Ev::ConnReset),
        ];
        for (gap, ev) in gaps {
            if let Some((lo, hi)) = gap {
                let at = self.rng_fault.range(lo, hi);
                self.push(at, ev);
            }
        }
        if self.opts.rollout.is_some() {
            // One region after another, spread over the workload, the last well before its end.
            let n = self.regions.len() as u64;
            for r in 0..self.regions.len() {
                let at = self.p.workload_ms * (r as u64 + 1) / (n + 2);
                self.push(at, Ev::Reconfigure(r));
            }
        }
        self.push(self.p.workload_ms, Ev::EndWorkload);
        Ok(())
    }

    /// The resolvers region `r`'s configuration registers.
    pub(super) fn registry_of(&self, r: usize) -> &Registry {
        let upgraded = self.opts.rollout == Some(Rollout::UpgradeResolver);
        if self.regions[r].reconfigured && upgraded {
            &self.registry_v2
        } else {
            &self.registry
        }
    }

    /// Builds region `r`'s machine from its disk.
    fn start_process(&mut self, r: usize) -> Result<(), Failure> {
        // As `leader::node` does: the checkpointed key states, the log after the checkpoint
        // replayed in chunks, then the quarantined writes this configuration accepts.
        let mut disk = std::mem::take(&mut self.regions[r].disk);
        let recovered = disk.recover(self.regions[r].opts.clone(), self.registry_of(r));
        self.regions[r].disk = disk;
        let (replica, recovery) = recovered.map_err(|e| Failure {
            oracle: "build",
            detail: e.to_string(),
            at_ms: self.now,
        })?;
        if recovery.replayed > 0 {
            self.faults.replays += 1;
            self.faults.replayed_entries += recovery.replayed;
        }
        let g = &mut self.regions[r];
        g.replica = Some(replica);
        if self.opts.sabotage == Some(Sabotage::WallClockLww) {
            g.replica
                .as_mut()
                .expect("just built")
                .unsafe_stamp_with_wall_clock();
        }
        if self.opts.sabotage == Some(Sabotage::TruncateUnstable) {
            g.replica
                .as_mut()
                .expect("just built")
                .unsafe_truncate_at_durable();
        }
        g.boot_ms = self.now;
        g.seen_applied = g.disk.applied.clone();
        g.seen_received = g.disk.applied.clone();
        g.tick_at = None;
        Ok(())
    }

    fn event_loop(&mut self) -> Result<(), Failure> {
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            self.now = at;
            self.work.events += 1;
            if self.work.events > MAX_EVENTS {
                let detail = format!("more than {MAX_EVENTS} events: a livelock?");
                return Err(self.fail(("liveness", detail)));
            }
            self.dispatch(ev)?;
            if let Some(r) = self.pending_doom.take() {
                self.lose_for_good(r);
            }
            if self.phase == Phase::Done {
                return Ok(());
            }
        }
        Err(self.fail(("liveness", "the event queue ran dry".into())))
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Op(r) => self.client_op(r),
            Ev::OpWrite(token) => self.deferred_write(token),
            Ev::Persisted { r, inc, id } => self.persisted(r, inc, id),
            Ev::LogRead {
                r,
                inc,
                peer,
                conn,
                origin,
                from,
                to,
                max_bytes,
            } => {
                if self.regions[r].inc != inc || !self.alive(r) {
                    return Ok(());
                }
                self.regions[r].reads_out -= 1;
                self.work.log_reads += 1;
                let entries = self.regions[r].disk.read_log(origin, from, to, max_bytes);
                let ev = Event::LogRead {
                    peer,
                    conn,
                    origin,
                    entries,
                };
                self.handle(r, ev)
            }
            Ev::Tick { r, generation } => {
                if !self.alive(r) || self.regions[r].tick_gen != generation {
                    return Ok(());
                }
                self.regions[r].tick_at = None;
                self.handle(r, Event::Tick)
            }
            Ev::Deliver { conn, dir } => self.deliver(conn, dir),
            Ev::Dial { a, b } => self.dial(a, b),
            Ev::IdleCheck { conn } => self.idle_check(conn),
            Ev::Partition => self.partition(),
            Ev::Heal => self.heal(),
            Ev::Crash => self.random_crash(),
            Ev::Restart(r) => self.restart(r),
            Ev::Reconfigure(r) => {
                self.reconfigure(r);
                Ok(())
            }
            Ev::ClockJump => {
                self.clock_jump();
                Ok(())
            }
            Ev::ConnReset => self.conn_reset(),
            Ev::EndWorkload => self.end_workload(),
            Ev::Probe => self.probe(),
        }
    }

    /// Hands `ev` to region `r`'s machine and performs every effect, in order.
    pub(super) fn handle(&mut self, r: usize, ev: Event) -> Result<(), Failure> {
        let time = self.time(r);
        self.trace.event(self.now, r, &ev);
        if self.trace.verbose() {
            let line = format!(
                "{:>7} {} <- {}",
                self.now,
                self.regions[r].name,
                show_event(&ev)
            );
            self.trace.line(line);
        }
        // Negative control: acknowledge a batch as soon as it is applied in memory.
        let early_ack = match (&ev, self.opts.sabotage) {
            (
                Event::Frame {
                    peer,
                    conn,
                    msg: leader_core::PeerMsg::Batch(_),
                },
                Some(Sabotage::AckBeforeDurable),
            ) => Some((peer.clone(), *conn)),
            _ => None,
        };
        let mut out = Vec::new();
        let own = self.regions[r].id;
        let m = self.regions[r]
            .replica
            .as_mut()
            .expect("events are only handed to live regions");
        let taken_before = m.received().get(own);
        m.handle(time, ev, &mut out);
        let taken = m.received().get(own);
        for effect in out {
            self.perform(r, effect)?;
        }
        self.took_dots(r, taken_before, taken)?;
        if let Some((peer, conn)) = early_ack {
            let applied = self.regions[r]
                .replica
                .as_ref()
                .expect("still alive")
                .received()
                .clone();
            let msg = leader_core::PeerMsg::Ack(leader_core::msg::Ack { applied });
            self.send(r, &peer, conn, msg)?;
        }
        if self.opts.step_checks {
            self.check_region(r)?;
        }
        self.schedule_tick(r)
    }

    /// Schedules the machine's next timer, as a driver sleeping until `poll_timeout` would.
    /// The deadline must lie after the event just handled: a past one would wake a real
    /// driver at once, again and again (a busy loop). With step checks that is a failure;
    /// without, it is counted and the timer moves on by a millisecond (tokio's resolution).
    fn schedule_tick(&mut self, r: usize) -> Result<(), Failure> {
        let now = self.now;
        let g = &self.regions[r];
        let Some(replica) = &g.replica else {
            return Ok(());
        };
        let at = match replica.poll_timeout().map(|mono| mono + g.boot_ms) {
            None => None,
            Some(d) if d <= now => {
                if self.opts.step_checks {
                    let detail = format!(
                        "{}: after an event at {} ms (its clock) poll_timeout names {} ms: a driver would spin",
                        g.name,
                        now - g.boot_ms,
                        d - g.boot_ms
                    );
                    return Err(self.fail(("timer", detail)));
                }
                self.work.spin_ticks += 1;
                Some(now + 1)
            }
            Some(d) => Some(d),
        };
        let g = &mut self.regions[r];
        if at != g.tick_at {
            g.tick_gen += 1;
            g.tick_at = at;
            let generation = g.tick_gen;
            if let Some(at) = at {
                self.push(at, Ev::Tick { r, generation });
            }
        }
        Ok(())
    }

    fn perform(&mut self, r: usize, effect: Effect) -> Result<(), Failure> {
        self.trace.effect(r, &effect);
        if self.trace.verbose() {
            let line = format!(
                "{:>7} {} -> {}",
                self.now,
                self.regions[r].name,
                show_effect(&effect)
            );
            self.trace.line(line);
        }
        match effect {
            Effect::Persist(batch) => self.persist(r, batch),
            Effect::Send { peer, conn, msg } => self.send(r, &peer, conn, msg),
            // As in production (`leader::node` closes the QUIC connection): the connection
            // ends, both ends get `PeerDown`, and the pair redials after a backoff.
            Effect::Close { peer, conn, .. } => {
                let q = self.index_of(&peer);
                if self.current_conn(r, q) == Some(conn) {
                    self.kill(conn)?;
                }
                Ok(())
            }
            Effect::ReadLog {
                peer,
                conn,
                origin,
                from,
                to,
                max_bytes,
            } => {
                let at = self.now + self.rng_disk.range(0, 5);
                let g = &mut self.regions[r];
                g.reads_out += 1;
                let inc = g.inc;
                self.push(
                    at,
                    Ev::LogRead {
                        r,
                        inc,
                        peer,
                        conn,
                        origin,
                        from,
                        to,
                        max_bytes,
                    },
                );
                Ok(())
            }
            Effect::Reply { id, result } => self.on_reply(r, id, result),
            Effect::Alarm(alarm) => self.on_alarm(r, alarm),
        }
    }

    fn persist(&mut self, r: usize, batch: PersistBatch) -> Result<(), Failure> {
        if let Some(out) = &self.regions[r].persisting {
            let detail = format!(
                "{} issued persist {} while persist {} is still outstanding",
                self.regions[r].name, batch.id, out.id
            );
            return Err(self.fail(("persist-contract", detail)));
        }
        let (lo, hi) = self.p.fsync_ms;
        let (p_slow, slow_lo, slow_hi) = self.p.fsync_slow;
        let latency = if self.rng_disk.chance(p_slow) {
            self.faults.slow_fsyncs += 1;
            self.rng_disk.range(slow_lo, slow_hi)
        } else {
            self.rng_disk.range(lo, hi)
        };
        let g = &mut self.regions[r];
        let (inc, id) = (g.inc, batch.id);
        g.persisting = Some(batch);
        self.push(self.now + latency, Ev::Persisted { r, inc, id });
        Ok(())
    }

    fn persisted(&mut self, r: usize, inc: u64, id: u64) -> Result<(), Failure> {
        if self.regions[r].inc != inc || !self.alive(r) {
            return Ok(()); // the process died before its fsync completed: the batch is lost
        }
        let batch = match self.regions[r].persisting.take() {
            Some(b) if b.id == id => b,
            other => {
                let detail = format!("persist {id} completed but {other:?} was outstanding");
                return Err(self.fail(("persist-contract", detail)));
            }
        };
        self.commit(r, &batch)?;
        self.work.persists += 1;
        self.handle(r, Event::Persisted { id })
    }

    /// Adds the machine's counters of region `r`'s current process to the run's figures
    /// (called before a process dies and at the end).
    fn count_machine(&mut self, r: usize) {
        if let Some(replica) = &self.regions[r].replica {
            let c = replica.counters();
            self.work.conflicts += c.conflicts;
            self.work.resyncs += c.resyncs;
            self.work.relayed += c.writes_relayed;
            self.work.duplicates_dropped += c.duplicates;
            self.work.quarantined += c.quarantined;
            self.work.released += c.released;
            self.work.paced += c.writes_paced;
        }
    }

    /// Kills region `r`'s process: memory, the persist in flight, timers and pending
    /// requests are gone; the disk stays.
    pub(super) fn crash(&mut self, r: usize) {
        self.count_machine(r);
        let g = &mut self.regions[r];
        g.replica = None;
        g.disk.crash();
        g.inc += 1;
        g.persisting = None;
        g.reads_out = 0;
        g.tick_gen += 1;
        g.tick_at = None;
        g.untaken.clear();
        self.faults.crashes += 1;
        self.trace.note(self.now, &format!("crash {r}"));
        if self.trace.verbose() {
            let line = format!("{:>7} {} CRASH", self.now, self.regions[r].name);
            self.trace.line(line);
        }
        self.abandon_requests(r);
        self.update_broken();
    }

    fn random_crash(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Workload {
            return Ok(());
        }
        if let Some((lo, hi)) = self.p.crash_gap_ms {
            let next = self.now + self.rng_fault.range(lo, hi);
            self.push(next, Ev::Crash);
        }
        let candidates: Vec<usize> = (0..self.regions.len()).filter(|r| self.alive(*r)).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let r = candidates[self.rng_fault.index(candidates.len())];
        self.crash(r);
        let (lo, hi) = self.p.down_ms;
        let back = self.now + self.rng_fault.range(lo, hi);
        self.push(back, Ev::Restart(r));
        Ok(())
    }

    fn restart(&mut self, r: usize) -> Result<(), Failure> {
        if self.alive(r) || self.regions[r].doomed || self.phase == Phase::Done {
            return Ok(());
        }
        self.start_process(r)?;
        self.faults.restarts += 1;
        self.trace.note(self.now, &format!("restart {r}"));
        if self.trace.verbose() {
            let line = format!("{:>7} {} RESTART from disk", self.now, self.regions[r].name);
            self.trace.line(line);
        }
        for q in 0..self.regions.len() {
            if q != r {
                let at = self.now + self.rng_net.range(10, 300);
                self.push(at, Ev::Dial { a: r, b: q });
            }
        }
        self.schedule_tick(r)
    }

    /// Gives region `r` the rollout's new configuration: a live region is stopped (a crash:
    /// the disk is all that survives, as for an operator's restart) and started again with it
    /// shortly; a crashed region gets it at its next start.
    fn reconfigure(&mut self, r: usize) {
        let Some(rollout) = self.opts.rollout else {
            return;
        };
        let g = &mut self.regions[r];
        g.reconfigured = true;
        if rollout == Rollout::AddTable {
            g.opts.tables.insert(NEW_TABLE.to_owned(), "lww".to_owned());
        }
        self.trace.note(self.now, &format!("reconfigure {r}"));
        if self.alive(r) {
            self.crash(r);
            let back = self.now + self.rng_fault.range(1, RECONFIGURE_DOWN_MS);
            self.push(back, Ev::Restart(r));
        }
    }

    /// Loses region `r` for good, right after one of its writes was acknowledged at `one` or
    /// above; with a correlated doom every other region crashes at the same instant too.
    fn lose_for_good(&mut self, r: usize) {
        if !self.alive(r) {
            return;
        }
        self.crash(r);
        self.regions[r].doomed = true;
        self.faults.permanent_losses += 1;
        if self.doom.is_some_and(|d| d.correlated) {
            for q in 0..self.regions.len() {
                if q != r && self.alive(q) {
                    self.crash(q);
                    let (lo, hi) = self.p.down_ms;
                    let back = self.now + self.rng_fault.range(lo, hi);
                    self.push(back, Ev::Restart(q));
                }
            }
        }
        self.doom = None;
    }

    fn clock_jump(&mut self) {
        if self.phase != Phase::Workload {
            return;
        }
        if let Some((lo, hi)) = self.p.jump_gap_ms {
            let next = self.now + self.rng_fault.range(lo, hi);
            self.push(next, Ev::ClockJump);
        }
        let r = self.rng_fault.index(self.regions.len());
        // Now and then a clock is set an hour off (a bad NTP server, a manual mistake).
        let max = if self.rng_fault.chance(0.05) {
            HUGE_JUMP_MS
        } else {
            self.p.jump_max_ms
        };
        let delta = self.rng_fault.signed(max);
        let g = &mut self.regions[r];
        g.offset_ms += delta;
        if delta >= 0 {
            self.faults.clock_jumps_forward += 1;
        } else {
            self.faults.clock_jumps_backward += 1;
        }
        if g.offset_ms.unsigned_abs() > MAX_CLOCK_OFFSET_MS {
            self.faults.skew_beyond_bound += 1;
        }
        self.trace.note(self.now, &format!("jump {r} {delta}"));
    }

    /// Stops the workload and every fault, heals the network, restarts crashed regions (not
    /// the ones lost for good), and starts probing for quiescence.
    fn end_workload(&mut self) -> Result<(), Failure> {
        self.phase = Phase::Quiesce;
        self.quiesce_from = self.now;
        self.deferred.clear();
        self.heal_all()?;
        for r in 0..self.regions.len() {
            self.restart(r)?;
        }
        self.push(self.now + PROBE_MS, Ev::Probe);
        Ok(())
    }

    fn probe(&mut self) -> Result<(), Failure> {
        if self.settled() {
            self.final_checks()?;
            self.work.settle_ms_max = self.now - self.quiesce_from;
            self.phase = Phase::Done;
            return Ok(());
        }
        if self.now - self.quiesce_from > QUIESCE_LIMIT_MS {
            // Say what is wrong with the data first, if anything; else that it never settled.
            self.final_checks()?;
            let detail = format!(
                "not settled {QUIESCE_LIMIT_MS} ms after the faults stopped: {}",
                self.unsettled_reason()
            );
            return Err(self.fail(("liveness", detail)));
        }
        self.push(self.now + PROBE_MS, Ev::Probe);
        Ok(())
    }
}

/// One line describing an event, for the readable trace.
fn show_event(ev: &Event) -> String {
    match ev {
        Event::ClientWrite {
            id,
            table,
            key,
            value,
            context,
            durability,
            timeout_ms,
        } => format!(
            "ClientWrite #{id} {table}/{} = {value:?} ctx {context:?} {durability} {timeout_ms}ms",
            String::from_utf8_lossy(key)
        ),
        Event::PeerUp { peer, conn } => format!("PeerUp {peer}#{conn}"),
        Event::PeerDown { peer, conn } => format!("PeerDown {peer}#{conn}"),
        Event::Frame { peer, conn, msg } => {
            format!("Frame {peer}#{conn} {}", super::trace::describe(msg))
        }
        Event::SendFailed { peer, conn } => format!("SendFailed {peer}#{conn}"),
        Event::Persisted { id } => format!("Persisted {id}"),
        Event::LogRead {
            peer,
            conn,
            origin,
            entries,
        } => format!(
            "LogRead for {peer}#{conn} origin {origin}: {} entries",
            entries.len()
        ),
        Event::Tick => "Tick".into(),
    }
}

/// One line describing an effect, for the readable trace.
fn show_effect(e: &Effect) -> String {
    match e {
        Effect::Persist(b) => format!(
            "Persist {} ({} keys, {} log entries, applied {:?})",
            b.id,
            b.keys.len(),
            b.log.len(),
            b.applied
        ),
        Effect::Send { peer, conn, msg } => {
            format!("Send {peer}#{conn} {}", super::trace::describe(msg))
        }
        Effect::Close { peer, conn, reason } => format!("Close {peer}#{conn}: {reason}"),
        Effect::ReadLog {
            peer,
            conn,
            origin,
            from,
            to,
            ..
        } => format!("ReadLog for {peer}#{conn} origin {origin} {from}..={to}"),
        Effect::Reply { id, result } => match result {
            Ok(r) => format!(
                "Reply #{id} ok {} {:?} durable in {:?}{}",
                r.dot,
                r.hlc,
                r.durable_in,
                if r.timed_out { " (timed out)" } else { "" }
            ),
            Err(e) => format!("Reply #{id} refused: {e}"),
        },
        Effect::Alarm(a) => format!("Alarm {a:?}"),
    }
}
