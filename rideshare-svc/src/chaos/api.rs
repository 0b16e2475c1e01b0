//! The run's view of the orchestrator's HTTP API, and the one place its answers are read.
//!
//! Requests and answers are the orchestrator's own wire types (`orchestrator::api`), so a
//! change to them is a compile error here rather than a silent misreading.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use rideshare_dbaas::checker::Completion;
use rideshare_dbaas::orchestrator::api::{ReadAnswer, ReadRequest, WriteAck, WriteRequest};
use serde::Serialize;
use serde_json::Value;

/// Which worker `crash/*` kills.
#[derive(Debug, Clone, Copy)]
pub enum CrashTarget {
    Master,
    Slave,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// The run's time origin: every event and fault time is in ms since it.
    started: Instant,
}

impl Api {
    /// A client of the orchestrator at `listen`, sending the run's admin token on every call.
    pub fn new(listen: SocketAddr, admin_token: &str) -> anyhow::Result<Self> {
        let mut admin = reqwest::header::HeaderMap::new();
        let mut bearer: reqwest::header::HeaderValue = format!("Bearer {admin_token}")
            .parse()
            .context("the admin token is not a header value")?;
        bearer.set_sensitive(true);
        admin.insert(reqwest::header::AUTHORIZATION, bearer);
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .default_headers(admin)
                .build()?,
            base: format!("http://{listen}"),
            started: Instant::now(),
        })
    }

    /// Milliseconds since the run's time origin.
    pub fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
    }

    pub async fn write(&self, request_id: &RequestId, op: &WriteOp) -> Completion {
        let body = WriteRequest {
            op: op.clone(),
            request_id: Some(request_id.0.clone()),
        };
        match self.post("/api/v1/db/write", &body).await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(v) => write_answer(v),
                Err(e) => Completion::Unknown {
                    reason: e.to_string(),
                },
            },
            Ok(r) => write_refusal(r.status()),
            Err(e) if e.is_connect() => Completion::Failed {
                reason: "orchestrator down".into(),
            },
            Err(e) => Completion::Unknown {
                reason: e.to_string(),
            },
        }
    }

    /// A read's applied index, or why there is none.
    pub async fn read(&self, op: &ReadOp) -> Result<u64, String> {
        let r = self
            .post(
                "/api/v1/db/read",
                &ReadRequest {
                    op: op.clone(),
                    consistency: None,
                    min_index: None,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(r.status().to_string());
        }
        read_answer(r.json().await.map_err(|e| e.to_string())?)
    }

    /// The pids of the workers the orchestrator lists; `None` when it does not answer.
    pub async fn pids(&self) -> Option<Vec<u64>> {
        let r = self
            .http
            .get(format!("{}/api/v1/worker/list", self.base))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Kills a worker through the orchestrator; its pid, or why it refused.
    pub async fn crash(&self, target: CrashTarget) -> Result<u64, String> {
        let what = match target {
            CrashTarget::Master => "master",
            CrashTarget::Slave => "slave",
        };
        let r = self
            .http
            .post(format!("{}/api/v1/crash/{what}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        crash_answer(status, r.json().await.map_err(|e| e.to_string())?)
    }
}

/// A 2xx answer to `db/write`: a [`WriteAck`], or an unknown outcome if it is not one.
fn write_answer(v: Value) -> Completion {
    match serde_json::from_value::<WriteAck>(v.clone()) {
        Ok(ack) => Completion::Written {
            index: ack.index,
            outcome: ack.outcome,
        },
        Err(_) => Completion::Unknown {
            reason: format!("unreadable answer {v}"),
        },
    }
}

/// Any other status to `db/write`: a 4xx was refused before anything was sent; a 503 after
/// retries (or another 5xx) may still have been applied.
fn write_refusal(status: StatusCode) -> Completion {
    if status.is_client_error() {
        Completion::Failed {
            reason: status.to_string(),
        }
    } else {
        Completion::Unknown {
            reason: status.to_string(),
        }
    }
}

/// A 2xx answer to `db/read`: a [`ReadAnswer`]. An answer that is not one counts as failed,
/// not as a read at some index.
fn read_answer(v: Value) -> Result<u64, String> {
    let answer: ReadAnswer = serde_json::from_value(v).map_err(|e| e.to_string())?;
    Ok(answer.applied_index)
}

/// The answer to `crash/*`: `[pid]`, or an error body.
fn crash_answer(status: StatusCode, v: Value) -> Result<u64, String> {
    v[0].as_u64().ok_or_else(|| format!("{status} {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rideshare_core::ops::WriteOutcome;
    use serde_json::json;

    #[test]
    fn a_write_answer_without_index_or_outcome_is_unknown() {
        let done = serde_json::to_value(WriteOutcome::Done).unwrap_or_default();
        let ack = WriteAck {
            index: 7,
            epoch: 2,
            worker: "w".into(),
            outcome: WriteOutcome::Done,
        };
        assert_eq!(
            write_answer(serde_json::to_value(ack).unwrap_or_default()),
            Completion::Written {
                index: 7,
                outcome: WriteOutcome::Done
            }
        );
        assert!(matches!(
            write_answer(json!({"outcome": done})),
            Completion::Unknown { .. }
        ));
        assert!(matches!(
            write_answer(json!({"index": 7, "outcome": "no such outcome"})),
            Completion::Unknown { .. }
        ));
    }

    #[test]
    fn only_a_client_error_makes_a_write_failed() {
        assert!(matches!(
            write_refusal(StatusCode::BAD_REQUEST),
            Completion::Failed { .. }
        ));
        assert!(matches!(
            write_refusal(StatusCode::SERVICE_UNAVAILABLE),
            Completion::Unknown { .. }
        ));
    }

    #[test]
    fn crash_answers_give_the_pid_or_the_refusal() {
        assert_eq!(crash_answer(StatusCode::OK, json!([4242])), Ok(4242));
        let refused = crash_answer(StatusCode::CONFLICT, json!({"error": "no master"}));
        assert!(refused.is_err_and(|e| e.contains("409") && e.contains("no master")));
    }

    #[test]
    fn a_read_answer_needs_an_outcome() {
        let count = json!({"result": "count", "count": 2});
        assert_eq!(
            read_answer(json!({"applied_index": 3, "worker": "w", "outcome": count})),
            Ok(3)
        );
        assert!(read_answer(json!({"applied_index": 3})).is_err());
    }
}
