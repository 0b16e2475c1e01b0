//! Serving: a slave answers reads from the read queue until it is elected, then as master it
//! answers writes from the write queue. Every request is acked only after its reply is out.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::group::Appender;
use super::{membership, Shared, WorkerDeps};
use crate::broker::{Broker, Delivery, Message};
use crate::error::{Error, Result};
use crate::protocol::{
    decode_versioned, encode, is_batch, GroupedWrite, ReadRequest, Refusal, Reply, Role, Versioned,
    WriteRequest, READ_QUEUE, VERSION, WRITE_QUEUE,
};
use crate::registry::{MasterClaim, Registry};

/// Serves as a slave until elected, then as master until something ends it.
pub(super) async fn serve_roles(
    shared: Arc<Shared>,
    deps: WorkerDeps,
    registry: Registry,
    member_path: String,
) -> Result<()> {
    let mut reads = tokio::spawn(serve_reads(Arc::clone(&shared), Arc::clone(&deps.broker)));
    let _abort_reads = AbortOnDrop(reads.abort_handle());
    let (epoch, claim) = tokio::select! {
        elected = membership::elect_self(&shared, &deps, &registry) => elected?,
        // A slave whose read consumer is gone (broker restarted) is of no use: stop, and be
        // replaced by a fresh worker that subscribes again.
        served = &mut reads => {
            return match served {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::QueueClosed(READ_QUEUE.into())),
            };
        }
    };
    reads.abort();
    shared
        .update_member(&registry, &member_path, |m| m.role = Role::Master)
        .await?;
    metrics::gauge!("rideshare_worker_is_master", "worker" => shared.config.id.clone()).set(1.0);
    serve_writes(shared, deps, registry, epoch, claim).await
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The requests of one queue message: one, or a batch (a JSON array) answered by an array.
fn decode_requests<T: serde::de::DeserializeOwned + Versioned>(
    body: &[u8],
) -> Result<(Vec<T>, bool)> {
    if !is_batch(body) {
        return Ok((vec![decode_versioned::<T>(body)?], false));
    }
    let requests: Vec<T> = crate::protocol::decode(body)?;
    if let Some(other) = requests.iter().find(|r| r.version() != VERSION) {
        return Err(Error::Protocol(format!(
            "protocol version {} (this build speaks {VERSION})",
            other.version()
        )));
    }
    Ok((requests, true))
}

/// Answers one queue message: its requests' replies, an array for a batch; a message that
/// does not decode gets one refusal.
async fn answer_message<T, F>(body: &[u8], handle: impl FnOnce(Vec<T>) -> F) -> bytes::Bytes
where
    T: serde::de::DeserializeOwned + Versioned,
    F: std::future::Future<Output = Vec<Reply>>,
{
    match decode_requests::<T>(body) {
        Err(e) => encode(&Reply::refused(Refusal::BadRequest, e.to_string())),
        Ok((requests, batch)) => {
            let replies = handle(requests).await;
            match replies.as_slice() {
                [reply] if !batch => encode(reply),
                _ => encode(&replies),
            }
        }
    }
}

/// Publishes a request's reply, transient: a reply lost with the broker (or the orchestrator's
/// connection, which takes its exclusive reply queue along) is covered by the orchestrator's
/// timeout and retry, so waiting for RabbitMQ's confirm bought nothing but two wake-ups.
async fn reply(broker: &dyn Broker, delivery: &Delivery, body: bytes::Bytes) {
    let Some(reply_to) = delivery.message.reply_to.as_deref() else {
        return;
    };
    let message = Message {
        body,
        correlation_id: delivery.message.correlation_id.clone(),
        reply_to: None,
        transient: true,
    };
    if let Err(e) = broker.publish(reply_to, message).await {
        tracing::warn!(error = %e, "could not publish a reply");
    }
}

/// A slave's read server: answers reads once it has applied their `min_index`.
#[tracing::instrument(name = "serve_reads", skip_all, fields(worker = %shared.config.id))]
async fn serve_reads(shared: Arc<Shared>, broker: Arc<dyn Broker>) -> Result<()> {
    let mut consumer = broker
        .consume(READ_QUEUE, shared.config.read_prefetch)
        .await?;
    let mut handlers = JoinSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        while handlers.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        let broker = Arc::clone(&broker);
        handlers.spawn(async move {
            let answer = answer_message(&delivery.message.body, |requests| {
                handle_reads(&shared, requests)
            })
            .await;
            reply(broker.as_ref(), &delivery, answer).await;
            let _ = delivery.ack().await;
        });
    }
    Err(Error::QueueClosed(READ_QUEUE.into()))
}

/// What a reply was, for log lines.
fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Written { .. } => "written",
        Reply::Read { .. } => "read",
        Reply::Refused { refusal, .. } => match refusal {
            Refusal::NotMaster => "not_master",
            Refusal::Behind => "behind",
            Refusal::Unavailable => "unavailable",
            Refusal::BadRequest => "bad_request",
        },
    }
}

/// Answers the reads of one message once the replica has applied their `min_index` (the wait
/// is bounded; a read whose index is still not applied is refused as behind), in one handoff
/// to the store. Its span carries the HTTP request ids, so the worker's lines can be found with
/// the gateway's, the service's and the orchestrator's.
#[tracing::instrument(
    name = "db",
    skip_all,
    fields(request_id = %traces(requests.iter().map(|r| r.trace.as_deref())), worker = %shared.config.id),
)]
async fn handle_reads(shared: &Shared, requests: Vec<ReadRequest>) -> Vec<Reply> {
    let min_index = requests.iter().map(|r| r.min_index).max().unwrap_or(0);
    let _ = shared
        .wait_applied(min_index, shared.config.read_wait)
        .await;
    let (min_indexes, ops): (Vec<u64>, Vec<_>) =
        requests.into_iter().map(|r| (r.min_index, r.op)).unzip();
    let replies = match shared.store.read(ops).await {
        Err(e) => min_indexes
            .iter()
            .map(|_| Reply::refused(Refusal::Unavailable, e.to_string()))
            .collect(),
        Ok(reads) => min_indexes
            .into_iter()
            .zip(reads.outcomes)
            .map(|(min_index, outcome)| match outcome {
                _ if min_index > reads.applied_index => Reply::refused(
                    Refusal::Behind,
                    format!("index {min_index} not applied in time"),
                ),
                Ok(outcome) => Reply::Read {
                    v: VERSION,
                    applied_index: reads.applied_index,
                    worker: shared.config.id.clone(),
                    outcome,
                },
                Err(e) => Reply::refused(Refusal::Unavailable, e.to_string()),
            })
            .collect(),
    };
    for answer in &replies {
        tracing::debug!(reply = reply_kind(answer), "read answered");
    }
    replies
}

/// The HTTP request ids of a message's requests, for its span.
fn traces<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> String {
    ids.flatten().collect::<Vec<_>>().join(",")
}

/// The master's write server: queue for the next record (group commit), wait until applied,
/// answer, ack.
#[tracing::instrument(name = "serve_writes", skip_all, fields(worker = %shared.config.id, epoch = epoch))]
async fn serve_writes(
    shared: Arc<Shared>,
    deps: WorkerDeps,
    registry: Registry,
    epoch: u64,
    mut claim: MasterClaim,
) -> Result<()> {
    // Newer epochs consume at higher priority: a frozen older master's subscription gets no
    // new writes while this one has room.
    let priority = i32::try_from(epoch).unwrap_or(i32::MAX);
    let mut consumer = deps
        .broker
        .consume_prioritized(WRITE_QUEUE, shared.config.write_prefetch, priority)
        .await?;
    membership::announce_ready(&shared, &registry, epoch, &mut claim).await?;
    // The appender's task ends with this function (the set aborts it when dropped).
    let mut appending = JoinSet::new();
    let appender = Arc::new(Appender::start(
        Arc::clone(&shared),
        Arc::clone(&deps.log),
        epoch,
        &mut appending,
    ));
    let mut handlers = JoinSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        while handlers.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        let deps = deps.clone();
        let appender = Arc::clone(&appender);
        handlers.spawn(async move {
            // A batch's writes are independent requests: queued and waited for side by side,
            // each answered by its own reply (they usually share a record).
            let answer = answer_message(&delivery.message.body, |requests| {
                futures::future::join_all(
                    requests
                        .into_iter()
                        .map(|request| handle_write(&shared, &appender, request, epoch)),
                )
            })
            .await;
            reply(deps.broker.as_ref(), &delivery, answer).await;
            // Acked after the reply: a crash in between redelivers, and the request id
            // makes the second application a no-op with the first outcome.
            let _ = delivery.ack().await;
        });
    }
    Err(Error::QueueClosed(WRITE_QUEUE.into()))
}

/// Queues one write for this master's next record and waits (bounded) until it is applied.
#[tracing::instrument(
    name = "db",
    skip_all,
    fields(request_id = request.trace.as_deref().unwrap_or_default(), worker = %shared.config.id, epoch = epoch),
)]
async fn handle_write(
    shared: &Shared,
    appender: &Appender,
    request: WriteRequest,
    epoch: u64,
) -> Reply {
    let answer = append_and_wait(shared, appender, request, epoch).await;
    tracing::debug!(reply = reply_kind(&answer), "write answered");
    answer
}

async fn append_and_wait(
    shared: &Shared,
    appender: &Appender,
    request: WriteRequest,
    epoch: u64,
) -> Reply {
    let Some(applied) = shared.waiters.register(request.request_id.clone()) else {
        return Reply::refused(Refusal::NotMaster, "not master");
    };
    let request_id = request.request_id.clone();
    let write = GroupedWrite {
        request_id: request.request_id,
        op: request.op,
    };
    // One bound over queueing for a record and waiting for it to be applied: the queue is
    // full only while the records in flight are unconfirmed.
    let deadline = tokio::time::Instant::now() + shared.config.write_wait;
    let refusal = match tokio::time::timeout_at(deadline, appender.submit(write)).await {
        Ok(true) => None,
        Ok(false) => Some("the master is stopping"),
        Err(_) => Some("the master's log appends are not keeping up"),
    };
    if let Some(message) = refusal {
        shared
            .waiters
            .resolve(&request_id, Err(Refusal::Unavailable));
        return Reply::refused(Refusal::Unavailable, message);
    }
    match tokio::time::timeout_at(deadline, applied).await {
        Ok(Ok(Ok((index, outcome)))) => Reply::Written {
            v: VERSION,
            index,
            epoch,
            worker: shared.config.id.clone(),
            outcome,
        },
        Ok(Ok(Err(Refusal::Unavailable))) => {
            Reply::refused(Refusal::Unavailable, "the write's record was not appended")
        }
        Ok(Ok(Err(refusal))) => Reply::refused(refusal, "write not acknowledged"),
        Ok(Err(_)) | Err(_) => Reply::refused(
            Refusal::Unavailable,
            "write appended but not seen applied in time",
        ),
    }
}
