//! Link control for simulations and fault tests: `/v1/admin/links`.
//!
//! Available only when the region runs over the impairment layer (`meridian simulate`, or
//! `meridian run --simulate-links`); otherwise the routes answer 404 with advice. They are
//! behind the same bearer token as the rest of the API.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/admin/links` | the impairment of every outgoing link |
//! | `PUT /v1/admin/links/{peer}` | set it: JSON `{latency_ms, jitter_ms, loss, blocked}` (all optional) |
//! | `DELETE /v1/admin/links/{peer}` | heal a partition; latency, jitter and loss stay |
//!
//! `blocked: true` partitions this region from the peer in both directions (its packets to the
//! peer and the peer's packets to it are dropped here); call it on both regions, or on one, to
//! model a symmetric or one-sided cut.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use transport::impair::LinkImpairment;

use super::{ApiError, AppState, bad_path};
use crate::node::LinkControl;
use crate::status::{Link, LinkChange, Links};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/admin/links", get(list)).route(
        "/v1/admin/links/{peer}",
        axum::routing::put(set).delete(clear),
    )
}

fn control(s: &AppState) -> Result<&LinkControl, ApiError> {
    s.node.links.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_impairment",
            "link control needs the impairment layer: start the region with `meridian simulate` or `meridian run --simulate-links`",
        )
    })
}

fn peer_addr(c: &LinkControl, peer: &str) -> Result<std::net::SocketAddr, ApiError> {
    c.peers.get(peer).copied().ok_or_else(|| {
        let known: Vec<&str> = c.peers.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!(
                "'{peer}' is not a peer of this region; peers are: {}",
                known.join(", ")
            ),
        )
    })
}

fn view(c: &LinkControl) -> Links {
    let links = c
        .peers
        .iter()
        .map(|(name, addr)| {
            let l = c.impairment.get(*addr).unwrap_or_default();
            Link {
                addr: addr.to_string(),
                blocked: l.blocked || c.impairment.is_inbound_blocked(*addr),
                jitter_ms: l.jitter.as_millis() as u64,
                latency_ms: l.latency.as_millis() as u64,
                loss: l.loss,
                peer: name.clone(),
            }
        })
        .collect();
    let stats = c.impairment.stats();
    Links {
        blocked_inbound: stats.blocked_inbound,
        blocked_outbound: stats.blocked_outbound,
        dropped_loss: stats.dropped_loss,
        dropped_queue_full: stats.dropped_queue_full,
        links,
    }
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(view(control(&s)?)).into_response())
}

async fn set(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<LinkChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(peer) = path.map_err(bad_path)?;
    let c = control(&s)?;
    let addr = peer_addr(c, &peer)?;
    let axum::Json(b) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_link",
            format!("{e}; send JSON like {{\"blocked\": true}} or {{\"latency_ms\": 40, \"jitter_ms\": 2, \"loss\": 0.01}}"),
        )
    })?;
    let now = c.impairment.get(addr).unwrap_or_default();
    let link = LinkImpairment {
        latency: b.latency_ms.map_or(now.latency, Duration::from_millis),
        jitter: b.jitter_ms.map_or(now.jitter, Duration::from_millis),
        loss: b.loss.unwrap_or(now.loss),
        blocked: now.blocked,
    };
    c.impairment
        .set(addr, link)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_link", e.to_string()))?;
    match b.blocked {
        Some(true) => c.impairment.partition(addr),
        Some(false) => c.impairment.heal(addr),
        None => {}
    }
    Ok(axum::Json(view(c)).into_response())
}

async fn clear(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(peer) = path.map_err(bad_path)?;
    let c = control(&s)?;
    let addr = peer_addr(c, &peer)?;
    c.impairment.heal(addr);
    Ok(axum::Json(view(c)).into_response())
}
