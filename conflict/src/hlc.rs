//! Hybrid logical clock stamps and the per-key causality rule.
//!
//! An [`Hlc`] packs 48 bits of Unix milliseconds and a 16-bit logical counter into one `u64`,
//! so stamps compare as plain integers, encode as one varint, and stay close to wall-clock
//! time for humans reading logs. The clock that produces them lives in [`crate::clock`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock reading: `unix_ms << 16 | logical`.
///
/// Ordering is the integer order, which is "physical time first, then the logical counter".
/// chrono is used only to display a stamp, never to order one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(u64);

impl Hlc {
    /// Bits of the logical counter: up to 65 536 events may share one millisecond before the
    /// clock borrows the next one.
    pub const LOGICAL_BITS: u32 = 16;
    /// The greatest logical counter value.
    pub const MAX_LOGICAL: u16 = u16::MAX;
    /// The greatest representable physical time (2^48 − 1 ms, in the year 10889).
    pub const MAX_PHYSICAL_MS: u64 = (1 << 48) - 1;
    /// The smallest stamp: before every real event. The stamp of "nothing seen yet".
    pub const ZERO: Hlc = Hlc(0);
    /// The greatest stamp. Arithmetic on stamps saturates here instead of wrapping, because a
    /// wrapped stamp would order before everything and silently lose writes.
    pub const MAX: Hlc = Hlc(u64::MAX);

    /// A stamp from physical milliseconds and a logical counter.
    ///
    /// A physical time beyond [`Hlc::MAX_PHYSICAL_MS`] saturates to it rather than wrapping
    /// (wrapping would order the stamp before the epoch).
    pub const fn new(physical_ms: u64, logical: u16) -> Self {
        let ms = if physical_ms > Self::MAX_PHYSICAL_MS {
            Self::MAX_PHYSICAL_MS
        } else {
            physical_ms
        };
        Hlc((ms << Self::LOGICAL_BITS) | logical as u64)
    }

    /// The physical part: Unix milliseconds, for display and skew measurement.
    pub const fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    /// The logical counter: orders events that share a millisecond.
    pub const fn logical(self) -> u16 {
        // Truncation keeps exactly the low 16 bits, which is the logical counter.
        (self.0 & 0xffff) as u16
    }

    /// The packed representation, for storage and the wire.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A stamp from its packed representation. Every `u64` is a valid stamp.
    pub const fn from_u64(raw: u64) -> Self {
        Hlc(raw)
    }

    /// The next stamp after this one, saturating at [`Hlc::MAX`].
    ///
    /// Because the logical counter is the low 16 bits, adding one to the packed value carries
    /// a full counter into the millisecond part: after `(t, 65535)` comes `(t + 1, 0)`. This is
    /// how logical-counter overflow is handled everywhere in the crate: the clock borrows the
    /// next millisecond, which keeps stamps strictly increasing at the cost of running up to a
    /// millisecond ahead of the wall clock under a burst of more than 65 536 events per
    /// millisecond.
    #[must_use]
    pub const fn successor(self) -> Self {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Display for Hlc {
    /// ISO 8601 UTC time with milliseconds, then `+logical`: `2026-11-27T11:03:36.123Z+5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = i64::try_from(self.physical_ms()).ok();
        match ms.and_then(chrono::DateTime::from_timestamp_millis) {
            Some(t) => write!(
                f,
                "{}+{}",
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                self.logical()
            ),
            // Only for stamps beyond chrono's range; never for real clocks.
            None => write!(f, "{}ms+{}", self.physical_ms(), self.logical()),
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.physical_ms(), self.logical())
    }
}

/// The per-key causality rule: the HLC to give a new write to a key.
///
/// `tick` is the local clock's reading for this event ([`crate::HybridClock::tick`]);
/// `superseded` are the HLCs of the key's siblings the write must order after. The result is
/// `max(tick, max(superseded) + 1)`, so the write is greater than every one of them even when a
/// peer's clock runs far ahead, and the local clock is not dragged forward (this function does
/// not touch any clock).
///
/// Which HLCs to pass: **every sibling the key holds at the origin** (all of
/// `state.siblings`), not only the ones the write's context covers, and only once the origin
/// has applied everything the write's context covers. [`crate::KeyState::prepare_write`] does
/// exactly this. It implies DESIGN.md's rule (the superseded siblings are among them) and is
/// what a textbook HLC would give had it not capped remote stamps at the clock offset.
///
/// Why all siblings: last-write-wins prunes a loser `s` as soon as a greater sibling `m`
/// arrives. That is convergent if every write is stamped after every write its context covers
/// (then a write that later removes `m` is greater than `m`, hence than `s`, and the pruned `s`
/// could never have been the winner again). With a context read earlier, that invariant can
/// fail under the superseded-only rule: the context may cover a write that has since stopped
/// being a sibling (a later write superseded it) and was stamped by a clock far ahead, so
/// nothing bounds the new stamp from below. The key's current siblings, though, are always at
/// least as great as every dot in its context (an induction over apply), so ordering after all
/// of them restores the invariant. The scenario tests check it on every random history.
///
/// Saturates at [`Hlc::MAX`] (a stamp 8 000 years ahead, which only a broken peer sends).
pub fn stamp_write(tick: Hlc, superseded: impl IntoIterator<Item = Hlc>) -> Hlc {
    superseded
        .into_iter()
        .map(Hlc::successor)
        .fold(tick, std::cmp::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let h = Hlc::new(1_764_241_416_123, 5);
        assert_eq!(h.physical_ms(), 1_764_241_416_123);
        assert_eq!(h.logical(), 5);
        assert_eq!(Hlc::from_u64(h.as_u64()), h);
        assert!(Hlc::new(10, 65535) < Hlc::new(11, 0));
        assert!(Hlc::new(10, 1) < Hlc::new(10, 2));
    }

    #[test]
    fn displays_via_chrono() {
        let h = Hlc::new(1_795_777_416_123, 5);
        assert_eq!(h.to_string(), "2026-11-27T11:03:36.123Z+5");
        assert_eq!(format!("{h:?}"), "Hlc(1795777416123.5)");
    }

    #[test]
    fn physical_saturates_instead_of_wrapping() {
        assert_eq!(Hlc::new(u64::MAX, 3).physical_ms(), Hlc::MAX_PHYSICAL_MS);
        assert_eq!(Hlc::MAX.successor(), Hlc::MAX);
    }

    #[test]
    fn successor_carries_into_the_millisecond() {
        assert_eq!(Hlc::new(7, u16::MAX).successor(), Hlc::new(8, 0));
        assert_eq!(Hlc::new(7, 3).successor(), Hlc::new(7, 4));
    }

    #[test]
    fn stamp_write_orders_after_superseded() {
        let tick = Hlc::new(100, 0);
        assert_eq!(stamp_write(tick, []), tick);
        assert_eq!(stamp_write(tick, [Hlc::new(50, 0)]), tick);
        assert_eq!(
            stamp_write(tick, [Hlc::new(50, 0), Hlc::new(900, 7)]),
            Hlc::new(900, 8)
        );
        assert_eq!(stamp_write(tick, [Hlc::new(100, 0)]), Hlc::new(100, 1));
    }
}
