//! Validation: the `Raw*` shapes into the model, each problem with its key and a fix.

use super::*;

/// A problem found before the file name and position are attached.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) path: KeyPath,
    pub(super) kind: ErrorKind,
    pub(super) problem: String,
    pub(super) fix: String,
    /// Byte range in the text, when the TOML parser reported one; otherwise the position is
    /// looked up from `path`.
    pub(super) span: Option<Range<usize>>,
}

impl Problem {
    pub(super) fn new(path: KeyPath, kind: ErrorKind, problem: String, fix: String) -> Self {
        Self {
            path,
            kind,
            problem,
            fix,
            span: None,
        }
    }

    pub(super) fn invalid(path: KeyPath, problem: String, fix: String) -> Self {
        Self::new(path, ErrorKind::Invalid, problem, fix)
    }

    pub(super) fn into_error(
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

pub(super) fn validate(raw: RawConfig, source: PathBuf) -> Result<Config, Problem> {
    // `source` is absolute, so it has a parent unless it is `/` itself.
    let base = source.parent().unwrap_or(Path::new("/")).to_path_buf();
    check_name(&raw.cluster, &CLUSTER_NAME, KeyPath::of("cluster"))?;
    let tls_dir = resolve_dir(&base, &raw.tls_dir, KeyPath::of("tls_dir"))?;
    check_limits(&raw.limits)?;
    check_timeouts(&raw.timeouts)?;
    let regions = check_regions(&raw.regions, &base)?;
    check_tables(&raw.tables)?;
    let durability = check_durability(&raw.durability, &raw.tables)?;
    let read = check_read(&raw.read, &raw.tables)?;
    check_links(&raw.simulation.link, &regions)?;
    let resp = check_resp(&raw.resp, &raw.tables)?;
    check_anti_entropy(&raw.anti_entropy)?;
    Ok(Config {
        cluster: raw.cluster,
        tls_dir,
        limits: raw.limits,
        timeouts: raw.timeouts,
        regions,
        tables: raw.tables,
        durability,
        read,
        simulation: Simulation {
            links: raw.simulation.link,
        },
        resp,
        anti_entropy: raw.anti_entropy,
        source,
    })
}

pub(super) fn check_anti_entropy(a: &AntiEntropy) -> Result<(), Problem> {
    let ms = a.interval_ms;
    if ms != 0 && !(ANTI_ENTROPY_INTERVAL_MS_MIN..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(Problem::invalid(
            KeyPath::of("anti_entropy").key("interval_ms"),
            format!("{ms} is out of range"),
            format!(
                "use 0 (periodic rounds off) or {ANTI_ENTROPY_INTERVAL_MS_MIN} to {MAX_TIMEOUT_MS} ms; the default is {ANTI_ENTROPY_INTERVAL_MS} (five minutes)"
            ),
        ));
    }
    Ok(())
}

/// The shape of a name that ends up in certificates, directories or handshakes.
pub(super) struct NameRule {
    pub(super) what: &'static str,
    pub(super) max_len: usize,
    pub(super) underscore: bool,
    /// Whether the name must start and end with a letter or digit (DNS label rules, for names
    /// that appear in certificates).
    pub(super) dns_label: bool,
    pub(super) example: &'static str,
}

pub(super) const CLUSTER_NAME: NameRule = NameRule {
    what: "cluster name",
    max_len: 64,
    underscore: false,
    dns_label: true,
    example: "meridian-local",
};

pub(super) const REGION_NAME: NameRule = NameRule {
    what: "region name",
    max_len: 32,
    underscore: false,
    dns_label: true,
    example: "eu-west",
};

pub(super) const TABLE_NAME: NameRule = NameRule {
    what: "table name",
    max_len: 64,
    underscore: true,
    dns_label: false,
    example: "shopping_carts",
};

pub(super) fn check_name(value: &str, rule: &NameRule, path: KeyPath) -> Result<(), Problem> {
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
pub(super) fn resolve_dir(base: &Path, text: &str, path: KeyPath) -> Result<PathBuf, Problem> {
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
pub(super) struct Bound {
    pub(super) key: &'static str,
    pub(super) value: u64,
    pub(super) min: u64,
    pub(super) max: u64,
}

pub(super) fn check_bounds(section: &str, bounds: &[Bound]) -> Result<(), Problem> {
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
pub(super) fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Smallest `[limits] snapshot_chunk_bytes`: below it a transfer is mostly round trips and
/// checkpoints.
const SNAPSHOT_CHUNK_BYTES_MIN: usize = 4096;

pub(super) fn check_limits(l: &Limits) -> Result<(), Problem> {
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
            bound("log_segment_bytes", l.log_segment_bytes, MIB, 1024 * MIB),
            Bound {
                key: "pace_lag_writes",
                value: l.pace_lag_writes,
                min: 0,
                max: 1_000_000_000,
            },
            Bound {
                key: "log_retention_bytes",
                value: l.log_retention_bytes,
                min: MIB,
                max: 1 << 50,
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
    if l.snapshot_chunk_bytes < SNAPSHOT_CHUNK_BYTES_MIN
        || l.snapshot_chunk_bytes > l.max_frame_bytes / 4
    {
        return Err(Problem::invalid(
            limits.key("snapshot_chunk_bytes"),
            format!(
                "{} is out of range: it must be at least {SNAPSHOT_CHUNK_BYTES_MIN} and at most a \
                 quarter of max_frame_bytes ({})",
                l.snapshot_chunk_bytes,
                l.max_frame_bytes / 4
            ),
            format!(
                "use a value from {SNAPSHOT_CHUNK_BYTES_MIN} to {} (1 MiB, the default, suits most \
                 clusters), or raise max_frame_bytes: a snapshot chunk travels in one replication \
                 frame together with one more key state",
                l.max_frame_bytes / 4
            ),
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

pub(super) fn check_timeouts(t: &Timeouts) -> Result<(), Problem> {
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

pub(super) fn check_regions(raw: &[RawRegion], base: &Path) -> Result<Vec<RegionConfig>, Problem> {
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
pub(super) enum AddrRole {
    /// Listened on and dialled by peers: must be concrete.
    Peer,
    /// Listened on by the HTTP API: may be a wildcard or port 0.
    Api,
}

pub(super) fn parse_addr(text: &str, role: AddrRole, path: KeyPath) -> Result<SocketAddr, Problem> {
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
pub(super) fn check_collisions(
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

pub(super) fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_loopback() && b.is_loopback())
}

/// Whether two listeners on one host would fight over a port. Port 0 never does.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn check_tables(tables: &BTreeMap<String, String>) -> Result<(), Problem> {
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
pub(super) const MAX_RESP_DATABASES: usize = 1024;

pub(super) fn check_resp(
    raw: &RawResp,
    tables: &BTreeMap<String, String>,
) -> Result<Resp, Problem> {
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

pub(super) fn check_durability(
    levels: &BTreeMap<String, String>,
    tables: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Durability>, Problem> {
    check_table_levels(
        "durability",
        levels,
        tables,
        "write one of \"local\", \"one\", \"quorum\", \"all\"",
    )
}

/// `[read]`: table → the level a read consults when the request names none.
pub(super) fn check_read(
    levels: &BTreeMap<String, String>,
    tables: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ReadLevel>, Problem> {
    check_table_levels(
        "read",
        levels,
        tables,
        "write one of \"one\", \"quorum\", \"all\"",
    )
}

/// A section of per-table defaults (`[durability]`, `[read]`): every key a configured table,
/// every value a level's name.
fn check_table_levels<L>(
    section: &str,
    levels: &BTreeMap<String, String>,
    tables: &BTreeMap<String, String>,
    hint: &str,
) -> Result<BTreeMap<String, L>, Problem>
where
    L: std::str::FromStr,
    L::Err: std::fmt::Display,
{
    let mut out = BTreeMap::new();
    for (table, level) in levels {
        let path = KeyPath::of(section).key(table);
        if !tables.contains_key(table) {
            return Err(Problem::invalid(
                path,
                format!("table `{table}` is not configured under [tables]"),
                format!("give {section} defaults only for tables listed under [tables]"),
            ));
        }
        let level: L = level
            .parse()
            .map_err(|e: L::Err| Problem::invalid(path, e.to_string(), hint.to_owned()))?;
        out.insert(table.clone(), level);
    }
    Ok(out)
}

pub(super) fn check_links(links: &[LinkSpec], regions: &[RegionConfig]) -> Result<(), Problem> {
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

pub(super) fn check_link(
    link: &LinkSpec,
    regions: &[RegionConfig],
    at: &KeyPath,
) -> Result<(), Problem> {
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
