//! Channels on a link's connection.
//!
//! - Publishing and declaring borrow a channel from a deadpool pool of confirm-mode channels,
//!   for the one AMQP call only: lapin numbers confirms per channel at publish time, so two
//!   publishes on one channel must not interleave, but the confirm wait needs no channel. The
//!   pool drops a channel a failed method closed (or that died with its connection) and opens
//!   another on the live connection.
//! - Every message is published through the default exchange (routing key = queue name),
//!   persistent unless the message is transient (reads, replies). A persistent publish returns
//!   after RabbitMQ's confirm (a nack is an error); a transient one once its frames are queued
//!   on the connection ([`Link::send`]).
//! - A consumer gets a channel of its own with `basic.qos(prefetch)` and manual acks, behind a
//!   [`ChannelGuard`] that closes it when dropped.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use rideshare_dbaas::{Error, Result};

use super::connection::{self, ConnectionPool, Endpoint, Link, REPLY_SUCCESS};
use super::{millis, short, CONFIRM_TIMEOUT, OP_TIMEOUT};

/// The confirm-mode channels of one link.
pub(super) type ChannelPool = managed::Pool<ChannelManager>;

/// Opens confirm-mode channels on the link's pooled connection.
pub(super) struct ChannelManager {
    connections: ConnectionPool,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for ChannelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelManager")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = Error;

    async fn create(&self) -> Result<Channel> {
        // Only the supervisor connects again: a dead connection fails the call at once.
        self.endpoint.ensure_live()?;
        let conn = connection::connection(&self.connections, &self.endpoint).await?;
        let channel = self
            .endpoint
            .bounded("open channel", "(pooled)", conn.create_channel())
            .await?;
        drop(conn);
        self.endpoint
            .bounded(
                "confirm.select",
                "(pooled)",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<Error> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// A pool of at most `size` channels on `connections`. Waiting for one is bounded by
/// [`OP_TIMEOUT`]; opening one is bounded step by step.
pub(super) fn pool(
    connections: ConnectionPool,
    endpoint: Arc<Endpoint>,
    size: usize,
) -> Result<ChannelPool> {
    managed::Pool::builder(ChannelManager {
        connections,
        endpoint: Arc::clone(&endpoint),
    })
    .max_size(size)
    .wait_timeout(Some(OP_TIMEOUT))
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .map_err(|e| endpoint.unavailable(format!("channel pool: {e}")))
}

/// Borrows a channel of `pool`, opening one if none is idle.
pub(super) async fn get(pool: &ChannelPool, endpoint: &Endpoint) -> Result<Object<ChannelManager>> {
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(_) => Error::Timeout("pooled channel", millis(OP_TIMEOUT)),
        other => endpoint.unavailable(format!("channel pool: {other}")),
    })
}

/// The properties every message but a transient one goes out with: persistent. RabbitMQ writes persistent messages
/// to disk only in durable queues, so a reply to an exclusive queue costs nothing more; in a
/// durable queue it costs a disk write before the confirm (measured on 3.10: about 0.6 ms
/// against 0.2 ms per sequential publish).
pub(super) fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The properties of a message that may be lost with a broker restart (`Message::transient`):
/// confirmed without a disk write.
pub(super) fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

impl Link {
    /// Publishes on a pooled channel, held for the `basic.publish` only, and returns the
    /// pending confirm. A publish to a queue nobody declared is confirmed and dropped.
    pub(super) async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm> {
        let routing_key = short(queue, "queue name")?;
        self.ensure_live()?;
        let channel = get(self.channels(), self).await?;
        self.bounded(
            "publish to",
            queue,
            channel.basic_publish(
                ShortString::from(""),
                routing_key,
                BasicPublishOptions::default(),
                payload,
                properties,
            ),
        )
        .await
    }

    /// Hands a message to the connection and returns without waiting for the connection's IO
    /// thread to write it or for RabbitMQ's confirm. lapin queues a publish's frames in the
    /// first poll of `basic_publish` (everything before its one await is synchronous); the
    /// rest of that future only waits for the write, two thread handoffs that a caller who
    /// retries on its own timeout does not need.
    pub(super) async fn send(
        &self,
        queue: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        use futures::FutureExt;
        let routing_key = short(queue, "queue name")?;
        self.ensure_live()?;
        let channel = get(self.channels(), self).await?;
        let publishing = channel.basic_publish(
            ShortString::from(""),
            routing_key,
            BasicPublishOptions::default(),
            payload,
            properties,
        );
        match publishing.now_or_never() {
            Some(Err(e)) => Err(self.fail(format_args!("publish to {queue}"), queue, e)),
            Some(Ok(_)) | None => Ok(()),
        }
    }

    /// Publishes and waits (bounded) for RabbitMQ's confirm; a nack is an error.
    pub(super) async fn publish_confirmed(
        &self,
        queue: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let confirm = self.publish(queue, payload, properties).await?;
        self.settle_confirm(queue, confirm, CONFIRM_TIMEOUT).await
    }

    pub(super) async fn settle_confirm(
        &self,
        queue: &str,
        confirm: PublisherConfirm,
        limit: std::time::Duration,
    ) -> Result<()> {
        match tokio::time::timeout(limit, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => {
                Err(self.unavailable(format!("RabbitMQ refused (nacked) a message to {queue}")))
            }
            Ok(Ok(Confirmation::NotRequested)) => Err(self.unavailable(format!(
                "publish to {queue} went out on a channel without confirms"
            ))),
            Ok(Err(e)) => Err(self.fail(format_args!("confirm of a publish to {queue}"), queue, e)),
            Err(_) => Err(Error::Timeout("publisher confirm", millis(limit))),
        }
    }

    /// Opens a channel with `basic.qos(prefetch)` and consumes `queue` on it with manual acks.
    pub(super) async fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
        arguments: FieldTable,
    ) -> Result<(ChannelGuard, lapin::Consumer)> {
        let name = short(queue, "queue name")?;
        let channel = self.open_channel(queue).await?;
        // From here on, dropping the guard (an error below) closes the channel.
        let mut guard = ChannelGuard::new(channel.clone());
        self.bounded(
            "basic.qos for",
            queue,
            channel.basic_qos(prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        let consumer = self
            .bounded(
                "consume",
                queue,
                channel.basic_consume(
                    name,
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: false,
                        ..BasicConsumeOptions::default()
                    },
                    arguments,
                ),
            )
            .await?;
        guard.keep(&consumer);
        Ok((guard, consumer))
    }
}

/// Closes its channel when dropped; RabbitMQ then requeues what was delivered on it unacked.
///
/// It also holds a clone of each consumer on the channel until the close is under way. Dropping
/// a lapin consumer's last clone while its channel is open makes lapin send `basic.cancel` from
/// its own task. Racing our `channel.close`, that cancel can reach RabbitMQ after the close, on
/// a channel it no longer knows, and RabbitMQ then closes the whole connection with a
/// channel error, "expected 'channel.open'" (seen in the tests). Once the close has started,
/// lapin marks the consumers cancelled and sends nothing for them.
pub(super) struct ChannelGuard {
    channel: Option<Channel>,
    consumers: Vec<lapin::Consumer>,
}

impl ChannelGuard {
    fn new(channel: Channel) -> Self {
        ChannelGuard {
            channel: Some(channel),
            consumers: Vec::new(),
        }
    }

    pub(super) fn channel(&self) -> Option<&Channel> {
        self.channel.as_ref()
    }

    /// Closes the channel and waits for the broker's answer (bounded by `OP_TIMEOUT`).
    pub(super) async fn close(mut self) {
        let consumers = std::mem::take(&mut self.consumers);
        if let Some(channel) = self.channel.take() {
            close_channel(channel).await;
        }
        drop(consumers);
    }

    /// Keeps `consumer` from being cancelled on its own before the channel closes.
    pub(super) fn keep(&mut self, consumer: &lapin::Consumer) {
        self.consumers.push(consumer.clone());
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let consumers = std::mem::take(&mut self.consumers);
        let Some(channel) = self.channel.take() else {
            return;
        };
        if !channel.status().connected() {
            return;
        }
        // Closing is a round trip; Drop cannot wait, so the close runs as a task. Without a
        // runtime (dropped after shutdown) the connection is going away as well.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                close_channel(channel).await;
                drop(consumers);
            });
        }
    }
}

async fn close_channel(channel: Channel) {
    if !channel.status().connected() {
        return;
    }
    let closing = channel.close(REPLY_SUCCESS, ShortString::from("consumer closed"));
    if let Ok(Err(e)) = tokio::time::timeout(OP_TIMEOUT, closing).await {
        tracing::debug!(error = %e, "closing a consumer channel failed");
    }
}
