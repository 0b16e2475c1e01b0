//! Request/response over the broker, matched by correlation id.
//!
//! One reply queue per client (exclusive to it); a single task reads it and hands each reply to
//! the caller waiting on that correlation id. Replies nobody waits for any more (the caller timed
//! out) are dropped. The number of calls in flight is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use crate::broker::{Broker, Message};
use crate::error::{Error, Result};

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
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
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
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
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
        };
        self.broker.publish(queue, message).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::QueueClosed(self.reply_queue.clone())),
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
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Hands replies to their callers. When the reply queue's consumer ends (the broker restarted,
/// the exclusive queue went with the connection), declares the queue again and resubscribes,
/// with a bounded backoff; calls in flight meanwhile time out and are retried by their callers.
async fn read_replies(
    broker: Arc<dyn Broker>,
    reply_queue: String,
    first: Box<dyn crate::broker::Consumer>,
    pending: Pending,
) {
    let mut consumer = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(mut c) = consumer.take() {
            while let Some(delivery) = c.next().await {
                let Ok(delivery) = delivery else { break };
                backoff = Duration::from_millis(50);
                let _ = delivery.ack().await;
                let waiter =
                    delivery.message.correlation_id.as_ref().and_then(|id| {
                        pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
                    });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(delivery.message.body);
                }
            }
            tracing::warn!(queue = %reply_queue, "reply queue consumer ended; resubscribing");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if broker.declare_exclusive(&reply_queue).await.is_ok() {
            consumer = broker.consume(&reply_queue, 256).await.ok();
        }
    }
}
