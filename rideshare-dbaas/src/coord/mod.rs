//! `Coordinator`: sessions, ephemeral and sequential nodes, one-shot watches (ZooKeeper's model).
//!
//! To ensure correctness a `Coordinator` must:
//! - delete a session's ephemeral nodes when the session ends (closed, expired, or its holder
//!   dead for longer than the session timeout), and fire the watches on them;
//! - give sequential nodes under one parent strictly increasing suffixes, never reused;
//! - make `create` atomic: of two creates of one path, one fails with `NodeExists`;
//! - fire each watch at most once, after the change it watches.
//!
//! Paths are absolute, `/`-separated, without a trailing slash.

pub mod mem;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    Persistent,
    PersistentSequential,
    Ephemeral,
    EphemeralSequential,
}

impl CreateMode {
    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential | CreateMode::EphemeralSequential
        )
    }

    pub fn is_ephemeral(self) -> bool {
        matches!(
            self,
            CreateMode::Ephemeral | CreateMode::EphemeralSequential
        )
    }
}

/// Resolves once when the watched thing changes (or the session ends).
pub type Watch = BoxFuture<'static, ()>;

/// One session with the coordinator. Dropping it closes the session.
#[async_trait]
pub trait Session: Send + Sync {
    /// The session's id (ZooKeeper's session id).
    fn id(&self) -> u64;
    /// Creates a node; for sequential modes the returned path carries the 10-digit suffix.
    /// Missing parents are created as persistent nodes.
    async fn create(&self, path: &str, data: Bytes, mode: CreateMode) -> Result<String>;
    /// Data and version of a node, if it exists.
    async fn get(&self, path: &str) -> Result<Option<(Bytes, i32)>>;
    /// Like `get`, plus a watch that fires when the node is created, changed or deleted.
    async fn get_watch(&self, path: &str) -> Result<(Option<(Bytes, i32)>, Watch)>;
    /// Replaces a node's data; with `version`, only if the node is still at that version.
    async fn set(&self, path: &str, data: Bytes, version: Option<i32>) -> Result<()>;
    /// Deletes a node (any session's); `NoNode` if absent.
    async fn delete(&self, path: &str) -> Result<()>;
    /// Deletes a node only if it is still at `version` (`BadVersion` otherwise, `NoNode` if
    /// absent): a compare-and-delete, as ZooKeeper's delete with a version.
    async fn delete_at(&self, path: &str, version: i32) -> Result<()>;
    /// Child names (not paths), sorted; empty if the node is absent.
    async fn children(&self, path: &str) -> Result<Vec<String>>;
    /// Like `children`, plus a watch that fires when a child is added or removed.
    async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)>;
    /// Resolves when the session has ended (expired or closed): the holder is then not a
    /// member, and not a master, any more.
    fn lost(&self) -> Watch;
}

/// Opens sessions.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    async fn connect(&self) -> Result<Box<dyn Session>>;
}
