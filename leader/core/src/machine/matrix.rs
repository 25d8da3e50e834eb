//! Lag and the lag matrix: heartbeats in, this region's own row out, lag per peer in writes
//! and milliseconds, and the views the driver shows.

use std::collections::BTreeMap;

use conflict::VersionVector;

use super::peer::Peer;
use super::{Effect, PeerView, Replica, Time};
use crate::consistency::MatrixCell;
use crate::consistency::{MatrixRow, PeerLag};
use crate::msg::Heartbeat;

impl Replica {
    pub(super) fn on_heartbeat(
        &mut self,
        now: Time,
        name: &str,
        h: Heartbeat,
        out: &mut Vec<Effect>,
    ) {
        self.observe(now, name, h.hlc, out);
        let peer = self
            .peers
            .get_mut(name)
            .expect("frame() checked the peer exists");
        peer.echo = Some((h.wall_ms, now.wall_ms));
        peer.standing = Some(h.standing.clone());
        // "Needs snapshot" is said once per heartbeat at most: a region that still lacks the
        // writes after a snapshot round (or forgot a stale answer) hears it again.
        peer.snapshot_told.clear();
        if let Some((t1, t2)) = h.echo {
            peer.skew.sample(t1, t2, h.wall_ms, now.wall_ms);
        }
        for row in h.rows {
            // Rows of regions outside the configuration would only grow the matrix without
            // bound (a hostile peer can invent a new name per heartbeat).
            let Some(about) = self.peers.get(&row.region) else {
                continue;
            };
            let direct = row.region == name;
            // A row names the replica it describes: one of a predecessor (a region rebuilt
            // since) says nothing about the region as it is now.
            let current = about.replica.is_none_or(|r| r == row.replica);
            let hello_pending = about.resolvers_from_hello;
            if direct && current {
                self.acknowledged(now, name, &row.applied.clone(), out);
            }
            let resolvers: BTreeMap<String, String> = row.resolvers.iter().cloned().collect();
            let region = row.region.clone();
            // Only a row the matrix accepts as fresher may update what we know of the
            // region's resolvers: a stale row relayed by a third region would otherwise
            // overwrite a newer hello, and writes that match our resolvers would be
            // quarantined during a resolver upgrade.
            if self.matrix.offer(row, now.mono_ms) && current && (direct || !hello_pending) {
                self.region_resolvers.insert(region.clone(), resolvers);
            }
            if direct && current {
                let peer = self.peers.get_mut(&region).expect("looked up above");
                peer.resolvers_from_hello = false;
            }
        }
        self.check_mismatches(out);
        self.check_waits(now, out);
        self.learn_from_peers(now, out);
    }

    /// This region's own row of the lag matrix, as of `now`.
    pub(super) fn own_row(&self, now: Time) -> MatrixRow {
        let lags = self
            .peers
            .iter()
            .map(|(name, p)| {
                let known = self.known_applied(name, p);
                PeerLag {
                    peer: name.clone(),
                    lag_writes: self.own_lag_writes(&known),
                    lag_ms: self.own_lag_ms(&known, now),
                    connected: p.active.is_some(),
                    clock_offset_ms: p.skew.offset_ms(),
                }
            })
            .collect();
        MatrixRow {
            region: self.opts.region.clone(),
            replica: self.opts.replica,
            version: self.clock.last(),
            applied: self.durable.clone(),
            lags,
            resolvers: self.resolver_ids.clone(),
        }
    }

    /// What `name` is known to have durably applied: its acknowledgements joined with its
    /// latest lag-matrix row (for the replica we know it as). When the link to it is cut, a
    /// third region relays our writes to it and its row, passed on in that region's
    /// heartbeats, is the only news of them: without it the matrix would show the peer
    /// lagging on writes it has, for as long as the link stays cut.
    pub(super) fn known_applied(&self, name: &str, p: &Peer) -> VersionVector {
        let mut known = p.acked.clone();
        let row = self.matrix.rows.get(name).map(|(r, _)| r);
        if let Some(row) = row.filter(|r| p.replica.is_none_or(|id| id == r.replica)) {
            known.join(&row.applied);
        }
        known
    }

    /// This region's own writes, durable here, that a peer with applied vector `acked` lacks:
    /// a matrix row's cell, like its `lag_ms`, is about the row's origin's own writes only.
    /// (Counting third regions' writes too would show a cut between two other regions, or
    /// acknowledgements that cannot reach us, as lag on this region's links.)
    fn own_lag_writes(&self, acked: &VersionVector) -> u64 {
        let own = self.opts.replica;
        self.durable.get(own).0.saturating_sub(acked.get(own).0)
    }

    /// Writes durable here that `peer` lacks, over every origin but the peer itself (a region
    /// always has its own writes, even when its acks cannot reach us).
    fn lag_writes(&self, name: &str, peer: &Peer) -> u64 {
        self.durable
            .iter()
            .filter(|(o, _)| self.replicas.get(o).is_none_or(|r| r != name))
            .map(|(o, s)| s.0.saturating_sub(peer.acked.get(o).0))
            .sum()
    }

    /// The full lag matrix as this region knows it: its own row (fresh) and every other
    /// region's latest row, each computed by its origin on the origin's own clock.
    pub fn matrix(&self, now: Time) -> Vec<MatrixCell> {
        let own = self.own_row(now);
        let rows = std::iter::once((&own, now.mono_ms))
            .chain(self.matrix.rows.values().map(|(r, at)| (r, *at)));
        rows.flat_map(|(row, at)| {
            row.lags.iter().map(move |l| MatrixCell {
                origin: row.region.clone(),
                destination: l.peer.clone(),
                lag_writes: l.lag_writes,
                lag_ms: l.lag_ms,
                connected: l.connected,
                row_age_ms: now.mono_ms.saturating_sub(at),
            })
        })
        .collect()
    }

    /// How long (ms) the oldest own write that `acked` lacks has been durable here; 0 when
    /// the peer has every own write. Measured on this region's monotonic clock only.
    fn own_lag_ms(&self, acked: &VersionVector, now: Time) -> u64 {
        let have = acked.get(self.opts.replica);
        if have >= self.durable.get(self.opts.replica) {
            return 0;
        }
        let since = self
            .own_commits
            .iter()
            .find(|(seq, _)| *seq > have)
            .or(self.own_commits.front())
            .map_or(now.mono_ms, |(_, t)| *t);
        now.mono_ms.saturating_sub(since)
    }

    /// Replication state towards each peer, as of `now`.
    pub fn peer_views(&self, now: Time) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(name, p)| {
                let (log_behind_bytes, needs_snapshot) = self.log_position_of(name, p);
                PeerView {
                    lag_ms: self.own_lag_ms(&p.acked, now),
                    region: name.clone(),
                    replica: p.replica,
                    connected: p.active.is_some(),
                    acked: p.acked.clone(),
                    lag_writes: self.lag_writes(name, p),
                    unacked_bytes: p.inflight_bytes,
                    clock_offset_ms: p.skew.offset_ms(),
                    log_behind_bytes,
                    needs_snapshot,
                }
            })
            .collect()
    }
}
