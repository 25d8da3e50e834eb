//! The delay line: datagrams held for their release time, in one bounded queue.

use super::*;

/// A datagram waiting for its release time.
pub(super) struct Delayed {
    pub(super) release_at: Instant,
    /// Tie-breaker that keeps packets with the same release time in send order.
    pub(super) seq: u64,
    pub(super) destination: SocketAddr,
    pub(super) ecn: Option<EcnCodepoint>,
    pub(super) src_ip: Option<IpAddr>,
    pub(super) contents: Box<[u8]>,
}

impl Delayed {
    pub(super) fn key(&self) -> (Instant, u64) {
        (self.release_at, self.seq)
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // Reversed: `BinaryHeap` is a max-heap and the earliest packet must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// The queue of delayed packets and the state of the task that releases them.
#[derive(Default)]
pub(super) struct DelayLine {
    pub(super) state: Mutex<DelayState>,
    /// Wakes the releaser when an earlier packet arrives or the socket closes.
    pub(super) wake: Notify,
    /// Number of queued packets, read without the lock on the fast path.
    pub(super) queued: AtomicUsize,
    pub(super) closed: AtomicBool,
}

#[derive(Default)]
pub(super) struct DelayState {
    pub(super) heap: BinaryHeap<Delayed>,
    pub(super) next_seq: u64,
    /// Release time of the last queued packet per destination: later packets to the same
    /// destination never leave before it, which keeps the order when latency changes.
    pub(super) last_release: BTreeMap<SocketAddr, Instant>,
    pub(super) releaser_started: bool,
}

/// Outcome of offering a packet to the delay line.
pub(super) enum Queued {
    /// The packet went into the queue; the releaser must be started if this is true.
    Accepted { start_releaser: bool },
    /// The queue is full; the packet is dropped.
    Full,
    /// Nothing to wait for: send it now.
    NotNeeded,
}

impl DelayLine {
    /// Queues `transmit` for `now + delay`, or later if an earlier packet to the same destination
    /// is still waiting and reordering is not allowed.
    pub(super) fn offer(
        &self,
        transmit: &Transmit<'_>,
        delay: Duration,
        may_reorder: bool,
    ) -> Queued {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut release_at = now + delay;
        let last = state.last_release.get(&transmit.destination).copied();
        if let Some(last) = last.filter(|last| *last > now) {
            if !may_reorder {
                release_at = release_at.max(last);
            }
        } else if delay.is_zero() {
            return Queued::NotNeeded;
        }
        if state.heap.len() >= DELAY_QUEUE_CAPACITY {
            return Queued::Full;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.heap.push(Delayed {
            release_at,
            seq,
            destination: transmit.destination,
            ecn: transmit.ecn,
            src_ip: transmit.src_ip,
            contents: transmit.contents.into(),
        });
        let last = state
            .last_release
            .entry(transmit.destination)
            .or_insert(release_at);
        *last = (*last).max(release_at);
        self.queued.store(state.heap.len(), Ordering::Release);
        let start_releaser = !state.releaser_started;
        state.releaser_started = true;
        drop(state);
        // A stored permit when the releaser is busy is fine: it just re-checks the queue.
        self.wake.notify_one();
        Queued::Accepted { start_releaser }
    }

    /// Takes every packet due at `now`, or returns when the next one is due.
    pub(super) fn take_due(&self, now: Instant, due: &mut Vec<Delayed>) -> Option<Instant> {
        let mut state = lock(&self.state);
        while let Some(first) = state.heap.peek() {
            if first.release_at > now {
                break;
            }
            let Some(packet) = state.heap.pop() else {
                break;
            };
            if state.last_release.get(&packet.destination) == Some(&packet.release_at) {
                state.last_release.remove(&packet.destination);
            }
            due.push(packet);
        }
        self.queued.store(state.heap.len(), Ordering::Release);
        state.heap.peek().map(|next| next.release_at)
    }

    /// Empties the queue when the socket closes; returns how many packets were lost.
    pub(super) fn drain(&self) -> usize {
        let mut state = lock(&self.state);
        let dropped = state.heap.len();
        state.heap.clear();
        state.last_release.clear();
        self.queued.store(0, Ordering::Release);
        dropped
    }
}
