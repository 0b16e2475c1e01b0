//! `TaskRuntime`: workers as tasks in this process (the embedded mode and the simulation).
//!
//! A task worker has no process of its own, so its "pid" is drawn from a counter that only
//! grows: unique, and ordered by start like the pids of a fresh host. Killing aborts the task,
//! which drops its coordinator session and broker consumers: its ephemeral nodes vanish and its
//! unacked messages are requeued, as when a process dies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{Runtime, WorkerHandle};
use crate::error::{Error, Result};

/// Builds the future that is one worker's whole life.
pub type WorkerFactory = Arc<dyn Fn(WorkerHandle) -> BoxFuture<'static, ()> + Send + Sync>;

struct Running {
    pid: u32,
    task: tokio::task::AbortHandle,
}

#[derive(Clone)]
pub struct TaskRuntime {
    factory: WorkerFactory,
    next_pid: Arc<AtomicU32>,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
    prefix: String,
}

impl TaskRuntime {
    /// Pids start at `first_pid`; ids are `<prefix>-<pid>`.
    pub fn new(factory: WorkerFactory, prefix: impl Into<String>, first_pid: u32) -> Self {
        TaskRuntime {
            factory,
            next_pid: Arc::new(AtomicU32::new(first_pid)),
            running: Arc::default(),
            prefix: prefix.into(),
        }
    }

    /// Aborts every worker (shutdown).
    pub fn kill_all(&self) {
        let mut running = self.running.lock();
        for (_, r) in std::mem::take(&mut *running) {
            r.task.abort();
        }
    }
}

#[async_trait]
impl Runtime for TaskRuntime {
    async fn start(&self) -> Result<WorkerHandle> {
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let handle = WorkerHandle {
            id: format!("{}-{pid}", self.prefix),
            pid,
        };
        let life = (self.factory)(handle.clone());
        let running = Arc::clone(&self.running);
        let id = handle.id.clone();
        // Hold the lock while spawning so the task cannot finish (and unregister) before it is
        // registered.
        let mut guard = self.running.lock();
        let task = tokio::spawn(async move {
            life.await;
            running.lock().remove(&id);
        });
        guard.insert(
            handle.id.clone(),
            Running {
                pid,
                task: task.abort_handle(),
            },
        );
        Ok(handle)
    }

    async fn kill(&self, id: &str) -> Result<()> {
        let removed = self.running.lock().remove(id);
        match removed {
            Some(r) => {
                r.task.abort();
                Ok(())
            }
            None => Err(Error::NoWorker(id.to_owned())),
        }
    }

    async fn list(&self) -> Result<Vec<WorkerHandle>> {
        let running = self.running.lock();
        let mut list: Vec<WorkerHandle> = running
            .iter()
            .map(|(id, r)| WorkerHandle {
                id: id.clone(),
                pid: r.pid,
            })
            .collect();
        list.sort_by_key(|w| w.pid);
        Ok(list)
    }
}
