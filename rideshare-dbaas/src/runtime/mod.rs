//! `Runtime`: starts and kills workers (tasks, OS processes or containers).
//!
//! To ensure correctness a `Runtime` must:
//! - give each started worker a unique id and the pid the contract shows (the host pid of its
//!   process or container);
//! - make `kill` final: a killed worker runs no more code that can reach the broker, the log or
//!   the coordinator;
//! - list exactly the workers that are running.

pub mod tasks;

use async_trait::async_trait;

use crate::error::Result;

/// A running worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkerHandle {
    pub id: String,
    pub pid: u32,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    async fn start(&self) -> Result<WorkerHandle>;
    async fn kill(&self, id: &str) -> Result<()>;
    /// Running workers, by pid ascending.
    async fn list(&self) -> Result<Vec<WorkerHandle>>;
}
