//! The seam between the services and any database.
//!
//! The users and rides services hold no database: they send typed operations to a [`Db`]. In
//! this crate there is [`LocalDb`], a state machine on a local store; the DBaaS crate adds a
//! client for the orchestrator behind the same trait.

use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use thiserror::Error;

use crate::error::StoreError;
use crate::machine::{Applied, StateMachine, Store};
use crate::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};

/// Why a database call did not produce an answer. Domain outcomes are not errors.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database store failed")]
    Store(#[from] StoreError),
    #[error("database answered something unexpected: {0}")]
    Protocol(String),
    #[error("database did not answer within {0} ms")]
    Timeout(u64),
}

/// A database client: apply one write, answer one read.
#[async_trait]
pub trait Db: Send + Sync + 'static {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError>;
    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError>;
}

#[async_trait]
impl<T: Db + ?Sized> Db for Arc<T> {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        (**self).write(op).await
    }
    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        (**self).read(op).await
    }
}

/// A state machine on a local store, driven directly: one process, no replication.
pub struct LocalDb<S> {
    machine: Arc<Mutex<StateMachine<S>>>,
}

impl<S> Clone for LocalDb<S> {
    fn clone(&self) -> Self {
        LocalDb {
            machine: Arc::clone(&self.machine),
        }
    }
}

impl<S: Store + 'static> LocalDb<S> {
    pub fn new(store: S) -> Self {
        LocalDb {
            machine: Arc::new(Mutex::new(StateMachine::new(store))),
        }
    }

    async fn with_machine<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StateMachine<S>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, DbError> {
        let machine = Arc::clone(&self.machine);
        tokio::task::spawn_blocking(move || {
            let mut guard = machine.lock();
            f(&mut guard)
        })
        .await
        .map_err(|e| DbError::Unavailable(format!("store task failed: {e}")))?
        .map_err(DbError::from)
    }
}

#[async_trait]
impl<S: Store + 'static> Db for LocalDb<S> {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        self.with_machine(move |m| {
            let index = m.applied_index()? + 1;
            match m.apply(index, &RequestId::random(), &op)? {
                Applied::Fresh(outcome) | Applied::Duplicate(outcome) => Ok(outcome),
                Applied::AlreadyApplied => Err(StoreError::Corrupt(format!(
                    "index {index} was already applied"
                ))),
            }
        })
        .await
    }

    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        self.with_machine(move |m| m.read(&op)).await
    }
}
