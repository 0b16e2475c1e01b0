//! RabbitMQ behind the DBaaS traits, through `lapin`: [`RabbitBroker`] is the
//! [`Broker`](rideshare_dbaas::broker::Broker) (work queues, reply queues) and [`RabbitLog`] is
//! the [`Log`](rideshare_dbaas::log::Log) (the write log, kept in a RabbitMQ stream). The
//! distributed mode uses them; the conformance suites of `rideshare-dbaas` pin that they behave
//! as the in-memory implementations do.
//!
//! One job per module:
//! - [`connection`]: the one AMQP connection of each broker or log handle (a deadpool-lapin
//!   pool of one), the supervisor that replaces it when it drops, and the queues declared again
//!   on every new connection;
//! - [`channel`]: channels on that connection: a deadpool pool of confirm-mode channels that
//!   publishing and declaring borrow, and the consumer channels that close when dropped;
//! - [`broker`]: the `Broker` impl (queues, consume, ack, request/reply properties);
//! - [`log`]: the `Log` impl (ordered appends, the end probe);
//! - [`log_reader`]: following the stream from an index.
//!
//! What the adapter must not do: hold a lock across an `.await` other than a pooled channel
//! (held for one AMQP call), wait on RabbitMQ without a bound, hand out a log entry twice or
//! with a wrong index, or acknowledge an append or a publish RabbitMQ has not confirmed. While
//! the connection is down every call fails at once with an "unavailable" error
//! ([`Error::BrokerUnavailable`], the log: [`Error::LogUnavailable`]); nothing waits for the
//! reconnection but a log reader resuming after one.

mod broker;
mod channel;
mod connection;
mod log;
mod log_reader;

use std::time::Duration;

use lapin::types::ShortString;
use rideshare_dbaas::{Error, Result};

pub use self::broker::RabbitBroker;
pub use self::log::RabbitLog;

/// How much of the log's stream RabbitMQ keeps on disk. A stream is a list of segment files;
/// RabbitMQ closes a segment at `segment_bytes` and starts the next, and when a segment closes
/// it deletes the oldest ones while the stream's total is over `max_bytes` (never the segment
/// being written). So disk use stays near `max_bytes` plus a segment, and what is dropped goes a
/// whole segment at a time, oldest first: the entries kept are always a suffix of the log. A
/// reader asking for an entry retention dropped gets [`Error::LogTruncated`] and must start
/// from a snapshot.
///
/// The settings are queue arguments, fixed when the stream is created: a stream that already
/// exists keeps its own (see [`RabbitLog::connect_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `x-max-length-bytes`: the size past which the oldest segments are deleted.
    pub max_bytes: u64,
    /// `x-stream-max-segment-size-bytes`: the size of one segment file.
    pub segment_bytes: u64,
}

impl Retention {
    /// 1 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    /// 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

    /// Checked settings: `segment_bytes` > 0 and `max_bytes` >= `segment_bytes` (both fit an
    /// AMQP long-long, a signed 64-bit integer). RabbitMQ may refuse values it finds out of its
    /// own range when the stream is declared.
    pub fn new(max_bytes: u64, segment_bytes: u64) -> std::result::Result<Self, String> {
        if segment_bytes == 0 {
            return Err("the log segment size must be above 0 bytes".into());
        }
        if max_bytes < segment_bytes {
            return Err(format!(
                "the log's maximum size ({max_bytes} bytes) must be at least one segment \
                 ({segment_bytes} bytes)"
            ));
        }
        if i64::try_from(max_bytes).is_err() {
            return Err(format!(
                "the log's maximum size ({max_bytes} bytes) is above {}",
                i64::MAX
            ));
        }
        Ok(Retention {
            max_bytes,
            segment_bytes,
        })
    }
}

/// 1 GiB kept, in segments of 64 MiB.
impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Bound on one AMQP method round trip (declare, qos, consume, channel open, ack), and on
/// waiting for a pooled channel.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a publisher confirm (the log: from the call to the confirm).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Which trait a connection serves: it picks the "unavailable" error variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Broker,
    Log,
}

/// How a queue was declared, so it can be declared the same way after a reconnection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueKind {
    Durable,
    Exclusive,
    /// A stream, declared with this retention if it does not exist yet.
    Stream(Retention),
}

fn short(value: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(value)
        .map_err(|_| Error::Protocol(format!("{what} longer than 255 bytes: {value:.40}...")))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::Retention;

    #[test]
    fn retention_is_checked() {
        assert_eq!(
            Retention::new(1 << 30, 64 << 20),
            Ok(Retention::default()),
            "the defaults: 1 GiB in segments of 64 MiB"
        );
        assert!(Retention::new(64 << 10, 64 << 10).is_ok(), "one segment");
        assert!(Retention::new(1 << 20, 0).is_err(), "empty segments");
        assert!(
            Retention::new(1 << 10, 1 << 20).is_err(),
            "less than a segment"
        );
        assert!(
            Retention::new(u64::MAX, 1 << 20).is_err(),
            "above a long-long"
        );
    }
}
