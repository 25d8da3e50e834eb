//! The invariants checked after every step, and the oracles run once the world has settled.

use std::collections::BTreeMap;

use conflict::examples::Counter;
use conflict::{Dot, KeyState, Resolved, Seq};
use leader_core::{Alarm, PeerMsg, PersistBatch, WriteReceipt};

use super::truth::{Slot, TableKind, show};
use super::workload::OpOutcome;
use super::world::{NEW_TABLE, World};
use super::{Failure, Rollout};

impl World {
    /// After every event at region `r`: vectors only grow within a process, the machine's
    /// durable vector is the disk's, and every remote write newly applied is the write its
    /// origin made durable and sits in its key (no origin applied with a gap).
    pub(super) fn check_region(&mut self, r: usize) -> Result<(), Failure> {
        let g = &self.regions[r];
        let Some(m) = g.machine() else { return Ok(()) };
        let (applied, received) = (m.applied(), m.received());
        let problem = if !applied.dominates(&g.seen_applied) {
            Some((
                "monotonic",
                format!(
                    "{}: applied {applied:?} shrank from {:?}",
                    g.name, g.seen_applied
                ),
            ))
        } else if !received.dominates(&g.seen_received) {
            Some((
                "monotonic",
                format!(
                    "{}: received {received:?} shrank from {:?}",
                    g.name, g.seen_received
                ),
            ))
        } else if *applied != g.disk().applied {
            Some((
                "durable-mirror",
                format!(
                    "{}: durable vector {applied:?} but the disk holds {:?}",
                    g.name,
                    g.disk().applied
                ),
            ))
        } else if !received.dominates(applied) {
            Some((
                "monotonic",
                format!(
                    "{}: received {received:?} is behind applied {applied:?}",
                    g.name
                ),
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(self.fail(p));
        }
        for (origin, seq) in received.iter() {
            if origin == g.id {
                continue; // own writes enter the truth when durable; replies check them
            }
            for s in g.seen_received.get(origin).0 + 1..=seq.0 {
                let dot = Dot::new(origin, Seq(s));
                let landed = self.truth.get(&dot).is_some_and(|(slot, _)| {
                    // A write of the table a rollout changes may be held back (logged, not
                    // applied) until this region has the new configuration; the final
                    // oracles check that it is applied in the end.
                    self.rolling_table() == Some(slot.0.as_str())
                        || m.get(&slot.0, &slot.1)
                            .is_some_and(|k| k.context.covers(&dot))
                        // or its key's tombstones were collected, and the floor names it
                        || m.read_context(None).covers(&dot)
                });
                if !landed {
                    let detail = format!(
                        "{} counts {dot} as applied, but that write ({:?}) is not in its key: applied with a gap",
                        g.name,
                        self.truth.get(&dot)
                    );
                    return Err(self.fail(("gap", detail)));
                }
            }
        }
        let (applied, received) = (applied.clone(), received.clone());
        let g = &mut self.regions[r];
        g.seen_applied = applied;
        g.seen_received = received;
        Ok(())
    }

    /// A persist just committed to region `r`'s disk: records its own writes in the truth
    /// and checks what it wrote.
    pub(super) fn committed(
        &mut self,
        r: usize,
        batch: &PersistBatch,
        checkpoint: bool,
    ) -> Result<(), Failure> {
        let (own, name) = (self.regions[r].id, self.regions[r].name.clone());
        self.faults.checkpoints += u64::from(checkpoint);
        let checks = self.opts.step_checks;
        for e in batch.log.iter().filter(|e| e.write.dot.replica == own) {
            self.truth.record(e, checks).map_err(|b| self.fail(b))?;
        }
        if !checks {
            return Ok(());
        }
        for e in &batch.log {
            self.truth.check_entry(&name, e).map_err(|b| self.fail(b))?;
        }
        let bound = self.regions.len() * self.p.knobs.max_siblings;
        for (table, key, state) in &batch.keys {
            let slot = (table.clone(), key.clone());
            self.truth
                .check_state(&name, &slot, state)
                .map_err(|b| self.fail(b))?;
            let lww = self.tables.get(table) == Some(&TableKind::Lww);
            if (lww && state.siblings.len() > 1) || state.siblings.len() > bound {
                let detail = format!(
                    "{name}: {} holds {} siblings (lww keeps 1; the bound is regions x cap = {bound})",
                    show(&slot),
                    state.siblings.len()
                );
                return Err(self.fail(("sibling-cap", detail)));
            }
        }
        Ok(())
    }

    /// A local write just accepted must not leave more siblings than the cap.
    pub(super) fn check_sibling_cap(&self, r: usize, slot: &Slot) -> Result<(), Failure> {
        let cap = self.p.knobs.max_siblings;
        let m = self.regions[r].machine().expect("just handled");
        let n = m.get(&slot.0, &slot.1).map_or(0, KeyState::len);
        if n > cap {
            let detail = format!(
                "{} accepted a write leaving {} with {n} siblings, above the cap {cap}",
                self.regions[r].name,
                show(slot)
            );
            return Err(self.fail(("sibling-cap", detail)));
        }
        Ok(())
    }

    /// A reply must claim only what disks hold: the write durable at its origin, in every
    /// region it names, and (unless it timed out) in as many regions as the level needs.
    pub(super) fn check_receipt(
        &self,
        r: usize,
        idx: usize,
        receipt: &WriteReceipt,
    ) -> Result<(), Failure> {
        let op = &self.ops[idx];
        let name = &self.regions[r].name;
        let dot = receipt.dot;
        let id = idx + 1;
        let same = self.truth.get(&dot).is_some_and(|(slot, w)| {
            *slot == op.slot && w.hlc == receipt.hlc && w.value == op.value
        });
        if dot.replica != self.regions[r].id || !same || receipt.durability != op.durability {
            let detail = format!(
                "{name} acknowledged request #{id} as {dot} {:?} {}, which is not the durable write it made ({:?})",
                receipt.hlc,
                receipt.durability,
                self.truth.get(&dot)
            );
            return Err(self.fail(("ack-durability", detail)));
        }
        // A disk lost since the region acked the write held it too (the ack was on its way).
        let held =
            |g: &super::world::Region| g.disk().applied.covers(&dot) || g.lost_applied.covers(&dot);
        for region in &receipt.durable_in {
            let q = self.index_of(region);
            if !held(&self.regions[q]) {
                let detail = format!(
                    "{name} acknowledged #{id} ({dot}) as durable in {region}, whose disk lacks it"
                );
                return Err(self.fail(("ack-durability", detail)));
            }
        }
        self.check_context_read(idx, receipt)?;
        let need = op.durability.peers_needed(self.regions.len()) + 1;
        let on_disk = self.regions.iter().filter(|g| held(g)).count();
        if !receipt.timed_out && (receipt.durable_in.len() < need || on_disk < need) {
            let detail = format!(
                "{name} acknowledged #{id} ({dot}) at {} but only {on_disk} disks hold it ({need} needed): {:?}",
                op.durability, receipt.durable_in
            );
            return Err(self.fail(("ack-durability", detail)));
        }
        Ok(())
    }

    /// A read-modify-write supersedes exactly what its client read: its context must not
    /// cover a dot of the same key that a crash freed and a later write took again after the
    /// read (the client never saw that write, yet its write would silently supersede it).
    fn check_context_read(&self, idx: usize, receipt: &WriteReceipt) -> Result<(), Failure> {
        let op = &self.ops[idx];
        let (Some(read_ms), Some((_, write))) = (op.read_ms, self.truth.get(&receipt.dot)) else {
            return Ok(());
        };
        if !self.opts.check_dirty_context {
            return Ok(());
        }
        for (dot, at) in &self.reused {
            let same_key = self
                .truth
                .get(dot)
                .is_some_and(|(slot, _)| *slot == op.slot);
            if *at > read_ms && same_key && write.context.covers(dot) {
                let detail = format!(
                    "request #{} ({}) to {} carries a context read at {read_ms} ms that covers {dot}; \
                     that dot was not durable when read, was lost in a crash, and was given at {at} ms \
                     to another write of the key ({:?}), which this write now supersedes unseen",
                    idx + 1,
                    receipt.dot,
                    show(&op.slot),
                    self.truth.get(dot).map(|(_, w)| (&w.value, w.hlc))
                );
                return Err(self.fail(("dirty-context", detail)));
            }
        }
        Ok(())
    }

    /// A message claiming what its sender has durably applied must not claim more than the
    /// sender's disk holds (acks drive semi-sync waits, truncation and garbage collection).
    pub(super) fn check_wire(&self, from: usize, msg: &PeerMsg) -> Result<(), Failure> {
        let g = &self.regions[from];
        let claimed = match msg {
            PeerMsg::Ack(a) => Some(&a.applied),
            PeerMsg::Hello(h) => Some(&h.applied),
            PeerMsg::Heartbeat(h) => h
                .rows
                .iter()
                .find(|row| row.region == g.name)
                .map(|row| &row.applied),
            _ => None,
        };
        match claimed {
            Some(vv) if !g.disk().applied.dominates(vv) => {
                let detail = format!(
                    "{} tells a peer it has durably applied {vv:?}, but its disk holds {:?}",
                    g.name,
                    g.disk().applied
                );
                Err(self.fail(("wire-ack", detail)))
            }
            _ => Ok(()),
        }
    }

    /// The table whose configuration the run's rollout changes, if any.
    fn rolling_table(&self) -> Option<&'static str> {
        self.opts.rollout.map(|r| match r {
            Rollout::AddTable => NEW_TABLE,
            Rollout::UpgradeResolver => "ctr",
        })
    }

    pub(super) fn on_alarm(&mut self, r: usize, alarm: Alarm) -> Result<(), Failure> {
        match alarm {
            Alarm::ClockSkew { .. } => Ok(()),
            // A snapshot bootstrap and what leads to one, when one may be needed: with a finite
            // retention bound any region may be passed by it; otherwise once a region was
            // rebuilt on an empty disk (the others truncated by causal stability what it needs,
            // and its own log starts late).
            Alarm::NeedsSnapshot { .. }
            | Alarm::SnapshotStarted { .. }
            | Alarm::SnapshotInstalled { .. }
                if self.may_need_snapshot() =>
            {
                if matches!(alarm, Alarm::SnapshotStarted { .. }) {
                    self.work.snapshots_started += 1;
                    self.maybe_hit_transfer(r);
                }
                Ok(())
            }
            Alarm::PeerNeedsSnapshot { .. } if self.may_need_snapshot() => Ok(()),
            // What a rolling configuration change raises until every region has it.
            Alarm::UnknownTable { .. } | Alarm::ResolverMismatch { .. }
                if self.opts.rollout.is_some() =>
            {
                Ok(())
            }
            other if self.opts.step_checks => {
                let detail = format!("{} raised {other:?}", self.regions[r].name);
                Err(self.fail(("alarm", detail)))
            }
            _ => Ok(()),
        }
    }

    /// Whether a snapshot bootstrap is to be expected (see [`World::on_alarm`]).
    fn may_need_snapshot(&self) -> bool {
        self.p.knobs.log_retention_bytes != u64::MAX
            || self.regions.iter().any(|g| g.disk_lost_ms.is_some())
    }

    /// Whether a region gated on a fresh disk (`Learning`) waits as documented for good: every
    /// live region holds nothing and waits too, and a region lost for good may have held
    /// writes (docs/design.md, "A fresh data directory starts gated": no peer can show it
    /// needs no snapshot, so it stays gated rather than serve what may be wrong).
    fn waits_for_a_lost_region(&self, b: &leader_core::Bootstrap) -> bool {
        let learning = |m: &leader_core::Replica| {
            m.bootstrap()
                .is_some_and(|b| b.phase == leader_core::BootstrapPhase::Learning)
        };
        b.phase == leader_core::BootstrapPhase::Learning
            && self.regions.iter().any(|g| g.doomed)
            && self
                .live()
                .iter()
                .all(|&q| self.regions[q].machine().is_some_and(learning))
    }

    fn live(&self) -> Vec<usize> {
        (0..self.regions.len())
            .filter(|r| !self.regions[*r].doomed)
            .collect()
    }

    /// Whether every surviving region is up, connected to every other, has nothing in flight,
    /// and has durably applied the same writes.
    pub(super) fn settled(&self) -> bool {
        self.unsettled_reason().is_empty()
    }

    /// Why the world has not settled ("" when it has).
    pub(super) fn unsettled_reason(&self) -> String {
        let live = self.live();
        for &r in &live {
            let g = &self.regions[r];
            let Some(m) = g.machine() else {
                return format!("{} is down", g.name);
            };
            if !g.node.persisting.is_empty() || g.reads_out > 0 || m.received() != m.applied() {
                return format!("{} has work in flight", g.name);
            }
            if let Some(b) = m.bootstrap()
                && !self.waits_for_a_lost_region(b)
            {
                return format!("{} is still being bootstrapped: {b:?}", g.name);
            }
            for &q in &live {
                let connected = |a: usize, b: usize| {
                    let peer = &self.regions[b].name;
                    self.regions[a].machine().is_some_and(|m| {
                        m.peer_views(self.time(a))
                            .iter()
                            .any(|v| v.region == *peer && v.connected)
                    })
                };
                if q != r && (self.current_conn(r, q).is_none() || !connected(r, q)) {
                    let views = |a: usize| {
                        self.regions[a]
                            .machine()
                            .map(|m| m.peer_views(self.time(a)))
                    };
                    return format!(
                        "{} is not replicating to {}: connection {:?} (raw {:?}); {} sees {:?}; {} sees {:?}",
                        g.name,
                        self.regions[q].name,
                        self.current_conn(r, q),
                        self.net.current_raw(r, q),
                        g.name,
                        views(r),
                        self.regions[q].name,
                        views(q)
                    );
                }
            }
        }
        if let Some(busy) = self.net.busy() {
            return format!("frames in flight: {busy}");
        }
        let first = self.regions[live[0]].disk().applied.clone();
        for &r in &live {
            if self.regions[r].disk().applied != first {
                return format!(
                    "applied vectors differ: {} has {:?}, {} has {:?}",
                    self.regions[live[0]].name,
                    first,
                    self.regions[r].name,
                    self.regions[r].disk().applied
                );
            }
        }
        String::new()
    }

    /// The oracles, once the world has settled (or given up settling).
    pub(super) fn final_checks(&self) -> Result<(), Failure> {
        let live = self.live();
        self.check_not_lost(&live)?;
        self.check_convergence(&live)?;
        let g = &self.regions[live[0]];
        let m = g.machine().expect("checked by convergence");
        let applied = m.applied().clone();
        for (origin, seq) in applied.iter() {
            for s in 1..=seq.0 {
                let dot = Dot::new(origin, Seq(s));
                if self.truth.get(&dot).is_none() {
                    let detail = format!(
                        "{} applied {dot}, which its origin never made durable",
                        g.name
                    );
                    return Err(self.fail(("write-identity", detail)));
                }
            }
        }
        for (slot, state) in m.keys() {
            let kind = self.tables[&slot.0];
            self.truth
                .check_state(&g.name, slot, state)
                .and_then(|()| {
                    let floor = m.read_context(None);
                    self.truth
                        .check_final_key(slot, kind, state, &applied, &floor)
                })
                .map_err(|b| self.fail(b))?;
            self.check_final_cap(slot, state)?;
        }
        for slot in self.truth.slots() {
            if !self.truth.applied_writes(slot, &applied).is_empty()
                && m.get(&slot.0, &slot.1).is_none()
                && !self
                    .truth
                    .only_deletes_survive(slot, self.tables[&slot.0], &applied)
            {
                let detail = format!(
                    "{} has no state for {} although writes reached it",
                    g.name,
                    show(slot)
                );
                return Err(self.fail(("key-context", detail)));
            }
        }
        self.check_acknowledged(&live, &applied)
    }

    /// Region `r`'s disk is gone (replaced by an empty one, or lost for good with the region):
    /// an acknowledged write no other disk holds now is lost, and the final oracles stop
    /// expecting it. That is only allowed when its acknowledgement promised no more: every
    /// other region it named as durable has lost the disk that held it (or its life). A write
    /// acknowledged at `local` by `r` alone may go; one at `one` and above (which another
    /// region held when it was acknowledged) and any write another region holds may not.
    pub(super) fn lose_copies(&mut self, r: usize) -> Result<(), Failure> {
        let mut lost = Vec::new();
        for (idx, op) in self.ops.iter().enumerate() {
            let OpOutcome::Acked(receipt) = &op.outcome else {
                continue;
            };
            let dot = receipt.dot;
            let held_elsewhere = self
                .regions
                .iter()
                .enumerate()
                .any(|(q, g)| q != r && !g.doomed && g.disk().applied.covers(&dot));
            if held_elsewhere || self.lost_with_disk.contains(&dot) {
                continue;
            }
            let acked_ms = op.answered_ms.unwrap_or_default();
            let broken = receipt.durable_in.iter().find(|name| {
                let q = self.index_of(name);
                let g = &self.regions[q];
                q != r && !g.doomed && !g.lost_applied.covers(&dot)
            });
            if let Some(name) = broken {
                let detail = format!(
                    "{} lost its disk (or its life), and with it request #{} ({dot}, acknowledged at {acked_ms} ms \
                     at level {} as durable in {:?}), which {name}'s disk no longer holds",
                    self.regions[r].name,
                    idx + 1,
                    receipt.durability,
                    receipt.durable_in
                );
                return Err(self.fail(("acked-write-lost", detail)));
            }
            lost.push(dot);
        }
        self.faults.writes_lost_with_disk += lost.len() as u64;
        self.lost_with_disk.extend(lost);
        Ok(())
    }

    /// Every acknowledged write that a surviving region held durably when it was
    /// acknowledged is durable in at least one surviving region (checked before convergence,
    /// so a lost write is named even when the survivors also disagree).
    fn check_not_lost(&self, live: &[usize]) -> Result<(), Failure> {
        for (idx, op) in self.ops.iter().enumerate() {
            let OpOutcome::Acked(receipt) = &op.outcome else {
                continue;
            };
            if self.lost_with_disk.contains(&receipt.dot) {
                continue; // only disks since lost held it, and its level promised no more
            }
            let promised = receipt
                .durable_in
                .iter()
                .any(|name| live.iter().any(|r| self.regions[*r].name == *name));
            let kept = live
                .iter()
                .any(|r| self.regions[*r].disk().applied.covers(&receipt.dot));
            if promised && !kept {
                let origin = &self.regions[op.region];
                let detail = format!(
                    "request #{} ({}, {} to {}, issued at {} ms, acknowledged at {} ms at level {} \
                     as durable in {:?}) is in no surviving region; origin {}{}",
                    idx + 1,
                    receipt.dot,
                    show_value(&op.value),
                    show(&op.slot),
                    op.issued_ms,
                    op.answered_ms.unwrap_or_default(),
                    receipt.durability,
                    receipt.durable_in,
                    origin.name,
                    if origin.doomed {
                        " was lost for good"
                    } else {
                        " survived"
                    }
                );
                return Err(self.fail(("acked-write-lost", detail)));
            }
        }
        Ok(())
    }

    /// Identical digests everywhere, and the disk of each region equal to its memory.
    fn check_convergence(&self, live: &[usize]) -> Result<(), Failure> {
        let mut digests = BTreeMap::new();
        for &r in live {
            let g = &self.regions[r];
            let Some(m) = g.machine() else {
                return Err(self.fail(("convergence", format!("{} is still down", g.name))));
            };
            digests.insert(r, m.digest());
            let memory: BTreeMap<&Slot, &KeyState> = m.keys().collect();
            let on_disk = g.disk().keys_now();
            let disk: BTreeMap<&Slot, &KeyState> = on_disk.iter().collect();
            if memory != disk {
                let detail = format!(
                    "{}: the key states in memory differ from the disk's",
                    g.name
                );
                return Err(self.fail(("disk-mirror", detail)));
            }
            // A crash now would lose the kept-back states: the checkpoint and the replayed
            // log must rebuild exactly this memory.
            let mut disk = g.disk().clone();
            let rebuilt = disk
                .recover(g.opts.clone(), self.registry_of(r))
                .map(|(m, _)| m.digest());
            if rebuilt.as_ref() != Ok(&m.digest()) {
                let detail = format!(
                    "{}: a restart from its disk ({} key states kept back) would not rebuild its memory",
                    g.name,
                    g.disk().kept_back()
                );
                return Err(self.fail(("recovery", detail)));
            }
        }
        let first = digests[&live[0]];
        let stable = self.stable_everywhere(live);
        let collected = |r: usize| self.collected_view(r, &stable);
        let first_view = collected(live[0]);
        for &r in live {
            // Regions may have collected different stable tombstones so far (collection
            // follows what each knows of the others): they must agree once those are set
            // aside, and a tombstone that is not stable everywhere must be in both or
            // neither (docs/design.md, "Tombstone collection").
            if digests[&r] != first {
                let view = collected(r);
                if view != first_view {
                    let slot = view
                        .keys()
                        .chain(first_view.keys())
                        .find(|s| view.get(*s) != first_view.get(*s))
                        .map(|s| {
                            format!(
                                "; with stable tombstones set aside, {}: {} has {:?}, {} has {:?}",
                                show(s),
                                self.regions[live[0]].name,
                                first_view.get(s),
                                self.regions[r].name,
                                view.get(s)
                            )
                        })
                        .unwrap_or_default();
                    let detail = self.describe_divergence(live[0], r) + &slot;
                    return Err(self.fail(("convergence", detail)));
                }
            }
        }
        Ok(())
    }

    /// The writes every live region has applied: what tombstone collection may have dropped.
    fn stable_everywhere(&self, live: &[usize]) -> conflict::VersionVector {
        live.iter()
            .map(|&r| self.regions[r].machine().expect("live").applied().clone())
            .reduce(|s, applied| s.meet(&applied))
            .unwrap_or_default()
    }

    /// Region `r`'s key states with every tombstone `stable` covers set aside, keys left with
    /// nothing (and a context it covers) dropped, and `stable` joined into every context:
    /// what collection leaves once done, whatever it has done so far.
    fn collected_view(
        &self,
        r: usize,
        stable: &conflict::VersionVector,
    ) -> BTreeMap<Slot, KeyState> {
        let m = self.regions[r].machine().expect("live");
        m.keys()
            .filter_map(|(slot, state)| {
                let mut state = state.clone();
                state
                    .siblings
                    .retain(|s| !(s.value.is_tombstone() && stable.covers(&s.dot)));
                let gone = state.siblings.is_empty() && stable.dominates(&state.context);
                // Writes every region has are seen everywhere whether a key's context still
                // names them or its region collected them (and names them in its floor).
                state.context.join(stable);
                (!gone).then(|| (slot.clone(), state))
            })
            .collect()
    }

    fn describe_divergence(&self, a: usize, b: usize) -> String {
        let (ga, gb) = (&self.regions[a], &self.regions[b]);
        let (ma, mb) = (ga.machine().expect("live"), gb.machine().expect("live"));
        let ka: BTreeMap<&Slot, &KeyState> = ma.keys().collect();
        let kb: BTreeMap<&Slot, &KeyState> = mb.keys().collect();
        let slot = ka
            .keys()
            .chain(kb.keys())
            .find(|s| ka.get(*s) != kb.get(*s))
            .map(|s| {
                format!(
                    "first differing key {}: {} has {:?}, {} has {:?}",
                    show(s),
                    ga.name,
                    ka.get(*s),
                    gb.name,
                    kb.get(*s)
                )
            })
            .unwrap_or_default();
        format!(
            "digests differ between {} (applied {:?}) and {} (applied {:?}); {slot}",
            ga.name,
            ma.applied(),
            gb.name,
            mb.applied()
        )
    }

    /// Concurrent siblings of one origin are bounded by the cap (its writes were all
    /// siblings at that origin when the last one was accepted).
    fn check_final_cap(&self, slot: &Slot, state: &KeyState) -> Result<(), Failure> {
        let mut per_origin: BTreeMap<_, usize> = BTreeMap::new();
        for s in &state.siblings {
            *per_origin.entry(s.dot.replica).or_default() += 1;
        }
        let cap = self.p.knobs.max_siblings;
        match per_origin.iter().find(|(_, n)| **n > cap) {
            Some((origin, n)) => {
                let detail = format!(
                    "{} ends with {n} concurrent siblings from {origin}, above the cap {cap}",
                    show(slot)
                );
                Err(self.fail(("sibling-cap", detail)))
            }
            None => Ok(()),
        }
    }

    /// Every acknowledged write that some surviving region held durably when it was
    /// acknowledged is present, or outranked by what the resolver keeps; counters never fall
    /// below an acknowledged increment.
    fn check_acknowledged(
        &self,
        live: &[usize],
        applied: &conflict::VersionVector,
    ) -> Result<(), Failure> {
        let m = self.regions[live[0]].machine().expect("live");
        for (idx, op) in self.ops.iter().enumerate() {
            let OpOutcome::Acked(receipt) = &op.outcome else {
                continue;
            };
            let survives = receipt
                .durable_in
                .iter()
                .any(|name| live.iter().any(|r| self.regions[*r].name == *name));
            if !survives || self.lost_with_disk.contains(&receipt.dot) {
                continue; // only its lost origin had it: `local` promises no more
            }
            let dot = receipt.dot;
            let origin = &self.regions[op.region].name;
            if !applied.covers(&dot) {
                let detail = format!(
                    "request #{} ({dot}, {} to {}, acknowledged at {} durable in {:?}) is missing after \
                     the faults; origin {origin}{}",
                    idx + 1,
                    show_value(&op.value),
                    show(&op.slot),
                    receipt.durability,
                    receipt.durable_in,
                    if self.regions[op.region].doomed {
                        " was lost for good"
                    } else {
                        " survived"
                    }
                );
                return Err(self.fail(("acked-write-lost", detail)));
            }
            let state = m.get(&op.slot.0, &op.slot.1).cloned().unwrap_or_default();
            self.check_outranked(idx, receipt, &op.slot, &state, applied)?;
            if let Some(own) = op.counter_own {
                let merged = match state.resolve(&Counter) {
                    Resolved::Value(b) => Counter::decode(&b).unwrap_or_default(),
                    _ => BTreeMap::new(),
                };
                let have = merged.get(&dot.replica).copied().unwrap_or(0);
                if have < own {
                    let detail = format!(
                        "{}: {origin}'s count is {have}, below its acknowledged increment #{} to {own}",
                        show(&op.slot),
                        idx + 1
                    );
                    return Err(self.fail(("counter", detail)));
                }
            }
        }
        Ok(())
    }

    /// An acknowledged write that is not kept must be outranked: by a greater last-write-wins
    /// survivor, or (for the other resolvers) by a write that causally supersedes it.
    fn check_outranked(
        &self,
        idx: usize,
        receipt: &WriteReceipt,
        slot: &Slot,
        state: &KeyState,
        applied: &conflict::VersionVector,
    ) -> Result<(), Failure> {
        let dot = receipt.dot;
        if state.siblings.iter().any(|s| s.dot == dot) {
            return Ok(());
        }
        let mine = (receipt.hlc, dot.replica, dot.seq);
        // A delete every region had may have been collected (docs/design.md, "Tombstone
        // collection"), and a write outranked by a collected delete leaves no survivor.
        let delete = |d: &Dot| {
            self.truth
                .get(d)
                .is_some_and(|(_, w)| w.value.is_tombstone())
        };
        if delete(&dot) {
            return Ok(());
        }
        let outranked = match self.tables[&slot.0] {
            TableKind::Lww if state.siblings.is_empty() => self
                .truth
                .applied_writes(slot, applied)
                .iter()
                .any(|w| w.value.is_tombstone() && (w.hlc, w.dot.replica, w.dot.seq) > mine),
            TableKind::Lww => state.siblings.last().is_some_and(|s| s.order_key() > mine),
            // These resolvers rank by causality only: a write is outranked by one that
            // supersedes it (that it also orders after is the stamp rule's business).
            TableKind::MultiValue | TableKind::Counter => self
                .truth
                .applied_writes(slot, applied)
                .iter()
                .any(|w| w.context.covers(&dot)),
        };
        if outranked {
            return Ok(());
        }
        let detail = format!(
            "request #{} ({dot} {:?}) to {} was acknowledged, and is neither kept nor outranked: \
             the key keeps {:?}",
            idx + 1,
            receipt.hlc,
            show(slot),
            state
                .siblings
                .iter()
                .map(|s| (s.dot, s.hlc))
                .collect::<Vec<_>>()
        );
        Err(self.fail(("acked-write-outranked", detail)))
    }
}

fn show_value(v: &conflict::Value) -> String {
    match v {
        conflict::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        conflict::Value::Tombstone => "delete".into(),
    }
}
