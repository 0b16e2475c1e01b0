//! `Log`: the durable, totally ordered write log that replicas apply.
//!
//! To ensure correctness a `Log` must:
//! - return from `append` only once the entry is durable (confirmed);
//! - give every entry one index, 1, 2, 3, ... in one total order seen by every reader;
//! - keep entries from one appender in the order their appends were called, when each append is
//!   awaited before the next starts, and also when appends from one appender are pipelined;
//! - let a reader start at any index and follow the tail, entry by entry, without gaps;
//! - never lose or change a confirmed entry.
//!
//! `append` does not return the index: the real log (a RabbitMQ stream) does not say it on
//! confirm. A writer learns its entry's index by reading the log, as every replica does.

pub mod file;
pub mod mem;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// One entry and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub data: Bytes,
}

/// Follows the log from an index.
#[async_trait]
pub trait LogReader: Send {
    /// The next entry, waiting for one to be appended; `None` once the log is closed.
    ///
    /// Cancel-safe: dropping the future before it is ready loses no entry, so a caller may
    /// poll it once to take what is already there (`now_or_never`).
    async fn next(&mut self) -> Option<Result<Record>>;
}

#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends one entry; returns once it is durable.
    async fn append(&self, data: Bytes) -> Result<()>;
    /// Reads from `from` (1-based) on, then follows the tail.
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>>;
    /// The index of the last confirmed entry (0 when empty).
    async fn end(&self) -> Result<u64>;
}
