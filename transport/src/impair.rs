//! WAN impairment for simulations: a wrapper around quinn's UDP socket that adds per-destination
//! one-way latency, jitter, loss and partitions, changeable at runtime.
//!
//! `meridian simulate` runs every region on 127.0.0.1, where packets arrive in microseconds and
//! never get lost. To see how replication behaves across real WAN links (lag, retransmits,
//! partitions that heal), each region's endpoint sends through an [`ImpairedSocket`], and the
//! simulator (or a test) steers the faults through the [`ImpairmentHandle`] it got back.
//!
//! # Model
//!
//! * **Outbound** (what this socket sends to `dest`), configured per destination with
//!   [`ImpairmentHandle::set`] as a [`LinkImpairment`]: a blocked link drops every packet; otherwise
//!   a packet is lost with probability `loss`, and the survivors are held for
//!   `latency ± jitter` before they go out. Latency on the send side is the one-way delay of that
//!   direction, so a symmetric WAN link of one-way delay `d` is `latency = d` on both ends.
//! * **Inbound** (what this socket receives): [`ImpairmentHandle::block_inbound_from`] drops every
//!   packet from one source. A one-way partition is one blocked direction; a full partition
//!   between A and B is "A blocks outbound to B and inbound from B" (see
//!   [`ImpairmentHandle::partition`]) or "both sides block outbound".
//! * **Order**: without jitter the packets to one destination leave in the order they were sent,
//!   even across a change of latency. Jitter may reorder them, as a real WAN does.
//! * **Bounds**: delayed packets wait in one queue of at most [`DELAY_QUEUE_CAPACITY`] packets; a
//!   packet that finds it full is dropped and counted, never buffered without limit.
//! * **Determinism**: loss and jitter draw from one RNG seeded by the caller, so the same sequence
//!   of sends with the same seed drops and delays exactly the same packets.
//! * **Off by default**: with nothing configured a packet goes straight to the inner socket.
//!
//! Every fault is counted ([`ImpairmentStats`]) so a test can prove that its faults fired.
//!
//! # GSO
//!
//! The wrapper reports [`AsyncUdpSocket::max_transmit_segments`] = 1, so quinn never hands it a
//! GSO batch and every [`Transmit`] is one datagram that gets its own loss and delay decision. A
//! batch that arrives anyway is split into its datagrams.
//!
//! # Time
//!
//! Delays use tokio's clock and timers, so the same wrapper works on real sockets and in virtual
//! time (tokio's paused clock, or a turmoil simulation through [`crate::sim`]). The releaser task
//! that sends delayed packets is spawned on the current tokio runtime the first time a packet is
//! delayed, and ends when the socket is dropped.

use std::{
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    fmt,
    future::poll_fn,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use quinn::{
    AsyncUdpSocket, UdpPoller,
    udp::{EcnCodepoint, RecvMeta, Transmit},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{sync::Notify, time::Instant};

/// How many delayed packets one socket may hold at once.
///
/// Policy: a WAN link is a bounded buffer too. 8192 full-size QUIC packets (about 10 MB) cover a
/// fast loopback sender behind a few hundred milliseconds of latency; past that the packet is
/// dropped (counted in [`ImpairmentStats::dropped_queue_full`]) and QUIC treats it as loss.
pub const DELAY_QUEUE_CAPACITY: usize = 8192;

/// The largest `latency + jitter` accepted for one link.
///
/// A delay longer than any QUIC idle timeout is a partition in disguise; asking for one is
/// almost certainly a unit mistake (seconds for milliseconds), so it is rejected.
pub const MAX_LINK_DELAY: Duration = Duration::from_secs(60);

/// What happens to packets this socket sends to one destination.
///
/// The default value is a perfect link: no delay, no loss, not blocked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkImpairment {
    /// One-way delay added to every packet sent to the destination.
    pub latency: Duration,
    /// Each packet's delay is drawn uniformly from `latency - jitter ..= latency + jitter`
    /// (never below zero). Non-zero jitter may reorder packets, like a real WAN.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a packet is dropped (decided before any delay).
    pub loss: f64,
    /// Drop every packet to the destination: the outbound half of a partition.
    pub blocked: bool,
}

impl LinkImpairment {
    /// A link that only adds a fixed one-way `latency`: the common case when modelling the
    /// distance between two regions.
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// A link that drops everything: the outbound half of a partition.
    pub fn blocked() -> Self {
        Self {
            blocked: true,
            ..Self::default()
        }
    }

    /// Whether this setting changes nothing, so the destination can be forgotten.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }

    /// Checks that the setting is usable, so bad input is an error value and never a panic in
    /// the send path.
    pub fn validate(&self) -> Result<(), ImpairmentError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(ImpairmentError::InvalidLoss(self.loss));
        }
        let delay_max = self.latency.saturating_add(self.jitter);
        if delay_max > MAX_LINK_DELAY {
            return Err(ImpairmentError::DelayTooLarge(delay_max));
        }
        Ok(())
    }
}

/// Why an impairment setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImpairmentError {
    /// The loss probability is not a number in `0.0..=1.0`.
    #[error(
        "loss probability {0} is outside 0.0..=1.0; use 0.0 for no loss and 1.0 to drop everything (or `blocked` for a partition)"
    )]
    InvalidLoss(f64),
    /// `latency + jitter` is longer than [`MAX_LINK_DELAY`].
    #[error(
        "link delay of up to {0:?} is longer than the {MAX_LINK_DELAY:?} limit; check the unit, or use `blocked` to model a partition"
    )]
    DelayTooLarge(Duration),
}

/// A snapshot of one socket's impairment counters, so tests can prove their faults fired.
///
/// All counts are datagrams, since the socket was wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImpairmentStats {
    /// Sent to the inner socket at once, without delay.
    pub passed: u64,
    /// Accepted into the delay queue.
    pub delayed: u64,
    /// Sent to the inner socket after their delay.
    pub released: u64,
    /// Dropped by the `loss` draw.
    pub dropped_loss: u64,
    /// Dropped because the delay queue held [`DELAY_QUEUE_CAPACITY`] packets.
    pub dropped_queue_full: u64,
    /// Dropped because the destination was blocked.
    pub blocked_outbound: u64,
    /// Received from a blocked source and discarded.
    pub blocked_inbound: u64,
    /// Delayed packets that never left: the inner socket failed, no tokio runtime was available
    /// to delay them, or the socket was dropped while they waited.
    pub send_errors: u64,
    /// Packets waiting in the delay queue right now.
    pub queued: u64,
}

#[derive(Debug, Default)]
struct Counters {
    passed: AtomicU64,
    delayed: AtomicU64,
    released: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue_full: AtomicU64,
    blocked_outbound: AtomicU64,
    blocked_inbound: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state consistent
/// at each step, so a panic elsewhere never leaves it half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The settings shared by the socket and its handles.
#[derive(Debug)]
struct Control {
    settings: Mutex<Settings>,
    /// Set while at least one source is blocked inbound, so the receive path skips the lock
    /// when nothing is configured.
    inbound_active: AtomicBool,
    counters: Counters,
}

#[derive(Debug)]
struct Settings {
    outbound: BTreeMap<SocketAddr, LinkImpairment>,
    inbound_blocked: BTreeSet<SocketAddr>,
    rng: StdRng,
}

/// What to do with one outbound datagram.
enum Verdict {
    Drop,
    Send { delay: Duration, may_reorder: bool },
}

impl Control {
    /// Decides the fate of one datagram to `dest`, counting drops.
    fn judge(&self, dest: SocketAddr) -> Verdict {
        let mut settings = lock(&self.settings);
        let Some(link) = settings.outbound.get(&dest).copied() else {
            return Verdict::Send {
                delay: Duration::ZERO,
                may_reorder: false,
            };
        };
        if link.blocked {
            Counters::add(&self.counters.blocked_outbound, 1);
            return Verdict::Drop;
        }
        if link.loss > 0.0 && settings.rng.random_bool(link.loss) {
            Counters::add(&self.counters.dropped_loss, 1);
            return Verdict::Drop;
        }
        let delay = if link.jitter.is_zero() {
            link.latency
        } else {
            let spread = link.jitter.as_nanos().saturating_mul(2);
            let spread = u64::try_from(spread).unwrap_or(u64::MAX);
            let offset = Duration::from_nanos(settings.rng.random_range(0..=spread));
            (link.latency + offset).saturating_sub(link.jitter)
        };
        Verdict::Send {
            delay,
            may_reorder: !link.jitter.is_zero(),
        }
    }

    fn is_inbound_blocked(&self, src: SocketAddr) -> bool {
        self.inbound_active.load(Ordering::Acquire)
            && lock(&self.settings).inbound_blocked.contains(&src)
    }
}

/// A datagram waiting for its release time.
struct Delayed {
    release_at: Instant,
    /// Tie-breaker that keeps packets with the same release time in send order.
    seq: u64,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    contents: Box<[u8]>,
}

impl Delayed {
    fn key(&self) -> (Instant, u64) {
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
struct DelayLine {
    state: Mutex<DelayState>,
    /// Wakes the releaser when an earlier packet arrives or the socket closes.
    wake: Notify,
    /// Number of queued packets, read without the lock on the fast path.
    queued: AtomicUsize,
    closed: AtomicBool,
}

#[derive(Default)]
struct DelayState {
    heap: BinaryHeap<Delayed>,
    next_seq: u64,
    /// Release time of the last queued packet per destination: later packets to the same
    /// destination never leave before it, which keeps the order when latency changes.
    last_release: BTreeMap<SocketAddr, Instant>,
    releaser_started: bool,
}

/// Outcome of offering a packet to the delay line.
enum Queued {
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
    fn offer(&self, transmit: &Transmit<'_>, delay: Duration, may_reorder: bool) -> Queued {
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
    fn take_due(&self, now: Instant, due: &mut Vec<Delayed>) -> Option<Instant> {
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
    fn drain(&self) -> usize {
        let mut state = lock(&self.state);
        let dropped = state.heap.len();
        state.heap.clear();
        state.last_release.clear();
        self.queued.store(0, Ordering::Release);
        dropped
    }
}

/// A [`quinn::AsyncUdpSocket`] that impairs the traffic of the socket it wraps.
///
/// Create it with [`ImpairedSocket::wrap`], give it to quinn (for example
/// `Endpoint::new_with_abstract_socket`), and steer it through the returned handle.
pub struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    control: Arc<Control>,
    delay: Arc<DelayLine>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .field("queued", &self.delay.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ImpairedSocket {
    /// Wraps `inner`; `seed` seeds the RNG behind loss and jitter, so a run can be repeated.
    ///
    /// The wrapper starts with no impairment: it changes nothing until the returned handle
    /// configures a fault.
    pub fn wrap(inner: Arc<dyn AsyncUdpSocket>, seed: u64) -> (Arc<Self>, ImpairmentHandle) {
        let control = Arc::new(Control {
            settings: Mutex::new(Settings {
                outbound: BTreeMap::new(),
                inbound_blocked: BTreeSet::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            inbound_active: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let delay = Arc::new(DelayLine::default());
        let handle = ImpairmentHandle {
            control: control.clone(),
            delay: delay.clone(),
        };
        let socket = Arc::new(Self {
            inner,
            control,
            delay,
        });
        (socket, handle)
    }

    /// Sends one datagram (never a GSO batch) through the impairment.
    fn send_one(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let counters = &self.control.counters;
        let (delay, may_reorder) = match self.control.judge(transmit.destination) {
            // Dropping is silent success, as on a real network: an error here would make quinn
            // tear the connection down.
            Verdict::Drop => return Ok(()),
            Verdict::Send { delay, may_reorder } => (delay, may_reorder),
        };
        if delay.is_zero() && self.delay.queued.load(Ordering::Acquire) == 0 {
            return self.pass(transmit);
        }
        match self.delay.offer(transmit, delay, may_reorder) {
            Queued::NotNeeded => self.pass(transmit),
            Queued::Full => {
                Counters::add(&counters.dropped_queue_full, 1);
                Ok(())
            }
            Queued::Accepted { start_releaser } => {
                Counters::add(&counters.delayed, 1);
                if start_releaser {
                    self.start_releaser();
                }
                Ok(())
            }
        }
    }

    fn pass(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        Counters::add(&self.control.counters.passed, 1);
        Ok(())
    }

    fn start_releaser(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run the timer on: the queued packets can never leave. This cannot
            // happen under quinn, whose driver always runs on the runtime; count it, don't panic.
            let lost = self.delay.drain();
            Counters::add(&self.control.counters.send_errors, lost as u64);
            tracing::warn!(
                lost,
                "impaired socket used outside a tokio runtime; delayed packets dropped"
            );
            return;
        };
        runtime.spawn(release_delayed(
            self.delay.clone(),
            self.inner.clone(),
            self.control.clone(),
        ));
    }
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        self.delay.closed.store(true, Ordering::Release);
        self.delay.wake.notify_one();
    }
}

/// Sends delayed packets when they fall due, until the socket is dropped.
async fn release_delayed(
    line: Arc<DelayLine>,
    inner: Arc<dyn AsyncUdpSocket>,
    control: Arc<Control>,
) {
    let counters = &control.counters;
    let mut poller = inner.clone().create_io_poller();
    let mut due = Vec::new();
    while !line.closed.load(Ordering::Acquire) {
        let next = line.take_due(Instant::now(), &mut due);
        for packet in due.drain(..) {
            let transmit = Transmit {
                destination: packet.destination,
                ecn: packet.ecn,
                contents: &packet.contents,
                segment_size: None,
                src_ip: packet.src_ip,
            };
            match send_when_writable(inner.as_ref(), poller.as_mut(), &transmit).await {
                Ok(()) => Counters::add(&counters.released, 1),
                Err(error) => {
                    Counters::add(&counters.send_errors, 1);
                    tracing::debug!(%error, dest = %packet.destination, "delayed packet not sent");
                }
            }
        }
        match next {
            // `biased`: no random branch choice, so simulations stay deterministic.
            Some(at) => tokio::select! {
                biased;
                () = line.wake.notified() => {}
                () = tokio::time::sleep_until(at) => {}
            },
            None => line.wake.notified().await,
        }
    }
    let lost = line.drain();
    Counters::add(&counters.send_errors, lost as u64);
}

/// Sends one datagram, waiting for the socket to become writable when it would block.
async fn send_when_writable(
    socket: &dyn AsyncUdpSocket,
    mut poller: Pin<&mut dyn UdpPoller>,
    transmit: &Transmit<'_>,
) -> io::Result<()> {
    loop {
        match socket.try_send(transmit) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
            }
            other => return other,
        }
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = match transmit.segment_size {
            Some(segment) if segment > 0 && segment < transmit.contents.len() => segment,
            _ => return self.send_one(transmit),
        };
        // Defensive: quinn sends no batches to a socket reporting one segment (see the module
        // doc). Split it; once the first datagram is out, a failure of a later one is loss.
        for (index, contents) in transmit.contents.chunks(segment).enumerate() {
            let single = Transmit {
                contents,
                segment_size: None,
                ..transmit.clone()
            };
            match self.send_one(&single) {
                Ok(()) => {}
                Err(error) if index == 0 => return Err(error),
                Err(_) => Counters::add(&self.control.counters.send_errors, 1),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            if !self.control.inbound_active.load(Ordering::Acquire) {
                return Poll::Ready(Ok(received));
            }
            let kept = self.discard_blocked(bufs, meta, received);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything came from blocked sources: poll again, which either yields more or
            // registers the waker.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

impl ImpairedSocket {
    /// Removes the received entries whose source is blocked, compacting the rest to the front
    /// of `bufs`/`meta`; returns how many are kept.
    fn discard_blocked(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        received: usize,
    ) -> usize {
        let mut kept = 0;
        for index in 0..received {
            let entry = meta[index];
            if self.control.is_inbound_blocked(entry.addr) {
                // With GRO one entry may hold several datagrams, all from the same source.
                let datagrams = entry.len.div_ceil(entry.stride.max(1)).max(1);
                Counters::add(&self.control.counters.blocked_inbound, datagrams as u64);
                continue;
            }
            if kept != index {
                meta[kept] = entry;
                let (front, back) = bufs.split_at_mut(index);
                front[kept][..entry.len].copy_from_slice(&back[0][..entry.len]);
            }
            kept += 1;
        }
        kept
    }
}

/// Steers the impairment of one [`ImpairedSocket`] at runtime.
///
/// Cheap to clone and safe to share between tasks and threads; changes apply to the next packet.
/// The handle stays usable after the socket is gone (changes then have no effect).
#[derive(Clone)]
pub struct ImpairmentHandle {
    control: Arc<Control>,
    delay: Arc<DelayLine>,
}

impl fmt::Debug for ImpairmentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairmentHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ImpairmentHandle {
    /// Sets what happens to packets sent to `dest` from now on, replacing any earlier setting.
    ///
    /// Packets already delayed keep their release time.
    pub fn set(&self, dest: SocketAddr, link: LinkImpairment) -> Result<(), ImpairmentError> {
        link.validate()?;
        let mut settings = lock(&self.control.settings);
        if link.is_noop() {
            settings.outbound.remove(&dest);
        } else {
            settings.outbound.insert(dest, link);
        }
        Ok(())
    }

    /// The current setting for packets sent to `dest`, if any.
    pub fn get(&self, dest: SocketAddr) -> Option<LinkImpairment> {
        lock(&self.control.settings).outbound.get(&dest).copied()
    }

    /// Makes the link to `dest` perfect again (packets already delayed still wait).
    pub fn clear(&self, dest: SocketAddr) {
        lock(&self.control.settings).outbound.remove(&dest);
    }

    /// Removes every outbound setting and every inbound block: the socket behaves as the one it
    /// wraps (packets already delayed still wait).
    pub fn clear_all(&self) {
        let mut settings = lock(&self.control.settings);
        settings.outbound.clear();
        settings.inbound_blocked.clear();
        self.control.inbound_active.store(false, Ordering::Release);
    }

    /// Discards every packet received from `src`: the inbound half of a partition.
    pub fn block_inbound_from(&self, src: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.inbound_blocked.insert(src);
        self.control.inbound_active.store(true, Ordering::Release);
    }

    /// Accepts packets from `src` again.
    pub fn unblock_inbound_from(&self, src: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.inbound_blocked.remove(&src);
        self.control
            .inbound_active
            .store(!settings.inbound_blocked.is_empty(), Ordering::Release);
    }

    /// Whether packets from `src` are being discarded.
    pub fn is_inbound_blocked(&self, src: SocketAddr) -> bool {
        lock(&self.control.settings).inbound_blocked.contains(&src)
    }

    /// Cuts this socket off from `peer` in both directions (block outbound to it and inbound
    /// from it), keeping its latency, jitter and loss for when the link heals.
    pub fn partition(&self, peer: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        settings.outbound.entry(peer).or_default().blocked = true;
        settings.inbound_blocked.insert(peer);
        self.control.inbound_active.store(true, Ordering::Release);
    }

    /// Undoes [`ImpairmentHandle::partition`] (and any one-way block) for `peer`: both directions
    /// flow again, with the link's latency, jitter and loss unchanged.
    pub fn heal(&self, peer: SocketAddr) {
        let mut settings = lock(&self.control.settings);
        if let Some(link) = settings.outbound.get_mut(&peer) {
            link.blocked = false;
            if link.is_noop() {
                settings.outbound.remove(&peer);
            }
        }
        settings.inbound_blocked.remove(&peer);
        self.control
            .inbound_active
            .store(!settings.inbound_blocked.is_empty(), Ordering::Release);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ImpairmentStats {
        let c = &self.control.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ImpairmentStats {
            passed: read(&c.passed),
            delayed: read(&c.delayed),
            released: read(&c.released),
            dropped_loss: read(&c.dropped_loss),
            dropped_queue_full: read(&c.dropped_queue_full),
            blocked_outbound: read(&c.blocked_outbound),
            blocked_inbound: read(&c.blocked_inbound),
            send_errors: read(&c.send_errors),
            queued: self.delay.queued.load(Ordering::Relaxed) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Exact checks in tokio's paused clock against an in-memory inner socket.

    use std::collections::VecDeque;

    use super::*;

    const DEST: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);
    const OTHER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9001);

    /// An inner socket that records what is sent (with tokio's time) and delivers what a test
    /// pushes into `inbox`.
    #[derive(Debug, Default)]
    struct Wire {
        sent: Mutex<Vec<(Instant, SocketAddr, Vec<u8>)>>,
        inbox: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    }

    #[derive(Debug)]
    struct AlwaysWritable;
    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Wire {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }
        fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
            assert_eq!(t.segment_size, None, "the wrapper must not pass batches on");
            lock(&self.sent).push((Instant::now(), t.destination, t.contents.to_vec()));
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let mut inbox = lock(&self.inbox);
            let mut n = 0;
            while n < bufs.len() {
                let Some((addr, data)) = inbox.pop_front() else {
                    break;
                };
                bufs[n][..data.len()].copy_from_slice(&data);
                meta[n] = RecvMeta {
                    addr,
                    len: data.len(),
                    stride: data.len(),
                    ..RecvMeta::default()
                };
                n += 1;
            }
            if n == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(n))
            }
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(OTHER)
        }
    }

    fn setup(seed: u64) -> (Arc<Wire>, Arc<ImpairedSocket>, ImpairmentHandle) {
        let wire = Arc::new(Wire::default());
        let (socket, handle) = ImpairedSocket::wrap(wire.clone(), seed);
        (wire, socket, handle)
    }

    fn send(socket: &ImpairedSocket, dest: SocketAddr, payload: &[u8]) {
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        socket.try_send(&transmit).expect("send");
    }

    fn sent(wire: &Wire) -> Vec<(Instant, SocketAddr, Vec<u8>)> {
        lock(&wire.sent).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_configured_passes_straight_through() {
        let (wire, socket, handle) = setup(1);
        let t0 = Instant::now();
        send(&socket, DEST, b"a");
        assert_eq!(sent(&wire), vec![(t0, DEST, b"a".to_vec())]);
        assert_eq!(
            handle.stats(),
            ImpairmentStats {
                passed: 1,
                ..ImpairmentStats::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_each_packet_by_exactly_the_configured_time() {
        let (wire, socket, handle) = setup(1);
        handle
            .set(DEST, LinkImpairment::latency(Duration::from_millis(40)))
            .unwrap();
        let t0 = Instant::now();
        send(&socket, DEST, b"1");
        send(&socket, OTHER, b"x");
        tokio::time::sleep(Duration::from_millis(10)).await;
        send(&socket, DEST, b"2");
        assert_eq!(sent(&wire), vec![(t0, OTHER, b"x".to_vec())]);
        assert_eq!(handle.stats().queued, 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ms = Duration::from_millis;
        assert_eq!(
            sent(&wire)[1..],
            [
                (t0 + ms(40), DEST, b"1".to_vec()),
                (t0 + ms(50), DEST, b"2".to_vec())
            ]
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.delayed, stats.released, stats.passed, stats.queued),
            (2, 2, 1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn order_to_one_destination_survives_a_latency_decrease_and_a_clear() {
        let (wire, socket, handle) = setup(1);
        let t0 = Instant::now();
        handle
            .set(DEST, LinkImpairment::latency(Duration::from_millis(100)))
            .unwrap();
        send(&socket, DEST, b"1");
        handle
            .set(DEST, LinkImpairment::latency(Duration::from_millis(10)))
            .unwrap();
        send(&socket, DEST, b"2");
        handle.clear(DEST);
        send(&socket, DEST, b"3");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got: Vec<_> = sent(&wire)
            .into_iter()
            .map(|(t, _, p)| (t - t0, p))
            .collect();
        let at = Duration::from_millis(100);
        assert_eq!(
            got,
            vec![
                (at, b"1".to_vec()),
                (at, b"2".to_vec()),
                (at, b"3".to_vec())
            ]
        );
        // Once the queue is empty, an unimpaired packet goes out at once again.
        let t1 = Instant::now();
        send(&socket, DEST, b"4");
        assert_eq!(sent(&wire).last().unwrap().0, t1);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_bounds_and_may_reorder() {
        let (wire, socket, handle) = setup(7);
        let link = LinkImpairment {
            latency: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            ..LinkImpairment::default()
        };
        handle.set(DEST, link).unwrap();
        let t0 = Instant::now();
        for i in 0..200u32 {
            send(&socket, DEST, &i.to_be_bytes());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = sent(&wire);
        assert_eq!(got.len(), 200);
        for (at, _, _) in &got {
            let delay = *at - t0;
            assert!(
                (Duration::from_millis(30)..=Duration::from_millis(70)).contains(&delay),
                "{delay:?}"
            );
        }
        let order: Vec<u32> = got
            .iter()
            .map(|(_, _, p)| u32::from_be_bytes(p[..].try_into().unwrap()))
            .collect();
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "jitter should reorder"
        );
    }

    /// Which of `n` numbered packets get through a 50 % lossy link with `seed`.
    async fn survivors(seed: u64, n: u32) -> (Vec<u32>, ImpairmentStats) {
        let (wire, socket, handle) = setup(seed);
        let link = LinkImpairment {
            loss: 0.5,
            ..LinkImpairment::default()
        };
        handle.set(DEST, link).unwrap();
        for i in 0..n {
            send(&socket, DEST, &i.to_be_bytes());
        }
        let got = sent(&wire)
            .iter()
            .map(|(_, _, p)| u32::from_be_bytes(p[..].try_into().unwrap()))
            .collect();
        (got, handle.stats())
    }

    #[tokio::test(start_paused = true)]
    async fn loss_is_exactly_repeatable_for_a_seed() {
        let (first, stats) = survivors(42, 1000).await;
        let (second, _) = survivors(42, 1000).await;
        let (other_seed, _) = survivors(43, 1000).await;
        assert_eq!(first, second);
        assert_ne!(first, other_seed);
        assert_eq!(stats.dropped_loss + stats.passed, 1000);
        assert_eq!(first.len() as u64, stats.passed);
        assert!((400..=600).contains(&stats.dropped_loss), "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn blocked_link_drops_everything_until_cleared() {
        let (wire, socket, handle) = setup(1);
        handle.set(DEST, LinkImpairment::blocked()).unwrap();
        assert_eq!(handle.get(DEST), Some(LinkImpairment::blocked()));
        send(&socket, DEST, b"lost");
        send(&socket, OTHER, b"fine");
        handle.clear(DEST);
        assert_eq!(handle.get(DEST), None);
        send(&socket, DEST, b"back");
        let got: Vec<_> = sent(&wire).into_iter().map(|(_, d, p)| (d, p)).collect();
        assert_eq!(
            got,
            vec![(OTHER, b"fine".to_vec()), (DEST, b"back".to_vec())]
        );
        assert_eq!(handle.stats().blocked_outbound, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn full_delay_queue_drops_and_counts() {
        let (wire, socket, handle) = setup(1);
        handle
            .set(DEST, LinkImpairment::latency(Duration::from_secs(1)))
            .unwrap();
        for _ in 0..DELAY_QUEUE_CAPACITY + 10 {
            send(&socket, DEST, b"p");
        }
        let stats = handle.stats();
        assert_eq!(stats.queued, DELAY_QUEUE_CAPACITY as u64);
        assert_eq!(stats.dropped_queue_full, 10);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(sent(&wire).len(), DELAY_QUEUE_CAPACITY);
        assert_eq!(handle.stats().released, DELAY_QUEUE_CAPACITY as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_socket_stops_the_releaser_and_counts_what_it_held() {
        let (wire, socket, handle) = setup(1);
        handle
            .set(DEST, LinkImpairment::latency(Duration::from_secs(1)))
            .unwrap();
        send(&socket, DEST, b"p");
        tokio::task::yield_now().await;
        drop(socket);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(sent(&wire).is_empty());
        assert_eq!(handle.stats().send_errors, 1);
        // The releaser dropped its reference to the inner socket when it ended.
        assert_eq!(Arc::strong_count(&wire), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn inbound_block_discards_one_source_and_keeps_the_rest_in_order() {
        let (wire, socket, handle) = setup(1);
        lock(&wire.inbox).extend([
            (DEST, b"a1".to_vec()),
            (OTHER, b"b1".to_vec()),
            (DEST, b"a2".to_vec()),
            (OTHER, b"b22".to_vec()),
        ]);
        handle.block_inbound_from(DEST);
        assert!(handle.is_inbound_blocked(DEST));
        let mut storage = [[0u8; 8]; 4];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 4];
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Ok(n)) = socket.poll_recv(&mut cx, &mut bufs, &mut meta) else {
            panic!("expected packets");
        };
        assert_eq!(n, 2);
        assert_eq!((meta[0].addr, &bufs[0][..meta[0].len]), (OTHER, &b"b1"[..]));
        assert_eq!(
            (meta[1].addr, &bufs[1][..meta[1].len]),
            (OTHER, &b"b22"[..])
        );
        assert_eq!(handle.stats().blocked_inbound, 2);

        handle.unblock_inbound_from(DEST);
        lock(&wire.inbox).push_back((DEST, b"a3".to_vec()));
        let Poll::Ready(Ok(1)) = socket.poll_recv(&mut cx, &mut bufs, &mut meta) else {
            panic!("expected one packet");
        };
        assert_eq!(&bufs[0][..meta[0].len], b"a3");
    }

    #[tokio::test(start_paused = true)]
    async fn partition_and_heal_keep_the_link_latency() {
        let (_wire, _socket, handle) = setup(1);
        let slow = LinkImpairment::latency(Duration::from_millis(30));
        handle.set(DEST, slow).unwrap();
        handle.partition(DEST);
        assert!(handle.get(DEST).unwrap().blocked);
        assert!(handle.is_inbound_blocked(DEST));
        handle.heal(DEST);
        assert_eq!(handle.get(DEST), Some(slow));
        assert!(!handle.is_inbound_blocked(DEST));
        handle.partition(OTHER);
        handle.heal(OTHER);
        assert_eq!(handle.get(OTHER), None);
        handle.partition(OTHER);
        handle.clear_all();
        assert_eq!(
            (handle.get(DEST), handle.is_inbound_blocked(OTHER)),
            (None, false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gso_batches_are_split_into_datagrams() {
        let (wire, socket, handle) = setup(1);
        assert_eq!(socket.max_transmit_segments(), 1);
        let transmit = Transmit {
            destination: DEST,
            ecn: None,
            contents: b"aaabbbc",
            segment_size: Some(3),
            src_ip: None,
        };
        socket.try_send(&transmit).unwrap();
        let got: Vec<_> = sent(&wire).into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(got, vec![b"aaa".to_vec(), b"bbb".to_vec(), b"c".to_vec()]);
        assert_eq!(handle.stats().passed, 3);
    }

    #[test]
    fn bad_settings_are_refused() {
        let (_wire, _socket, handle) = setup(1);
        for loss in [-0.1, 1.5, f64::NAN] {
            let link = LinkImpairment {
                loss,
                ..LinkImpairment::default()
            };
            assert!(matches!(
                handle.set(DEST, link),
                Err(ImpairmentError::InvalidLoss(_))
            ));
        }
        let link = LinkImpairment::latency(MAX_LINK_DELAY + Duration::from_millis(1));
        assert_eq!(
            handle.set(DEST, link),
            Err(ImpairmentError::DelayTooLarge(link.latency))
        );
        assert_eq!(handle.get(DEST), None);
    }
}
