//! The project's one seeded generator, [`SplitMix64`], for whatever must replay from a seed:
//! test inputs, fault schedules, benchmark workloads, and the seeding of the simulator's own
//! generator. It lives here because every crate that draws such numbers (the `meridian`
//! program, the leader's and the program's tests, the simulator) already depends on
//! `conflict`, and nothing else does; `leader-core`'s test kit is a test-only feature the
//! program must not enable.
//!
//! Written out rather than taken from `rand`, so that a seed keeps its meaning for as long as
//! the repository keeps it (a dependency upgrade may change `rand`'s algorithms). Not for
//! anything that must be unpredictable.

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators"): one
/// `u64` of state, every seed (0, 1, 2, ...) spread over the whole output space. Small and
/// fast; its draws are pinned by a test.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by remainder (biased by less than `n / 2^64`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no answer");
        self.next_u64() % n
    }

    /// An index into a slice of `len` items (`len > 0`), as [`SplitMix64::below`].
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below(hi - lo + 1)
    }

    /// True `p` times in a hundred.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// A uniform draw from `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// `n` bytes, the low byte of each draw.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned draws: if these change, every stored seed (the simulator's regression seeds,
    /// the chaos schedules) changes meaning.
    #[test]
    fn draws_are_pinned() {
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            assert!((5..=9).contains(&r.between(5, 9)));
            assert!((0.0..1.0).contains(&r.unit()));
            assert!(r.index(3) < 3);
        }
        assert!(!SplitMix64::new(1).percent(0));
        assert!(SplitMix64::new(1).percent(100));
    }
}
