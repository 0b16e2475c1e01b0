//! What the run reads of the cluster in ZooKeeper: the workers' member records and the master
//! record, through the registry every part of the system reads the coordinator with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
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

/// One replica's published digest: its applied index and its state checksum there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest {
    pub applied_index: u64,
    pub checksum: u64,
}

/// Every worker the run saw in ZooKeeper: how to name it, its last member record, and every
/// distinct digest it published (its `progress` with a checksum, and its quiet-log `state`).
#[derive(Debug, Clone)]
pub struct Seen {
    pub record: MemberRecord,
    pub digests: BTreeSet<Digest>,
}

impl Seen {
    /// `id (pid, role)`, for the problems.
    pub fn label(&self) -> String {
        format!(
            "{} (pid {}, {:?})",
            self.record.id, self.record.pid, self.record.role
        )
    }
}

/// Past this many distinct digests of one worker the oldest are no longer kept (a worker
/// publishes about one a second: far more than a run makes).
const DIGESTS_PER_WORKER: usize = 10_000;

/// Keeps, by worker id, what [`Seen`] says of every member record given to it.
#[derive(Debug, Default, Clone)]
pub struct Sightings(BTreeMap<String, Seen>);

impl Sightings {
    pub fn note(&mut self, members: &[MemberRecord]) {
        for m in members {
            let seen = self.0.entry(m.id.clone()).or_insert_with(|| Seen {
                record: m.clone(),
                digests: BTreeSet::new(),
            });
            seen.record = m.clone();
            let progress = m.progress.and_then(|p| {
                p.checksum.map(|checksum| Digest {
                    applied_index: p.applied_index,
                    checksum,
                })
            });
            let state = m.state.map(|s| Digest {
                applied_index: s.applied_index,
                checksum: s.checksum,
            });
            for digest in progress.into_iter().chain(state) {
                seen.digests.insert(digest);
                if seen.digests.len() > DIGESTS_PER_WORKER {
                    seen.digests.pop_first();
                }
            }
        }
    }

    pub fn workers(&self) -> &BTreeMap<String, Seen> {
        &self.0
    }

    /// The last record of every worker seen.
    pub fn records(&self) -> Vec<MemberRecord> {
        self.0.values().map(|s| s.record.clone()).collect()
    }
}

/// Polls the workers' member records all through the run (every `every`), on one ZooKeeper
/// session it opens again whenever it is lost (an engine restart), so that the replicas that
/// die during the run are compared with the log too, not only those alive at its end.
pub struct Tracker {
    seen: Arc<Mutex<Sightings>>,
    polls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    pub fn start(zk: &str, every: Duration) -> Self {
        let seen = Arc::new(Mutex::new(Sightings::default()));
        let polls = Arc::new(AtomicU64::new(0));
        let coordinator = ZkCoordinator::new(zk, Duration::from_secs(4));
        let task = tokio::spawn({
            let (seen, polls) = (Arc::clone(&seen), Arc::clone(&polls));
            async move {
                let mut registry: Option<Registry> = None;
                loop {
                    if registry.as_ref().is_none_or(Registry::is_lost) {
                        registry = Registry::connect(&coordinator).await.ok();
                    }
                    if let Some(r) = &registry {
                        match r.members().await {
                            Ok(members) => {
                                let records: Vec<MemberRecord> =
                                    members.into_iter().map(|m| m.record).collect();
                                seen.lock().note(&records);
                                polls.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => registry = None,
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }
        });
        Tracker { seen, polls, task }
    }

    /// Adds records read elsewhere (the members at the end).
    pub fn note(&self, members: &[MemberRecord]) {
        self.seen.lock().note(members);
    }

    /// How many polls read the members.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// What was seen so far.
    pub fn sightings(&self) -> Sightings {
        self.seen.lock().clone()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use rideshare_dbaas::protocol::{Progress, Role, StateDigest};

    use super::*;

    fn member(
        id: &str,
        progress: Option<(u64, Option<u64>)>,
        state: Option<(u64, u64)>,
    ) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            pid: 1,
            role: Role::Slave,
            catch_up: None,
            state: state.map(|(applied_index, checksum)| StateDigest {
                applied_index,
                checksum,
            }),
            progress: progress.map(|(applied_index, checksum)| Progress {
                applied_index,
                epoch: 1,
                checksum,
            }),
            http: None,
            catching_up: None,
            snapshots: None,
        }
    }

    #[test]
    fn every_digest_a_worker_published_is_kept_even_after_it_is_gone() {
        let mut seen = Sightings::default();
        seen.note(&[
            member("a", Some((3, Some(30))), None),
            member("b", None, None),
        ]);
        seen.note(&[member("a", Some((5, Some(50))), Some((5, 50)))]);
        // `a` is gone from the members now; `c` published progress without a checksum.
        seen.note(&[member("c", Some((7, None)), None)]);
        let digests: Vec<(u64, u64)> = seen.workers()["a"]
            .digests
            .iter()
            .map(|d| (d.applied_index, d.checksum))
            .collect();
        assert_eq!(digests, vec![(3, 30), (5, 50)]);
        assert!(seen.workers()["b"].digests.is_empty());
        assert!(seen.workers()["c"].digests.is_empty());
        assert_eq!(seen.records().len(), 3);
    }
}
