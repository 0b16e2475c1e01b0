//! The orchestrator's HTTP API (SPEC.md "DBaaS orchestrator"): db/read, db/write, db/clear,
//! crash/master, crash/slave, worker/list.
//!
//! Bodies: `POST /api/v1/db/write` takes `{"op": <WriteOp>, "request_id": "<optional>"}` and
//! answers `{"index", "epoch", "worker", "outcome"}`; `POST /api/v1/db/read` takes
//! `{"op": <ReadOp>, "consistency": "strong" | "stale"}` and answers
//! `{"applied_index", "worker", "outcome"}`. Typed operations, never SQL.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rideshare_core::api::common::{empty, json_object, not_found, ApiError, ServiceLimits};
use rideshare_core::ops::{ReadOp, RequestId, WriteOp, WriteOutcome};
use serde_json::Value;

use rideshare_core::api::common::health_route;
use rideshare_core::api::openapi::{openapi_route, EdgeResponses, Empty, ErrorBody};

use super::api::{ReadAnswer, ReadRequest, WriteAck, WriteRequest};
use super::{dashboard, status, switchover, Freshness, Orchestrator};
use crate::error::Error;

/// The orchestrator's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "RideShare DBaaS orchestrator", description = "SPEC.md, DBaaS orchestrator"),
    paths(write, read, clear, crash_master, crash_slave, worker_list, rideshare_core::api::common::health),
    modifiers(&EdgeResponses)
)]
pub struct OrchestratorApi;

/// The orchestrator's API. Every route but `/health`, the OpenAPI document and the dashboard page
/// (which holds no data: it asks the admin routes with the token typed into it) is an admin call
/// (401 without the admin token, when one is set).
pub fn orchestrator_router(orchestrator: Arc<Orchestrator>, limits: ServiceLimits) -> Router {
    let admin = |route| limits.admin_only(route);
    let router = Router::new()
        .route("/api/v1/db/write", admin(post(write)))
        .route("/api/v1/db/read", admin(post(read)))
        .route("/api/v1/db/clear", admin(post(clear)))
        .route("/api/v1/crash/master", admin(post(crash_master)))
        .route("/api/v1/crash/slave", admin(post(crash_slave)))
        .route("/api/v1/worker/list", admin(get(worker_list)))
        .merge(health_route())
        .merge(openapi_route(
            &<OrchestratorApi as utoipa::OpenApi>::openapi(),
        ))
        .fallback(not_found)
        .with_state(Arc::clone(&orchestrator))
        .merge(limits.admin_routes(status::routes(Arc::clone(&orchestrator))))
        .merge(limits.admin_routes(switchover::routes(orchestrator)))
        .merge(dashboard::routes());
    limits.edge(limits.apply(router))
}

/// The details went to the log (`client_write`, `client_read`); the client learns only that it
/// may try again.
fn unavailable(_: Error) -> ApiError {
    ApiError::unavailable("the database is unavailable; try again shortly")
}

fn typed<T: serde::de::DeserializeOwned>(value: Option<&Value>, what: &str) -> Result<T, ApiError> {
    let value =
        value.ok_or_else(|| ApiError::bad_request(format!("field \"op\" is missing ({what})")))?;
    serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request(format!("bad {what} operation: {e}")))
}

#[utoipa::path(post, path = "/api/v1/db/write", tag = "db", security(("admin_token" = [])),
    request_body(content = WriteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed: its log index, epoch, worker and outcome", body = WriteAck),
        (status = 400, description = "Not a write operation", body = ErrorBody),
    ))]
async fn write(State(o): State<Arc<Orchestrator>>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let op: WriteOp = typed(body.get("op"), "write")?;
    let request_id = match body.get("request_id") {
        None | Some(Value::Null) => RequestId::random(),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => RequestId(s.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field \"request_id\" must be a string of 1..=128 bytes",
            ))
        }
    };
    let ack = o.client_write(request_id, op).await.map_err(unavailable)?;
    Ok(Json(ack).into_response())
}

#[utoipa::path(post, path = "/api/v1/db/read", tag = "db", security(("admin_token" = [])),
    request_body(content = ReadRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The result and the index it was read at", body = ReadAnswer),
        (status = 400, description = "Not a read operation", body = ErrorBody),
    ))]
async fn read(State(o): State<Arc<Orchestrator>>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let op: ReadOp = typed(body.get("op"), "read")?;
    let stale = match body.get("consistency") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "strong" => false,
        Some(Value::String(s)) if s == "stale" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "field \"consistency\" must be \"strong\" or \"stale\"",
            ))
        }
    };
    let at_least = match body.get("min_index") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or_default(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field \"min_index\" must be a non-negative integer (a log index)",
            ))
        }
    };
    if !o.knows_index(at_least).await.map_err(unavailable)? {
        return Err(ApiError::bad_request(format!(
            "field \"min_index\" ({at_least}) is past the log's end: not an index of this database"
        )));
    }
    let answer = o
        .client_read(op, Freshness { stale, at_least })
        .await
        .map_err(unavailable)?;
    Ok(Json(answer).into_response())
}

#[utoipa::path(post, path = "/api/v1/db/clear", tag = "db", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Everything cleared (ride ids are still never reused)", body = Empty),
        (status = 400, description = "The database could not be cleared", body = ErrorBody),
    ))]
async fn clear(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    match o.client_write(RequestId::random(), WriteOp::ClearAll).await {
        Ok(ack) if ack.outcome == WriteOutcome::Done => Ok(empty(StatusCode::OK)),
        Ok(ack) => Err(ApiError::bad_request(format!(
            "could not clear: {:?}",
            ack.outcome
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "db/clear failed");
            Err(ApiError::bad_request("could not clear the database"))
        }
    }
}

fn nothing_to_crash(what: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        message: format!("there is no {what} to crash right now"),
    }
}

#[utoipa::path(post, path = "/api/v1/crash/master", tag = "workers", security(("admin_token" = [])),
    responses(
        (status = 200, description = "[pid] of the killed master", body = [u64]),
        (status = 409, description = "No master to crash right now", body = ErrorBody),
    ))]
async fn crash_master(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    match o.crash_master().await {
        Ok(pid) => Ok(Json([pid]).into_response()),
        Err(Error::NotMaster | Error::NoWorker(_)) => Err(nothing_to_crash("master")),
        Err(e) => Err(unavailable(e)),
    }
}

#[utoipa::path(post, path = "/api/v1/crash/slave", tag = "workers", security(("admin_token" = [])),
    responses(
        (status = 200, description = "[pid] of the killed slave (the highest pid)", body = [u64]),
        (status = 409, description = "No slave to crash right now", body = ErrorBody),
    ))]
async fn crash_slave(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    match o.crash_slave().await {
        Ok(pid) => Ok(Json([pid]).into_response()),
        Err(Error::NoWorker(_)) => Err(nothing_to_crash("slave")),
        Err(e) => Err(unavailable(e)),
    }
}

#[utoipa::path(get, path = "/api/v1/worker/list", tag = "workers", security(("admin_token" = [])),
    responses((status = 200, description = "Pids of all workers, ascending", body = [u64])))]
async fn worker_list(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    let pids = o.worker_pids().await.map_err(unavailable)?;
    Ok(Json(pids).into_response())
}
