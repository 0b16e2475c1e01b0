//! What the run reads of the cluster in ZooKeeper: the workers' member records and the master
//! record. Every ZooKeeper read of the run is here, so a typed registry can replace them.

use std::time::{Duration, Instant};

use rideshare_dbaas::coord::Coordinator;
use rideshare_dbaas::protocol::{decode, MasterRecord, MemberRecord, MASTER, WORKERS};

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
        let Ok(session) = self.zk.connect().await else {
            return vec![];
        };
        let Ok(children) = session.children(WORKERS).await else {
            return vec![];
        };
        let mut out = Vec::with_capacity(children.len());
        for child in children {
            if let Ok(Some((data, _))) = session.get(&format!("{WORKERS}/{child}")).await {
                if let Ok(record) = decode::<MemberRecord>(&data) {
                    out.push(record);
                }
            }
        }
        out
    }

    pub async fn master(&self) -> Option<MasterRecord> {
        let session = self.zk.connect().await.ok()?;
        let (data, _) = session.get(MASTER).await.ok()??;
        decode::<MasterRecord>(&data).ok()
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
