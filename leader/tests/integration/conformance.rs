//! One conformance suite for the two stores of a region's data: production's
//! (`leader::storage::Store`: the segmented log and redb checkpoints) and the test kit's model
//! (`leader_core::testkit::Disk`, which the simulator and the machine tests run on). Each
//! behaviour is written once, generic over [`Storage`], and run against both; the scripted
//! histories are made by the real state machine (two regions on the kit's network), so the
//! batches are the ones production persists. Where the two disagree, production is the
//! reference and the model is fixed.

use std::collections::BTreeMap;

use conflict::{Dot, Registry, ReplicaId, Seq};
use leader::storage::{CHECKPOINT_ENTRIES, CHECKPOINT_KEYS, Store, StoreLimits};
use leader_core::msg::SlotKey;
use leader_core::testkit::{self, Cluster, Disk, DiskLimits, read_log};
use leader_core::{
    Bootstrap, BootstrapPhase, Event, LogEntry, Options, PersistBatch, Recovered, Replica,
    SnapshotPiece,
};

/// What the suite asks of a store: commit batches, serve log reads, and after a crash recover
/// what a start recovers.
trait Storage {
    /// Empty storage of region `a` with these bounds, and the replica id it gives `a`.
    fn create(bounds: Bounds) -> (Self, ReplicaId)
    where
        Self: Sized;
    /// Commits one batch atomically and durably.
    fn commit(&mut self, batch: &PersistBatch);
    /// `origin`'s log from `from` to `to`, by the byte budget rule.
    fn read_log(&self, origin: ReplicaId, from: Seq, to: Seq, max_bytes: usize) -> Vec<LogEntry>;
    /// The process dies (what it kept in memory is gone) and the storage is opened again:
    /// what the open recovers, before any replay.
    fn reopen(&mut self) -> Recovered;
    /// The log entries after the checkpoint, in chunks; returns how many.
    fn replay(&self, apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64;
    /// The logged writes `dots`, in chunks; returns how many.
    fn read_writes(&self, dots: &[Dot], apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64;
    /// The checkpoint's key states after `after`, by the snapshot budget rule.
    fn read_snapshot(&self, after: Option<&SlotKey>, max_bytes: usize) -> SnapshotPiece;
}

/// The bounds both stores take.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    checkpoint_bytes: usize,
    replay_chunk_bytes: usize,
}

/// Production's store in a temporary data directory.
struct Production {
    dir: tempfile::TempDir,
    limits: StoreLimits,
    store: Option<Store>,
}

impl Production {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open between reopens")
    }
}

impl Storage for Production {
    fn create(bounds: Bounds) -> (Self, ReplicaId) {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            checkpoint_bytes: bounds.checkpoint_bytes,
            replay_chunk_bytes: bounds.replay_chunk_bytes,
            // Small segments, so that a history spans several files.
            segment_bytes: 4 * 1024,
            ..StoreLimits::default()
        };
        let opened = Store::open_with(dir.path(), "conformance", "a", limits).unwrap();
        let replica = opened.replica;
        let store = Some(opened.store);
        (Production { dir, limits, store }, replica)
    }

    fn commit(&mut self, batch: &PersistBatch) {
        self.store().persist(batch.clone()).unwrap();
    }

    fn read_log(&self, origin: ReplicaId, from: Seq, to: Seq, max_bytes: usize) -> Vec<LogEntry> {
        self.store().read_log(origin, from, to, max_bytes).unwrap()
    }

    fn reopen(&mut self) -> Recovered {
        drop(self.store.take());
        let opened = Store::open_with(self.dir.path(), "conformance", "a", self.limits).unwrap();
        assert!(!opened.created, "the directory is found again");
        self.store = Some(opened.store);
        opened.recovered
    }

    fn replay(&self, apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64 {
        self.store().replay(apply).unwrap()
    }

    fn read_writes(&self, dots: &[Dot], apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64 {
        self.store().read_writes(dots, apply).unwrap()
    }

    fn read_snapshot(&self, after: Option<&SlotKey>, max_bytes: usize) -> SnapshotPiece {
        self.store().read_snapshot(after, max_bytes).unwrap()
    }
}

/// The test kit's model of it.
struct Model {
    disk: Disk,
    replica: ReplicaId,
}

impl Storage for Model {
    fn create(bounds: Bounds) -> (Self, ReplicaId) {
        let limits = DiskLimits {
            checkpoint_bytes: bounds.checkpoint_bytes,
            replay_chunk_bytes: bounds.replay_chunk_bytes,
            ..DiskLimits::default()
        };
        let replica = ReplicaId::from_u128(0xA);
        let disk = Disk::with_limits(limits);
        (Model { disk, replica }, replica)
    }

    fn commit(&mut self, batch: &PersistBatch) {
        self.disk.commit(batch, self.replica).unwrap();
    }

    fn read_log(&self, origin: ReplicaId, from: Seq, to: Seq, max_bytes: usize) -> Vec<LogEntry> {
        self.disk.read_log(origin, from, to, max_bytes)
    }

    fn reopen(&mut self) -> Recovered {
        self.disk.crash();
        self.disk.recovered()
    }

    fn replay(&self, apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64 {
        self.disk.replay(apply)
    }

    fn read_writes(&self, dots: &[Dot], apply: &mut dyn FnMut(Vec<LogEntry>)) -> u64 {
        self.disk.read_writes(dots, apply)
    }

    fn read_snapshot(&self, after: Option<&SlotKey>, max_bytes: usize) -> SnapshotPiece {
        self.disk.read_snapshot(after, max_bytes)
    }
}

/// Runs each behaviour against both stores.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod production {
            $(#[test]
            fn $behaviour() {
                super::$behaviour::<super::Production>();
            })*
        }
        mod model {
            $(#[test]
            fn $behaviour() {
                super::$behaviour::<super::Model>();
            })*
        }
    };
}

conformance!(
    a_reopen_recovers_every_commit,
    a_checkpoint_writes_the_key_states,
    kept_back_states_are_lost_at_a_crash_and_replayed,
    checkpoints_fall_due_by_bytes,
    log_reads_follow_the_budget_rule,
    a_reopened_store_takes_more_commits,
    snapshot_reads_serve_the_checkpoint_after_a_cursor,
    a_checkpoint_records_the_bootstrap_progress,
);

fn options(region: &str, replica: ReplicaId) -> Options {
    let peer = if region == "a" { "b" } else { "a" };
    Options {
        // Wide enough that the scripts below are never paced.
        peer_window_bytes: 64 * 1024,
        max_siblings: 8,
        log_tail_bytes: 4 * 1024,
        ..testkit::options(region, replica, &[peer])
    }
}

/// Region `a` on the storage under test and region `b` on the kit's disk, connected by the
/// kit's network: `a`'s persists go to the storage under test.
struct Rig<S> {
    cluster: Cluster,
    storage: S,
    /// Every entry committed, by (origin, seq): the reference for log reads.
    log: BTreeMap<(ReplicaId, Seq), LogEntry>,
    /// The key table as every commit so far leaves it (checkpointed or kept back).
    keys: BTreeMap<(String, Vec<u8>), conflict::KeyState>,
    /// Mark every `n`th batch of `a` as a checkpoint (0: never).
    checkpoint_every: u64,
    /// A snapshot transfer's progress that every checkpoint batch carries (`None`: none).
    progress: Option<Bootstrap>,
    batches: u64,
    writes: u64,
}

impl<S: Storage> Rig<S> {
    fn new(bounds: Bounds) -> Rig<S> {
        let (storage, a) = S::create(bounds);
        let b = ReplicaId::from_u128(0xB);
        let mut cluster = Cluster::new(
            [options("a", a), options("b", b)],
            &Registry::with_builtins(),
        );
        cluster.auto_sync = false;
        cluster.mesh();
        let mut rig = Rig {
            cluster,
            storage,
            log: BTreeMap::new(),
            keys: BTreeMap::new(),
            checkpoint_every: 0,
            progress: None,
            batches: 0,
            writes: 0,
        };
        rig.settle();
        rig
    }

    fn a(&self) -> &Replica {
        &self.cluster.nodes["a"].replica
    }

    /// Completes every persist (`a`'s on the storage under test) and delivers every frame,
    /// until nothing moves.
    fn settle(&mut self) {
        loop {
            self.cluster.deliver();
            self.cluster.sync("b");
            let Some(mut batch) = self.cluster.node("a").persisting.pop_front() else {
                if self.cluster.wire.is_empty() && self.cluster.nodes["b"].persisting.is_empty() {
                    return;
                }
                continue;
            };
            self.batches += 1;
            if self.checkpoint_every > 0 && self.batches.is_multiple_of(self.checkpoint_every) {
                batch.checkpoint = true;
            }
            if batch.checkpoint {
                batch.bootstrap = self.progress.clone().map(Box::new);
            }
            self.storage.commit(&batch);
            for e in &batch.log {
                self.log.insert((e.write.dot.replica, e.seq()), e.clone());
            }
            for (table, key, state) in &batch.keys {
                self.keys
                    .insert((table.clone(), key.clone()), state.clone());
            }
            self.cluster.handle("a", Event::Persisted { id: batch.id });
        }
    }

    /// `n` writes at each region, over a few keys of both tables, settled after every round
    /// so that batches mix own and replicated entries. Each region writes keys of its own:
    /// no conflict, so no outcome depends on the replica ids (production draws them).
    fn write(&mut self, n: u64) {
        for _ in 0..n {
            self.writes += 1;
            let i = self.writes;
            for region in ["a", "b"] {
                let table = if i.is_multiple_of(3) { "mv" } else { "default" };
                let key = format!("{region}{}", i % 7);
                let value = format!("{region}-{i}-{}", "x".repeat((i % 5 * 40) as usize));
                self.cluster.write(region, table, &key, Some(&value));
            }
            self.settle();
        }
    }

    /// A crash of `a` and a start as `leader::node` does it: the machine from what the open
    /// recovers, the log after the checkpoint replayed, then the held-back writes released.
    /// Returns what the open recovered and the replay's chunks.
    fn restart(&mut self) -> (Recovered, Vec<Vec<LogEntry>>) {
        let recovered = self.storage.reopen();
        let opts = self.a().options().clone();
        let mut replica =
            Replica::new(opts, &Registry::with_builtins(), recovered.clone()).unwrap();
        let mut chunks = Vec::new();
        let replayed = self.storage.replay(&mut |chunk| {
            chunks.push(chunk.clone());
            replica.replay(chunk);
        });
        assert_eq!(replayed, chunks.iter().map(Vec::len).sum::<usize>() as u64);
        let release = replica.to_release();
        self.storage
            .read_writes(&release, &mut |chunk| replica.replay(chunk));
        let node = self.cluster.node("a");
        node.persisting.clear();
        node.replica = replica;
        // The new process connects again.
        self.cluster.cut("a", "b");
        self.cluster.connect("a", "b");
        self.settle();
        (recovered, chunks)
    }
}

/// A restart recovers every commit: the applied vector, own sequence, HLC high-water mark,
/// replica names and peers' acknowledgements as last committed, and, after the replay, the
/// same key states as before the crash.
fn a_reopen_recovers_every_commit<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: 1024,
    });
    rig.write(30);
    let before = rig.a().digest();
    let applied = rig.a().applied().clone();
    let hlc = rig.a().hlc();
    let (recovered, _) = rig.restart();
    assert_eq!(recovered.applied, applied);
    assert_eq!(recovered.own_seq, applied.get(rig.cluster.nodes["a"].id));
    assert!(
        recovered.hlc_high <= hlc,
        "{:?} after {hlc:?}",
        recovered.hlc_high
    );
    assert_eq!(
        recovered
            .replicas
            .get(&rig.cluster.nodes["b"].id)
            .map(String::as_str),
        Some("b"),
        "the peer's replica is recorded with its region"
    );
    assert!(recovered.peer_acked.contains_key("b"));
    assert_eq!(rig.a().digest(), before);
    // A second reopen with nothing committed between recovers the same.
    let (again, _) = rig.restart();
    assert_eq!(again.applied, recovered.applied);
    assert_eq!(rig.a().digest(), before);
}

/// A batch marked as a checkpoint writes every key state: the next open recovers them all and
/// replays nothing.
fn a_checkpoint_writes_the_key_states<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: 1024,
    });
    rig.checkpoint_every = 1;
    rig.write(10);
    let (recovered, chunks) = rig.restart();
    assert_eq!(
        recovered.keys, rig.keys,
        "the key table is every state committed"
    );
    assert!(
        chunks.is_empty(),
        "nothing after the checkpoint: {chunks:?}"
    );
}

/// Between checkpoints key states are kept back in memory: a crash loses them, the open
/// recovers the states of the last checkpoint, and the replay of the log after it, in chunks
/// within the bound (the same chunks as production's), rebuilds exactly what the machine held.
fn kept_back_states_are_lost_at_a_crash_and_replayed<S: Storage>() {
    let chunk_bytes = 600;
    fn script<T: Storage>(rig: &mut Rig<T>) {
        rig.checkpoint_every = 4;
        rig.write(9);
        rig.checkpoint_every = 0;
    }
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: chunk_bytes,
    });
    script(&mut rig);
    let at_checkpoint = rig.keys.clone();
    let batches = rig.batches;
    rig.write(9);
    assert!(
        rig.batches > batches,
        "batches were committed after the checkpoint"
    );
    let before = rig.a().digest();
    let (recovered, chunks) = rig.restart();
    let mut reference = Rig::<Production>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: chunk_bytes,
    });
    script(&mut reference);
    reference.write(9);
    let (_, reference_chunks) = reference.restart();
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        reference_chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        "the replay's chunks are production's"
    );
    assert_ne!(recovered.keys, rig.keys, "the latest states were kept back");
    assert!(
        recovered
            .keys
            .iter()
            .all(|(k, _)| at_checkpoint.contains_key(k)),
        "the open recovers checkpointed states only"
    );
    assert!(chunks.len() > 1, "the replay came in several chunks");
    for chunk in &chunks {
        let bytes: usize = chunk.iter().map(LogEntry::wire_size).sum();
        assert!(
            chunk.len() == 1 || bytes <= chunk_bytes,
            "a chunk of {} entries takes {bytes} bytes, over {chunk_bytes}",
            chunk.len()
        );
    }
    assert_eq!(rig.a().digest(), before, "the replay rebuilt the memory");
}

/// With a small `checkpoint_bytes`, checkpoints fall due by the size of the log written since
/// the last one: the same commits leave the same checkpointed key table in both stores (what
/// the open recovers is compared with what production's rule implies).
fn checkpoints_fall_due_by_bytes<S: Storage>() {
    let bounds = Bounds {
        checkpoint_bytes: 2_000,
        replay_chunk_bytes: 1024,
    };
    let mut rig = Rig::<S>::new(bounds);
    rig.write(25);
    let before = rig.a().digest();
    let (recovered, chunks) = rig.restart();
    assert!(!recovered.keys.is_empty(), "a checkpoint fell due");
    let replayed: usize = chunks.iter().map(Vec::len).sum();
    assert!(
        replayed < rig.log.len(),
        "the replay starts at the last checkpoint"
    );
    assert_eq!(rig.a().digest(), before);
    // The reference: the same script on the other store recovers the same checkpoint.
    let mut other = Rig::<Production>::new(bounds);
    other.write(25);
    let (reference, _) = other.restart();
    let strip = |r: &Recovered| -> Vec<(String, Vec<u8>)> { r.keys.keys().cloned().collect() };
    assert_eq!(strip(&recovered), strip(&reference));
}

/// Log reads take an entry before they look at the budget and stop once it is reached
/// (`testkit::read_log`, production's rule): at least one entry when the range holds any,
/// past the budget by at most the last one, for every origin and budget.
fn log_reads_follow_the_budget_rule<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: 1024,
    });
    rig.write(20);
    let origins = [rig.cluster.nodes["a"].id, rig.cluster.nodes["b"].id];
    for origin in origins {
        let last = rig.a().applied().get(origin);
        assert!(last.0 >= 20, "{origin} wrote");
        for budget in [0, 1, 100, 500, 2_000, usize::MAX] {
            for (from, to) in [
                (1, last.0),
                (5, 9),
                (last.0, last.0),
                (last.0 + 1, last.0 + 5),
            ] {
                let (from, to) = (Seq(from), Seq(to));
                let got = rig.storage.read_log(origin, from, to, budget);
                let want = read_log(&rig.log, origin, from, to, budget);
                assert_eq!(got, want, "{origin} {from}..={to} within {budget} bytes");
                let bytes: usize = got.iter().map(LogEntry::wire_size).sum();
                let last_size = got.last().map_or(0, LogEntry::wire_size);
                assert!(got.is_empty() || bytes - last_size < budget.max(1));
            }
        }
    }
}

/// Commits after a restart continue the log where it ended; the next restart recovers both
/// parts.
fn a_reopened_store_takes_more_commits<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 3_000,
        replay_chunk_bytes: 700,
    });
    rig.write(8);
    rig.restart();
    rig.write(8);
    let before = rig.a().digest();
    let applied = rig.a().applied().clone();
    let (recovered, _) = rig.restart();
    assert_eq!(recovered.applied, applied);
    assert_eq!(rig.a().digest(), before);
    let a = rig.cluster.nodes["a"].id;
    // Both regions have every write durably, so the log may have been truncated (also by the
    // checkpoint right after the reopen, past what the reopen recovered as its start): what it
    // serves is a run without a gap that ends at the applied vector.
    let mut from = recovered.log_start.get(a).next();
    let mut all = Vec::new();
    while from <= applied.get(a) && all.is_empty() {
        all = rig.storage.read_log(a, from, applied.get(a), usize::MAX);
        from = from.next();
    }
    let seqs: Vec<u64> = all.iter().map(|e| e.seq().0).collect();
    let first = seqs.first().copied().unwrap_or(applied.get(a).0 + 1);
    assert_eq!(
        seqs,
        (first..=applied.get(a).0).collect::<Vec<_>>(),
        "one log, no gap"
    );
}

/// `keys` read by the snapshot budget rule: the states strictly after `after`, each adding
/// its table, key and estimated bytes, until the sum reaches `max_bytes` (so at least one).
fn snapshot_rule(
    keys: &BTreeMap<(String, Vec<u8>), conflict::KeyState>,
    after: Option<&SlotKey>,
    max_bytes: usize,
) -> (Vec<(String, Vec<u8>, conflict::KeyState)>, bool) {
    let mut out = Vec::new();
    let mut used = 0;
    let mut rest = keys.iter().filter(|(k, _)| after.is_none_or(|a| *k > a));
    for ((t, k), s) in rest.by_ref() {
        used += t.len() + k.len() + s.estimated_bytes();
        out.push((t.clone(), k.clone(), s.clone()));
        if used >= max_bytes {
            break;
        }
    }
    (out, rest.next().is_none())
}

/// A snapshot read serves the last checkpoint: exactly its key states after the cursor, by
/// the budget rule, with the applied vector they reflect, `done` on the last piece only and
/// the checkpoint's key count. States kept back since are not served until a checkpoint
/// writes them.
fn snapshot_reads_serve_the_checkpoint_after_a_cursor<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: 1024,
    });
    let empty = rig.storage.read_snapshot(None, 1000);
    assert_eq!(
        (empty.states.len(), empty.done, empty.total_keys),
        (0, true, 0),
        "an empty store serves an empty, complete snapshot"
    );
    rig.checkpoint_every = 1;
    rig.write(12);
    let checkpoint = rig.keys.clone();
    let applied = rig.a().applied().clone();
    // Kept back: new states of the same keys and new keys, none of them served yet.
    rig.checkpoint_every = 0;
    for _ in 0..3 {
        for key in ["a1", "a2", "new"] {
            rig.cluster.write("a", "default", key, Some("kept back"));
        }
        rig.settle();
    }
    assert_ne!(rig.keys, checkpoint, "states were kept back");
    for budget in [0, 1, 150, 700, usize::MAX] {
        let mut after: Option<SlotKey> = None;
        let mut served = BTreeMap::new();
        loop {
            let piece = rig.storage.read_snapshot(after.as_ref(), budget);
            let (want, done) = snapshot_rule(&checkpoint, after.as_ref(), budget);
            assert_eq!(piece.states, want, "after {after:?} within {budget} bytes");
            assert_eq!(piece.done, done, "after {after:?} within {budget} bytes");
            assert_eq!(piece.applied, applied, "the vector the checkpoint reflects");
            assert_eq!(piece.total_keys, checkpoint.len() as u64);
            assert!(
                !piece.states.is_empty(),
                "at least one state while any follows"
            );
            for (t, k, state) in piece.states {
                after = Some((t.clone(), k.clone()));
                served.insert((t, k), state);
            }
            if piece.done {
                break;
            }
        }
        assert_eq!(
            served, checkpoint,
            "every checkpointed state, once, in order"
        );
    }
    let last = checkpoint.keys().last().cloned();
    let past = rig.storage.read_snapshot(last.as_ref(), 1);
    assert!(
        past.states.is_empty() && past.done,
        "nothing after the last key"
    );
    // A checkpoint writes the kept-back states: now they are served.
    rig.checkpoint_every = 1;
    rig.write(1);
    let piece = rig.storage.read_snapshot(None, usize::MAX);
    let served: BTreeMap<_, _> = piece
        .states
        .into_iter()
        .map(|(t, k, s)| ((t, k), s))
        .collect();
    assert_eq!(served, rig.keys);
    assert_eq!(piece.applied, *rig.a().applied());
}

/// A snapshot transfer's progress for the tests: `keys` received from b.
fn progress(keys: u64) -> Bootstrap {
    Bootstrap {
        phase: BootstrapPhase::Fetching,
        after: Some(("default".into(), format!("k{keys}").into_bytes())),
        low: None,
        high: conflict::VersionVector::new(),
        keys,
        bytes: keys * 100,
        chunks: keys / 10,
        total_keys: 1000,
        source: Some("b".into()),
        reason: "b no longer holds the writes of a".into(),
        rounds: 0,
        refused_by: Default::default(),
        partial: false,
        collected: conflict::VersionVector::new(),
    }
}

/// The progress a checkpoint records is what the next open recovers; a later checkpoint with
/// none leaves it, one with another replaces it. A fresh store recovers none.
fn a_checkpoint_records_the_bootstrap_progress<S: Storage>() {
    let mut rig = Rig::<S>::new(Bounds {
        checkpoint_bytes: 64 * 1024 * 1024,
        replay_chunk_bytes: 1024,
    });
    assert_eq!(rig.storage.reopen().bootstrap, None);
    rig.checkpoint_every = 1;
    rig.progress = Some(progress(10));
    rig.write(2);
    assert_eq!(rig.storage.reopen().bootstrap, Some(progress(10)));
    rig.progress = Some(progress(20));
    rig.write(2);
    assert_eq!(rig.storage.reopen().bootstrap, Some(progress(20)));
    rig.progress = None;
    rig.write(2);
    assert_eq!(
        rig.storage.reopen().bootstrap,
        Some(progress(20)),
        "a checkpoint without progress leaves the recorded one"
    );
}

/// The model's default bounds are production's.
#[test]
fn the_models_default_bounds_are_productions() {
    let model = DiskLimits::default();
    let production = StoreLimits::default();
    assert_eq!(model.checkpoint_keys, CHECKPOINT_KEYS);
    assert_eq!(model.checkpoint_entries, CHECKPOINT_ENTRIES);
    assert_eq!(model.checkpoint_bytes, production.checkpoint_bytes);
    assert_eq!(model.replay_chunk_bytes, production.replay_chunk_bytes);
}
