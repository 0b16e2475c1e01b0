//! The cluster as the orchestrator sees it, for people and their tools: `GET /api/v1/status`
//! (workers, scaling window, recent failovers), `GET /api/v1/workers`, a server-sent event
//! stream of the same status (`GET /api/v1/events`), readiness, and the orchestrator's
//! Prometheus figures.
//!
//! Everything here is read from what the orchestrator already has: the coordinator's member and
//! master nodes, the runtime's list, the answers workers send. It asks no worker anything and
//! changes nothing in the cluster.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rideshare_core::api::common::ApiError;
use rideshare_core::api::observe::{gauge_family, Probe};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{MemberInfo, Orchestrator};
use crate::error::Result;
use crate::protocol::{MasterRecord, Role};
use crate::runtime::WorkerHandle;

/// Failovers and scaling decisions kept for display, at most.
const HISTORY: usize = 10;
/// How often the event stream sends the status when nothing changed.
const EVENTS_EVERY: Duration = Duration::from_secs(1);
/// How often the master is looked at besides its watch firing.
const MASTER_POLL: Duration = Duration::from_millis(200);
/// How long a readiness answer is reused while the master stays the same.
const READY_CACHE: Duration = Duration::from_secs(1);

/// What the orchestrator remembers for display: soft, rebuilt empty at restart.
pub(crate) struct Telemetry {
    started: Instant,
    /// The highest applied index each worker has reported in an answer.
    reported: Mutex<HashMap<String, u64>>,
    /// When this orchestrator first saw each running worker.
    first_seen: Mutex<HashMap<String, Instant>>,
    master: Mutex<MasterWatch>,
    failovers: Mutex<VecDeque<Failover>>,
    window: Mutex<Window>,
    writes_acked: AtomicU64,
    writes_failed: AtomicU64,
    reads_answered: AtomicU64,
    reads_failed: AtomicU64,
    ready: tokio::sync::Mutex<Option<ReadyAnswer>>,
    /// Set when the HTTP server stops: event streams end, so draining connections can finish.
    closing: tokio::sync::watch::Sender<bool>,
    /// Masters this orchestrator killed or found dead: a readiness answer from before is stale.
    losses: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: Instant::now(),
            reported: Mutex::default(),
            first_seen: Mutex::default(),
            master: Mutex::default(),
            failovers: Mutex::default(),
            window: Mutex::default(),
            writes_acked: AtomicU64::new(0),
            writes_failed: AtomicU64::new(0),
            reads_answered: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            ready: tokio::sync::Mutex::new(None),
            closing: tokio::sync::watch::channel(false).0,
            losses: AtomicU64::new(0),
        }
    }
}

/// A readiness answer: when, at which master-change count, and what.
type ReadyAnswer = (Instant, u64, std::result::Result<(), String>);

#[derive(Default)]
struct MasterWatch {
    /// The ready master last seen: id, pid.
    current: Option<(String, u32)>,
    /// Since when there has been no ready master, and which one was lost.
    lost: Option<(Instant, SystemTime, String, u32)>,
}

#[derive(Default)]
struct Window {
    /// When the current scaling window began (the first read starts the first one).
    started: Option<Instant>,
    decisions: VecDeque<Decision>,
}

/// One master change seen by this orchestrator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failover {
    pub old_id: String,
    pub old_pid: u32,
    pub new_id: String,
    pub new_pid: u32,
    pub epoch: u64,
    /// When the old master was seen gone (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// From the old master seen gone to the new one ready to take writes; unknown when the
    /// change happened between two looks at the master node.
    pub duration_ms: Option<u64>,
}

/// One end of a scaling window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    pub at_unix_ms: u64,
    pub reads: u64,
    pub from_slaves: u64,
    pub to_slaves: u64,
}

/// Whether a worker serves yet.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Running, not registered yet (or lost its node).
    Starting,
    /// Registered, replaying the log.
    CatchingUp,
    /// Caught up: reads (or writes, as master) are served.
    Serving,
}

/// A worker's role as shown: a starting worker has none yet.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShownRole {
    Master,
    Slave,
    None,
}

/// One worker as `GET /api/v1/status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub id: String,
    pub pid: u32,
    pub role: ShownRole,
    pub state: WorkerState,
    /// The newest epoch marker the worker has applied (the master's own epoch for the master).
    pub epoch: Option<u64>,
    /// The highest applied log index known: from its member node or its last answer.
    pub applied_index: Option<u64>,
    /// Acknowledged index minus applied index (entries this worker has still to apply).
    pub lag: Option<u64>,
    /// Since this orchestrator first saw it running.
    pub uptime_s: f64,
    /// Entries replayed at start and how long it took, once caught up.
    pub catch_up_entries: Option<u64>,
    pub catch_up_ms: Option<u64>,
    /// Where the worker serves `/health`, `/ready` and `/metrics`, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// The scaler's window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScalingStatus {
    pub window_s: f64,
    /// Reads counted so far in this window.
    pub reads: u64,
    pub target_slaves: u64,
    pub reads_per_slave: u64,
    pub max_slaves: u64,
    /// Seconds until the window closes; none before the first read.
    pub next_decision_s: Option<f64>,
    /// The last windows' decisions, newest last.
    pub decisions: Vec<Decision>,
}

/// Reads and writes answered since this orchestrator started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub reads_answered: u64,
    pub reads_failed: u64,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub orchestrator: String,
    pub uptime_s: f64,
    /// The highest log index acknowledged to a client.
    pub acked_index: u64,
    pub master: Option<MasterRecord>,
    pub workers: Vec<WorkerStatus>,
    pub scaling: ScalingStatus,
    /// The last failovers, newest last.
    pub failovers: Vec<Failover>,
    pub totals: Totals,
    /// Calls waiting for a worker's answer now.
    pub calls_waiting: usize,
}

/// `GET /api/v1/workers`: one object per worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerBrief {
    pub pid: u32,
    pub role: ShownRole,
    pub applied_index: Option<u64>,
    pub lag: Option<u64>,
    pub state: WorkerState,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            let member = members.iter().find(|m| m.record.id == w.id);
            let is_master = master.is_some_and(|m| m.id == w.id);
            let Some(member) = member else {
                return WorkerStatus {
                    id: w.id.clone(),
                    pid: w.pid,
                    role: ShownRole::None,
                    state: WorkerState::Starting,
                    epoch: None,
                    applied_index: None,
                    lag: None,
                    uptime_s: uptime(&w.id).as_secs_f64(),
                    catch_up_entries: None,
                    catch_up_ms: None,
                    http: None,
                };
            };
            let record = &member.record;
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
                uptime_s: uptime(&w.id).as_secs_f64(),
                catch_up_entries: record.catch_up.map(|c| c.entries),
                catch_up_ms: record.catch_up.map(|c| c.ms),
                http: record.http.clone(),
            }
        })
        .collect();
    views.sort_by_key(|v| v.pid);
    views
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

/// Installs the process's Prometheus registry if need be, and describes the orchestrator's
/// counters and histograms in it.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    rideshare_core::api::observe::metrics_handle();
    describe_counter!(
        "rideshare_db_writes_total",
        "Database writes answered to clients: acknowledged (durable and applied) or failed."
    );
    describe_counter!(
        "rideshare_db_reads_total",
        "Database reads answered to clients, by consistency (strong, stale) and result."
    );
    describe_counter!(
        "rideshare_elections_total",
        "Master changes seen by this orchestrator (a ready master after the previous one was lost)."
    );
    describe_histogram!(
        "rideshare_election_duration_seconds",
        Unit::Seconds,
        "From the old master seen gone to the new master ready for writes."
    );
    describe_counter!(
        "rideshare_worker_starts_total",
        "Workers started by this orchestrator (at start, to replace dead ones, to scale out)."
    );
    describe_counter!(
        "rideshare_worker_deaths_total",
        "Registered workers found no longer running (crashed, killed, or stopped on their own)."
    );
    describe_counter!(
        "rideshare_worker_kills_total",
        "Workers killed by this orchestrator, by reason."
    );
    describe_counter!(
        "rideshare_switchovers_total",
        "Planned hand-overs of the master role, by result (done, failed)."
    );
    describe_counter!(
        "rideshare_scaling_decisions_total",
        "Scaling windows closed, by change of the slave target (out, in, none)."
    );
}

impl Telemetry {
    /// A write answered (or not) to a client.
    pub(crate) fn written(&self, answer: &Result<super::WriteAck>) {
        match answer {
            Ok(ack) => {
                self.writes_acked.fetch_add(1, Ordering::Relaxed);
                self.report(&ack.worker, ack.index);
                metrics::counter!("rideshare_db_writes_total", "result" => "acknowledged")
                    .increment(1);
            }
            Err(_) => {
                self.writes_failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rideshare_db_writes_total", "result" => "failed").increment(1);
            }
        }
    }

    /// A read answered (or not) to a client.
    pub(crate) fn read(&self, answer: &Result<super::ReadAnswer>, stale: bool) {
        let consistency = if stale { "stale" } else { "strong" };
        let result = match answer {
            Ok(a) => {
                self.reads_answered.fetch_add(1, Ordering::Relaxed);
                self.report(&a.worker, a.applied_index);
                "answered"
            }
            Err(_) => {
                self.reads_failed.fetch_add(1, Ordering::Relaxed);
                "failed"
            }
        };
        metrics::counter!("rideshare_db_reads_total", "consistency" => consistency, "result" => result)
            .increment(1);
    }

    fn report(&self, worker: &str, index: u64) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let entry = reported.entry(worker.to_owned()).or_default();
        *entry = (*entry).max(index);
    }

    /// Remembers when each running worker was first seen, and forgets the gone ones.
    pub(crate) fn seen(&self, running: &[WorkerHandle]) {
        let now = Instant::now();
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        first_seen.retain(|id, _| running.iter().any(|w| &w.id == id));
        for w in running {
            first_seen.entry(w.id.clone()).or_insert(now);
        }
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| running.iter().any(|w| &w.id == id));
    }

    /// A scaling window began (the first read, or the previous window's end).
    pub(crate) fn window_started(&self) {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .started = Some(Instant::now());
    }

    /// A scaling window closed with a decision.
    pub(crate) fn decided(&self, reads: u64, from_slaves: u64, to_slaves: u64) {
        let change = match to_slaves.cmp(&from_slaves) {
            std::cmp::Ordering::Greater => "out",
            std::cmp::Ordering::Less => "in",
            std::cmp::Ordering::Equal => "none",
        };
        metrics::counter!("rideshare_scaling_decisions_total", "change" => change).increment(1);
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.decisions.len() == HISTORY {
            window.decisions.pop_front();
        }
        window.decisions.push_back(Decision {
            at_unix_ms: unix_ms(SystemTime::now()),
            reads,
            from_slaves,
            to_slaves,
        });
    }

    /// The master `id` is gone (killed on request, or found dead): the failover starts now,
    /// even if the next look at the master node already finds its successor.
    pub(crate) fn master_lost(&self, id: &str) {
        self.losses.fetch_add(1, Ordering::SeqCst);
        let mut watch = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if watch
            .current
            .as_ref()
            .is_some_and(|(current, _)| current == id)
        {
            if let Some((id, pid)) = watch.current.take() {
                watch.lost = Some((Instant::now(), SystemTime::now(), id, pid));
            }
        }
    }

    /// Looks at the master node: a ready master after a lost one is a failover.
    pub(crate) fn master_seen(&self, master: Option<&MasterRecord>) {
        let mut watch = self.master.lock().unwrap_or_else(|e| e.into_inner());
        match master {
            Some(m) if m.ready => {
                if watch.current.as_ref().is_some_and(|(id, _)| id == &m.id) {
                    return;
                }
                let lost = match watch.lost.take() {
                    Some((since, at, id, pid)) => Some((Some(since.elapsed()), at, id, pid)),
                    // Replaced between two looks: how long it took was not seen.
                    None => watch
                        .current
                        .take()
                        .map(|(id, pid)| (None, SystemTime::now(), id, pid)),
                };
                if let Some((took, at, old_id, old_pid)) = lost {
                    metrics::counter!("rideshare_elections_total").increment(1);
                    if let Some(took) = took {
                        metrics::histogram!("rideshare_election_duration_seconds")
                            .record(took.as_secs_f64());
                    }
                    tracing::info!(
                        old_pid,
                        new_pid = m.pid,
                        epoch = m.epoch,
                        ms = took.map(ms),
                        "failover complete"
                    );
                    let mut failovers = self.failovers.lock().unwrap_or_else(|e| e.into_inner());
                    if failovers.len() == HISTORY {
                        failovers.pop_front();
                    }
                    failovers.push_back(Failover {
                        old_id,
                        old_pid,
                        new_id: m.id.clone(),
                        new_pid: m.pid,
                        epoch: m.epoch,
                        at_unix_ms: unix_ms(at),
                        duration_ms: took.map(ms),
                    });
                }
                watch.current = Some((m.id.clone(), m.pid));
            }
            _ => {
                if let Some((id, pid)) = watch.current.take() {
                    watch.lost = Some((Instant::now(), SystemTime::now(), id, pid));
                }
            }
        }
    }
}

impl Orchestrator {
    /// The whole status: reads the coordinator and the runtime.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let running = self.deps.runtime.list().await?;
        let members = self.members().await?;
        let master = self.master().await?;
        let acked = self.acked_index();
        let t = &self.telemetry;
        let workers = {
            let reported = t.reported.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let first_seen = t
                .first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            worker_views(
                &running,
                &members,
                master.as_ref(),
                acked,
                &reported,
                |id| first_seen.get(id).map(|s| s.elapsed()).unwrap_or_default(),
            )
        };
        let window = self.config.scale_window;
        let (started, decisions) = {
            let w = t.window.lock().unwrap_or_else(|e| e.into_inner());
            (w.started, w.decisions.iter().cloned().collect())
        };
        Ok(ClusterStatus {
            orchestrator: self.config.name.clone(),
            uptime_s: t.started.elapsed().as_secs_f64(),
            acked_index: acked,
            master,
            workers,
            scaling: ScalingStatus {
                window_s: window.as_secs_f64(),
                reads: self.reads.load(Ordering::SeqCst),
                target_slaves: self.target_slaves(),
                reads_per_slave: self.config.policy.reads_per_slave,
                max_slaves: self.config.policy.max_slaves,
                next_decision_s: started.map(|s| window.saturating_sub(s.elapsed()).as_secs_f64()),
                decisions,
            },
            failovers: t
                .failovers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            totals: Totals {
                writes_acked: t.writes_acked.load(Ordering::Relaxed),
                writes_failed: t.writes_failed.load(Ordering::Relaxed),
                reads_answered: t.reads_answered.load(Ordering::Relaxed),
                reads_failed: t.reads_failed.load(Ordering::Relaxed),
            },
            calls_waiting: self.rpc.waiting(),
        })
    }

    /// Ends every event stream (`GET /api/v1/events`) and refuses new ones: call it when the
    /// HTTP server starts its graceful shutdown, which otherwise waits for them forever.
    pub fn close_event_streams(&self) {
        self.telemetry.closing.send_replace(true);
    }

    /// Whether the cluster can serve, reused for a second unless the master changed or was
    /// lost meanwhile (so a failover shows at once, and a flood of probes costs one look per
    /// second).
    pub async fn ready(&self) -> std::result::Result<(), String> {
        let version = *self.master_changes.borrow() + self.telemetry.losses.load(Ordering::SeqCst);
        let mut cached = self.telemetry.ready.lock().await;
        if let Some((at, seen, answer)) = cached.as_ref() {
            if *seen == version && at.elapsed() < READY_CACHE {
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

/// Keeps the telemetry's view of the master current: on every change of the master node, and
/// every `MASTER_POLL` in case a change happened between two watches.
pub(crate) async fn follow_master(orchestrator: Arc<Orchestrator>) {
    let mut changes = orchestrator.master_changes.subscribe();
    loop {
        if let Ok(master) = orchestrator.master().await {
            orchestrator.telemetry.master_seen(master.as_ref());
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(MASTER_POLL) => {}
        }
    }
}

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

/// The cluster's figures in Prometheus text: one series per live worker, none left behind by
/// gone ones.
pub fn scrape_text(status: &ClusterStatus) -> String {
    let worker = |w: &WorkerStatus| vec![("worker", w.id.clone()), ("pid", w.pid.to_string())];
    let per_worker = |value: fn(&WorkerStatus) -> Option<f64>| -> Vec<(Vec<(&str, String)>, f64)> {
        status
            .workers
            .iter()
            .filter_map(|w| value(w).map(|v| (worker(w), v)))
            .collect()
    };
    let mut by_state: BTreeMap<&str, f64> =
        [("starting", 0.0), ("catching_up", 0.0), ("serving", 0.0)].into();
    for w in &status.workers {
        let key = match w.state {
            WorkerState::Starting => "starting",
            WorkerState::CatchingUp => "catching_up",
            WorkerState::Serving => "serving",
        };
        *by_state.entry(key).or_default() += 1.0;
    }
    let role_name = |r: ShownRole| match r {
        ShownRole::Master => "master",
        ShownRole::Slave => "slave",
        ShownRole::None => "none",
    };
    let master_ready = status.master.as_ref().is_some_and(|m| m.ready);
    let mut out = String::new();
    out += &gauge_family(
        "rideshare_master_up",
        "1 when a master is ready for writes, 0 during an election.",
        &[(vec![], if master_ready { 1.0 } else { 0.0 })],
    );
    out += &gauge_family(
        "rideshare_master_epoch",
        "The current master's epoch (0 while it takes over).",
        &[(
            vec![],
            status.master.as_ref().map_or(0.0, |m| m.epoch as f64),
        )],
    );
    out += &gauge_family(
        "rideshare_acked_index",
        "The highest write-log index acknowledged to a client.",
        &[(vec![], status.acked_index as f64)],
    );
    out += &gauge_family(
        "rideshare_workers",
        "Running workers by state.",
        &by_state
            .iter()
            .map(|(state, n)| (vec![("state", (*state).to_owned())], *n))
            .collect::<Vec<_>>(),
    );
    out += &gauge_family(
        "rideshare_worker_info",
        "1 per running worker, with its role and state.",
        &status
            .workers
            .iter()
            .map(|w| {
                let mut labels = worker(w);
                labels.push(("role", role_name(w.role).to_owned()));
                labels.push((
                    "state",
                    serde_json::to_value(w.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                ));
                (labels, 1.0)
            })
            .collect::<Vec<_>>(),
    );
    out += &gauge_family(
        "rideshare_worker_is_master",
        "1 for the worker that is master, 0 for the others.",
        &per_worker(|w| {
            Some(if w.role == ShownRole::Master {
                1.0
            } else {
                0.0
            })
        }),
    );
    out += &gauge_family(
        "rideshare_worker_epoch",
        "The newest epoch marker the worker has applied.",
        &per_worker(|w| w.epoch.map(|e| e as f64)),
    );
    out += &gauge_family(
        "rideshare_worker_applied_index",
        "The highest write-log index the worker is known to have applied.",
        &per_worker(|w| w.applied_index.map(|i| i as f64)),
    );
    out += &gauge_family(
        "rideshare_worker_lag_entries",
        "Acknowledged index minus the worker's applied index.",
        &per_worker(|w| w.lag.map(|l| l as f64)),
    );
    out += &gauge_family(
        "rideshare_worker_uptime_seconds",
        "Seconds since this orchestrator first saw the worker running.",
        &per_worker(|w| Some(w.uptime_s)),
    );
    out += &gauge_family(
        "rideshare_worker_catch_up_entries",
        "Log entries the worker replayed at start before serving.",
        &per_worker(|w| w.catch_up_entries.map(|e| e as f64)),
    );
    out += &gauge_family(
        "rideshare_worker_catch_up_seconds",
        "How long the worker's catch-up at start took.",
        &per_worker(|w| w.catch_up_ms.map(|m| m as f64 / 1e3)),
    );
    out += &gauge_family(
        "rideshare_scale_window_reads",
        "Reads counted so far in the current scaling window.",
        &[(vec![], status.scaling.reads as f64)],
    );
    out += &gauge_family(
        "rideshare_scale_target_slaves",
        "The number of slaves the scaler asks for.",
        &[(vec![], status.scaling.target_slaves as f64)],
    );
    out += &gauge_family(
        "rideshare_scale_next_decision_seconds",
        "Seconds until the current scaling window closes (-1 before the first read).",
        &[(vec![], status.scaling.next_decision_s.unwrap_or(-1.0))],
    );
    out += &gauge_family(
        "rideshare_db_calls_waiting",
        "Reads and writes waiting for a worker's answer now.",
        &[(vec![], status.calls_waiting as f64)],
    );
    out
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
    let briefs: Vec<WorkerBrief> = status
        .workers
        .into_iter()
        .map(|w| WorkerBrief {
            pid: w.pid,
            role: w.role,
            applied_index: w.applied_index,
            lag: w.lag,
            state: w.state,
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CatchUp, MemberRecord, Progress};

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
                }),
                http: None,
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
    fn a_lost_master_then_a_ready_one_is_one_failover() {
        let t = Telemetry::default();
        t.master_seen(Some(&master("a", 10, true)));
        assert!(
            t.failovers.lock().unwrap().is_empty(),
            "the first master is no failover"
        );
        t.master_seen(None);
        t.master_seen(Some(&master("b", 11, false)));
        t.master_seen(Some(&master("b", 11, true)));
        t.master_seen(Some(&master("b", 11, true)));
        let failovers = t.failovers.lock().unwrap();
        assert_eq!(failovers.len(), 1);
        assert_eq!((failovers[0].old_pid, failovers[0].new_pid), (10, 11));
        assert!(failovers[0].duration_ms.is_some());
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

    #[test]
    fn a_master_crashed_on_request_is_timed_even_if_its_successor_is_seen_first() {
        let t = Telemetry::default();
        t.master_seen(Some(&master("a", 10, true)));
        t.master_lost("a");
        t.master_seen(Some(&master("b", 11, true)));
        t.master_seen(Some(&master("c", 12, true)));
        let failovers = t.failovers.lock().unwrap();
        assert_eq!(failovers.len(), 2);
        assert!(failovers[0].duration_ms.is_some(), "timed from the crash");
        assert_eq!(failovers[1].duration_ms, None, "the gap was not seen");
    }
}
