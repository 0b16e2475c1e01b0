//! What the run reads of the cluster in ZooKeeper: the workers' member records and the master
//! record, through the registry every part of the system reads the coordinator with.

use std::time::{Duration, Instant};

use rideshare_dbaas::protocol::{MasterRecord, MemberRecord};
use rideshare_dbaas::registry::Registry;

use crate::adapters::zk::ZkCoordinator;

pub struct Observer {
    zk: ZkCoordinator,
}

impl Observer {
    /// Reads the cluster under `zk` (the run's chroot included).
    pub fn new(zk: &str) -> Self {
        Observer {
            zk: ZkCoordinator::new(zk, Duration::from_secs(4)),
        }
    }

    /// Every live worker's member record (id, pid, role, catch-up, state digest); none when
    /// ZooKeeper does not answer.
    pub async fn members(&self) -> Vec<MemberRecord> {
        let Ok(registry) = Registry::connect(&self.zk).await else {
            return vec![];
        };
        let members = registry.members().await.unwrap_or_default();
        members.into_iter().map(|m| m.record).collect()
    }

    pub async fn master(&self) -> Option<MasterRecord> {
        let registry = Registry::connect(&self.zk).await.ok()?;
        registry.master().await.ok()?
    }

    /// The members once every one has published a state digest at `end` (the log's end), or
    /// as they are after `bound`: the checker counts a replica short of the log as behind.
    pub async fn members_at(&self, end: u64, bound: Duration) -> (Vec<MemberRecord>, bool) {
        let waited = Instant::now();
        loop {
            let now = self.members().await;
            let whole = |m: &MemberRecord| m.state.is_some_and(|s| s.applied_index >= end);
            if !now.is_empty() && now.iter().all(whole) {
                return (now, true);
            }
            if waited.elapsed() > bound {
                return (now, false);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
