//! The orchestrator: the DBaaS front door. It puts reads and writes on the queues and returns
//! the answers; it never touches a database. It also keeps the cluster at one master and the
//! scaled number of slaves, replacing dead workers and scaling with read load.
//!
//! Its own state is soft: the acknowledged index starts at the log's end, the scaling target is
//! kept in the coordinator, and workers are found in the coordinator and the runtime, so a
//! restarted orchestrator carries on where the last one stopped.

pub mod dashboard;
pub mod http;
pub mod status;
pub mod switchover;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::coord::{Coordinator, CreateMode, Session};
use crate::error::{Error, Result};
use crate::log::Log;
use crate::policy::{reconcile, target_slaves, Member, ScalePolicy};
use crate::protocol::{
    decode, decode_versioned, encode, MasterRecord, MemberRecord, ReadRequest, Refusal, Reply,
    ScaleRecord, WriteRequest, MASTER, READ_QUEUE, SCALE, VERSION, WORKERS, WRITE_QUEUE,
};
use crate::rpc::RpcClient;
use crate::runtime::Runtime;

/// Immediate resends of one write on master changes, at most (a failover changes the master
/// node two or three times).
const MAX_REPUBLISH: u32 = 8;

#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// Names this orchestrator's reply queue; unique per running orchestrator.
    pub name: String,
    /// Bound on one attempt of a write or read (publish to reply).
    pub attempt_timeout: Duration,
    /// Attempts per write or read before the client gets an error.
    pub attempts: u32,
    /// Pause between attempts (failover in progress).
    pub retry_pause: Duration,
    /// Length of a scaling window.
    pub scale_window: Duration,
    pub policy: ScalePolicy,
    /// How often the supervisor compares what runs with what should.
    pub reconcile_every: Duration,
    /// A started worker not registered after this long is killed and replaced.
    pub start_grace: Duration,
    /// Calls in flight at once, at most.
    pub max_in_flight: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            name: format!("orchestrator-{:08x}", rand::random::<u32>()),
            attempt_timeout: Duration::from_secs(3),
            attempts: 5,
            retry_pause: Duration::from_millis(100),
            scale_window: Duration::from_secs(120),
            policy: ScalePolicy::default(),
            reconcile_every: Duration::from_millis(250),
            start_grace: Duration::from_secs(30),
            max_in_flight: 1024,
        }
    }
}

#[derive(Clone)]
pub struct OrchestratorDeps {
    pub broker: Arc<dyn Broker>,
    pub log: Arc<dyn Log>,
    pub coordinator: Arc<dyn Coordinator>,
    pub runtime: Arc<dyn Runtime>,
}

/// An acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WriteAck {
    pub index: u64,
    pub epoch: u64,
    pub worker: String,
    pub outcome: WriteOutcome,
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ReadAnswer {
    pub applied_index: u64,
    pub worker: String,
    pub outcome: ReadOutcome,
}

/// A registered worker.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    pub path: String,
    pub record: MemberRecord,
}

pub struct Orchestrator {
    config: OrchestratorConfig,
    deps: OrchestratorDeps,
    /// Replaced by a fresh one when it expires (the orchestrator holds no ephemeral nodes).
    session: Mutex<Arc<dyn Session>>,
    rpc: RpcClient,
    /// The highest log index acknowledged to a client: reads wait for it.
    acked: AtomicU64,
    /// Reads counted in the current scaling window.
    reads: AtomicU64,
    first_read: Notify,
    /// Bumped whenever the master node changes.
    master_changes: tokio::sync::watch::Sender<u64>,
    target: AtomicU64,
    /// Running workers without a membership node (starting, or lost their session).
    starting: Mutex<BTreeMap<String, Unregistered>>,
    reconciling: tokio::sync::Mutex<()>,
    telemetry: status::Telemetry,
    /// Every write holds it shared; a switchover takes it alone to hold new writes.
    write_gate: tokio::sync::RwLock<()>,
    /// One switchover at a time.
    switching: tokio::sync::Mutex<()>,
}

/// A running orchestrator; dropping it stops its background tasks (as a crash would).
pub struct RunningOrchestrator {
    pub orchestrator: Arc<Orchestrator>,
    _tasks: JoinSet<()>,
}

impl Orchestrator {
    /// Rebuilds state from the coordinator and the log, then starts supervising and scaling.
    pub async fn start(
        config: OrchestratorConfig,
        deps: OrchestratorDeps,
    ) -> Result<RunningOrchestrator> {
        let session: Arc<dyn Session> = Arc::from(deps.coordinator.connect().await?);
        status::describe();
        deps.broker.declare(WRITE_QUEUE).await?;
        deps.broker.declare(READ_QUEUE).await?;
        let rpc =
            RpcClient::start(Arc::clone(&deps.broker), &config.name, config.max_in_flight).await?;
        // Anything in the log may have been acknowledged by an earlier orchestrator.
        let acked = deps.log.end().await?;
        let target = match session.get(SCALE).await? {
            Some((data, _)) => decode::<ScaleRecord>(&data).map(|s| s.slaves).unwrap_or(1),
            None => 1,
        };
        let orchestrator = Arc::new(Orchestrator {
            config,
            deps,
            session: Mutex::new(session),
            rpc,
            acked: AtomicU64::new(acked),
            reads: AtomicU64::new(0),
            first_read: Notify::new(),
            master_changes: tokio::sync::watch::channel(0).0,
            target: AtomicU64::new(target.max(1)),
            starting: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
            telemetry: status::Telemetry::default(),
            write_gate: tokio::sync::RwLock::new(()),
            switching: tokio::sync::Mutex::new(()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(supervise(Arc::clone(&orchestrator)));
        tasks.spawn(scale(Arc::clone(&orchestrator)));
        tasks.spawn(follow_master(Arc::clone(&orchestrator)));
        tasks.spawn(status::follow_master(Arc::clone(&orchestrator)));
        tracing::info!(acked, target, "orchestrator started");
        Ok(RunningOrchestrator {
            orchestrator,
            _tasks: tasks,
        })
    }

    fn session(&self) -> Arc<dyn Session> {
        Arc::clone(&self.session.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Opens a new session if the current one has ended.
    async fn renew_session(&self) -> Result<()> {
        let current = self.session();
        if futures::FutureExt::now_or_never(current.lost()).is_none() {
            return Ok(());
        }
        tracing::warn!("coordinator session lost; opening a new one");
        let fresh: Arc<dyn Session> = Arc::from(self.deps.coordinator.connect().await?);
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn acked_index(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn target_slaves(&self) -> u64 {
        self.target.load(Ordering::SeqCst)
    }

    /// Sends one write to the master; retries (same request id) through failovers.
    pub async fn write(&self, request_id: RequestId, op: WriteOp) -> Result<WriteAck> {
        let _held_during_a_switchover = self.write_gate.read().await;
        let body = encode(&WriteRequest {
            v: VERSION,
            request_id,
            op,
            trace: rideshare_core::api::observe::current_request_id(),
        });
        let mut last = Error::NotMaster;
        let mut master_changes = self.master_changes.subscribe();
        let mut attempt = 0;
        let mut republished = 0;
        while attempt < self.config.attempts {
            // A write sent to a master that then froze or died waits in its hands until the
            // attempt times out. When the master changes, send it again at once (same request
            // id, so it applies once): failover then costs the election, not the timeout.
            let answer = tokio::select! {
                answer = self.call(WRITE_QUEUE, body.clone()) => answer,
                _ = master_changes.changed(), if republished < MAX_REPUBLISH => {
                    republished += 1;
                    continue;
                }
            };
            attempt += 1;
            if attempt < self.config.attempts && !matches!(answer, Ok(Reply::Written { .. })) {
                tokio::time::sleep(self.config.retry_pause).await;
            }
            match answer {
                Ok(Reply::Written {
                    index,
                    epoch,
                    worker,
                    outcome,
                    ..
                }) => {
                    self.acked.fetch_max(index, Ordering::SeqCst);
                    return Ok(WriteAck {
                        index,
                        epoch,
                        worker,
                        outcome,
                    });
                }
                Ok(Reply::Refused {
                    refusal: Refusal::BadRequest,
                    message,
                    ..
                }) => return Err(Error::Protocol(message)),
                Ok(other) => last = refusal_error(other),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends one read to a slave. Unless `stale`, the slave first applies every write
    /// acknowledged so far.
    pub async fn read(&self, op: ReadOp, stale: bool) -> Result<ReadAnswer> {
        let min_index = if stale { 0 } else { self.acked_index() };
        let body = encode(&ReadRequest {
            v: VERSION,
            op,
            min_index,
            trace: rideshare_core::api::observe::current_request_id(),
        });
        let mut last = Error::NotMaster;
        for attempt in 0..self.config.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.config.retry_pause).await;
            }
            match self.call(READ_QUEUE, body.clone()).await {
                Ok(Reply::Read {
                    applied_index,
                    worker,
                    outcome,
                    ..
                }) => {
                    return Ok(ReadAnswer {
                        applied_index,
                        worker,
                        outcome,
                    })
                }
                Ok(Reply::Refused {
                    refusal: Refusal::BadRequest,
                    message,
                    ..
                }) => return Err(Error::Protocol(message)),
                Ok(other) => last = refusal_error(other),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Counts one client read for the scaling policy; the first starts the window timer.
    pub fn count_read(&self) {
        if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_read.notify_one();
        }
    }

    async fn call(&self, queue: &str, body: Bytes) -> Result<Reply> {
        let bytes = self
            .rpc
            .call(queue, body, self.config.attempt_timeout)
            .await?;
        decode_versioned::<Reply>(&bytes)
    }

    /// Registered workers.
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        let children = self.session().children(WORKERS).await?;
        let mut members = Vec::with_capacity(children.len());
        for child in children {
            let path = format!("{WORKERS}/{child}");
            if let Some((data, _)) = self.session().get(&path).await? {
                if let Ok(record) = decode::<MemberRecord>(&data) {
                    members.push(MemberInfo { path, record });
                }
            }
        }
        Ok(members)
    }

    /// The current master's record, if there is one.
    pub async fn master(&self) -> Result<Option<MasterRecord>> {
        Ok(match self.session().get(MASTER).await? {
            Some((data, _)) => decode::<MasterRecord>(&data).ok(),
            None => None,
        })
    }

    /// Pids of all running workers, ascending.
    pub async fn worker_pids(&self) -> Result<Vec<u32>> {
        Ok(self
            .deps
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|w| w.pid)
            .collect())
    }

    /// Kills a worker and removes its nodes at once, rather than waiting for its session to
    /// expire: the orchestrator knows it is dead.
    async fn kill_worker(&self, id: &str) -> Result<()> {
        self.deps.runtime.kill(id).await?;
        self.forget_worker(id).await;
        Ok(())
    }

    async fn forget_worker(&self, id: &str) {
        if let Ok(members) = self.members().await {
            for m in members.iter().filter(|m| m.record.id == id) {
                let _ = self.session().delete(&m.path).await;
            }
        }
        if let Ok(Some(master)) = self.master().await {
            if master.id == id {
                let _ = self.session().delete(MASTER).await;
            }
        }
    }

    /// `crash/master`: kills the master; the election and the supervisor take it from there.
    pub async fn crash_master(&self) -> Result<u32> {
        let master = self.master().await?.ok_or(Error::NotMaster)?;
        self.kill_worker(&master.id).await?;
        self.telemetry.master_lost(&master.id);
        metrics::counter!("rideshare_worker_kills_total", "reason" => "crash_master").increment(1);
        tracing::info!(id = %master.id, pid = master.pid, "crashed the master on request");
        Ok(master.pid)
    }

    /// `crash/slave`: kills the slave with the highest pid.
    pub async fn crash_slave(&self) -> Result<u32> {
        let master = self.master().await?.map(|m| m.id);
        let slave = self
            .deps
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|w| Some(&w.id) != master.as_ref())
            .max_by_key(|w| w.pid)
            .ok_or_else(|| Error::NoWorker("slave".into()))?;
        self.kill_worker(&slave.id).await?;
        metrics::counter!("rideshare_worker_kills_total", "reason" => "crash_slave").increment(1);
        tracing::info!(id = %slave.id, pid = slave.pid, "crashed a slave on request");
        Ok(slave.pid)
    }

    /// One supervision step: forget dead workers, kill stuck ones, start or stop to the target.
    pub async fn reconcile_once(&self) -> Result<()> {
        let _one_at_a_time = self.reconciling.lock().await;
        let running = self.deps.runtime.list().await?;
        self.telemetry.seen(&running);
        let mut members = self.members().await?;
        // Registered but not running: dead. Drop their nodes now instead of after the timeout.
        for dead in members
            .iter()
            .filter(|m| !running.iter().any(|w| w.id == m.record.id))
        {
            tracing::info!(id = %dead.record.id, pid = dead.record.pid, "worker died");
            metrics::counter!("rideshare_worker_deaths_total").increment(1);
            self.telemetry.master_lost(&dead.record.id);
            let _ = self.session().delete(&dead.path).await;
            if let Ok(Some(master)) = self.master().await {
                if master.id == dead.record.id {
                    let _ = self.session().delete(MASTER).await;
                }
            }
        }
        members.retain(|m| running.iter().any(|w| w.id == m.record.id));
        // Running but not registered: starting, or stuck past the grace period.
        let now = Instant::now();
        let (starting, launching, stuck) = {
            let mut started = self.starting.lock().unwrap_or_else(|e| e.into_inner());
            started.retain(|id, _| running.iter().any(|w| &w.id == id));
            for m in &members {
                started.remove(&m.record.id);
            }
            let mut starting = 0;
            let mut launching = 0;
            let mut stuck = Vec::new();
            for w in running
                .iter()
                .filter(|w| !members.iter().any(|m| m.record.id == w.id))
            {
                // Grace counts from the start, or from when the worker was first seen without
                // a node (paused, or its session just expired): it may come back, or exit.
                let seen = *started.entry(w.id.clone()).or_insert(Unregistered {
                    since: now,
                    launched: false,
                });
                if now.duration_since(seen.since) < self.config.start_grace {
                    starting += 1;
                    launching += usize::from(seen.launched);
                } else {
                    stuck.push(w.id.clone());
                }
            }
            (starting, launching, stuck)
        };
        for id in stuck {
            tracing::warn!(%id, "worker never registered; killing it");
            metrics::counter!("rideshare_worker_kills_total", "reason" => "never_registered")
                .increment(1);
            let _ = self.deps.runtime.kill(&id).await;
        }
        let master = self.master().await?.map(|m| m.id);
        let live: Vec<Member> = members
            .iter()
            .map(|m| Member {
                id: m.record.id.clone(),
                pid: m.record.pid,
            })
            .collect();
        let plan = reconcile(
            self.target_slaves(),
            &live,
            master.as_deref(),
            starting,
            launching,
        );
        for id in &plan.stop {
            tracing::info!(%id, "scaling in: stopping a slave");
            metrics::counter!("rideshare_worker_kills_total", "reason" => "scale_in").increment(1);
            self.kill_worker(id).await?;
        }
        for _ in 0..plan.start {
            let handle = self.deps.runtime.start().await?;
            tracing::info!(id = %handle.id, pid = handle.pid, "started a worker");
            metrics::counter!("rideshare_worker_starts_total").increment(1);
            self.starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    handle.id,
                    Unregistered {
                        since: Instant::now(),
                        launched: true,
                    },
                );
        }
        Ok(())
    }

    async fn set_target(&self, slaves: u64) -> Result<()> {
        let previous = self.target.swap(slaves, Ordering::SeqCst);
        if previous != slaves {
            tracing::info!(from = previous, to = slaves, "scaling target changed");
        }
        let data = encode(&ScaleRecord { slaves });
        match self.session().set(SCALE, data.clone(), None).await {
            Err(Error::NoNode(_)) => {
                match self
                    .session()
                    .create(SCALE, data, CreateMode::Persistent)
                    .await
                {
                    Ok(_) | Err(Error::NodeExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

/// A running worker without a membership node.
#[derive(Clone, Copy)]
struct Unregistered {
    /// When it was started, or first seen without a node.
    since: Instant,
    /// This orchestrator started it (not merely found it: paused, or its session ended).
    launched: bool,
}

fn refusal_error(reply: Reply) -> Error {
    match reply {
        Reply::Refused {
            refusal: Refusal::NotMaster,
            ..
        } => Error::NotMaster,
        Reply::Refused { message, .. } => Error::LogUnavailable(message),
        other => Error::Protocol(format!("unexpected reply {other:?}")),
    }
}

/// The supervisor: reconciles on every membership or master change and at least every tick.
async fn supervise(orchestrator: Arc<Orchestrator>) {
    let mut master_changes = orchestrator.master_changes.subscribe();
    loop {
        if let Err(e) = orchestrator.renew_session().await {
            tracing::warn!(error = %e, "coordinator unavailable");
        }
        if let Err(e) = orchestrator.reconcile_once().await {
            tracing::warn!(error = %e, "reconcile failed");
        }
        let watch = orchestrator.session().children_watch(WORKERS).await;
        let tick = tokio::time::sleep(orchestrator.config.reconcile_every);
        match watch {
            Ok((_, changed)) => {
                tokio::select! {
                    _ = changed => {}
                    _ = master_changes.changed() => {}
                    _ = tick => {}
                }
            }
            Err(_) => tick.await,
        }
    }
}

/// Bumps `master_changes` on every change of the master node.
async fn follow_master(orchestrator: Arc<Orchestrator>) {
    loop {
        match orchestrator.session().get_watch(MASTER).await {
            Ok((_, changed)) => {
                changed.await;
                orchestrator.master_changes.send_modify(|n| *n += 1);
            }
            Err(_) => tokio::time::sleep(orchestrator.config.reconcile_every).await,
        }
    }
}

/// The scaler: the first read starts the timer; every window sets the target from the reads
/// counted in it, then starts counting again.
async fn scale(orchestrator: Arc<Orchestrator>) {
    if orchestrator.reads.load(Ordering::SeqCst) == 0 {
        orchestrator.first_read.notified().await;
    }
    orchestrator.telemetry.window_started();
    let mut windows = tokio::time::interval_at(
        Instant::now() + orchestrator.config.scale_window,
        orchestrator.config.scale_window,
    );
    loop {
        windows.tick().await;
        let reads = orchestrator.reads.swap(0, Ordering::SeqCst);
        orchestrator.telemetry.window_started();
        let target = target_slaves(orchestrator.config.policy, reads);
        tracing::info!(reads, target, "scaling window closed");
        orchestrator
            .telemetry
            .decided(reads, orchestrator.target_slaves(), target);
        if let Err(e) = orchestrator.set_target(target).await {
            tracing::warn!(error = %e, "could not record the scaling target");
        }
        if let Err(e) = orchestrator.reconcile_once().await {
            tracing::warn!(error = %e, "reconcile after scaling failed");
        }
    }
}
