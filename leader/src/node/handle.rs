//! [`NodeHandle`]: the clonable way into a running node, and the requests and answers it
//! carries to and from the driver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use conflict::{KeyState, Resolver, Value, VersionVector};
use leader_core::{ConflictRecord, Durability, ReadError, ReadLevel, WriteError, WriteReceipt};
use tokio::sync::{mpsc, oneshot};

use super::{NodeError, Status};
use crate::metrics::Metrics;

/// A request to the driver from the API or an embedding program.
#[derive(Debug)]
pub(crate) enum Command {
    Write {
        table: String,
        key: Vec<u8>,
        change: Change,
        opts: WriteOptions,
        reply: oneshot::Sender<Result<Written, RequestError>>,
    },
    Wait {
        seq: conflict::Seq,
        regions: usize,
        timeout: Duration,
        reply: oneshot::Sender<Vec<String>>,
    },
    Read {
        table: String,
        key: Vec<u8>,
        opts: ReadOptions,
        reply: oneshot::Sender<Result<(ReadResult, VersionVector), RequestError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Conflicts {
        reply: oneshot::Sender<Result<Vec<ConflictRecord>, Bootstrapping>>,
    },
    Digest {
        reply: oneshot::Sender<Result<[u8; 32], Bootstrapping>>,
    },
    Scan {
        scan: Scan,
        reply: oneshot::Sender<Result<Option<Listing>, Bootstrapping>>,
    },
    Repair {
        reply: oneshot::Sender<Repair>,
    },
}

/// What an anti-entropy run started by [`NodeHandle::repair`] found, once every round it
/// started is over (finished, or given up after 30 s without an answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// The peers a round started with (the connected ones; none while this region is
    /// being bootstrapped).
    pub peers: Vec<String>,
    /// Rounds that finished (the others were given up: the peer did not answer).
    pub rounds: u64,
    /// Keys found diverged meanwhile, here or by the peers' rounds.
    pub diverged: u64,
    /// Keys whose state here changed by the joins.
    pub repaired: u64,
    /// Keys that differed with a write in flight (not compared).
    pub in_flight: u64,
    /// The last diverged keys of each of those peers, `table/key`.
    pub keys: Vec<String>,
}

/// What a write does to its key.
#[derive(Debug)]
pub(crate) enum Change {
    /// A value or tombstone, with the options' context.
    Put(Value),
    /// An addition to a counter (the options' context is not used: the machine writes with
    /// the key's whole context).
    Add(i64),
}

/// Which keys of a table to list ([`NodeHandle::scan`]).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The table.
    pub table: String,
    /// Only keys that start with these bytes.
    pub prefix: Vec<u8>,
    /// Only keys after this one (the last key of the previous page).
    pub after: Option<Vec<u8>>,
    /// At most this many keys (at least 1 is asked for).
    pub limit: usize,
}

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Keys that read as present, in key order.
    pub keys: Vec<Vec<u8>>,
    /// Whether more keys may follow: ask again with `after` = the last key.
    pub more: bool,
}

/// How a write should be made. `Default` is a blind write at the table's durability.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The causal context the client read; `None` for a blind write.
    pub context: Option<VersionVector>,
    /// Durability to wait for; `None` uses the table's default from regions.toml.
    pub durability: Option<Durability>,
    /// How long to wait for that durability; `None` uses `timeouts.write_timeout_ms`.
    pub timeout: Option<Duration>,
    /// A session token: the write waits (up to `timeouts.session_wait_ms`) until this region
    /// has applied everything it covers, so it is ordered after what the session saw.
    pub session: Option<VersionVector>,
}

/// How a read should be made. `Default` is a local read (`read=one`) with no session.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// A session token: the read waits (up to `timeouts.session_wait_ms`) until this region
    /// has durably applied everything it covers.
    pub session: Option<VersionVector>,
    /// How many regions to consult; `None` uses the table's `read` default from
    /// regions.toml (`one` unless set).
    pub level: Option<ReadLevel>,
    /// How long a read above `one` waits for other regions' answers; `None` uses
    /// `timeouts.write_timeout_ms`.
    pub timeout: Option<Duration>,
}

/// A write that is durable here (and maybe elsewhere: see the receipt).
#[derive(Debug, Clone)]
pub struct Written {
    /// What the state machine reported.
    pub receipt: WriteReceipt,
    /// The session token to pass on: covers the caller's session and this write.
    pub session: VersionVector,
}

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The write was refused; nothing was written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// This region had not caught up with the session token in time.
    #[error(transparent)]
    Behind(#[from] Behind),
    /// This region is being bootstrapped from a snapshot and serves no reads (a refused
    /// write comes back as [`WriteError::Bootstrapping`]).
    #[error(transparent)]
    Bootstrapping(#[from] Bootstrapping),
    /// A read above `one` could not be answered: too few regions answered in time, or too
    /// many such reads are waiting. Never downgraded to a local read.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// "This region is being bootstrapped from a snapshot": it serves no reads until it has the
/// snapshot and has caught up with what it reflects (a read now could miss acknowledged
/// writes). Clears on its own; the client retries later or reads at another region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "region {region} is being bootstrapped from a snapshot ({progress}); it serves reads once that is done: retry later, or read at another region"
)]
pub struct Bootstrapping {
    /// This region.
    pub region: String,
    /// Where the transfer stands ([`leader_core::Bootstrap::progress`]).
    pub progress: String,
}

/// "This region is behind your session": what it lacks, so the client can retry or go
/// elsewhere.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "region {region} is behind your session: {}; waited {waited_ms} ms. Retry, or use a region that has caught up",
    describe_missing(.missing)
)]
pub struct Behind {
    /// This region.
    pub region: String,
    /// Per origin region: (region, applied here, needed by the session).
    pub missing: Vec<(String, u64, u64)>,
    /// How long the request waited.
    pub waited_ms: u64,
    /// The session token as given.
    pub session: VersionVector,
}

fn describe_missing(missing: &[(String, u64, u64)]) -> String {
    missing
        .iter()
        .map(|(r, have, need)| format!("{r} applied up to {have}, session needs {need}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The state of one key as a read sees it.
#[derive(Clone)]
pub enum ReadResult {
    /// The table is not configured.
    UnknownTable,
    /// The key's state (maybe empty) and its table's resolver.
    Found {
        /// The state (default when the key was never written).
        state: KeyState,
        /// The table's resolver.
        resolver: Arc<dyn Resolver>,
        /// Region names of the replicas that wrote the siblings.
        regions: BTreeMap<conflict::ReplicaId, String>,
        /// The regions whose state of the key the read joined: this one first (just this
        /// one at `read=one`).
        answered: Vec<String>,
    },
}

impl std::fmt::Debug for ReadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadResult::UnknownTable => f.write_str("UnknownTable"),
            ReadResult::Found {
                state, resolver, ..
            } => f
                .debug_struct("Found")
                .field("state", state)
                .field("resolver", &resolver.name())
                .finish_non_exhaustive(),
        }
    }
}

/// A cheap, clonable handle for talking to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) region: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    /// The impairment layer and the peers' addresses, when the node runs over it.
    pub(crate) links: Option<Arc<LinkControl>>,
    /// Each configured table's resolver.
    pub(super) tables: Arc<BTreeMap<String, Arc<dyn Resolver>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("region", &self.region)
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The answer to a request handed over with [`NodeHandle::submit_write`].
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<T>);

impl<T> Pending<T> {
    /// Waits for the answer.
    pub async fn wait(self) -> Result<T, NodeError> {
        self.0.await.map_err(|_| NodeError::Stopped)
    }
}

/// Runtime control of this region's outgoing links (simulations and fault tests).
#[derive(Debug)]
pub(crate) struct LinkControl {
    pub(crate) impairment: transport::impair::ImpairmentHandle,
    pub(crate) peers: BTreeMap<String, SocketAddr>,
}

impl NodeHandle {
    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The resolver of `table` here, or `None` when the table is not configured.
    pub fn resolver(&self, table: &str) -> Option<&Arc<dyn Resolver>> {
        self.tables.get(table)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        self.submit(make).await?.wait().await
    }

    /// Hands a request to the region's driver without waiting for its answer: requests are
    /// taken in the order they are submitted.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<Pending<T>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(Pending(rx))
    }

    /// [`NodeHandle::write_with`], handed over now and answered later: writes submitted one
    /// after another (a client's pipeline) enter the state machine in that order and share
    /// its group commits, while the caller waits for none of them until it needs the answers.
    pub async fn submit_write(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        opts: WriteOptions,
    ) -> Result<Pending<Result<Written, RequestError>>, NodeError> {
        self.submit_change(table, key, Change::Put(value), opts)
            .await
    }

    /// Adds `by` (negative: subtracts) to the counter at `table/key`, as Redis's `INCRBY`
    /// does, handed over now and answered once durable as [`NodeHandle::write_with`] is; the
    /// receipt's `total` is the counter's value after it. The region's state machine reads
    /// and writes the counter in one step, so concurrent additions here never overwrite one
    /// another, and additions in other regions merge with it. The table's resolver must keep
    /// counters ([`conflict::Resolver::counter`]); `opts.context` is not used.
    pub async fn submit_add(
        &self,
        table: &str,
        key: &[u8],
        by: i64,
        opts: WriteOptions,
    ) -> Result<Pending<Result<Written, RequestError>>, NodeError> {
        self.submit_change(table, key, Change::Add(by), opts).await
    }

    /// [`NodeHandle::submit_add`], waiting for the answer.
    pub async fn add(
        &self,
        table: &str,
        key: &[u8],
        by: i64,
        opts: WriteOptions,
    ) -> Result<Result<Written, RequestError>, NodeError> {
        self.submit_add(table, key, by, opts).await?.wait().await
    }

    async fn submit_change(
        &self,
        table: &str,
        key: &[u8],
        change: Change,
        opts: WriteOptions,
    ) -> Result<Pending<Result<Written, RequestError>>, NodeError> {
        let (table, key) = (table.to_owned(), key.to_vec());
        self.submit(|reply| Command::Write {
            table,
            key,
            change,
            opts,
            reply,
        })
        .await
    }

    /// Waits until `regions` other regions have this region's writes up to `seq` durably
    /// (`seq` from a [`WriteReceipt`]'s dot), or `timeout` passes; answers the other regions
    /// that have them, which may be fewer than asked for (Redis's `WAIT`).
    pub async fn wait_durable(
        &self,
        seq: conflict::Seq,
        regions: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, NodeError> {
        self.ask(|reply| Command::Wait {
            seq,
            regions,
            timeout,
            reply,
        })
        .await
    }

    /// Writes a value (or a tombstone) at durability `local`; resolves when the write is
    /// durable here.
    pub async fn write(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        context: Option<VersionVector>,
    ) -> Result<Result<WriteReceipt, WriteError>, NodeError> {
        let opts = WriteOptions {
            context,
            durability: Some(Durability::Local),
            ..WriteOptions::default()
        };
        Ok(match self.write_with(table, key, value, opts).await? {
            Ok(w) => Ok(w.receipt),
            Err(RequestError::Write(e)) => Err(e),
            Err(RequestError::Behind(_)) => unreachable!("no session token was given"),
            // The state machine refuses writes while bootstrapping: `WriteError::Bootstrapping`.
            Err(RequestError::Bootstrapping(_)) => unreachable!("only reads are refused so"),
            Err(RequestError::Read(_)) => unreachable!("a write is no read"),
        })
    }

    /// Writes with explicit options (context, durability, timeout, session token).
    pub async fn write_with(
        &self,
        table: &str,
        key: &[u8],
        value: Value,
        opts: WriteOptions,
    ) -> Result<Result<Written, RequestError>, NodeError> {
        self.submit_write(table, key, value, opts)
            .await?
            .wait()
            .await
    }

    /// Reads a key's state (refused while this region is being bootstrapped).
    pub async fn read(
        &self,
        table: &str,
        key: &[u8],
    ) -> Result<Result<ReadResult, Bootstrapping>, NodeError> {
        let opts = ReadOptions {
            level: Some(ReadLevel::One),
            ..ReadOptions::default()
        };
        Ok(match self.read_opts(table, key, opts).await? {
            Ok((r, _)) => Ok(r),
            Err(RequestError::Bootstrapping(b)) => Err(b),
            Err(_) => unreachable!("a local read with no session token waits for nothing"),
        })
    }

    /// Reads a key's state once this region has applied everything `session` covers
    /// (waiting up to `timeouts.session_wait_ms`), and returns the session token to pass on.
    pub async fn read_with(
        &self,
        table: &str,
        key: &[u8],
        session: Option<VersionVector>,
    ) -> Result<Result<(ReadResult, VersionVector), RequestError>, NodeError> {
        let opts = ReadOptions {
            session,
            level: Some(ReadLevel::One),
            timeout: None,
        };
        self.read_opts(table, key, opts).await
    }

    /// Reads a key's state as `opts` asks: at a level (`read=quorum` joins the states of a
    /// majority of regions; see docs/consistency.md), after a session token. Returns the
    /// session token to pass on.
    pub async fn read_opts(
        &self,
        table: &str,
        key: &[u8],
        opts: ReadOptions,
    ) -> Result<Result<(ReadResult, VersionVector), RequestError>, NodeError> {
        let (table, key) = (table.to_owned(), key.to_vec());
        self.ask(|reply| Command::Read {
            table,
            key,
            opts,
            reply,
        })
        .await
    }

    /// The region's status.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// The conflict log, oldest first (refused while this region is being bootstrapped:
    /// it describes key states that are partial).
    pub async fn conflicts(&self) -> Result<Result<Vec<ConflictRecord>, Bootstrapping>, NodeError> {
        self.ask(|reply| Command::Conflicts { reply }).await
    }

    /// Runs anti-entropy now with every connected peer (`meridian repair`) and answers once
    /// every round is over, with what they found (docs/design.md, "Anti-entropy").
    pub async fn repair(&self) -> Result<Repair, NodeError> {
        self.ask(|reply| Command::Repair { reply }).await
    }

    /// SHA-256 over every key state: equal digests mean equal data (refused while this
    /// region is being bootstrapped: a digest of partial states would compare as a
    /// divergence).
    pub async fn digest(&self) -> Result<Result<[u8; 32], Bootstrapping>, NodeError> {
        self.ask(|reply| Command::Digest { reply }).await
    }

    /// One page of the keys of a table that read as present (`None`: the table is not
    /// configured; refused while this region is being bootstrapped). Resume with `after` =
    /// the last key returned: see [`Replica::scan`].
    ///
    /// [`Replica::scan`]: leader_core::Replica::scan
    pub async fn scan(
        &self,
        scan: Scan,
    ) -> Result<Result<Option<Listing>, Bootstrapping>, NodeError> {
        self.ask(|reply| Command::Scan { scan, reply }).await
    }
}
