//! Following the log's stream from an index.
//!
//! A reader consumes the stream on its own channel (`basic.qos(1000)`, which RabbitMQ requires
//! for streams) from `x-stream-offset = from - 1`, and acks what it reads (a stream consumer's
//! acks give back credit). The index of a delivery is its `x-stream-offset` header + 1, never a
//! count: RabbitMQ may start at the beginning of the chunk holding the requested offset, so the
//! reader skips entries below `from`. Offsets have two kinds of holes: one offset at the start
//! of every segment but the first (a tracking chunk RabbitMQ does not deliver over AMQP), which
//! the reader passes over, so indexes may skip one there; and retention's, which drops the
//! oldest segments: a consumer asked for an offset retention dropped starts at the first one
//! kept, a jump of two or more, reported as [`Error::LogTruncated`] naming that first index. After a connection loss a reader returns one [`Error::LogUnavailable`];
//! called again it waits (bounded) for the reconnection and resumes where it was.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use rideshare_dbaas::log::{LogReader, Record};
use rideshare_dbaas::{Error, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::channel::ChannelGuard;
use super::connection::Link;
use super::OP_TIMEOUT;

/// Unacked deliveries a log reader may hold; a stream consumer needs a prefetch.
const READER_PREFETCH: u16 = 1000;
/// How long a log reader, after reporting a lost connection, waits for the reconnection.
const RESUME_WAIT: Duration = Duration::from_secs(30);
/// The header RabbitMQ puts the stream offset of a delivery in, and the consume argument.
pub(super) const STREAM_OFFSET: &str = "x-stream-offset";

/// The index of a stream delivery: its `x-stream-offset` header + 1.
pub(super) fn stream_index(stream: &str, delivery: &lapin::message::Delivery) -> Result<u64> {
    let offset = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(&ShortString::from(STREAM_OFFSET)))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::Timestamp(n) => Some(*n),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Protocol(format!(
                "delivery from stream {stream} without an {STREAM_OFFSET} header"
            ))
        })?;
    Ok(offset + 1)
}

/// A stream consumer: its channel, its deliveries, and the task acking them.
pub(super) struct StreamSubscription {
    consumer: lapin::Consumer,
    /// Each delivery's acker, in order; the task acks the newest with `multiple`.
    acks: mpsc::UnboundedSender<lapin::Acker>,
    _channel: ChannelGuard,
}

pub(super) async fn subscribe_stream(
    link: &Link,
    stream: &str,
    next: u64,
) -> Result<StreamSubscription> {
    let offset = i64::try_from(next - 1)
        .map_err(|_| Error::Protocol(format!("index {next} out of range")))?;
    let mut arguments = FieldTable::default();
    arguments.insert(STREAM_OFFSET.into(), AMQPValue::LongLongInt(offset));
    let (channel, consumer) = link.subscribe(stream, READER_PREFETCH, arguments).await?;
    let (acks, mut to_ack) = mpsc::unbounded_channel::<lapin::Acker>();
    tokio::spawn(async move {
        while let Some(mut newest) = to_ack.recv().await {
            // Acking the newest with `multiple` settles every earlier one too; one ack in flight
            // at a time keeps them in order (an older multiple-ack after a newer one would name
            // an unknown tag and close the channel).
            while let Ok(newer) = to_ack.try_recv() {
                newest = newer;
            }
            match tokio::time::timeout(OP_TIMEOUT, newest.ack(BasicAckOptions { multiple: true }))
                .await
            {
                Ok(Ok(true)) => {}
                // The channel closed: the reader sees its consumer end.
                Ok(Ok(false)) | Ok(Err(_)) | Err(_) => break,
            }
        }
    });
    Ok(StreamSubscription {
        consumer,
        acks,
        _channel: channel,
    })
}

/// Follows the stream from an index. Dropping it closes its channel.
pub(super) struct RabbitLogReader {
    link: Arc<Link>,
    stream: Arc<str>,
    /// The index of the next entry to hand out.
    next: u64,
    subscription: Option<StreamSubscription>,
    /// A subscription being made again after a lost one; a task, so a cancelled `next()`
    /// loses nothing.
    resuming: Option<JoinHandle<Result<StreamSubscription>>>,
    /// The first index the stream still held when the reader found its next entry dropped by
    /// retention: every later call says so again.
    truncated: Option<u64>,
}

impl RabbitLogReader {
    pub(super) fn new(
        link: Arc<Link>,
        stream: Arc<str>,
        next: u64,
        subscription: StreamSubscription,
    ) -> Self {
        RabbitLogReader {
            link,
            stream,
            next,
            subscription: Some(subscription),
            resuming: None,
            truncated: None,
        }
    }

    /// Subscribes again where the reader was, once the connection is back (bounded). The work
    /// runs as a task kept across calls, so a cancelled wait picks up where it was.
    async fn resume(&mut self) -> Result<()> {
        let resuming = self.resuming.get_or_insert_with(|| {
            let link = Arc::clone(&self.link);
            let stream = Arc::clone(&self.stream);
            let next = self.next;
            tokio::spawn(async move {
                link.wait_live(RESUME_WAIT).await?;
                subscribe_stream(&link, &stream, next).await
            })
        });
        let joined = resuming.await;
        self.resuming = None;
        let subscription = joined.map_err(|e| {
            self.link
                .unavailable(format!("log reader resubscription failed: {e}"))
        })??;
        tracing::info!(stream = %self.stream, index = self.next, "log reader resumed");
        self.subscription = Some(subscription);
        Ok(())
    }

    /// Turns the next delivery into a record: `None` for one below the next index (skipped),
    /// the record for one at it or one above (a segment start's offset, skipped),
    /// [`Error::LogTruncated`] for one further above (retention dropped the entries between),
    /// an error for a lost subscription.
    fn take(
        &mut self,
        delivery: Option<lapin::Result<lapin::message::Delivery>>,
    ) -> Option<Result<Record>> {
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            ended => {
                let why = match ended {
                    Some(Err(e)) => e.to_string(),
                    _ => "stream consumer cancelled".to_owned(),
                };
                self.subscription = None;
                return Some(Err(self.link.unavailable(format!(
                    "reading stream {} at index {}: {why}",
                    self.stream, self.next
                ))));
            }
        };
        if let Some(subscription) = &self.subscription {
            let _ = subscription.acks.send(delivery.acker.clone());
        }
        let index = match stream_index(&self.stream, &delivery) {
            Ok(index) => index,
            Err(e) => return Some(Err(e)),
        };
        if index < self.next {
            // RabbitMQ may start at the beginning of the chunk holding the asked offset (3.10
            // filters those out itself for a numeric offset; nothing says all do).
            return None;
        }
        if index > self.next + 1 {
            // Entries go from a stream only by retention: whole segments from the oldest, and a
            // consumer asked for an offset below the first one kept starts at that one. So a
            // delivery more than one index above the next means the entries from `next` on
            // were dropped (read_from below the start, or resuming after retention passed the
            // reader by): the reader must start again from a snapshot, then read from `index`.
            tracing::info!(stream = %self.stream, wanted = self.next, first = index, "log entries dropped by retention");
            // Nothing more to read: the channel closes.
            self.subscription = None;
            self.truncated = Some(index);
            return Some(Err(Error::LogTruncated { first: index }));
        }
        if index == self.next + 1 {
            // Not an entry missing: RabbitMQ (osiris) starts every segment after the first with
            // a tracking chunk that takes one offset and is never delivered over AMQP (seen on
            // 3.10.8: one hole per segment, 7 in 2,000 entries of 200 bytes with 64 KiB
            // segments). Retention cannot make a hole of one: the first segment it keeps starts
            // with such a chunk, so reading from below it jumps at least two. The index of the
            // tracking chunk is skipped, like an entry below `from`; indexes stay those of the
            // stream's offsets, the same for every reader.
            tracing::debug!(stream = %self.stream, skipped = self.next, "stream offset without an entry (segment start)");
        }
        self.next = index + 1;
        Some(Ok(Record {
            index,
            data: Bytes::from(delivery.data),
        }))
    }
}

#[async_trait]
impl LogReader for RabbitLogReader {
    /// Cancel-safe: a delivery is turned into a record without an await in between, and a
    /// resubscription runs as a task that a later call picks up. Once the next entry is found
    /// dropped by retention, yields [`Error::LogTruncated`] on every call.
    async fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(first) = self.truncated {
                return Some(Err(Error::LogTruncated { first }));
            }
            if self.subscription.is_none() {
                if let Err(e) = self.resume().await {
                    return Some(Err(e));
                }
            }
            let delivery = self.subscription.as_mut()?.consumer.next().await;
            if let Some(record) = self.take(delivery) {
                return Some(record);
            }
        }
    }
}

impl Drop for RabbitLogReader {
    fn drop(&mut self) {
        if let Some(resuming) = self.resuming.take() {
            resuming.abort();
        }
    }
}
