//! The client API: HTTP/JSON over axum.
//!
//! | route | what |
//! |---|---|
//! | `PUT /v1/kv/{table}/{key}` | write the body as the value; durable here before the reply |
//! | `DELETE /v1/kv/{table}/{key}` | write a tombstone |
//! | `GET /v1/kv/{table}/{key}` | the resolved value (raw bytes), or JSON with every sibling |
//! | `GET /v1/conflicts` | the conflict log, newest first (`table`, `limit`, `before`) |
//! | `GET /v1/status` | region, replica id, peers with link state, RTT and lag, applied vector |
//! | `GET /v1/status/digest` | SHA-256 over every key state and the applied vector: equal digests mean equal data |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | liveness |
//!
//! Every key response carries the key's causal context in the `x-meridian-context` header
//! (a URL-safe token). Sending it back on a write supersedes exactly what was read.
//!
//! Every error, including a malformed path or query, an unknown route and a method a route
//! does not accept, is JSON `{"error": "<what happened and what to do>", "code": "<stable>"}`.

pub mod admin;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conflict::{ReplicaId, Resolved, Sibling, Value, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Limits;
use crate::node::{Behind, Node, NodeError, NodeHandle, ReadResult, RequestError, WriteOptions};
use crate::status::{ConflictPage, ConflictWrite, Digest, LoggedConflict, Status};
use leader_core::Durability;

/// Header carrying a key's causal context.
pub const CONTEXT_HEADER: &str = "x-meridian-context";
/// Header carrying the number of siblings a key has.
pub const SIBLINGS_HEADER: &str = "x-meridian-siblings";
/// Header (request and response) carrying a session token for read-your-writes and
/// monotonic reads across regions.
pub const SESSION_HEADER: &str = "x-meridian-session";
/// Request header choosing a write's durability (`local`, `one`, `quorum`, `all`).
pub const DURABILITY_HEADER: &str = "x-meridian-durability";
/// Request header bounding the wait for a write's durability, in ms.
pub const TIMEOUT_HEADER: &str = "x-meridian-timeout-ms";

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) node: NodeHandle,
    limits: Limits,
    token: Option<String>,
}

/// Binds the API of `node` at `addr` and serves it until the node stops (the node's shutdown
/// signal ends the server, and [`Node::shutdown`] waits for it).
pub async fn start(
    node: &mut Node,
    addr: SocketAddr,
    limits: Limits,
    token: Option<String>,
) -> Result<(), NodeError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API listens on a non-loopback address; set MERIDIAN_API_TOKEN to require a bearer token");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let handle = node.handle();
    let router = router(handle.clone(), limits, token);
    let mut stop = node.stopping();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!("API server failed: {e}");
        }
    });
    tracing::info!(region = handle.region(), api = %bound, peer = %node.peer_addr(), "region leader started");
    node.attach_api(task, bound);
    Ok(())
}

/// Builds the API router for a node.
pub fn router(node: NodeHandle, limits: Limits, token: Option<String>) -> Router {
    let body_limit = limits.max_value_bytes + 1;
    let state = AppState {
        node,
        limits,
        token,
    };
    let protected = Router::new()
        .route(
            "/v1/kv/{table}/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/kv/{table}", get(list_keys))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/status", get(status))
        .route("/v1/status/digest", get(digest))
        .route("/metrics", get(metrics))
        .merge(admin::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // Without this, `PUT /healthz` would answer 405 with an empty body.
        .method_not_allowed_fallback(method_not_allowed)
        .merge(protected)
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "there is no route {}; the API serves /v1/kv/{{table}}/{{key}}, /v1/conflicts, \
             /v1/status, /metrics and /healthz",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    // axum adds the `Allow` header to this response, listing what the route accepts.
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} {} is not supported; the Allow header lists the methods this route accepts",
            uri.path()
        ),
    )
}

/// A path the router matched but whose segments do not decode (e.g. a key that is not UTF-8
/// once percent-decoded).
pub(crate) fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_path",
        format!(
            "{}; tables and keys are UTF-8 text, percent-encoded in the path",
            e.body_text()
        ),
    )
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_query",
        format!(
            "{}; see the API reference for the parameters",
            e.body_text()
        ),
    )
}

/// A JSON error with a stable code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// More fields for the JSON body (e.g. the lag of a region behind a session).
    extra: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "code": self.code });
        if let Some(serde_json::Value::Object(extra)) = self.extra {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Both 503s (a region behind a session, writes paced for a lagging region) clear
            // on their own within about a second.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; retry against this or another region"),
        )
    }
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let expected = format!("Bearer {token}");
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| same_secret(g.as_bytes(), expected.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API requires `Authorization: Bearer <token>` with the token from MERIDIAN_API_TOKEN",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares secrets in time that depends only on their lengths, so response timing does not
/// reveal how much of a guessed token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Encodes a causal context as a URL-safe token.
pub fn encode_context(vv: &VersionVector) -> String {
    URL_SAFE_NO_PAD.encode(vv.to_bytes())
}

/// Decodes a token made by [`encode_context`].
pub fn decode_context(token: &str) -> Result<VersionVector, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|e| format!("the context token is not URL-safe base64 ({e})"))?;
    VersionVector::from_bytes(&bytes)
        .map_err(|e| format!("the context token does not decode ({e})"))
}

fn context_header(vv: &VersionVector) -> (header::HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&encode_context(vv)).unwrap_or_else(|_| HeaderValue::from_static(""));
    (header::HeaderName::from_static(CONTEXT_HEADER), value)
}

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

async fn put_key(
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
    write(s, table, key, &uri, headers, Value::Bytes(body.to_vec())).await
}

async fn delete_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    write(s, table, key, &uri, headers, Value::Tombstone).await
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

async fn write(
    s: AppState,
    table: String,
    key: String,
    uri: &Uri,
    headers: HeaderMap,
    value: Value,
) -> Result<Response, ApiError> {
    check_key(&s.limits, &key)?;
    let opts = write_options(uri, &headers)?;
    let written = match s
        .node
        .write_with(&table, key.as_bytes(), value, opts)
        .await?
    {
        Ok(w) => w,
        Err(RequestError::Behind(b)) => return Err(behind(&b)),
        Err(RequestError::Write(e @ leader_core::WriteError::UnknownTable(_))) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_table",
                e.to_string(),
            ));
        }
        Err(RequestError::Write(e @ leader_core::WriteError::TooManySiblings { .. })) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_siblings",
                e.to_string(),
            ));
        }
        Err(RequestError::Write(e @ leader_core::WriteError::ContextTooLarge { .. })) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "context_too_large",
                e.to_string(),
            ));
        }
        Err(RequestError::Write(leader_core::WriteError::Refused(e))) => return Err(refused(e)),
        Err(RequestError::Write(
            e @ (leader_core::WriteError::Overloaded { .. }
            | leader_core::WriteError::Backlogged { .. }),
        )) => {
            return Err(overloaded(&e));
        }
        Err(RequestError::Write(e @ leader_core::WriteError::InvalidValue { .. })) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_value",
                e.to_string(),
            ));
        }
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
struct GetParams {
    #[serde(default)]
    siblings: bool,
    session: Option<String>,
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

async fn get_key(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
    req_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((table, key)) = path.map_err(bad_path)?;
    let Query(params) = params.map_err(bad_query)?;
    check_key(&s.limits, &key)?;
    let session = request_session(params.session.as_deref(), &req_headers)?;
    let (read, token) = match s.node.read_with(&table, key.as_bytes(), session).await? {
        Ok(r) => r,
        Err(RequestError::Behind(b)) => return Err(behind(&b)),
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
    } = read
    else {
        return Err(unknown_table(&table));
    };
    let resolved = state.resolve(resolver.as_ref());
    let count = HeaderValue::from(state.siblings.len());
    let headers = [
        context_header(&state.context),
        (header::HeaderName::from_static(SIBLINGS_HEADER), count),
        session_header(&token),
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
struct ListParams {
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
async fn list_keys(
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
    let Some(listing) = s.node.scan(scan).await? else {
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

#[derive(Debug, Deserialize)]
struct ConflictParams {
    table: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

/// Most conflicts one page returns.
const MAX_CONFLICT_PAGE: usize = 1000;

async fn conflicts(
    State(s): State<AppState>,
    params: Result<Query<ConflictParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    let limit = p.limit.unwrap_or(50).min(MAX_CONFLICT_PAGE);
    let regions = replica_regions(&s.node.status().await?);
    let all = s.node.conflicts().await?;
    let page: Vec<LoggedConflict> = all
        .iter()
        .rev()
        .filter(|c| p.before.is_none_or(|b| c.id < b))
        .filter(|c| p.table.as_ref().is_none_or(|t| &c.table == t))
        .take(limit)
        .map(|c| LoggedConflict {
            detected_ms: c.detected_ms,
            id: c.id,
            key: String::from_utf8_lossy(&c.key).into_owned(),
            outcome: c.outcome.clone(),
            resolver: c.resolver.clone(),
            siblings: c
                .siblings
                .iter()
                .map(|(dot, hlc, kept)| ConflictWrite {
                    hlc: hlc.to_string(),
                    kept: *kept,
                    region: regions
                        .get(&dot.replica)
                        .cloned()
                        .unwrap_or_else(|| "unknown".into()),
                    replica: dot.replica,
                    seq: dot.seq.0,
                })
                .collect(),
            table: c.table.clone(),
        })
        .collect();
    let next_before = page.last().map(|c| c.id);
    let page = ConflictPage {
        conflicts: page,
        next_before,
        total_logged: all.len() as u64,
    };
    Ok(axum::Json(page).into_response())
}

/// Region names by replica id (full UUID), for naming the writes in conflict records: this
/// region, every peer whose hello named its replica, and every origin durably applied here.
/// The applied vector alone is not enough: a conflict is logged when a peer's write is
/// applied, before the fsync that makes it durable, and a read can come in between.
fn replica_regions(status: &crate::snapshot::Status) -> BTreeMap<ReplicaId, String> {
    let own = (status.replica, status.region.clone());
    let peers = status
        .peers
        .iter()
        .filter_map(|p| Some((p.replica?, p.region.clone())));
    let applied = status
        .applied
        .iter()
        .map(|(region, replica, _)| (*replica, region.clone()));
    std::iter::once(own).chain(peers).chain(applied).collect()
}

async fn status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    Ok(axum::Json(Status::from(&st)).into_response())
}

/// The state digest, for convergence checks across regions (`meridian bench`). The applied
/// vector is read just before the digest: compare digests once the vectors are equal.
async fn digest(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    let digest = s.node.digest().await?;
    let doc = Digest {
        applied: st
            .applied
            .iter()
            .map(|(r, _, seq)| (r.clone(), *seq))
            .collect(),
        digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
        region: st.region,
    };
    Ok(axum::Json(doc).into_response())
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    let text = s.node.metrics.render(&st);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
