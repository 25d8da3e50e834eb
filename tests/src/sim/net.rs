//! The transport as the machine's driver sees it, and the faults injected into it.
//!
//! One connection per region pair at a time, numbered. `PeerUp` reaches both ends when it is
//! established; frames travel in order on the connection they were sent on (a per-direction
//! FIFO with a per-pair delay and jitter); `PeerDown` reaches each live end when it dies, and
//! whatever was still queued on it is lost. A cut path holds frames, as QUIC retransmits,
//! until it heals or the connection has delivered nothing for its idle timeout. A crashed
//! peer is noticed the same way, or sooner when its restarted process reconnects (the new
//! connection replaces the old one).
//!
//! Faults beyond that contract, which QUIC would never produce but the protocol claims to
//! tolerate (it deduplicates and resynchronises): a frame delivered twice, a frame that
//! overtakes the one queued before it (never the hello, which the transport sends first on a
//! connection by construction), and a frame the transport refuses to queue
//! (`Event::SendFailed`, as `try_send` on a full queue; never the hello, which is the first
//! frame on a fresh connection's empty queue).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use conflict::Seq;
use leader_core::{Event, PeerMsg};

use super::world::{Ev, Phase, World};
use super::{Failure, Sabotage};

/// The write of the first region that [`Sabotage::SkipSeq`] leaves out of its stream.
const SKIPPED_SEQ: u64 = 3;

/// A frame on its way.
#[derive(Debug)]
struct Frame {
    /// Earliest delivery time.
    ready: u64,
    msg: PeerMsg,
}

/// One direction of a connection.
#[derive(Debug, Default)]
struct Chan {
    queue: VecDeque<Frame>,
    /// A `Deliver` event is scheduled for the head.
    armed: bool,
}

/// A connection between two regions' processes.
#[derive(Debug)]
struct Conn {
    ends: [usize; 2],
    /// Incarnation of each end when it was established.
    incs: [u64; 2],
    /// `chans[d]` carries frames from `ends[d]` to `ends[1 - d]`.
    chans: [Chan; 2],
    /// Since when the path has delivered nothing (cut, or an end died).
    broken_since: Option<u64>,
}

impl Conn {
    fn side(&self, r: usize) -> usize {
        usize::from(self.ends[0] != r)
    }
}

/// Connections and the state of every path.
#[derive(Debug, Default)]
pub(super) struct Net {
    conns: BTreeMap<u64, Conn>,
    /// The current connection of each pair `(lo, hi)`.
    current: BTreeMap<(usize, usize), u64>,
    /// Directed paths that deliver nothing right now.
    pub(super) cut: BTreeSet<(usize, usize)>,
    next_conn: u64,
}

impl Net {
    /// The current connection of a pair and its state, for diagnostics.
    pub(super) fn current_raw(&self, a: usize, b: usize) -> Option<String> {
        let id = self.current.get(&pair(a, b))?;
        Some(format!("#{id} {:?}", self.conns.get(id)))
    }

    /// A connection with frames other than heartbeats still queued, described (`None` when
    /// only heartbeats, which never stop, are in flight).
    pub(super) fn busy(&self) -> Option<String> {
        let busy = |ch: &Chan| {
            ch.queue
                .iter()
                .any(|f| !matches!(f.msg, PeerMsg::Heartbeat(_)))
        };
        self.conns
            .iter()
            .find(|(_, c)| c.chans.iter().any(busy))
            .map(|(id, c)| format!("#{id} {c:?}"))
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn is_hello(m: &PeerMsg) -> bool {
    matches!(m, PeerMsg::Hello(_))
}

impl World {
    /// Whether connection `id` exists and both its ends are the processes it was made with.
    pub(super) fn conn_valid(&self, id: u64) -> bool {
        self.net.conns.get(&id).is_some_and(|c| {
            (0..2).all(|s| self.alive(c.ends[s]) && self.regions[c.ends[s]].inc == c.incs[s])
        })
    }

    /// The valid current connection between `a` and `b`, if any.
    pub(super) fn current_conn(&self, a: usize, b: usize) -> Option<u64> {
        self.net
            .current
            .get(&pair(a, b))
            .copied()
            .filter(|id| self.conn_valid(*id))
    }

    pub(super) fn establish(&mut self, a: usize, b: usize) -> Result<(), Failure> {
        self.net.next_conn += 1;
        let id = self.net.next_conn;
        let conn = Conn {
            ends: [a, b],
            incs: [self.regions[a].inc, self.regions[b].inc],
            chans: [Chan::default(), Chan::default()],
            broken_since: None,
        };
        self.net.conns.insert(id, conn);
        self.net.current.insert(pair(a, b), id);
        self.work.connections += 1;
        self.trace.note(self.now, &format!("up {a} {b} {id}"));
        let (na, nb) = (self.regions[a].name.clone(), self.regions[b].name.clone());
        self.handle(a, Event::PeerUp { peer: nb, conn: id })?;
        if self.alive(b) && self.regions[b].inc == self.net.conns[&id].incs[1] {
            self.handle(b, Event::PeerUp { peer: na, conn: id })?;
        }
        Ok(())
    }

    pub(super) fn dial(&mut self, a: usize, b: usize) -> Result<(), Failure> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        if let Some(&id) = self.net.current.get(&pair(a, b)) {
            if self.conn_valid(id) {
                return Ok(());
            }
            // A restarted end reconnects: the new connection replaces the old one, whose
            // surviving end learns it is down first.
            self.kill(id)?;
        }
        let open = !self.net.cut.contains(&(a, b)) && !self.net.cut.contains(&(b, a));
        if self.alive(a) && self.alive(b) && open && !self.net.current.contains_key(&pair(a, b)) {
            self.establish(a, b)?;
        }
        Ok(())
    }

    /// Ends connection `id`: queued frames are lost, each live end gets `PeerDown`, and the
    /// pair redials after a backoff.
    pub(super) fn kill(&mut self, id: u64) -> Result<(), Failure> {
        let Some(c) = self.net.conns.remove(&id) else {
            return Ok(());
        };
        let lost: usize = c.chans.iter().map(|ch| ch.queue.len()).sum();
        self.faults.frames_lost += lost as u64;
        let key = pair(c.ends[0], c.ends[1]);
        if self.net.current.get(&key) == Some(&id) {
            self.net.current.remove(&key);
        }
        self.trace.note(self.now, &format!("down {id}"));
        for s in 0..2 {
            let (r, other) = (c.ends[s], c.ends[1 - s]);
            if self.alive(r) && self.regions[r].inc == c.incs[s] {
                let peer = self.regions[other].name.clone();
                self.handle(r, Event::PeerDown { peer, conn: id })?;
            }
        }
        let at = self.now + self.rng_net.range(50, 1_000);
        self.push(at, Ev::Dial { a: key.0, b: key.1 });
        Ok(())
    }

    /// Performs `Effect::Send` from region `from`.
    pub(super) fn send(
        &mut self,
        from: usize,
        to_name: &str,
        conn: u64,
        mut msg: PeerMsg,
    ) -> Result<(), Failure> {
        if self.opts.step_checks {
            self.check_wire(from, &msg)?;
        }
        if self.opts.sabotage == Some(Sabotage::SkipSeq) && from == 0 {
            skip_a_seq(self.regions[0].id, &mut msg);
        }
        let sendable = self.net.conns.get(&conn).is_some_and(|c| {
            let s = c.side(from);
            c.ends[s] == from && c.incs[s] == self.regions[from].inc
        });
        // A full send queue cannot refuse a hello: it is the first frame of a fresh connection.
        let refused = self.phase == Phase::Workload
            && (!is_hello(&msg) || self.opts.beyond_contract)
            && self.rng_net.chance(self.p.p_send_fail);
        if !sendable || refused {
            self.faults.send_failures += u64::from(sendable);
            let peer = to_name.to_owned();
            return self.handle(from, Event::SendFailed { peer, conn });
        }
        self.enqueue(conn, from, msg);
        Ok(())
    }

    fn enqueue(&mut self, id: u64, from: usize, msg: PeerMsg) {
        let faulty = self.phase == Phase::Workload;
        let c = self
            .net
            .conns
            .get_mut(&id)
            .expect("send checked the connection");
        let dir = c.side(from);
        let to = c.ends[1 - dir];
        let (base, jitter) = self.p.delays[from][to];
        let chan = &mut c.chans[dir];
        let mut ready = self.now + base.max(1) + self.rng_net.range(0, jitter);
        if let Some(back) = chan.queue.back() {
            ready = ready.max(back.ready);
        }
        let beyond = self.opts.beyond_contract;
        if faulty && beyond && self.rng_net.chance(self.p.p_send_fail) {
            self.faults.silent_losses += 1;
            return;
        }
        let overtake = faulty
            && (beyond
                || (!is_hello(&msg) && chan.queue.back().is_some_and(|b| !is_hello(&b.msg))))
            && !chan.queue.is_empty()
            && self.rng_net.chance(self.p.p_reorder);
        if overtake {
            let prev = chan.queue.pop_back().expect("checked non-empty");
            chan.queue.push_back(Frame {
                ready: prev.ready,
                msg,
            });
            chan.queue.push_back(Frame {
                ready,
                msg: prev.msg,
            });
            self.faults.reorders += 1;
        } else {
            chan.queue.push_back(Frame { ready, msg });
        }
        if faulty && self.rng_net.chance(self.p.p_dup) {
            let back = chan.queue.back().expect("just pushed");
            let copy = Frame {
                ready: back.ready + self.rng_net.range(0, 20),
                msg: back.msg.clone(),
            };
            chan.queue.push_back(copy);
            self.faults.duplicates += 1;
        }
        if !chan.armed {
            chan.armed = true;
            let at = chan.queue.front().expect("just pushed").ready;
            self.push(at, Ev::Deliver { conn: id, dir });
        }
    }

    /// Delivers the head of one direction of a connection, if its path is open.
    pub(super) fn deliver(&mut self, id: u64, dir: usize) -> Result<(), Failure> {
        let now = self.now;
        let Some(c) = self.net.conns.get_mut(&id) else {
            return Ok(());
        };
        let (from, to) = (c.ends[dir], c.ends[1 - dir]);
        let receiver_gone = !self.regions[to].alive() || self.regions[to].inc != c.incs[1 - dir];
        let chan = &mut c.chans[dir];
        chan.armed = false;
        if receiver_gone {
            self.faults.frames_lost += chan.queue.len() as u64;
            chan.queue.clear();
            return Ok(());
        }
        if self.net.cut.contains(&(from, to)) {
            self.faults.frames_held += 1;
            return Ok(()); // re-armed when the path heals
        }
        let Some(frame) = chan.queue.pop_front() else {
            return Ok(());
        };
        if let Some(next) = chan.queue.front() {
            chan.armed = true;
            let at = next.ready.max(now);
            self.push(at, Ev::Deliver { conn: id, dir });
        }
        let peer = self.regions[from].name.clone();
        let ev = Event::Frame {
            peer,
            conn: id,
            msg: frame.msg,
        };
        self.handle(to, ev)
    }

    /// Recomputes which connections' paths deliver nothing, starting their idle timers.
    pub(super) fn update_broken(&mut self) {
        let ids: Vec<u64> = self.net.conns.keys().copied().collect();
        for id in ids {
            let c = &self.net.conns[&id];
            let [a, b] = c.ends;
            let ends_ok = (0..2).all(|s| {
                let r = c.ends[s];
                self.regions[r].alive() && self.regions[r].inc == c.incs[s]
            });
            let broken =
                !ends_ok || self.net.cut.contains(&(a, b)) || self.net.cut.contains(&(b, a));
            let since = c.broken_since;
            let c = self.net.conns.get_mut(&id).expect("listed above");
            match (broken, since) {
                (true, None) => {
                    c.broken_since = Some(self.now);
                    let at = self.now + self.p.idle_timeout_ms;
                    self.push(at, Ev::IdleCheck { conn: id });
                }
                (false, Some(_)) => c.broken_since = None,
                _ => {}
            }
        }
    }

    pub(super) fn idle_check(&mut self, id: u64) -> Result<(), Failure> {
        let expired = self.net.conns.get(&id).is_some_and(|c| {
            c.broken_since
                .is_some_and(|t| t + self.p.idle_timeout_ms <= self.now)
        });
        if expired {
            self.faults.idle_timeouts += 1;
            self.kill(id)?;
        }
        Ok(())
    }

    /// Starts a partition: symmetric, one-way, or a bridge (one region sees both sides).
    pub(super) fn partition(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Workload || !self.net.cut.is_empty() {
            return Ok(());
        }
        let n = self.regions.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng_fault.index(i + 1);
            order.swap(i, j);
        }
        let kind = self.rng_fault.below(3);
        let (bridge, rest) = if kind == 2 {
            (Some(order[0]), &order[1..])
        } else {
            (None, &order[..])
        };
        let split = self.rng_fault.range(1, rest.len() as u64 - 1) as usize;
        let (left, right) = rest.split_at(split);
        for &a in left {
            for &b in right {
                self.net.cut.insert((a, b));
                if kind != 1 {
                    self.net.cut.insert((b, a));
                }
            }
        }
        match kind {
            0 => self.faults.partitions_symmetric += 1,
            1 => self.faults.partitions_one_way += 1,
            _ => self.faults.partitions_bridge += 1,
        }
        self.faults.cuts_mid_transfer += self.cut_mid_transfer();
        let what = format!("partition kind {kind} {left:?} | {right:?} bridge {bridge:?}");
        self.trace.note(self.now, &what);
        if self.trace.verbose() {
            self.trace.line(format!("{:>7} PARTITION {what}", self.now));
        }
        self.update_broken();
        let (lo, hi) = self.p.partition_len_ms;
        let at = self.now + self.rng_fault.range(lo, hi);
        self.push(at, Ev::Heal);
        Ok(())
    }

    /// Regions fetching a snapshot whose path to or from their source is now cut.
    fn cut_mid_transfer(&self) -> u64 {
        let fetching = |r: usize| {
            let b = self.regions[r].machine()?.bootstrap()?;
            let source = b.source.as_deref()?;
            (b.phase == leader_core::BootstrapPhase::Fetching).then(|| self.index_of(source))
        };
        let cut =
            |r: usize, s: usize| self.net.cut.contains(&(r, s)) || self.net.cut.contains(&(s, r));
        (0..self.regions.len())
            .filter(|r| fetching(*r).is_some_and(|s| cut(*r, s)))
            .count() as u64
    }

    pub(super) fn heal(&mut self) -> Result<(), Failure> {
        self.heal_all()?;
        if self.phase == Phase::Workload
            && let Some((lo, hi)) = self.p.partition_gap_ms
        {
            let at = self.now + self.rng_fault.range(lo, hi);
            self.push(at, Ev::Partition);
        }
        Ok(())
    }

    /// Opens every path, releases held frames and redials every pair without a connection.
    pub(super) fn heal_all(&mut self) -> Result<(), Failure> {
        if !self.net.cut.is_empty() && self.trace.verbose() {
            self.trace.line(format!("{:>7} HEAL", self.now));
        }
        self.net.cut.clear();
        self.trace.note(self.now, "heal");
        self.update_broken();
        let now = self.now;
        let mut rearm = Vec::new();
        for (id, c) in &mut self.net.conns {
            for (dir, chan) in c.chans.iter_mut().enumerate() {
                if !chan.armed && !chan.queue.is_empty() {
                    chan.armed = true;
                    rearm.push((*id, dir));
                }
            }
        }
        for (conn, dir) in rearm {
            self.push(now, Ev::Deliver { conn, dir });
        }
        for a in 0..self.regions.len() {
            for b in a + 1..self.regions.len() {
                if self.current_conn(a, b).is_none() {
                    let at = now + self.rng_net.range(10, 300);
                    self.push(at, Ev::Dial { a, b });
                }
            }
        }
        Ok(())
    }

    /// Resets one live connection, as a middlebox or a path change would.
    pub(super) fn conn_reset(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Workload {
            return Ok(());
        }
        if let Some((lo, hi)) = self.p.reset_gap_ms {
            let at = self.now + self.rng_fault.range(lo, hi);
            self.push(at, Ev::ConnReset);
        }
        let live: Vec<u64> = self
            .net
            .current
            .values()
            .copied()
            .filter(|id| self.conn_valid(*id))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let id = live[self.rng_fault.index(live.len())];
        self.faults.conn_resets += 1;
        self.kill(id)
    }
}

/// [`Sabotage::SkipSeq`]: the first region's stream of its own writes leaves out write
/// [`SKIPPED_SEQ`] and numbers the following ones one lower, so the run still looks gap-free.
fn skip_a_seq(origin: conflict::ReplicaId, msg: &mut PeerMsg) {
    let PeerMsg::Batch(b) = msg else { return };
    if b.origin != origin {
        return;
    }
    b.entries.retain(|e| e.seq().0 != SKIPPED_SEQ);
    for e in &mut b.entries {
        if e.seq().0 > SKIPPED_SEQ {
            e.write.dot.seq = Seq(e.seq().0 - 1);
        }
    }
}
