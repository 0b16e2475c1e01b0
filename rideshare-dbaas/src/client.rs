//! `OrchestratorDb`: the users and rides services' `Db`, speaking HTTP to the orchestrator.
//!
//! A write gets one request id for all its attempts, so a retry after a lost answer is
//! applied once. Attempts and each attempt's time are bounded.

use std::time::Duration;

use async_trait::async_trait;
use rideshare_core::api::AdminToken;
use rideshare_core::db::{Db, DbError};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
pub struct OrchestratorDb {
    base_url: String,
    http: reqwest::Client,
    admin: AdminToken,
    attempts: u32,
    retry_pause: Duration,
}

#[derive(Deserialize)]
struct WriteAnswer {
    outcome: WriteOutcome,
}

#[derive(Deserialize)]
struct ReadAnswer {
    outcome: ReadOutcome,
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
            attempts: 3,
            retry_pause: Duration::from_millis(200),
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, DbError> {
        let url = format!("{}{path}", self.base_url);
        let mut last = DbError::Unavailable("no attempt made".into());
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry_pause).await;
            }
            let mut request =
                rideshare_core::api::observe::propagate(self.http.post(&url)).json(&body);
            if let Some(authorization) = self.admin.authorization() {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = DbError::Unavailable(format!("orchestrator unreachable: {e}"));
                    continue;
                }
            };
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
            last = DbError::Unavailable(format!("orchestrator answered {status}: {text}"));
        }
        Err(last)
    }
}

#[async_trait]
impl Db for OrchestratorDb {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        let request_id = RequestId::random();
        let answer: WriteAnswer = self
            .post(
                "/api/v1/db/write",
                json!({"request_id": request_id, "op": op}),
            )
            .await?;
        Ok(answer.outcome)
    }

    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        let answer: ReadAnswer = self.post("/api/v1/db/read", json!({"op": op})).await?;
        Ok(answer.outcome)
    }
}
