//! Alarms raised on what arrives: clock skew from heartbeats, causality violations and reused
//! dots in replicated writes, each rate-limited per region.

use std::collections::BTreeMap;

use conflict::Hlc;

use super::{Alarm, Effect, Replica, Time};
use crate::limits::{CAUSALITY_ALARM_INTERVAL_MS, SKEW_ALARM_INTERVAL_MS};
use crate::msg::LogEntry;

/// Whether an alarm about `region` may be raised now (none in the last
/// [`CAUSALITY_ALARM_INTERVAL_MS`]); if so, records that it is.
pub(super) fn alarm_due(last: &mut BTreeMap<String, u64>, region: &str, now: Time) -> bool {
    let due = last
        .get(region)
        .is_none_or(|t| now.mono_ms >= t.saturating_add(CAUSALITY_ALARM_INTERVAL_MS));
    if due {
        last.insert(region.to_owned(), now.mono_ms);
    }
    due
}

impl Replica {
    /// Checks the per-key causality rule on a replicated write: its HLC must exceed that of
    /// every local sibling its context supersedes (the origin stamps it so). A violation is
    /// counted and alarmed (rate-limited per origin), not refused: see
    /// [`Alarm::CausalityViolation`].
    pub(super) fn check_causality(
        &mut self,
        now: Time,
        origin: &str,
        e: &LogEntry,
        out: &mut Vec<Effect>,
    ) {
        let slot = (e.table.clone(), e.key.clone());
        let Some(state) = self.keys.get(&slot) else {
            return;
        };
        let w = &e.write;
        let Some(bad) = state
            .siblings
            .iter()
            .find(|s| w.context.covers(&s.dot) && s.hlc >= w.hlc)
        else {
            return;
        };
        let (sibling, sibling_hlc) = (bad.dot, bad.hlc);
        self.counters.causality_violations += 1;
        if alarm_due(&mut self.causality_alarmed, origin, now) {
            out.push(Effect::Alarm(Alarm::CausalityViolation {
                origin: origin.to_owned(),
                dot: w.dot,
                hlc: w.hlc,
                sibling,
                sibling_hlc,
            }));
        }
    }

    /// A duplicate of a write we hold must be that write. Two different writes under one dot
    /// mean two processes use one replica id (a copied data directory running beside the
    /// original): the first one to arrive was applied, the other is dropped like any
    /// duplicate, and regions that got them in the other order diverge. That cannot be
    /// undone here, but it must not go unseen: a split-brain alarm names the replica, at most
    /// every [`CAUSALITY_ALARM_INTERVAL_MS`] per origin region. Checked against the in-memory
    /// tail (recent writes, where two processes' writes meet).
    pub(super) fn check_duplicate(
        &mut self,
        now: Time,
        origin: &str,
        e: &LogEntry,
        out: &mut Vec<Effect>,
    ) {
        let replica = e.write.dot.replica;
        let Some(tail) = self.tail.get(&replica).map(|t| &t.entries) else {
            return;
        };
        let Some(first) = tail.front().map(LogEntry::seq) else {
            return;
        };
        let Some(ours) = e
            .seq()
            .0
            .checked_sub(first.0)
            .and_then(|i| tail.get(usize::try_from(i).ok()?))
        else {
            return;
        };
        if ours.seq() != e.seq() || ours == e {
            return;
        }
        self.counters.dots_reused += 1;
        if alarm_due(&mut self.reuse_alarmed, origin, now) {
            out.push(Effect::Alarm(Alarm::SplitBrain {
                region: origin.to_owned(),
                live: replica,
                refused: replica,
            }));
        }
    }

    /// Feeds a remote stamp to the clock; a stamp too far ahead raises a (rate-limited) alarm.
    pub(super) fn observe(&mut self, now: Time, region: &str, hlc: Hlc, out: &mut Vec<Effect>) {
        let observed = self.clock.observe(hlc, now.wall_ms);
        let Some(ahead_ms) = observed.skew_ahead_ms else {
            return;
        };
        let entry = self.skew_alarms.entry(region.to_owned()).or_insert((0, 0));
        let first = entry.0 == 0;
        entry.0 = entry.0.max(ahead_ms);
        if first || now.mono_ms >= entry.1 + SKEW_ALARM_INTERVAL_MS {
            entry.1 = now.mono_ms;
            out.push(Effect::Alarm(Alarm::ClockSkew {
                peer: region.to_owned(),
                ahead_ms,
            }));
        }
    }

    /// Regions whose stamps ran further ahead than the offset bound: (region, largest lead ms).
    pub fn skew_alarms(&self) -> Vec<(String, u64)> {
        self.skew_alarms
            .iter()
            .map(|(r, (ms, _))| (r.clone(), *ms))
            .collect()
    }
}
