//! The state machine's own named bounds: every queue, retry and rate limit of the core, each
//! with its policy. Bounds on keys, values, siblings and names live in [`conflict::limits`];
//! the tunables an operator sets are in [`crate::Options`] (validated at configuration load
//! against the bounds here and there).

/// Bound on client writes waiting to be paced ([`crate::Options::pace_lag_writes`]): one more
/// is refused at once with [`crate::WriteError::Overloaded`], so a flood of clients cannot grow
/// the queue.
pub const MAX_PACED_WRITES: usize = 16_384;

/// Bound on client writes this region accepted (each took a dot) and has not answered yet:
/// staged for the next persistence step, in the step in flight, or durable here and waiting
/// for other regions to have them durably (`one`, `quorum`, `all`) until their timeout. One
/// more is refused at once with [`crate::WriteError::Backlogged`] (`503 overloaded`) before
/// it takes a dot, so neither a slow disk nor a cut link with long timeouts can grow memory
/// without bound. Replicated writes need no such bound: each peer's are bounded by its send
/// window ([`crate::Options::peer_window_bytes`]), since it sends no more until we ack, and
/// we ack only after persisting.
pub const MAX_UNANSWERED_WRITES: usize = 65_536;

/// `WAIT`s ([`crate::Event::ClientWait`]) a region holds at once. They have a bound of their
/// own, apart from the writes, so that waits cannot keep writes out; one more is answered at
/// once with the regions that have the write so far. A client that goes away cancels its wait
/// ([`crate::Event::CancelWait`]).
pub const MAX_CLIENT_WAITS: usize = 16_384;

/// Reads above level `one` ([`crate::Event::ClientRead`]) waiting for other regions' answers
/// at once; one more is refused at once ([`crate::ReadError::Overloaded`]). Each holds a key
/// and the answers so far, a few KB at most.
pub const MAX_QUORUM_READS: usize = 16_384;

/// First retry delay after a failed log read ([`crate::Alarm::LogReadFailed`]).
pub const LOG_READ_RETRY_MIN_MS: u64 = 100;

/// Largest retry delay after repeated failed log reads.
pub const LOG_READ_RETRY_MAX_MS: u64 = 5_000;

/// Minimum interval between two [`crate::Alarm::CausalityViolation`]s (or two reused-dot
/// [`crate::Alarm::SplitBrain`]s) about one origin region.
pub const CAUSALITY_ALARM_INTERVAL_MS: u64 = 10_000;

/// Minimum interval between two clock-skew alarms about one region.
pub const SKEW_ALARM_INTERVAL_MS: u64 = 10_000;

/// Bound on the commit times of this region's own writes kept for lag in milliseconds: 16
/// bytes each, so 1 MiB. Past it the oldest commit times are dropped and a peer lagging
/// further back shows the oldest time kept (an underestimate).
pub const OWN_COMMITS_MAX: usize = 65_536;

/// How long a receiver waits for the answer to a `Resync` before it asks again (the first
/// may have been lost with a full send queue). Gapped batches that arrive meanwhile are the
/// rest of a run the sender sent before it saw the request: asking again for each of them
/// would rewind the sender once per batch in flight, each rewind resending the whole run.
pub const RESYNC_REPEAT_MS: u64 = 1_000;

/// Resolution of the per-origin index of log bytes that measures how far a peer is behind in
/// bytes ([`crate::Options::log_retention_bytes`]): one point per this many bytes of an
/// origin's log, or per 1/1024 of the retention bound if that is finer. A peer's figure is
/// over-estimated by less than one step.
pub const LOG_BYTES_STEP_MAX: u64 = 64 * 1024;

/// Bound on the points of that index per origin: past it every other point is dropped (the
/// step doubles). Reached only while something pins an origin's log far past the retention
/// bound (writes held back in quarantine).
pub const LOG_BYTES_POINTS_MAX: usize = 4096;

/// A snapshot request unanswered this long is asked again (of another region if the source
/// is gone): the answer may have been lost with its connection.
pub const SNAPSHOT_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// A region that answered that it cannot serve a snapshot (it is bootstrapping itself, or
/// its storage failed) is not asked again for this long.
pub const SNAPSHOT_UNAVAILABLE_BACKOFF_MS: u64 = 2_000;

/// Tombstone collection looks at its candidates at most this often (docs/design.md,
/// "Tombstone collection"): stability only moves with acks and heartbeats anyway.
pub const COLLECT_INTERVAL_MS: u64 = 1_000;

/// Candidate keys one collection pass looks at, so a pass after deleting millions of keys
/// does not stall the region: the rest wait for the next passes.
pub const COLLECT_KEYS_PER_PASS: usize = 65_536;

/// Most tree nodes one anti-entropy request names (and one answer holds, 16 bytes each): a
/// round descends through at most this many differing nodes per level; the rest wait for the
/// next round.
pub const MAX_AAE_NODES: usize = 4096;

/// Most leaves one anti-entropy states request names; the rest wait for the next round.
pub const MAX_AAE_LEAVES: usize = 256;

/// How long (ms) an anti-entropy round waits for an answer before it is given up.
pub const AAE_ROUND_TIMEOUT_MS: u64 = 30_000;

/// Most diverged keys one [`crate::Alarm::Divergence`] names (the count is exact).
pub const AAE_ALARM_KEYS: usize = 16;
