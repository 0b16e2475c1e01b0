//! The cluster's status over HTTP, for people and their tools: `GET /api/v1/status` (workers,
//! scaling window, recent failovers), `GET /api/v1/workers`, a server-sent event stream of the
//! same status (`GET /api/v1/events`), and the orchestrator's `/ready` and scrape-time figures.
//! The answers are computed in `views.rs`; their types are in `api.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rideshare_core::api::common::ApiError;
use rideshare_core::api::observe::Probe;

use super::api::WorkerBrief;
use super::prometheus::scrape_text;
use super::Orchestrator;

/// How often the event stream sends the status when nothing changed.
const EVENTS_EVERY: Duration = Duration::from_secs(1);

/// The orchestrator's `/ready` and its scrape-time figures.
pub struct OrchestratorProbe(pub Arc<Orchestrator>);

#[async_trait]
impl Probe for OrchestratorProbe {
    async fn ready(&self) -> std::result::Result<(), String> {
        self.0.ready().await
    }

    async fn scrape(&self) -> String {
        match self.0.status().await {
            Ok(status) => scrape_text(&status),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's state for /metrics");
                String::new()
            }
        }
    }
}

/// The status, workers and events routes.
pub fn routes(orchestrator: Arc<Orchestrator>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/events", get(events))
        .with_state(orchestrator)
}

fn unavailable(e: crate::Error) -> ApiError {
    ApiError::unavailable(format!("cannot read the cluster's state: {e}"))
}

async fn status(State(o): State<Arc<Orchestrator>>) -> std::result::Result<Response, ApiError> {
    Ok(Json(o.status().await.map_err(unavailable)?).into_response())
}

async fn workers(State(o): State<Arc<Orchestrator>>) -> std::result::Result<Response, ApiError> {
    let status = o.status().await.map_err(unavailable)?;
    let briefs: Vec<WorkerBrief> = status.workers.into_iter().map(WorkerBrief::from).collect();
    Ok(Json(briefs).into_response())
}

/// A `status` event every second and at once on every master change, for as long as the
/// client listens or until the server stops.
async fn events(State(o): State<Arc<Orchestrator>>) -> Response {
    let changes = o.master_changes.subscribe();
    let closing = o.telemetry.closing.subscribe();
    let state = (o, changes, closing, true);
    let stream =
        futures::stream::unfold(state, |(o, mut changes, mut closing, first)| async move {
            if *closing.borrow_and_update() {
                return None;
            }
            if !first {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(EVENTS_EVERY) => {}
                    _ = closing.changed() => return None,
                }
            }
            let event = match o.status().await {
                Ok(status) => Event::default()
                    .event("status")
                    .json_data(&status)
                    .unwrap_or_else(|_| Event::default().event("error")),
                Err(e) => Event::default().event("error").data(e.to_string()),
            };
            Some((Ok::<_, Infallible>(event), (o, changes, closing, false)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
