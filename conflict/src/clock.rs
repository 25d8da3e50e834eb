//! Physical clocks and the hybrid logical clock built on them.
//!
//! [`HybridClock`] is pure: it never reads a clock, it is handed the physical time with every
//! call, so the sans-IO replication core and the simulator can drive it with virtual time.
//! [`Clock`] bundles it with a [`PhysicalClock`] for code that does read time (the node
//! runtime, tools, tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hlc::Hlc;

/// How far a remote stamp may run ahead of local physical time before it stops moving the
/// local clock (DESIGN.md: `max_clock_offset`, default 500 ms).
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// A source of physical time in Unix milliseconds.
///
/// Injectable so that tests and the simulator control time; production uses [`SystemClock`].
/// Implementations need not be monotonic: [`HybridClock`] stays monotonic when physical time
/// goes backwards.
pub trait PhysicalClock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

impl<P: PhysicalClock + ?Sized> PhysicalClock for Arc<P> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

impl<P: PhysicalClock + ?Sized> PhysicalClock for Box<P> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The operating system's wall clock: what a real leader uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    /// Wall-clock milliseconds; a system clock set before 1970 reads as 0 rather than failing,
    /// and the hybrid clock's monotonicity covers the rest.
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, with an optional skew: for tests and simulations.
///
/// Clones share the same "true" time, so one `advance_ms` moves every region of a test at once;
/// [`ManualClock::with_offset_ms`] gives a handle that reads that shared time plus its own
/// offset, which models a region whose clock is fast (positive) or slow (negative).
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    base_ms: Arc<AtomicU64>,
    offset_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock reading `ms` with no skew: the shared true time that skewed handles derive from.
    pub fn new(ms: u64) -> Self {
        ManualClock {
            base_ms: Arc::new(AtomicU64::new(ms)),
            offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Sets the shared true time; it may go backwards, to test clock steps.
    pub fn set_ms(&self, ms: u64) {
        self.base_ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the shared true time forward by `delta_ms` (saturating), for every handle at once,
    /// as virtual time passes in a test.
    pub fn advance_ms(&self, delta_ms: u64) {
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = self
            .base_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ms| {
                Some(ms.saturating_add(delta_ms))
            });
    }

    /// A handle on the same true time that reads `offset_ms` ahead (or behind, if negative):
    /// one region's skewed view.
    #[must_use]
    pub fn with_offset_ms(&self, offset_ms: i64) -> ManualClock {
        ManualClock {
            base_ms: Arc::clone(&self.base_ms),
            offset_ms: Arc::new(AtomicI64::new(offset_ms)),
        }
    }

    /// Changes this handle's skew (and that of its clones), e.g. to model NTP stepping a clock.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::SeqCst);
    }

    /// This handle's current skew, so a test can report the skew it modelled.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl PhysicalClock for ManualClock {
    /// Shared true time plus this handle's offset, clamped at 0.
    fn now_ms(&self) -> u64 {
        let base = self.base_ms.load(Ordering::SeqCst);
        base.saturating_add_signed(self.offset_ms())
    }
}

/// What observing a remote stamp did, so the caller can export and alarm on skew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observed {
    /// The local clock after the observation ([`HybridClock::last`]).
    pub clock: Hlc,
    /// `Some(ms)` when the remote stamp's physical time was more than the maximum offset ahead
    /// of local physical time: `ms` is how far ahead it was. Such a stamp is still applied by
    /// the caller (convergence first) but moved the local clock only up to
    /// `physical + max_offset`; the caller should count and alarm on it.
    pub skew_ahead_ms: Option<u64>,
}

/// A hybrid logical clock (Kulkarni et al.) with the `max_clock_offset` guard of DESIGN.md.
///
/// Pure state: every method takes the physical time as an argument, nothing here reads a
/// clock. Guarantees:
///
/// - [`tick`](HybridClock::tick) is strictly monotonic, even when physical time goes
///   backwards (the clock keeps counting from its last reading);
/// - after [`observe`](HybridClock::observe) of a remote stamp within the offset, every later
///   tick is greater than that stamp;
/// - observing never moves the clock's physical part past `physical + max_offset`, so one peer
///   with a clock far ahead cannot drag every region's clock with it (the per-key causality
///   rule, [`crate::stamp_write`], keeps writes ordered without that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HybridClock {
    last: Hlc,
    max_offset_ms: u64,
}

impl HybridClock {
    /// A clock that has not issued a stamp yet: for a freshly initialised data directory (after
    /// a restart use [`HybridClock::resume`]).
    pub fn new(max_offset_ms: u64) -> Self {
        HybridClock {
            last: Hlc::ZERO,
            max_offset_ms,
        }
    }

    /// A clock continuing after a restart from the durable high-water mark, so it never
    /// re-issues a stamp it issued before the crash even if the wall clock went backwards.
    pub fn resume(high_water: Hlc, max_offset_ms: u64) -> Self {
        HybridClock {
            last: high_water,
            max_offset_ms,
        }
    }

    /// The stamp for a local event at physical time `physical_ms`.
    ///
    /// It is `max(last + 1, (physical_ms, 0))`: the wall clock when it moved forward, otherwise
    /// the next logical count. When the logical counter is full, the clock borrows the next
    /// millisecond (see [`Hlc::successor`]) instead of wrapping. At [`Hlc::MAX`] (the year
    /// 10889) the clock stops.
    pub fn tick(&mut self, physical_ms: u64) -> Hlc {
        let next = std::cmp::max(self.last.successor(), Hlc::new(physical_ms, 0));
        self.last = next;
        next
    }

    /// Raises the clock to `stamp` without the offset cap, so every later local stamp orders
    /// after it. For stamps this region must stay above although it drops the write that
    /// carried them: a collected tombstone (the per-key causality rule would have stamped a
    /// later write to its key above it, had it still been there). The clock never moves
    /// backwards.
    pub fn raise_to(&mut self, stamp: Hlc) {
        self.last = self.last.max(stamp);
    }

    /// Takes a stamp received from a peer into account, at local physical time `physical_ms`.
    ///
    /// A remote stamp within `max_offset_ms` of local physical time raises the clock to it, so
    /// later local stamps order after it. One further ahead raises the clock only to
    /// `(physical_ms + max_offset_ms, 0)` and is reported in [`Observed::skew_ahead_ms`].
    /// The clock never moves backwards.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Observed {
        let bound_ms = physical_ms.saturating_add(self.max_offset_ms);
        let (admitted, skew_ahead_ms) = if remote.physical_ms() > bound_ms {
            (
                Hlc::new(bound_ms, 0),
                Some(remote.physical_ms() - physical_ms),
            )
        } else {
            (remote, None)
        };
        self.last = self.last.max(admitted).max(Hlc::new(physical_ms, 0));
        Observed {
            clock: self.last,
            skew_ahead_ms,
        }
    }

    /// The latest stamp issued or observed: the high-water mark to persist, so that
    /// [`HybridClock::resume`] continues after it.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The configured maximum clock offset in milliseconds, for status pages and skew alarms.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }
}

/// A [`HybridClock`] bundled with the physical clock that feeds it.
///
/// For code that is allowed to read time (the node runtime, tools, tests); the sans-IO core
/// uses [`HybridClock`] directly with the time of the event it handles.
#[derive(Debug)]
pub struct Clock<P: PhysicalClock> {
    hybrid: HybridClock,
    physical: P,
}

impl<P: PhysicalClock> Clock<P> {
    /// A fresh clock over `physical`, for a new data directory or a test.
    pub fn new(physical: P, max_offset_ms: u64) -> Self {
        Clock {
            hybrid: HybridClock::new(max_offset_ms),
            physical,
        }
    }

    /// A clock continuing after a restart from the persisted high-water mark.
    pub fn resume(physical: P, high_water: Hlc, max_offset_ms: u64) -> Self {
        Clock {
            hybrid: HybridClock::resume(high_water, max_offset_ms),
            physical,
        }
    }

    /// The stamp for a local event now: reads the physical clock once and ticks.
    pub fn now(&mut self) -> Hlc {
        let ms = self.physical.now_ms();
        self.hybrid.tick(ms)
    }

    /// Takes a remote stamp into account now; see [`HybridClock::observe`].
    pub fn observe(&mut self, remote: Hlc) -> Observed {
        let ms = self.physical.now_ms();
        self.hybrid.observe(remote, ms)
    }

    /// The latest stamp issued or observed: the high-water mark to persist.
    pub fn last(&self) -> Hlc {
        self.hybrid.last()
    }

    /// The physical clock, e.g. to read the time for skew estimates in heartbeats.
    pub fn physical(&self) -> &P {
        &self.physical
    }

    /// The pure clock inside, e.g. to persist its high-water mark.
    pub fn hybrid(&self) -> &HybridClock {
        &self.hybrid
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tick_is_monotonic_when_physical_time_goes_backwards() {
        let mut c = HybridClock::new(500);
        let a = c.tick(1_000);
        assert_eq!(a, Hlc::new(1_000, 0));
        let b = c.tick(400); // NTP stepped the clock back
        assert_eq!(b, Hlc::new(1_000, 1));
        let d = c.tick(1_000);
        assert_eq!(d, Hlc::new(1_000, 2));
        let e = c.tick(1_001);
        assert_eq!(e, Hlc::new(1_001, 0));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut c = HybridClock::resume(Hlc::new(5_000, u16::MAX - 1), 500);
        assert_eq!(c.tick(5_000), Hlc::new(5_000, u16::MAX));
        assert_eq!(c.tick(5_000), Hlc::new(5_001, 0));
        assert_eq!(c.tick(5_000), Hlc::new(5_001, 1));
        // Once the wall clock catches up, it takes over again.
        assert_eq!(c.tick(5_002), Hlc::new(5_002, 0));
    }

    #[test]
    fn a_burst_of_more_than_65536_ticks_stays_strictly_increasing() {
        let mut c = HybridClock::new(500);
        let mut prev = c.tick(10);
        for _ in 0..70_000 {
            let next = c.tick(10);
            assert!(next > prev);
            prev = next;
        }
        assert_eq!(prev.physical_ms(), 11);
    }

    #[test]
    fn remote_within_offset_moves_the_clock() {
        let mut c = HybridClock::new(500);
        c.tick(1_000);
        let o = c.observe(Hlc::new(1_400, 3), 1_000);
        assert_eq!(o.skew_ahead_ms, None);
        assert_eq!(o.clock, Hlc::new(1_400, 3));
        assert_eq!(c.tick(1_001), Hlc::new(1_400, 4));
    }

    #[test]
    fn remote_beyond_offset_is_capped_and_reported() {
        let mut c = HybridClock::new(500);
        c.tick(1_000);
        let o = c.observe(Hlc::new(60_000, 9), 1_000);
        assert_eq!(o.skew_ahead_ms, Some(59_000));
        assert_eq!(o.clock, Hlc::new(1_500, 0));
        assert!(c.last().physical_ms() <= 1_000 + 500);
        assert_eq!(c.tick(1_000), Hlc::new(1_500, 1));
    }

    #[test]
    fn observe_never_moves_backwards() {
        let mut c = HybridClock::new(500);
        c.tick(9_000);
        let o = c.observe(Hlc::new(10, 0), 9_000);
        assert_eq!(o.clock, Hlc::new(9_000, 0));
    }

    #[test]
    fn resume_continues_after_the_high_water_mark() {
        let mut c = HybridClock::resume(Hlc::new(9_000, 4), 500);
        assert_eq!(c.tick(100), Hlc::new(9_000, 5));
    }

    #[test]
    fn manual_clock_shares_time_and_models_skew() {
        let truth = ManualClock::new(1_000);
        let fast = truth.with_offset_ms(250);
        let slow = truth.with_offset_ms(-2_000);
        assert_eq!(fast.now_ms(), 1_250);
        assert_eq!(slow.now_ms(), 0);
        truth.advance_ms(5_000);
        assert_eq!(fast.now_ms(), 6_250);
        assert_eq!(slow.now_ms(), 4_000);
        truth.set_ms(100); // a step backwards
        assert_eq!(fast.now_ms(), 350);
        assert_eq!(truth.offset_ms(), 0);
    }

    #[test]
    fn clock_wrapper_reads_its_physical_clock() {
        let time = ManualClock::new(2_000);
        let mut c = Clock::new(time.clone(), DEFAULT_MAX_CLOCK_OFFSET_MS);
        assert_eq!(c.now(), Hlc::new(2_000, 0));
        assert_eq!(c.now(), Hlc::new(2_000, 1));
        let o = c.observe(Hlc::new(9_999, 0));
        assert_eq!(o.skew_ahead_ms, Some(7_999));
        assert_eq!(c.last(), Hlc::new(2_500, 0));
        time.advance_ms(1_000);
        assert_eq!(c.now(), Hlc::new(3_000, 0));
        assert_eq!(c.physical().now_ms(), 3_000);
        let c2 = Clock::resume(SystemClock, Hlc::MAX, 500);
        assert_eq!(c2.hybrid().last(), Hlc::MAX);
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever physical times and remote stamps come in, ticks strictly increase and
        /// observing never lifts the clock past `physical + offset` unless it already was.
        #[test]
        fn ticks_increase_and_observe_respects_the_bound(
            steps in proptest::collection::vec((0u64..20_000, any::<bool>(), 0u64..40_000, any::<u16>()), 1..200)
        ) {
            let mut c = HybridClock::new(500);
            let mut prev = Hlc::ZERO;
            for (phys, is_observe, remote_ms, remote_logical) in steps {
                if is_observe {
                    let before = c.last();
                    let o = c.observe(Hlc::new(remote_ms, remote_logical), phys);
                    prop_assert!(o.clock >= before);
                    prop_assert!(o.clock == before || o.clock.physical_ms() <= phys + 500);
                    prop_assert_eq!(o.skew_ahead_ms.is_some(), remote_ms > phys + 500);
                    prev = o.clock;
                } else {
                    let t = c.tick(phys);
                    prop_assert!(t > prev);
                    prop_assert!(t >= Hlc::new(phys, 0));
                    prev = t;
                }
            }
        }
    }
}
