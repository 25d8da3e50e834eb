//! Prometheus metrics of one region, in the text exposition format.
//!
//! Most figures already live in the state machine's counters and the status snapshot, so a
//! scrape builds a fresh `prometheus_client` registry from a [`Status`] (one registry per
//! node: several regions in one test process never share counters). Only what the driver
//! sees in passing — alarms, persist batch sizes — is accumulated here.

use std::sync::atomic::{AtomicU64, Ordering};

use leader_core::{Alarm, PersistBatch};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::snapshot::Status;

/// Alarm kinds, in the order of [`Metrics::alarms`].
const ALARM_KINDS: [&str; 14] = [
    "split_brain",
    "hello_refused",
    "clock_skew",
    "resolver_mismatch",
    "protocol_violation",
    "unknown_table",
    "log_read_failed",
    "causality_violation",
    "context_too_large",
    "peer_needs_snapshot",
    "needs_snapshot",
    "snapshot_started",
    "snapshot_installed",
    "divergence",
];

/// Figures accumulated by the driver between scrapes.
#[derive(Debug)]
pub struct Metrics {
    region: String,
    alarms: [AtomicU64; ALARM_KINDS.len()],
    persisted_keys: AtomicU64,
    persisted_log_entries: AtomicU64,
    max_skew_ahead_ms: AtomicU64,
    send_queue_full: AtomicU64,
}

impl Metrics {
    /// Empty metrics for `region`.
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            alarms: Default::default(),
            persisted_keys: AtomicU64::new(0),
            persisted_log_entries: AtomicU64::new(0),
            max_skew_ahead_ms: AtomicU64::new(0),
            send_queue_full: AtomicU64::new(0),
        }
    }

    /// Counts a frame that found its peer's send queue full (the stream pauses).
    pub fn count_send_queue_full(&self) {
        self.send_queue_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames that found a send queue full so far.
    pub fn send_queue_full(&self) -> u64 {
        self.send_queue_full.load(Ordering::Relaxed)
    }

    /// Counts an alarm by kind.
    pub fn alarm(&self, alarm: &Alarm) {
        let kind = match alarm {
            Alarm::SplitBrain { .. } => 0,
            Alarm::HelloRefused { .. } => 1,
            Alarm::ClockSkew { ahead_ms, .. } => {
                self.max_skew_ahead_ms
                    .fetch_max(*ahead_ms, Ordering::Relaxed);
                2
            }
            Alarm::ResolverMismatch { .. } => 3,
            Alarm::ProtocolViolation { .. } => 4,
            Alarm::UnknownTable { .. } => 5,
            Alarm::LogReadFailed { .. } => 6,
            Alarm::CausalityViolation { .. } => 7,
            Alarm::ContextTooLarge { .. } => 8,
            Alarm::PeerNeedsSnapshot { .. } => 9,
            Alarm::NeedsSnapshot { .. } => 10,
            Alarm::SnapshotStarted { .. } => 11,
            Alarm::SnapshotInstalled { .. } => 12,
            Alarm::Divergence { .. } => 13,
        };
        self.alarms[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// Alarms raised so far, by kind.
    pub fn alarms(&self) -> Vec<(&'static str, u64)> {
        ALARM_KINDS
            .iter()
            .zip(&self.alarms)
            .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
            .collect()
    }

    /// Accounts a persistence step handed to storage.
    pub fn persist_batch(&self, batch: &PersistBatch) {
        self.persisted_keys
            .fetch_add(batch.keys.len() as u64, Ordering::Relaxed);
        self.persisted_log_entries
            .fetch_add(batch.log.len() as u64, Ordering::Relaxed);
    }

    /// Renders every metric for a scrape.
    pub fn render(&self, status: &Status) -> String {
        let mut reg = Registry::with_prefix("meridian");
        let region = [("region".to_owned(), self.region.clone())];
        let counter = |reg: &mut Registry, name: &str, help: &str, v: u64| {
            let c: Family<Vec<(String, String)>, Counter> = Family::default();
            c.get_or_create(&region.to_vec()).inc_by(v);
            reg.register(name, help, c);
        };
        let c = &status.counters;
        counter(
            &mut reg,
            "client_writes",
            "Client writes accepted",
            c.client_writes,
        );
        counter(
            &mut reg,
            "remote_writes_applied",
            "Writes from other regions applied",
            c.remote_applied,
        );
        counter(
            &mut reg,
            "duplicate_writes",
            "Replicated writes dropped as duplicates",
            c.duplicates,
        );
        counter(
            &mut reg,
            "conflicts",
            "Concurrent writes that met at this region",
            c.conflicts,
        );
        counter(
            &mut reg,
            "persist_batches",
            "Persistence steps (transactions) issued",
            c.persists,
        );
        counter(
            &mut reg,
            "fsyncs",
            "Storage commits completed, each one fsync",
            status.commits,
        );
        counter(
            &mut reg,
            "batches_sent",
            "Replication batches sent",
            c.batches_sent,
        );
        counter(
            &mut reg,
            "writes_sent",
            "Writes streamed to peers (own and relayed)",
            c.writes_sent,
        );
        counter(
            &mut reg,
            "writes_relayed",
            "Third-region writes relayed to lagging peers",
            c.writes_relayed,
        );
        counter(
            &mut reg,
            "resyncs",
            "Resync requests sent after a gap",
            c.resyncs,
        );
        counter(
            &mut reg,
            "quarantined_writes",
            "Replicated writes logged but not applied (unknown table, other resolver, context too large)",
            c.quarantined,
        );
        counter(
            &mut reg,
            "log_read_failures",
            "Log reads for a peer's stream that failed and were retried after a backoff",
            c.log_read_failures,
        );
        counter(
            &mut reg,
            "causality_violations",
            "Replicated writes whose HLC did not exceed a sibling they supersede",
            c.causality_violations,
        );
        counter(
            &mut reg,
            "context_overflows",
            "Writes not applied because their key's context would outgrow what storage reads back",
            c.context_overflows,
        );
        counter(
            &mut reg,
            "dots_reused",
            "Duplicates that differ from the write held under the same dot (two processes share a replica id)",
            c.dots_reused,
        );
        counter(
            &mut reg,
            "released_writes",
            "Quarantined writes applied at a start whose configuration accepts them",
            c.released,
        );
        counter(
            &mut reg,
            "writes_paced",
            "Client writes that waited for an in-sync region to catch up ([limits] pace_lag_writes)",
            c.writes_paced,
        );
        counter(
            &mut reg,
            "writes_overloaded",
            "Client writes refused (503) because a region stayed too far behind for their whole timeout",
            c.writes_overloaded,
        );
        let held: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (table, n) in &status.held_back {
            let labels = vec![region[0].clone(), ("table".to_owned(), table.clone())];
            held.get_or_create(&labels).set(*n as i64);
        }
        reg.register(
            "held_back_writes",
            "Quarantined writes not applied yet, per table",
            held,
        );
        counter(
            &mut reg,
            "send_queue_full",
            "Frames that found a peer's send queue full (the stream pauses until it drains)",
            status.send_queue_full,
        );
        counter(
            &mut reg,
            "gaps_dropped",
            "Gapped batches dropped while a resync of their origin was unanswered",
            c.gaps_dropped,
        );
        counter(
            &mut reg,
            "persisted_log_entries",
            "Log entries written",
            self.persisted_log_entries.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "snapshot_chunks_sent",
            "Snapshot chunks served to regions being bootstrapped",
            c.snapshot_chunks_sent,
        );
        counter(
            &mut reg,
            "snapshot_chunks_received",
            "Snapshot chunks received and joined into the key states here",
            c.snapshot_chunks_received,
        );
        counter(
            &mut reg,
            "snapshot_keys_received",
            "Key states received in snapshot chunks",
            c.snapshot_keys_received,
        );
        counter(
            &mut reg,
            "snapshot_keys_skipped",
            "Snapshot key states of tables not configured here, not installed",
            c.snapshot_keys_skipped,
        );
        counter(
            &mut reg,
            "snapshots_installed",
            "Snapshots installed here",
            c.snapshots_installed,
        );
        counter(
            &mut reg,
            "snapshots_started",
            "Snapshot transfers started here, new rounds included",
            c.snapshots_started,
        );
        counter(
            &mut reg,
            "tombstones_collected",
            "Deletes dropped from their keys once every region had them (causal stability)",
            c.tombstones_collected,
        );
        counter(
            &mut reg,
            "keys_collected",
            "Keys dropped whole by tombstone collection (nothing left in them)",
            c.keys_collected,
        );
        counter(
            &mut reg,
            "quorum_reads",
            "Reads at read=quorum or read=all answered",
            c.quorum_reads,
        );
        counter(
            &mut reg,
            "quorum_reads_failed",
            "Reads at read=quorum or read=all that too few regions answered in time",
            c.quorum_reads_failed,
        );
        counter(
            &mut reg,
            "read_repairs",
            "Keys a quorum read found this region lacking part of, joined here",
            c.read_repairs,
        );
        counter(
            &mut reg,
            "read_repairs_sent",
            "Read repairs sent to regions whose answer lacked part of the joined state",
            c.read_repairs_sent,
        );
        counter(
            &mut reg,
            "read_repairs_applied",
            "Read repairs from other regions that changed a key here",
            c.read_repairs_applied,
        );
        counter(
            &mut reg,
            "anti_entropy_rounds",
            "Anti-entropy rounds this region started and finished",
            c.anti_entropy_rounds,
        );
        counter(
            &mut reg,
            "anti_entropy_diverged_keys",
            "Keys anti-entropy found diverged although both regions had applied their writes (repaired by join)",
            c.anti_entropy_diverged,
        );
        counter(
            &mut reg,
            "anti_entropy_repaired_keys",
            "Keys whose state here changed by an anti-entropy repair",
            c.anti_entropy_repaired,
        );
        counter(
            &mut reg,
            "anti_entropy_in_flight_keys",
            "Keys anti-entropy saw differ with a write still in flight: not compared",
            c.anti_entropy_in_flight,
        );
        let alarms: Family<Vec<(String, String)>, Counter> = Family::default();
        for (kind, n) in self.alarms() {
            let labels = vec![region[0].clone(), ("kind".to_owned(), kind.to_owned())];
            alarms.get_or_create(&labels).inc_by(n);
        }
        reg.register("alarms", "Operator alarms raised, by kind", alarms);

        let keys: Family<Vec<(String, String)>, Gauge> = Family::default();
        keys.get_or_create(&region.to_vec()).set(status.keys as i64);
        reg.register("keys", "Keys stored", keys);
        let skew: Family<Vec<(String, String)>, Gauge> = Family::default();
        skew.get_or_create(&region.to_vec())
            .set(self.max_skew_ahead_ms.load(Ordering::Relaxed) as i64);
        reg.register(
            "max_clock_skew_ahead_ms",
            "Largest remote HLC lead seen beyond the allowed offset",
            skew,
        );

        let lag: Family<Vec<(String, String)>, Gauge> = Family::default();
        let up: Family<Vec<(String, String)>, Gauge> = Family::default();
        let rtt: Family<Vec<(String, String)>, Gauge> = Family::default();
        for p in &status.peers {
            let labels = vec![region[0].clone(), ("peer".to_owned(), p.region.clone())];
            lag.get_or_create(&labels).set(p.lag_writes as i64);
            up.get_or_create(&labels).set(i64::from(p.connected));
            if let Some(link) = status.links.get(&p.region) {
                let ms = link.rtt.map_or(-1, |d| d.as_millis() as i64);
                rtt.get_or_create(&labels).set(ms);
            }
        }
        reg.register(
            "peer_lag_writes",
            "Writes durable here and not yet acknowledged by the peer",
            lag,
        );
        reg.register(
            "peer_connected",
            "1 when a replicating connection to the peer is up",
            up,
        );
        reg.register(
            "peer_rtt_ms",
            "Round-trip time to the peer (-1 when unknown)",
            rtt,
        );
        let behind: Family<Vec<(String, String)>, Gauge> = Family::default();
        let snapshot: Family<Vec<(String, String)>, Gauge> = Family::default();
        for p in &status.peers {
            let labels = vec![region[0].clone(), ("peer".to_owned(), p.region.clone())];
            behind
                .get_or_create(&labels)
                .set(i64::try_from(p.log_behind_bytes).unwrap_or(i64::MAX));
            snapshot
                .get_or_create(&labels)
                .set(i64::from(p.needs_snapshot));
        }
        reg.register(
            "peer_log_behind_bytes",
            "Bytes of writes the peer lacks that this region's log holds for it; past meridian_log_retention_bytes the log is truncated past it",
            behind,
        );
        reg.register(
            "peer_needs_snapshot",
            "1 when this region's log no longer holds writes the peer lacks (it needs a snapshot)",
            snapshot,
        );
        let gauge = |reg: &mut Registry, name: &str, help: &str, v: u64| {
            let g: Family<Vec<(String, String)>, Gauge> = Family::default();
            g.get_or_create(&region.to_vec())
                .set(i64::try_from(v).unwrap_or(i64::MAX));
            reg.register(name, help, g);
        };
        gauge(
            &mut reg,
            "log_retention_bytes",
            "[limits] log_retention_bytes: a peer further behind than this no longer holds back log truncation",
            status.log_retention_bytes,
        );
        gauge(
            &mut reg,
            "log_bytes",
            "Bytes of the write log's segment files",
            status.log_size.0,
        );
        gauge(
            &mut reg,
            "log_segments",
            "Segment files of the write log",
            status.log_size.1 as u64,
        );
        gauge(
            &mut reg,
            "needs_snapshot",
            "1 when a peer answered that its log no longer holds writes this region lacks",
            u64::from(!status.snapshot_needed.is_empty()),
        );
        let bytes_sent: Family<Vec<(String, String)>, Counter> = Family::default();
        let bytes_recv: Family<Vec<(String, String)>, Counter> = Family::default();
        for (peer, link) in &status.links {
            let labels = vec![region[0].clone(), ("peer".to_owned(), peer.clone())];
            bytes_sent.get_or_create(&labels).inc_by(link.bytes_sent);
            bytes_recv.get_or_create(&labels).inc_by(link.bytes_recv);
        }
        reg.register(
            "peer_sent_bytes",
            "Frame bytes (length prefix and payload) written to the peer, over all connections",
            bytes_sent,
        );
        reg.register(
            "peer_received_bytes",
            "Frame bytes read from the peer, over all connections",
            bytes_recv,
        );
        let offset: Family<Vec<(String, String)>, Gauge> = Family::default();
        for p in &status.peers {
            if let Some(ms) = p.clock_offset_ms {
                let labels = vec![region[0].clone(), ("peer".to_owned(), p.region.clone())];
                offset.get_or_create(&labels).set(ms);
            }
        }
        reg.register(
            "peer_clock_offset_ms",
            "Estimated offset of the peer's clock from ours (positive: ahead)",
            offset,
        );
        let pair_lag: Family<Vec<(String, String)>, Gauge> = Family::default();
        let pair_lag_ms: Family<Vec<(String, String)>, Gauge> = Family::default();
        for m in &status.matrix {
            let labels = vec![
                region[0].clone(),
                ("origin".to_owned(), m.origin.clone()),
                ("destination".to_owned(), m.destination.clone()),
            ];
            pair_lag.get_or_create(&labels).set(m.lag_writes as i64);
            pair_lag_ms.get_or_create(&labels).set(m.lag_ms as i64);
        }
        reg.register(
            "lag_matrix_writes",
            "Writes of the origin the destination lacks, per pair, as this region knows it",
            pair_lag,
        );
        reg.register(
            "lag_matrix_ms",
            "Age of the oldest write the destination lacks, on the origin's clock",
            pair_lag_ms,
        );
        let skew_alarm: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (r, ms) in &status.skew_alarms {
            let labels = vec![region[0].clone(), ("peer".to_owned(), r.clone())];
            skew_alarm.get_or_create(&labels).set(*ms as i64);
        }
        reg.register(
            "clock_skew_alarm_ms",
            "Largest lead beyond max_clock_offset_ms seen from a region (alarm)",
            skew_alarm,
        );

        let b = status.bootstrap.as_ref();
        gauge(
            &mut reg,
            "bootstrapping",
            "1 while this region is being bootstrapped from a snapshot (it serves no reads and takes no writes)",
            u64::from(b.is_some()),
        );
        gauge(
            &mut reg,
            "bootstrap_keys_received",
            "Key states received by the snapshot transfer under way (0 when none)",
            b.map_or(0, |b| b.keys),
        );
        gauge(
            &mut reg,
            "bootstrap_keys_total",
            "Keys in the serving region's checkpoint, as its last chunk said (0 when no transfer is under way)",
            b.map_or(0, |b| b.total_keys),
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}
