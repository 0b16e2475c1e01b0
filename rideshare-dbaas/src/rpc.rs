//! Request/response over the broker, matched by correlation id.
//!
//! One reply queue per client (exclusive to it); a single task reads it and hands each reply to
//! the caller waiting on that correlation id. Replies nobody waits for any more (the caller timed
//! out) are dropped. The number of calls in flight is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

use crate::broker::{Broker, Message};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;

pub struct RpcClient {
    broker: Arc<dyn Broker>,
    reply_queue: String,
    pending: Pending,
    next_id: AtomicU64,
    prefix: String,
    in_flight: Semaphore,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RpcClient {
    /// Declares a reply queue named `rideshare.reply.<name>` and starts reading it.
    pub async fn start(broker: Arc<dyn Broker>, name: &str, max_in_flight: usize) -> Result<Self> {
        let reply_queue = format!("rideshare.reply.{name}");
        broker.declare_exclusive(&reply_queue).await?;
        let first = broker.consume(&reply_queue, 256).await?;
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_replies(
            Arc::clone(&broker),
            reply_queue.clone(),
            first,
            Arc::clone(&pending),
        ));
        Ok(RpcClient {
            broker,
            reply_queue,
            pending,
            next_id: AtomicU64::new(1),
            prefix: name.to_owned(),
            in_flight: Semaphore::new(max_in_flight),
            reader,
        })
    }

    /// Number of calls waiting for a reply.
    pub fn waiting(&self) -> usize {
        self.pending.lock().len()
    }

    /// Publishes `body` to `queue` and waits at most `timeout` for the reply.
    pub async fn call(&self, queue: &str, body: Bytes, timeout: Duration) -> Result<Bytes> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let _permit = tokio::time::timeout(timeout, self.in_flight.acquire())
            .await
            .map_err(|_| Error::Timeout("rpc slot", timeout_ms))?
            .map_err(|_| Error::QueueClosed(self.reply_queue.clone()))?;
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        // Whatever ends this call (reply, error, timeout, or the caller dropping it), the
        // waiter entry goes with it, so abandoned calls leave nothing behind.
        let _forget = Forget {
            pending: &self.pending,
            id: id.clone(),
        };
        let message = Message {
            body,
            correlation_id: Some(id.clone()),
            reply_to: Some(self.reply_queue.clone()),
            transient: crate::protocol::transient_requests(queue),
        };
        // The reply is awaited beside the publish's confirm, not after it: RabbitMQ confirms a
        // persistent message on a durable queue (a write) once it is on disk or consumed and
        // acked, which is after the worker has replied, so waiting for the confirm first put
        // the worker's reply-and-ack round trip on every write's path. A reply proves the
        // request arrived; a publish that fails before any reply fails the call.
        let publish = self.broker.publish(queue, message);
        tokio::pin!(publish);
        let answered = async {
            let mut published = false;
            loop {
                tokio::select! {
                    biased;
                    reply = &mut rx => return reply.map_err(|_| Error::QueueClosed(self.reply_queue.clone())),
                    outcome = &mut publish, if !published => {
                        outcome?;
                        published = true;
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, answered).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout("worker", timeout_ms)),
        }
    }
}

struct Forget<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// Pauses before each resubscription of the reply queue: from 50 ms, doubling to 2 s, and
/// starting over once a subscription has delivered something.
const RESUBSCRIBE: RetryPolicy =
    RetryPolicy::doubling(Duration::from_millis(50), Duration::from_secs(2));

/// Hands replies to their callers. When the reply queue's consumer ends (the broker restarted,
/// the exclusive queue went with the connection), declares the queue again and resubscribes,
/// with a bounded backoff; calls in flight meanwhile time out and are retried by their callers.
async fn read_replies(
    broker: Arc<dyn Broker>,
    reply_queue: String,
    first: Box<dyn crate::broker::Consumer>,
    pending: Pending,
) {
    forward(first, &pending).await;
    loop {
        tracing::warn!(queue = %reply_queue, "reply queue consumer ended; resubscribing");
        // The broker is likely restarting: give it a moment before the first try.
        tokio::time::sleep(RESUBSCRIBE.pause).await;
        // One try: subscribe, forward until the consumer ends. A try fails when it could not
        // subscribe or its consumer delivered nothing, so a broker that keeps refusing is asked
        // less and less often.
        let delivered = || async {
            broker.declare_exclusive(&reply_queue).await?;
            let consumer = broker.consume(&reply_queue, 256).await?;
            if forward(consumer, &pending).await {
                Ok(())
            } else {
                Err(Error::QueueClosed(reply_queue.clone()))
            }
        };
        // Unbounded tries: it ends only with a subscription that delivered.
        let _ = RESUBSCRIBE.run(delivered, |_| true).await;
    }
}

/// Hands each reply of `consumer` to its caller until the consumer ends. Answers whether it
/// delivered anything.
async fn forward(mut consumer: Box<dyn crate::broker::Consumer>, pending: &Pending) -> bool {
    let mut delivered = false;
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { break };
        delivered = true;
        // The caller gets its reply before the ack goes out: the ack only frees the broker's
        // record of the delivery, and awaiting it first put a round trip through the broker
        // client's IO thread on every reply's path.
        let waiter = delivery
            .message
            .correlation_id
            .as_ref()
            .and_then(|id| pending.lock().remove(id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(delivery.message.body.clone());
        }
        let _ = delivery.ack().await;
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::mem::MemBroker;
    use crate::broker::Consumer;
    use async_trait::async_trait;

    /// How [`Staged`] answers a publish to a work queue (replies, to `rideshare.reply.*`, are
    /// confirmed at once).
    enum Confirm {
        /// The message is queued, and confirmed this much later: RabbitMQ confirms a persistent
        /// message only once it is on disk.
        After(Duration),
        /// Refused after a pause, as RabbitMQ does with a nack.
        Refused,
    }

    /// A broker on [`MemBroker`] whose publisher confirms to work queues are staged.
    struct Staged {
        inner: MemBroker,
        confirm: Confirm,
    }

    #[async_trait]
    impl Broker for Staged {
        async fn declare(&self, queue: &str) -> Result<()> {
            self.inner.declare(queue).await
        }
        async fn declare_exclusive(&self, queue: &str) -> Result<()> {
            self.inner.declare_exclusive(queue).await
        }
        async fn publish(&self, queue: &str, message: Message) -> Result<()> {
            if queue.starts_with("rideshare.reply.") {
                return self.inner.publish(queue, message).await;
            }
            match self.confirm {
                Confirm::After(delay) => {
                    self.inner.publish(queue, message).await?;
                    tokio::time::sleep(delay).await;
                    Ok(())
                }
                Confirm::Refused => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err(Error::BrokerUnavailable("nacked".into()))
                }
            }
        }
        async fn consume_prioritized(
            &self,
            queue: &str,
            prefetch: u16,
            priority: i32,
        ) -> Result<Box<dyn Consumer>> {
            self.inner
                .consume_prioritized(queue, prefetch, priority)
                .await
        }
    }

    /// Answers every request on `queue` with its own body.
    async fn echo(broker: Arc<dyn Broker>, queue: &'static str) {
        broker.declare(queue).await.unwrap();
        let mut consumer = broker.consume(queue, 16).await.unwrap();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let reply = Message {
                    correlation_id: delivery.message.correlation_id.clone(),
                    ..Message::new(delivery.message.body.clone())
                };
                let to = delivery.message.reply_to.clone().unwrap();
                broker.publish(&to, reply).await.unwrap();
                delivery.ack().await.unwrap();
            }
        });
    }

    #[tokio::test]
    async fn a_reply_that_comes_before_the_publish_confirm_answers_the_call() {
        let broker: Arc<dyn Broker> = Arc::new(Staged {
            inner: MemBroker::new(),
            confirm: Confirm::After(Duration::from_secs(5)),
        });
        echo(Arc::clone(&broker), "work").await;
        let rpc = RpcClient::start(broker, "test", 8).await.unwrap();
        let started = tokio::time::Instant::now();
        let reply = rpc
            .call("work", Bytes::from_static(b"hello"), Duration::from_secs(2))
            .await
            .expect("the reply came long before the confirm");
        assert_eq!(reply, Bytes::from_static(b"hello"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rpc.waiting(), 0);
    }

    #[tokio::test]
    async fn a_publish_that_fails_before_any_reply_fails_the_call_at_once() {
        let broker: Arc<dyn Broker> = Arc::new(Staged {
            inner: MemBroker::new(),
            confirm: Confirm::Refused,
        });
        let rpc = RpcClient::start(broker, "test", 8).await.unwrap();
        let started = tokio::time::Instant::now();
        let outcome = rpc
            .call("work", Bytes::from_static(b"hello"), Duration::from_secs(5))
            .await;
        assert!(
            matches!(outcome, Err(Error::BrokerUnavailable(_))),
            "{outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rpc.waiting(), 0);
    }
}
