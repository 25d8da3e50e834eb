//! The world: regions, the event queue, and the loop that hands events to the machines and
//! performs their effects, as `leader::node` does; plus crashes, restarts, clock jumps and
//! the end of a run (healing, quiescence, final oracles).
//!
//! # Why one file of about 1,000 lines
//! The event loop, what each scheduled event does, crashes and restarts, and the end of a run
//! all change the same `World` and read best in the order a run happens; the transport
//! (`net`), the clients (`workload`) and the oracles (`checks`) are already apart, and the
//! effects themselves are the test kit's (`Node::perform`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use conflict::examples::Counter;
use conflict::{Dot, Registry, ReplicaId, VersionVector};
use leader_core::testkit::{Disk, DiskLimits, Node, Outgoing};
use leader_core::{Effect, Event, Options, Replica, Time};

use super::net::Net;
use super::params::{Doom, MAX_CLOCK_OFFSET_MS, Params, REGION_NAMES};
use super::rng::Rng;
use super::stats::{FaultCounts, WorkCounts};
use super::trace::Trace;
use super::truth::{Broken, Slot, TableKind, Truth};
use super::workload::{Deferred, OpRec};
use super::{Failure, Outcome, Rollout, RunOptions, Sabotage};

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
    fn counter(&self) -> Option<&dyn conflict::CounterResolver> {
        Some(&Counter)
    }
}

/// One region: its process (the kit's [`Node`]: machine, disk, persists in flight), whether
/// it lives, its clock.
pub(super) struct Region {
    pub(super) name: String,
    pub(super) id: ReplicaId,
    pub(super) opts: Options,
    /// The process and its disk. The machine is only used while [`Region::up`].
    pub(super) node: Node,
    /// The process lives (false from a crash to the next start).
    pub(super) up: bool,
    /// Incarnation: bumped at every crash, so events of a dead process are ignored.
    pub(super) inc: u64,
    /// Virtual time the current process started (its monotonic clock's zero).
    pub(super) boot_ms: u64,
    pub(super) offset_ms: i64,
    pub(super) drift_ppm: i64,
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
    /// When the region last lost its disk (restarted empty under a new replica id), if ever:
    /// the snapshot alarms about it are expected from then on, and what only that disk held
    /// may be lost.
    pub(super) disk_lost_ms: Option<u64>,
    /// Join of the applied vectors of the disks it lost: the copies those disks held. An
    /// acknowledgement may name the region for a write only its lost disk held (it acked
    /// before the loss, and the reply came after).
    pub(super) lost_applied: VersionVector,
}

impl Region {
    pub(super) fn alive(&self) -> bool {
        self.up
    }

    /// The machine of the live process.
    pub(super) fn machine(&self) -> Option<&Replica> {
        self.up.then_some(&self.node.replica)
    }

    /// The disk (it outlives every process).
    pub(super) fn disk(&self) -> &Disk {
        &self.node.disk
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
    /// The answer to a log read of process `inc` of region `r`, served by the kit's
    /// interpreter from the disk when it was asked, handed to the machine a little later.
    LogRead {
        r: usize,
        inc: u64,
        ev: Box<Event>,
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
    /// A region's process dies and its disk is replaced by an empty one.
    DiskLoss,
    /// Region `r`, which started a snapshot transfer a moment ago, crashes or is cut off from
    /// its source, if it is still fetching.
    HitTransfer(usize),
    /// The end of the cut of a [`Ev::HitTransfer`].
    HealCut,
    Restart(usize),
    /// Region `r` takes the new configuration of the rollout (restarted with it).
    Reconfigure(usize),
    ClockJump,
    ConnReset,
    EndWorkload,
    Probe,
    /// A client read at `read=quorum` or `read=all` at a region (and the next one is
    /// scheduled); [`RunOptions::quorum_reads`] only.
    QuorumRead(usize),
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
    /// Acknowledged writes lost with the only disks that held them (disk losses and regions
    /// lost for good), which the final oracles no longer expect ([`World::lose_copies`]).
    pub(super) lost_with_disk: BTreeSet<Dot>,
    pub(super) rng_net: Rng,
    pub(super) rng_fault: Rng,
    pub(super) rng_work: Rng,
    pub(super) rng_disk: Rng,
    /// Draws of the faults aimed at snapshot transfers (a stream of their own).
    pub(super) rng_snap: Rng,
    /// Draws of the quorum reads (a stream of their own).
    pub(super) rng_read: Rng,
    /// Quorum reads waiting for their answer, by request id.
    pub(super) quorum_reads: BTreeMap<u64, super::workload::QuorumRead>,
    /// Quorum reads issued so far (their ids follow from it).
    pub(super) quorum_reads_issued: u64,
    /// When a disk was last lost (a disk loss, or a region lost for good): writes acknowledged
    /// before it no longer bind quorum reads (their majority may have lost its copy).
    pub(super) last_loss_ms: Option<u64>,
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
/// Anti-entropy's interval when [`RunOptions::anti_entropy`] is on: several rounds a seed.
const ANTI_ENTROPY_MS: u64 = 2_000;

fn options(p: &Params, r: usize) -> Options {
    let k = &p.knobs;
    let bounded = k.bounded_region.is_none_or(|b| b == r);
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
        log_retention_bytes: if bounded {
            k.log_retention_bytes
        } else {
            u64::MAX
        },
        snapshot_chunk_bytes: k.snapshot_chunk_bytes,
        learn_when_empty: true,
        anti_entropy_interval_ms: 0,
    }
}

impl World {
    pub(super) fn new(seed: u64, opts: RunOptions) -> Self {
        let mut p = Params::new(seed);
        if !opts.snapshot_faults {
            p.knobs.log_retention_bytes = u64::MAX;
            p.disk_loss_gap_ms = None;
        }
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
        let options = |p: &Params, r: usize| Options {
            anti_entropy_interval_ms: if opts.anti_entropy {
                ANTI_ENTROPY_MS
            } else {
                0
            },
            ..options(p, r)
        };
        let regions = (0..p.regions)
            .map(|r| Region {
                name: REGION_NAMES[r].to_owned(),
                id: ReplicaId::from_u128(p.replica_ids[r]),
                opts: options(&p, r),
                // Down until `boot` starts it; an empty disk always builds.
                node: Node::start(options(&p, r), &registry, Disk::with_limits(disk_limits[r]))
                    .expect("the registry covers the simulated tables")
                    .0,
                up: false,
                inc: 0,
                boot_ms: 0,
                offset_ms: p.clocks[r].0,
                drift_ppm: p.clocks[r].1,
                tick_gen: 0,
                tick_at: None,
                doomed: false,
                seen_applied: VersionVector::new(),
                seen_received: VersionVector::new(),
                reads_out: 0,
                reconfigured: false,
                untaken: VecDeque::new(),
                disk_lost_ms: None,
                lost_applied: VersionVector::new(),
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
            lost_with_disk: BTreeSet::new(),
            rng_net: Rng::stream(seed, 2),
            rng_fault: Rng::stream(seed, 3),
            rng_work: Rng::stream(seed, 4),
            rng_disk: Rng::stream(seed, 5),
            rng_snap: Rng::stream(seed, 8),
            rng_read: Rng::stream(seed, 9),
            quorum_reads: BTreeMap::new(),
            quorum_reads_issued: 0,
            last_loss_ms: None,
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
        self.faults.truncated = self.regions.iter().map(|g| g.node.disk.truncated).sum();
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
        if self.opts.quorum_reads {
            for r in 0..self.regions.len() {
                let first = self.rng_read.range(0, 4 * self.p.op_interval_ms);
                self.push(first, Ev::QuorumRead(r));
            }
        }
        let gaps = [
            (self.p.partition_gap_ms, Ev::Partition),
            (self.p.crash_gap_ms, Ev::Crash),
            (self.p.disk_loss_gap_ms, Ev::DiskLoss),
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
        if self.upgraded(r) {
            &self.registry_v2
        } else {
            &self.registry
        }
    }

    /// Whether region `r` runs [`Rollout::UpgradeResolver`]'s new configuration.
    fn upgraded(&self, r: usize) -> bool {
        self.regions[r].reconfigured && self.opts.rollout == Some(Rollout::UpgradeResolver)
    }

    /// Builds region `r`'s machine from its disk.
    fn start_process(&mut self, r: usize) -> Result<(), Failure> {
        // As `leader::node` does: the checkpointed key states, the log after the checkpoint
        // replayed in chunks, then the quarantined writes this configuration accepts.
        let opts = self.regions[r].opts.clone();
        let registry = if self.upgraded(r) {
            &self.registry_v2
        } else {
            &self.registry
        };
        let recovery = self.regions[r]
            .node
            .recover(opts, registry)
            .map_err(|e| Failure {
                oracle: "build",
                detail: e.to_string(),
                at_ms: self.now,
            })?;
        if recovery.replayed > 0 {
            self.faults.replays += 1;
            self.faults.replayed_entries += recovery.replayed;
        }
        let g = &mut self.regions[r];
        g.up = true;
        if self.opts.sabotage == Some(Sabotage::WallClockLww) {
            g.node.replica.unsafe_stamp_with_wall_clock();
        }
        if self.opts.sabotage == Some(Sabotage::TruncateUnstable) {
            g.node.replica.unsafe_truncate_at_durable();
        }
        if self.opts.sabotage == Some(Sabotage::InstallAtHigh) {
            g.node.replica.unsafe_install_snapshot_at_high();
        }
        if self.opts.sabotage == Some(Sabotage::CollectUnstable) {
            g.node.replica.unsafe_collect_tombstones_unstably();
        }
        if self.opts.sabotage == Some(Sabotage::ShortReads) {
            g.node.replica.unsafe_answer_short_reads();
        }
        g.boot_ms = self.now;
        g.seen_applied = g.node.disk.applied.clone();
        g.seen_received = g.node.disk.applied.clone();
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
                self.lose_for_good(r)?;
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
            Ev::LogRead { r, inc, ev } => {
                if self.regions[r].inc != inc || !self.alive(r) {
                    return Ok(());
                }
                self.regions[r].reads_out -= 1;
                self.work.log_reads += 1;
                self.handle(r, *ev)
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
            Ev::DiskLoss => self.disk_loss(),
            Ev::HitTransfer(r) => self.hit_transfer(r),
            Ev::HealCut => self.heal_all(),
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
            Ev::QuorumRead(r) => self.quorum_read(r),
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
        assert!(self.alive(r), "events are only handed to live regions");
        let m = &mut self.regions[r].node.replica;
        let taken_before = m.received().get(own);
        m.handle(time, ev, &mut out);
        let taken = m.received().get(own);
        for effect in out {
            self.perform(r, effect)?;
        }
        self.took_dots(r, taken_before, taken)?;
        if let Some((peer, conn)) = early_ack {
            let applied = self.regions[r].node.replica.received().clone();
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
        let Some(replica) = g.machine() else {
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
        let persist = matches!(effect, Effect::Persist(_));
        let out = self.regions[r].node.perform(effect);
        self.take_answers(r)?;
        if persist {
            return self.persist(r);
        }
        match out {
            None => Ok(()),
            Some(Outgoing::Send { peer, conn, msg }) => self.send(r, &peer, conn, msg),
            // As in production (`leader::node` closes the QUIC connection): the connection
            // ends, both ends get `PeerDown`, and the pair redials after a backoff.
            Some(Outgoing::Close { peer, conn, .. }) => {
                let q = self.index_of(&peer);
                if self.current_conn(r, q) == Some(conn) {
                    self.kill(conn)?;
                }
                Ok(())
            }
            // A log read, served from the disk now; its answer reaches the machine later.
            Some(Outgoing::Again(ev)) => {
                let at = self.now + self.rng_disk.range(0, 5);
                let g = &mut self.regions[r];
                g.reads_out += 1;
                let inc = g.inc;
                let ev = Box::new(ev);
                self.push(at, Ev::LogRead { r, inc, ev });
                Ok(())
            }
        }
    }

    /// Checks the replies and alarms the interpreter just recorded for region `r`.
    fn take_answers(&mut self, r: usize) -> Result<(), Failure> {
        let node = &mut self.regions[r].node;
        let (replies, alarms, reads) = (
            std::mem::take(&mut node.replies),
            std::mem::take(&mut node.alarms),
            std::mem::take(&mut node.reads),
        );
        // The workload sends no `ClientWait`; nothing waits for a `Waited` answer.
        node.waited.clear();
        for (id, result) in replies {
            self.on_reply(r, id, result)?;
        }
        for alarm in alarms {
            self.on_alarm(r, alarm)?;
        }
        for (id, result) in reads {
            self.on_read_done(r, id, result)?;
        }
        Ok(())
    }

    /// Schedules the completion of the persist the interpreter just queued, after a random
    /// fsync latency. The machine promises at most one persist outstanding.
    fn persist(&mut self, r: usize) -> Result<(), Failure> {
        let persisting = &self.regions[r].node.persisting;
        if let [out, batch, ..] = persisting.as_slices().0 {
            let detail = format!(
                "{} issued persist {} while persist {} is still outstanding",
                self.regions[r].name, batch.id, out.id
            );
            return Err(self.fail(("persist-contract", detail)));
        }
        let id = persisting.back().expect("the interpreter queued it").id;
        let (lo, hi) = self.p.fsync_ms;
        let (p_slow, slow_lo, slow_hi) = self.p.fsync_slow;
        let latency = if self.rng_disk.chance(p_slow) {
            self.faults.slow_fsyncs += 1;
            self.rng_disk.range(slow_lo, slow_hi)
        } else {
            self.rng_disk.range(lo, hi)
        };
        let inc = self.regions[r].inc;
        self.push(self.now + latency, Ev::Persisted { r, inc, id });
        Ok(())
    }

    fn persisted(&mut self, r: usize, inc: u64, id: u64) -> Result<(), Failure> {
        if self.regions[r].inc != inc || !self.alive(r) {
            return Ok(()); // the process died before its fsync completed: the batch is lost
        }
        let node = &mut self.regions[r].node;
        if node.persisting.front().is_none_or(|b| b.id != id) {
            let detail = format!(
                "persist {id} completed but {:?} was outstanding",
                node.persisting.front()
            );
            return Err(self.fail(("persist-contract", detail)));
        }
        let committed = node.commit_persist().expect("checked above");
        let (batch, checkpoint) = committed.map_err(|d| {
            let detail = format!("{}: {d}", self.regions[r].name);
            self.fail(("disk", detail))
        })?;
        self.committed(r, &batch, checkpoint)?;
        self.work.persists += 1;
        self.handle(r, Event::Persisted { id })
    }

    /// Adds the machine's counters of region `r`'s current process to the run's figures
    /// (called before a process dies and at the end).
    fn count_machine(&mut self, r: usize) {
        if let Some(replica) = self.regions[r].machine() {
            let c = replica.counters();
            self.work.conflicts += c.conflicts;
            self.work.resyncs += c.resyncs;
            self.work.relayed += c.writes_relayed;
            self.work.duplicates_dropped += c.duplicates;
            self.work.quarantined += c.quarantined;
            self.work.released += c.released;
            self.work.paced += c.writes_paced;
            self.work.snapshot_chunks += c.snapshot_chunks_received;
            self.work.snapshots_installed += c.snapshots_installed;
            self.work.read_repairs += c.read_repairs + c.read_repairs_applied;
        }
    }

    /// Kills region `r`'s process: memory, the persist in flight, timers and pending
    /// requests are gone; the disk stays.
    pub(super) fn crash(&mut self, r: usize) {
        self.count_machine(r);
        let mid_transfer = self.regions[r]
            .machine()
            .and_then(|m| m.bootstrap())
            .is_some_and(|b| b.phase != leader_core::BootstrapPhase::CatchingUp && b.chunks > 0);
        self.faults.crashes_mid_transfer += u64::from(mid_transfer);
        let g = &mut self.regions[r];
        g.up = false;
        g.node.crash();
        g.inc += 1;
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
        self.again(self.p.crash_gap_ms, Ev::Crash);
        let candidates: Vec<usize> = (0..self.regions.len()).filter(|r| self.alive(*r)).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let r = candidates[self.rng_fault.index(candidates.len())];
        self.crash_for_a_while(r);
        Ok(())
    }

    /// Schedules the next occurrence of a recurring fault, if the seed has it.
    fn again(&mut self, gap: super::params::Gap, ev: Ev) {
        if let Some((lo, hi)) = gap {
            let next = self.now + self.rng_fault.range(lo, hi);
            self.push(next, ev);
        }
    }

    /// Crashes region `r` and schedules its restart after a downtime of the seed's range.
    fn crash_for_a_while(&mut self, r: usize) {
        self.crash(r);
        let (lo, hi) = self.p.down_ms;
        let back = self.now + self.rng_fault.range(lo, hi);
        self.push(back, Ev::Restart(r));
    }

    /// Region `r` (any not lost for good) loses its disk: its process dies if it lives, and
    /// it restarts later on an empty disk under a new replica id, as an operator rebuilds a
    /// region whose volume failed. Its old replica id stays the origin of the writes others
    /// hold. What only its disk held is lost (`Truth`'s accounting, [`World::lose_copies`]).
    fn disk_loss(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Workload {
            return Ok(());
        }
        self.again(self.p.disk_loss_gap_ms, Ev::DiskLoss);
        let candidates: Vec<usize> = (0..self.regions.len())
            .filter(|r| !self.regions[*r].doomed)
            .collect();
        let r = candidates[self.rng_fault.index(candidates.len())];
        if self.alive(r) {
            self.crash_for_a_while(r);
        }
        self.lose_copies(r)?;
        let id = ReplicaId::from_u128(self.rng_fault.u128());
        let g = &mut self.regions[r];
        g.lost_applied.join(&g.node.disk.applied);
        let limits = g.node.disk.limits;
        g.node.disk = Disk::with_limits(limits);
        g.node.id = id;
        g.id = id;
        g.opts.replica = id;
        g.disk_lost_ms = Some(self.now);
        self.last_loss_ms = Some(self.now);
        self.faults.disk_losses += 1;
        // Nothing read there before survives the disk: read-your-writes starts over.
        self.last_acked.retain(|(q, _), _| *q != r);
        self.trace.note(self.now, &format!("disk loss {r} {id}"));
        if self.trace.verbose() {
            let line = format!(
                "{:>7} {} DISK LOST, new replica {id}",
                self.now, self.regions[r].name
            );
            self.trace.line(line);
        }
        Ok(())
    }

    /// Region `r` started a snapshot transfer: now and then, aim a fault at it shortly after.
    pub(super) fn maybe_hit_transfer(&mut self, r: usize) {
        if self.phase == Phase::Workload && self.rng_snap.chance(self.p.p_hit_transfer) {
            let at = self.now + self.rng_snap.range(5, 400);
            self.push(at, Ev::HitTransfer(r));
        }
    }

    /// Crashes region `r`, or cuts it off from its source, if it is still fetching chunks.
    fn hit_transfer(&mut self, r: usize) -> Result<(), Failure> {
        let source = self.regions[r]
            .machine()
            .and_then(|m| m.bootstrap())
            .filter(|b| b.phase == leader_core::BootstrapPhase::Fetching)
            .and_then(|b| b.source.clone());
        let Some(source) = source.filter(|_| self.phase == Phase::Workload) else {
            return Ok(());
        };
        if self.rng_snap.chance(0.5) || !self.net.cut.is_empty() {
            self.crash_for_a_while(r);
            return Ok(());
        }
        let s = self.index_of(&source);
        self.net.cut.insert((r, s));
        self.net.cut.insert((s, r));
        self.faults.cuts_mid_transfer += 1;
        self.trace.note(self.now, &format!("cut {r} {s}"));
        if self.trace.verbose() {
            let line = format!("{:>7} CUT {} | {source}", self.now, self.regions[r].name);
            self.trace.line(line);
        }
        self.update_broken();
        let (lo, hi) = self.p.partition_len_ms;
        let at = self.now + self.rng_snap.range(lo, hi);
        self.push(at, Ev::HealCut);
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
    fn lose_for_good(&mut self, r: usize) -> Result<(), Failure> {
        if !self.alive(r) {
            return Ok(());
        }
        self.crash(r);
        self.regions[r].doomed = true;
        self.last_loss_ms = Some(self.now);
        self.faults.permanent_losses += 1;
        self.lose_copies(r)?;
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
        Ok(())
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
        Event::ClientAdd {
            id, table, key, by, ..
        } => format!(
            "ClientAdd #{id} {table}/{} += {by}",
            String::from_utf8_lossy(key)
        ),
        Event::ClientWait {
            id, seq, regions, ..
        } => format!("ClientWait #{id} seq {} in {regions} regions", seq.0),
        Event::CancelWait { id } => format!("CancelWait #{id}"),
        Event::ClientRead {
            id,
            table,
            key,
            level,
            timeout_ms,
        } => format!(
            "ClientRead #{id} {table}/{} read={level} {timeout_ms}ms",
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
        Event::SnapshotRead {
            peer, conn, result, ..
        } => match result {
            Ok(piece) => format!(
                "SnapshotRead for {peer}#{conn}: {} states, applied {:?}",
                piece.states.len(),
                piece.applied
            ),
            Err(e) => format!("SnapshotRead for {peer}#{conn} failed: {e}"),
        },
        Event::Tick => "Tick".into(),
        Event::AntiEntropy => "AntiEntropy".into(),
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
        Effect::ReadSnapshot {
            peer,
            conn,
            max_bytes,
            ..
        } => format!("ReadSnapshot for {peer}#{conn} ({max_bytes} bytes)"),
        Effect::Waited { id, regions } => format!("Waited #{id}: {regions:?}"),
        Effect::ReadDone { id, result } => match result {
            Ok(a) => format!(
                "ReadDone #{id} ok {:?} from {:?}",
                a.state.context, a.answered
            ),
            Err(e) => format!("ReadDone #{id} failed: {e}"),
        },
        Effect::Alarm(a) => format!("Alarm {a:?}"),
    }
}
