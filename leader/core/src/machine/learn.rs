//! A fresh data directory starts gated (docs/design.md, "A fresh data directory starts
//! gated"). A region whose data directory holds nothing (new, or rebuilt on an empty disk with
//! a new replica id) cannot tell on its own whether the cluster has writes that no peer's log
//! can stream it any more: serving before it knows would answer reads of such keys as absent.
//! So it starts as a [`Bootstrap`] in the phase [`BootstrapPhase::Learning`] (refusing reads
//! and writes as a transfer does) until the peers' [`Standing`], in their hellos and
//! heartbeats, tells it:
//! - a connected peer's log starts past what this region has: it needs a snapshot, and the
//!   transfer starts from that peer;
//! - a connected peer serves and its log reaches back to what this region has, for every
//!   origin: it can stream every write it has, and this region serves;
//! - every connected peer holds nothing and waits too, and with this region they are a
//!   majority of the configuration: a new cluster, and they serve at once.
//!
//! Otherwise it waits and says for what. A peer that cannot vouch (itself waiting or being
//! bootstrapped) may hold nothing while the region that does hold the writes is away: a
//! minority of regions rebuilt at once must not take each other's emptiness for a new
//! cluster. A majority rebuilt at once while the others are away is the bound: as for
//! `quorum` writes, losing a majority's disks at once is outside what is protected.

use super::snapshot::{Bootstrap, BootstrapPhase};
use super::{Effect, Replica, Time};
use crate::msg::{Serving, Standing};

impl Replica {
    /// Whether a region recovered with these states holds nothing at all and has peers: it
    /// starts learning ([`Replica::new`]).
    pub(super) fn starts_learning(&self) -> bool {
        self.opts.learn_when_empty
            && !self.peers.is_empty()
            && self.bootstrap.is_none()
            && self.own_seq == conflict::Seq::ZERO
            && self.durable.is_empty()
            && self.keys.is_empty()
    }

    /// What this region tells its peers of itself ([`Standing`]).
    pub(super) fn standing(&self) -> Standing {
        let serving = match self.bootstrap.as_ref().map(|b| b.phase) {
            None => Serving::Yes,
            Some(BootstrapPhase::Learning) => Serving::Learning,
            Some(_) => Serving::Bootstrapping,
        };
        Standing {
            serving,
            log_start: self.truncated.clone(),
        }
    }

    /// Whether this region is still learning whether it needs a snapshot.
    pub(super) fn learning(&self) -> bool {
        self.bootstrap
            .as_ref()
            .is_some_and(|b| b.phase == BootstrapPhase::Learning)
    }

    /// A peer's standing arrived (a hello or a heartbeat): decides, if this region is still
    /// learning, whether it needs a snapshot, serves, or waits (module docs).
    pub(super) fn learn_from_peers(&mut self, now: Time, out: &mut Vec<Effect>) {
        if !self.learning() {
            return;
        }
        let connected = || {
            self.peers.iter().filter_map(|(n, p)| {
                Some((n, p, p.standing.as_ref().filter(|_| p.is_connected())?))
            })
        };
        let truncated_past = connected().find_map(|(name, _, s)| {
            let (origin, start) = s
                .log_start
                .iter()
                .find(|(o, start)| *start > self.received.get(*o))?;
            Some((name.clone(), origin, start))
        });
        if let Some((name, origin, start)) = truncated_past {
            let origin = self.region_of(&origin).unwrap_or("an origin").to_owned();
            let reason = format!(
                "this region's data directory is new, and region '{name}' no longer holds the writes of {origin} up to {start}"
            );
            self.start_bootstrap(now, &name, reason, out);
            return;
        }
        let vouched = connected().any(|(_, _, s)| s.serving == Serving::Yes);
        let empty = |p: &super::peer::Peer, s: &Standing| {
            p.acked.is_empty() && s.serving == Serving::Learning
        };
        let empty_peers = connected().filter(|(_, p, s)| empty(p, s)).count();
        let new_cluster = connected().all(|(_, p, s)| empty(p, s))
            && (empty_peers + 1) * 2 > self.peers.len() + 1;
        if vouched || new_cluster {
            self.bootstrap = None;
            return;
        }
        let reason = self.learning_reason();
        if let Some(b) = &mut self.bootstrap {
            b.reason = reason;
        }
    }

    /// What a learning region waits for, in words.
    pub(super) fn learning_reason(&self) -> String {
        let (mut away, mut unable) = (Vec::new(), Vec::new());
        for (name, p) in &self.peers {
            match p.standing.as_ref().filter(|_| p.is_connected()) {
                None => away.push(name.as_str()),
                Some(_) => unable.push(name.as_str()),
            }
        }
        let mut reason = String::from(
            "this region's data directory is new: waiting to learn from the other regions whether it needs a snapshot",
        );
        if !away.is_empty() {
            reason += &format!("; not connected: {}", away.join(", "));
        }
        if !unable.is_empty() {
            reason += &format!(
                "; connected but not serving themselves (new or being bootstrapped): {}",
                unable.join(", ")
            );
        }
        reason
    }
}

impl Bootstrap {
    /// The gate of a region on a fresh data directory ([`BootstrapPhase::Learning`]).
    pub(super) fn learning(reason: String) -> Self {
        let mut b = Bootstrap::new("", reason);
        b.phase = BootstrapPhase::Learning;
        b.source = None;
        b
    }
}
