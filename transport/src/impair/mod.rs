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
//!
//! # Layout
//!
//! This file holds the model (link settings, errors, counters, the shared control);
//! `delay.rs` the delay line, `socket.rs` [`ImpairedSocket`], `handle.rs`
//! [`ImpairmentHandle`], and `tests.rs` exact checks in tokio's paused clock.

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

mod delay;
mod handle;
mod socket;
#[cfg(test)]
mod tests;

use delay::{DelayLine, Queued};
pub use handle::ImpairmentHandle;
pub use socket::ImpairedSocket;
