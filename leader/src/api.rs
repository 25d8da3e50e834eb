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
//! | `POST /v1/repair` | anti-entropy now with every connected peer; answers when the rounds are over, with what they found |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | liveness |
//!
//! Every key response carries the key's causal context in the `x-meridian-context` header
//! (a URL-safe token). Sending it back on a write supersedes exactly what was read.
//!
//! Every error, including a malformed path or query, an unknown route and a method a route
//! does not accept, is JSON `{"error": "<what happened and what to do>", "code": "<stable>"}`.
//!
//! # Layout
//! - this file: the router, its state, authentication, errors ([`ApiError`]) and the
//!   context token;
//! - `kv`: the key routes (write, delete, read, list) and what they read from a request;
//! - `region`: the region's own documents (conflict log, status, digest, metrics) and
//!   `POST /v1/repair`;
//! - [`admin`]: link control for simulations.

pub mod admin;
mod kv;
mod region;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conflict::VersionVector;
use serde_json::json;

use crate::config::Limits;
use crate::node::{Node, NodeError, NodeHandle};

use kv::{add_key, delete_key, get_key, list_keys, put_key};
use region::{conflicts, digest, metrics, repair, status};

/// Header carrying a key's causal context.
pub const CONTEXT_HEADER: &str = "x-meridian-context";
/// Header carrying the number of siblings a key has.
pub const SIBLINGS_HEADER: &str = "x-meridian-siblings";
/// Header (request and response) carrying a session token for read-your-writes and
/// monotonic reads across regions.
pub const SESSION_HEADER: &str = "x-meridian-session";
/// Request header choosing a write's durability (`local`, `one`, `quorum`, `all`).
pub const DURABILITY_HEADER: &str = "x-meridian-durability";
/// Response header of a read: the regions whose state of the key it joined, this one first
/// (`read=quorum` and `read=all` consult others).
pub const ANSWERED_HEADER: &str = "x-meridian-read-regions";
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
        .route("/v1/kv/{table}/{key}/add", axum::routing::post(add_key))
        .route("/v1/kv/{table}", get(list_keys))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/status", get(status))
        .route("/v1/status/digest", get(digest))
        .route("/v1/repair", axum::routing::post(repair))
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
