//! Reconnect delays: exponential backoff with jitter, from a seedable random source so that
//! simulations replay the same schedule.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Exponential backoff between `min` and `max` with "equal jitter": each delay is drawn
/// uniformly from the upper half of the current step, so retries of many regions spread out
/// while still growing steadily.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    rng: StdRng,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max` (`min <= max`, both non-zero).
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        debug_assert!(!min.is_zero() && min <= max, "validated by MeshConfig");
        Backoff {
            min,
            max,
            step: min,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt; each call doubles the step up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter_ns = self.rng.random_range(0..=half.as_nanos() as u64);
        let delay = half + Duration::from_nanos(jitter_ns);
        debug_assert!(delay <= self.max);
        delay.max(self.min / 2)
    }

    /// Start again from `min` (after a connection was established).
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_bounded_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max, 7);
        let mut step = min;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn same_seed_same_schedule() {
        let mk = || Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 42);
        let (mut a, mut b) = (mk(), mk());
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}
