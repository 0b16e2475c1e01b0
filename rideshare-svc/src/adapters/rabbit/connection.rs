//! The one AMQP connection of a [`RabbitBroker`](super::RabbitBroker) or a
//! [`RabbitLog`](super::RabbitLog), and keeping it.
//!
//! A link is given one URL or several, comma-separated: the nodes of one RabbitMQ cluster
//! ([`Servers`]). It connects to the first that answers, in the order given; when that
//! connection is lost, the next connection tries the following node first, and so round the
//! list, each attempt bounded by [`CONNECT_TIMEOUT`]. So a node killed under a link is left
//! for another at the first reconnection, and a node that is down costs a refused TCP
//! connection (or a timeout) per round, never more.
//!
//! The connection is a deadpool pool of one: one, because an exclusive reply queue is
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

use std::sync::atomic::{AtomicUsize, Ordering};

use backon::{ExponentialBuilder, Retryable};
use deadpool::managed::{self, Hook, HookError, Metrics, PoolError, RecycleResult, TimeoutType};
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

/// The nodes a link may connect to: the URLs of one RabbitMQ cluster, in the order given.
pub(super) struct Servers {
    /// Each node's URL, with the default heartbeat added where it names none.
    urls: Vec<String>,
    /// `amqp://host:port/vhost` of each, without credentials, for messages.
    shown: Vec<String>,
    /// The node the live (or last) connection is to.
    current: AtomicUsize,
    /// The node the next connection tries first: the one after the last connected to.
    next: AtomicUsize,
}

impl Servers {
    /// Parses `urls`, one AMQP URL or several separated by commas (a password holding a comma
    /// must be percent-encoded, `%2C`).
    pub(super) fn parse(urls: &str) -> std::result::Result<Servers, String> {
        let mut parsed = Servers {
            urls: Vec::new(),
            shown: Vec::new(),
            current: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        };
        for url in urls.split(',').map(str::trim) {
            if url.is_empty() {
                return Err("an empty entry in the comma-separated list of AMQP URLs".into());
            }
            let uri: AMQPUri = url
                .parse()
                .map_err(|e: String| format!("bad AMQP URL: {e}"))?;
            parsed.shown.push(format!(
                "amqp://{}:{}/{}",
                uri.authority.host, uri.authority.port, uri.vhost
            ));
            parsed.urls.push(with_default_heartbeat(url, &uri));
        }
        Ok(parsed)
    }

    /// How many nodes were given.
    pub(super) fn len(&self) -> usize {
        self.urls.len()
    }

    /// The node of the live (or last) connection, without credentials.
    fn current(&self) -> &str {
        &self.shown[self.current.load(Ordering::Relaxed) % self.shown.len()]
    }
}

/// Opens a link's connections, trying its nodes in turn (see the module doc).
pub(super) struct Connector {
    servers: Arc<Servers>,
    name: &'static str,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("servers", &self.servers.shown)
            .finish()
    }
}

impl managed::Manager for Connector {
    type Type = lapin::Connection;
    /// Why each node refused, for the "unavailable" error.
    type Error = String;

    async fn create(&self) -> std::result::Result<lapin::Connection, String> {
        let servers = &self.servers;
        let first = servers.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..servers.len() {
            let i = (first + k) % servers.len();
            let properties = ConnectionProperties::default().with_connection_name(self.name.into());
            let connecting = lapin::Connection::connect(&servers.urls[i], properties);
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => {
                    servers.current.store(i, Ordering::Relaxed);
                    servers
                        .next
                        .store((i + 1) % servers.len(), Ordering::Relaxed);
                    if k > 0 || servers.len() > 1 {
                        tracing::info!(server = %servers.shown[i], name = self.name, "connected to RabbitMQ");
                    }
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", servers.shown[i])),
                Err(_) => failures.push(format!(
                    "{}: no answer within {} ms",
                    servers.shown[i],
                    CONNECT_TIMEOUT.as_millis()
                )),
            }
        }
        Err(failures.join("; "))
    }

    async fn recycle(&self, conn: &mut lapin::Connection, _: &Metrics) -> RecycleResult<String> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(managed::RecycleError::message("connection lost"))
        }
    }
}

/// A link's connection pool (of one).
pub(super) type ConnectionPool = managed::Pool<Connector>;

/// What every part of a link shares: which servers, whether it is up, what was declared on it,
/// and how its failures read.
pub(super) struct Endpoint {
    side: Side,
    /// The nodes, and which one the connection is to (for messages).
    servers: Arc<Servers>,
    /// The live connection's status, published by whoever connected it; `None` while the
    /// supervisor reconnects. A `watch` so a resuming log reader can wait for the next one.
    live: watch::Sender<Option<ConnectionStatus>>,
    /// Queues declared through this link, declared again on every new connection.
    topology: parking_lot::Mutex<BTreeMap<String, QueueKind>>,
}

impl Endpoint {
    pub(super) fn unavailable(&self, why: impl fmt::Display) -> Error {
        let why = format!("RabbitMQ at {}: {why}", self.servers.current());
        match self.side {
            Side::Broker => Error::BrokerUnavailable(why),
            Side::Log => Error::LogUnavailable(why),
        }
    }

    /// The node the connection is to, without credentials, while it is up.
    pub(super) fn connected_to(&self) -> Option<String> {
        self.is_connected()
            .then(|| self.servers.current().to_owned())
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
            Error::adapter(
                format!("{context} (RabbitMQ at {})", self.servers.current()),
                e,
            )
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
                if self.servers.len() > 1 {
                    // Given the nodes of a cluster: a replica of the stream on each, so a
                    // confirm means a majority of them has the entry.
                    arguments.insert(
                        INITIAL_CLUSTER_SIZE.into(),
                        AMQPValue::LongInt(i32::try_from(self.servers.len()).unwrap_or(i32::MAX)),
                    );
                }
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
/// The stream argument that sets on how many nodes it is replicated (leader included), fixed
/// when it is created; set to the number of nodes the link is given when that is more than one.
const INITIAL_CLUSTER_SIZE: &str = "x-initial-cluster-size";

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
            .field("server", &self.servers.current())
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// One AMQP connection, replaced by the supervisor when it drops, and the channel pool on it.
#[derive(Debug)]
pub(super) struct Link {
    endpoint: Arc<Endpoint>,
    connections: ConnectionPool,
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
        let servers = Arc::new(Servers::parse(url).map_err(unavailable)?);
        let endpoint = Arc::new(Endpoint {
            side,
            servers: Arc::clone(&servers),
            live: watch::channel(None).0,
            topology: parking_lot::Mutex::new(BTreeMap::new()),
        });
        let hook_endpoint = Arc::clone(&endpoint);
        let name = match side {
            Side::Broker => "rideshare broker",
            Side::Log => "rideshare log",
        };
        // Every node tried once, each within CONNECT_TIMEOUT.
        let connect_all = CONNECT_TIMEOUT * u32::try_from(servers.len()).unwrap_or(u32::MAX);
        let connections = managed::Pool::builder(Connector { servers, name })
            .max_size(1)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(connect_all + Duration::from_secs(1)))
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
    connections: &ConnectionPool,
    endpoint: &Endpoint,
) -> Result<managed::Object<Connector>> {
    connections.get().await.map_err(|e| match e {
        PoolError::Backend(e) => endpoint.unavailable(format!("cannot connect: {e}")),
        PoolError::Timeout(TimeoutType::Create) => endpoint.unavailable(format!(
            "cannot connect to any of {} nodes in time",
            endpoint.servers.len()
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
                tracing::warn!(server = %link.servers.current(), side = ?link.side, "RabbitMQ connection lost; reconnecting");
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
                tracing::info!(server = %link.servers.current(), side = ?link.side, "RabbitMQ connection restored");
            }
            _ => return,
        }
    }
}
