//! `Log`: the durable, totally ordered write log that replicas apply.
//!
//! To ensure correctness a `Log` must:
//! - resolve the [`Appended`] that `append` returns with `Ok` only once the entry is durable
//!   (confirmed);
//! - give every entry one index, 1, 2, 3, ... in one total order seen by every reader;
//! - keep entries from one appender in the order their appends were called, when each append is
//!   awaited before the next starts, and also when appends from one appender are pipelined;
//! - let a reader start at any index and follow the tail, entry by entry, without gaps;
//! - never lose or change a confirmed entry.
//!
//! The shape of `append` carries the ordering rule: it is a plain function that takes the
//! entry's place in the order before it returns, and what it returns is only the confirmation,
//! a `'static` future that borrows nothing from the log. So an implementation has no `&self` to
//! order by later, when the future is first polled, and a caller can enqueue a run of appends
//! and await their confirmations in any order (or drop some) without reordering them.
//!
//! `append` does not return the index: the real log (a RabbitMQ stream) does not say it on
//! confirm. A writer learns its entry's index by reading the log, as every replica does.
//!
//! # Truncation
//!
//! History is bounded by snapshots: once a snapshot covers every entry below some index, the
//! log may drop those entries ([`Log::truncate_before`]), and a replica installs the snapshot and
//! replays only the tail. Truncation never renumbers: the entries kept, and every later append,
//! keep the indexes they would have had. To ensure correctness:
//! - callers only ever pass `truncate_before` an index whose every predecessor a durable snapshot
//!   covers (so at most `end() + 1`);
//! - a log never drops an entry at or above that index; it may keep more than asked (whole
//!   segments, or everything, as a RabbitMQ stream does, bounded by its own retention instead);
//! - [`Log::first`] only moves forward, and `first() <= end() + 1` (equal when nothing is held).
//!
//! A reader that asks for a dropped entry learns it with [`Error::LogTruncated`] carrying the
//! first index still held: `read_from(from)` with `from` below `first()` fails with it, and a
//! reader whose next entry was truncated away (it fell behind) yields it from `next()` instead
//! of skipping ahead. Either way the reader must start again from a snapshot.

pub mod file;
pub mod mem;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The confirmation of one append, whose place in the log was fixed when `append` returned.
///
/// Resolves to `Ok(())` once the entry is durable, or to why it is not. Dropping it gives up
/// the wait, not the entry: an append already enqueued may still land.
#[must_use = "an append is only known durable once its confirmation resolves to Ok"]
pub struct Appended(BoxFuture<'static, Result<()>>);

impl Appended {
    /// A confirmation that is already known: the entry is durable (`Ok`), or was refused.
    pub fn ready(result: Result<()>) -> Self {
        Appended(Box::pin(std::future::ready(result)))
    }

    /// A confirmation still to come: whatever `confirm` resolves to.
    pub fn pending(confirm: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Appended(Box::pin(confirm))
    }

    /// A confirmation sent later on `done`; if the sender is dropped unsent, the append failed
    /// with [`Error::LogUnavailable`] saying `stopped`.
    pub fn from_receiver(done: oneshot::Receiver<Result<()>>, stopped: &'static str) -> Self {
        Appended::pending(async move {
            done.await
                .unwrap_or_else(|_| Err(Error::LogUnavailable(stopped.into())))
        })
    }
}

impl Future for Appended {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Appended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Appended")
    }
}

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
    /// Enqueues one entry, which fixes its place in the order, and returns the confirmation
    /// that it is durable. Must not wait: everything that decides the order happens before it
    /// returns.
    fn append(&self, data: Bytes) -> Appended;
    /// Reads from `from` (1-based) on, then follows the tail.
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>>;
    /// The index of the last confirmed entry (0 when empty). Truncation does not change it.
    async fn end(&self) -> Result<u64>;

    /// Drops the entries below `index` where the log can, and returns the first index it still
    /// holds (at most `index`, for `index` >= 1). `index` must be covered by a snapshot (see the module docs); an
    /// entry at or above it is never dropped. A log may keep more than asked: this default keeps
    /// everything, as a RabbitMQ stream does (its retention bounds it instead).
    async fn truncate_before(&self, index: u64) -> Result<u64> {
        let _ = index;
        Ok(1)
    }

    /// The first index the log still holds: 1 until it is truncated, then the first index kept.
    /// When the log holds no entry (never appended to, or truncated up to its end) it is
    /// `end() + 1`, the index the next append will get. Reading from below it fails with
    /// [`Error::LogTruncated`].
    async fn first(&self) -> Result<u64> {
        Ok(1)
    }
}
