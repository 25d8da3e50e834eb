//! Client subcommands: talk to any region's HTTP API.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use leader::api::{CONTEXT_HEADER, DURABILITY_HEADER, SESSION_HEADER, TIMEOUT_HEADER};
use leader::config::Config;
use leader::status::{
    Alarms, Bootstrap, ConflictPage, LinkChange, LinkState, Links, MatrixEntry, RepairReport,
    Status,
};
use serde_json::Value as Json;

/// Which region's API to talk to.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// The region to talk to (its API address comes from --config).
    #[arg(long, short = 'r', env = "MERIDIAN_REGION")]
    region: Option<String>,
    /// The API base URL, instead of --region (e.g. http://127.0.0.1:8101).
    #[arg(long, env = "MERIDIAN_API")]
    api: Option<String>,
    /// The regions.toml that names the regions.
    #[arg(long, default_value = "regions.toml", env = "MERIDIAN_CONFIG")]
    config: PathBuf,
}

/// A key, and a value for `put`.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeyArgs {
    #[command(flatten)]
    target: Target,
    /// The table.
    table: String,
    /// The key.
    key: String,
    /// The value (for put); `-` reads it from standard input.
    value: Option<String>,
    /// Supersede exactly this causal context (from a previous read) instead of a blind write.
    #[arg(long)]
    context: Option<String>,
    /// Show every sibling (get).
    #[arg(long)]
    siblings: bool,
    /// Durability to wait for (put/delete): local, one, quorum or all.
    #[arg(long)]
    durability: Option<String>,
    /// How long to wait for that durability, in ms (put/delete).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Keep a session token in FILE across commands: each command sends it and stores the
    /// token it gets back, giving read-your-writes and monotonic reads across regions.
    #[arg(long, value_name = "FILE")]
    session: Option<PathBuf>,
}

/// The token stored in a session file, if any.
fn load_session(path: Option<&PathBuf>) -> Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the session file {}", path.display())),
    }
}

/// Stores the token a response carried into the session file.
fn store_session(path: Option<&PathBuf>, resp: &reqwest::Response) -> Result<()> {
    let (Some(path), Some(token)) = (path, resp.headers().get(SESSION_HEADER)) else {
        return Ok(());
    };
    let token = token.to_str().context("the session header is not ASCII")?;
    std::fs::write(path, format!("{token}\n"))
        .with_context(|| format!("writing the session file {}", path.display()))
}

/// Options of `meridian conflicts`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConflictArgs {
    #[command(flatten)]
    target: Target,
    /// Only this table.
    #[arg(long)]
    table: Option<String>,
    /// How many (newest first).
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

impl Target {
    fn base(&self) -> Result<String> {
        if let Some(api) = &self.api {
            return Ok(api.trim_end_matches('/').to_owned());
        }
        let Some(region) = &self.region else {
            bail!(
                "say which region to talk to: --region NAME (from {}) or --api URL",
                self.config.display()
            );
        };
        let config = Config::load(&self.config)?;
        let r = config.region(region)?;
        Ok(format!("http://{}", r.api_addr))
    }

    fn client(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(token) = std::env::var("MERIDIAN_API_TOKEN") {
            let value = format!("Bearer {token}")
                .parse()
                .context("MERIDIAN_API_TOKEN is not a valid header value")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }
}

fn key_url(base: &str, table: &str, key: &str) -> String {
    format!(
        "{base}/v1/kv/{}/{}",
        encode_segment(table),
        encode_segment(key)
    )
}

/// Percent-encodes one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn error_of(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body: Json = resp.json().await.unwrap_or(Json::Null);
    let msg = body["error"].as_str().unwrap_or("no details");
    anyhow::anyhow!("{status}: {msg}")
}

pub(crate) async fn put(a: KeyArgs) -> Result<ExitCode> {
    let Some(value) = &a.value else {
        bail!("put needs a value: meridian put TABLE KEY VALUE (or - for stdin)")
    };
    let body = if value == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        value.clone().into_bytes()
    };
    write(a.clone(), Some(body)).await
}

pub(crate) async fn delete(a: KeyArgs) -> Result<ExitCode> {
    write(a, None).await
}

async fn write(a: KeyArgs, body: Option<Vec<u8>>) -> Result<ExitCode> {
    let base = a.target.base()?;
    let client = a.target.client()?;
    let url = key_url(&base, &a.table, &a.key);
    let mut req = match body {
        Some(b) => client.put(&url).body(b),
        None => client.delete(&url),
    };
    if let Some(ctx) = &a.context {
        req = req.header(CONTEXT_HEADER, ctx);
    }
    if let Some(d) = &a.durability {
        req = req.header(DURABILITY_HEADER, d);
    }
    if let Some(t) = a.timeout_ms {
        req = req.header(TIMEOUT_HEADER, t.to_string());
    }
    let resp = send_in_session(req, &a, &base).await?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    store_session(a.session.as_ref(), &resp)?;
    if resp.status() == reqwest::StatusCode::ACCEPTED {
        let body: Json = resp.json().await?;
        println!("{}", serde_json::to_string_pretty(&body)?);
        eprintln!(
            "{}",
            body["message"]
                .as_str()
                .unwrap_or("the durability wait timed out")
        );
        return Ok(ExitCode::from(3));
    }
    let body: Json = resp.json().await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(ExitCode::SUCCESS)
}

/// Sends a key request to `base` with the session token of `a.session`, if any.
async fn send_in_session(
    mut req: reqwest::RequestBuilder,
    a: &KeyArgs,
    base: &str,
) -> Result<reqwest::Response> {
    if let Some(token) = load_session(a.session.as_ref())? {
        req = req.header(SESSION_HEADER, token);
    }
    req.send()
        .await
        .with_context(|| format!("cannot reach {base}"))
}

pub(crate) async fn get(a: KeyArgs) -> Result<ExitCode> {
    let base = a.target.base()?;
    let client = a.target.client()?;
    let mut url = key_url(&base, &a.table, &a.key);
    if a.siblings {
        url.push_str("?siblings=true");
    }
    let resp = send_in_session(client.get(&url), &a, &base).await?;
    let status = resp.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        store_session(a.session.as_ref(), &resp)?;
    }
    let context = resp
        .headers()
        .get(CONTEXT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_json = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status == reqwest::StatusCode::NOT_FOUND && !is_json {
        return Err(error_of(resp).await);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        let body: Json = resp.json().await?;
        if body["code"] == "unknown_table" {
            bail!("{}", body["error"].as_str().unwrap_or("unknown table"));
        }
        eprintln!("(absent) context: {}", context.unwrap_or_default());
        return Ok(ExitCode::from(4));
    }
    if !status.is_success() {
        return Err(error_of(resp).await);
    }
    if is_json {
        let body: Json = resp.json().await?;
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let bytes = resp.bytes().await?;
        std::io::stdout().write_all(&bytes)?;
        println!();
        eprintln!("context: {}", context.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(t: Target) -> Result<ExitCode> {
    let base = t.base()?;
    let status: Status = get_json(&t, &base, format!("{base}/v1/status")).await?;
    print!("{}", status_text(&status));
    Ok(ExitCode::SUCCESS)
}

/// What `meridian status` prints: the region, its peers, its applied vector, the lag matrix
/// and one line per alarm.
fn status_text(s: &Status) -> String {
    let mut out = format!(
        "region {} (replica {:#}), {} keys, hlc {}\n",
        s.region, s.replica, s.keys, s.hlc
    );
    if let Some(b) = &s.bootstrap {
        out.push_str(&format!(
            "{}
  serves no reads and takes no writes until then; {}
",
            b.bar(),
            b.reason
        ));
    }
    let mut peers = table([
        "peer",
        "link",
        "rtt ms",
        "replicating",
        "lag writes",
        "lag ms",
        "unacked bytes",
    ]);
    for p in &s.peers {
        peers.add_row([
            p.region.clone(),
            p.link.map_or("-", LinkState::as_str).to_owned(),
            p.rtt_ms.map_or("-".into(), |v| format!("{v:.1}")),
            p.replicating.to_string(),
            p.lag_writes.to_string(),
            p.lag_ms.to_string(),
            p.unacked_bytes.to_string(),
        ]);
    }
    out.push_str(&format!("{peers}\n"));
    out.push_str(&format!(
        "write log: {} in {} segments, retention {}\n",
        leader::status::human_bytes(s.log.bytes),
        s.log.segments,
        leader::status::human_bytes(s.log.retention_bytes)
    ));
    for note in s.peers.iter().filter_map(|p| p.log_note.as_ref()) {
        out.push_str(&format!("  {note}\n"));
    }
    let mut applied = table(["origin", "replica", "applied seq"]);
    for a in &s.applied {
        applied.add_row([
            a.region.clone(),
            format!("{:#}", a.replica),
            a.seq.to_string(),
        ]);
    }
    out.push_str(&format!("{applied}\n"));
    out.push_str(&matrix_text(&s.matrix));
    for line in alarm_lines(&s.alarms) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `v` as JSON text (a quoted string, `null`, `0.0`), as the API sent it.
fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    // Strings, options and numbers have no map keys or custom serialisers that could fail.
    serde_json::to_string(v).expect("a string, option or number always serialises")
}

/// One line per clock-skew and resolver-mismatch alarm. Names of tables and resolvers are
/// quoted as JSON strings (`null` for a table a region does not know).
fn alarm_lines(alarms: &Alarms) -> Vec<String> {
    let skew = alarms.clock_skew.iter().map(|a| {
        format!(
            "ALARM clock skew: {} ran {} ms ahead (bound {} ms)",
            a.region, a.ahead_ms, a.bound_ms
        )
    });
    let mismatch = alarms.resolver_mismatch.iter().map(|m| {
        format!(
            "ALARM resolver mismatch: table {} is {} here and {} in {}; its writes are not replicated between them",
            json_text(&m.table),
            json_text(&m.ours),
            json_text(&m.theirs),
            m.region
        )
    });
    let snapshot = alarms.needs_snapshot.iter().map(|n| {
        format!(
            "ALARM needs snapshot: {}'s log starts at write {} of {}, and this region lacks writes from {}; it cannot catch up from {} (a snapshot is needed unless another region still holds them)",
            n.region, n.log_start, n.origin, n.from, n.region
        )
    });
    let divergence = alarms.divergence.iter().map(|d| {
        format!(
            "ALARM divergence: anti-entropy found {} keys that differ from {} although both regions applied their writes (repaired by join, {} here); last: {}",
            d.found,
            d.region,
            d.repaired,
            d.keys.join(", ")
        )
    });
    skew.chain(mismatch)
        .chain(snapshot)
        .chain(divergence)
        .collect()
}

/// `meridian repair --region R`: anti-entropy now between R and every connected peer; prints
/// what the rounds found once they are over (diverged keys are repaired by then).
pub(crate) async fn repair(t: Target) -> Result<ExitCode> {
    let base = t.base()?;
    let r: RepairReport = t
        .client()?
        .post(format!("{base}/v1/repair"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?
        .error_for_status()?
        .json()
        .await?;
    print!("{}", repair_text(&r));
    Ok(ExitCode::SUCCESS)
}

fn repair_text(r: &RepairReport) -> String {
    if r.peers.is_empty() {
        return format!(
            "{}: no round started (no peer connected, or the region is being bootstrapped)\n",
            r.region
        );
    }
    let mut out = format!(
        "{}: anti-entropy with {}: {} of {} rounds finished; {} keys diverged ({} repaired here, the rest at the peers), {} in flight (not compared)\n",
        r.region,
        r.peers.join(", "),
        r.rounds,
        r.peers.len(),
        r.diverged,
        r.repaired,
        r.in_flight
    );
    if !r.keys.is_empty() {
        out.push_str(&format!("diverged keys: {}\n", r.keys.join(", ")));
    }
    out
}

/// What `meridian run` prints about a snapshot bootstrap of its region, from one status a
/// second: an alarm line for every transfer started (counted by `snapshots_started`, so one
/// that begins and ends between two looks is printed too; or found under way at start) and
/// when the snapshot is installed, a progress bar line each time while chunks are fetched, and
/// a line when the region serves again. A region on a new data directory says once what it
/// waits for before it serves.
#[derive(Debug, Default)]
pub(crate) struct BootstrapWatch {
    /// The transfer as last seen: (its source, its rounds).
    seen: Option<(Option<String>, u32)>,
    /// Whether the region was last seen learning whether it needs a snapshot.
    learning: bool,
    /// Transfers started as last seen.
    started: u64,
    /// Snapshots installed as last seen.
    installed: u64,
}

/// The counters a [`BootstrapWatch`] follows: transfers started, snapshots installed, key
/// states received.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    started: u64,
    installed: u64,
    keys_received: u64,
}

impl BootstrapWatch {
    /// The lines for the status `s`, taken after the last call's.
    pub(crate) fn lines(&mut self, s: &Status) -> Vec<String> {
        let c = &s.counters;
        let counted = Counted {
            started: c.snapshots_started,
            installed: c.snapshots_installed,
            keys_received: c.snapshot_keys_received,
        };
        self.lines_of(&s.region, s.bootstrap.as_ref(), counted)
    }

    /// [`BootstrapWatch::lines`] of region `region`: its transfer (or learning gate), if any,
    /// and its counters since it started. A bootstrap may begin and end between two calls:
    /// the counters tell.
    fn lines_of(&mut self, region: &str, b: Option<&Bootstrap>, c: Counted) -> Vec<String> {
        let mut out = Vec::new();
        let learning = b.filter(|b| b.phase == "learning");
        let transfer = b.filter(|b| b.phase != "learning");
        if let Some(b) = learning
            && !self.learning
        {
            out.push(format!(
                "region {region} serves no reads and takes no writes yet: {}",
                b.reason
            ));
        }
        let found_under_way = self.seen.is_none() && c.started == self.started;
        let starts = match transfer {
            Some(_) if found_under_way => 1,
            _ => c.started.saturating_sub(self.started),
        };
        for i in 0..starts {
            // Only the last start is the transfer seen now; earlier ones came and went.
            let (from, reason) = match transfer.filter(|_| i + 1 == starts) {
                Some(b) => (b.source.as_deref().unwrap_or("a peer"), b.reason.as_str()),
                None => ("a peer", "it began and ended between two looks"),
            };
            out.push(format!(
                "ALARM snapshot started: region {region} is being bootstrapped from {from} ({reason}); it serves no reads and takes no writes until it has caught up"
            ));
        }
        let newly_installed = c.installed > self.installed;
        if newly_installed {
            let (keys, source) =
                transfer.map_or((c.keys_received, None), |b| (b.keys, b.source.clone()));
            let from = source.map_or_else(String::new, |s| format!(" from {s}"));
            out.push(format!(
                "ALARM snapshot installed: {} keys{from}; catching up with the writes since",
                leader::status::thousands(keys),
            ));
        }
        match transfer {
            Some(b) if b.phase == "fetching" => out.push(b.bar()),
            None if learning.is_none() && (self.seen.is_some() || newly_installed) => {
                out.push(format!(
                    "region {region} is bootstrapped: it serves reads and takes writes again"
                ));
            }
            None if learning.is_none() && self.learning && starts == 0 => out.push(format!(
                "region {region} serves reads and takes writes: its peers showed it needs no snapshot"
            )),
            _ => {}
        }
        self.seen = transfer.map(|b| (b.source.clone(), b.rounds));
        self.learning = learning.is_some();
        self.started = c.started;
        self.installed = c.installed;
        out
    }
}

/// GETs `url` of the region at `base` and decodes its JSON answer.
async fn get_json<T: serde::de::DeserializeOwned>(
    target: &Target,
    base: &str,
    url: String,
) -> Result<T> {
    Ok(target
        .client()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?
        .error_for_status()?
        .json()
        .await?)
}

pub(crate) async fn conflicts(a: ConflictArgs) -> Result<ExitCode> {
    let base = a.target.base()?;
    let mut url = format!("{base}/v1/conflicts?limit={}", a.limit);
    if let Some(t) = &a.table {
        url.push_str(&format!("&table={}", encode_segment(t)));
    }
    let page: ConflictPage = get_json(&a.target, &base, url).await?;
    let mut rows = table([
        "id",
        "table",
        "key",
        "resolver",
        "writes (region:seq)",
        "outcome",
    ]);
    for c in page.conflicts {
        let writes: Vec<String> = c
            .siblings
            .iter()
            .map(|s| {
                let lost = if s.kept { "" } else { " (lost)" };
                format!("{}:{}{lost}", s.region, s.seq)
            })
            .collect();
        rows.add_row([
            c.id.to_string(),
            c.table,
            c.key,
            c.resolver,
            writes.join(", "),
            c.outcome,
        ]);
    }
    println!("{rows}");
    Ok(ExitCode::SUCCESS)
}

/// The lag matrix: one row per origin region, one column per destination. Each cell is
/// "writes / ms" as computed by the origin on its own clock, so skewed clocks never distort it.
fn matrix_text(cells: &[MatrixEntry]) -> String {
    let mut regions: Vec<&str> = cells
        .iter()
        .flat_map(|c| [c.origin.as_str(), c.destination.as_str()])
        .collect();
    regions.sort();
    regions.dedup();
    let mut header = vec!["origin \\ destination".to_owned()];
    header.extend(regions.iter().map(|r| (*r).to_owned()));
    header.push("row age ms".to_owned());
    let mut rows = table(header);
    for origin in &regions {
        let row: Vec<&MatrixEntry> = cells.iter().filter(|c| c.origin == *origin).collect();
        let Some(first) = row.first() else {
            continue;
        };
        let mut line = vec![(*origin).to_owned()];
        for dest in &regions {
            line.push(match row.iter().find(|c| c.destination == *dest) {
                None => "-".to_owned(),
                Some(c) => {
                    let down = if c.replicating { "" } else { " (down)" };
                    format!("{} w / {} ms{down}", c.lag_writes, c.lag_ms)
                }
            });
        }
        line.push(first.row_age_ms.to_string());
        rows.add_row(line);
    }
    format!("replication lag (writes / ms behind each origin's own writes):\n{rows}\n")
}

/// Options of `meridian link`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LinkArgs {
    #[command(flatten)]
    target: Target,
    /// The peer region whose link to change (omit to list every link).
    peer: Option<String>,
    /// Cut the link in both directions (as seen from this region).
    #[arg(long, conflicts_with = "heal")]
    block: bool,
    /// Heal a cut link (latency, jitter and loss stay as they are).
    #[arg(long)]
    heal: bool,
    /// One-way latency to add to packets sent to the peer, ms.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Jitter on that latency, ms.
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// Share of packets to drop, 0 to 1.
    #[arg(long)]
    loss: Option<f64>,
}

/// `meridian link`: inspect or impair this region's links (needs `simulate`/`--simulate-links`).
pub(crate) async fn link(a: LinkArgs) -> Result<ExitCode> {
    let base = a.target.base()?;
    let client = a.target.client()?;
    let resp = match &a.peer {
        None => client.get(format!("{base}/v1/admin/links")).send().await,
        Some(peer) if a.heal => {
            client
                .delete(format!("{base}/v1/admin/links/{}", encode_segment(peer)))
                .send()
                .await
        }
        Some(peer) => {
            let change = LinkChange {
                latency_ms: a.latency_ms,
                jitter_ms: a.jitter_ms,
                loss: a.loss,
                blocked: a.block.then_some(true),
            };
            client
                .put(format!("{base}/v1/admin/links/{}", encode_segment(peer)))
                .json(&change)
                .send()
                .await
        }
    }
    .with_context(|| format!("cannot reach {base}"))?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let links: Links = resp.json().await?;
    let mut rows = table(["peer", "addr", "latency ms", "jitter ms", "loss", "blocked"]);
    for l in links.links {
        rows.add_row([
            l.peer,
            l.addr,
            l.latency_ms.to_string(),
            l.jitter_ms.to_string(),
            json_text(&l.loss),
            l.blocked.to_string(),
        ]);
    }
    println!("{rows}");
    Ok(ExitCode::SUCCESS)
}

/// An empty table with the CLI's border style and this header.
pub(crate) fn table<T: Into<comfy_table::Cell>>(header: impl IntoIterator<Item = T>) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use leader::status::{ClockSkew, ResolverMismatch};

    /// What `meridian status` at us-east prints for the mismatch of
    /// `meridian repair`'s report, and the status line of a divergence it found.
    #[test]
    fn repair_reports_what_the_rounds_found() {
        let report = RepairReport {
            diverged: 1,
            in_flight: 2,
            keys: vec!["default/k7".into()],
            peers: vec!["ap-south".into(), "eu-west".into()],
            region: "us-east".into(),
            repaired: 0,
            rounds: 2,
        };
        assert_eq!(
            repair_text(&report),
            "us-east: anti-entropy with ap-south, eu-west: 2 of 2 rounds finished; 1 keys \
             diverged (0 repaired here, the rest at the peers), 2 in flight (not compared)\n\
             diverged keys: default/k7\n"
        );
        let alone = RepairReport {
            peers: Vec::new(),
            ..report
        };
        assert!(repair_text(&alone).contains("no round started"));
        let alarms = Alarms {
            divergence: vec![leader::status::Divergence {
                found: 3,
                keys: vec!["default/k7".into()],
                region: "eu-west".into(),
                repaired: 1,
            }],
            ..Alarms::default()
        };
        assert_eq!(
            alarm_lines(&alarms),
            [
                "ALARM divergence: anti-entropy found 3 keys that differ from eu-west although both \
              regions applied their writes (repaired by join, 1 here); last: default/k7"
            ]
        );
    }

    /// `leader/tests/consistency.rs::resolver_mismatch_quarantines_that_table_only` (which
    /// asserts the JSON), and for a clock-skew alarm.
    #[test]
    fn alarms_name_the_table_both_resolvers_the_skew_and_a_needed_snapshot() {
        let alarms = Alarms {
            clock_skew: vec![ClockSkew {
                ahead_ms: 10_012,
                bound_ms: 500,
                region: "ap-south".into(),
            }],
            resolver_mismatch: vec![ResolverMismatch {
                ours: Some("multi-value@1".into()),
                region: "ap-south".into(),
                table: "carts".into(),
                theirs: Some("lww@1".into()),
            }],
            split_brain: Vec::new(),
            divergence: Vec::new(),
            needs_snapshot: vec![leader::status::NeedsSnapshot {
                from: 12,
                log_start: 9001,
                origin: "us-east".into(),
                region: "eu-west".into(),
            }],
        };
        assert_eq!(
            alarm_lines(&alarms),
            [
                "ALARM clock skew: ap-south ran 10012 ms ahead (bound 500 ms)",
                "ALARM resolver mismatch: table \"carts\" is \"multi-value@1\" here and \
                 \"lww@1\" in ap-south; its writes are not replicated between them",
                "ALARM needs snapshot: eu-west's log starts at write 9001 of us-east, and this \
                 region lacks writes from 12; it cannot catch up from eu-west (a snapshot is \
                 needed unless another region still holds them)",
            ]
        );
    }

    /// What `meridian run` prints, second by second, for a bootstrap: the alarm when it
    /// starts, a bar while fetching, the alarm at the install, and the end.
    #[test]
    fn a_bootstrap_is_followed_line_by_line() {
        let fetching = |keys| Bootstrap {
            bytes: keys * 10,
            chunks: keys / 100,
            keys,
            phase: "fetching".into(),
            progress: String::new(),
            reason: "region 'a' no longer holds the writes of c from 1 on".into(),
            rounds: 0,
            source: Some("a".into()),
            total_keys: 2_000,
        };
        let n = |started, installed, keys_received| Counted {
            started,
            installed,
            keys_received,
        };
        let mut watch = BootstrapWatch::default();
        assert!(
            watch.lines_of("c", None, n(0, 0, 0)).is_empty(),
            "nothing to say"
        );
        assert_eq!(
            watch.lines_of("c", Some(&fetching(0)), n(1, 0, 0)),
            [
                "ALARM snapshot started: region c is being bootstrapped from a (region 'a' no \
                 longer holds the writes of c from 1 on); it serves no reads and takes no \
                 writes until it has caught up",
                "bootstrapping from a [................] 0% 0/2,000 keys",
            ]
        );
        assert_eq!(
            watch.lines_of("c", Some(&fetching(1_000)), n(1, 0, 1_000)),
            ["bootstrapping from a [########........] 50% 1,000/2,000 keys"]
        );
        let mut caught_up = fetching(2_000);
        caught_up.phase = "catching_up".into();
        assert_eq!(
            watch.lines_of("c", Some(&caught_up), n(1, 1, 2_000)),
            ["ALARM snapshot installed: 2,000 keys from a; catching up with the writes since"]
        );
        assert_eq!(
            watch.lines_of("c", None, n(1, 1, 2_000)),
            ["region c is bootstrapped: it serves reads and takes writes again"]
        );
        assert!(watch.lines_of("c", None, n(1, 1, 2_000)).is_empty());
        // A whole bootstrap between two looks (shorter than a second): the counters tell.
        assert_eq!(
            watch.lines_of("c", None, n(2, 2, 2_240)),
            [
                "ALARM snapshot started: region c is being bootstrapped from a peer (it began \
                 and ended between two looks); it serves no reads and takes no writes until it \
                 has caught up",
                "ALARM snapshot installed: 2,240 keys; catching up with the writes since",
                "region c is bootstrapped: it serves reads and takes writes again",
            ]
        );
        // A transfer that started and is already catching up by the next look: its start
        // is printed all the same, before the install.
        caught_up.rounds = 0;
        assert_eq!(
            watch.lines_of("c", Some(&caught_up), n(3, 3, 4_240)),
            [
                "ALARM snapshot started: region c is being bootstrapped from a (region 'a' no \
                 longer holds the writes of c from 1 on); it serves no reads and takes no \
                 writes until it has caught up",
                "ALARM snapshot installed: 2,000 keys from a; catching up with the writes since",
            ]
        );
    }

    /// A region on a new data directory says what it waits for, and when it serves.
    #[test]
    fn a_new_data_directory_says_what_it_waits_for() {
        let learning = Bootstrap {
            bytes: 0,
            chunks: 0,
            keys: 0,
            phase: "learning".into(),
            progress: String::new(),
            reason: "waiting for b".into(),
            rounds: 0,
            source: None,
            total_keys: 0,
        };
        let mut watch = BootstrapWatch::default();
        assert_eq!(
            watch.lines_of("c", Some(&learning), Counted::default()),
            ["region c serves no reads and takes no writes yet: waiting for b"]
        );
        assert!(
            watch
                .lines_of("c", Some(&learning), Counted::default())
                .is_empty()
        );
        assert_eq!(
            watch.lines_of("c", None, Counted::default()),
            ["region c serves reads and takes writes: its peers showed it needs no snapshot"]
        );
    }
}
