//! The one AMQP connection of a [`RabbitBroker`](super::RabbitBroker) or a
//! [`RabbitLog`](super::RabbitLog), and keeping it.
//!
//! The connection is a deadpool-lapin pool of one: one, because an exclusive reply queue is
//! only usable on the connection that declared it. A pool's `post_create` hook declares again
//! every queue declared through the link, so durable queues come back if the server lost them
//! and exclusive reply queues, which die with their connection, are recreated before anyone
//! uses the new connection. A supervisor task watches the live connection; when it drops, the
//! task marks the link down (every call then fails at once with an "unavailable" error) and has
//! the pool connect again, with exponential backoff (100 ms doubling to 5 s, through `backon`).
//! Consumers on the dead connection end (`next()` gives `None`): their owners subscribe again.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Weak};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use deadpool_lapin::{Hook, HookError, PoolError, Runtime, TimeoutType};
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, ConnectionProperties, ConnectionStatus};
use rideshare_dbaas::{Error, Result};
use tokio::sync::watch;

use super::channel::{self, ChannelPool};
use super::{millis, short, QueueKind, Side, OP_TIMEOUT};

/// Bound on one connection attempt (TCP and the AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnection delay; it doubles after each failed attempt, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the connection's state.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Heartbeat asked for when the URL does not say: a peer that vanished without closing the
/// socket is noticed after about two of these, not RabbitMQ's default 60 s.
const DEFAULT_HEARTBEAT_S: u16 = 10;
/// AMQP reply code for a normal close.
pub(super) const REPLY_SUCCESS: u16 = 200;

/// What every part of a link shares: which server, whether it is up, what was declared on it,
/// and how its failures read.
pub(super) struct Endpoint {
    side: Side,
    /// `amqp://host:port/vhost`, without credentials, for messages.
    shown: String,
    /// The live connection's status, published by whoever connected it; `None` while the
    /// supervisor reconnects. A `watch` so a resuming log reader can wait for the next one.
    live: watch::Sender<Option<ConnectionStatus>>,
    /// Queues declared through this link, declared again on every new connection.
    topology: parking_lot::Mutex<BTreeMap<String, QueueKind>>,
}

impl Endpoint {
    pub(super) fn unavailable(&self, why: impl fmt::Display) -> Error {
        let why = format!("RabbitMQ at {}: {why}", self.shown);
        match self.side {
            Side::Broker => Error::BrokerUnavailable(why),
            Side::Log => Error::LogUnavailable(why),
        }
    }

    pub(super) fn is_connected(&self) -> bool {
        self.live.borrow().as_ref().is_some_and(|s| s.connected())
    }

    /// Succeeds while the connection is up; otherwise fails at once, without waiting for the
    /// reconnection.
    pub(super) fn ensure_live(&self) -> Result<()> {
        match &*self.live.borrow() {
            Some(status) if status.connected() => Ok(()),
            Some(_) => Err(self.unavailable("connection lost, reconnecting")),
            None => Err(self.unavailable("not connected, reconnecting")),
        }
    }

    /// Waits (bounded) until the connection is up.
    pub(super) async fn wait_live(&self, limit: Duration) -> Result<()> {
        let mut rx = self.live.subscribe();
        let waited = tokio::time::timeout(
            limit,
            rx.wait_for(|s| s.as_ref().is_some_and(|s| s.connected())),
        )
        .await
        .map(|waited| waited.is_ok());
        match waited {
            Ok(true) => self.ensure_live(),
            Ok(false) => Err(self.unavailable("connection closed")),
            Err(_) => {
                Err(self.unavailable(format!("not reconnected within {} ms", limit.as_millis())))
            }
        }
    }

    /// Turns a lapin error into the crate's: a lost connection is "unavailable", a missing
    /// queue is [`Error::QueueClosed`] (the log: unavailable), anything else is kept whole.
    pub(super) fn fail(&self, context: impl fmt::Display, queue: &str, e: lapin::Error) -> Error {
        if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) {
                return match self.side {
                    Side::Broker => Error::QueueClosed(queue.to_owned()),
                    Side::Log => self.unavailable(format!("{context}: {e}")),
                };
            }
        }
        let connection_gone = matches!(
            e.kind(),
            lapin::ErrorKind::IOError(_)
                | lapin::ErrorKind::InvalidConnectionState(_)
                | lapin::ErrorKind::MissingHeartbeatError
                | lapin::ErrorKind::RuntimeShutdownError(_)
        );
        if connection_gone || !self.is_connected() {
            self.unavailable(format!("{context}: {e}"))
        } else {
            Error::adapter(format!("{context} (RabbitMQ at {})", self.shown), e)
        }
    }

    /// Runs one AMQP call within [`OP_TIMEOUT`], mapping its error.
    pub(super) async fn bounded<T>(
        &self,
        what: &'static str,
        queue: &str,
        call: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.fail(format_args!("{what} {queue}"), queue, e)),
            Err(_) => Err(Error::Timeout(what, millis(OP_TIMEOUT))),
        }
    }

    /// Declares `queue` on `channel` the way `kind` says. A stream is declared with its
    /// retention arguments; if it exists already with others (or none), RabbitMQ refuses with
    /// PRECONDITION_FAILED, which closes `channel`, and this answers
    /// [`Declared::Inequivalent`]: the caller goes on with [`Endpoint::keep_existing`] on
    /// another channel.
    pub(super) async fn declare_on(
        &self,
        channel: &Channel,
        queue: &str,
        kind: QueueKind,
    ) -> Result<Declared> {
        let name = short(queue, "queue name")?;
        let mut arguments = FieldTable::default();
        let options = match kind {
            QueueKind::Durable => QueueDeclareOptions::durable(),
            QueueKind::Exclusive => QueueDeclareOptions::exclusive().auto_delete(),
            QueueKind::Stream(retention) => {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("stream".into()),
                );
                arguments.insert(
                    MAX_LENGTH_BYTES.into(),
                    AMQPValue::LongLongInt(long_long(retention.max_bytes)),
                );
                arguments.insert(
                    MAX_SEGMENT_SIZE_BYTES.into(),
                    AMQPValue::LongLongInt(long_long(retention.segment_bytes)),
                );
                QueueDeclareOptions::durable()
            }
        };
        let declared =
            tokio::time::timeout(OP_TIMEOUT, channel.queue_declare(name, options, arguments)).await;
        match declared {
            Ok(Ok(_)) => Ok(Declared::Done),
            Ok(Err(e)) => match (kind, inequivalent_arguments(&e)) {
                (QueueKind::Stream(_), Some(why)) => Ok(Declared::Inequivalent(why)),
                _ => Err(self.fail(format_args!("declare {queue}"), queue, e)),
            },
            Err(_) => Err(Error::Timeout("declare", millis(OP_TIMEOUT))),
        }
    }

    /// After [`Declared::Inequivalent`]: keeps the stream as it is (RabbitMQ fixes a stream's
    /// arguments when it creates it; a policy can change them later) and checks, with a passive
    /// declare on `channel` (not the one the refusal closed), that it is still there.
    pub(super) async fn keep_existing(
        &self,
        channel: &Channel,
        queue: &str,
        kind: QueueKind,
        why: &str,
    ) -> Result<()> {
        if let QueueKind::Stream(retention) = kind {
            tracing::warn!(
                stream = queue,
                max_bytes = retention.max_bytes,
                segment_bytes = retention.segment_bytes,
                rabbitmq = why,
                "the log stream exists with other retention arguments and keeps its own; \
                 to change them, set a RabbitMQ policy on it"
            );
        }
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.bounded(
            "passive declare",
            queue,
            channel.queue_declare(short(queue, "queue name")?, passive, FieldTable::default()),
        )
        .await?;
        Ok(())
    }

    /// The `post_create` hook's work: declares again everything declared through this link on
    /// a fresh connection, then publishes it as the live one.
    async fn set_up(&self, conn: &lapin::Connection) {
        let topology: Vec<(String, QueueKind)> = self
            .topology
            .lock()
            .iter()
            .map(|(name, kind)| (name.clone(), *kind))
            .collect();
        let mut channel: Option<Channel> = None;
        for (queue, kind) in topology {
            // Best effort: a queue that cannot be declared now fails its own calls later, and the
            // others must not stay unusable because of it (a failed declare closes its channel,
            // so the next one opens another).
            let declared = async {
                let open = self.declaring_channel(&mut channel, conn, &queue).await?;
                if let Declared::Inequivalent(why) = self.declare_on(&open, &queue, kind).await? {
                    // The refusal closed that channel.
                    channel = None;
                    let open = self.declaring_channel(&mut channel, conn, &queue).await?;
                    self.keep_existing(&open, &queue, kind, &why).await?;
                }
                Ok::<_, Error>(())
            };
            if let Err(e) = declared.await {
                tracing::warn!(queue, ?kind, error = %e, "could not declare a queue again after reconnecting");
            }
        }
        if let Some(channel) = channel.filter(|c| c.status().connected()) {
            let closing = channel.close(REPLY_SUCCESS, ShortString::from("declared"));
            if let Ok(Err(e)) = tokio::time::timeout(OP_TIMEOUT, closing).await {
                tracing::debug!(error = %e, "closing the declaring channel failed");
            }
        }
        self.live.send_replace(Some(conn.status().clone()));
    }

    /// The channel `set_up` declares on: the one it has if still open, or a new one on `conn`.
    async fn declaring_channel(
        &self,
        channel: &mut Option<Channel>,
        conn: &lapin::Connection,
        queue: &str,
    ) -> Result<Channel> {
        if let Some(open) = channel.as_ref().filter(|c| c.status().connected()) {
            return Ok(open.clone());
        }
        let fresh = self
            .bounded("open channel to declare", queue, conn.create_channel())
            .await?;
        Ok(channel.insert(fresh).clone())
    }
}

/// What a declare came to.
#[derive(Debug)]
pub(super) enum Declared {
    /// The queue is there as asked (created, or found with the same arguments).
    Done,
    /// The stream exists with other arguments than asked (retention set otherwise, or not at
    /// all): RabbitMQ's refusal ("inequivalent arg ..."), which also closed the channel.
    Inequivalent(String),
}

/// The stream argument that bounds its size: RabbitMQ deletes the oldest segments past it.
const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
/// The stream argument that sets the size of a segment file.
const MAX_SEGMENT_SIZE_BYTES: &str = "x-stream-max-segment-size-bytes";

/// `value` as an AMQP long-long (signed); [`Retention::new`](super::Retention::new) keeps it in
/// range, anything above is sent as the largest.
fn long_long(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// RabbitMQ's reason if `e` is its refusal to declare a queue that exists with other optional
/// arguments: PRECONDITION_FAILED, "inequivalent arg '<name>' for queue ...". Not when the
/// argument is the queue type or one of the flags (durable, exclusive, auto_delete): a queue of
/// another kind under the log's name is not a stream to keep. Nor "invalid arg" (a value
/// RabbitMQ does not accept), also PRECONDITION_FAILED.
fn inequivalent_arguments(e: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return None;
    };
    if !matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    ) {
        return None;
    }
    let why = amqp.get_message().as_str();
    let not_optional = [
        "'x-queue-type'",
        "'durable'",
        "'exclusive'",
        "'auto_delete'",
    ];
    (why.contains("inequivalent arg") && !not_optional.iter().any(|arg| why.contains(arg)))
        .then(|| why.to_owned())
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("side", &self.side)
            .field("server", &self.shown)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// One AMQP connection, replaced by the supervisor when it drops, and the channel pool on it.
#[derive(Debug)]
pub(super) struct Link {
    endpoint: Arc<Endpoint>,
    connections: deadpool_lapin::Pool,
    channels: ChannelPool,
}

/// A link is its endpoint plus the pools: the endpoint's error mapping and state read through.
impl Deref for Link {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Link {
    /// Connects once (failing if RabbitMQ is not there) and starts the supervisor. `channels`
    /// bounds the pooled channels (the log keeps one, which orders its appends).
    pub(super) async fn connect(side: Side, url: &str, channels: usize) -> Result<Arc<Link>> {
        let unavailable = |what: String| match side {
            Side::Broker => Error::BrokerUnavailable(what),
            Side::Log => Error::LogUnavailable(what),
        };
        let uri: AMQPUri = url
            .parse()
            .map_err(|e: String| unavailable(format!("bad AMQP URL: {e}")))?;
        let endpoint = Arc::new(Endpoint {
            side,
            shown: format!(
                "amqp://{}:{}/{}",
                uri.authority.host, uri.authority.port, uri.vhost
            ),
            live: watch::channel(None).0,
            topology: parking_lot::Mutex::new(BTreeMap::new()),
        });
        let hook_endpoint = Arc::clone(&endpoint);
        let name = match side {
            Side::Broker => "rideshare broker",
            Side::Log => "rideshare log",
        };
        let config = deadpool_lapin::Config {
            url: Some(with_default_heartbeat(url, &uri)),
            pool: None,
        };
        let connections = config
            .builder(
                move || ConnectionProperties::default().with_connection_name(name.into()),
                Runtime::Tokio1,
            )
            .map_err(|e| unavailable(format!("connection pool: {e}")))?
            .max_size(1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .post_create(Hook::async_fn(move |conn, _| {
                let endpoint = Arc::clone(&hook_endpoint);
                Box::pin(async move {
                    endpoint.set_up(conn).await;
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| unavailable(format!("connection pool: {e}")))?;
        let channels = channel::pool(connections.clone(), Arc::clone(&endpoint), channels)?;
        let link = Arc::new(Link {
            endpoint,
            connections,
            channels,
        });
        link.reconnect().await?;
        tokio::spawn(supervise(Arc::downgrade(&link)));
        Ok(link)
    }

    pub(super) fn channels(&self) -> &ChannelPool {
        &self.channels
    }

    /// Opens a channel of its own (a consumer's) on the live connection.
    pub(super) async fn open_channel(&self, queue: &str) -> Result<Channel> {
        self.ensure_live()?;
        let conn = connection(&self.connections, &self.endpoint).await?;
        self.bounded("open channel for", queue, conn.create_channel())
            .await
    }

    /// Declares a queue on the live connection and remembers it for reconnections. A stream
    /// that exists with other arguments is kept as it is (see [`Endpoint::keep_existing`]).
    pub(super) async fn declare(&self, queue: &str, kind: QueueKind) -> Result<()> {
        self.ensure_live()?;
        let channel = channel::get(&self.channels, &self.endpoint).await?;
        if let Declared::Inequivalent(why) = self.declare_on(&channel, queue, kind).await? {
            // The refusal closed that channel: out of the pool with it, and on to another one.
            drop(deadpool::managed::Object::take(channel));
            let channel = channel::get(&self.channels, &self.endpoint).await?;
            self.keep_existing(&channel, queue, kind, &why).await?;
        }
        self.topology.lock().insert(queue.to_owned(), kind);
        Ok(())
    }

    /// Has the pool hand out a live connection (connecting, and setting it up, if the one it
    /// held is dead) and publishes it as the live one.
    async fn reconnect(&self) -> Result<()> {
        let conn = connection(&self.connections, &self.endpoint).await?;
        // Set already if this call created it; not if a caller's call did in the meantime.
        self.live.send_replace(Some(conn.status().clone()));
        Ok(())
    }
}

/// The pooled connection, its failures mapped to "unavailable".
pub(super) async fn connection(
    connections: &deadpool_lapin::Pool,
    endpoint: &Endpoint,
) -> Result<deadpool_lapin::Object> {
    connections.get().await.map_err(|e| match e {
        PoolError::Backend(e) => endpoint.unavailable(format!("cannot connect: {e}")),
        PoolError::Timeout(TimeoutType::Create) => endpoint.unavailable(format!(
            "cannot connect within {} ms",
            CONNECT_TIMEOUT.as_millis()
        )),
        PoolError::Timeout(_) => Error::Timeout("connection pool", millis(OP_TIMEOUT)),
        PoolError::PostCreateHook(HookError::Backend(e)) => {
            endpoint.unavailable(format!("setting up the connection: {e}"))
        }
        other => endpoint.unavailable(other),
    })
}

/// `url` with `heartbeat` set to [`DEFAULT_HEARTBEAT_S`] unless it says otherwise.
fn with_default_heartbeat(url: &str, uri: &AMQPUri) -> String {
    if uri.query.heartbeat.is_some() {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={DEFAULT_HEARTBEAT_S}")
}

/// Watches the link's connection; when it drops, marks the link down and reconnects with
/// bounded exponential backoff. Ends when the link is gone (every handle on it dropped).
async fn supervise(link: Weak<Link>) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(BACKOFF_START)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times();
    loop {
        // Wait until the live connection dies.
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(link) = link.upgrade() else { return };
            if !link.is_connected() {
                link.live.send_replace(None);
                tracing::warn!(server = %link.shown, side = ?link.side, "RabbitMQ connection lost; reconnecting");
                break;
            }
        }
        // `None`: the link is gone, nothing to retry for.
        let attempt = || async {
            match link.upgrade() {
                Some(link) => link.reconnect().await.map_err(Some),
                None => Err(None),
            }
        };
        let restored = attempt
            .retry(backoff)
            .when(Option::is_some)
            .notify(|e, retry_in| {
                if let Some(e) = e {
                    tracing::debug!(error = %e, ?retry_in, "RabbitMQ reconnection failed");
                }
            })
            .await;
        match (restored, link.upgrade()) {
            (Ok(()), Some(link)) => {
                tracing::info!(server = %link.shown, side = ?link.side, "RabbitMQ connection restored");
            }
            _ => return,
        }
    }
}
