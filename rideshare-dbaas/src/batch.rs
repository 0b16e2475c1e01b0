//! Batching where requests queue up: the orchestrator's calls to one queue wait in a bounded
//! line, and one task sends every call waiting as one queue message (a JSON array of the
//! requests, see [`crate::protocol::join_batch`]); the worker answers the message with an array
//! of replies in the same order, which is split back to the callers.
//!
//! At most `in_flight` batches of a queue are unanswered at once. A call that finds a free slot
//! goes out at once, so a lone call waits for nothing; while every slot is taken, calls queue in
//! the line and the next free slot takes all of them (up to `max`) as one message. So batches
//! grow with the load without a timer, as the master's group commit does (`worker/group.rs`):
//! under load the messages, deliveries, acks and worker handoffs are paid per batch instead of
//! per call. A batch may also collect calls for up to `wait` while an earlier one is unanswered;
//! that wait is off by default, because tokio's timer counts whole milliseconds, so even a
//! 100 µs wait holds a batch for up to 1 ms, and profiling `rideshare up` found it was most of a
//! read's latency at 4 to 16 clients (docs/benchmarks.md). A call in a batch is still one
//! request to the worker (its own request id, its own answer); a batch that fails (timeout,
//! closed queue) fails each of its calls, and each caller retries on its own as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::protocol::{join_batch, split_batch};
use crate::rpc::RpcClient;

/// Bounds on one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Calls in one message, at most (1: no batching).
    pub max: usize,
    /// How long a batch may wait for more calls while an earlier one is unanswered.
    pub wait: Duration,
    /// Read batches unanswered at once, at most; calls beyond them queue and go together in
    /// the next.
    pub in_flight: usize,
    /// The same bound for write batches. One by default: there is one master, whose group
    /// commit appends a batch as one record anyway, so a second batch in flight only splits
    /// the writes waiting into smaller messages, records and commits (docs/benchmarks.md,
    /// fourteenth session).
    pub write_in_flight: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max: 64,
            wait: Duration::ZERO,
            in_flight: 2,
            write_in_flight: 1,
        }
    }
}

struct Call {
    body: Bytes,
    answer: oneshot::Sender<Result<Bytes>>,
}

/// The line of calls to one queue, and the task that sends them in batches.
pub(crate) struct Batcher {
    calls: mpsc::Sender<Call>,
    /// Calls taken but not yet answered, and calls in the line.
    waiting: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batcher {
    /// Starts the sender for `queue`. At most `batching.in_flight` batches are unanswered and
    /// `capacity` calls wait in the line; a call beyond that is refused at once (overload,
    /// which the caller answers with 503). `timeout` bounds one batch from publish to reply.
    pub(crate) fn start(
        rpc: Arc<RpcClient>,
        queue: &'static str,
        batching: Batching,
        capacity: usize,
        timeout: Duration,
    ) -> Self {
        let (calls, line) = mpsc::channel(capacity.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let sender = Sender {
            rpc,
            queue,
            batching: Batching {
                max: batching.max.max(1),
                ..batching
            },
            timeout,
            unanswered: Arc::new(AtomicUsize::new(0)),
            slots: Arc::new(Semaphore::new(batching.in_flight.clamp(1, capacity.max(1)))),
        };
        let task = tokio::spawn(sender.run(line));
        Batcher {
            calls,
            waiting,
            task,
        }
    }

    /// Calls waiting for an answer now (in the line or sent).
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Sends one request (an encoded protocol message) and waits at most `timeout` for its
    /// reply.
    pub(crate) async fn call(&self, body: Bytes, timeout: Duration) -> Result<Bytes> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _done = Decrement(&self.waiting);
        let (answer, answered) = oneshot::channel();
        self.calls
            .try_send(Call { body, answer })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded("the call line is full"),
                mpsc::error::TrySendError::Closed(_) => Error::QueueClosed("call line".into()),
            })?;
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::QueueClosed("call line".into())),
            Err(_) => Err(Error::Timeout("worker", timeout_ms)),
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Sender {
    rpc: Arc<RpcClient>,
    queue: &'static str,
    batching: Batching,
    timeout: Duration,
    /// Batches of this queue sent and not yet answered.
    unanswered: Arc<AtomicUsize>,
    /// One permit per batch that may be unanswered at once.
    slots: Arc<Semaphore>,
}

impl Sender {
    async fn run(self, mut line: mpsc::Receiver<Call>) {
        loop {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let Some(first) = line.recv().await else {
                return;
            };
            let mut calls = vec![first];
            while calls.len() < self.batching.max {
                match line.try_recv() {
                    Ok(call) => calls.push(call),
                    Err(_) => break,
                }
            }
            // Busy: an earlier batch is out. Collect more for a bounded moment.
            if calls.len() < self.batching.max
                && !self.batching.wait.is_zero()
                && self.unanswered.load(Ordering::Relaxed) > 0
            {
                let deadline = Instant::now() + self.batching.wait;
                while calls.len() < self.batching.max {
                    match tokio::time::timeout_at(deadline, line.recv()).await {
                        Ok(Some(call)) => calls.push(call),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            // A caller that gave up is not sent for.
            calls.retain(|call| !call.answer.is_closed());
            if calls.is_empty() {
                continue;
            }
            metrics::histogram!("rideshare_orchestrator_batch_calls", "queue" => self.queue)
                .record(calls.len() as f64);
            self.unanswered.fetch_add(1, Ordering::Relaxed);
            let (rpc, queue, timeout) = (Arc::clone(&self.rpc), self.queue, self.timeout);
            let unanswered = Arc::clone(&self.unanswered);
            tokio::spawn(async move {
                let _answered = Decrement(&unanswered);
                let _slot = slot;
                send(&rpc, queue, calls, timeout).await;
            });
        }
    }
}

/// Sends one batch and hands each call its reply. A lone call travels as itself.
async fn send(rpc: &RpcClient, queue: &str, mut calls: Vec<Call>, timeout: Duration) {
    if calls.len() == 1 {
        if let Some(call) = calls.pop() {
            let _ = call.answer.send(rpc.call(queue, call.body, timeout).await);
        }
        return;
    }
    let bodies: Vec<&Bytes> = calls.iter().map(|call| &call.body).collect();
    let body = join_batch(&bodies);
    let replies = match rpc.call(queue, body, timeout).await {
        Ok(reply) => split_batch(&reply, calls.len()),
        Err(e) => Err(e),
    };
    match replies {
        Ok(replies) => {
            for (call, reply) in calls.into_iter().zip(replies) {
                let _ = call.answer.send(Ok(reply));
            }
        }
        Err(e) => {
            // Every caller retries on its own; each hears the batch's failure.
            let message = e.to_string();
            for call in calls {
                let _ = call.answer.send(Err(same_failure(&e, &message)));
            }
        }
    }
}

/// The batch's failure, once per call (errors are not `Clone`: some carry a source).
fn same_failure(e: &Error, message: &str) -> Error {
    match e {
        Error::Timeout(what, ms) => Error::Timeout(what, *ms),
        Error::QueueClosed(queue) => Error::QueueClosed(queue.clone()),
        Error::BrokerUnavailable(why) => Error::BrokerUnavailable(why.clone()),
        _ => Error::Protocol(message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::mem::MemBroker;
    use crate::broker::{Broker, Message};

    /// A worker that answers every message on `queue`: a batch with an array of its requests
    /// echoed in order, a lone request with itself. Counts the messages it got.
    async fn echo_worker(broker: Arc<dyn Broker>, queue: &str) -> Arc<AtomicUsize> {
        broker.declare(queue).await.unwrap();
        let mut consumer = broker.consume(queue, 0).await.unwrap();
        let messages = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&messages);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                seen.fetch_add(1, Ordering::SeqCst);
                // Slow enough that calls pile up behind the first.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let reply = Message {
                    body: delivery.message.body.clone(),
                    correlation_id: delivery.message.correlation_id.clone(),
                    reply_to: None,
                    transient: false,
                };
                let to = delivery.message.reply_to.clone().unwrap();
                broker.publish(&to, reply).await.unwrap();
                delivery.ack().await.unwrap();
            }
        });
        messages
    }

    async fn batcher(batching: Batching) -> (Batcher, Arc<AtomicUsize>) {
        let broker: Arc<dyn Broker> = Arc::new(MemBroker::new());
        let messages = echo_worker(Arc::clone(&broker), "q").await;
        let rpc = Arc::new(RpcClient::start(broker, "test", 64).await.unwrap());
        let batcher = Batcher::start(rpc, "q", batching, 256, Duration::from_secs(5));
        (batcher, messages)
    }

    #[tokio::test]
    async fn calls_that_queue_up_share_messages_and_each_gets_its_own_reply() {
        let batching = Batching {
            max: 8,
            wait: Duration::from_millis(20),
            in_flight: 64,
            write_in_flight: 1,
        };
        let (batcher, messages) = batcher(batching).await;
        let batcher = Arc::new(batcher);
        let calls = (0..40).map(|i| {
            let batcher = Arc::clone(&batcher);
            tokio::spawn(async move {
                let body = Bytes::from(format!("{{\"n\":{i}}}"));
                let reply = batcher.call(body, Duration::from_secs(5)).await.unwrap();
                assert_eq!(reply, format!("{{\"n\":{i}}}"));
            })
        });
        for call in futures::future::join_all(calls).await {
            call.unwrap();
        }
        let sent = messages.load(Ordering::SeqCst);
        // 40 calls in batches of at most 8: at least 5 messages, and far fewer than 40.
        assert!((5..=12).contains(&sent), "{sent} messages for 40 calls");
        assert_eq!(batcher.waiting(), 0);
    }

    /// Ten calls a millisecond apart to a worker that takes 5 ms a message: the messages sent.
    async fn spaced_calls(in_flight: usize) -> usize {
        let batching = Batching {
            max: 64,
            wait: Duration::ZERO,
            in_flight,
            write_in_flight: 1,
        };
        let (batcher, messages) = batcher(batching).await;
        let batcher = Arc::new(batcher);
        let mut calls = Vec::new();
        for i in 0..10 {
            let batcher = Arc::clone(&batcher);
            calls.push(tokio::spawn(async move {
                let body = Bytes::from(format!("{{\"n\":{i}}}"));
                let reply = batcher.call(body, Duration::from_secs(5)).await.unwrap();
                assert_eq!(reply, format!("{{\"n\":{i}}}"));
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for call in futures::future::join_all(calls).await {
            call.unwrap();
        }
        messages.load(Ordering::SeqCst)
    }

    /// No timer: calls that arrive while every slot is taken go together when one frees.
    #[tokio::test]
    async fn calls_behind_a_full_set_of_slots_share_the_next_message() {
        let one_slot = spaced_calls(1).await;
        assert!(
            (2..=6).contains(&one_slot),
            "{one_slot} messages for 10 calls"
        );
        // With a slot for each, every call finds one free and goes alone.
        assert_eq!(spaced_calls(64).await, 10);
    }

    #[tokio::test]
    async fn without_batching_every_call_is_its_own_message() {
        let batching = Batching {
            max: 1,
            wait: Duration::ZERO,
            in_flight: 64,
            write_in_flight: 1,
        };
        let (batcher, messages) = batcher(batching).await;
        let batcher = Arc::new(batcher);
        let calls = (0..10).map(|i| {
            let batcher = Arc::clone(&batcher);
            tokio::spawn(async move {
                let body = Bytes::from(format!("{{\"n\":{i}}}"));
                batcher.call(body, Duration::from_secs(5)).await.unwrap()
            })
        });
        futures::future::join_all(calls).await;
        assert_eq!(messages.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_full_line_refuses_at_once() {
        let broker: Arc<dyn Broker> = Arc::new(MemBroker::new());
        broker.declare("q").await.unwrap();
        // Nobody consumes: calls stay unanswered, and the line fills.
        let rpc = Arc::new(RpcClient::start(broker, "test", 64).await.unwrap());
        let batcher = Arc::new(Batcher::start(
            rpc,
            "q",
            Batching {
                max: 1,
                wait: Duration::ZERO,
                in_flight: 1,
                write_in_flight: 1,
            },
            1,
            Duration::from_secs(5),
        ));
        let mut refused = 0;
        let mut pending = Vec::new();
        for _ in 0..200 {
            let batcher = Arc::clone(&batcher);
            pending.push(tokio::spawn(async move {
                batcher
                    .call(Bytes::from_static(b"{}"), Duration::from_millis(300))
                    .await
            }));
        }
        for call in pending {
            if let Err(Error::Overloaded(_)) = call.await.unwrap() {
                refused += 1;
            }
        }
        assert!(refused > 0, "a line of one took 200 calls");
    }
}
