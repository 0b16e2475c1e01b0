//! The orchestrator: the DBaaS front door. It puts reads and writes on the queues and returns
//! the answers; it never touches a database. It also keeps the cluster at one master and the
//! scaled number of slaves, replacing dead workers and scaling with read load.
//!
//! Its own state is soft: the acknowledged index starts at the log's end, the scaling target is
//! kept in the coordinator, and workers are found in the coordinator and the runtime, so a
//! restarted orchestrator carries on where the last one stopped.
//!
//! Its parts, one job each: the front door (`front.rs`: requests, retries, the acknowledged
//! index), the supervisor (`supervisor.rs`: membership, healing, crashes on request), the
//! scaler (`scaler.rs`), the switchover (`switchover.rs`); what it shows: `views.rs` (status
//! computed), `telemetry.rs` (event history), `prometheus.rs` (figures), `status.rs` and
//! `http.rs` (HTTP), with every wire type in `api.rs`. This module puts them together.

pub mod api;
pub mod dashboard;
mod front;
pub mod history;
pub mod http;
pub mod prometheus;
mod scaler;
pub mod status;
mod supervisor;
pub mod switchover;
mod telemetry;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::batch::Batching;
use crate::broker::Broker;
use crate::coord::Coordinator;
use crate::error::Result;
use crate::log::Log;
use crate::policy::ScalePolicy;
use crate::protocol::{MasterRecord, READ_QUEUE, WRITE_QUEUE};
use crate::registry::{Registry, RenewingRegistry};
use crate::rpc::RpcClient;
use crate::runtime::Runtime;
use crate::snapshot::SnapshotDir;

pub use api::{MemberInfo, ReadAnswer, WriteAck};
pub use front::Freshness;
use front::Front;
use scaler::Scaler;
use supervisor::Supervisor;
use telemetry::Telemetry;

/// How the orchestrator behaves; `Default` is the contract's.
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
    /// How calls that queue up are batched into queue messages.
    pub batching: Batching,
    /// The workers' shared snapshot directory: the log is truncated behind its oldest
    /// snapshot (and every live worker). `None`: the log keeps everything.
    pub snapshots: Option<SnapshotDir>,
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
            batching: Batching::default(),
            snapshots: None,
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

pub struct Orchestrator {
    name: String,
    front: Front,
    supervisor: Supervisor,
    scaler: Scaler,
    /// Replaced by a fresh session when it expires (the orchestrator holds no ephemeral nodes).
    registry: Arc<RenewingRegistry>,
    runtime: Arc<dyn Runtime>,
    log: Arc<dyn Log>,
    telemetry: Arc<Telemetry>,
    /// Bumped whenever the master node changes.
    master_changes: watch::Sender<u64>,
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
        let registry = Arc::new(RenewingRegistry::connect(Arc::clone(&deps.coordinator)).await?);
        prometheus::describe();
        deps.broker.declare(WRITE_QUEUE).await?;
        deps.broker.declare(READ_QUEUE).await?;
        let rpc =
            RpcClient::start(Arc::clone(&deps.broker), &config.name, config.max_in_flight).await?;
        // Anything in the log may have been acknowledged by an earlier orchestrator.
        let acked = deps.log.end().await?;
        let target = registry.get().scale_target().await?.unwrap_or(1);
        let telemetry = Arc::new(Telemetry::default());
        let (master_changes, changes) = watch::channel(0);
        let orchestrator = Arc::new(Orchestrator {
            name: config.name.clone(),
            front: Front::new(&config, rpc, acked, changes),
            supervisor: Supervisor::new(
                &config,
                Arc::clone(&deps.runtime),
                Arc::clone(&registry),
                Arc::clone(&telemetry),
            ),
            scaler: Scaler::new(
                &config,
                target,
                Arc::clone(&registry),
                Arc::clone(&telemetry),
            ),
            registry,
            runtime: deps.runtime,
            log: Arc::clone(&deps.log),
            telemetry,
            master_changes,
            switching: tokio::sync::Mutex::new(()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(supervisor::run(Arc::clone(&orchestrator)));
        tasks.spawn(scaler::run(Arc::clone(&orchestrator)));
        tasks.spawn(follow_master(Arc::clone(&orchestrator)));
        tasks.spawn(telemetry::follow_master(Arc::clone(&orchestrator)));
        if let Some(dir) = config.snapshots.clone() {
            tasks.spawn(history::run(Arc::clone(&orchestrator), dir));
        }
        tracing::info!(acked, target, "orchestrator started");
        Ok(RunningOrchestrator {
            orchestrator,
            _tasks: tasks,
        })
    }

    /// The coordinator's nodes, through the orchestrator's current session.
    pub fn registry(&self) -> Registry {
        self.registry.get()
    }

    pub fn acked_index(&self) -> u64 {
        self.front.acked_index()
    }

    /// Whether `index` is one of the log's (a client's session token must be): at most the
    /// highest index seen, or else at most the log's end, read only then. A token past the end
    /// could never be served, so it is refused at once rather than waited for.
    pub async fn knows_index(&self, index: u64) -> Result<bool> {
        Ok(index <= self.front.seen_index() || index <= self.log.end().await?)
    }

    pub fn target_slaves(&self) -> u64 {
        self.scaler.target()
    }

    /// Sends one write to the master; retries (same request id) through failovers.
    pub async fn write(&self, request_id: RequestId, op: WriteOp) -> Result<WriteAck> {
        self.front.write(request_id, op).await
    }

    /// Sends one read to a slave, which first applies what `fresh` asks for.
    pub async fn read(&self, op: ReadOp, fresh: Freshness) -> Result<ReadAnswer> {
        self.front.read(op, fresh).await
    }

    /// A client's write (the HTTP API's, or an in-process service's): sent, counted in the
    /// telemetry, and a failure logged.
    pub async fn client_write(&self, request_id: RequestId, op: WriteOp) -> Result<WriteAck> {
        let ack = self.write(request_id, op).await;
        self.telemetry.written(&ack);
        if let Err(e) = &ack {
            tracing::warn!(error = %e, "database write failed");
        }
        ack
    }

    /// A client's read: counted for the scaling policy, sent, counted in the telemetry, and a
    /// failure logged.
    pub async fn client_read(&self, op: ReadOp, fresh: Freshness) -> Result<ReadAnswer> {
        self.count_read();
        let answer = self.read(op, fresh).await;
        self.telemetry.read(&answer, fresh.stale);
        if let Err(e) = &answer {
            tracing::warn!(error = %e, "database read failed");
        }
        answer
    }

    /// Counts one client read for the scaling policy; the first starts the window timer.
    pub fn count_read(&self) {
        self.scaler.count_read();
    }

    /// Registered workers.
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        self.registry.get().members().await
    }

    /// The current master's record, if there is one.
    pub async fn master(&self) -> Result<Option<MasterRecord>> {
        self.registry.get().master().await
    }

    /// Pids of all running workers, ascending.
    pub async fn worker_pids(&self) -> Result<Vec<u32>> {
        self.supervisor.worker_pids().await
    }

    /// `crash/master`: kills the master; the election and the supervisor take it from there.
    pub async fn crash_master(&self) -> Result<u32> {
        self.supervisor.crash_master().await
    }

    /// `crash/slave`: kills the slave with the highest pid.
    pub async fn crash_slave(&self) -> Result<u32> {
        self.supervisor.crash_slave().await
    }

    /// One supervision step: forget dead workers, kill stuck ones, start or stop to the target.
    pub async fn reconcile_once(&self) -> Result<()> {
        self.supervisor.reconcile_once(self.scaler.target()).await
    }
}

/// Bumps `master_changes` on every change of the master node.
async fn follow_master(orchestrator: Arc<Orchestrator>) {
    loop {
        match orchestrator.registry.get().master_watch().await {
            Ok((_, changed)) => {
                changed.await;
                orchestrator.master_changes.send_modify(|n| *n += 1);
            }
            Err(_) => tokio::time::sleep(orchestrator.supervisor.every()).await,
        }
    }
}
