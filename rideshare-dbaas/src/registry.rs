//! What the system keeps in the coordinator, typed: the member nodes under `WORKERS`, the
//! `MASTER` node, the epoch sequence under `EPOCHS` and the `SCALE` target (paths and records in
//! `protocol.rs`). Workers, the orchestrator and the tools read and write these through a
//! [`Registry`], so a path is joined and a record encoded or decoded in one place.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::coord::{Coordinator, CreateMode, Session, Watch};
use crate::error::{Error, Result};
use crate::policy::Member;
use crate::protocol::{
    decode, encode, MasterRecord, MemberRecord, ScaleRecord, EPOCHS, MASTER, SCALE, WORKERS,
};

/// A registered worker: its member node's path and record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub path: String,
    pub record: MemberRecord,
}

impl MemberInfo {
    /// The worker as the policies see it.
    pub fn member(&self) -> Member {
        Member {
            id: self.record.id.clone(),
            pid: self.record.pid,
        }
    }
}

/// The master node as found: its record (`None` if its data does not decode, which still means
/// someone holds the node) and the node's version, for a conditional update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterNode {
    pub record: Option<MasterRecord>,
    pub version: i32,
}

/// The master node as its holder last wrote it: the version its next write must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterClaim {
    version: i32,
}

/// An epoch drawn from the persistent sequence: epochs only grow, even across a new master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub number: u64,
    /// The sequential node it was drawn as; older ones can go (see [`Registry::prune_epochs`]).
    node: String,
}

/// One coordinator session, seen through the system's nodes. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    session: Arc<dyn Session>,
}

impl Registry {
    pub fn new(session: Arc<dyn Session>) -> Self {
        Registry { session }
    }

    /// Opens a session of its own.
    pub async fn connect(coordinator: &dyn Coordinator) -> Result<Self> {
        Ok(Registry::new(Arc::from(coordinator.connect().await?)))
    }

    /// The session underneath (its ephemeral nodes live as long as it does).
    pub fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    /// Resolves when the session has ended.
    pub fn lost(&self) -> Watch {
        self.session.lost()
    }

    /// Whether the session has already ended.
    pub fn is_lost(&self) -> bool {
        futures::FutureExt::now_or_never(self.session.lost()).is_some()
    }

    // Members.

    /// Every registered worker, in node order. A node that vanished between the listing and
    /// its read, or whose data does not decode, is left out; other failures are errors.
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        let children = self.session.children(WORKERS).await?;
        self.read_members(&children).await
    }

    /// Like [`Registry::members`], plus a watch that fires when a worker registers or goes.
    pub async fn members_watch(&self) -> Result<(Vec<MemberInfo>, Watch)> {
        let (children, changed) = self.session.children_watch(WORKERS).await?;
        Ok((self.read_members(&children).await?, changed))
    }

    /// A watch that fires when a worker registers or goes, without reading the members.
    pub async fn members_changed(&self) -> Result<Watch> {
        Ok(self.session.children_watch(WORKERS).await?.1)
    }

    /// The registered worker `id`, if it is.
    pub async fn member(&self, id: &str) -> Result<Option<MemberInfo>> {
        Ok(self
            .members()
            .await?
            .into_iter()
            .find(|m| m.record.id == id))
    }

    async fn read_members(&self, children: &[String]) -> Result<Vec<MemberInfo>> {
        let mut members = Vec::with_capacity(children.len());
        for child in children {
            let path = format!("{WORKERS}/{child}");
            if let Some((data, _)) = self.session.get(&path).await? {
                if let Ok(record) = decode::<MemberRecord>(&data) {
                    members.push(MemberInfo { path, record });
                }
            }
        }
        Ok(members)
    }

    /// Registers a worker: an ephemeral sequential node that lives as long as this session.
    /// Answers the node's path, for [`Registry::update_member`].
    pub async fn register_member(&self, record: &MemberRecord) -> Result<String> {
        self.session
            .create(
                &format!("{WORKERS}/w-"),
                encode(record),
                CreateMode::EphemeralSequential,
            )
            .await
    }

    /// Replaces a member node's record (the worker's own; it alone writes it).
    pub async fn update_member(&self, path: &str, record: &MemberRecord) -> Result<()> {
        self.session.set(path, encode(record), None).await
    }

    /// Deletes a member node (any session's): its worker is known to be dead.
    pub async fn remove_member(&self, path: &str) -> Result<()> {
        self.session.delete(path).await
    }

    /// Deletes every node of a worker known to be dead, at once rather than after its
    /// session's timeout: its member nodes, and the master node if it holds it. Best effort: a
    /// node already gone, or a failed look, leaves the rest to the session's expiry.
    pub async fn forget_worker(&self, id: &str) {
        if let Ok(members) = self.members().await {
            for m in members.iter().filter(|m| m.record.id == id) {
                let _ = self.remove_member(&m.path).await;
            }
        }
        self.release_master_of(id).await;
    }

    // The master.

    /// The master's record, if the node exists and decodes.
    pub async fn master(&self) -> Result<Option<MasterRecord>> {
        Ok(self.master_node().await?.and_then(|node| node.record))
    }

    /// The master node, if it exists.
    pub async fn master_node(&self) -> Result<Option<MasterNode>> {
        Ok(self.session.get(MASTER).await?.map(master_node))
    }

    /// Like [`Registry::master_node`], plus a watch that fires when the node is created,
    /// changed or deleted.
    pub async fn master_watch(&self) -> Result<(Option<MasterNode>, Watch)> {
        let (node, changed) = self.session.get_watch(MASTER).await?;
        Ok((node.map(master_node), changed))
    }

    /// Takes the master node for this session (ephemeral). `Ok(None)`: another session holds
    /// it; the create is atomic, so of two claims one wins.
    pub async fn claim_master(&self, record: &MasterRecord) -> Result<Option<MasterClaim>> {
        match self
            .session
            .create(MASTER, encode(record), CreateMode::Ephemeral)
            .await
        {
            Ok(_) => Ok(Some(MasterClaim { version: 0 })),
            Err(Error::NodeExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the master's record (its epoch, then its readiness) only if the node is still
    /// at the version of the holder's last write (compare-and-set): a late write of a worker
    /// whose claim was taken from it (its node deleted as dead, another master's since) fails
    /// with `BadVersion` instead of overwriting the real master's record.
    pub async fn set_master(&self, record: &MasterRecord, claim: &mut MasterClaim) -> Result<()> {
        self.session
            .set(MASTER, encode(record), Some(claim.version))
            .await?;
        claim.version += 1;
        Ok(())
    }

    /// Deletes the master node if the worker `id` holds it, compare-and-delete on the version
    /// it was read at: a master elected meanwhile is never deleted in its place. Best effort,
    /// like [`Registry::forget_worker`].
    pub async fn release_master_of(&self, id: &str) {
        if let Ok(Some(node)) = self.master_node().await {
            if node.record.is_some_and(|m| m.id == id) {
                let _ = self.session.delete_at(MASTER, node.version).await;
            }
        }
    }

    // Epochs.

    /// Draws a new epoch: the suffix of a new persistent sequential node, plus one, and at
    /// least `at_least` (above every epoch in the log, even if the coordinator lost its data).
    pub async fn next_epoch(&self, at_least: u64) -> Result<Epoch> {
        let node = self
            .session
            .create(
                &format!("{EPOCHS}/e-"),
                Bytes::new(),
                CreateMode::PersistentSequential,
            )
            .await?;
        let number = node
            .rsplit('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|seq| seq + 1)
            .ok_or_else(|| Error::Protocol(format!("bad epoch node {node}")))?
            .max(at_least);
        Ok(Epoch { number, node })
    }

    /// Deletes the epoch nodes drawn before `kept`: they only served to draw numbers, and the
    /// sequence never reuses one. Best effort.
    pub async fn prune_epochs(&self, kept: &Epoch) {
        let Ok(children) = self.session.children(EPOCHS).await else {
            return;
        };
        let mine = kept.node.rsplit('/').next().unwrap_or_default();
        for child in children.iter().filter(|c| c.as_str() < mine) {
            let _ = self.session.delete(&format!("{EPOCHS}/{child}")).await;
        }
    }

    // The scaling target.

    /// The stored slave target, if there is one and it decodes.
    pub async fn scale_target(&self) -> Result<Option<u64>> {
        Ok(match self.session.get(SCALE).await? {
            Some((data, _)) => decode::<ScaleRecord>(&data).ok().map(|s| s.slaves),
            None => None,
        })
    }

    /// Stores the slave target (persistent: a restarted orchestrator keeps it).
    pub async fn set_scale_target(&self, slaves: u64) -> Result<()> {
        let data = encode(&ScaleRecord { slaves });
        match self.session.set(SCALE, data.clone(), None).await {
            Err(Error::NoNode(_)) => {
                match self
                    .session
                    .create(SCALE, data, CreateMode::Persistent)
                    .await
                {
                    Ok(_) | Err(Error::NodeExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

fn master_node((data, version): (Bytes, i32)) -> MasterNode {
    MasterNode {
        record: decode::<MasterRecord>(&data).ok(),
        version,
    }
}

/// A registry whose session is replaced by a fresh one when it ends: for a holder of no
/// ephemeral node (the orchestrator), for which a new session is as good as the old.
pub struct RenewingRegistry {
    coordinator: Arc<dyn Coordinator>,
    current: parking_lot::Mutex<Registry>,
}

impl RenewingRegistry {
    pub async fn connect(coordinator: Arc<dyn Coordinator>) -> Result<Self> {
        let current = Registry::connect(coordinator.as_ref()).await?;
        Ok(RenewingRegistry {
            coordinator,
            current: parking_lot::Mutex::new(current),
        })
    }

    /// The current session's registry.
    pub fn get(&self) -> Registry {
        self.current.lock().clone()
    }

    /// Opens a new session if the current one has ended.
    pub async fn renew(&self) -> Result<()> {
        if !self.get().is_lost() {
            return Ok(());
        }
        tracing::warn!("coordinator session lost; opening a new one");
        let fresh = Registry::connect(self.coordinator.as_ref()).await?;
        *self.current.lock() = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::mem::MemCoordinator;
    use crate::protocol::{Progress, Role};

    fn record(id: &str, pid: u32) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            pid,
            role: Role::Slave,
            catch_up: None,
            state: None,
            progress: None,
            http: None,
            catching_up: None,
            snapshots: None,
        }
    }

    fn master(id: &str, epoch: u64) -> MasterRecord {
        MasterRecord {
            id: id.into(),
            pid: 1,
            epoch,
            ready: false,
        }
    }

    async fn registry(coordinator: &MemCoordinator) -> Registry {
        Registry::connect(coordinator).await.unwrap()
    }

    #[tokio::test]
    async fn members_register_update_and_go_with_their_session() {
        let coordinator = MemCoordinator::new();
        let (a, b, observer) = (
            registry(&coordinator).await,
            registry(&coordinator).await,
            registry(&coordinator).await,
        );
        let path_a = a.register_member(&record("a", 10)).await.unwrap();
        b.register_member(&record("b", 11)).await.unwrap();
        // Undecodable data under WORKERS is not a member.
        observer
            .session()
            .create(
                &format!("{WORKERS}/junk"),
                Bytes::from_static(b"{"),
                CreateMode::Persistent,
            )
            .await
            .unwrap();
        let (members, changed) = observer.members_watch().await.unwrap();
        let ids: Vec<_> = members.iter().map(|m| m.member()).collect();
        assert_eq!(
            ids,
            [
                Member {
                    id: "a".into(),
                    pid: 10
                },
                Member {
                    id: "b".into(),
                    pid: 11
                }
            ]
        );
        assert_eq!(members[0].path, path_a);
        let mut updated = record("a", 10);
        updated.progress = Some(Progress {
            applied_index: 7,
            epoch: 2,
            checksum: None,
        });
        a.update_member(&path_a, &updated).await.unwrap();
        let seen = observer.member("a").await.unwrap().unwrap();
        assert_eq!(seen.record.progress.unwrap().applied_index, 7);
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), changed)
            .await
            .expect("the watch fires when a member's session ends");
        assert_eq!(observer.members().await.unwrap().len(), 1);
        assert_eq!(observer.member("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn one_claim_of_the_master_wins_and_forgetting_its_holder_frees_it() {
        let coordinator = MemCoordinator::new();
        let (a, b) = (registry(&coordinator).await, registry(&coordinator).await);
        a.register_member(&record("a", 10)).await.unwrap();
        assert_eq!(a.master().await.unwrap(), None);
        let mut claim = a.claim_master(&master("a", 0)).await.unwrap().unwrap();
        assert_eq!(b.claim_master(&master("b", 0)).await.unwrap(), None);
        let (node, changed) = b.master_watch().await.unwrap();
        assert_eq!(node.unwrap().record, Some(master("a", 0)));
        let stale = claim;
        a.set_master(&master("a", 4), &mut claim).await.unwrap();
        changed.await;
        assert!(
            matches!(
                a.set_master(&master("a", 5), &mut stale.clone()).await,
                Err(Error::BadVersion(_))
            ),
            "a stale version is refused"
        );
        a.set_master(&master("a", 5), &mut claim).await.unwrap();
        assert_eq!(b.master().await.unwrap().unwrap().epoch, 5);
        b.release_master_of("b").await;
        assert!(b.master().await.unwrap().is_some(), "b does not hold it");
        b.forget_worker("a").await;
        assert_eq!(b.master_node().await.unwrap(), None);
        assert!(b.members().await.unwrap().is_empty());
        assert!(b.claim_master(&master("b", 0)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_deposed_holders_late_writes_leave_the_new_masters_node_alone() {
        let coordinator = MemCoordinator::new();
        let (a, b, orchestrator) = (
            registry(&coordinator).await,
            registry(&coordinator).await,
            registry(&coordinator).await,
        );
        let mut a_claim = a.claim_master(&master("a", 0)).await.unwrap().unwrap();
        a.set_master(&master("a", 3), &mut a_claim).await.unwrap();
        // The orchestrator reads the node (held by a, thought dead)...
        let read = orchestrator.master_node().await.unwrap().unwrap();
        // ...a's node goes (its session expired), b takes over: its epoch, then ready...
        orchestrator.session.delete(MASTER).await.unwrap();
        let mut b_claim = b.claim_master(&master("b", 0)).await.unwrap().unwrap();
        b.set_master(&master("b", 4), &mut b_claim).await.unwrap();
        b.set_master(&master("b", 4), &mut b_claim).await.unwrap();
        // ...then a's late write and the orchestrator's delete of "a's" node land. (Versions
        // restart with each node, as in ZooKeeper: only a node at the very version read would
        // still be deleted; fencing by epoch in the log keeps even that safe.)
        assert!(matches!(
            a.set_master(&master("a", 3), &mut a_claim).await,
            Err(Error::BadVersion(_))
        ));
        assert!(matches!(
            orchestrator.session.delete_at(MASTER, read.version).await,
            Err(Error::BadVersion(_))
        ));
        orchestrator.release_master_of("a").await;
        assert_eq!(b.master().await.unwrap(), Some(master("b", 4)));
    }

    #[tokio::test]
    async fn epochs_only_grow_and_pruning_keeps_the_newest() {
        let coordinator = MemCoordinator::new();
        let r = registry(&coordinator).await;
        let first = r.next_epoch(0).await.unwrap();
        let second = r.next_epoch(0).await.unwrap();
        assert!(second.number > first.number);
        let floored = r.next_epoch(100).await.unwrap();
        assert_eq!(floored.number, 100);
        r.prune_epochs(&floored).await;
        let left = r.session().children(EPOCHS).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(r.next_epoch(0).await.unwrap().number, second.number + 2);
    }

    #[tokio::test]
    async fn the_scale_target_is_created_then_replaced() {
        let coordinator = MemCoordinator::new();
        let r = registry(&coordinator).await;
        assert_eq!(r.scale_target().await.unwrap(), None);
        r.set_scale_target(3).await.unwrap();
        r.set_scale_target(5).await.unwrap();
        assert_eq!(
            registry(&coordinator).await.scale_target().await.unwrap(),
            Some(5)
        );
    }

    #[tokio::test]
    async fn a_renewing_registry_replaces_an_ended_session() {
        let coordinator = MemCoordinator::new();
        let renewing = RenewingRegistry::connect(Arc::new(coordinator.clone()))
            .await
            .unwrap();
        let before = renewing.get().session().id();
        renewing.renew().await.unwrap();
        assert_eq!(renewing.get().session().id(), before, "a live one is kept");
        assert!(coordinator.expire(before));
        renewing.renew().await.unwrap();
        let after = renewing.get();
        assert_ne!(after.session().id(), before);
        assert!(!after.is_lost());
    }
}
