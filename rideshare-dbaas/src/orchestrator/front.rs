//! The front door: puts each write on the write queue and each read on the read queue, waits
//! for the worker's reply, and tries again (same request id) through a failover. It keeps the
//! highest log index its clients have seen (acknowledged writes, and the applied index of every
//! read answered), which a strong read asks its slave to have applied: read-your-writes and
//! monotonic reads for every client of this orchestrator. A client that goes through several
//! orchestrators carries its own highest index (`Freshness::at_least`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rideshare_core::api::observe::current_request_id;
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use tokio::sync::{watch, RwLock, RwLockWriteGuard};

use super::api::{ReadAnswer, WriteAck};
use super::OrchestratorConfig;
use crate::batch::{Batcher, Batching};
use crate::error::{Error, Result};
use crate::protocol::{
    decode_read_reply, decode_write_reply, encode, ReadRequest, Refusal, Reply, WriteRequest,
    READ_QUEUE, VERSION, WRITE_QUEUE,
};
use crate::retry::RetryPolicy;
use crate::rpc::RpcClient;

/// What a read must see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Any caught-up replica's state will do; otherwise (strong) every index a client of this
    /// orchestrator has seen is applied first.
    pub stale: bool,
    /// An index the caller has seen elsewhere (another orchestrator's answer): applied first too.
    pub at_least: u64,
}

impl Freshness {
    /// Sees every write acknowledged, and every state read, before it started.
    pub const STRONG: Freshness = Freshness {
        stale: false,
        at_least: 0,
    };
    /// Any caught-up replica's state.
    pub const STALE: Freshness = Freshness {
        stale: true,
        at_least: 0,
    };
}

/// Immediate resends of one write on master changes, at most (a failover changes the master
/// node two or three times).
const MAX_REPUBLISH: u32 = 8;

pub(super) struct Front {
    /// Bound on one try of a write or read (publish to reply).
    attempt_timeout: Duration,
    /// Tries per write or read, and the pause between them (a failover in progress).
    retry: RetryPolicy,
    /// The lines of calls to the write and the read queue, each sent in batches.
    writes: Batcher,
    reads: Batcher,
    /// The highest log index acknowledged to a client (shown in the status).
    acked: AtomicU64,
    /// The highest log index any client has seen: `acked`, raised by the applied index of every
    /// read answered. Strong reads wait for it, so no read goes back behind an earlier one.
    seen: AtomicU64,
    /// Every write holds it shared; a switchover takes it alone to hold new writes.
    write_gate: RwLock<()>,
    /// Bumped whenever the master node changes.
    master_changes: watch::Receiver<u64>,
}

/// Why one try did not give an answer: worth another try (no master yet, a slow or behind
/// slave, a lost reply), or final (the request itself is bad).
enum Failure {
    Retry(Error),
    Final(Error),
}

impl Failure {
    fn is_retry(&self) -> bool {
        matches!(self, Failure::Retry(_))
    }

    fn into_error(self) -> Error {
        match self {
            Failure::Retry(e) | Failure::Final(e) => e,
        }
    }

    /// Anything but the answer looked for.
    fn of(answer: Result<Reply>) -> Self {
        match answer {
            Ok(Reply::Refused {
                refusal: Refusal::BadRequest,
                message,
                ..
            }) => Failure::Final(Error::Protocol(message)),
            Ok(Reply::Refused {
                refusal: Refusal::NotMaster,
                ..
            }) => Failure::Retry(Error::NotMaster),
            Ok(Reply::Refused { message, .. }) => Failure::Retry(Error::LogUnavailable(message)),
            Ok(other) => Failure::Retry(Error::Protocol(format!("unexpected reply {other:?}"))),
            Err(e) => Failure::Retry(e),
        }
    }
}

impl Front {
    pub(super) fn new(
        config: &OrchestratorConfig,
        rpc: RpcClient,
        acked: u64,
        master_changes: watch::Receiver<u64>,
    ) -> Self {
        let rpc = Arc::new(rpc);
        let batcher = |queue, in_flight| {
            Batcher::start(
                Arc::clone(&rpc),
                queue,
                Batching {
                    in_flight,
                    ..config.batching
                },
                config.max_in_flight,
                config.attempt_timeout,
            )
        };
        Front {
            attempt_timeout: config.attempt_timeout,
            retry: RetryPolicy::fixed(config.attempts, config.retry_pause),
            writes: batcher(WRITE_QUEUE, config.batching.write_in_flight),
            reads: batcher(READ_QUEUE, config.batching.in_flight),
            acked: AtomicU64::new(acked),
            seen: AtomicU64::new(acked),
            write_gate: RwLock::new(()),
            master_changes,
        }
    }

    pub(super) fn acked_index(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// The highest index any client of this orchestrator has seen.
    pub(super) fn seen_index(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Calls waiting for a worker's answer now.
    pub(super) fn calls_waiting(&self) -> usize {
        self.writes.waiting() + self.reads.waiting()
    }

    /// Holds new writes (for a switchover) once the writes in flight have finished, or `None`
    /// if they do not finish within `bound`. Writes go on when the guard is dropped.
    pub(super) async fn hold_writes(&self, bound: Duration) -> Option<RwLockWriteGuard<'_, ()>> {
        tokio::time::timeout(bound, self.write_gate.write())
            .await
            .ok()
    }

    /// Sends one write to the master; tries again (same request id) through failovers.
    #[tracing::instrument(name = "db_write", level = "debug", skip_all, fields(
        request_id = %request_id,
        http_request = %current_request_id().unwrap_or_default(),
    ))]
    pub(super) async fn write(&self, request_id: RequestId, op: WriteOp) -> Result<WriteAck> {
        let _held_during_a_switchover = self.write_gate.read().await;
        let body = encode(&WriteRequest {
            v: VERSION,
            request_id,
            op,
            trace: current_request_id(),
        });
        // Shared by the tries: a master change seen in one try is not seen again in the next.
        let mut changes = self.master_changes.clone();
        changes.borrow_and_update();
        let changes = tokio::sync::Mutex::new(changes);
        let republished = AtomicU32::new(0);
        let ack = self
            .retry
            .run(
                || self.write_once(&body, &changes, &republished),
                Failure::is_retry,
            )
            .await
            .map_err(Failure::into_error)?;
        self.acked.fetch_max(ack.index, Ordering::SeqCst);
        self.seen.fetch_max(ack.index, Ordering::SeqCst);
        Ok(ack)
    }

    /// One try of a write. A write sent to a master that then froze or died waits in its hands
    /// until the try times out; when the master changes, it is sent again at once (same
    /// request id, so it applies once): failover then costs the election, not the timeout.
    async fn write_once(
        &self,
        body: &Bytes,
        changes: &tokio::sync::Mutex<watch::Receiver<u64>>,
        republished: &AtomicU32,
    ) -> std::result::Result<WriteAck, Failure> {
        let mut changes = changes.lock().await;
        loop {
            let may_republish = republished.load(Ordering::SeqCst) < MAX_REPUBLISH;
            let answer = tokio::select! {
                answer = self.call(&self.writes, body.clone(), decode_write_reply) => answer,
                _ = changes.changed(), if may_republish => {
                    republished.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            };
            return match answer {
                Ok(Reply::Written {
                    index,
                    epoch,
                    worker,
                    outcome,
                    ..
                }) => Ok(WriteAck {
                    index,
                    epoch,
                    worker,
                    outcome,
                }),
                other => Err(Failure::of(other)),
            };
        }
    }

    /// Sends one read to a slave, which first applies the index `fresh` asks for.
    #[tracing::instrument(name = "db_read", level = "debug", skip_all, fields(
        stale = fresh.stale,
        at_least = fresh.at_least,
        http_request = %current_request_id().unwrap_or_default(),
    ))]
    pub(super) async fn read(&self, op: ReadOp, fresh: Freshness) -> Result<ReadAnswer> {
        let seen = if fresh.stale {
            0
        } else {
            self.seen.load(Ordering::SeqCst)
        };
        let body = encode(&ReadRequest {
            v: VERSION,
            op,
            min_index: seen.max(fresh.at_least),
            trace: current_request_id(),
        });
        let answer = self
            .retry
            .run(|| self.read_once(&body), Failure::is_retry)
            .await
            .map_err(Failure::into_error)?;
        // Only an index a replica has applied raises the floor: a client's `at_least` does
        // not, or one client could hold every other client's reads waiting.
        self.seen.fetch_max(answer.applied_index, Ordering::SeqCst);
        Ok(answer)
    }

    async fn read_once(&self, body: &Bytes) -> std::result::Result<ReadAnswer, Failure> {
        match self
            .call(&self.reads, body.clone(), decode_read_reply)
            .await
        {
            Ok(Reply::Read {
                applied_index,
                worker,
                outcome,
                ..
            }) => Ok(ReadAnswer {
                applied_index,
                worker,
                outcome,
            }),
            other => Err(Failure::of(other)),
        }
    }

    async fn call(
        &self,
        line: &Batcher,
        body: Bytes,
        decode: fn(&[u8]) -> Result<Reply>,
    ) -> Result<Reply> {
        let bytes = line.call(body, self.attempt_timeout).await?;
        decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
    use rideshare_core::Username;

    use super::Freshness;
    use crate::cluster::{EmbeddedCluster, EmbeddedConfig};
    use crate::log::mem::MemLog;

    #[tokio::test(start_paused = true)]
    async fn reads_wait_for_every_index_seen_and_for_the_clients_own_token() {
        let cluster = EmbeddedCluster::start(Arc::new(MemLog::new()), EmbeddedConfig::default())
            .await
            .unwrap();
        let o = cluster.orchestrator();
        for _ in 0..200 {
            if o.ready().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ack = o
            .write(
                RequestId("a".into()),
                WriteOp::AddUser {
                    username: Username::parse("asha").unwrap(),
                    password_hash: "h".into(),
                },
            )
            .await
            .unwrap();
        let read = o.read(ReadOp::ListUsers, Freshness::STRONG).await.unwrap();
        assert!(read.applied_index >= ack.index);
        // Every answer raises the floor of the reads after it.
        assert!(o.front.seen.load(super::Ordering::SeqCst) >= read.applied_index);
        // A token the replicas have applied is served; one past the log is refused once the
        // bounded waits are over, and does not raise the floor for anyone else.
        let at = Freshness {
            stale: true,
            at_least: ack.index,
        };
        assert!(o.read(ReadOp::ListUsers, at).await.unwrap().applied_index >= ack.index);
        let beyond = Freshness {
            stale: false,
            at_least: ack.index + 1_000,
        };
        assert!(o.read(ReadOp::ListUsers, beyond).await.is_err());
        assert!(o.front.seen.load(super::Ordering::SeqCst) < ack.index + 1_000);
        assert!(o.read(ReadOp::ListUsers, Freshness::STRONG).await.is_ok());
        cluster.shutdown();
    }
}
