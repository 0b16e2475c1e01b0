//! A whole DBaaS in one process: the in-memory broker and coordinator, a given log, task workers
//! and the orchestrator. `rideshare up`, the examples and the simulation build on it.

use std::path::PathBuf;
use std::sync::Arc;

use rideshare_core::machine::Store;
use rideshare_core::store::{MemStore, SqliteStore};

use crate::broker::mem::MemBroker;
use crate::coord::mem::MemCoordinator;
use crate::error::Result;
use crate::log::Log;
use crate::orchestrator::{
    Orchestrator, OrchestratorConfig, OrchestratorDeps, RunningOrchestrator,
};
use crate::runtime::tasks::{TaskRuntime, WorkerFactory};
use crate::worker::{run_worker, WorkerConfig, WorkerDeps};

/// Where task workers keep their copy of the database.
#[derive(Clone, Debug)]
pub enum WorkerStores {
    /// In memory (tests, simulations).
    Memory,
    /// One SQLite file per worker in this directory, removed when the worker is replaced.
    SqliteDir(PathBuf),
}

impl WorkerStores {
    fn open(&self, id: &str) -> Result<Box<dyn Store>> {
        Ok(match self {
            WorkerStores::Memory => Box::new(MemStore::new()),
            WorkerStores::SqliteDir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::adapter(format!("creating {}", dir.display()), e))?;
                let path = dir.join(format!("{id}.db"));
                // A worker always starts empty and replays the log: a leftover file of the
                // same name can only be from an earlier run.
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Box::new(SqliteStore::open(&path)?)
            }
        })
    }

    fn remove(&self, id: &str) {
        if let WorkerStores::SqliteDir(dir) = self {
            let path = dir.join(format!("{id}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

/// Settings of an embedded cluster.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    pub stores: WorkerStores,
    pub orchestrator: OrchestratorConfig,
    /// Template for every worker (its id and pid are filled in at start).
    pub worker: WorkerConfig,
    pub first_pid: u32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            stores: WorkerStores::Memory,
            orchestrator: OrchestratorConfig::default(),
            worker: WorkerConfig::new("", 0),
            first_pid: 1000,
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
        let broker = MemBroker::new();
        let coordinator = MemCoordinator::new();
        let worker_deps = WorkerDeps {
            broker: Arc::new(broker.clone()),
            log: Arc::clone(&log),
            coordinator: Arc::new(coordinator.clone()),
        };
        let stores = config.stores.clone();
        let template = config.worker.clone();
        let factory: WorkerFactory = Arc::new(move |handle| {
            let deps = worker_deps.clone();
            let stores = stores.clone();
            let mut worker = template.clone();
            worker.id = handle.id.clone();
            worker.pid = handle.pid;
            Box::pin(async move {
                let result = match stores.open(&handle.id) {
                    Ok(store) => run_worker(worker, deps, store).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(id = %handle.id, pid = handle.pid, error = %e, "worker stopped");
                }
                stores.remove(&handle.id);
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

    /// Stops every worker.
    pub fn shutdown(&self) {
        self.runtime.kill_all();
    }
}
