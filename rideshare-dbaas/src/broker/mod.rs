//! `Broker`: named work queues with competing consumers.
//!
//! To ensure correctness a `Broker` must:
//! - deliver each published message to at most one consumer at a time (competing consumers,
//!   round robin among those with prefetch room);
//! - keep a delivered message until it is acked; when its consumer goes away (dropped, its
//!   connection lost) requeue it, so it is delivered again (at least once);
//! - never deliver more than `prefetch` unacked messages to one consumer;
//! - deliver to a lower-priority consumer only while no higher-priority one has room;
//! - return from `publish` of a persistent message only once the broker has taken it
//!   (publisher confirm); a transient one may return once it is on its way;
//! - carry `correlation_id` and `reply_to` unchanged.
//!
//! Request/response by correlation id is built on these in [`crate::rpc`].

pub mod mem;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// A message and the AMQP properties the protocol uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub body: Bytes,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// The message may be lost when the broker restarts (AMQP delivery mode 1), and `publish`
    /// may return before the broker has it (RabbitMQ: once its frames are queued on the
    /// connection, no confirm waited for). Only for messages whose loss the caller's own timeout
    /// and retry cover: reads, and replies (a write asked again is answered by its request id
    /// with its first outcome). Otherwise persistent (delivery mode 2).
    pub transient: bool,
}

impl Message {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            correlation_id: None,
            reply_to: None,
            transient: false,
        }
    }
}

/// Settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<()>;
    /// Gives the message back; `requeue` puts it back in its queue.
    async fn nack(&self, requeue: bool) -> Result<()>;
}

/// A message taken from a queue, to be acked (or nacked) exactly once.
pub struct Delivery {
    pub message: Message,
    /// True when this message was delivered before (to a consumer that went away).
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    pub async fn ack(&self) -> Result<()> {
        self.acker.ack().await
    }

    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.acker.nack(requeue).await
    }
}

/// A subscription to one queue. Dropping it requeues what it holds unacked.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` once the consumer is closed (broker gone, queue deleted).
    async fn next(&mut self) -> Option<Result<Delivery>>;

    /// Closes the subscription and returns once the broker has taken it back: what it held
    /// unacked is requeued, and a message published afterwards cannot go to it. Dropping does
    /// the same without waiting (a message published right after a drop may still reach the
    /// closing subscription and come back marked redelivered).
    async fn close(self: Box<Self>) {}
}

/// Queues on a message broker.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares a durable queue (idempotent).
    async fn declare(&self, queue: &str) -> Result<()>;
    /// Declares a queue that lives as long as its declaring connection (for replies).
    async fn declare_exclusive(&self, queue: &str) -> Result<()>;
    /// Publishes to a queue; returns once the broker confirmed it (a transient message: once
    /// it is on its way).
    async fn publish(&self, queue: &str, message: Message) -> Result<()>;
    /// Starts consuming, with at most `prefetch` unacked deliveries at a time (0: unbounded, as
    /// in AMQP). Consuming an undeclared queue fails with [`crate::Error::QueueClosed`].
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>> {
        self.consume_prioritized(queue, prefetch, 0).await
    }
    /// Like `consume`, with a priority: while a consumer of higher priority has prefetch room,
    /// consumers of lower priority get nothing (RabbitMQ's consumer priorities, `x-priority`).
    /// The master consumes writes at its epoch's priority, so a frozen older master that still
    /// holds a subscription gets no new writes once the new master subscribes.
    async fn consume_prioritized(
        &self,
        queue: &str,
        prefetch: u16,
        priority: i32,
    ) -> Result<Box<dyn Consumer>>;
}
