//! Agreement on resolvers: which writes of another region may be applied here, the
//! quarantine of those that may not, and the mismatch alarms.

use std::collections::{BTreeMap, BTreeSet};

use super::{Alarm, Effect, Quarantined, Replica};
use crate::msg::LogEntry;

/// Whether a write made under resolver `theirs` may be applied with resolver `ours` (both
/// `name@version`): the same resolver, or a newer version of it. A version changes what
/// `resolve` answers, never what a key stores (siblings and context), so a write made under an
/// older version becomes exactly the key state its origin will have once it upgrades too;
/// a resolver of another name may prune differently and is never mixed.
pub fn resolver_accepts(ours: &str, theirs: &str) -> bool {
    if ours == theirs {
        return true;
    }
    let split = |id: &str| {
        id.rsplit_once('@')
            .and_then(|(n, v)| Some((n.to_owned(), v.parse::<u32>().ok()?)))
    };
    match (split(ours), split(theirs)) {
        (Some((on, ov)), Some((tn, tv))) => on == tn && tv < ov,
        _ => false,
    }
}

impl Replica {
    /// Logs a write without applying it, and records what its origin resolved the table with,
    /// so that a start whose configuration accepts it applies it ([`Replica::to_release`]).
    pub(super) fn quarantine(&mut self, origin_region: &str, e: &LogEntry) {
        self.counters.quarantined += 1;
        *self.held_back.entry(e.table.clone()).or_default() += 1;
        self.staged.checkpoint = true;
        let origin_resolver = self
            .region_resolvers
            .get(origin_region)
            .and_then(|theirs| theirs.get(&e.table))
            .cloned();
        self.hold_in_log([e.write.dot]);
        self.staged.quarantined.push(Quarantined {
            dot: e.write.dot,
            table: e.table.clone(),
            origin_resolver,
        });
    }

    /// Whether writes of `region` to `table` must not be applied here: as far as we know, it
    /// resolves the table with another resolver, or with a newer version of ours. Writes made
    /// under an older version of our resolver are applied ([`resolver_accepts`]), so a region
    /// that upgrades first takes the others' writes during a rolling upgrade. When we do not
    /// know the origin's resolver for the table (no hello or row yet, or a row older than the
    /// origin's configuration, which cannot name a table the origin writes) the write is
    /// applied, as a release at start would apply it.
    pub(super) fn mismatched(&self, region: &str, table: &str) -> bool {
        let ours = self
            .resolver_ids
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, r)| r);
        let theirs = self
            .region_resolvers
            .get(region)
            .and_then(|theirs| theirs.get(table));
        match (ours, theirs) {
            (Some(ours), Some(theirs)) => !resolver_accepts(ours, theirs),
            _ => false,
        }
    }

    /// Raises one alarm per (region, table) whose resolver differs from ours.
    pub(super) fn check_mismatches(&mut self, out: &mut Vec<Effect>) {
        let ours: BTreeMap<&str, &str> = self
            .resolver_ids
            .iter()
            .map(|(t, r)| (t.as_str(), r.as_str()))
            .collect();
        for (region, theirs) in &self.region_resolvers {
            let tables: BTreeSet<&str> = theirs
                .keys()
                .map(String::as_str)
                .chain(ours.keys().copied())
                .collect();
            for table in tables {
                let (o, t) = (
                    ours.get(table).copied(),
                    theirs.get(table).map(String::as_str),
                );
                if o == t
                    || !self
                        .mismatch_alarmed
                        .insert((region.clone(), table.to_owned()))
                {
                    continue;
                }
                out.push(Effect::Alarm(Alarm::ResolverMismatch {
                    peer: region.clone(),
                    table: table.to_owned(),
                    ours: o.map(str::to_owned),
                    theirs: t.map(str::to_owned),
                }));
            }
        }
    }

    /// (region, table, ours, theirs) for every table resolved differently elsewhere.
    pub fn resolver_mismatches(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        let ours: BTreeMap<&String, &String> =
            self.resolver_ids.iter().map(|(t, r)| (t, r)).collect();
        let mut out = Vec::new();
        for (region, theirs) in &self.region_resolvers {
            let tables: BTreeSet<&String> = theirs.keys().chain(ours.keys().copied()).collect();
            for table in tables {
                let (o, t) = (ours.get(table).copied(), theirs.get(table));
                if o != t {
                    out.push((region.clone(), table.clone(), o.cloned(), t.cloned()));
                }
            }
        }
        out
    }
}
