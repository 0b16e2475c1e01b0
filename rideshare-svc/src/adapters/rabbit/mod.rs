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
    Stream,
}

fn short(value: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(value)
        .map_err(|_| Error::Protocol(format!("{what} longer than 255 bytes: {value:.40}...")))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
