//! A planned hand-over of the master role to a caught-up slave, with no failed write:
//! `POST /api/v1/switchover` and `rideshare switchover`.
//!
//! 1. The successor is the slave the election will pick once the master is gone (the lowest
//!    pid among the others); it must be serving (caught up at its start).
//! 2. New writes are held at the orchestrator's gate; writes in flight finish with the old
//!    master. From here the acknowledged index no longer moves.
//! 3. The orchestrator waits (bounded) until the successor has applied that index.
//! 4. The old master steps down: it is stopped and its nodes removed, with nothing in its hands.
//! 5. The successor wins the election; once it is ready for writes, the gate opens and the held
//!    writes go to it. Clients only see them take a little longer.
//!
//! Safety does not rest on this module: a new master applies its own epoch marker, and with it
//! every earlier write, before it takes any write. The steps above only keep writes from being
//! sent to a master that is going away, and keep the pause short. Every wait is bounded, and
//! the gate opens whatever happens.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rideshare_core::api::common::ApiError;
use tokio::time::Instant;

pub use super::api::SwitchoverReport;
use super::api::{MemberInfo, ShownRole, WorkerState};
use super::telemetry::ms;
use super::views::worker_views;
use super::Orchestrator;
use crate::error::Error;
use crate::policy::{elect, Member};

/// Bound on waiting for the writes in flight to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// Bound on waiting for the successor to apply the last acknowledged index.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// Bound on waiting for the successor to be ready for writes.
const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How often the coordinator is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Why a switchover was not done.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("no master is ready: nothing to hand over")]
    NoMaster,
    #[error("no caught-up slave would win the election: {0}")]
    NoSuccessor(String),
    #[error("another switchover is in progress")]
    Busy,
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Cluster(#[from] Error),
}

impl Orchestrator {
    /// Hands the master role to the caught-up slave the election will pick, holding new writes
    /// meanwhile (see the module's steps).
    pub async fn switchover(&self) -> std::result::Result<SwitchoverReport, SwitchoverError> {
        let started = Instant::now();
        let _one_at_a_time = self
            .switching
            .try_lock()
            .map_err(|_| SwitchoverError::Busy)?;
        let (master, successor) = self.successor().await?;
        tracing::info!(
            master_pid = master.pid,
            successor_pid = successor.pid,
            "switchover: holding new writes"
        );
        let gate = self.front.hold_writes(DRAIN_WAIT).await.ok_or_else(|| {
            SwitchoverError::Failed(format!(
                "writes in flight did not finish within {} ms",
                ms(DRAIN_WAIT)
            ))
        })?;
        let paused = Instant::now();
        let result = self.hand_over(&master, &successor).await;
        drop(gate);
        let paused_ms = ms(paused.elapsed());
        match result {
            Ok((epoch, index)) => {
                let report = SwitchoverReport {
                    old_pid: master.pid,
                    new_pid: successor.pid,
                    epoch,
                    handed_over_at_index: index,
                    paused_ms,
                    duration_ms: ms(started.elapsed()),
                };
                tracing::info!(
                    old_pid = report.old_pid,
                    new_pid = report.new_pid,
                    epoch,
                    paused_ms,
                    "switchover complete"
                );
                metrics::counter!("rideshare_switchovers_total", "result" => "done").increment(1);
                Ok(report)
            }
            Err(e) => {
                tracing::warn!(error = %e, paused_ms, "switchover failed; writes released");
                metrics::counter!("rideshare_switchovers_total", "result" => "failed").increment(1);
                Err(e)
            }
        }
    }

    /// The ready master and the serving slave the election picks without it.
    async fn successor(&self) -> std::result::Result<(Member, Member), SwitchoverError> {
        let registry = self.registry.get();
        let master = match registry.master().await? {
            Some(m) if m.ready => m,
            _ => return Err(SwitchoverError::NoMaster),
        };
        let running = self.runtime.list().await?;
        let members = registry.members().await?;
        let views = worker_views(
            &running,
            &members,
            Some(&master),
            self.acked_index(),
            &Default::default(),
            |_| Duration::ZERO,
        );
        let others: Vec<Member> = members
            .iter()
            .filter(|m| m.record.id != master.id)
            .filter(|m| running.iter().any(|w| w.id == m.record.id))
            .map(MemberInfo::member)
            .collect();
        let successor = elect(&others, None)
            .cloned()
            .ok_or_else(|| SwitchoverError::NoSuccessor("there is no other worker".into()))?;
        let serving = views.iter().any(|v| {
            v.id == successor.id && v.role == ShownRole::Slave && v.state == WorkerState::Serving
        });
        if !serving {
            return Err(SwitchoverError::NoSuccessor(format!(
                "pid {} is next in line but has not caught up yet",
                successor.pid
            )));
        }
        Ok((
            Member {
                id: master.id,
                pid: master.pid,
            },
            successor,
        ))
    }

    /// With writes held: waits for the successor, stops the master, waits for the election.
    /// Answers the new epoch and the index handed over.
    async fn hand_over(
        &self,
        master: &Member,
        successor: &Member,
    ) -> std::result::Result<(u64, u64), SwitchoverError> {
        let index = self.acked_index();
        self.wait_applied(successor, index).await?;
        tracing::info!(pid = master.pid, index, "switchover: the master steps down");
        self.supervisor.kill_worker(&master.id).await?;
        self.telemetry.master_lost(&master.id);
        metrics::counter!("rideshare_worker_kills_total", "reason" => "switchover").increment(1);
        let epoch = self.wait_elected(successor).await?;
        Ok((epoch, index))
    }

    /// Waits (bounded) until the successor's member node shows `index` applied.
    async fn wait_applied(
        &self,
        successor: &Member,
        index: u64,
    ) -> std::result::Result<(), SwitchoverError> {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            let applied = self
                .registry
                .get()
                .member(&successor.id)
                .await?
                .and_then(|m| m.record.progress.map(|p| p.applied_index));
            match applied {
                Some(applied) if applied >= index => return Ok(()),
                None => {
                    return Err(SwitchoverError::NoSuccessor(format!(
                        "pid {} is gone",
                        successor.pid
                    )))
                }
                _ if Instant::now() >= deadline => {
                    return Err(SwitchoverError::Failed(format!(
                        "pid {} did not apply index {index} within {} ms",
                        successor.pid,
                        ms(CATCH_UP_WAIT)
                    )))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Waits (bounded) until the successor is the master, ready for writes; answers its epoch.
    async fn wait_elected(&self, successor: &Member) -> std::result::Result<u64, SwitchoverError> {
        let deadline = Instant::now() + ELECTION_WAIT;
        loop {
            match self.registry.get().master().await? {
                Some(m) if m.ready && m.id == successor.id => return Ok(m.epoch),
                Some(m) if m.ready => {
                    return Err(SwitchoverError::Failed(format!(
                        "pid {} won the election instead of pid {}",
                        m.pid, successor.pid
                    )))
                }
                _ if Instant::now() >= deadline => {
                    return Err(SwitchoverError::Failed(format!(
                        "no new master within {} ms",
                        ms(ELECTION_WAIT)
                    )))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// `POST /api/v1/switchover`.
pub fn routes(orchestrator: Arc<Orchestrator>) -> Router {
    Router::new()
        .route("/api/v1/switchover", post(switchover))
        .with_state(orchestrator)
}

async fn switchover(State(o): State<Arc<Orchestrator>>) -> std::result::Result<Response, ApiError> {
    match o.switchover().await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(
            e @ (SwitchoverError::NoMaster
            | SwitchoverError::NoSuccessor(_)
            | SwitchoverError::Busy),
        ) => Err(ApiError {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        }),
        Err(e) => Err(ApiError::unavailable(format!("switchover failed: {e}"))),
    }
}
