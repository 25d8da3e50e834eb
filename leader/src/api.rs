//! The client API: HTTP/JSON over axum.
//!
//! | route | what |
//! |---|---|
//! | `PUT /v1/kv/{table}/{key}` | write the body as the value; durable here before the reply |
//! | `DELETE /v1/kv/{table}/{key}` | write a tombstone |
//! | `GET /v1/kv/{table}/{key}` | the resolved value (raw bytes), or JSON with every sibling |
//! | `GET /v1/conflicts` | the conflict log, newest first (`table`, `limit`, `before`) |
//! | `GET /v1/status` | region, replica id, peers with link state, RTT and lag, applied vector |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | liveness |
//!
//! Every key response carries the key's causal context in the `x-meridian-context` header
//! (a URL-safe token). Sending it back on a write supersedes exactly what was read.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conflict::{Resolved, Sibling, Value, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Limits;
use crate::node::{NodeHandle, ReadResult};

/// Header carrying a key's causal context.
pub const CONTEXT_HEADER: &str = "x-meridian-context";
/// Header carrying the number of siblings a key has.
pub const SIBLINGS_HEADER: &str = "x-meridian-siblings";

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    limits: Limits,
    token: Option<String>,
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
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(state)
}

/// A JSON error with a stable code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "code": self.code });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<crate::node::NodeError> for ApiError {
    fn from(e: crate::node::NodeError) -> Self {
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
        if given != Some(expected.as_str()) {
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
    Path((table, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value could not be read ({e}); values are limited to {} bytes (limits.max_value_bytes)", s.limits.max_value_bytes),
        )
    })?;
    if body.len() > s.limits.max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "the value is {} bytes and the limit is {} (limits.max_value_bytes)",
                body.len(),
                s.limits.max_value_bytes
            ),
        ));
    }
    write(s, table, key, headers, Value::Bytes(body.to_vec())).await
}

async fn delete_key(
    State(s): State<AppState>,
    Path((table, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(s, table, key, headers, Value::Tombstone).await
}

async fn write(
    s: AppState,
    table: String,
    key: String,
    headers: HeaderMap,
    value: Value,
) -> Result<Response, ApiError> {
    check_key(&s.limits, &key)?;
    let context = request_context(&headers)?;
    let receipt = match s.node.write(&table, key.as_bytes(), value, context).await? {
        Ok(r) => r,
        Err(e @ leader_core::WriteError::UnknownTable(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_table",
                e.to_string(),
            ));
        }
        Err(e @ leader_core::WriteError::TooManySiblings { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_siblings",
                e.to_string(),
            ));
        }
        Err(leader_core::WriteError::Refused(e)) => return Err(refused(e)),
    };
    let body = json!({
        "region": s.node.region(),
        "dot": { "replica": receipt.dot.replica.to_string(), "seq": receipt.dot.seq.0 },
        "hlc": receipt.hlc.to_string(),
        "conflict": receipt.conflict,
        "context": encode_context(&receipt.context),
    });
    Ok(([context_header(&receipt.context)], axum::Json(body)).into_response())
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
        replica: s.dot.replica.to_string(),
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
    Path((table, key)): Path<(String, String)>,
    Query(params): Query<GetParams>,
) -> Result<Response, ApiError> {
    check_key(&s.limits, &key)?;
    let ReadResult::Found {
        state,
        resolver,
        regions,
    } = s.node.read(&table, key.as_bytes()).await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_table",
            format!(
                "table '{table}' is not configured; add it under [tables] in regions.toml or use one of the configured tables"
            ),
        ));
    };
    let resolved = state.resolve(resolver.as_ref());
    let count = HeaderValue::from(state.siblings.len());
    let headers = [
        context_header(&state.context),
        (header::HeaderName::from_static(SIBLINGS_HEADER), count),
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
    Query(p): Query<ConflictParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(50).min(MAX_CONFLICT_PAGE);
    let status = s.node.status().await?;
    let regions: BTreeMap<String, String> = status
        .applied
        .iter()
        .map(|(region, replica, _)| (replica.to_string(), region.clone()))
        .collect();
    let all = s.node.conflicts().await?;
    let page: Vec<serde_json::Value> = all
        .iter()
        .rev()
        .filter(|c| p.before.is_none_or(|b| c.id < b))
        .filter(|c| p.table.as_ref().is_none_or(|t| &c.table == t))
        .take(limit)
        .map(|c| {
            let siblings: Vec<serde_json::Value> = c
                .siblings
                .iter()
                .map(|(dot, hlc, kept)| {
                    let replica = dot.replica.to_string();
                    json!({
                        "region": regions.get(&replica).cloned().unwrap_or_else(|| "unknown".into()),
                        "replica": replica,
                        "seq": dot.seq.0,
                        "hlc": hlc.to_string(),
                        "kept": kept,
                    })
                })
                .collect();
            json!({
                "id": c.id,
                "detected_ms": c.detected_ms,
                "table": c.table,
                "key": String::from_utf8_lossy(&c.key),
                "resolver": c.resolver,
                "siblings": siblings,
                "outcome": c.outcome,
            })
        })
        .collect();
    let next = page.last().and_then(|c| c["id"].as_u64());
    Ok(
        axum::Json(json!({ "conflicts": page, "next_before": next, "total_logged": all.len() }))
            .into_response(),
    )
}

async fn status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    Ok(axum::Json(st.to_json()).into_response())
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
