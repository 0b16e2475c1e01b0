//! `MemCoordinator`: the in-memory [`Coordinator`] (ZooKeeper's model) used by `rideshare up` and
//! by tests, with fault controls.
//!
//! A tree of nodes with data and a version, sessions with ids, ephemeral nodes owned by their
//! session, per-parent sequence counters and one-shot watches. Everything is in `BTreeMap`s behind
//! one std mutex (never held across an `.await`), so runs are deterministic.
//!
//! Where ZooKeeper differs from the trait it follows ZooKeeper: deleting a node with children
//! fails ([`MemCoordError::NotEmpty`]), an ephemeral node cannot have children
//! ([`MemCoordError::EphemeralParent`]). Sequence counters are kept per parent path for the
//! coordinator's life, so a suffix is never reused even if the parent is deleted and recreated.
//!
//! Sessions do not time out by themselves (an in-process holder cannot go silent); a test ends
//! one with [`MemCoordinator::expire`]. Fault controls: `expire`, [`MemCoordinator::sessions`],
//! [`MemCoordinator::set_unavailable`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{Coordinator, CreateMode, Session, Watch};
use crate::error::{Error, Result};

/// What the in-memory coordinator refuses that the crate's [`Error`] has no variant for; it comes
/// wrapped in [`Error::Adapter`], as a real adapter's own error would.
#[derive(Debug, thiserror::Error)]
pub enum MemCoordError {
    #[error("invalid path {0:?}: paths are absolute, /-separated, without a trailing slash")]
    BadPath(String),
    #[error("node {0} has children")]
    NotEmpty(String),
    #[error("node {0} is ephemeral and cannot have children")]
    EphemeralParent(String),
}

impl From<MemCoordError> for Error {
    fn from(e: MemCoordError) -> Self {
        Error::adapter("in-memory coordinator", e)
    }
}

/// An in-memory coordinator. Cloning gives another handle on the same tree and sessions.
#[derive(Clone, Debug)]
pub struct MemCoordinator {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Every node by full path; `/` always exists.
    nodes: BTreeMap<String, Node>,
    /// Next sequential suffix per parent path.
    sequences: BTreeMap<String, u64>,
    sessions: BTreeMap<u64, SessionState>,
    next_session: u64,
    watches: BTreeMap<(String, WatchKind), Vec<Watcher>>,
    unavailable: bool,
}

#[derive(Debug)]
struct Node {
    data: Bytes,
    version: i32,
    /// The owning session of an ephemeral node.
    owner: Option<u64>,
    children: BTreeSet<String>,
}

#[derive(Debug)]
struct SessionState {
    /// Set to true (and dropped) when the session ends; `lost()` waits on it.
    ended: watch::Sender<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum WatchKind {
    Data,
    Children,
}

#[derive(Debug)]
struct Watcher {
    session: u64,
    fire: oneshot::Sender<()>,
}

impl Default for MemCoordinator {
    fn default() -> Self {
        MemCoordinator::new()
    }
}

impl MemCoordinator {
    /// A coordinator holding only the root node.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_owned(),
            Node {
                data: Bytes::new(),
                version: 0,
                owner: None,
                children: BTreeSet::new(),
            },
        );
        MemCoordinator {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    nodes,
                    sequences: BTreeMap::new(),
                    sessions: BTreeMap::new(),
                    next_session: 1,
                    watches: BTreeMap::new(),
                    unavailable: false,
                }),
            }),
        }
    }

    /// Ends a session as ZooKeeper does when its holder stays silent past the timeout: its
    /// ephemeral nodes are deleted (firing watches), its own watches fire, `lost()` resolves and
    /// every later call on it fails with [`Error::SessionExpired`]. Returns whether it was live.
    pub fn expire(&self, session_id: u64) -> bool {
        self.shared.lock().end_session(session_id)
    }

    /// Ids of the live sessions, ascending.
    pub fn sessions(&self) -> Vec<u64> {
        self.shared.lock().sessions.keys().copied().collect()
    }

    /// While unavailable, `connect` and every session call fail with
    /// [`Error::CoordinatorUnavailable`]; sessions stay live (as ZooKeeper's do through a short
    /// outage) unless a test expires them.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.lock().unavailable = unavailable;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each operation validates before it mutates, so a panic leaves the tree whole, and
        // parking_lot does not poison: later callers carry on.
        self.state.lock()
    }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn check_path(path: &str) -> Result<()> {
    let valid = path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && !path[1..].split('/').any(str::is_empty));
    if valid {
        Ok(())
    } else {
        Err(MemCoordError::BadPath(path.to_owned()).into())
    }
}

impl State {
    /// Fails unless the coordinator is reachable and `session` is live.
    fn check(&self, session: u64) -> Result<()> {
        if self.unavailable {
            return Err(Error::CoordinatorUnavailable(
                "in-memory coordinator set unavailable".into(),
            ));
        }
        if !self.sessions.contains_key(&session) {
            return Err(Error::SessionExpired);
        }
        Ok(())
    }

    fn fire(&mut self, path: &str, kind: WatchKind) {
        if let Some(watchers) = self.watches.remove(&(path.to_owned(), kind)) {
            for w in watchers {
                let _ = w.fire.send(());
            }
        }
    }

    fn add_watch(&mut self, session: u64, path: &str, kind: WatchKind) -> Watch {
        let (fire, fired) = oneshot::channel();
        let watchers = self.watches.entry((path.to_owned(), kind)).or_default();
        // Forget watches whose future was dropped, so repeated polling does not pile them up.
        watchers.retain(|w| !w.fire.is_closed());
        watchers.push(Watcher { session, fire });
        Box::pin(async move {
            // A dropped sender (the coordinator itself gone) counts as a change too.
            let _ = fired.await;
        })
    }

    fn snapshot(&self, path: &str) -> Option<(Bytes, i32)> {
        self.nodes.get(path).map(|n| (n.data.clone(), n.version))
    }

    fn children(&self, path: &str) -> Vec<String> {
        self.nodes
            .get(path)
            .map(|n| n.children.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn create(
        &mut self,
        session: u64,
        path: &str,
        data: Bytes,
        mode: CreateMode,
    ) -> Result<String> {
        check_path(path)?;
        if path == "/" {
            return Err(Error::NodeExists(path.to_owned()));
        }
        let parent = parent_of(path).to_owned();
        // Validate the whole chain of ancestors before changing anything.
        let mut missing = Vec::new();
        let mut ancestor = parent.as_str();
        loop {
            match self.nodes.get(ancestor) {
                Some(node) if node.owner.is_some() => {
                    return Err(MemCoordError::EphemeralParent(ancestor.to_owned()).into());
                }
                Some(_) => break,
                None => {
                    missing.push(ancestor.to_owned());
                    ancestor = parent_of(ancestor);
                }
            }
        }
        let path = if mode.is_sequential() {
            let counter = self.sequences.entry(parent.clone()).or_insert(0);
            let path = format!("{path}{:010}", *counter);
            *counter += 1;
            path
        } else {
            path.to_owned()
        };
        if self.nodes.contains_key(&path) {
            return Err(Error::NodeExists(path));
        }
        for created in missing.iter().rev() {
            self.insert(created, Bytes::new(), None);
        }
        let owner = mode.is_ephemeral().then_some(session);
        self.insert(&path, data, owner);
        Ok(path)
    }

    /// Adds a node under its (existing) parent and fires the watches that see it.
    fn insert(&mut self, path: &str, data: Bytes, owner: Option<u64>) {
        let parent = parent_of(path);
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.insert(name_of(path).to_owned());
        }
        self.nodes.insert(
            path.to_owned(),
            Node {
                data,
                version: 0,
                owner,
                children: BTreeSet::new(),
            },
        );
        self.fire(path, WatchKind::Data);
        self.fire(parent, WatchKind::Children);
    }

    fn set(&mut self, path: &str, data: Bytes, version: Option<i32>) -> Result<()> {
        check_path(path)?;
        let node = self
            .nodes
            .get_mut(path)
            .ok_or_else(|| Error::NoNode(path.to_owned()))?;
        if version.is_some_and(|v| v != node.version) {
            return Err(Error::BadVersion(path.to_owned()));
        }
        node.data = data;
        node.version = node.version.wrapping_add(1);
        self.fire(path, WatchKind::Data);
        Ok(())
    }

    fn delete(&mut self, path: &str) -> Result<()> {
        check_path(path)?;
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| Error::NoNode(path.to_owned()))?;
        if path == "/" || !node.children.is_empty() {
            return Err(MemCoordError::NotEmpty(path.to_owned()).into());
        }
        self.remove(path);
        Ok(())
    }

    /// Removes a childless node and fires the watches that see it go.
    fn remove(&mut self, path: &str) {
        self.nodes.remove(path);
        let parent = parent_of(path);
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.remove(name_of(path));
        }
        self.fire(path, WatchKind::Data);
        self.fire(path, WatchKind::Children);
        self.fire(parent, WatchKind::Children);
    }

    /// Ends a session: deletes its ephemeral nodes, fires its watches, resolves its `lost()`.
    fn end_session(&mut self, id: u64) -> bool {
        let Some(session) = self.sessions.remove(&id) else {
            return false;
        };
        let owned: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.owner == Some(id))
            .map(|(path, _)| path.clone())
            .collect();
        // Ephemeral nodes have no children, so each can go on its own.
        for path in owned {
            self.remove(&path);
        }
        for watchers in self.watches.values_mut() {
            let (ours, others): (Vec<Watcher>, Vec<Watcher>) = std::mem::take(watchers)
                .into_iter()
                .partition(|w| w.session == id);
            *watchers = others;
            for w in ours {
                let _ = w.fire.send(());
            }
        }
        self.watches.retain(|_, watchers| !watchers.is_empty());
        session.ended.send_replace(true);
        true
    }
}

#[async_trait]
impl Coordinator for MemCoordinator {
    async fn connect(&self) -> Result<Box<dyn Session>> {
        let mut state = self.shared.lock();
        if state.unavailable {
            return Err(Error::CoordinatorUnavailable(
                "in-memory coordinator set unavailable".into(),
            ));
        }
        let id = state.next_session;
        state.next_session += 1;
        let (ended, lost) = watch::channel(false);
        state.sessions.insert(id, SessionState { ended });
        Ok(Box::new(MemSession {
            shared: Arc::clone(&self.shared),
            id,
            lost,
        }))
    }
}

/// One session with a [`MemCoordinator`]. Dropping it closes the session.
#[derive(Debug)]
pub struct MemSession {
    shared: Arc<Shared>,
    id: u64,
    lost: watch::Receiver<bool>,
}

#[async_trait]
impl Session for MemSession {
    fn id(&self) -> u64 {
        self.id
    }

    async fn create(&self, path: &str, data: Bytes, mode: CreateMode) -> Result<String> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        state.create(self.id, path, data, mode)
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, i32)>> {
        let state = self.shared.lock();
        state.check(self.id)?;
        check_path(path)?;
        Ok(state.snapshot(path))
    }

    async fn get_watch(&self, path: &str) -> Result<(Option<(Bytes, i32)>, Watch)> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        check_path(path)?;
        let watch = state.add_watch(self.id, path, WatchKind::Data);
        Ok((state.snapshot(path), watch))
    }

    async fn set(&self, path: &str, data: Bytes, version: Option<i32>) -> Result<()> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        state.set(path, data, version)
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        state.delete(path)
    }

    async fn delete_at(&self, path: &str, version: i32) -> Result<()> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        match state.nodes.get(path) {
            Some(node) if node.version != version => Err(Error::BadVersion(path.to_owned())),
            _ => state.delete(path),
        }
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        let state = self.shared.lock();
        state.check(self.id)?;
        check_path(path)?;
        Ok(state.children(path))
    }

    async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        let mut state = self.shared.lock();
        state.check(self.id)?;
        check_path(path)?;
        let watch = state.add_watch(self.id, path, WatchKind::Children);
        Ok((state.children(path), watch))
    }

    fn lost(&self) -> Watch {
        let mut lost = self.lost.clone();
        Box::pin(async move {
            // An error means the sender is gone, which only happens once the session ended.
            let _ = lost.wait_for(|ended| *ended).await;
        })
    }
}

impl Drop for MemSession {
    fn drop(&mut self) {
        self.shared.lock().end_session(self.id);
    }
}
