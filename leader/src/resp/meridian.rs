//! Commands a Redis server does not have, for what a multi-leader store adds: `WAIT` with
//! regions for replicas, session tokens (read-your-writes across regions) and the siblings of
//! a multi-value key with their causal context. Meridian's own commands share the prefix
//! `MERIDIAN.`, as Redis modules' commands share theirs.

use std::time::Duration;

use bytes::Bytes;
use conflict::Value;

use super::commands::{Step, text};
use super::conn::Connection;
use super::reply::Reply;
use crate::api::{decode_context, encode_context};
use crate::node::WriteOptions;

impl Connection {
    /// `WAIT numregions timeout`: blocks until `numregions` other regions have this
    /// connection's last write durably, or `timeout` ms pass (0: no limit), and answers how
    /// many other regions have it — Redis's `WAIT`, with regions for replicas. With no write
    /// yet on the connection, every region "has" it.
    pub(super) async fn wait(&self, regions: &[u8], timeout: &[u8]) -> Reply {
        let Ok(regions) = text(regions).parse::<i64>() else {
            return Reply::err("value is not an integer or out of range");
        };
        let timeout_ms = match text(timeout).parse::<i64>() {
            Ok(ms) if ms < 0 => return Reply::err("timeout is negative"),
            Ok(0) => u64::MAX,
            Ok(ms) => ms.unsigned_abs(),
            Err(_) => return Reply::err("timeout is not an integer or out of range"),
        };
        let regions = usize::try_from(regions.max(0)).unwrap_or(usize::MAX);
        let timeout = Duration::from_millis(timeout_ms);
        match self
            .node
            .wait_durable(self.seen.last_seq, regions, timeout)
            .await
        {
            Ok(have) => Reply::Int(have.len() as i64),
            Err(e) => Reply::err(e),
        }
    }

    /// `MERIDIAN.SESSION`: the connection's session token (nil before any read or write);
    /// `MERIDIAN.SESSION <token>`: adopt a token from elsewhere (another region's connection,
    /// an HTTP response's `x-meridian-session`), so this connection's reads and writes wait
    /// until this region has everything it covers.
    pub(super) fn session(&mut self, token: Option<&Bytes>) -> Reply {
        let Some(token) = token else {
            return match &self.seen.session {
                Some(s) => Reply::text(encode_context(s)),
                None => Reply::Null,
            };
        };
        match decode_context(&text(token)) {
            Ok(vv) => {
                self.seen.saw(&vv);
                Reply::OK
            }
            Err(e) => Reply::err(format!(
                "invalid session token: {e}; pass a token exactly as MERIDIAN.SESSION or the x-meridian-session header gave it"
            )),
        }
    }

    /// `MERIDIAN.READ`: how many regions this connection's reads consult (`default`: the
    /// table's `[read]` setting); `MERIDIAN.READ one|quorum|all|default` sets it. At
    /// `quorum`, a read joins the states of a majority of regions and sees every write
    /// acknowledged at `durability=quorum` (R + W > N); too few regions answering is
    /// `-NOREPLICAS`, never a local answer.
    pub(super) fn read_level(&mut self, level: Option<&Bytes>) -> Reply {
        let Some(level) = level else {
            return Reply::Simple(self.read_level.map_or("default", |l| l.as_str()));
        };
        let level = text(level).to_ascii_lowercase();
        if level == "default" {
            self.read_level = None;
            return Reply::OK;
        }
        match level.parse::<leader_core::ReadLevel>() {
            Ok(l) => {
                self.read_level = Some(l);
                Reply::OK
            }
            Err(e) => Reply::err(format!("{e}, or default")),
        }
    }

    /// `MERIDIAN.SIBLINGS key`: the key's causal context, then each sibling as
    /// `[value, region, hlc]` (a deleted sibling's value is nil), in canonical order. Write
    /// back with `MERIDIAN.SET key value context` to supersede exactly these.
    pub(super) async fn siblings(&mut self, key: &[u8]) -> Reply {
        let (state, _, regions) = match self.read(key).await {
            Ok(found) => found,
            Err(e) => return e,
        };
        let siblings = state
            .siblings
            .iter()
            .map(|s| {
                let value = match &s.value {
                    Value::Bytes(b) => Reply::Bulk(Bytes::copy_from_slice(b)),
                    Value::Tombstone => Reply::Null,
                };
                let region = regions
                    .get(&s.dot.replica)
                    .cloned()
                    .unwrap_or_else(|| format!("{:#}", s.dot.replica));
                Reply::Array(vec![
                    value,
                    Reply::text(region),
                    Reply::text(s.hlc.to_string()),
                ])
            })
            .collect();
        Reply::Array(vec![
            Reply::text(encode_context(&state.context)),
            Reply::Array(siblings),
        ])
    }

    /// `MERIDIAN.SET key value context` (`value` `None`: `MERIDIAN.DEL key context`): a write
    /// that supersedes exactly the siblings `context` covers; answered with the key's new
    /// context once durable.
    pub(super) async fn write_with_context(
        &self,
        key: &[u8],
        value: Option<&Bytes>,
        context: &[u8],
    ) -> Step {
        if let Err(e) = self.check(key, value.map(|v| v.as_ref())) {
            return Step::Now(e);
        }
        let context = match decode_context(&text(context)) {
            Ok(vv) => vv,
            Err(e) => {
                return Step::Now(Reply::err(format!(
                    "invalid context: {e}; pass the context exactly as MERIDIAN.SIBLINGS gave it"
                )));
            }
        };
        let value = value.map_or(Value::Tombstone, |v| Value::Bytes(v.to_vec()));
        let opts = WriteOptions {
            context: Some(context),
            ..self.write_options()
        };
        match self.node.submit_write(self.table(), key, value, opts).await {
            Ok(p) => Step::Write(p, |w| Reply::text(encode_context(&w.receipt.context))),
            Err(e) => Step::Now(Reply::err(e)),
        }
    }
}
