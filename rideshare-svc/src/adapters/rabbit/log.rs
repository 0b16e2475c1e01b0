//! The [`Log`] on a RabbitMQ stream: a durable queue of type `stream`, appended to with
//! publisher confirms, read by [`super::log_reader`].
//!
//! - Appends are ordered when `append` is *called*: the call hands the entry to one publishing
//!   task, which publishes in that order on the log's one pooled channel, so pipelined appends
//!   keep their call order; their confirm waits overlap. An append whose confirmation is dropped
//!   may still land.
//! - [`Log::end`]: RabbitMQ does not tell a stream's end over AMQP 0-9-1. The `message-count`
//!   of `queue.declare-ok` is no good: for a stream, RabbitMQ 3.10 answers with a statistics
//!   snapshot taken every 5 s (`rabbit_osiris_metrics`, `stream_tick_interval`), so right after
//!   an append it is behind (measured: 0 after 50 confirmed appends). Nor is "consume from
//!   `last` and wait a little": an empty stream and a slow broker look alike. So `end` probes
//!   in an order RabbitMQ guarantees (the reasoning is on `RabbitLog::probe_end`): on a fresh
//!   channel, a consumer from `last`, then a second consumer and two passive declares; once the
//!   second declare is answered, the whole last chunk has been delivered to the first consumer,
//!   and its highest `x-stream-offset` + 1 is the end (nothing delivered: 0). The snapshot count,
//!   which may lag but never exceeds the entries there, is kept as a check: a probe below it is
//!   retried, then refused rather than answered low. Verified against RabbitMQ 3.10.8 by
//!   `tests/rabbit_conformance.rs`: 0 on an empty stream, exactly the count after each
//!   confirmed append, seen from another connection too, and equal to the last index a reader
//!   gets. The probe reads the replica of the node the log is connected to: in a cluster, on
//!   a node that is not the stream's leader, `end` may lag entries confirmed a moment ago (a
//!   follower learns what is committed a little after the leader confirms it).

use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use bytes::Bytes;
use futures::FutureExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, PublisherConfirm};
use rideshare_dbaas::log::{Appended, Log, LogReader};
use rideshare_dbaas::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use super::channel::{self, persistent};
use super::connection::Link;
use super::log_reader::{stream_index, subscribe_stream, RabbitLogReader, STREAM_OFFSET};
use super::{millis, short, QueueKind, Retention, Side, CONFIRM_TIMEOUT};

/// Probes of [`Log::end`] before giving up when they disagree with RabbitMQ's count.
const END_ATTEMPTS: usize = 3;
const END_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The [`Log`] on a RabbitMQ stream. Cloning gives another handle on the same connection and
/// the same append order.
#[derive(Clone, Debug)]
pub struct RabbitLog {
    link: Arc<Link>,
    stream: Arc<str>,
    appends: mpsc::UnboundedSender<AppendRequest>,
}

struct AppendRequest {
    data: Bytes,
    /// The pending confirm once published, or why it was not.
    published: oneshot::Sender<Result<PublisherConfirm>>,
}

impl fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendRequest")
            .field("len", &self.data.len())
            .finish()
    }
}

impl RabbitLog {
    /// Connects to RabbitMQ at `url` and declares the stream `stream` (durable) with the default
    /// [`Retention`]: 1 GiB, in segments of 64 MiB. Fails with [`Error::LogUnavailable`] if it
    /// cannot.
    ///
    /// `url` may list the nodes of one cluster, comma-separated: the log connects to the first
    /// that answers and, when that connection is lost, to the next one that does; a stream it
    /// creates is then replicated on that many nodes (`x-initial-cluster-size`). Appends in
    /// flight when a node dies fail (unavailable, or a confirm timeout): their outcome is
    /// unknown, as for any lost confirm. Readers resume on the new connection from the next
    /// index they need.
    pub async fn connect(url: &str, stream: &str) -> Result<Self> {
        Self::connect_with(url, stream, Retention::default()).await
    }

    /// [`RabbitLog::connect`] with the stream's retention. RabbitMQ fixes a stream's retention
    /// when it creates it: if `stream` exists already with other retention arguments (or none,
    /// as made before retention was set), RabbitMQ refuses the declare (PRECONDITION_FAILED,
    /// "inequivalent arg"); the log then warns and uses the stream as it is. Changing an
    /// existing stream's retention is a RabbitMQ policy's job.
    pub async fn connect_with(url: &str, stream: &str, retention: Retention) -> Result<Self> {
        // One pooled channel: publishes on one channel reach the stream in the order sent.
        let link = Link::connect(Side::Log, url, 1).await?;
        link.declare(stream, QueueKind::Stream(retention)).await?;
        let (appends, requests) = mpsc::unbounded_channel();
        tokio::spawn(run_appender(
            Arc::clone(&link),
            short(stream, "stream name")?,
            requests,
        ));
        Ok(RabbitLog {
            link,
            stream: Arc::from(stream),
            appends,
        })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether the connection is up right now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The node the connection is to (`amqp://host:port/vhost`, no credentials) while it is up:
    /// with several URLs, the one that answered.
    pub fn connected_to(&self) -> Option<String> {
        self.link.connected_to()
    }
}

/// Publishes appends in the order `append` was called, on the log's one pooled channel, and
/// hands each its pending confirm, so the confirm waits overlap. Ends when every [`RabbitLog`]
/// handle is dropped.
///
/// lapin puts a publish's frames in the connection's send queue (and numbers its confirm) on the
/// first poll of `basic_publish`, then waits for them to be written. The task polls each publish
/// once itself, which fixes the order, and leaves the wait to a task of its own, so a pipeline
/// of appends is not one socket write after the other.
async fn run_appender(
    link: Arc<Link>,
    stream: ShortString,
    mut requests: mpsc::UnboundedReceiver<AppendRequest>,
) {
    while let Some(AppendRequest { data, published }) = requests.recv().await {
        // Published even when its caller stopped waiting: like a request already on the wire.
        let pooled = match channel::get(link.channels(), &link).await {
            Ok(pooled) => pooled,
            Err(e) => {
                // The caller may have stopped waiting; the outcome stands either way.
                let _ = published.send(Err(e));
                continue;
            }
        };
        let mut publish = Box::pin(publish(Channel::clone(&pooled), stream.clone(), data));
        let first = futures::poll!(publish.as_mut());
        // Back to the pool: this publish already holds its place on the channel.
        drop(pooled);
        match first {
            Poll::Ready(result) => {
                let _ =
                    published.send(result.map_err(|e| link.fail("append to", stream.as_str(), e)));
            }
            Poll::Pending => {
                let link = Arc::clone(&link);
                let stream = stream.clone();
                tokio::spawn(async move {
                    let result = link.bounded("append to", stream.as_str(), publish).await;
                    let _ = published.send(result);
                });
            }
        }
    }
}

async fn publish(
    channel: Channel,
    stream: ShortString,
    data: Bytes,
) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            ShortString::from(""),
            stream,
            BasicPublishOptions::default(),
            &data,
            persistent(),
        )
        .await
}

/// Why [`Log::end`] gave no answer from one probe.
enum EndProbe {
    /// The probe failed: answered at once, not retried.
    Failed(Error),
    /// The probe saw fewer entries than RabbitMQ once counted: probed again.
    Low { end: u64, counted: u64 },
}

#[async_trait]
impl Log for RabbitLog {
    fn append(&self, data: Bytes) -> Appended {
        if let Err(e) = self.link.ensure_live() {
            return Appended::ready(Err(e));
        }
        let (published, confirm) = oneshot::channel();
        // The order is fixed here, by the queue to the one appender task.
        let queued = self.appends.send(AppendRequest { data, published });
        let link = Arc::clone(&self.link);
        let stream = Arc::clone(&self.stream);
        Appended::pending(async move {
            if queued.is_err() {
                return Err(link.unavailable("log appender stopped"));
            }
            let started = tokio::time::Instant::now();
            let confirm = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                Ok(Ok(published)) => published?,
                Ok(Err(_)) => return Err(link.unavailable("log appender stopped")),
                Err(_) => return Err(Error::Timeout("log append", millis(CONFIRM_TIMEOUT))),
            };
            let left = CONFIRM_TIMEOUT.saturating_sub(started.elapsed());
            link.settle_confirm(&stream, confirm, left).await
        })
    }

    /// `from` 0 reads from the first entry, like 1.
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        let next = from.max(1);
        let subscription = subscribe_stream(&self.link, &self.stream, next).await?;
        Ok(Box::new(RabbitLogReader::new(
            Arc::clone(&self.link),
            Arc::clone(&self.stream),
            next,
            subscription,
        )))
    }

    /// See the module doc: an ordered probe of the last chunk, checked against RabbitMQ's
    /// (lagging, never too high) count.
    async fn end(&self) -> Result<u64> {
        let probe = || async {
            match self.probe_end().await {
                Ok((end, counted)) if end >= counted => Ok(end),
                Ok((end, counted)) => Err(EndProbe::Low { end, counted }),
                Err(e) => Err(EndProbe::Failed(e)),
            }
        };
        let mut attempt = 0;
        let answered = probe
            .retry(
                ConstantBuilder::default()
                    .with_delay(END_RETRY_PAUSE)
                    .with_max_times(END_ATTEMPTS - 1),
            )
            .when(|e| matches!(e, EndProbe::Low { .. }))
            .notify(|e, _| {
                attempt += 1;
                if let EndProbe::Low { end, counted } = e {
                    // It must not answer low: a reader would then not wait for entries already
                    // acknowledged.
                    tracing::warn!(stream = %self.stream, end, counted, attempt, "log end probe saw fewer entries than RabbitMQ counts; probing again");
                }
            })
            .await;
        answered.map_err(|e| match e {
            EndProbe::Failed(e) => e,
            EndProbe::Low { .. } => self.link.unavailable(format!(
                "the end of stream {} could not be determined consistently",
                self.stream
            )),
        })
    }
}

impl RabbitLog {
    /// One probe for [`Log::end`]: the highest index of the stream's last chunk, and RabbitMQ's
    /// message count as of its last statistics tick.
    ///
    /// Why it is exact (RabbitMQ 3.10, read from its source): a stream consumer lives in the
    /// channel process. Consumer A, from `last`, registers with the stream's writer for a
    /// notification; consumer B's set-up then calls that writer, which sends A's notification
    /// before it answers B. So once the channel has finished B (the first passive declare's
    /// answer proves it), A's notification is in the channel's mailbox, ahead of the second
    /// declare. The channel handles it (sending the whole last chunk to A: credit is checked
    /// between chunks only) before answering that declare, so when the answer is here every
    /// delivery of the last chunk is in A's buffer. An empty stream delivers nothing: 0.
    async fn probe_end(&self) -> Result<(u64, u64)> {
        let stream = &*self.stream;
        let (mut guard, mut last) = self.link.subscribe(stream, 1, offset_spec("last")).await?;
        let channel = guard
            .channel()
            .cloned()
            .ok_or_else(|| self.link.unavailable("end probe channel closed"))?;
        let next = self
            .link
            .bounded(
                "consume (end probe)",
                stream,
                channel.basic_consume(
                    short(stream, "stream name")?,
                    ShortString::from(""),
                    BasicConsumeOptions::default(),
                    offset_spec("next"),
                ),
            )
            .await?;
        guard.keep(&next);
        let mut counted = 0;
        for _ in 0..2 {
            let queue = self
                .link
                .bounded(
                    "passive declare of stream",
                    stream,
                    channel.queue_declare(
                        short(stream, "stream name")?,
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await?;
            counted = u64::from(queue.message_count());
        }
        let mut end = 0;
        loop {
            match futures::StreamExt::next(&mut last).now_or_never() {
                None => break,
                Some(Some(Ok(delivery))) => end = end.max(stream_index(stream, &delivery)?),
                Some(Some(Err(e))) => return Err(self.link.fail("end probe on", stream, e)),
                Some(None) => {
                    return Err(self
                        .link
                        .unavailable(format!("end probe on stream {stream}: consumer cancelled")))
                }
            }
        }
        Ok((end, counted))
    }
}

/// An `x-stream-offset` consume argument naming a position (`first`, `last`, `next`).
fn offset_spec(position: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(STREAM_OFFSET.into(), AMQPValue::LongString(position.into()));
    arguments
}
