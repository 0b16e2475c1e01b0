//! `ZkCoordinator`: the [`Coordinator`] on a real ZooKeeper ensemble, through the
//! `zookeeper-client` crate. Workers register and elect through it in distributed mode; its
//! session timeout is the failure-detection time of the whole system.
//!
//! What it maps, and how:
//! - Each [`ZkCoordinator::connect`] opens a new ZooKeeper session; dropping the [`ZkSession`]
//!   closes it (the client sends `CloseSession`), so its ephemeral nodes go at once.
//! - Missing parents of a created node are made persistent (`mkdir -p`, racing creators of the
//!   same parent tolerated). Sequential paths carry ZooKeeper's own 10-digit suffix.
//! - `get_watch` is an exists-watch plus a read, so a watch on an absent node fires when it is
//!   created. `children_watch` on an absent parent returns no children and an exists-watch on
//!   the parent: it fires when the parent is created (possibly before any child exists).
//! - Every watch, and [`Session::lost`], resolves when the session ends (expired or closed), so
//!   no waiter hangs on a dead session. `lost` follows the client's session state: it resolves
//!   on `Expired` (told by the server on reconnection, or concluded by the client itself after
//!   7/5 of the negotiated timeout without hearing from any server), `Closed` or `AuthFailed`.
//! - Errors: `NodeExists`, `NoNode`, `BadVersion` keep their meaning; a terminated session gives
//!   [`Error::SessionExpired`] on every call; connection loss during a call, or no answer within
//!   the call timeout, gives [`Error::CoordinatorUnavailable`]. For `create`, `set` and `delete`
//!   that means "outcome unknown": the request may still be applied once the client
//!   reconnects, as with any ZooKeeper client. Anything else is kept whole in [`Error::Adapter`].
//!
//! Where ZooKeeper differs from the trait's contract it follows ZooKeeper, as the in-memory
//! implementation does: deleting a node with children and children of ephemeral nodes are
//! refused. One difference the in-memory one does not have: ZooKeeper's sequence counter lives
//! in the parent node, so deleting and recreating a parent restarts its suffixes at 0; never
//! delete a parent of sequential nodes that must stay unique.
//!
//! What it must not do: hold a lock across an `.await`, keep a session alive after its
//! `ZkSession` is dropped (nothing else holds the client), or wait on ZooKeeper without a bound.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rideshare_dbaas::coord::{Coordinator, CreateMode, Session, Watch};
use rideshare_dbaas::{Error, Result};
use tokio::sync::watch;
use zookeeper_client as zk;

/// The client crate's result (its own alias is private).
type ZkResult<T> = std::result::Result<T, zk::Error>;

/// How long one call may wait for ZooKeeper unless [`ZkCoordinator::with_call_timeout`] says
/// otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens ZooKeeper sessions. Cloning shares the configuration.
#[derive(Clone)]
pub struct ZkCoordinator {
    connect: Arc<str>,
    session_timeout: Duration,
    call_timeout: Duration,
    /// Set once the chroot of the connect string is known to exist, so it is created once.
    chroot_ready: Arc<AtomicBool>,
}

impl fmt::Debug for ZkCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkCoordinator")
            .field("connect", &self.connect)
            .field("session_timeout", &self.session_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl ZkCoordinator {
    /// A coordinator on the ensemble of `connect` (`host:port[,host:port...][/chroot]`), whose
    /// sessions ask for `session_timeout` (the server clamps it to 2 to 20 ticks).
    ///
    /// A missing chroot is created (persistent) by the first session.
    pub fn new(connect: &str, session_timeout: Duration) -> Self {
        ZkCoordinator {
            connect: Arc::from(connect),
            session_timeout,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            chroot_ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Bounds every call (and opening a session) by `timeout` instead of
    /// [`DEFAULT_CALL_TIMEOUT`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The connect string this coordinator was made with.
    pub fn connect_string(&self) -> &str {
        &self.connect
    }

    /// Opens a session; [`Coordinator::connect`] is this, boxed.
    pub async fn open(&self) -> Result<ZkSession> {
        let mut connector = zk::Client::connector();
        connector.session_timeout(self.session_timeout);
        let client = bounded(
            self.call_timeout,
            "connect",
            &self.connect,
            connector.connect(&self.connect),
        )
        .await?;
        self.ensure_chroot(&client).await?;
        let id = client.session_id().0 as u64;
        let timeout = client.session_timeout();
        tracing::info!(
            session = %client.session_id(),
            timeout_ms = timeout.as_millis() as u64,
            "ZooKeeper session opened"
        );
        let ended = monitor(&client);
        Ok(ZkSession {
            client,
            id,
            ended,
            call_timeout: self.call_timeout,
        })
    }

    /// Creates the connect string's chroot if it is missing: without it every path under it
    /// would fail with `NoNode`, which reads as a bug in the caller rather than in the setup.
    async fn ensure_chroot(&self, client: &zk::Client) -> Result<()> {
        let chroot = client.path().to_owned();
        if chroot == "/" || self.chroot_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        // A clone shares the session; rooted at "/" it can see (and make) the chroot itself.
        let Ok(root) = client.clone().chroot("/") else {
            return Err(Error::CoordinatorUnavailable(format!(
                "cannot address the root of {}",
                self.connect
            )));
        };
        bounded(
            self.call_timeout,
            "create chroot",
            &chroot,
            root.mkdir(&chroot, &persistent()),
        )
        .await?;
        self.chroot_ready.store(true, Ordering::Release);
        Ok(())
    }
}

#[async_trait]
impl Coordinator for ZkCoordinator {
    async fn connect(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.open().await?))
    }
}

/// One ZooKeeper session. Dropping it closes the session (its ephemeral nodes are deleted and
/// other sessions' watches on them fire).
pub struct ZkSession {
    /// The only handle on the session: when it is dropped the client closes the session.
    client: zk::Client,
    id: u64,
    /// Becomes true when the session has ended; if its sender is gone (the runtime that ran
    /// the session shut down), it has ended too.
    ended: watch::Receiver<bool>,
    call_timeout: Duration,
}

impl fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkSession")
            .field("id", &self.client.session_id())
            .field("state", &self.client.state())
            .field("timeout", &self.client.session_timeout())
            .finish()
    }
}

/// Watches the client's session state: logs its changes and flips `ended` on the terminal one.
/// The task holds only the state watcher, never the client, so it does not keep the session
/// open; it ends with the session.
fn monitor(client: &zk::Client) -> watch::Receiver<bool> {
    let (ended_tx, ended) = watch::channel(false);
    let mut states = client.state_watcher();
    let mut state = client.state();
    let session = client.session_id();
    tokio::spawn(async move {
        loop {
            if state.is_terminated() {
                // Closing is how every session ends normally; only expiry is a failure.
                if state == zk::SessionState::Closed {
                    tracing::debug!(%session, %state, "ZooKeeper session closed");
                } else {
                    tracing::warn!(%session, %state, "ZooKeeper session ended");
                }
                ended_tx.send_replace(true);
                return;
            }
            state = states.changed().await;
            match state {
                zk::SessionState::Disconnected => {
                    tracing::warn!(%session, "ZooKeeper connection lost; reconnecting")
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    tracing::info!(%session, %state, "ZooKeeper connection restored")
                }
                _ => {}
            }
        }
    });
    ended
}

impl ZkSession {
    /// The session timeout the server granted (the requested one, clamped to its tick range).
    pub fn session_timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    /// Fails fast once the session has ended, so every later call says so the same way.
    fn check_live(&self) -> Result<()> {
        if self.client.state().is_terminated() || *self.ended.borrow() {
            return Err(Error::SessionExpired);
        }
        Ok(())
    }

    /// A watch future: the client's one-shot watcher, or the end of the session.
    fn watch(&self, watcher: zk::OneshotWatcher) -> Watch {
        let mut ended = self.ended.clone();
        Box::pin(async move {
            // The client delivers the terminal session state to every one-shot watcher, but
            // unwraps a dropped channel (its session task gone with its runtime) with a panic;
            // a waiter should see "session ended" then, not a panic.
            let changed = AssertUnwindSafe(watcher.changed()).catch_unwind();
            tokio::select! {
                biased;
                _ = ended.wait_for(|ended| *ended) => {}
                _ = changed => {}
            }
        })
    }

    async fn create_once(&self, path: &str, data: &[u8], mode: CreateMode) -> ZkResult<String> {
        let options = zk_mode(mode).with_acls(zk::Acls::anyone_all());
        let (_, sequence) = self.client.create(path, data, &options).await?;
        Ok(if mode.is_sequential() {
            // The client formats the server's suffix as ZooKeeper does: 10 digits, zero-padded.
            format!("{path}{sequence}")
        } else {
            path.to_owned()
        })
    }

    async fn create_with_parents(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<String> {
        let parent = parent_of(path);
        // Bounded by the call timeout; a parent deleted again between `mkdir` and `create`
        // only costs another round.
        loop {
            match self.create_once(path, data, mode).await {
                Err(zk::Error::NoNode) if parent != "/" => {}
                other => return other.map_err(|e| zk_error("create", path, e)),
            }
            match self.client.mkdir(parent, &persistent()).await {
                Ok(()) => {}
                // The parent appeared meanwhile (another session made it): create again.
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_error("create parents of", path, e)),
            }
        }
    }

    async fn get_inner(&self, path: &str) -> Result<Option<(Bytes, i32)>> {
        match self.client.get_data(path).await {
            Ok((data, stat)) => Ok(Some((Bytes::from(data), stat.version))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_error("get", path, e)),
        }
    }

    async fn get_watch_inner(&self, path: &str) -> Result<(Option<(Bytes, i32)>, Watch)> {
        // Both requests leave now, in this order, and the server answers a session's requests in
        // order: the watch is set before the read, so no change after the read is missed. An
        // exists-watch (unlike a data watch) is also set on an absent node.
        let exists = self.client.check_and_watch_stat(path);
        let read = self.client.get_data(path);
        let (_, watcher) = exists.await.map_err(|e| zk_error("watch", path, e))?;
        let watch = self.watch(watcher);
        let now = match read.await {
            Ok((data, stat)) => Some((Bytes::from(data), stat.version)),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(zk_error("get", path, e)),
        };
        Ok((now, watch))
    }

    async fn children_inner(&self, path: &str) -> Result<Vec<String>> {
        match self.client.list_children(path).await {
            Ok(mut names) => {
                names.sort_unstable();
                Ok(names)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(zk_error("children", path, e)),
        }
    }

    async fn children_watch_inner(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        loop {
            match self.client.list_and_watch_children(path).await {
                Ok((mut names, watcher)) => {
                    names.sort_unstable();
                    return Ok((names, self.watch(watcher)));
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(zk_error("watch children", path, e)),
            }
            // ZooKeeper sets no child watch on an absent node: watch for the node to appear.
            let (stat, watcher) = self
                .client
                .check_and_watch_stat(path)
                .await
                .map_err(|e| zk_error("watch", path, e))?;
            if stat.is_none() {
                return Ok((Vec::new(), self.watch(watcher)));
            }
            // It appeared in between: list again, this time with a child watch (bounded by
            // the call timeout).
        }
    }

    /// Runs one call: refused at once on an ended session, bounded by the call timeout.
    async fn call<T>(
        &self,
        op: &'static str,
        path: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check_live()?;
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(op, path)),
        }
    }

    fn timed_out(&self, op: &str, path: &str) -> Error {
        // A session that ended while we waited says so; otherwise ZooKeeper is unreachable.
        if self.check_live().is_err() {
            return Error::SessionExpired;
        }
        Error::CoordinatorUnavailable(format!(
            "ZooKeeper did not answer {op} {path} within {} ms",
            self.call_timeout.as_millis()
        ))
    }
}

#[async_trait]
impl Session for ZkSession {
    fn id(&self) -> u64 {
        self.id
    }

    async fn create(&self, path: &str, data: Bytes, mode: CreateMode) -> Result<String> {
        self.check_live()?;
        if path == "/" {
            // As the in-memory coordinator says: the root always exists.
            return Err(Error::NodeExists(path.to_owned()));
        }
        self.call("create", path, self.create_with_parents(path, &data, mode))
            .await
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, i32)>> {
        self.call("get", path, self.get_inner(path)).await
    }

    async fn get_watch(&self, path: &str) -> Result<(Option<(Bytes, i32)>, Watch)> {
        self.call("get_watch", path, self.get_watch_inner(path))
            .await
    }

    async fn set(&self, path: &str, data: Bytes, version: Option<i32>) -> Result<()> {
        let fut = async {
            self.client
                .set_data(path, &data, version)
                .await
                .map(drop)
                .map_err(|e| zk_error("set", path, e))
        };
        self.call("set", path, fut).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let fut = async {
            self.client
                .delete(path, None)
                .await
                .map_err(|e| zk_error("delete", path, e))
        };
        self.call("delete", path, fut).await
    }

    async fn delete_at(&self, path: &str, version: i32) -> Result<()> {
        let fut = async {
            self.client
                .delete(path, Some(version))
                .await
                .map_err(|e| zk_error("delete", path, e))
        };
        self.call("delete", path, fut).await
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        self.call("children", path, self.children_inner(path)).await
    }

    async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        self.call("children_watch", path, self.children_watch_inner(path))
            .await
    }

    fn lost(&self) -> Watch {
        let mut ended = self.ended.clone();
        let states = self.client.state_watcher();
        Box::pin(async move {
            // The client's state turns terminal before any call fails with it; the monitor task
            // may not have run yet, so look at the state itself first.
            if states.peek_state().is_terminated() {
                return;
            }
            // An error means the monitor task is gone, which happens only with the session.
            let _ = ended.wait_for(|ended| *ended).await;
        })
    }
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn zk_mode(mode: CreateMode) -> zk::CreateMode {
    match mode {
        CreateMode::Persistent => zk::CreateMode::Persistent,
        CreateMode::PersistentSequential => zk::CreateMode::PersistentSequential,
        CreateMode::Ephemeral => zk::CreateMode::Ephemeral,
        CreateMode::EphemeralSequential => zk::CreateMode::EphemeralSequential,
    }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Waits for a client future no longer than `timeout`, mapping its error.
async fn bounded<T>(
    timeout: Duration,
    op: &'static str,
    path: &str,
    fut: impl Future<Output = ZkResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(|e| zk_error(op, path, e)),
        Err(_) => Err(Error::CoordinatorUnavailable(format!(
            "ZooKeeper did not answer {op} {path} within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Maps a client error to the crate's, naming the operation and path.
fn zk_error(op: &str, path: &str, e: zk::Error) -> Error {
    use zk::Error as Zk;
    match e {
        Zk::NodeExists => Error::NodeExists(path.to_owned()),
        Zk::NoNode => Error::NoNode(path.to_owned()),
        Zk::BadVersion => Error::BadVersion(path.to_owned()),
        // The session is gone for good: its ephemeral nodes are (or will shortly be) deleted.
        Zk::SessionExpired | Zk::SessionMoved | Zk::ClientClosed => Error::SessionExpired,
        // Retryable: no server answered (now, or within the session timeout when connecting).
        // A request in flight when the connection broke fails with the reason it broke, which
        // the client reports as a custom error ("no response from connection in N ms", an I/O
        // error); the session itself lives on while the client reconnects.
        Zk::ConnectionLoss | Zk::Timeout | Zk::NoHosts | Zk::Custom(_) => {
            Error::CoordinatorUnavailable(format!("ZooKeeper {op} {path}: {e}"))
        }
        other => Error::adapter(format!("ZooKeeper {op} {path}"), other),
    }
}
