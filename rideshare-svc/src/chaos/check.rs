//! The check: every replica's state digests, seen during the run and at its end, and an
//! independent replay of the whole write log into a fresh SQLite store, the digests compared
//! with the replay at their own indexes; then the checker run on the history.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::checker::{check_all, Event, Replay, ReplicaState, Verdict};
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

/// Every replica the run saw: how many had digests held against the replay of the log at the
/// index each was published at (the checker's `check_all` compares them: a mismatch, or a digest
/// past the log's end, is a `replica_mismatch` in its verdict).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replicas {
    /// Distinct workers with at least one digest compared (the master included).
    pub replicas_checked: usize,
    /// Workers seen that never published a digest (killed before they first applied a group).
    pub replicas_without_digest: usize,
    pub replica_digests_checked: u64,
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
    let published = digests(&seen);
    // Read again once nothing watches any more: a digest past it is past the log.
    let end = log.end().await?;
    let mut replay = Replay::new(SqliteStore::open(&work_dir.join("reference.db"))?);
    replay.checksums_at(published.iter().map(|d| d.applied_index))?;
    let started = Instant::now();
    replay_log(&log, end, &mut replay).await?;
    let rate = end as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let compared = Replicas {
        replicas_checked: published
            .iter()
            .map(|d| d.worker.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        replicas_without_digest: seen
            .workers()
            .values()
            .filter(|s| s.digests.is_empty())
            .count(),
        replica_digests_checked: published.len() as u64,
    };
    println!(
        "chaos: {} workers seen in {polls} polls of ZooKeeper, {} with digests, {} digests compared",
        seen.workers().len(),
        compared.replicas_checked,
        compared.replica_digests_checked
    );
    println!(
        "chaos: the log holds {end} records, {} of them of several writes ({} writes: group commit)",
        replay.group_records, replay.group_writes
    );
    let verdict = check_all(events, &mut replay, &replicas, &published)?;
    Ok(Checked {
        verdict,
        log_entries: end,
        epochs: replay.epochs,
        reference_replay_entries_per_s: rate as u64,
        replicas: compared,
    })
}

/// Every digest seen, each as the state of its worker at its index.
fn digests(seen: &Sightings) -> Vec<ReplicaState> {
    seen.workers()
        .values()
        .flat_map(|s| {
            s.digests.iter().map(|d| ReplicaState {
                worker: s.label(),
                applied_index: d.applied_index,
                checksum: d.checksum,
            })
        })
        .collect()
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

/// Replays the log's entries 1..=`end` with the replicas' rules (the replay notes its checksum
/// at every index it was asked for).
async fn replay_log(
    log: &RabbitLog,
    end: u64,
    replay: &mut Replay<SqliteStore>,
) -> anyhow::Result<()> {
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
    }
    Ok(())
}
