//! `regions.toml`: the one file every region of a deployment shares.
//!
//! It names the cluster, every region with its peer (QUIC) address, API address and data
//! directory, where the TLS files live, which conflict resolver each table uses, the limits and
//! timeouts, and — for `meridian simulate` only — the WAN links between regions. Because all
//! regions read the same file, they agree on the region set and the table → resolver map by
//! construction; the handshake still compares resolver fingerprints in case two copies drift.
//!
//! # Layout
//! - The model (this file): [`Config`], [`RegionConfig`], [`Limits`], [`Timeouts`],
//!   [`Simulation`], [`LinkSpec`], [`Resp`], [`TlsFiles`].
//! - `error.rs`, [`ConfigError`]: every problem, with the file, line and column, the key, what
//!   is wrong and what to do about it.
//! - `load.rs`, `validate.rs`, `diagnostics.rs` (finding where a key is written) — loading: the text is parsed twice — once into a spanned document (only to find where a key
//!   is written, so errors can point at it) and once through serde into private `Raw*` types
//!   with `deny_unknown_fields` — and then validated into the model. Validation is structural:
//!   it needs nothing but the file. What depends on the running program (which resolvers are
//!   registered, whether certificates exist) is checked later by [`Config::check_resolvers`]
//!   and [`Config::check_tls`].
//!
//! Relative paths (`tls_dir`, `data_dir`) resolve against the directory of the file, never the
//! working directory, so `meridian run --config /etc/meridian/regions.toml` behaves the same
//! wherever it is started. `docs/config.md` is the reference for every key.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leader_core::{Durability, ReadLevel};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Largest configuration file accepted (1 MiB): a real one is a few KiB, so anything bigger is
/// the wrong file, and reading it whole must not exhaust memory.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Most regions one cluster may have. Regions form a full mesh, so connections grow with the
/// square of this; the design targets a small, static set of regions.
pub const MAX_REGIONS: usize = 32;

/// Most tables one cluster may declare; each one is fingerprinted in every peer handshake.
pub const MAX_TABLES: usize = 256;

/// The table that requests naming no table use. Every configuration must map it to a
/// resolver, so a client that knows nothing about tables can still read and write.
pub const DEFAULT_TABLE: &str = "default";

/// Longest timeout accepted (one hour): larger values are almost always a unit mistake
/// (seconds or microseconds written where milliseconds are meant).
pub const MAX_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Longest simulated one-way latency accepted (one minute); the Earth's far side is ~150 ms.
pub const MAX_LINK_LATENCY_MS: u64 = 60 * 1000;

/// Where the keys of this file are documented, for error messages.
const REFERENCE: &str = "docs/config.md";

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// A validated `regions.toml`: everything a region's leader, `meridian simulate` and the
/// certificate tool need to know about the deployment.
///
/// Build one with [`Config::load`] (or [`Config::parse`] in tests). A value from either has
/// passed every structural check: names are well formed and unique, addresses parse and do
/// not collide, the `default` table exists, limits and timeouts are consistent, and simulation
/// links name configured regions. Paths in it are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Cluster name. Certificates and data directories record it, so a region of one cluster
    /// can never join, or open the data of, another.
    pub cluster: String,
    /// Directory holding `ca.pem` and `<region>.pem` / `<region>.key`; absolute. See
    /// [`Config::tls_files`].
    pub tls_dir: PathBuf,
    /// Size bounds on keys, values, siblings, frames, bodies and queues.
    pub limits: Limits,
    /// Timers of the replication protocol and the transport.
    pub timeouts: Timeouts,
    /// The regions, in file order. Names, peer addresses and (for regions on one host) API
    /// addresses and data directories are unique.
    pub regions: Vec<RegionConfig>,
    /// Table name → resolver name. Contains [`DEFAULT_TABLE`]. Tables not listed do not exist:
    /// writing to them is refused, so every region agrees on how each table is merged.
    pub tables: BTreeMap<String, String>,
    /// table → the durability a write waits for when the request names none (`[durability]`;
    /// tables not listed use `local`).
    pub durability: BTreeMap<String, Durability>,
    /// table → the level a read consults when the request names none (`[read]`; tables not
    /// listed read at `one`, from the region alone).
    pub read: BTreeMap<String, ReadLevel>,
    /// WAN links for `meridian simulate`; empty when the file has no `[simulation]`.
    pub simulation: Simulation,
    /// The Redis-protocol front end (`[resp]`): which table each database number is.
    pub resp: Resp,
    /// Anti-entropy (`[anti_entropy]`): how often regions compare their hash trees.
    pub anti_entropy: AntiEntropy,
    /// The file this was read from, absolute. Errors name it, relative paths resolved against
    /// its directory, and `meridian certs init --config` is told to use it.
    pub source: PathBuf,
}

/// One region: where peers reach it, where clients reach it, where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Region name, `[a-z0-9-]{1,32}` starting and ending with a letter or digit. It is the
    /// name in the region's certificate, so the handshake proves which region a peer is.
    pub name: String,
    /// The QUIC address this region listens on and the other regions dial. Always a concrete
    /// IP address with a port (never `0.0.0.0` or port 0), because peers dial exactly this.
    pub peer_addr: SocketAddr,
    /// The HTTP API address. Loopback by default; see [`RegionConfig::api_is_loopback`].
    /// Port 0 asks the OS for a free port (useful in tests); the leader logs the one it got.
    pub api_addr: SocketAddr,
    /// The region's data directory (redb store, replica id); absolute. Defaults to
    /// `data/<name>` next to the configuration file.
    pub data_dir: PathBuf,
    /// Where the region speaks the Redis protocol (RESP2/RESP3), if anywhere. Same rules as
    /// `api_addr`.
    pub resp_addr: Option<SocketAddr>,
}

/// The `[resp]` section: how the Redis-protocol front end maps `SELECT n` to tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    /// Database `n` is table `databases[n]`. Defaults to `default` as database 0, then the
    /// other tables in name order.
    pub databases: Vec<String>,
    /// Redis connections served at once per region (default 10 000, as Redis's `maxclients`);
    /// one more is told so and closed.
    pub max_connections: usize,
}

/// Default of [`Resp::max_connections`].
pub const RESP_MAX_CONNECTIONS: usize = 10_000;

impl RegionConfig {
    /// Whether the API only accepts connections from this host. The API has no transport
    /// security of its own, so the runtime warns when this is false: put the API behind a
    /// proxy that terminates TLS, or require a token.
    pub fn api_is_loopback(&self) -> bool {
        self.api_addr.ip().is_loopback()
    }
}

/// The paths of one region's TLS files, derived from [`Config::tls_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (`ca.pem`); every region trusts exactly this CA.
    pub ca: PathBuf,
    /// This region's certificate chain (`<region>.pem`), naming the region.
    pub cert: PathBuf,
    /// This region's private key (`<region>.key`).
    pub key: PathBuf,
}

/// Size bounds. Every one has a default, so `[limits]` may be omitted.
///
/// Byte sizes are `usize` because they are compared with lengths of buffers in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest key accepted from a client (default 1 KiB).
    pub max_key_bytes: usize,
    /// Largest value accepted from a client (default 1 MiB). A replication frame must hold one
    /// write with room to spare, so `max_key_bytes + max_value_bytes <= max_frame_bytes / 2`.
    pub max_value_bytes: usize,
    /// Most siblings a key may have (default 64). Past it a write is refused with an error
    /// telling the client to resolve the siblings, so a hot key cannot grow without bound.
    pub max_siblings: usize,
    /// Largest replication frame sent or accepted (default 8 MiB, at most 256 MiB). A peer
    /// announcing a larger frame is disconnected before anything is allocated for it.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body (default 4 MiB); must exceed `max_value_bytes` so that any
    /// value the store accepts can also be sent to it, encoding included.
    pub max_request_body_bytes: usize,
    /// Bytes sent to one peer and not yet acknowledged (default 16 MiB). The write log is the
    /// buffer beyond it. At least `max_frame_bytes`, so the largest frame can always be sent.
    pub peer_window_bytes: usize,
    /// Entries kept in the in-memory conflict log (default 10 000); the oldest go first.
    pub conflict_log_entries: usize,
    /// Bytes of recent durable writes kept in memory per origin region, so live peers are
    /// streamed from memory rather than from the disk log (default 16 MiB; 0 keeps none).
    pub log_tail_bytes: usize,
    /// A checkpoint (key states written to the key table) is due once the log written since
    /// the last one, or the key states kept back for it, reach this many bytes (default
    /// 64 MiB). Bounds the memory kept-back states take and the log a restart replays.
    pub checkpoint_bytes: usize,
    /// A restart replays the log after the last checkpoint in chunks of at most this many
    /// bytes (default 8 MiB; one write always fits, so at least `max_key_bytes +
    /// max_value_bytes`).
    pub replay_chunk_bytes: usize,
    /// Memory the storage engine (redb) may use to cache pages it read and buffer pages it
    /// writes (default 64 MiB).
    pub storage_cache_bytes: usize,
    /// A segment of the write log is sealed, and the next group commit starts a new file, once
    /// it holds this many bytes (default 32 MiB). Larger segments mean fewer files; a restart
    /// scans at most the last one.
    pub log_segment_bytes: usize,
    /// Flow control (default 10 000; 0 turns it off): the most of this region's own writes a
    /// connected peer that keeps up may lack. Past it, client writes here wait for the peer to
    /// catch up — at most their timeout, then `503 overloaded` — so a region slower than the
    /// load bounds the lag instead of letting it grow without end. A peer that is away, or
    /// makes no progress for `relay_delay_ms`, does not slow writes here; it catches up and
    /// paces them again once within the bound. See docs/design.md "Flow control".
    pub pace_lag_writes: u64,
    /// Retention bound of the write log (default 1 GiB, at least 1 MiB): a peer region that
    /// lacks more than this many bytes of writes stops holding back log truncation here; the
    /// log is truncated past it and it then needs a snapshot. Status shows each peer's
    /// distance to the bound before that happens. See docs/design.md "Log truncation".
    pub log_retention_bytes: u64,
    /// Bytes of key states in one snapshot chunk (default 1 MiB, from 4 KiB to a quarter of
    /// `max_frame_bytes`): what a region being bootstrapped asks for at a time, and the most
    /// a region serves at a time. Each chunk is one frame and one checkpoint at the receiver,
    /// and one state always goes in a chunk, so a frame must hold a chunk plus the largest
    /// state. Larger chunks: fewer round trips and checkpoints; smaller: less redone after
    /// a crash. See docs/design.md "Snapshot bootstrap".
    pub snapshot_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_siblings: 64,
            max_frame_bytes: 8 * 1024 * 1024,
            max_request_body_bytes: 4 * 1024 * 1024,
            peer_window_bytes: 16 * 1024 * 1024,
            conflict_log_entries: 10_000,
            log_tail_bytes: 16 * 1024 * 1024,
            checkpoint_bytes: 64 * 1024 * 1024,
            replay_chunk_bytes: 8 * 1024 * 1024,
            storage_cache_bytes: 64 * 1024 * 1024,
            log_segment_bytes: 32 * 1024 * 1024,
            pace_lag_writes: 10_000,
            log_retention_bytes: 1 << 30,
            snapshot_chunk_bytes: 1024 * 1024,
        }
    }
}

/// Timers, all in milliseconds (the unit is the last word of each key). Every one has a
/// default, so `[timeouts]` may be omitted; each field has a [`Duration`] accessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Interval between heartbeats to each peer (default 500). Heartbeats carry time for skew
    /// estimates and link views for the lag matrix. Less than `idle_timeout_ms`.
    pub heartbeat_interval_ms: u64,
    /// How long a peer may lag on a third region's writes before this region relays them
    /// (default 2000), so a broken link between two regions heals through a third.
    pub relay_delay_ms: u64,
    /// A remote HLC further ahead of local time than this is applied but never drags the local
    /// clock along, and raises a skew alarm (default 500).
    pub max_clock_offset_ms: u64,
    /// A QUIC connection silent for this long is closed (default 10 000).
    pub idle_timeout_ms: u64,
    /// QUIC keep-alive interval (default 2000); less than `idle_timeout_ms`, or idle
    /// connections would be closed between keep-alives.
    pub keep_alive_ms: u64,
    /// First delay before redialling a lost peer (default 100); doubles on each failure.
    pub reconnect_min_ms: u64,
    /// Longest delay between redials after a lost connection or a refused dial (default 1000);
    /// at least `reconnect_min_ms`.
    pub reconnect_max_ms: u64,
    /// A dial whose QUIC/TLS handshake has not completed after this long is abandoned and the
    /// next one starts at once (default 2000), so a partitioned peer is probed about once a
    /// second and a healed link is back within about a second. Allow a few round trips of the
    /// slowest link.
    pub dial_timeout_ms: u64,
    /// How long a write waits for the durability it asked for (`one`, `quorum`, `all`) before
    /// the reply says it is committed locally and still replicating (default 5000).
    pub write_timeout_ms: u64,
    /// How long a read presenting a session token waits for this region to catch up before
    /// answering "this region is behind your session" (default 1000).
    pub session_wait_ms: u64,
}

/// The `[anti_entropy]` section (docs/design.md, "Anti-entropy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AntiEntropy {
    /// How often this region compares its hash tree with each connected peer's and repairs
    /// and reports keys that differ although both have applied their writes (default
    /// 300 000, five minutes; 0 turns the periodic rounds off, `meridian repair` still
    /// starts one). A round between regions that agree moves a few hundred bytes.
    pub interval_ms: u64,
}

/// Default of [`AntiEntropy::interval_ms`]: five minutes.
pub const ANTI_ENTROPY_INTERVAL_MS: u64 = 5 * 60 * 1000;

/// Shortest non-zero [`AntiEntropy::interval_ms`]: a round scans the keys of the leaves that
/// differ, so back-to-back rounds would compete with writes for the state machine.
pub const ANTI_ENTROPY_INTERVAL_MS_MIN: u64 = 1000;

impl Default for AntiEntropy {
    fn default() -> Self {
        Self {
            interval_ms: ANTI_ENTROPY_INTERVAL_MS,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 500,
            relay_delay_ms: 2000,
            max_clock_offset_ms: 500,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 2000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            dial_timeout_ms: 2000,
            write_timeout_ms: 5000,
            session_wait_ms: 1000,
        }
    }
}

impl Timeouts {
    /// [`Timeouts::heartbeat_interval_ms`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// [`Timeouts::relay_delay_ms`] as a duration.
    pub fn relay_delay(&self) -> Duration {
        Duration::from_millis(self.relay_delay_ms)
    }

    /// [`Timeouts::max_clock_offset_ms`] as a duration.
    pub fn max_clock_offset(&self) -> Duration {
        Duration::from_millis(self.max_clock_offset_ms)
    }

    /// [`Timeouts::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`Timeouts::keep_alive_ms`] as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }

    /// [`Timeouts::reconnect_min_ms`] as a duration.
    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    /// [`Timeouts::reconnect_max_ms`] as a duration.
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// [`Timeouts::dial_timeout_ms`] as a duration.
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms)
    }

    /// [`Timeouts::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// [`Timeouts::session_wait_ms`] as a duration.
    pub fn session_wait(&self) -> Duration {
        Duration::from_millis(self.session_wait_ms)
    }
}

/// The `[simulation]` section: how `meridian simulate` impairs the links between regions.
/// Real deployments ignore it, so one file can describe both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simulation {
    /// The impaired links, in file order. A pair of regions not listed is not impaired.
    /// At most one entry covers each direction of each pair.
    pub links: Vec<LinkSpec>,
}

/// One `[[simulation.link]]`: WAN conditions between two regions, applied to every packet
/// `from` sends to `to` (and `to` sends to `from`, unless `symmetric = false`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Sending region.
    pub from: String,
    /// Receiving region; differs from `from`.
    pub to: String,
    /// One-way delay added to every packet, in milliseconds (at most one minute).
    pub latency_ms: u64,
    /// Each packet's delay varies uniformly by up to this much either way (default 0); at most
    /// `latency_ms`, so no packet arrives before it was sent.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability in `[0, 1)` that a packet is dropped (default 0). 1 is refused: a link that
    /// drops everything is a partition, which the simulator controls separately.
    #[serde(default)]
    pub loss: f64,
    /// Whether the same conditions apply from `to` back to `from` (default true). Set it to
    /// false and write a second link to give each direction its own figures.
    #[serde(default = "yes")]
    pub symmetric: bool,
}

impl LinkSpec {
    /// [`LinkSpec::latency_ms`] as a duration.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// [`LinkSpec::jitter_ms`] as a duration.
    pub fn jitter(&self) -> Duration {
        Duration::from_millis(self.jitter_ms)
    }
}

fn yes() -> bool {
    true
}

mod diagnostics;
mod error;
mod load;
mod validate;

use diagnostics::*;
pub use error::*;
use load::*;
use validate::*;
