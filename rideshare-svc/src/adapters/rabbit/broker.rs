//! The [`Broker`] on RabbitMQ: durable work queues, exclusive reply queues, consumers with
//! `basic.qos(prefetch)` and manual acks, and the request/reply properties.
//!
//! `correlation_id` and `reply_to` travel as the AMQP properties of those names. Dropping a
//! consumer closes its channel, and RabbitMQ requeues (marked redelivered) what it held
//! unacked. When the connection dies its consumers end (`next()` gives `None`): their owner
//! subscribes again. Consuming an undeclared queue gives [`Error::QueueClosed`].

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use rideshare_dbaas::broker::{Acker, Broker, Consumer, Delivery, Message};
use rideshare_dbaas::{Error, Result};

use super::channel::{persistent, transient, ChannelGuard};
use super::connection::Link;
use super::{short, QueueKind, Side};

/// Channels the broker publishes (and declares) on.
const PUBLISH_CHANNELS: usize = 4;

/// The [`Broker`] on RabbitMQ. Cloning gives another handle on the same connection.
#[derive(Clone, Debug)]
pub struct RabbitBroker {
    link: Arc<Link>,
}

impl RabbitBroker {
    /// Connects to RabbitMQ at `url` (e.g. `amqp://127.0.0.1:5672/%2f`; `?heartbeat=N` sets the
    /// heartbeat, 10 s by default). Fails with [`Error::BrokerUnavailable`] if it cannot.
    ///
    /// `url` may list the nodes of one cluster, comma-separated: it connects to the first that
    /// answers, and after a lost connection to the next one that does.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(RabbitBroker {
            link: Link::connect(Side::Broker, url, PUBLISH_CHANNELS).await?,
        })
    }

    /// Whether the connection is up right now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The node the connection is to (no credentials) while it is up.
    pub fn connected_to(&self) -> Option<String> {
        self.link.connected_to()
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn declare(&self, queue: &str) -> Result<()> {
        self.link.declare(queue, QueueKind::Durable).await
    }

    /// Exclusive to this broker's connection and deleted with it; declared again on the new
    /// connection after a reconnection (empty: replies in flight then are lost).
    async fn declare_exclusive(&self, queue: &str) -> Result<()> {
        self.link.declare(queue, QueueKind::Exclusive).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<()> {
        let mut properties = if message.transient {
            transient()
        } else {
            persistent()
        };
        if let Some(id) = &message.correlation_id {
            properties = properties.with_correlation_id(short(id, "correlation_id")?);
        }
        if let Some(reply_to) = &message.reply_to {
            properties = properties.with_reply_to(short(reply_to, "reply_to")?);
        }
        if message.transient {
            self.link.send(queue, &message.body, properties).await
        } else {
            self.link
                .publish_confirmed(queue, &message.body, properties)
                .await
        }
    }

    async fn consume_prioritized(
        &self,
        queue: &str,
        prefetch: u16,
        priority: i32,
    ) -> Result<Box<dyn Consumer>> {
        let mut arguments = FieldTable::default();
        if priority != 0 {
            arguments.insert("x-priority".into(), AMQPValue::LongInt(priority));
        }
        let (channel, consumer) = self.link.subscribe(queue, prefetch, arguments).await?;
        Ok(Box::new(RabbitConsumer {
            link: Arc::clone(&self.link),
            queue: queue.to_owned(),
            consumer: Some(consumer),
            channel,
        }))
    }
}

/// A subscription to one queue on its own channel. Dropping it closes the channel.
struct RabbitConsumer {
    link: Arc<Link>,
    queue: String,
    /// `None` once it ended: it never yields again.
    consumer: Option<lapin::Consumer>,
    channel: ChannelGuard,
}

#[async_trait]
impl Consumer for RabbitConsumer {
    /// Cancel-safe: lapin buffers deliveries until they are taken.
    async fn close(self: Box<Self>) {
        self.channel.close().await;
    }

    async fn next(&mut self) -> Option<Result<Delivery>> {
        let consumer = self.consumer.as_mut()?;
        match consumer.next().await {
            Some(Ok(delivery)) => {
                let properties = &delivery.properties;
                let message = Message {
                    correlation_id: properties
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    reply_to: properties
                        .reply_to()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    transient: *properties.delivery_mode() == Some(1),
                    body: Bytes::from(delivery.data),
                };
                Some(Ok(Delivery {
                    message,
                    redelivered: delivery.redelivered,
                    acker: Box::new(RabbitAcker {
                        link: Arc::clone(&self.link),
                        queue: self.queue.clone(),
                        acker: delivery.acker,
                    }),
                }))
            }
            Some(Err(e)) => {
                // lapin follows an error with the end of the stream: end here already, so the
                // owner subscribes again.
                tracing::warn!(queue = %self.queue, error = %e, "consumer ended by an error");
                self.consumer = None;
                None
            }
            None => {
                tracing::debug!(queue = %self.queue, "consumer ended");
                self.consumer = None;
                None
            }
        }
    }
}

/// Settles one delivery of a [`RabbitConsumer`] on the channel it came on.
struct RabbitAcker {
    link: Arc<Link>,
    queue: String,
    acker: lapin::Acker,
}

impl RabbitAcker {
    async fn settle(
        &self,
        what: &'static str,
        call: impl Future<Output = lapin::Result<bool>>,
    ) -> Result<()> {
        match self.link.bounded(what, &self.queue, call).await? {
            true => Ok(()),
            // lapin refuses an acker already used or whose channel closed (the message was then
            // requeued): the same outcome as settling on a closed channel.
            false if !self.link.is_connected() => Err(self
                .link
                .unavailable(format!("{what} on {}: connection lost", self.queue))),
            false => Err(Error::QueueClosed(self.queue.clone())),
        }
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<()> {
        self.settle("ack on", self.acker.ack(BasicAckOptions::default()))
            .await
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        self.settle("nack on", self.acker.nack(options)).await
    }
}
