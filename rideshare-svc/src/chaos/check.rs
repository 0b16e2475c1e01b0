//! The check: every live replica's state digest, an independent replay of the whole write log
//! into a fresh SQLite store, and the checker run on the history against both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::checker::{check, Event, Replay, ReplicaState, Verdict};
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::MemberRecord;

use super::observe::Observer;
use super::report::Record;
use crate::adapters::rabbit::RabbitLog;

/// What the check found, besides the figures the fault schedule recorded.
#[derive(Debug)]
pub struct Checked {
    pub verdict: Verdict,
    pub log_entries: u64,
    pub epochs: u64,
    pub replicas_checked: usize,
    pub reference_replay_entries_per_s: u64,
}

/// Checks `events` against the log in `amqp` and the replicas `observer` sees; the replicas'
/// catch-ups go into `record`. The reference store is written in `work_dir`.
pub async fn check_run(
    amqp: &str,
    observer: &Observer,
    work_dir: &Path,
    events: &[Event],
    record: &mut Record,
) -> anyhow::Result<Checked> {
    let log = RabbitLog::connect(amqp, "rideshare.log").await?;
    let end = log.end().await?;
    // Every live worker, the master included, publishes its applied index and checksum in its
    // member node once the log is quiet.
    let (members, whole) = observer.members_at(end, Duration::from_secs(30)).await;
    if !whole {
        // The checker counts each replica short of the log as behind.
        println!("chaos: not every replica published the whole log within 30 s");
    }
    record.note_catch_ups(&members);
    let replicas = replica_states(&members);
    let mut replay = Replay::new(SqliteStore::open(&work_dir.join("reference.db"))?);
    let started = Instant::now();
    replay_log(&log, end, &mut replay).await?;
    let rate = end as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let verdict = check(events, &mut replay, &replicas)?;
    Ok(Checked {
        verdict,
        log_entries: end,
        epochs: replay.epochs,
        replicas_checked: replicas.len(),
        reference_replay_entries_per_s: rate as u64,
    })
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

/// Replays the log's entries 1..=`end` with the replicas' rules.
async fn replay_log(
    log: &RabbitLog,
    end: u64,
    replay: &mut Replay<SqliteStore>,
) -> anyhow::Result<()> {
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
