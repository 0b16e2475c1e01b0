//! The cluster as the orchestrator shows it: every running worker's role, state, applied index
//! and lag, computed from the coordinator's nodes, the runtime's list and the answers workers
//! sent; whether the cluster is ready; the whole status. Reads only: it changes nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{
    CatchUpProgress, ClusterStatus, MemberInfo, ScalingStatus, ShownRole, WorkerState, WorkerStatus,
};
use super::Orchestrator;
use crate::error::Result;
use crate::protocol::{MasterRecord, Role};
use crate::runtime::WorkerHandle;

/// How long a "ready" answer is reused while the master stays the same.
const READY_CACHE: Duration = Duration::from_secs(1);
/// How long a "not ready" answer is reused: short, so the end of a failover (a slave caught up,
/// which changes no master) shows within a few probes instead of a second later.
const UNREADY_CACHE: Duration = Duration::from_millis(50);

/// Whether a readiness answer of this age may be given again (the master unchanged meanwhile).
fn reusable(answer: &std::result::Result<(), String>, age: Duration) -> bool {
    age < if answer.is_ok() {
        READY_CACHE
    } else {
        UNREADY_CACHE
    }
}

/// Every running worker as shown: role and state from its nodes, applied index from its node
/// or its last answer, whichever is further. Sorted by pid.
pub fn worker_views(
    running: &[WorkerHandle],
    members: &[MemberInfo],
    master: Option<&MasterRecord>,
    acked: u64,
    reported: &HashMap<String, u64>,
    uptime: impl Fn(&str) -> Duration,
) -> Vec<WorkerStatus> {
    let mut views: Vec<WorkerStatus> = running
        .iter()
        .map(|w| {
            let uptime = uptime(&w.id);
            match members.iter().find(|m| m.record.id == w.id) {
                Some(member) => registered_view(w, member, master, acked, reported, uptime),
                None => WorkerStatus {
                    id: w.id.clone(),
                    pid: w.pid,
                    role: ShownRole::None,
                    state: WorkerState::Starting,
                    epoch: None,
                    applied_index: None,
                    lag: None,
                    uptime_s: uptime.as_secs_f64(),
                    catch_up_entries: None,
                    catch_up_ms: None,
                    http: None,
                    snapshot_index: None,
                    catch_up: None,
                },
            }
        })
        .collect();
    views.sort_by_key(|v| v.pid);
    views
}

/// A running worker that has its member node.
fn registered_view(
    w: &WorkerHandle,
    member: &MemberInfo,
    master: Option<&MasterRecord>,
    acked: u64,
    reported: &HashMap<String, u64>,
    uptime: Duration,
) -> WorkerStatus {
    let record = &member.record;
    let is_master = master.is_some_and(|m| m.id == w.id);
    let applied = [
        record.progress.map(|p| p.applied_index),
        record.state.map(|s| s.applied_index),
        reported.get(&w.id).copied(),
    ]
    .into_iter()
    .flatten()
    .max();
    let epoch = match master {
        Some(m) if is_master && m.epoch > 0 => Some(m.epoch),
        _ => record.progress.map(|p| p.epoch),
    };
    WorkerStatus {
        id: w.id.clone(),
        pid: w.pid,
        role: if is_master || record.role == Role::Master {
            ShownRole::Master
        } else {
            ShownRole::Slave
        },
        state: if record.catch_up.is_some() {
            WorkerState::Serving
        } else {
            WorkerState::CatchingUp
        },
        epoch,
        applied_index: applied,
        lag: applied.map(|a| acked.saturating_sub(a)),
        uptime_s: uptime.as_secs_f64(),
        catch_up_entries: record.catch_up.map(|c| c.entries),
        catch_up_ms: record.catch_up.map(|c| c.ms),
        http: record.http.clone(),
        snapshot_index: record
            .snapshots
            .and_then(|s| s.installed.into_iter().chain(s.taken).max()),
        catch_up: record.catching_up.map(|plan| {
            let done = applied.unwrap_or(plan.from).saturating_sub(plan.from);
            let span = plan.to.saturating_sub(plan.from);
            CatchUpProgress {
                from: plan.from,
                to: plan.to,
                percent: if span == 0 || record.catch_up.is_some() {
                    100.0
                } else {
                    (done as f64 * 100.0 / span as f64).min(100.0)
                },
            }
        }),
    }
}

/// Whether the cluster can serve: a master ready for writes and a caught-up slave for reads.
pub fn readiness(
    master: Option<&MasterRecord>,
    workers: &[WorkerStatus],
) -> std::result::Result<(), String> {
    match master {
        None => return Err("no master: an election is in progress".into()),
        Some(m) if !m.ready => {
            return Err(format!(
                "master pid {} is taking over and not ready for writes yet",
                m.pid
            ))
        }
        Some(_) => {}
    }
    let serving_slaves = workers
        .iter()
        .filter(|w| w.role == ShownRole::Slave && w.state == WorkerState::Serving)
        .count();
    if serving_slaves == 0 {
        return Err("no slave has caught up with the log yet: reads cannot be served".into());
    }
    Ok(())
}

impl Orchestrator {
    /// The whole status: reads the coordinator and the runtime.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let running = self.runtime.list().await?;
        let registry = self.registry.get();
        let members = registry.members().await?;
        let master = registry.master().await?;
        let acked = self.front.acked_index();
        let t = &self.telemetry;
        let first_seen = t.first_seen();
        let workers = worker_views(
            &running,
            &members,
            master.as_ref(),
            acked,
            &t.reported(),
            |id| first_seen.get(id).map(|s| s.elapsed()).unwrap_or_default(),
        );
        let window = self.scaler.window();
        let (started, decisions) = t.window();
        let policy = self.scaler.policy();
        Ok(ClusterStatus {
            orchestrator: self.name.clone(),
            uptime_s: t.uptime().as_secs_f64(),
            acked_index: acked,
            master,
            workers,
            scaling: ScalingStatus {
                window_s: window.as_secs_f64(),
                reads: self.scaler.reads_so_far(),
                target_slaves: self.scaler.target(),
                reads_per_slave: policy.reads_per_slave,
                max_slaves: policy.max_slaves,
                next_decision_s: started.map(|s| window.saturating_sub(s.elapsed()).as_secs_f64()),
                decisions,
            },
            failovers: t.failovers(),
            totals: t.totals(),
            calls_waiting: self.front.calls_waiting(),
        })
    }

    /// Ends every event stream (`GET /api/v1/events`) and refuses new ones: call it when the
    /// HTTP server starts its graceful shutdown, which otherwise waits for them forever.
    pub fn close_event_streams(&self) {
        self.telemetry.closing.send_replace(true);
    }

    /// Whether the cluster can serve, reused unless the master changed or was lost meanwhile
    /// (so a failover shows at once): "ready" for a second, so a flood of probes costs one look
    /// per second, and "not ready" for 50 ms, so the recovery shows at once too.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        let version = *self.master_changes.borrow() + self.telemetry.losses.load(Ordering::SeqCst);
        let mut cached = self.telemetry.ready.lock().await;
        if let Some((at, seen, answer)) = cached.as_ref() {
            if *seen == version && reusable(answer, at.elapsed()) {
                return answer.clone();
            }
        }
        let answer = match self.status().await {
            Ok(status) => readiness(status.master.as_ref(), &status.workers),
            Err(e) => Err(format!("cannot read the cluster's state: {e}")),
        };
        *cached = Some((Instant::now(), version, answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{CatchUp, CatchUpPlan, MemberRecord, Progress};

    fn member(id: &str, pid: u32, role: Role, caught_up: bool, applied: Option<u64>) -> MemberInfo {
        MemberInfo {
            path: format!("/rideshare/workers/{id}"),
            record: MemberRecord {
                id: id.into(),
                pid,
                role,
                catch_up: caught_up.then_some(CatchUp { entries: 4, ms: 2 }),
                state: None,
                progress: applied.map(|applied_index| Progress {
                    applied_index,
                    epoch: 2,
                    checksum: None,
                }),
                http: None,
                catching_up: Some(CatchUpPlan { from: 0, to: 4 }),
                snapshots: None,
            },
        }
    }

    fn handle(id: &str, pid: u32) -> WorkerHandle {
        WorkerHandle { id: id.into(), pid }
    }

    fn master(id: &str, pid: u32, ready: bool) -> MasterRecord {
        MasterRecord {
            id: id.into(),
            pid,
            epoch: 3,
            ready,
        }
    }

    #[test]
    fn workers_show_role_state_and_lag_from_nodes_and_answers() {
        let running = [handle("c", 12), handle("a", 10), handle("b", 11)];
        let members = [
            member("a", 10, Role::Master, true, Some(7)),
            member("b", 11, Role::Slave, false, Some(3)),
        ];
        let reported = HashMap::from([("a".to_owned(), 9)]);
        let views = worker_views(
            &running,
            &members,
            Some(&master("a", 10, true)),
            9,
            &reported,
            |_| Duration::from_secs(5),
        );
        let shown: Vec<_> = views
            .iter()
            .map(|w| (w.pid, w.role, w.state, w.applied_index, w.lag, w.epoch))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    10,
                    ShownRole::Master,
                    WorkerState::Serving,
                    Some(9),
                    Some(0),
                    Some(3)
                ),
                (
                    11,
                    ShownRole::Slave,
                    WorkerState::CatchingUp,
                    Some(3),
                    Some(6),
                    Some(2)
                ),
                (12, ShownRole::None, WorkerState::Starting, None, None, None),
            ]
        );
    }

    #[test]
    fn ready_needs_a_ready_master_and_a_caught_up_slave() {
        let running = [handle("a", 10), handle("b", 11)];
        let caught_up = [
            member("a", 10, Role::Master, true, None),
            member("b", 11, Role::Slave, true, None),
        ];
        let catching_up = [
            member("a", 10, Role::Master, true, None),
            member("b", 11, Role::Slave, false, None),
        ];
        let views = |members: &[MemberInfo], m: Option<&MasterRecord>| {
            worker_views(&running, members, m, 0, &HashMap::new(), |_| Duration::ZERO)
        };
        let ready = master("a", 10, true);
        let taking_over = master("a", 10, false);
        assert!(readiness(Some(&ready), &views(&caught_up, Some(&ready))).is_ok());
        assert!(readiness(None, &views(&caught_up, None)).is_err());
        assert!(readiness(Some(&taking_over), &views(&caught_up, Some(&taking_over))).is_err());
        assert!(readiness(Some(&ready), &views(&catching_up, Some(&ready))).is_err());
    }

    #[test]
    fn a_ready_answer_is_reused_for_a_second_and_a_refusal_for_50_ms() {
        let ready = Ok(());
        let refused = Err("no master".to_string());
        assert!(reusable(&ready, Duration::from_millis(999)));
        assert!(!reusable(&ready, Duration::from_secs(1)));
        assert!(reusable(&refused, Duration::from_millis(49)));
        assert!(!reusable(&refused, Duration::from_millis(50)));
        assert!(!reusable(&refused, Duration::from_millis(999)));
    }

    /// Paused time, and log appends that take (virtual) time: nothing of the election can
    /// happen between the crash and the next look.
    #[tokio::test(start_paused = true)]
    async fn ready_is_refused_from_a_master_crash_until_a_new_master_and_a_slave_serve() {
        use crate::cluster::{EmbeddedCluster, EmbeddedConfig};
        use crate::log::mem::MemLog;
        let log = MemLog::new();
        log.set_append_delay(Duration::from_millis(5));
        let cluster = EmbeddedCluster::start(Arc::new(log), EmbeddedConfig::default())
            .await
            .unwrap();
        let o = cluster.orchestrator();
        let until_ready = |what: &'static str| async move {
            for _ in 0..200 {
                if o.ready().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("not ready within 10 s {what}: {:?}", o.ready().await);
        };
        until_ready("at start").await;
        let crashed = o.crash_master().await.unwrap();
        let refused = o
            .ready()
            .await
            .expect_err("ready right after the master's crash");
        assert!(refused.contains("no master"), "{refused}");
        until_ready("after the failover").await;
        let status = o.status().await.unwrap();
        let master = status.master.unwrap();
        assert_ne!(master.pid, crashed);
        assert_eq!(status.failovers.len(), 1);
        cluster.shutdown();
    }
}
