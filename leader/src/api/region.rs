//! The region's own routes: `GET /v1/conflicts` (the conflict log, paged), `/v1/status`,
//! `/v1/status/digest`, `/metrics`, and `POST /v1/repair` (anti-entropy now).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use conflict::ReplicaId;
use serde::Deserialize;

use crate::status::{ConflictPage, ConflictWrite, Digest, LoggedConflict, RepairReport, Status};

use super::{ApiError, AppState, bad_query};

#[derive(Debug, Deserialize)]
pub(super) struct ConflictParams {
    table: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

/// Most conflicts one page returns.
const MAX_CONFLICT_PAGE: usize = 1000;

pub(super) async fn conflicts(
    State(s): State<AppState>,
    params: Result<Query<ConflictParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    let limit = p.limit.unwrap_or(50).min(MAX_CONFLICT_PAGE);
    let regions = replica_regions(&s.node.status().await?);
    let all = s
        .node
        .conflicts()
        .await?
        .map_err(|b| super::kv::bootstrapping(b.to_string(), &b.progress))?;
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

pub(super) async fn status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    Ok(axum::Json(Status::from(&st)).into_response())
}

/// The state digest, for convergence checks across regions (`meridian bench`). The applied
/// vector is read just before the digest: compare digests once the vectors are equal.
/// Refused (503 `bootstrapping`, with the progress) while the region is being bootstrapped,
/// as reads are: its key states are partial.
pub(super) async fn digest(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    let digest = s
        .node
        .digest()
        .await?
        .map_err(|b| super::kv::bootstrapping(b.to_string(), &b.progress))?;
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

pub(super) async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
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

/// Runs anti-entropy now with every connected peer and answers once every round is over
/// (at most about 30 s: a peer that does not answer is given up), with what the rounds found
/// (docs/design.md, "Anti-entropy"). Diverged keys are repaired already when it answers.
pub(super) async fn repair(State(s): State<AppState>) -> Result<Response, ApiError> {
    let r = s.node.repair().await?;
    let region = s.node.status().await?.region;
    let doc = RepairReport {
        diverged: r.diverged,
        in_flight: r.in_flight,
        keys: r.keys,
        peers: r.peers,
        region,
        repaired: r.repaired,
        rounds: r.rounds,
    };
    Ok(axum::Json(doc).into_response())
}
