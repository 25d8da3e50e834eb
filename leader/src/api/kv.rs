//! The key routes: `PUT`/`DELETE`/`GET /v1/kv/{table}/{key}` and `GET /v1/kv/{table}` (a
//! page of keys), with what they read from the request (key, context, durability, timeout,
//! session) and how a refusal is answered.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conflict::{Resolved, Sibling, Value, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Limits;
use crate::node::{Behind, Change, ReadOptions, ReadResult, RequestError, WriteOptions};
use leader_core::{Durability, ReadError, ReadLevel};

use super::{
    ANSWERED_HEADER, ApiError, AppState, CONTEXT_HEADER, DURABILITY_HEADER, SESSION_HEADER,
    SIBLINGS_HEADER, TIMEOUT_HEADER, bad_path, bad_query, context_header, decode_context,
    encode_context,
};

fn check_key(limits: &Limits, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_key",
            "the key is empty",
        ));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "key_too_large",
            format!(
                "the key is {} bytes and the limit is {} (limits.max_key_bytes); use a shorter key",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    Ok(())
}

fn request_context(headers: &HeaderMap) -> Result<Option<VersionVector>, ApiError> {
    let Some(value) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_context",
            "the x-meridian-context header is not ASCII",
        )
    })?;
    if text.is_empty() {
        return Ok(None);
    }
    decode_context(text).map(Some).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_context",
            format!("{e}; send back the x-meridian-context value exactly as a read returned it"),
        )
    })
}

pub(super) async fn put_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!(
                    "the value is more than the limit of {} bytes (limits.max_value_bytes); \
                     store large objects elsewhere and write a reference",
                    s.limits.max_value_bytes
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read ({e}); send the value as the body"),
            )
        }
    })?;
    if body.len() > s.limits.max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "the value is {} bytes and the limit is {} (limits.max_value_bytes); store large objects elsewhere and write a reference",
                body.len(),
                s.limits.max_value_bytes
            ),
        ));
    }
    let value = Value::Bytes(body.to_vec());
    write(s, table, key, &uri, headers, Change::Put(value)).await
}

pub(super) async fn delete_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    write(s, table, key, &uri, headers, Change::Put(Value::Tombstone)).await
}

/// `?by=` of an addition.
#[derive(Debug, Deserialize)]
struct AddParams {
    by: Option<i64>,
}

/// `POST /v1/kv/{table}/{key}/add?by=n` (default 1; negative subtracts): adds to a counter
/// in one step of the region's state machine and answers the write's reply with the
/// counter's `total` (Redis's `INCRBY` over HTTP). The table's resolver must keep counters.
pub(super) async fn add_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    let by = match Query::<AddParams>::try_from_uri(&uri) {
        Ok(Query(p)) => p.by.unwrap_or(1),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "by must be a whole number from -9223372036854775808 to 9223372036854775807",
            ));
        }
    };
    write(s, table, key, &uri, headers, Change::Add(by)).await
}

/// Per-request write options, from the query string or headers (the query wins).
#[derive(Debug, Default, Deserialize)]
struct WriteParams {
    durability: Option<String>,
    timeout_ms: Option<u64>,
    session: Option<String>,
}

/// Most a client may ask a write to wait for its durability.
const MAX_WRITE_TIMEOUT_MS: u64 = 60_000;

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_header",
                format!("the {name} header is not ASCII"),
            )
        }),
    }
}

fn write_options(uri: &Uri, headers: &HeaderMap) -> Result<WriteOptions, ApiError> {
    let Query(q) = Query::<WriteParams>::try_from_uri(uri).map_err(bad_query)?;
    let durability = match q
        .durability
        .as_deref()
        .or(header_str(headers, DURABILITY_HEADER)?)
    {
        None => None,
        Some(d) => Some(d.parse::<Durability>().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_durability", e.to_string())
        })?),
    };
    let timeout_ms = match q.timeout_ms {
        Some(t) => Some(t),
        None => match header_str(headers, TIMEOUT_HEADER)? {
            None => None,
            Some(t) => Some(t.trim().parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_timeout",
                    format!("{TIMEOUT_HEADER} must be a whole number of milliseconds"),
                )
            })?),
        },
    };
    if timeout_ms.is_some_and(|t| t > MAX_WRITE_TIMEOUT_MS) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_timeout",
            format!(
                "timeout_ms may be at most {MAX_WRITE_TIMEOUT_MS}; the write keeps replicating after a timeout anyway"
            ),
        ));
    }
    Ok(WriteOptions {
        context: request_context(headers)?,
        durability,
        timeout: timeout_ms.map(std::time::Duration::from_millis),
        session: request_session(q.session.as_deref(), headers)?,
    })
}

/// The session token of a request: `?session=` or the `x-meridian-session` header.
fn request_session(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<VersionVector>, ApiError> {
    let Some(token) = query
        .or(header_str(headers, SESSION_HEADER)?)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    decode_context(token).map(Some).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_session",
            format!(
                "{e}; send back the x-meridian-session value exactly as a response returned it"
            ),
        )
    })
}

fn session_header(vv: &VersionVector) -> (header::HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&encode_context(vv)).unwrap_or_else(|_| HeaderValue::from_static(""));
    (header::HeaderName::from_static(SESSION_HEADER), value)
}

/// `503 overloaded`: writes here are paced for a region that lags (`[limits] pace_lag_writes`).
fn overloaded(e: &leader_core::WriteError) -> ApiError {
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string());
    if let leader_core::WriteError::Overloaded {
        peer,
        lag_writes,
        limit,
    } = e
    {
        err.extra =
            Some(json!({ "lagging_region": peer, "lag_writes": lag_writes, "limit": limit }));
    }
    err
}

fn behind(b: &Behind) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "behind_session",
        b.to_string(),
    );
    let lag: Vec<serde_json::Value> = b
        .missing
        .iter()
        .map(|(region, have, need)| json!({ "origin": region, "applied": have, "needed": need, "lag_writes": need - have }))
        .collect();
    e.extra = Some(
        json!({ "region": b.region, "lag": lag, "waited_ms": b.waited_ms, "session": encode_context(&b.session) }),
    );
    e
}

/// `503 bootstrapping`: this region is being bootstrapped from a snapshot and serves no reads
/// and takes no writes until it has caught up; `progress` says where the transfer stands.
pub(super) fn bootstrapping(message: String, progress: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "bootstrapping", message);
    e.extra = Some(json!({ "progress": progress }));
    e
}

async fn write(
    s: AppState,
    table: String,
    key: String,
    uri: &Uri,
    headers: HeaderMap,
    change: Change,
) -> Result<Response, ApiError> {
    check_key(&s.limits, &key)?;
    let opts = write_options(uri, &headers)?;
    let answer = match change {
        Change::Put(value) => {
            s.node
                .write_with(&table, key.as_bytes(), value, opts)
                .await?
        }
        Change::Add(by) => s.node.add(&table, key.as_bytes(), by, opts).await?,
    };
    let written = match answer {
        Ok(w) => w,
        Err(RequestError::Behind(b)) => return Err(behind(&b)),
        Err(RequestError::Write(e)) => return Err(write_refused(e)),
        Err(RequestError::Bootstrapping(b)) => {
            return Err(bootstrapping(b.to_string(), &b.progress));
        }
        Err(RequestError::Read(e)) => return Err(read_failed(&e)),
    };
    let receipt = &written.receipt;
    // Each token is encoded once, for the body and its header. The body is serialised from a
    // struct rather than built as a `serde_json::Value` map: this runs once per write.
    let context = encode_context(&receipt.context);
    let session = encode_context(&written.session);
    let headers = [
        token_header(CONTEXT_HEADER, &context),
        token_header(SESSION_HEADER, &session),
    ];
    let timed_out = receipt.timed_out;
    let message = timed_out.then(|| {
        format!(
            "the write is committed in {} and durable in {}; it did not reach durability '{}' in time and keeps replicating (it is not rolled back)",
            s.node.region(),
            receipt.durable_in.join(", "),
            receipt.durability
        )
    });
    let body = WriteBody {
        conflict: receipt.conflict,
        context,
        dot: DotBody {
            replica: format!("{:#}", receipt.dot.replica),
            seq: receipt.dot.seq.0,
        },
        durability: receipt.durability.as_str(),
        durable_in: &receipt.durable_in,
        hlc: receipt.hlc.to_string(),
        message,
        region: s.node.region(),
        session,
        timed_out: timed_out.then_some(true),
        total: receipt.total,
    };
    let status = if timed_out {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, headers, axum::Json(body)).into_response())
}

/// The JSON body of a write's reply. Fields in alphabetical order, as the `serde_json::Value`
/// map this replaced printed them.
#[derive(Serialize)]
struct WriteBody<'a> {
    conflict: bool,
    context: String,
    dot: DotBody,
    durability: &'a str,
    durable_in: &'a [String],
    hlc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    region: &'a str,
    session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timed_out: Option<bool>,
    /// An addition's counter total.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
}

/// A dot in a write's reply.
#[derive(Serialize)]
struct DotBody {
    replica: String,
    seq: u64,
}

/// A header carrying an encoded token (URL-safe base64: always a valid header value).
fn token_header(name: &'static str, token: &str) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(token).unwrap_or_else(|_| HeaderValue::from_static(""));
    (header::HeaderName::from_static(name), value)
}

fn refused(e: conflict::WriteRefused) -> ApiError {
    let (status, code) = match &e {
        conflict::WriteRefused::ValueTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
        }
        conflict::WriteRefused::TooManySiblings { .. } => {
            (StatusCode::CONFLICT, "too_many_siblings")
        }
        conflict::WriteRefused::ContextAhead { .. } => (StatusCode::CONFLICT, "context_ahead"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "refused"),
    };
    ApiError::new(status, code, e.to_string())
}

#[derive(Debug, Deserialize)]
pub(super) struct GetParams {
    #[serde(default)]
    siblings: bool,
    session: Option<String>,
    /// `one`, `quorum` or `all`; the table's `[read]` default when absent.
    read: Option<String>,
    /// How long a read above `one` waits for other regions, in ms.
    timeout_ms: Option<u64>,
}

/// The read options a `GET` asks for.
fn read_options(
    params: &GetParams,
    session: Option<VersionVector>,
) -> Result<ReadOptions, ApiError> {
    let level = match params.read.as_deref() {
        None => None,
        Some(l) => Some(l.parse::<ReadLevel>().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_read_level", e.to_string())
        })?),
    };
    if params.timeout_ms.is_some_and(|t| t > MAX_WRITE_TIMEOUT_MS) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_timeout",
            format!("timeout_ms may be at most {MAX_WRITE_TIMEOUT_MS}"),
        ));
    }
    Ok(ReadOptions {
        session,
        level,
        timeout: params.timeout_ms.map(std::time::Duration::from_millis),
    })
}

/// `503 quorum_unavailable` (too few regions answered a read above `one`, naming those that
/// did) or `503 overloaded`.
fn read_failed(e: &ReadError) -> ApiError {
    match e {
        ReadError::TooFewRegions {
            level,
            needed,
            answered,
            missing,
            waited_ms,
        } => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "quorum_unavailable",
                e.to_string(),
            );
            let missing: BTreeMap<&str, &str> = missing
                .iter()
                .map(|(r, why)| (r.as_str(), why.as_str()))
                .collect();
            err.extra = Some(json!({
                "read": level.as_str(),
                "needed": needed,
                "answered": answered,
                "missing": missing,
                "waited_ms": waited_ms,
            }));
            err
        }
        ReadError::Overloaded { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
        }
        ReadError::Bootstrapping { progress } => bootstrapping(e.to_string(), progress),
        ReadError::UnknownTable(t) => unknown_table(t),
    }
}

/// One sibling as the API shows it.
#[derive(Debug, Serialize)]
struct SiblingView {
    region: String,
    replica: String,
    seq: u64,
    hlc: String,
    hlc_raw: u64,
    tombstone: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

fn sibling_view(s: &Sibling, regions: &BTreeMap<conflict::ReplicaId, String>) -> SiblingView {
    let (tombstone, value, value_base64) = match &s.value {
        Value::Tombstone => (true, None, None),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(text) => (false, Some(text.to_owned()), None),
            Err(_) => (false, None, Some(URL_SAFE_NO_PAD.encode(b))),
        },
    };
    SiblingView {
        region: regions
            .get(&s.dot.replica)
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        replica: format!("{:#}", s.dot.replica),
        seq: s.dot.seq.0,
        hlc: s.hlc.to_string(),
        hlc_raw: s.hlc.as_u64(),
        tombstone,
        value,
        value_base64,
    }
}

pub(super) async fn get_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
    req_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    let Query(params) = params.map_err(bad_query)?;
    check_key(&s.limits, &key)?;
    let session = request_session(params.session.as_deref(), &req_headers)?;
    let opts = read_options(&params, session)?;
    let (read, token) = match s.node.read_opts(&table, key.as_bytes(), opts).await? {
        Ok(r) => r,
        Err(RequestError::Behind(b)) => return Err(behind(&b)),
        Err(RequestError::Read(e)) => return Err(read_failed(&e)),
        Err(RequestError::Bootstrapping(b)) => {
            return Err(bootstrapping(b.to_string(), &b.progress));
        }
        Err(RequestError::Write(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
            ));
        }
    };
    let ReadResult::Found {
        state,
        resolver,
        regions,
        answered,
    } = read
    else {
        return Err(unknown_table(&table));
    };
    let resolved = state.resolve(resolver.as_ref());
    let count = HeaderValue::from(state.siblings.len());
    let answered_by = HeaderValue::from_str(&answered.join(","))
        .expect("region names are ASCII (checked at config load)");
    let headers = [
        context_header(&state.context),
        (header::HeaderName::from_static(SIBLINGS_HEADER), count),
        session_header(&token),
        (
            header::HeaderName::from_static(ANSWERED_HEADER),
            answered_by,
        ),
    ];
    let multi = matches!(resolved, Resolved::Siblings(_));
    if params.siblings || multi {
        let siblings: Vec<SiblingView> = state
            .siblings
            .iter()
            .map(|x| sibling_view(x, &regions))
            .collect();
        let body = json!({
            "table": table,
            "key": key,
            "resolver": format!("{}@{}", resolver.name(), resolver.version()),
            "resolved": match &resolved {
                Resolved::Absent => json!({ "absent": true }),
                Resolved::Value(v) => match std::str::from_utf8(v) {
                    Ok(t) => json!({ "value": t }),
                    Err(_) => json!({ "value_base64": URL_SAFE_NO_PAD.encode(v) }),
                },
                Resolved::Siblings(v) => json!({ "siblings": v.len() }),
            },
            "siblings": siblings,
            "context": encode_context(&state.context),
            "answered": answered,
        });
        let code = if matches!(resolved, Resolved::Absent) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        return Ok((code, headers, axum::Json(body)).into_response());
    }
    match resolved {
        Resolved::Value(v) => Ok((headers, [(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()),
        _ => Ok((
            StatusCode::NOT_FOUND,
            headers,
            axum::Json(json!({ "error": format!("key '{key}' has no value in table '{table}'"), "code": "not_found" })),
        )
            .into_response()),
    }
}

/// The answer to a write the state machine refused (nothing was written).
fn write_refused(e: leader_core::WriteError) -> ApiError {
    use leader_core::WriteError as E;
    let (status, code) = match &e {
        E::UnknownTable(_) => (StatusCode::NOT_FOUND, "unknown_table"),
        E::TooManySiblings { .. } => (StatusCode::CONFLICT, "too_many_siblings"),
        E::ContextTooLarge { .. } => (StatusCode::CONFLICT, "context_too_large"),
        E::Refused(r) => return refused(r.clone()),
        E::Overloaded { .. } | E::Backlogged { .. } => return overloaded(&e),
        E::InvalidValue { .. } => (StatusCode::BAD_REQUEST, "invalid_value"),
        E::NotACounter { .. } => (StatusCode::BAD_REQUEST, "not_a_counter"),
        E::Bootstrapping { progress } => return bootstrapping(e.to_string(), progress),
    };
    ApiError::new(status, code, e.to_string())
}

fn unknown_table(table: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_table",
        format!(
            "table '{table}' is not configured; add it under [tables] in regions.toml or use one of the configured tables"
        ),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// Most keys one page of `GET /v1/kv/{table}` lists.
const MAX_KEY_PAGE: usize = 1000;

/// One page of a table's keys.
#[derive(Debug, Serialize)]
struct KeyPage {
    /// Keys that read as present, in byte order.
    keys: Vec<String>,
    /// Pass as `after` for the next page; `null` when this was the last.
    next: Option<String>,
}

/// `GET /v1/kv/{table}?prefix=&after=&limit=`: the table's keys page by page.
pub(super) async fn list_keys(
    State(s): State<AppState>,
    Path(table): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_KEY_PAGE);
    let scan = crate::node::Scan {
        table: table.clone(),
        prefix: p.prefix.unwrap_or_default().into_bytes(),
        after: p.after.map(String::into_bytes),
        limit,
    };
    let listing = s
        .node
        .scan(scan)
        .await?
        .map_err(|b| bootstrapping(b.to_string(), &b.progress))?;
    let Some(listing) = listing else {
        return Err(unknown_table(&table));
    };
    let keys: Vec<String> = listing
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let next = listing.more.then(|| keys.last().cloned()).flatten();
    Ok(axum::Json(KeyPage { keys, next }).into_response())
}
