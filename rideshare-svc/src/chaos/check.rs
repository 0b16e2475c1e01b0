//! The check: every replica's state digests, seen during the run and at its end, and an
//! independent replay of the whole write log into a fresh SQLite store, the digests compared
//! with the replay at their own indexes; then the checker run on the history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::checker::{check, Event, Replay, ReplicaState, Verdict};
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::MemberRecord;

use super::observe::{Observer, Sightings, Tracker};
use super::report::Record;
use crate::adapters::rabbit::RabbitLog;

/// What the check found, besides the figures the fault schedule recorded.
#[derive(Debug)]
pub struct Checked {
    pub verdict: Verdict,
    pub log_entries: u64,
    pub epochs: u64,
    pub reference_replay_entries_per_s: u64,
    pub replicas: Replicas,
}

/// Every replica the run saw, compared with the replay of the log at the index it published.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replicas {
    /// Distinct workers with at least one digest compared (the master included).
    pub replicas_checked: usize,
    /// Workers seen that never published a digest (killed before they first applied a group).
    pub replicas_without_digest: usize,
    pub replica_digests_checked: u64,
    /// Digests whose checksum differs from the replay's at their index.
    pub replica_digest_mismatches: u64,
    /// Digests at an index past the log's end.
    pub replica_digests_ahead: u64,
    #[serde(skip)]
    pub problems: Vec<String>,
}

impl Replicas {
    pub fn passed(&self) -> bool {
        self.replicas_checked > 0
            && self.replica_digest_mismatches == 0
            && self.replica_digests_ahead == 0
    }
}

/// Checks `events` against the log in `amqp`, the replicas alive at the end (`observer`), and
/// every digest `tracker` saw during the run; the replicas' catch-ups go into `record`. The
/// reference store is written in `work_dir`.
pub async fn check_run(
    amqp: &str,
    observer: &Observer,
    tracker: Tracker,
    work_dir: &Path,
    events: &[Event],
    record: &mut Record,
) -> anyhow::Result<Checked> {
    let log = RabbitLog::connect(amqp, "rideshare.log").await?;
    let quiet_end = log.end().await?;
    // Every live worker, the master included, publishes its applied index and checksum in its
    // member node once the log is quiet.
    let (members, whole) = observer
        .members_at(quiet_end, Duration::from_secs(30))
        .await;
    if !whole {
        // The checker counts each replica short of the log as behind.
        println!("chaos: not every replica published the whole log within 30 s");
    }
    tracker.note(&members);
    let polls = tracker.polls();
    let seen = tracker.sightings();
    drop(tracker);
    record.note_catch_ups(&seen.records());
    let replicas = replica_states(&members);
    // Read again once nothing watches any more: a digest past it is past the log.
    let end = log.end().await?;
    let mut wanted = Wanted::new(&seen);
    let mut replay = Replay::new(SqliteStore::open(&work_dir.join("reference.db"))?);
    let started = Instant::now();
    replay_log(&log, end, &mut replay, &mut wanted).await?;
    let rate = end as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let mut compared = wanted.finish(end);
    compared.replicas_without_digest = seen
        .workers()
        .values()
        .filter(|s| s.digests.is_empty())
        .count();
    println!(
        "chaos: {} workers seen in {polls} polls of ZooKeeper, {} with digests, {} digests compared",
        seen.workers().len(),
        compared.replicas_checked,
        compared.replica_digests_checked
    );
    let verdict = check(events, &mut replay, &replicas)?;
    Ok(Checked {
        verdict,
        log_entries: end,
        epochs: replay.epochs,
        reference_replay_entries_per_s: rate as u64,
        replicas: compared,
    })
}

/// The digests to hold against the replay, by index, each with the worker that published it.
struct Wanted {
    /// Index -> (worker's label, checksum), in index order.
    by_index: BTreeMap<u64, Vec<(String, u64)>>,
    workers_compared: BTreeSet<String>,
    found: Replicas,
}

impl Wanted {
    fn new(seen: &Sightings) -> Self {
        let mut by_index: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
        for s in seen.workers().values() {
            for d in &s.digests {
                by_index
                    .entry(d.applied_index)
                    .or_default()
                    .push((s.label(), d.checksum));
            }
        }
        Wanted {
            by_index,
            workers_compared: BTreeSet::new(),
            found: Replicas::default(),
        }
    }

    /// Compares the digests at `index` (which the replay has just reached) with `checksum`.
    fn at(
        &mut self,
        index: u64,
        checksum: impl FnOnce() -> anyhow::Result<u64>,
    ) -> anyhow::Result<()> {
        let Some(digests) = self.by_index.remove(&index) else {
            return Ok(());
        };
        let want = checksum()?;
        for (worker, got) in digests {
            self.found.replica_digests_checked += 1;
            if got != want {
                self.found.replica_digest_mismatches += 1;
                self.problem(format!(
                    "replica {worker} published checksum {got:x} at index {index}; the log gives {want:x}"
                ));
            }
            self.workers_compared.insert(worker);
        }
        Ok(())
    }

    /// Whether a digest waits at `index` or beyond.
    fn wants_from(&self, index: u64) -> bool {
        self.by_index.range(index..).next().is_some()
    }

    /// Counts what is left (past the log's `end`) as ahead of the log.
    fn finish(mut self, end: u64) -> Replicas {
        for (index, digests) in std::mem::take(&mut self.by_index) {
            for (worker, _) in digests {
                self.found.replica_digests_ahead += 1;
                self.problem(format!(
                    "replica {worker} published a digest at index {index}, past the log's end {end}"
                ));
            }
        }
        self.found.replicas_checked = self.workers_compared.len();
        self.found
    }

    fn problem(&mut self, text: String) {
        if self.found.problems.len() < 10 {
            self.found.problems.push(text);
        }
    }
}

fn replica_states(members: &[MemberRecord]) -> Vec<ReplicaState> {
    members
        .iter()
        .map(|m| ReplicaState {
            worker: format!("{} (pid {}, {:?})", m.id, m.pid, m.role),
            applied_index: m.state.map_or(0, |s| s.applied_index),
            checksum: m.state.map_or(0, |s| s.checksum),
        })
        .collect()
}

/// Replays the log's entries 1..=`end` with the replicas' rules, comparing the wanted digests
/// as their indexes are reached.
async fn replay_log(
    log: &RabbitLog,
    end: u64,
    replay: &mut Replay<SqliteStore>,
    wanted: &mut Wanted,
) -> anyhow::Result<()> {
    wanted.at(0, || Ok(replay.checksum()?))?;
    if end == 0 {
        return Ok(());
    }
    let mut reader = log.read_from(1).await?;
    while replay.end < end {
        let record = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .context("the log stream stopped delivering")?
            .context("the log stream closed")??;
        replay.apply(&record)?;
        let index = replay.end;
        if wanted.wants_from(index) {
            wanted.at(index, || Ok(replay.checksum()?))?;
        }
    }
    Ok(())
}
