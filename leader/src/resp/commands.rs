//! What each command does. Names are matched case-insensitively, as Redis does; arity and
//! argument errors use Redis's wording so clients report them as they would Redis's.

use bytes::Bytes;
use conflict::{Resolved, Value};
use leader_core::WriteError;

use super::conn::Connection;
use super::reply::Reply;
use crate::node::{Pending, ReadOptions, ReadResult, RequestError, WriteOptions, Written};

/// The answer to one command of a pipeline: given now, or once the writes it submitted are
/// durable.
pub(super) enum Step {
    /// Answered.
    Now(Reply),
    /// Answered with `+OK` (or the first error) once every write is durable.
    Writes(Vec<Pending<Result<Written, RequestError>>>, Reply),
    /// Answered from the write's receipt (`INCR`'s total, `MERIDIAN.SET`'s context) once it is
    /// durable.
    Write(
        Pending<Result<Written, RequestError>>,
        fn(&Written) -> Reply,
    ),
    /// `QUIT`: answered, then the connection closes.
    Quit(Reply),
}

/// A key's state as a read found it: the state, its table's resolver, and the regions of the
/// replicas that wrote its siblings.
pub(super) type Found = (
    conflict::KeyState,
    std::sync::Arc<dyn conflict::Resolver>,
    std::collections::BTreeMap<conflict::ReplicaId, String>,
);

/// What a connection learned from its writes and reads: what `WAIT` waits for, and the session
/// token its reads and writes carry (`MERIDIAN.SESSION`).
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The last of this region's writes the connection made (its sequence number).
    pub(super) last_seq: conflict::Seq,
    /// Everything the connection's writes and reads depend on; `None` until it has any.
    pub(super) session: Option<conflict::VersionVector>,
}

impl Seen {
    fn wrote(&mut self, w: &Written) {
        self.last_seq = self.last_seq.max(w.receipt.dot.seq);
        self.saw(&w.session);
    }

    pub(super) fn saw(&mut self, token: &conflict::VersionVector) {
        match &mut self.session {
            Some(s) => s.join(token),
            None => self.session = Some(token.clone()),
        }
    }
}

impl Step {
    /// The reply, once it is known; what the writes taught the connection goes into `seen`.
    pub(super) async fn finish(self, seen: &mut Seen) -> Reply {
        match self {
            Step::Now(r) | Step::Quit(r) => r,
            Step::Writes(pending, done) => {
                let mut first_error = None;
                for p in pending {
                    let answer = match written(p, seen).await {
                        Ok(_) => continue,
                        Err(e) => e,
                    };
                    first_error.get_or_insert(answer);
                }
                first_error.unwrap_or(done)
            }
            Step::Write(pending, reply) => match written(pending, seen).await {
                Ok(w) => reply(&w),
                Err(e) => e,
            },
        }
    }
}

/// A write's outcome once known, noted in `seen`; an error reply when it was not made.
async fn written(
    pending: Pending<Result<Written, RequestError>>,
    seen: &mut Seen,
) -> Result<Written, Reply> {
    match pending.wait().await {
        Ok(Ok(w)) => {
            seen.wrote(&w);
            Ok(w)
        }
        Ok(Err(RequestError::Write(e))) => Err(write_error(&e)),
        Ok(Err(RequestError::Behind(b))) => Err(Reply::err(b)),
        Ok(Err(RequestError::Bootstrapping(b))) => Err(loading(&b.progress)),
        Ok(Err(RequestError::Read(e))) => Err(Reply::err(e)),
        Err(e) => Err(Reply::err(e)),
    }
}

/// A read above `one` that too few regions answered: Redis's `-NOREPLICAS` (its answer when
/// too few replicas are reachable), with Meridian's reason naming who answered.
fn read_failed(e: &leader_core::ReadError) -> Reply {
    match e {
        leader_core::ReadError::Bootstrapping { progress } => loading(progress),
        e => Reply::Error(format!("NOREPLICAS {e}")),
    }
}

/// Whether `reply` is [`loading`]'s.
fn is_loading(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with("LOADING "))
}

/// Redis's own answer while it loads its dataset (`-LOADING`, which clients know to retry),
/// for a region being bootstrapped from a snapshot: it serves no reads and takes no writes
/// until it has caught up. `progress` says where the transfer stands.
pub(super) fn loading(progress: &str) -> Reply {
    Reply::Error(format!(
        "LOADING this region is being bootstrapped from a snapshot ({progress}); retry later, or use another region"
    ))
}

/// Whether a command only submits writes (it needs no answer from earlier writes first).
pub(super) fn only_submits(name: &[u8]) -> bool {
    [&b"SET"[..], b"MSET", b"INCR", b"INCRBY", b"DECR", b"DECRBY"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

/// The commands this front end answers, for `COMMAND COUNT` and the docs.
pub(super) const COMMANDS: &[&str] = &[
    "PING",
    "ECHO",
    "HELLO",
    "AUTH",
    "SELECT",
    "CLIENT",
    "QUIT",
    "RESET",
    "COMMAND",
    "CONFIG",
    "INFO",
    "GET",
    "SET",
    "MGET",
    "MSET",
    "DEL",
    "UNLINK",
    "EXISTS",
    "SCAN",
    "DBSIZE",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "WAIT",
    "MERIDIAN.SESSION",
    "MERIDIAN.READ",
    "MERIDIAN.SIBLINGS",
    "MERIDIAN.SET",
    "MERIDIAN.DEL",
];

/// `SCAN` cursors kept at once per region; the oldest is forgotten first (using it then is
/// answered "invalid cursor": start again from 0).
pub(super) const MAX_CURSORS: usize = 65_536;

/// Keys one `DBSIZE` step lists at a time (it counts page by page, so memory stays bounded).
const DBSIZE_PAGE: usize = 10_000;

/// Open `SCAN` positions: cursor → (table, last key returned). A position is a key, not an
/// offset, so a cursor stays valid whatever is written meanwhile.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    next: u64,
    open: std::collections::BTreeMap<u64, (String, Vec<u8>)>,
}

impl Cursors {
    fn save(&mut self, table: &str, last: Vec<u8>) -> u64 {
        self.next += 1;
        if self.open.len() >= MAX_CURSORS {
            self.open.pop_first();
        }
        self.open.insert(self.next, (table.to_owned(), last));
        self.next
    }

    fn take(&mut self, cursor: u64) -> Option<(String, Vec<u8>)> {
        self.open.remove(&cursor)
    }
}

fn write_error(e: &WriteError) -> Reply {
    match e {
        // The client may retry at once, or write at another region.
        WriteError::Overloaded { .. } => Reply::Error(format!("TRYAGAIN {e}")),
        WriteError::Bootstrapping { progress } => loading(progress),
        other => Reply::err(other),
    }
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Matches `pattern` (`*` for any run, `?` for one character, as Redis's glob; case matters)
/// against `s`.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], s) || (!s.is_empty() && glob(pattern, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

impl Connection {
    /// Runs one command (its name is `args[0]`, never empty).
    pub(super) async fn execute(&mut self, args: Vec<Bytes>) -> Step {
        let name = text(&args[0]).to_ascii_uppercase();
        let free = matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT" | "RESET");
        if !self.authed && !free {
            return Step::Now(Reply::Error("NOAUTH Authentication required.".into()));
        }
        let a = &args[1..];
        let reply = match name.as_str() {
            "PING" => match a {
                [] => Reply::Simple("PONG"),
                [msg] => Reply::Bulk(msg.clone()),
                _ => arity(&name),
            },
            "ECHO" => match a {
                [msg] => Reply::Bulk(msg.clone()),
                _ => arity(&name),
            },
            "QUIT" => return Step::Quit(Reply::OK),
            "RESET" => {
                self.resp3 = false;
                self.db = 0;
                self.name = None;
                self.seen = Seen::default();
                self.authed = self.settings.token.is_none();
                Reply::Simple("RESET")
            }
            "AUTH" => match a {
                [password] => self.auth(b"default", password),
                [user, password] => self.auth(user, password),
                _ => arity(&name),
            },
            "HELLO" => self.hello(a),
            "SELECT" => match a {
                [n] => self.select(n),
                _ => arity(&name),
            },
            "CLIENT" => self.client(a),
            "COMMAND" => command(a),
            "CONFIG" => self.config(a),
            "INFO" => self.info(a).await,
            "GET" => match a {
                [key] => self.get(key).await,
                _ => arity(&name),
            },
            "MGET" if !a.is_empty() => {
                let mut values = Vec::with_capacity(a.len());
                for key in a {
                    values.push(match self.get(key).await {
                        // A region being bootstrapped answers nothing it could miss.
                        e if is_loading(&e) => return Step::Now(e),
                        // MGET answers nil for what GET refuses (Redis: for a non-string).
                        Reply::Error(_) => Reply::Null,
                        value => value,
                    });
                }
                Reply::Array(values)
            }
            "SET" => match a {
                [key, value] => return self.set(&[(key.clone(), value.clone())]).await,
                [_, _, option, ..] => Reply::err(format!(
                    "SET option '{}' is not supported: Meridian keys do not expire and writes are not conditional (every region takes writes at once); use plain SET",
                    text(option)
                )),
                _ => arity(&name),
            },
            "MSET" if !a.is_empty() && a.len().is_multiple_of(2) => {
                let pairs: Vec<(Bytes, Bytes)> = a
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                return self.set(&pairs).await;
            }
            "DEL" | "UNLINK" if !a.is_empty() => return self.delete(a).await,
            "EXISTS" if !a.is_empty() => {
                let mut n = 0;
                for key in a {
                    match self.live(key).await {
                        Ok(live) => n += i64::from(live),
                        Err(e) => return Step::Now(e),
                    }
                }
                Reply::Int(n)
            }
            "SCAN" if !a.is_empty() => self.scan(a).await,
            "DBSIZE" if a.is_empty() => self.dbsize().await,
            "INCR" | "DECR" if a.len() == 1 => {
                return self.add(&a[0], if name == "INCR" { 1 } else { -1 }).await;
            }
            "INCRBY" | "DECRBY" if a.len() == 2 => {
                let by = match text(&a[1]).parse::<i64>() {
                    Ok(by) if name == "INCRBY" => Some(by),
                    Ok(by) => by.checked_neg(),
                    Err(_) => {
                        return Step::Now(Reply::err("value is not an integer or out of range"));
                    }
                };
                return match by {
                    Some(by) => self.add(&a[0], by).await,
                    None => Step::Now(Reply::err("decrement would overflow")),
                };
            }
            "WAIT" if a.len() == 2 => self.wait(&a[0], &a[1]).await,
            "MERIDIAN.SESSION" if a.len() <= 1 => self.session(a.first()),
            "MERIDIAN.READ" if a.len() <= 1 => self.read_level(a.first()),
            "MERIDIAN.SIBLINGS" if a.len() == 1 => self.siblings(&a[0]).await,
            "MERIDIAN.SET" if a.len() == 3 => {
                return self.write_with_context(&a[0], Some(&a[1]), &a[2]).await;
            }
            "MERIDIAN.DEL" if a.len() == 2 => {
                return self.write_with_context(&a[0], None, &a[1]).await;
            }
            "MGET" | "MSET" | "DEL" | "UNLINK" | "EXISTS" | "SCAN" | "DBSIZE" | "INCR" | "DECR"
            | "INCRBY" | "DECRBY" | "WAIT" | "MERIDIAN.SESSION" | "MERIDIAN.READ"
            | "MERIDIAN.SIBLINGS" | "MERIDIAN.SET" | "MERIDIAN.DEL" => arity(&name),
            _ => {
                let shown: Vec<String> =
                    a.iter().take(3).map(|x| format!("'{}'", text(x))).collect();
                Reply::err(format!(
                    "unknown command '{}', with args beginning with: {}",
                    text(&args[0]),
                    shown.join(" ")
                ))
            }
        };
        Step::Now(reply)
    }

    pub(super) fn table(&self) -> &str {
        &self.settings.databases[self.db]
    }

    fn auth(&mut self, user: &[u8], password: &[u8]) -> Reply {
        let Some(token) = &self.settings.token else {
            return Reply::err(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        };
        if user == b"default" && password == token.as_bytes() {
            self.authed = true;
            Reply::OK
        } else {
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        }
    }

    fn hello(&mut self, a: &[Bytes]) -> Reply {
        let mut rest = a;
        let mut resp3 = self.resp3;
        if let [version, tail @ ..] = a {
            match version.as_ref() {
                b"2" => resp3 = false,
                b"3" => resp3 = true,
                _ => return Reply::Error("NOPROTO unsupported protocol version".into()),
            }
            rest = tail;
        }
        let mut name = None;
        while let [option, tail @ ..] = rest {
            match (text(option).to_ascii_uppercase().as_str(), tail) {
                ("AUTH", [user, password, more @ ..]) => {
                    if let Reply::Error(e) = self.auth(user, password) {
                        return Reply::Error(e);
                    }
                    rest = more;
                }
                ("SETNAME", [n, more @ ..]) => {
                    name = Some(text(n));
                    rest = more;
                }
                (other, _) => return Reply::err(format!("syntax error in HELLO option '{other}'")),
            }
        }
        if !self.authed {
            return Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
        }
        self.resp3 = resp3;
        if name.is_some() {
            self.name = name;
        }
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("meridian")),
            (
                Reply::text("version"),
                Reply::text(env!("CARGO_PKG_VERSION")),
            ),
            (Reply::text("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn select(&mut self, n: &[u8]) -> Reply {
        let index = std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        match index {
            Some(i) if i < self.settings.databases.len() => {
                self.db = i;
                Reply::OK
            }
            Some(_) => Reply::err(format!(
                "DB index is out of range: this region has databases 0..={} ({}), set in regions.toml [resp] databases",
                self.settings.databases.len() - 1,
                self.settings.databases.join(", ")
            )),
            None => Reply::err("value is not an integer or out of range"),
        }
    }

    fn client(&mut self, a: &[Bytes]) -> Reply {
        let Some((sub, rest)) = a.split_first() else {
            return arity("client");
        };
        match (text(sub).to_ascii_uppercase().as_str(), rest) {
            ("ID", []) => Reply::Int(self.id as i64),
            ("GETNAME", []) => self.name.clone().map_or(Reply::Null, Reply::text),
            ("SETNAME", [n]) => {
                if n.iter().any(|b| *b == b' ' || *b == b'\n') {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!n.is_empty()).then(|| text(n));
                Reply::OK
            }
            // Client libraries announce themselves (redis-py, go-redis); nothing to keep.
            ("SETINFO", [_, _]) => Reply::OK,
            (other, _) => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for 'CLIENT|{other}'; Meridian answers CLIENT ID, GETNAME, SETNAME, SETINFO"
            )),
        }
    }

    fn config(&self, a: &[Bytes]) -> Reply {
        let [sub, patterns @ ..] = a else {
            return arity("config");
        };
        if !sub.eq_ignore_ascii_case(b"GET") || patterns.is_empty() {
            return Reply::err(
                "Meridian answers CONFIG GET only; its configuration is regions.toml",
            );
        }
        // What redis-benchmark and redis-cli ask for, answered truthfully: every write is
        // logged and fsynced before it is answered.
        let known = [
            ("appendonly", "yes".to_owned()),
            ("appendfsync", "always".to_owned()),
            ("save", String::new()),
            ("databases", self.settings.databases.len().to_string()),
        ];
        let pairs = known
            .into_iter()
            // Parameter names are matched without regard to case, as Redis does.
            .filter(|(k, _)| {
                patterns
                    .iter()
                    .any(|p| glob(&p.to_ascii_lowercase(), k.as_bytes()))
            })
            .map(|(k, v)| (Reply::text(k), Reply::text(v)))
            .collect();
        Reply::Map(pairs)
    }

    async fn info(&self, a: &[Bytes]) -> Reply {
        let want = |section: &str| {
            a.is_empty()
                || a.iter().any(|s| {
                    s.eq_ignore_ascii_case(section.as_bytes())
                        || s.eq_ignore_ascii_case(b"all")
                        || s.eq_ignore_ascii_case(b"everything")
                })
        };
        let mut text = String::new();
        if want("server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:7.2.0\r\nmeridian_version:{}\r\nredis_mode:standalone\r\nmeridian_region:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                self.node.region()
            ));
        }
        if want("replication") {
            let status = match self.node.status().await {
                Ok(s) => s,
                Err(e) => return Reply::err(e),
            };
            // Every region takes writes (multi-leader): each is a master to the others.
            text.push_str(&format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:{}\r\n",
                status.peers.iter().filter(|p| p.connected).count()
            ));
            for (i, p) in status.peers.iter().enumerate() {
                text.push_str(&format!(
                    "slave{i}:region={},state={},lag_writes={},lag_ms={}\r\n",
                    p.region,
                    if p.connected {
                        "online"
                    } else {
                        "disconnected"
                    },
                    p.lag_writes,
                    p.lag_ms
                ));
            }
            text.push_str("\r\n");
        }
        if want("keyspace") {
            text.push_str("# Keyspace\r\n");
            for (i, table) in self.settings.databases.iter().enumerate() {
                text.push_str(&format!("db{i}:table={table}\r\n"));
            }
        }
        Reply::text(text)
    }

    /// Reads `key` of the selected table: its value, nil, or an error for siblings. A counter
    /// reads as its total, in decimal, as Redis's `GET` of a counter does.
    async fn get(&mut self, key: &[u8]) -> Reply {
        let table = self.table().to_owned();
        let (state, resolver, _) = match self.read(key).await {
            Ok(found) => found,
            Err(e) => return e,
        };
        match state.resolve(resolver.as_ref()) {
            Resolved::Absent => Reply::Null,
            Resolved::Value(v) => match resolver.counter() {
                Some(counter) => Reply::text(counter.total(&v).to_string()),
                None => Reply::Bulk(Bytes::from(v)),
            },
            Resolved::Siblings(s) => Reply::Error(format!(
                "MULTIVALUE the key has {} concurrent values (siblings) in table '{table}'; read them with MERIDIAN.SIBLINGS <key> and write back with MERIDIAN.SET <key> <value> <context> to resolve them",
                s.len()
            )),
        }
    }

    /// Reads `key` of the selected table once this region has everything the connection's
    /// session covers, and takes what the read saw into the session.
    pub(super) async fn read(&mut self, key: &[u8]) -> Result<Found, Reply> {
        let table = self.table().to_owned();
        let opts = ReadOptions {
            session: self.seen.session.clone(),
            level: self.read_level,
            timeout: None,
        };
        let (found, token) = match self.node.read_opts(&table, key, opts).await {
            Ok(Ok(read)) => read,
            Ok(Err(RequestError::Bootstrapping(b))) => return Err(loading(&b.progress)),
            Ok(Err(RequestError::Read(e))) => return Err(read_failed(&e)),
            Ok(Err(e)) => return Err(Reply::err(e)),
            Err(e) => return Err(Reply::err(e)),
        };
        match found {
            ReadResult::Found {
                state,
                resolver,
                regions,
                ..
            } => {
                self.seen.saw(&token);
                Ok((state, resolver, regions))
            }
            ReadResult::UnknownTable => Err(Reply::err(format!(
                "table '{table}' is not configured here"
            ))),
        }
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]`.
    async fn scan(&self, a: &[Bytes]) -> Reply {
        let cursor = match std::str::from_utf8(&a[0])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        {
            Some(c) => c,
            None => return Reply::err("invalid cursor"),
        };
        let (mut pattern, mut count) = (None, 10usize);
        let mut rest = &a[1..];
        while let [option, value, more @ ..] = rest {
            match text(option).to_ascii_uppercase().as_str() {
                "MATCH" => pattern = Some(value.clone()),
                "COUNT" => match text(value).parse::<usize>() {
                    Ok(n) if n > 0 => count = n.min(DBSIZE_PAGE),
                    _ => return Reply::err("value is not an integer or out of range"),
                },
                // Every Meridian value is a string.
                "TYPE" if value.eq_ignore_ascii_case(b"string") => {}
                "TYPE" => return Reply::Array(vec![Reply::text("0"), Reply::Array(Vec::new())]),
                _ => return Reply::err("syntax error"),
            }
            rest = more;
        }
        if !rest.is_empty() {
            return Reply::err("syntax error");
        }
        let table = self.table().to_owned();
        let after = match cursor {
            0 => None,
            c => match self.cursors.lock().map(|mut t| t.take(c)).ok().flatten() {
                Some((t, last)) if t == table => Some(last),
                _ => {
                    return Reply::err(
                        "invalid cursor: it was never returned for this database, or it is too old; start again from 0",
                    );
                }
            },
        };
        // The literal part of the pattern before its first wildcard narrows the listing.
        let prefix: Vec<u8> = pattern.as_ref().map_or_else(Vec::new, |p| {
            p.iter()
                .take_while(|b| !matches!(b, b'*' | b'?' | b'[' | b'\\'))
                .copied()
                .collect()
        });
        let scan = crate::node::Scan {
            table: table.clone(),
            prefix,
            after,
            limit: count,
        };
        let listing = match self.node.scan(scan).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => return Reply::err(format!("table '{table}' is not configured here")),
            Ok(Err(b)) => return loading(&b.progress),
            Err(e) => return Reply::err(e),
        };
        let next = match (listing.more, listing.keys.last()) {
            (true, Some(last)) => match self.cursors.lock() {
                Ok(mut t) => t.save(&table, last.clone()),
                Err(_) => return Reply::err("cursor table unavailable"),
            },
            _ => 0,
        };
        let keys = listing
            .keys
            .into_iter()
            .filter(|k| pattern.as_ref().is_none_or(|p| glob(p, k)))
            .map(|k| Reply::Bulk(Bytes::from(k)))
            .collect();
        Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
    }

    /// `DBSIZE`: the keys of the selected table that read as present, counted page by page.
    async fn dbsize(&self) -> Reply {
        let mut count = 0i64;
        let mut after = None;
        loop {
            let scan = crate::node::Scan {
                table: self.table().to_owned(),
                prefix: Vec::new(),
                after: after.take(),
                limit: DBSIZE_PAGE,
            };
            let listing = match self.node.scan(scan).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => return Reply::err("the selected table is not configured here"),
                Ok(Err(b)) => return loading(&b.progress),
                Err(e) => return Reply::err(e),
            };
            count += listing.keys.len() as i64;
            if !listing.more {
                return Reply::Int(count);
            }
            after = listing.keys.last().cloned();
        }
    }

    /// Whether `key` of the selected table has a live value (or siblings); `-LOADING` while
    /// this region is being bootstrapped (it cannot know).
    async fn live(&mut self, key: &[u8]) -> Result<bool, Reply> {
        match self.read(key).await {
            Ok((state, resolver, _)) => Ok(!matches!(
                state.resolve(resolver.as_ref()),
                Resolved::Absent
            )),
            Err(e @ Reply::Error(_)) if is_loading(&e) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Checks a key's and a value's size against the limits.
    pub(super) fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), Reply> {
        let s = &self.settings;
        if key.is_empty() || key.len() > s.max_key_bytes {
            return Err(Reply::err(format!(
                "key of {} bytes: keys are 1 to {} bytes (max_key_bytes)",
                key.len(),
                s.max_key_bytes
            )));
        }
        if let Some(v) = value
            && v.len() > s.max_value_bytes
        {
            return Err(Reply::err(format!(
                "value of {} bytes is above max_value_bytes ({})",
                v.len(),
                s.max_value_bytes
            )));
        }
        Ok(())
    }

    /// The options of a write from this connection: blind, carrying its session.
    pub(super) fn write_options(&self) -> WriteOptions {
        WriteOptions {
            session: self.seen.session.clone(),
            ..WriteOptions::default()
        }
    }

    /// The selected table's counter operations, or the error to answer when it keeps none.
    fn counter_table(&self) -> Option<&dyn conflict::CounterResolver> {
        self.node.resolver(self.table()).and_then(|r| r.counter())
    }

    /// Submits blind writes of `pairs`, answered `+OK` once all are durable.
    async fn set(&self, pairs: &[(Bytes, Bytes)]) -> Step {
        for (key, value) in pairs {
            if let Err(e) = self.check(key, Some(value)) {
                return Step::Now(e);
            }
        }
        if self.counter_table().is_some() {
            return Step::Now(Reply::err(format!(
                "table '{}' keeps counters, which SET cannot merge across regions: change them with INCR, INCRBY, DECR or DECRBY (DEL resets one)",
                self.table()
            )));
        }
        let mut pending = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let value = Value::Bytes(value.to_vec());
            match self
                .node
                .submit_write(self.table(), key, value, self.write_options())
                .await
            {
                Ok(p) => pending.push(p),
                Err(e) => return Step::Now(Reply::err(e)),
            }
        }
        Step::Writes(pending, Reply::OK)
    }

    /// `INCRBY key by` (and `INCR`, `DECR`, `DECRBY`): submitted now, answered with the
    /// counter's total once durable.
    async fn add(&self, key: &[u8], by: i64) -> Step {
        if let Err(e) = self.check(key, None) {
            return Step::Now(e);
        }
        if self.counter_table().is_none() {
            return Step::Now(Reply::Error(format!(
                "WRONGTYPE table '{}' does not keep counters: INCR and DECR work on a table whose resolver is a counter (resolver \"counter\" in regions.toml; SELECT its database)",
                self.table()
            )));
        }
        match self
            .node
            .submit_add(self.table(), key, by, self.write_options())
            .await
        {
            Ok(p) => Step::Write(p, |w| Reply::Int(w.receipt.total.unwrap_or_default())),
            Err(e) => Step::Now(Reply::err(e)),
        }
    }

    /// Deletes the live keys among `keys` (tombstones); answers how many there were.
    async fn delete(&mut self, keys: &[Bytes]) -> Step {
        let mut pending = Vec::new();
        for key in keys {
            if let Err(e) = self.check(key, None) {
                return Step::Now(e);
            }
            match self.live(key).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Step::Now(e),
            }
            match self
                .node
                .submit_write(self.table(), key, Value::Tombstone, self.write_options())
                .await
            {
                Ok(p) => pending.push(p),
                Err(e) => return Step::Now(Reply::err(e)),
            }
        }
        let n = pending.len() as i64;
        Step::Writes(pending, Reply::Int(n))
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`: enough for `redis-cli` to start.
fn command(a: &[Bytes]) -> Reply {
    match a.first().map(|s| text(s).to_ascii_uppercase()).as_deref() {
        None | Some("INFO") => Reply::Array(Vec::new()),
        Some("COUNT") => Reply::Int(COMMANDS.len() as i64),
        Some("DOCS") => Reply::Map(Vec::new()),
        Some(other) => Reply::err(format!("unknown subcommand 'COMMAND|{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Reply, WriteError, glob, is_loading, loading, write_error};

    /// A region being bootstrapped answers reads and writes with Redis's own `-LOADING`, which
    /// clients know to retry, carrying the transfer's progress.
    #[test]
    fn a_bootstrapping_region_answers_loading() {
        let progress = "fetching from us-east: 512 of about 1024 keys, 3 chunks";
        let expected = "LOADING this region is being bootstrapped from a snapshot (fetching from \
                        us-east: 512 of about 1024 keys, 3 chunks); retry later, or use another \
                        region";
        assert!(matches!(loading(progress), Reply::Error(e) if e == expected));
        let refused = WriteError::Bootstrapping {
            progress: progress.to_owned(),
        };
        assert!(matches!(write_error(&refused), Reply::Error(e) if e == expected));
        assert!(is_loading(&loading(progress)));
        assert!(!is_loading(&Reply::err(
            "LOADING is not the first word here"
        )));
    }

    #[test]
    fn glob_matches_as_redis_does() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"s?ve", b"save"));
        assert!(
            !glob(b"SAVE", b"save"),
            "case matters, as in Redis's SCAN MATCH"
        );
        assert!(!glob(b"app*x", b"appendonly"));
        assert!(!glob(b"save", b"saves"));
    }
}
