//! The users and rides services' `Db` on the orchestrator: `OrchestratorDb` speaks HTTP to it;
//! `InProcessDb` calls one in the same process (`rideshare up`), as its HTTP API would.
//!
//! A write gets one request id for all its attempts, so a retry after a lost answer is
//! applied once. Attempts and each attempt's time are bounded. `OrchestratorDb` carries the
//! highest log index it has seen as every read's `min_index` (its session token): its reads
//! see its writes and never go back, even through a restarted or another orchestrator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rideshare_core::api::observe::current_request_id;
use rideshare_core::api::AdminToken;
use rideshare_core::db::{Db, DbError};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument as _;

use crate::orchestrator::api::{ReadAnswer, ReadRequest, WriteAck, WriteRequest};
use crate::orchestrator::{Freshness, Orchestrator};
use crate::retry::RetryPolicy;

#[derive(Clone)]
pub struct OrchestratorDb {
    base_url: String,
    http: reqwest::Client,
    admin: AdminToken,
    /// Tries per call, and the pause between them: a failed try is an unreachable
    /// orchestrator or a 5xx answer; a refusal (4xx) or an unreadable answer is final.
    retry: RetryPolicy,
    /// The highest log index this client (every clone) has seen: its session token.
    seen: Arc<AtomicU64>,
}

impl OrchestratorDb {
    /// `base_url` like `http://127.0.0.1:8083`; `timeout` bounds one attempt; `admin` is sent
    /// as the bearer token the orchestrator's DB calls need.
    pub fn new(base_url: impl Into<String>, timeout: Duration, admin: AdminToken) -> Self {
        OrchestratorDb {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            admin,
            retry: RetryPolicy::fixed(3, Duration::from_millis(200)),
            seen: Arc::default(),
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, DbError> {
        let url = format!("{}{path}", self.base_url);
        self.retry
            .run(
                || self.post_once(&url, body),
                |e| matches!(e, DbError::Unavailable(_)),
            )
            .await
    }

    async fn post_once<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, DbError> {
        let mut request = rideshare_core::api::observe::propagate(self.http.post(url)).json(body);
        if let Some(authorization) = self.admin.authorization() {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DbError::Unavailable(format!("orchestrator unreachable: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<T>()
                .await
                .map_err(|e| DbError::Protocol(e.to_string()));
        }
        let text = response.text().await.unwrap_or_default();
        if status.is_client_error() {
            return Err(DbError::Protocol(format!(
                "orchestrator refused: {status} {text}"
            )));
        }
        Err(DbError::Unavailable(format!(
            "orchestrator answered {status}: {text}"
        )))
    }
}

#[async_trait]
impl Db for OrchestratorDb {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        // One id for every try: a retry after a lost answer is applied once.
        let body = WriteRequest {
            op,
            request_id: Some(RequestId::random().0),
        };
        let ack: WriteAck = self.post("/api/v1/db/write", &body).await?;
        self.seen.fetch_max(ack.index, Ordering::SeqCst);
        Ok(ack.outcome)
    }

    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        let seen = self.seen.load(Ordering::SeqCst);
        let body = ReadRequest {
            op,
            consistency: None,
            min_index: (seen > 0).then_some(seen),
        };
        let answer: ReadAnswer = self.post("/api/v1/db/read", &body).await?;
        self.seen.fetch_max(answer.applied_index, Ordering::SeqCst);
        Ok(answer.outcome)
    }
}

/// The services' `Db` on an orchestrator in this process: the calls its HTTP API makes
/// (`client_write`, `client_read`), without the hop and its JSON. The orchestrator already
/// tries again through failovers, bounded, so a failure here is final: `Unavailable`, which
/// the services answer with 503. Each call is logged as the orchestrator's HTTP layer logs a
/// request (a `request` span of the service "orchestrator" with the caller's request id), so
/// one request id still finds every hop.
#[derive(Clone)]
pub struct InProcessDb(Arc<Orchestrator>);

impl InProcessDb {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        InProcessDb(orchestrator)
    }

    async fn call<T>(
        route: &'static str,
        work: impl std::future::Future<Output = crate::error::Result<T>>,
    ) -> Result<T, DbError> {
        // Debug level: at the default level the caller's own request span (users or rides)
        // already gives every line the request id, and an enabled span is formatted and
        // entered on every poll (about 10 % of `rideshare up`'s CPU per created ride, with the
        // two below in `front.rs`).
        let span = tracing::debug_span!(
            "request",
            request_id = %current_request_id().unwrap_or_default(),
            service = "orchestrator",
            method = "POST",
            route,
        );
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        span.in_scope(|| {
            tracing::debug!(
                ok = result.is_ok(),
                latency_ms = started.elapsed().as_secs_f64() * 1e3,
                "in-process call finished"
            )
        });
        result.map_err(|e| DbError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl Db for InProcessDb {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        let ack = self.0.client_write(RequestId::random(), op);
        Ok(Self::call("/api/v1/db/write", ack).await?.outcome)
    }

    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        let answer = self.0.client_read(op, Freshness::STRONG);
        Ok(Self::call("/api/v1/db/read", answer).await?.outcome)
    }
}
