//! Anti-entropy: compare this region's hash tree with a peer's, and repair and report the
//! keys that differ although both regions have applied every write they hold
//! (docs/design.md, "Anti-entropy").
//!
//! # A round
//! The initiator walks the peer's tree top-down, one level per round trip, asking only for
//! the children of the nodes whose hashes differ from its own:
//! 1. `AaeRequest { level 0, [root] }` → `AaeHashes`; equal roots end the round;
//! 2. `AaeRequest { level l + 1, children of the differing nodes }` → `AaeHashes`, down to
//!    the leaves;
//! 3. `AaeStatesRequest { differing leaves }` → `AaeStates`: every key state of those leaves,
//!    with the peer's applied vector;
//! 4. the initiator compares key by key, joins the peer's state of each diverged key into its
//!    own, and sends its (joined) states of them in `AaeRepair`, which the peer checks the
//!    same way and joins. The round is over.
//!
//! The responder keeps no state: every request is answered from its tree as it is then. A
//! round is bounded per level ([`MAX_AAE_NODES`], [`MAX_AAE_LEAVES`], the chunk size); what
//! does not fit waits for the next round.
//!
//! # In flight is not diverged
//! A key whose state at either side holds a write (a sibling or a context entry) the other
//! side has not applied is in flight: it is skipped and counted, never reported. Only keys
//! whose two states both lie within both applied vectors are compared: both regions have
//! applied every write either state saw, so replication must have made them equal.

use std::collections::{BTreeMap, BTreeSet};

use conflict::{KeyState, VersionVector};

use super::{ConnId, Replica, Time};
use crate::hashtree::{LEAF_LEVEL, LEAVES, children, key_hash, leaf_of, width};
use crate::limits::{AAE_ALARM_KEYS, AAE_ROUND_TIMEOUT_MS, MAX_AAE_LEAVES, MAX_AAE_NODES};
use crate::machine::{Alarm, Effect};
use crate::msg::{AaeHashes, AaeRepair, AaeRequest, AaeStates, AaeStatesRequest, PeerMsg, SlotKey};

/// (table, key, state) as the messages carry them.
type States = Vec<(String, Vec<u8>, KeyState)>;

/// Anti-entropy's state at this region: the rounds it started, and what it found.
#[derive(Debug, Default)]
pub(super) struct AntiEntropy {
    /// The round under way with each peer, started here.
    rounds: BTreeMap<String, Round>,
    next_round: u64,
    /// When (mono ms) the last periodic rounds started.
    last_start_ms: u64,
    /// Per peer, what rounds found so far.
    found: BTreeMap<String, Divergence>,
}

/// What anti-entropy found with one peer since this process started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Divergence {
    /// Keys found diverged.
    pub found: u64,
    /// Keys whose state here changed by the join.
    pub repaired: u64,
    /// The last keys found, at most [`AAE_ALARM_KEYS`].
    pub keys: Vec<(String, Vec<u8>)>,
    /// When (wall ms) the last divergence was found.
    pub last_wall_ms: u64,
}

#[derive(Debug)]
struct Round {
    /// The id of the latest request, which its answer echoes.
    id: u64,
    conn: ConnId,
    deadline_ms: u64,
    asked: Asked,
}

#[derive(Debug)]
enum Asked {
    /// Hashes of these nodes of this level.
    Nodes(u8, Vec<u32>),
    /// States of these leaves.
    Leaves(Vec<u32>),
}

impl Replica {
    /// Starts a round with every connected peer that has none under way (not while this
    /// region is being bootstrapped: its states are partial).
    pub(super) fn start_anti_entropy(&mut self, now: Time, out: &mut Vec<Effect>) {
        if self.bootstrap.is_some() {
            return;
        }
        let idle: Vec<(String, ConnId)> = self
            .peers
            .iter()
            .filter(|(name, _)| !self.aae.rounds.contains_key(*name))
            .filter_map(|(name, p)| p.active.map(|c| (name.clone(), c)))
            .collect();
        for (peer, conn) in idle {
            self.aae_ask(now, peer, conn, Asked::Nodes(0, vec![0]), out);
        }
    }

    /// Peers with a round under way, started here.
    pub fn anti_entropy_rounds(&self) -> impl Iterator<Item = &str> {
        self.aae.rounds.keys().map(String::as_str)
    }

    /// What anti-entropy found with each peer since this process started.
    pub fn divergences(&self) -> &BTreeMap<String, Divergence> {
        &self.aae.found
    }

    /// The periodic rounds, and rounds that waited too long or lost their connection.
    pub(super) fn aae_tick(&mut self, now: Time, out: &mut Vec<Effect>) {
        let peers = &self.peers;
        self.aae.rounds.retain(|name, r| {
            now.mono_ms < r.deadline_ms && peers.get(name).and_then(|p| p.active) == Some(r.conn)
        });
        let every = self.opts.anti_entropy_interval_ms;
        if every > 0 && now.mono_ms >= self.aae.last_start_ms + every {
            self.aae.last_start_ms = now.mono_ms;
            self.start_anti_entropy(now, out);
        }
    }

    /// Anti-entropy's next deadline: the next periodic start, or a round's timeout.
    pub(super) fn aae_deadline(&self) -> Option<u64> {
        let every = self.opts.anti_entropy_interval_ms;
        let periodic = (every > 0).then(|| self.aae.last_start_ms + every);
        let rounds = self.aae.rounds.values().map(|r| r.deadline_ms);
        // As for relays (`poll_timeout`): a deadline passed by the last event was acted on.
        periodic
            .into_iter()
            .chain(rounds)
            .filter(|d| *d > self.last_event_ms)
            .min()
    }

    /// Sends the next request of the round with `peer`. Every request has an id of its own,
    /// which its answer echoes: an answer to anything but the latest request (a duplicate, a
    /// late one) is ignored.
    fn aae_ask(
        &mut self,
        now: Time,
        peer: String,
        conn: ConnId,
        asked: Asked,
        out: &mut Vec<Effect>,
    ) {
        self.aae.next_round += 1;
        let id = self.aae.next_round;
        let msg = match &asked {
            Asked::Nodes(level, nodes) => PeerMsg::AaeRequest(AaeRequest {
                round: id,
                level: *level,
                nodes: nodes.clone(),
            }),
            Asked::Leaves(leaves) => PeerMsg::AaeStatesRequest(AaeStatesRequest {
                round: id,
                leaves: leaves.clone(),
            }),
        };
        out.push(Effect::Send {
            peer: peer.clone(),
            conn,
            msg,
        });
        let deadline_ms = now.mono_ms + AAE_ROUND_TIMEOUT_MS;
        let round = Round {
            id,
            conn,
            deadline_ms,
            asked,
        };
        self.aae.rounds.insert(peer, round);
    }

    /// Answers a peer's request for hashes of tree nodes.
    pub(super) fn on_aae_request(
        &mut self,
        name: &str,
        conn: ConnId,
        r: AaeRequest,
        out: &mut Vec<Effect>,
    ) {
        let valid = r.level <= LEAF_LEVEL && valid_indices(&r.nodes, MAX_AAE_NODES, width(r.level));
        if !valid {
            let detail = format!(
                "anti-entropy request for {} nodes of level {}: indices must ascend, be below the level's width, and number at most {MAX_AAE_NODES}",
                r.nodes.len(),
                r.level
            );
            return self.violation(name, conn, detail, out);
        }
        if self.bootstrap.is_some() {
            return; // partial states: the asker's round times out
        }
        let tree = self.keys.tree();
        let hashes = r
            .nodes
            .iter()
            .map(|n| tree.node(r.level, *n).unwrap_or_default())
            .collect();
        let msg = PeerMsg::AaeHashes(AaeHashes {
            round: r.round,
            hashes,
        });
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg,
        });
    }

    /// A peer's hashes: descend through the nodes that differ, or ask for their states.
    pub(super) fn on_aae_hashes(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        h: AaeHashes,
        out: &mut Vec<Effect>,
    ) {
        let Some(round) = self.aae.rounds.get(name).filter(|r| r.id == h.round) else {
            return; // a round given up meanwhile
        };
        let Asked::Nodes(level, nodes) = &round.asked else {
            let detail = "anti-entropy hashes answering a request for states".to_owned();
            return self.violation(name, conn, detail, out);
        };
        let level = *level;
        if h.hashes.len() != nodes.len() {
            let detail = format!(
                "anti-entropy answer with {} hashes for {} nodes",
                h.hashes.len(),
                nodes.len()
            );
            return self.violation(name, conn, detail, out);
        }
        let tree = self.keys.tree();
        let differing: Vec<u32> = nodes
            .iter()
            .zip(&h.hashes)
            .filter(|(n, theirs)| tree.node(level, **n).as_ref() != Some(*theirs))
            .map(|(n, _)| *n)
            .collect();
        let asked = if differing.is_empty() {
            self.aae.rounds.remove(name);
            self.counters.anti_entropy_rounds += 1;
            return;
        } else if level < LEAF_LEVEL {
            let nodes = differing.into_iter().flat_map(children);
            Asked::Nodes(level + 1, nodes.take(MAX_AAE_NODES).collect())
        } else {
            Asked::Leaves(differing.into_iter().take(MAX_AAE_LEAVES).collect())
        };
        self.aae_ask(now, name.to_owned(), conn, asked, out);
    }

    /// Answers a peer's request for the key states of leaves: whole leaves, in the order
    /// asked, as many as fit one chunk (at least one).
    pub(super) fn on_aae_states_request(
        &mut self,
        name: &str,
        conn: ConnId,
        r: AaeStatesRequest,
        out: &mut Vec<Effect>,
    ) {
        if !valid_indices(&r.leaves, MAX_AAE_LEAVES, LEAVES) {
            let detail = format!(
                "anti-entropy request for {} leaves: indices must ascend, be below {LEAVES}, and number at most {MAX_AAE_LEAVES}",
                r.leaves.len()
            );
            return self.violation(name, conn, detail, out);
        }
        if self.bootstrap.is_some() {
            return;
        }
        let mut by_leaf = self.states_in(&r.leaves);
        let budget = self.opts.snapshot_chunk_bytes.max(1);
        let (mut leaves, mut states, mut used) = (Vec::new(), Vec::new(), 0);
        for leaf in r.leaves {
            let these = by_leaf.remove(&leaf).unwrap_or_default();
            let bytes: usize = these.iter().map(|(t, k, s)| state_bytes(t, k, s)).sum();
            if !leaves.is_empty() && used + bytes > budget {
                break;
            }
            used += bytes;
            leaves.push(leaf);
            states.extend(these);
        }
        states.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let msg = PeerMsg::AaeStates(AaeStates {
            round: r.round,
            applied: self.received.clone(),
            leaves,
            states,
            held_back: self.held_back_tables(),
        });
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg,
        });
    }

    /// The peer's states of the leaves that differ: compare, join, send ours back, report.
    pub(super) fn on_aae_states(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        s: AaeStates,
        out: &mut Vec<Effect>,
    ) {
        let Some(round) = self.aae.rounds.get(name).filter(|r| r.id == s.round) else {
            return;
        };
        let Asked::Leaves(asked) = &round.asked else {
            let detail = "anti-entropy states answering a request for hashes".to_owned();
            return self.violation(name, conn, detail, out);
        };
        let prefix = s.leaves.len() <= asked.len() && asked[..s.leaves.len()] == s.leaves[..];
        let problem = if prefix {
            self.malformed_aae(&s.applied, &s.states, &s.held_back, Some(&s.leaves))
        } else {
            Some("anti-entropy states of leaves that were not asked for".to_owned())
        };
        if let Some(detail) = problem {
            return self.violation(name, conn, detail, out);
        }
        self.aae.rounds.remove(name);
        self.counters.anti_entropy_rounds += 1;
        let mut mine: BTreeMap<SlotKey, KeyState> = self
            .states_in(&s.leaves)
            .into_values()
            .flatten()
            .map(|(t, k, st)| ((t, k), st))
            .collect();
        let theirs: BTreeMap<SlotKey, KeyState> = s
            .states
            .into_iter()
            .map(|(t, k, st)| ((t, k), st))
            .collect();
        let slots: BTreeSet<SlotKey> = mine.keys().chain(theirs.keys()).cloned().collect();
        let mut diverged = Vec::new();
        for slot in slots {
            let (a, b) = (mine.get(&slot), theirs.get(&slot));
            if self.diverged(name, &slot, a, b, &s.applied, &s.held_back) {
                diverged.push(slot);
            }
        }
        if diverged.is_empty() {
            return;
        }
        let mut repaired = 0;
        for slot in &diverged {
            if let Some(state) = theirs.get(slot) {
                repaired += u64::from(self.join_as_is(slot.clone(), state.clone()));
            }
            mine.insert(
                slot.clone(),
                self.keys.get(slot).cloned().unwrap_or_default(),
            );
        }
        let budget = self.opts.snapshot_chunk_bytes.max(1);
        let mut used = 0;
        let mut states = Vec::new();
        for slot in &diverged {
            let state = mine.remove(slot).unwrap_or_default();
            used += state_bytes(&slot.0, &slot.1, &state);
            if !states.is_empty() && used > budget {
                break; // the rest go by the next round
            }
            states.push((slot.0.clone(), slot.1.clone(), state));
        }
        let msg = PeerMsg::AaeRepair(AaeRepair {
            round: s.round,
            applied: self.received.clone(),
            states,
            held_back: self.held_back_tables(),
        });
        out.push(Effect::Send {
            peer: name.to_owned(),
            conn,
            msg,
        });
        self.report_divergence(now, name, &diverged, repaired, out);
    }

    /// A peer's states of keys it found diverged: check each the same way, join, report.
    pub(super) fn on_aae_repair(
        &mut self,
        now: Time,
        name: &str,
        conn: ConnId,
        r: AaeRepair,
        out: &mut Vec<Effect>,
    ) {
        if let Some(detail) = self.malformed_aae(&r.applied, &r.states, &r.held_back, None) {
            return self.violation(name, conn, detail, out);
        }
        if self.bootstrap.is_some() {
            return;
        }
        let mut diverged = Vec::new();
        let mut repaired = 0;
        for (t, k, theirs) in r.states {
            let slot = (t, k);
            let mine = self.keys.get(&slot).cloned();
            if self.diverged(
                name,
                &slot,
                mine.as_ref(),
                Some(&theirs),
                &r.applied,
                &r.held_back,
            ) {
                repaired += u64::from(self.join_as_is(slot.clone(), theirs));
                diverged.push(slot);
            }
        }
        if !diverged.is_empty() {
            self.report_divergence(now, name, &diverged, repaired, out);
        }
    }

    /// Whether `slot`'s states here (`mine`) and at `peer` (`theirs`, with the peer's
    /// applied vector) differ although both regions have applied every write they hold. A
    /// difference in flight is counted and is not a divergence; so are tables not compared
    /// (held back at either side, or resolved differently).
    fn diverged(
        &mut self,
        peer: &str,
        slot: &SlotKey,
        mine: Option<&KeyState>,
        theirs: Option<&KeyState>,
        their_applied: &VersionVector,
        their_held_back: &[String],
    ) -> bool {
        let hash = |s: Option<&KeyState>| s.and_then(|s| key_hash(&slot.0, &slot.1, s));
        if hash(mine) == hash(theirs) || !self.aae_compares(peer, &slot.0, their_held_back) {
            return false;
        }
        let within = |s: Option<&KeyState>, applied: &VersionVector| {
            s.is_none_or(|s| applied.dominates(&s.context))
        };
        if within(mine, their_applied) && within(theirs, &self.received) {
            return true;
        }
        self.counters.anti_entropy_in_flight += 1;
        false
    }

    /// Whether anti-entropy compares `table` with `peer`: configured at both with the same
    /// resolver, and no writes of it held back (quarantined) at either side, since a held
    /// back write is applied (its dot in the applied vector) without being in its key.
    fn aae_compares(&self, peer: &str, table: &str, their_held_back: &[String]) -> bool {
        let ours = self.resolver_ids.iter().find(|(t, _)| t == table);
        let theirs = self.region_resolvers.get(peer).and_then(|r| r.get(table));
        ours.is_some_and(|(_, id)| Some(id) == theirs)
            && self.held_back.get(table).is_none_or(|n| *n == 0)
            && !their_held_back.iter().any(|t| t == table)
    }

    fn held_back_tables(&self) -> Vec<String> {
        let held = self.held_back.iter().filter(|(_, n)| **n > 0);
        held.map(|(t, _)| t.clone()).collect()
    }

    /// Every key state here in these leaves, by leaf: one scan of the key table.
    fn states_in(&self, leaves: &[u32]) -> BTreeMap<u32, States> {
        let wanted: BTreeSet<u32> = leaves.iter().copied().collect();
        let mut by_leaf: BTreeMap<u32, States> = BTreeMap::new();
        for ((t, k), state) in self.keys.iter() {
            let leaf = leaf_of(t, k);
            if wanted.contains(&leaf) {
                let entry = by_leaf.entry(leaf).or_default();
                entry.push((t.clone(), k.clone(), state.clone()));
            }
        }
        by_leaf
    }

    /// Why states a peer sent are malformed, if they are: an applied vector claiming writes
    /// of this region it never made, too many held-back tables, states outside the leaves
    /// they answer, or what [`Replica::malformed_states`] refuses.
    fn malformed_aae(
        &self,
        applied: &VersionVector,
        states: &States,
        held_back: &[String],
        leaves: Option<&[u32]>,
    ) -> Option<String> {
        if self.impossible_vector(applied) {
            return Some(format!(
                "anti-entropy message claims the applied vector {applied:?}: writes of this region it never made ({} made), or unreachable sequence numbers",
                self.own_seq
            ));
        }
        if held_back.len() > self.opts.tables.len().max(1) * 4 {
            return Some(format!(
                "anti-entropy message names {} held-back tables",
                held_back.len()
            ));
        }
        let outside = states
            .iter()
            .find(|(t, k, _)| leaves.is_some_and(|l| l.binary_search(&leaf_of(t, k)).is_err()));
        if let Some((t, k, _)) = outside {
            return Some(format!(
                "anti-entropy state of key {t}/{} outside the leaves it answers",
                String::from_utf8_lossy(k)
            ));
        }
        self.malformed_states("anti-entropy message", states, None)
    }

    fn report_divergence(
        &mut self,
        now: Time,
        peer: &str,
        diverged: &[SlotKey],
        repaired: u64,
        out: &mut Vec<Effect>,
    ) {
        let found = diverged.len() as u64;
        self.counters.anti_entropy_diverged += found;
        self.counters.anti_entropy_repaired += repaired;
        let keys: Vec<SlotKey> = diverged.iter().take(AAE_ALARM_KEYS).cloned().collect();
        let seen = self.aae.found.entry(peer.to_owned()).or_default();
        seen.found += found;
        seen.repaired += repaired;
        seen.keys = keys.clone();
        seen.last_wall_ms = now.wall_ms;
        out.push(Effect::Alarm(Alarm::Divergence {
            peer: peer.to_owned(),
            found,
            repaired,
            keys,
        }));
    }
}

/// Whether node indices ascend strictly, lie below `width`, and number at most `max`.
fn valid_indices(nodes: &[u32], max: usize, width: u32) -> bool {
    nodes.len() <= max
        && nodes.windows(2).all(|w| w[0] < w[1])
        && nodes.last().is_none_or(|n| *n < width)
}

/// A state's size as the chunk budget counts it.
fn state_bytes(table: &str, key: &[u8], state: &KeyState) -> usize {
    table.len() + key.len() + state.estimated_bytes()
}
