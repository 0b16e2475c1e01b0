//! The DBaaS error type: one enum for the crate, variants named for what happened.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// The broker is unreachable or the connection broke; retry later.
    #[error("broker unavailable: {0}")]
    BrokerUnavailable(String),
    /// A consumer or queue was closed (the worker owning it is stopping).
    #[error("queue {0} closed")]
    QueueClosed(String),
    /// The log is unreachable or refused the append.
    #[error("log unavailable: {0}")]
    LogUnavailable(String),
    /// The entry asked for was dropped when the log was truncated behind a snapshot: the reader
    /// must start from a snapshot instead, then read from `first` (or later).
    #[error("log truncated: its first entry is now {first}")]
    LogTruncated { first: u64 },
    /// The coordinator session is gone: ephemeral nodes are gone, and a master is not any more.
    #[error("coordinator session expired")]
    SessionExpired,
    /// The coordinator is unreachable.
    #[error("coordinator unavailable: {0}")]
    CoordinatorUnavailable(String),
    #[error("node {0} already exists")]
    NodeExists(String),
    #[error("no node {0}")]
    NoNode(String),
    #[error("node {0} changed meanwhile (version mismatch)")]
    BadVersion(String),
    /// Starting, killing or listing workers failed.
    #[error("runtime failed: {0}")]
    Runtime(String),
    /// No such worker in the runtime.
    #[error("no worker {0}")]
    NoWorker(String),
    /// The worker asked is not (or no longer) the master; the write was not acknowledged.
    #[error("not master")]
    NotMaster,
    /// A bounded line was full: the call is refused at once rather than queued.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error("{0} did not answer within {1} ms")]
    Timeout(&'static str, u64),
    /// A message broke the protocol (wrong version, unexpected reply, bad node name).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A message could not be decoded; the decoder's error is the source.
    #[error("malformed message")]
    Malformed(#[from] serde_json::Error),
    #[error("store failed")]
    Store(#[from] rideshare_core::StoreError),
    /// Any adapter's own error, kept whole.
    #[error("{context}")]
    Adapter {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps an adapter error with what was being done.
    pub fn adapter(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Adapter {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
