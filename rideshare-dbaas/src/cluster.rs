//! A whole DBaaS in one process: the in-memory broker and coordinator, a given log, task workers
//! and the orchestrator. `rideshare up`, the examples and the simulation build on it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::broker::mem::MemBroker;
use crate::coord::mem::MemCoordinator;
use crate::error::Result;
use crate::log::Log;
use crate::orchestrator::{
    Orchestrator, OrchestratorConfig, OrchestratorDeps, RunningOrchestrator,
};
use crate::runtime::tasks::{TaskRuntime, WorkerFactory};
use crate::runtime::WorkerHandle;
use crate::snapshot::{StoreAt, StoreKind};
use crate::worker::{run_worker_from, WorkerConfig, WorkerDeps};

/// Where task workers keep their copy of the database.
#[derive(Clone, Debug)]
pub enum WorkerStores {
    /// In memory (tests, simulations).
    Memory,
    /// One SQLite file per worker in this directory, removed when the worker is replaced.
    SqliteDir(PathBuf),
}

impl WorkerStores {
    /// Where worker `id` keeps its store.
    fn at(&self, id: &str) -> Result<StoreAt> {
        Ok(match self {
            WorkerStores::Memory => StoreAt::Memory,
            WorkerStores::SqliteDir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::adapter(format!("creating {}", dir.display()), e))?;
                StoreAt::Sqlite(dir.join(format!("{id}.db")))
            }
        })
    }

    /// Deletes every worker file left in the directory: workers never reuse one (they start
    /// from a snapshot and the log), and task ids restart at every run, so files of workers that
    /// did not stop by themselves (a shutdown aborts them) would pile up.
    fn clear(&self) {
        if let WorkerStores::SqliteDir(dir) = self {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if [".db", ".db-wal", ".db-shm"]
                    .iter()
                    .any(|s| name.ends_with(s))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The kind of store its workers have, which their snapshots are of.
    pub fn kind(&self) -> StoreKind {
        match self {
            WorkerStores::Memory => StoreKind::Memory,
            WorkerStores::SqliteDir(_) => StoreKind::Sqlite,
        }
    }
}

/// Deletes a task worker's files when its task ends, however it ends.
struct RemoveOnDrop(StoreAt);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// Gives one worker (by its handle) the engines it talks to: a seam for fault injection that
/// acts on one worker only (the simulation pauses a worker by holding its calls).
pub type WorkerDepsHook = Arc<dyn Fn(&WorkerHandle, WorkerDeps) -> WorkerDeps + Send + Sync>;

/// Settings of an embedded cluster.
#[derive(Clone)]
pub struct EmbeddedConfig {
    pub stores: WorkerStores,
    pub orchestrator: OrchestratorConfig,
    /// Template for every worker (its id and pid are filled in at start).
    pub worker: WorkerConfig,
    pub first_pid: u32,
    /// Wraps each worker's engines (none: the shared ones as they are).
    pub worker_deps: Option<WorkerDepsHook>,
}

impl std::fmt::Debug for EmbeddedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedConfig")
            .field("stores", &self.stores)
            .field("orchestrator", &self.orchestrator)
            .field("worker", &self.worker)
            .field("first_pid", &self.first_pid)
            .field("worker_deps", &self.worker_deps.is_some())
            .finish()
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            stores: WorkerStores::Memory,
            orchestrator: OrchestratorConfig::default(),
            worker: WorkerConfig::new("", 0),
            first_pid: 1000,
            worker_deps: None,
        }
    }
}

pub struct EmbeddedCluster {
    pub broker: MemBroker,
    pub log: Arc<dyn Log>,
    pub coordinator: MemCoordinator,
    pub runtime: TaskRuntime,
    pub orchestrator: RunningOrchestrator,
    config: EmbeddedConfig,
}

impl EmbeddedCluster {
    pub async fn start(log: Arc<dyn Log>, config: EmbeddedConfig) -> Result<Self> {
        config.stores.clear();
        let broker = MemBroker::new();
        let coordinator = MemCoordinator::new();
        let worker_deps = WorkerDeps {
            broker: Arc::new(broker.clone()),
            log: Arc::clone(&log),
            coordinator: Arc::new(coordinator.clone()),
        };
        let stores = config.stores.clone();
        let template = config.worker.clone();
        let hook = config.worker_deps.clone();
        let factory: WorkerFactory = Arc::new(move |handle| {
            let deps = match &hook {
                Some(hook) => hook(&handle, worker_deps.clone()),
                None => worker_deps.clone(),
            };
            let stores = stores.clone();
            let mut worker = template.clone();
            worker.id = handle.id.clone();
            worker.pid = handle.pid;
            Box::pin(async move {
                let at = stores.at(&handle.id);
                // Also when the task is aborted (a kill): the future is dropped, not finished.
                let _remove = at.as_ref().ok().cloned().map(RemoveOnDrop);
                let snapshots = worker.snapshots.as_ref().map(|s| s.dir.clone());
                let log_end = deps.log.end().await;
                let opened = match (&at, log_end) {
                    (Ok(at), Ok(log_end)) => {
                        let at = at.clone();
                        // Installing a snapshot copies a file: off the async threads.
                        tokio::task::spawn_blocking(move || at.open(snapshots.as_ref(), log_end))
                            .await
                            .map_err(|e| crate::Error::adapter("opening a worker's store", e))
                            .and_then(|opened| opened)
                    }
                    (Err(e), _) => Err(crate::Error::Runtime(e.to_string())),
                    (_, Err(e)) => Err(e),
                };
                let result = match opened {
                    Ok((store, installed)) => run_worker_from(worker, deps, store, installed).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(id = %handle.id, pid = handle.pid, error = %e, "worker stopped");
                }
            })
        });
        let runtime = TaskRuntime::new(factory, "worker", config.first_pid);
        let orchestrator = Orchestrator::start(
            config.orchestrator.clone(),
            Self::orchestrator_deps(&broker, &log, &coordinator, &runtime),
        )
        .await?;
        Ok(EmbeddedCluster {
            broker,
            log,
            coordinator,
            runtime,
            orchestrator,
            config,
        })
    }

    fn orchestrator_deps(
        broker: &MemBroker,
        log: &Arc<dyn Log>,
        coordinator: &MemCoordinator,
        runtime: &TaskRuntime,
    ) -> OrchestratorDeps {
        OrchestratorDeps {
            broker: Arc::new(broker.clone()),
            log: Arc::clone(log),
            coordinator: Arc::new(coordinator.clone()),
            runtime: Arc::new(runtime.clone()),
        }
    }

    /// Crashes the orchestrator (its tasks stop, its session and reply queue go) and starts a
    /// new one that rebuilds its state from the coordinator, the runtime and the log.
    pub async fn restart_orchestrator(&mut self) -> Result<()> {
        let mut config = self.config.orchestrator.clone();
        config.name = format!(
            "{}-{:08x}",
            self.config.orchestrator.name,
            rand::random::<u32>()
        );
        let fresh = Orchestrator::start(
            config,
            Self::orchestrator_deps(&self.broker, &self.log, &self.coordinator, &self.runtime),
        )
        .await?;
        self.orchestrator = fresh;
        Ok(())
    }

    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orchestrator.orchestrator
    }

    /// Stops every worker, and deletes their files.
    pub fn shutdown(&self) {
        self.runtime.kill_all();
        self.config.stores.clear();
    }
}
