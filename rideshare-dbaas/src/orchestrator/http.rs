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

use super::{dashboard, status, switchover, Orchestrator};
use crate::error::Error;

pub fn orchestrator_router(orchestrator: Arc<Orchestrator>, limits: ServiceLimits) -> Router {
    let router = Router::new()
        .route("/api/v1/db/write", post(write))
        .route("/api/v1/db/read", post(read))
        .route("/api/v1/db/clear", post(clear))
        .route("/api/v1/crash/master", post(crash_master))
        .route("/api/v1/crash/slave", post(crash_slave))
        .route("/api/v1/worker/list", get(worker_list))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(not_found)
        .with_state(Arc::clone(&orchestrator))
        .merge(status::routes(Arc::clone(&orchestrator)))
        .merge(switchover::routes(orchestrator))
        .merge(dashboard::routes());
    limits.apply(router)
}

fn unavailable(e: Error) -> ApiError {
    tracing::warn!(error = %e, "database request failed");
    ApiError::unavailable(e.to_string())
}

fn typed<T: serde::de::DeserializeOwned>(value: Option<&Value>, what: &str) -> Result<T, ApiError> {
    let value =
        value.ok_or_else(|| ApiError::bad_request(format!("field \"op\" is missing ({what})")))?;
    serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request(format!("bad {what} operation: {e}")))
}

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
    let ack = o.write(request_id, op).await;
    o.telemetry.written(&ack);
    let ack = ack.map_err(unavailable)?;
    Ok(Json(ack).into_response())
}

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
    o.count_read();
    let answer = o.read(op, stale).await;
    o.telemetry.read(&answer, stale);
    let answer = answer.map_err(unavailable)?;
    Ok(Json(answer).into_response())
}

async fn clear(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    let ack = o.write(RequestId::random(), WriteOp::ClearAll).await;
    o.telemetry.written(&ack);
    match ack {
        Ok(ack) if ack.outcome == WriteOutcome::Done => Ok(empty(StatusCode::OK)),
        Ok(ack) => Err(ApiError::bad_request(format!(
            "could not clear: {:?}",
            ack.outcome
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not clear the database: {e}"
        ))),
    }
}

fn nothing_to_crash(what: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        message: format!("there is no {what} to crash right now"),
    }
}

async fn crash_master(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    match o.crash_master().await {
        Ok(pid) => Ok(Json([pid]).into_response()),
        Err(Error::NotMaster | Error::NoWorker(_)) => Err(nothing_to_crash("master")),
        Err(e) => Err(unavailable(e)),
    }
}

async fn crash_slave(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    match o.crash_slave().await {
        Ok(pid) => Ok(Json([pid]).into_response()),
        Err(Error::NoWorker(_)) => Err(nothing_to_crash("slave")),
        Err(e) => Err(unavailable(e)),
    }
}

async fn worker_list(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    let pids = o.worker_pids().await.map_err(unavailable)?;
    Ok(Json(pids).into_response())
}
