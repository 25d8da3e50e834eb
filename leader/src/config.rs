//! `regions.toml`: the one file every region of a deployment shares.
//!
//! It names the cluster, every region with its peer (QUIC) address, API address and data
//! directory, where the TLS files live, which conflict resolver each table uses, the limits and
//! timeouts, and — for `meridian simulate` only — the WAN links between regions. Because all
//! regions read the same file, they agree on the region set and the table → resolver map by
//! construction; the handshake still compares resolver fingerprints in case two copies drift.
//!
//! # Layout
//! - The model: [`Config`], [`RegionConfig`], [`Limits`], [`Timeouts`], [`Simulation`],
//!   [`LinkSpec`], [`TlsFiles`].
//! - [`ConfigError`]: every problem, with the file, line and column, the key, what is wrong and
//!   what to do about it.
//! - Loading: the text is parsed twice — once into a spanned document (only to find where a key
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

use leader_core::Durability;
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
    /// WAN links for `meridian simulate`; empty when the file has no `[simulation]`.
    pub simulation: Simulation,
    /// The Redis-protocol front end (`[resp]`): which table each database number is.
    pub resp: Resp,
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
    /// Flow control (default 10 000; 0 turns it off): the most of this region's own writes a
    /// connected peer that keeps up may lack. Past it, client writes here wait for the peer to
    /// catch up — at most their timeout, then `503 overloaded` — so a region slower than the
    /// load bounds the lag instead of letting it grow without end. A peer that is away, or
    /// makes no progress for `relay_delay_ms`, does not slow writes here; it catches up and
    /// paces them again once within the bound. See docs/design.md "Flow control".
    pub pace_lag_writes: u64,
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
            pace_lag_writes: 10_000,
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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A problem with a configuration file: which file, where, which key, what is wrong and what
/// to do. Displayed as `<file>[:<line>:<column>]: <key>: <problem>. <fix>`, a form editors and
/// terminals recognise as a jump-to location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file (absolute when it could be made so).
    pub file: PathBuf,
    /// Where in the file, when the problem is tied to text that is there. Checks made after
    /// loading ([`Config::check_resolvers`], [`Config::check_tls`], [`Config::region`]) have
    /// no location; their key still says where to look.
    pub location: Option<Location>,
    /// The key path, e.g. `region[1].peer_addr` (array indices count from 0) or
    /// `tables.carts`; empty when the problem is not about one key (unreadable file, syntax).
    pub key: String,
    /// The category, for code that reacts to some problems differently.
    pub kind: ErrorKind,
    /// What is wrong, as one sentence without the final period.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// A position in a configuration file, both counted from 1 (columns in characters). `u32`
/// keeps [`ConfigError`] small; files are capped at [`MAX_CONFIG_BYTES`] anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: u32,
    /// Column number, from 1, counted in characters.
    pub column: u32,
}

/// What kind of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read (missing, unreadable, not UTF-8, too large).
    Unreadable,
    /// The text is not valid TOML.
    Syntax,
    /// A key this format does not have (often a misspelling).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong type (e.g. a string where a number belongs).
    WrongType,
    /// A value is well typed but not acceptable (bad name, address, range, duplicate).
    Invalid,
    /// A table names a resolver this program has not registered.
    UnknownResolver,
    /// A region name that the file does not configure.
    UnknownRegion,
    /// A TLS file is missing.
    MissingCertificate,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}. {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Fails with a [`ConfigError`] naming the file, the key and the fix for the first
    /// problem found. Resolvers and certificates are not checked here: see
    /// [`Config::check_resolvers`] and [`Config::check_tls`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let unreadable = |problem: String| ConfigError {
            file: file.clone(),
            location: None,
            key: String::new(),
            kind: ErrorKind::Unreadable,
            problem,
            fix: "check the path given with --config; the repository ships an example, \
                  regions.toml"
                .to_owned(),
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(wide(MAX_CONFIG_BYTES) + 1).read_to_string(&mut text))
            .map_err(|e| unreadable(format!("cannot read the file ({e})")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration `text` as if it had been read from `source`, which
    /// errors name and relative paths resolve against (the file need not exist). Everything
    /// [`Config::load`] checks is checked here.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let file = absolute(source);
        if text.len() > MAX_CONFIG_BYTES {
            let problem = Problem::new(
                KeyPath::root(),
                ErrorKind::Unreadable,
                format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
                "check that --config names the regions.toml of this deployment".to_owned(),
            );
            return Err(problem.into_error(&file, None, text));
        }
        // A syntax error still leaves a partial document, enough to name the key it is in.
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        if let Some(e) = syntax_errors.first() {
            return Err(syntax_problem(e, &doc, text).into_error(&file, Some(&doc), text));
        }
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| serde_problem(&e, &doc).into_error(&file, Some(&doc), text))?;
        validate(raw, file.clone()).map_err(|p| p.into_error(&file, Some(&doc), text))
    }

    /// Checks that every table's resolver is one of `known` (the names registered with the
    /// leader, built-in and custom). Call it once the resolvers are registered: the file
    /// alone cannot know which custom resolvers a program provides.
    pub fn check_resolvers(&self, known: &[&str]) -> Result<(), ConfigError> {
        for (table, resolver) in &self.tables {
            if known.contains(&resolver.as_str()) {
                continue;
            }
            let listed = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            let fix = format!(
                "{}use one of the resolvers this program registers: {listed} (a custom \
                 resolver must be registered in code, by the name tables use, before the \
                 leader starts)",
                did_you_mean(resolver, known.iter().copied()),
            );
            return Err(self.error(
                KeyPath::of("tables").key(table),
                ErrorKind::UnknownResolver,
                format!("table `{table}` uses resolver `{resolver}`, which is not registered"),
                fix,
            ));
        }
        Ok(())
    }

    /// Checks that the CA certificate and `region`'s certificate and key exist, so a missing
    /// file is reported with the command that creates it rather than as a TLS failure.
    pub fn check_tls(&self, region: &str) -> Result<(), ConfigError> {
        let files = self.tls_files(region)?;
        let missing: Vec<String> = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.error(
            KeyPath::of("tls_dir"),
            ErrorKind::MissingCertificate,
            format!(
                "region `{region}` cannot start without its TLS files: {} missing from {}",
                missing.join(", "),
                self.tls_dir.display(),
            ),
            format!(
                "run `meridian certs init --config {}` to create the cluster CA and a \
                 certificate for every region, or set tls_dir to the directory that holds them",
                self.source.display(),
            ),
        ))
    }

    /// The paths of `region`'s TLS files: `ca.pem`, `<region>.pem` and `<region>.key` in
    /// [`Config::tls_dir`]. Fails if the region is not configured.
    pub fn tls_files(&self, region: &str) -> Result<TlsFiles, ConfigError> {
        let region = &self.region(region)?.name;
        Ok(TlsFiles {
            ca: self.tls_dir.join("ca.pem"),
            cert: self.tls_dir.join(format!("{region}.pem")),
            key: self.tls_dir.join(format!("{region}.key")),
        })
    }

    /// The region called `name`; the error lists the configured ones, so a typo in
    /// `--region` is easy to correct.
    pub fn region(&self, name: &str) -> Result<&RegionConfig, ConfigError> {
        if let Some(region) = self.regions.iter().find(|r| r.name == name) {
            return Ok(region);
        }
        let names = self.region_names();
        Err(self.error(
            KeyPath::of("region"),
            ErrorKind::UnknownRegion,
            format!("there is no region `{name}` in this file"),
            format!(
                "{}use one of the configured regions: {}, or add a [[region]] named `{name}`",
                did_you_mean(name, names.iter().copied()),
                names.join(", "),
            ),
        ))
    }

    /// The configured region names, in file order.
    pub fn region_names(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    /// The resolver `table` uses, or `None` if the table is not configured (and so does not
    /// exist).
    pub fn resolver_for(&self, table: &str) -> Option<&str> {
        self.tables.get(table).map(String::as_str)
    }

    /// The simulated conditions for packets from `from` to `to`, if any. The spec returned
    /// may be written the other way round (a symmetric link covers both directions), so use
    /// its figures, not its `from`/`to`.
    pub fn link(&self, from: &str, to: &str) -> Option<&LinkSpec> {
        self.simulation.links.iter().find(|l| {
            (l.from == from && l.to == to) || (l.symmetric && l.from == to && l.to == from)
        })
    }

    fn error(&self, key: KeyPath, kind: ErrorKind, problem: String, fix: String) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            location: None,
            key: key.to_string(),
            kind,
            problem,
            fix,
        }
    }
}

/// `path` made absolute without touching the file system (the file may not exist yet) and
/// with `.` components removed. If the working directory is unknown, `path` as given.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path)
        .map(|p| p.components().collect())
        .unwrap_or_else(|_| path.to_path_buf())
}

// The shapes serde reads, before validation turns strings into addresses and paths. They are
// private so the public model only ever holds validated values.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    #[serde(default = "default_tls_dir")]
    tls_dir: String,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default, rename = "region")]
    regions: Vec<RawRegion>,
    #[serde(default)]
    tables: BTreeMap<String, String>,
    #[serde(default)]
    durability: BTreeMap<String, String>,
    #[serde(default)]
    simulation: RawSimulation,
    #[serde(default)]
    resp: RawResp,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResp {
    databases: Option<Vec<String>>,
    max_connections: Option<usize>,
}

fn default_tls_dir() -> String {
    "certs".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    peer_addr: String,
    api_addr: String,
    data_dir: Option<String>,
    resp_addr: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulation {
    #[serde(default)]
    link: Vec<LinkSpec>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// A problem found before the file name and position are attached.
#[derive(Debug)]
struct Problem {
    path: KeyPath,
    kind: ErrorKind,
    problem: String,
    fix: String,
    /// Byte range in the text, when the TOML parser reported one; otherwise the position is
    /// looked up from `path`.
    span: Option<Range<usize>>,
}

impl Problem {
    fn new(path: KeyPath, kind: ErrorKind, problem: String, fix: String) -> Self {
        Self {
            path,
            kind,
            problem,
            fix,
            span: None,
        }
    }

    fn invalid(path: KeyPath, problem: String, fix: String) -> Self {
        Self::new(path, ErrorKind::Invalid, problem, fix)
    }

    fn into_error(
        self,
        file: &Path,
        doc: Option<&Spanned<DeTable<'_>>>,
        text: &str,
    ) -> ConfigError {
        let span = self
            .span
            .or_else(|| doc.and_then(|d| locate(d, &self.path)));
        ConfigError {
            file: file.to_path_buf(),
            location: span.map(|s| location_of(text, s.start)),
            key: self.path.to_string(),
            kind: self.kind,
            problem: self.problem,
            fix: self.fix,
        }
    }
}

fn validate(raw: RawConfig, source: PathBuf) -> Result<Config, Problem> {
    // `source` is absolute, so it has a parent unless it is `/` itself.
    let base = source.parent().unwrap_or(Path::new("/")).to_path_buf();
    check_name(&raw.cluster, &CLUSTER_NAME, KeyPath::of("cluster"))?;
    let tls_dir = resolve_dir(&base, &raw.tls_dir, KeyPath::of("tls_dir"))?;
    check_limits(&raw.limits)?;
    check_timeouts(&raw.timeouts)?;
    let regions = check_regions(&raw.regions, &base)?;
    check_tables(&raw.tables)?;
    let durability = check_durability(&raw.durability, &raw.tables)?;
    check_links(&raw.simulation.link, &regions)?;
    let resp = check_resp(&raw.resp, &raw.tables)?;
    Ok(Config {
        cluster: raw.cluster,
        tls_dir,
        limits: raw.limits,
        timeouts: raw.timeouts,
        regions,
        tables: raw.tables,
        durability,
        simulation: Simulation {
            links: raw.simulation.link,
        },
        resp,
        source,
    })
}

/// The shape of a name that ends up in certificates, directories or handshakes.
struct NameRule {
    what: &'static str,
    max_len: usize,
    underscore: bool,
    /// Whether the name must start and end with a letter or digit (DNS label rules, for names
    /// that appear in certificates).
    dns_label: bool,
    example: &'static str,
}

const CLUSTER_NAME: NameRule = NameRule {
    what: "cluster name",
    max_len: 64,
    underscore: false,
    dns_label: true,
    example: "meridian-local",
};

const REGION_NAME: NameRule = NameRule {
    what: "region name",
    max_len: 32,
    underscore: false,
    dns_label: true,
    example: "eu-west",
};

const TABLE_NAME: NameRule = NameRule {
    what: "table name",
    max_len: 64,
    underscore: true,
    dns_label: false,
    example: "shopping_carts",
};

fn check_name(value: &str, rule: &NameRule, path: KeyPath) -> Result<(), Problem> {
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (rule.underscore && c == '_')
    };
    let edges_ok = !rule.dns_label || !(value.starts_with('-') || value.ends_with('-'));
    if !value.is_empty() && value.len() <= rule.max_len && value.chars().all(allowed) && edges_ok {
        return Ok(());
    }
    let chars = if rule.underscore {
        "lowercase letters, digits, '-' and '_'"
    } else {
        "lowercase letters, digits and '-'"
    };
    let edges = if rule.dns_label {
        ", starting and ending with a letter or digit (it is used in certificates)"
    } else {
        ""
    };
    Err(Problem::invalid(
        path,
        format!("`{value}` is not a valid {}", rule.what),
        format!(
            "use 1 to {} {chars}{edges}, e.g. `{}`",
            rule.max_len, rule.example
        ),
    ))
}

/// `text` as a path, relative to `base` unless absolute. Empty is refused: it would silently
/// mean the configuration file's own directory.
fn resolve_dir(base: &Path, text: &str, path: KeyPath) -> Result<PathBuf, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::invalid(
            path,
            "the path is empty".to_owned(),
            "give a directory, absolute or relative to the configuration file's directory"
                .to_owned(),
        ));
    }
    Ok(base.join(text).components().collect())
}

/// One bound on a number: the key, its value, and the inclusive range it must lie in.
struct Bound {
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
}

fn check_bounds(section: &str, bounds: &[Bound]) -> Result<(), Problem> {
    for b in bounds {
        if (b.min..=b.max).contains(&b.value) {
            continue;
        }
        return Err(Problem::invalid(
            KeyPath::of(section).key(b.key),
            format!("{} is out of range", b.value),
            format!("use a value from {} to {}", b.min, b.max),
        ));
    }
    Ok(())
}

/// Widening for range checks (saturating, though `usize` is at most 64 bits everywhere
/// this builds).
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn check_limits(l: &Limits) -> Result<(), Problem> {
    const MIB: u64 = 1024 * 1024;
    let bound = |key, value, min, max| Bound {
        key,
        value: wide(value),
        min,
        max,
    };
    check_bounds(
        "limits",
        &[
            // The store itself refuses more than `conflict::limits` (keys, values, siblings):
            // a larger value here would be accepted at load and refused at every write.
            bound(
                "max_key_bytes",
                l.max_key_bytes,
                1,
                wide(conflict::limits::MAX_KEY_BYTES),
            ),
            bound(
                "max_value_bytes",
                l.max_value_bytes,
                1,
                wide(conflict::limits::MAX_VALUE_BYTES),
            ),
            bound(
                "max_siblings",
                l.max_siblings,
                1,
                wide(conflict::limits::MAX_SIBLINGS),
            ),
            // The transport refuses frame limits above 256 MiB (transport::codec).
            bound("max_frame_bytes", l.max_frame_bytes, 64 * 1024, 256 * MIB),
            bound(
                "max_request_body_bytes",
                l.max_request_body_bytes,
                1,
                512 * MIB,
            ),
            bound("peer_window_bytes", l.peer_window_bytes, 1, 1024 * MIB),
            bound("conflict_log_entries", l.conflict_log_entries, 1, 1_000_000),
            bound("log_tail_bytes", l.log_tail_bytes, 0, 1024 * MIB),
            bound("checkpoint_bytes", l.checkpoint_bytes, MIB, 16 * 1024 * MIB),
            bound(
                "replay_chunk_bytes",
                l.replay_chunk_bytes,
                64 * 1024,
                1024 * MIB,
            ),
            bound(
                "storage_cache_bytes",
                l.storage_cache_bytes,
                MIB,
                64 * 1024 * MIB,
            ),
            Bound {
                key: "pace_lag_writes",
                value: l.pace_lag_writes,
                min: 0,
                max: 1_000_000_000,
            },
        ],
    )?;
    let limits = KeyPath::of("limits");
    if l.max_key_bytes + l.max_value_bytes > l.max_frame_bytes / 2 {
        return Err(Problem::invalid(
            limits.key("max_value_bytes"),
            format!(
                "max_key_bytes + max_value_bytes ({}) is more than half of max_frame_bytes ({})",
                l.max_key_bytes + l.max_value_bytes,
                l.max_frame_bytes
            ),
            "lower max_value_bytes or raise max_frame_bytes: a replication frame must hold the \
             largest write with room for its context and headers"
                .to_owned(),
        ));
    }
    if l.max_request_body_bytes <= l.max_value_bytes {
        return Err(Problem::invalid(
            limits.key("max_request_body_bytes"),
            format!(
                "{} is not more than max_value_bytes ({})",
                l.max_request_body_bytes, l.max_value_bytes
            ),
            "raise max_request_body_bytes (4 MiB suits a 1 MiB value): a request carries the \
             value plus its key, context and encoding"
                .to_owned(),
        ));
    }
    if l.peer_window_bytes < l.max_frame_bytes {
        return Err(Problem::invalid(
            limits.key("peer_window_bytes"),
            format!(
                "{} is less than max_frame_bytes ({})",
                l.peer_window_bytes, l.max_frame_bytes
            ),
            "raise peer_window_bytes to at least max_frame_bytes, or the largest frame could \
             never be sent"
                .to_owned(),
        ));
    }
    if l.replay_chunk_bytes < l.max_key_bytes + l.max_value_bytes {
        return Err(Problem::invalid(
            limits.key("replay_chunk_bytes"),
            format!(
                "{} is less than max_key_bytes + max_value_bytes ({})",
                l.replay_chunk_bytes,
                l.max_key_bytes + l.max_value_bytes
            ),
            "raise replay_chunk_bytes (8 MiB suits a 1 MiB value) or lower max_value_bytes: a \
             restart replays the log in chunks and the largest write must fit one"
                .to_owned(),
        ));
    }
    Ok(())
}

fn check_timeouts(t: &Timeouts) -> Result<(), Problem> {
    let bound = |key, value| Bound {
        key,
        value,
        min: 1,
        max: MAX_TIMEOUT_MS,
    };
    check_bounds(
        "timeouts",
        &[
            bound("heartbeat_interval_ms", t.heartbeat_interval_ms),
            bound("relay_delay_ms", t.relay_delay_ms),
            bound("max_clock_offset_ms", t.max_clock_offset_ms),
            bound("idle_timeout_ms", t.idle_timeout_ms),
            bound("keep_alive_ms", t.keep_alive_ms),
            bound("reconnect_min_ms", t.reconnect_min_ms),
            bound("reconnect_max_ms", t.reconnect_max_ms),
            bound("dial_timeout_ms", t.dial_timeout_ms),
            bound("write_timeout_ms", t.write_timeout_ms),
            bound("session_wait_ms", t.session_wait_ms),
        ],
    )?;
    // (key, value, must be below this key, its value, why)
    let orderings = [
        (
            "keep_alive_ms",
            t.keep_alive_ms,
            "idle_timeout_ms",
            t.idle_timeout_ms,
            "or idle connections close between keep-alives",
        ),
        (
            "heartbeat_interval_ms",
            t.heartbeat_interval_ms,
            "idle_timeout_ms",
            t.idle_timeout_ms,
            "or connections close between heartbeats",
        ),
    ];
    for (key, value, other, limit, why) in orderings {
        if value >= limit {
            return Err(Problem::invalid(
                KeyPath::of("timeouts").key(key),
                format!("{value} is not less than {other} ({limit})"),
                format!("make {key} smaller than {other}, {why}"),
            ));
        }
    }
    if t.reconnect_min_ms > t.reconnect_max_ms {
        return Err(Problem::invalid(
            KeyPath::of("timeouts").key("reconnect_min_ms"),
            format!(
                "{} is more than reconnect_max_ms ({})",
                t.reconnect_min_ms, t.reconnect_max_ms
            ),
            "make reconnect_min_ms at most reconnect_max_ms: redial delays grow from the \
             first to the second"
                .to_owned(),
        ));
    }
    Ok(())
}

fn check_regions(raw: &[RawRegion], base: &Path) -> Result<Vec<RegionConfig>, Problem> {
    if raw.is_empty() || raw.len() > MAX_REGIONS {
        return Err(Problem::invalid(
            KeyPath::of("region"),
            format!("{} regions are configured", raw.len()),
            format!(
                "write one [[region]] table (name, peer_addr, api_addr) per region, 1 to \
                 {MAX_REGIONS} of them"
            ),
        ));
    }
    let mut regions: Vec<RegionConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let at = KeyPath::of("region").index(i);
        check_name(&r.name, &REGION_NAME, at.key("name"))?;
        if let Some(j) = regions.iter().position(|o| o.name == r.name) {
            return Err(Problem::invalid(
                at.key("name"),
                format!("region `{}` is already defined by region[{j}]", r.name),
                "give every [[region]] its own name, or remove the duplicate".to_owned(),
            ));
        }
        let peer_addr = parse_addr(&r.peer_addr, AddrRole::Peer, at.key("peer_addr"))?;
        let api_addr = parse_addr(&r.api_addr, AddrRole::Api, at.key("api_addr"))?;
        let data_dir = match &r.data_dir {
            Some(dir) => resolve_dir(base, dir, at.key("data_dir"))?,
            None => base.join("data").join(&r.name),
        };
        let resp_addr = match &r.resp_addr {
            Some(text) => Some(parse_addr(text, AddrRole::Api, at.key("resp_addr"))?),
            None => None,
        };
        if resp_addr.is_some_and(|resp| overlaps(resp, api_addr)) {
            return Err(Problem::invalid(
                at.key("resp_addr"),
                format!(
                    "the RESP address {} is the API's",
                    r.resp_addr.as_deref().unwrap_or("")
                ),
                "give the Redis-protocol listener its own port (the example uses 8201, 8202, ...)"
                    .to_owned(),
            ));
        }
        let region = RegionConfig {
            name: r.name.clone(),
            peer_addr,
            api_addr,
            data_dir,
            resp_addr,
        };
        check_collisions(&regions, &region, &at)?;
        regions.push(region);
    }
    Ok(regions)
}

/// Which address of a region is being parsed; they have different rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AddrRole {
    /// Listened on and dialled by peers: must be concrete.
    Peer,
    /// Listened on by the HTTP API: may be a wildcard or port 0.
    Api,
}

fn parse_addr(text: &str, role: AddrRole, path: KeyPath) -> Result<SocketAddr, Problem> {
    let example = match role {
        AddrRole::Peer => "127.0.0.1:7101",
        AddrRole::Api => "127.0.0.1:8101",
    };
    let Ok(addr) = text.parse::<SocketAddr>() else {
        let why = if text.parse::<IpAddr>().is_ok() {
            "the port is missing"
        } else if text.chars().any(|c| c.is_ascii_alphabetic()) && !text.contains('[') {
            "host names are not accepted, so every region uses exactly the address written here"
        } else {
            "expected IP:port"
        };
        return Err(Problem::invalid(
            path,
            format!("`{text}` is not an IP address with a port ({why})"),
            format!("write it as IP:port, e.g. `{example}`; IPv6 goes in brackets, `[::1]:7101`"),
        ));
    };
    if role == AddrRole::Peer && (addr.ip().is_unspecified() || addr.port() == 0) {
        return Err(Problem::invalid(
            path,
            format!("`{text}` cannot be dialled: other regions connect to exactly this address"),
            format!(
                "give the IP address and fixed port other regions reach this one at, e.g. \
                 `{example}`"
            ),
        ));
    }
    Ok(addr)
}

/// Rejects a region whose addresses or data directory clash with an earlier one. Peer
/// addresses must be unique everywhere. API addresses and data directories only clash for
/// regions on the same host (same peer IP, all loopback IPs counting as one host): regions on
/// different machines may well all serve the API on 127.0.0.1:8080 and keep data in the same
/// path of their own disk.
fn check_collisions(
    earlier: &[RegionConfig],
    r: &RegionConfig,
    at: &KeyPath,
) -> Result<(), Problem> {
    for (j, o) in earlier.iter().enumerate() {
        let clash = |key: &str, what: String, fix: &str| {
            Problem::invalid(
                at.key(key),
                format!("{what} is already used by region[{j}] (`{}`)", o.name),
                fix.to_owned(),
            )
        };
        if o.peer_addr == r.peer_addr {
            return Err(clash(
                "peer_addr",
                format!("peer address {}", r.peer_addr),
                "give every region its own peer_addr: it is how other regions find it",
            ));
        }
        if !same_host(o.peer_addr.ip(), r.peer_addr.ip()) {
            continue;
        }
        if overlaps(o.api_addr, r.api_addr) {
            return Err(clash(
                "api_addr",
                format!("API address {}", r.api_addr),
                "regions on one host need distinct API ports",
            ));
        }
        let resp_clash = r.resp_addr.filter(|b| {
            [Some(o.api_addr), o.resp_addr]
                .into_iter()
                .flatten()
                .any(|a| overlaps(a, *b))
        });
        if let Some(resp) = resp_clash {
            return Err(clash(
                "resp_addr",
                format!("RESP address {resp}"),
                "regions on one host need distinct API and RESP ports",
            ));
        }
        if o.resp_addr.is_some_and(|a| overlaps(a, r.api_addr)) {
            return Err(clash(
                "api_addr",
                format!("API address {} (as its RESP address)", r.api_addr),
                "regions on one host need distinct API and RESP ports",
            ));
        }
        if o.data_dir == r.data_dir {
            return Err(clash(
                "data_dir",
                format!("data directory {}", r.data_dir.display()),
                "regions on one host need their own data_dir (the default is data/<region>)",
            ));
        }
    }
    Ok(())
}

fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_loopback() && b.is_loopback())
}

/// Whether two listeners on one host would fight over a port. Port 0 never does.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_tables(tables: &BTreeMap<String, String>) -> Result<(), Problem> {
    for (name, resolver) in tables {
        check_name(name, &TABLE_NAME, KeyPath::of("tables").key(name))?;
        if resolver.trim().is_empty() {
            return Err(Problem::invalid(
                KeyPath::of("tables").key(name),
                format!("table `{name}` names no resolver"),
                "name its resolver, e.g. \"lww\" or \"multi-value\"".to_owned(),
            ));
        }
    }
    if !tables.contains_key(DEFAULT_TABLE) {
        return Err(Problem::new(
            KeyPath::of("tables").key(DEFAULT_TABLE),
            ErrorKind::MissingKey,
            "there is no `default` table".to_owned(),
            "add `default = \"lww\"` under [tables]: requests that name no table use it".to_owned(),
        ));
    }
    if tables.len() > MAX_TABLES {
        return Err(Problem::invalid(
            KeyPath::of("tables"),
            format!("{} tables are configured", tables.len()),
            format!("configure at most {MAX_TABLES} tables"),
        ));
    }
    Ok(())
}

/// Most databases `[resp] databases` may list (Redis's default is 16).
const MAX_RESP_DATABASES: usize = 1024;

fn check_resp(raw: &RawResp, tables: &BTreeMap<String, String>) -> Result<Resp, Problem> {
    let at = KeyPath::of("resp");
    let databases = match &raw.databases {
        Some(list) => {
            if list.is_empty() || list.len() > MAX_RESP_DATABASES {
                return Err(Problem::invalid(
                    at.key("databases"),
                    format!("{} databases are listed", list.len()),
                    format!(
                        "list 1 to {MAX_RESP_DATABASES} tables; database n is the n-th, and 0 is what clients use unless they SELECT"
                    ),
                ));
            }
            for (i, table) in list.iter().enumerate() {
                if !tables.contains_key(table) {
                    return Err(Problem::invalid(
                        at.key("databases"),
                        format!("database {i} names table `{table}`, which is not under [tables]"),
                        format!(
                            "name configured tables only: {}",
                            tables.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if let Some(j) = list[..i].iter().position(|t| t == table) {
                    return Err(Problem::invalid(
                        at.key("databases"),
                        format!("table `{table}` is both database {j} and database {i}"),
                        "give each table one database number".to_owned(),
                    ));
                }
            }
            list.clone()
        }
        None => std::iter::once(DEFAULT_TABLE.to_owned())
            .chain(tables.keys().filter(|t| *t != DEFAULT_TABLE).cloned())
            .collect(),
    };
    let max_connections = raw.max_connections.unwrap_or(RESP_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(Problem::invalid(
            at.key("max_connections"),
            format!("{max_connections} is out of range"),
            "use a value from 1 to 1000000".to_owned(),
        ));
    }
    Ok(Resp {
        databases,
        max_connections,
    })
}

fn check_durability(
    levels: &BTreeMap<String, String>,
    tables: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Durability>, Problem> {
    let mut out = BTreeMap::new();
    for (table, level) in levels {
        let path = KeyPath::of("durability").key(table);
        if !tables.contains_key(table) {
            return Err(Problem::invalid(
                path,
                format!("table `{table}` is not configured under [tables]"),
                "give durability defaults only for tables listed under [tables]".to_owned(),
            ));
        }
        let level: Durability = level.parse().map_err(|e: leader_core::UnknownDurability| {
            Problem::invalid(
                path,
                e.to_string(),
                "write one of \"local\", \"one\", \"quorum\", \"all\"".to_owned(),
            )
        })?;
        out.insert(table.clone(), level);
    }
    Ok(out)
}

fn check_links(links: &[LinkSpec], regions: &[RegionConfig]) -> Result<(), Problem> {
    // Which link already covers each direction, so none is described twice.
    let mut covered: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, link) in links.iter().enumerate() {
        let at = KeyPath::of("simulation").key("link").index(i);
        check_link(link, regions, &at)?;
        let mut directions = vec![(link.from.as_str(), link.to.as_str())];
        if link.symmetric {
            directions.push((link.to.as_str(), link.from.as_str()));
        }
        for (from, to) in directions {
            if let Some(j) = covered.insert((from, to), i) {
                return Err(Problem::invalid(
                    at.clone(),
                    format!("the direction {from} -> {to} is already set by simulation.link[{j}]"),
                    "a link applies both ways unless `symmetric = false`: remove one of the \
                     two, or set `symmetric = false` on both to give each direction its own \
                     figures"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(())
}

fn check_link(link: &LinkSpec, regions: &[RegionConfig], at: &KeyPath) -> Result<(), Problem> {
    let names = || regions.iter().map(|r| r.name.as_str());
    for (key, name) in [("from", &link.from), ("to", &link.to)] {
        if !names().any(|n| n == name) {
            return Err(Problem::invalid(
                at.key(key),
                format!("`{name}` is not a configured region"),
                format!(
                    "{}use one of: {}",
                    did_you_mean(name, names()),
                    names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if link.from == link.to {
        return Err(Problem::invalid(
            at.key("to"),
            format!("the link goes from `{}` to itself", link.from),
            "a link joins two different regions; remove it or fix `from`/`to`".to_owned(),
        ));
    }
    if link.latency_ms > MAX_LINK_LATENCY_MS {
        return Err(Problem::invalid(
            at.key("latency_ms"),
            format!("{} ms is out of range", link.latency_ms),
            format!("use 0 to {MAX_LINK_LATENCY_MS} ms (one way)"),
        ));
    }
    if link.jitter_ms > link.latency_ms {
        return Err(Problem::invalid(
            at.key("jitter_ms"),
            format!(
                "{} ms is more than latency_ms ({} ms)",
                link.jitter_ms, link.latency_ms
            ),
            "use at most latency_ms, so no packet arrives before it was sent".to_owned(),
        ));
    }
    if !(0.0..1.0).contains(&link.loss) {
        return Err(Problem::invalid(
            at.key("loss"),
            format!("{} is not a probability in [0, 1)", link.loss),
            "write the fraction of packets dropped, e.g. 0.01 for 1%".to_owned(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TOML errors and key positions
// ---------------------------------------------------------------------------------------------

/// A key path like `region[1].peer_addr`: what error messages call a key, and how a position
/// in the file is found for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    fn root() -> Self {
        Self::default()
    }

    fn of(key: &str) -> Self {
        Self::root().key(key)
    }

    fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?
                    } else {
                        write!(f, "{k:?}")?
                    }
                }
            }
        }
        Ok(())
    }
}

type Doc<'i> = Spanned<DeTable<'i>>;

/// The span of the deepest part of `path` written in the document: the value itself if it is
/// there, else the nearest enclosing table or array (so a missing key points at its table).
fn locate(doc: &Doc<'_>, path: &KeyPath) -> Option<Range<usize>> {
    let mut value: Option<&Spanned<DeValue<'_>>> = None; // None: the document itself
    let mut found = None;
    for segment in &path.0 {
        let next = match (segment, value.map(Spanned::get_ref)) {
            (Segment::Key(k), None) => lookup(doc.get_ref(), k),
            (Segment::Key(k), Some(DeValue::Table(table))) => lookup(table, k),
            (Segment::Index(i), Some(DeValue::Array(array))) => array.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        found = Some(next.span());
        value = Some(next);
    }
    found
}

fn lookup<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// The key path of the innermost key or value whose span contains `offset`. Tables opened by
/// a `[header]` have the header as their span, which is how an error reported on a table
/// (e.g. a missing field of `[[region]]` number 2) maps to `region[1]`.
fn path_at(doc: &Doc<'_>, offset: usize) -> KeyPath {
    let mut path = KeyPath::root();
    find_in_table(doc.get_ref(), offset, &mut path);
    path
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut KeyPath) -> bool {
    for (key, value) in table {
        path.0.push(Segment::Key(key.get_ref().to_string()));
        if find_in_value(value.get_ref(), offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.0.pop();
    }
    false
}

fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut KeyPath) -> bool {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                path.0.push(Segment::Index(i));
                if find_in_value(item.get_ref(), offset, path) || contains(&item.span(), offset) {
                    return true;
                }
                path.0.pop();
            }
            false
        }
        _ => false,
    }
}

/// Line and column (from 1, columns in characters) of byte `offset` in `text`.
fn location_of(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let count = |n: usize| u32::try_from(n + 1).unwrap_or(u32::MAX);
    Location {
        line: count(before.matches('\n').count()),
        column: count(before[line_start..].chars().count()),
    }
}

fn syntax_problem(err: &toml::de::Error, doc: &Doc<'_>, text: &str) -> Problem {
    let message = err.message();
    let span = err.span();
    let (problem, fix) = if message == "duplicate key" {
        // The duplicate is not in the partial document, so name it from the text.
        let key = span.clone().and_then(|s| text.get(s)).unwrap_or_default();
        (
            format!("invalid TOML: duplicate key `{key}`"),
            "each key may appear once per table (and each [table] once); remove or rename one",
        )
    } else {
        (
            format!("invalid TOML: {message}"),
            "correct the TOML here: strings are quoted, tables are written [name] and repeated \
             tables [[name]] (see https://toml.io)",
        )
    };
    let path = path_of_span(doc, span.as_ref());
    Problem {
        span,
        ..Problem::new(path, ErrorKind::Syntax, problem, fix.to_owned())
    }
}

/// The key path for a span the TOML parser reported. An empty span is the document itself
/// (e.g. a field missing at the top level).
fn path_of_span(doc: &Doc<'_>, span: Option<&Range<usize>>) -> KeyPath {
    match span {
        Some(s) if !s.is_empty() => path_at(doc, s.start),
        _ => KeyPath::root(),
    }
}

/// Turns a serde error from `toml::from_str` into a problem with a key path and a fix. The
/// messages come from serde's derive and have stable shapes (`unknown field `x`, expected one
/// of ...`, `missing field `x``, `invalid type: ..., expected ...`).
fn serde_problem(err: &toml::de::Error, doc: &Doc<'_>) -> Problem {
    let message = err.message();
    let span = err.span();
    let path = path_of_span(doc, span.as_ref());
    let names = backquoted(message);
    let problem = if message.starts_with("unknown field") {
        unknown_key(path, &names)
    } else if let (true, Some(field)) = (message.starts_with("missing field"), names.first()) {
        let path = path.key(field);
        let fix = format!("add `{field}`; {REFERENCE} describes it");
        Problem::new(
            path,
            ErrorKind::MissingKey,
            format!("required key `{field}` is missing"),
            fix,
        )
    } else if let Some((found, expected)) = message.split_once(", expected ") {
        let expected = expected_in_words(expected);
        let fix = format!("write {expected} here; {REFERENCE} lists every key with its type");
        let found = found
            .replace("invalid type: ", "found ")
            .replace("invalid value: ", "found ");
        Problem::new(
            path,
            ErrorKind::WrongType,
            format!("{found}, expected {expected}"),
            fix,
        )
    } else {
        let fix = format!("see {REFERENCE} for what this key accepts");
        Problem::new(path, ErrorKind::Invalid, message.to_owned(), fix)
    };
    Problem { span, ..problem }
}

fn unknown_key(path: KeyPath, names: &[&str]) -> Problem {
    let unknown = names.first().copied().unwrap_or_default();
    let allowed = names.get(1..).unwrap_or_default();
    let mut parent = path.clone();
    parent.0.pop();
    let place = if parent.0.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in {parent}")
    };
    let fix = if allowed.is_empty() {
        format!("remove it: no keys are allowed {place}")
    } else {
        format!(
            "{}remove it or use one of the keys allowed {place}: {}",
            did_you_mean(unknown, allowed.iter().copied()),
            allowed.join(", "),
        )
    };
    Problem::new(
        path,
        ErrorKind::UnknownKey,
        format!("unknown key `{unknown}`"),
        fix,
    )
}

/// The words between backquotes in a serde message, in order.
fn backquoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// Serde's Rust-flavoured type names in the words of a TOML user.
fn expected_in_words(expected: &str) -> String {
    let words = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number >= 0",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        "a boolean" => "true or false",
        other => other,
    };
    words.to_owned()
}

/// `"did you mean `x`? "` when one of `candidates` is a likely correction of `word`.
fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map_or_else(String::new, |(_, c)| format!("did you mean `{c}`? "))
}

/// Levenshtein distance, for suggestions only (inputs are short names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_like_toml() {
        let path = KeyPath::of("region").index(1).key("peer_addr");
        assert_eq!(path.to_string(), "region[1].peer_addr");
        assert_eq!(
            KeyPath::of("tables").key("a.b").to_string(),
            "tables.\"a.b\""
        );
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(location_of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(location_of(text, 6), Location { line: 2, column: 1 });
        // The two-byte 'é' counts as one column.
        assert_eq!(location_of(text, 9), Location { line: 2, column: 3 });
        assert_eq!(location_of(text, 999), Location { line: 3, column: 1 });
    }

    #[test]
    fn offsets_map_to_the_innermost_key() {
        let text = "cluster = \"c\"\n[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n\
                    [limits]\nmax_siblings = 3\n";
        let doc = DeTable::parse(text).unwrap();
        let at = |needle: &str| path_at(&doc, text.find(needle).unwrap()).to_string();
        assert_eq!(at("cluster"), "cluster");
        assert_eq!(at("\"b\""), "region[1].name");
        assert_eq!(at("[[region]]\nname = \"b\""), "region[1]");
        assert_eq!(at("max_siblings"), "limits.max_siblings");
        let located = locate(&doc, &KeyPath::of("region").index(1).key("name")).unwrap();
        assert_eq!(&text[located], "\"b\"");
        let missing = locate(&doc, &KeyPath::of("limits").key("nope")).unwrap();
        assert_eq!(&text[missing], "[limits]");
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(edit_distance("peer_adr", "peer_addr"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            did_you_mean("lwww", ["lww", "multi-value"].into_iter()),
            "did you mean `lww`? "
        );
        assert_eq!(did_you_mean("zzz", ["lww"].into_iter()), "");
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(check_name("us-east-1", &REGION_NAME, KeyPath::root()).is_ok());
        for bad in ["", "-us", "us-", "US", "us_east", &"a".repeat(33)] {
            assert!(
                check_name(bad, &REGION_NAME, KeyPath::root()).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_name("shopping_carts", &TABLE_NAME, KeyPath::root()).is_ok());
        assert!(check_name("_x-", &TABLE_NAME, KeyPath::root()).is_ok());
    }
}
