//! Taking snapshots: once the replica has applied `every` entries past the newest snapshot in
//! the shared directory, this worker writes one (if no other worker is writing one), off the
//! paths that apply the log and answer reads, and publishes it with the epoch and state
//! checksum of the index the copy holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::store::Exported;
use super::{Shared, SnapshotSettings};
use crate::error::Result;
use crate::registry::Registry;
use crate::snapshot::Taken;

/// Group ends remembered (index, epoch, checksum), newest last: a copy written on the exporter
/// connection holds the state at one of them, which tells its epoch and checksum.
const RECENT_GROUPS: usize = 4096;
/// How long to wait before asking again while another worker writes a snapshot, or after a
/// failed one.
const RETRY: Duration = Duration::from_secs(1);
/// How often the newest snapshot is looked up again while no new one is due.
const RELIST: Duration = Duration::from_secs(5);

/// The last group ends, for [`RECENT_GROUPS`].
#[derive(Default)]
pub(super) struct Recent(Mutex<VecDeque<Taken>>);

impl Recent {
    pub fn push(&self, taken: Taken) {
        let mut recent = self.0.lock();
        if recent.len() == RECENT_GROUPS {
            recent.pop_front();
        }
        recent.push_back(taken);
    }

    fn at(&self, index: u64) -> Option<Taken> {
        self.0
            .lock()
            .iter()
            .rev()
            .find(|t| t.index == index)
            .copied()
    }
}

/// Writes a snapshot each time the replica is `every` entries past the newest one; runs for
/// the worker's life. A failed snapshot is logged and tried again later: it never stops the
/// worker.
#[tracing::instrument(name = "snapshots", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn take_snapshots(
    shared: Arc<Shared>,
    settings: SnapshotSettings,
    registry: Registry,
    member_path: String,
) -> Result<()> {
    let every = settings.every.max(1);
    let mut applied = shared.position.subscribe();
    loop {
        let dir = settings.dir.clone();
        let newest = match tokio::task::spawn_blocking(move || dir.newest_index()).await {
            Ok(Ok(newest)) => newest,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list snapshots");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => return Ok(()),
        };
        let due = newest + every;
        // Looked at again every so often: a snapshot found corrupt is deleted, which makes a
        // new one due at once (from a live replica, the only place the state is whole then).
        match tokio::time::timeout(RELIST, applied.wait_for(|p| p.index >= due)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(()),
            Err(_) => continue,
        }
        match take_one(&shared, &settings).await {
            Ok(Some(index)) => {
                let _ = shared
                    .update_member(&registry, &member_path, |m| {
                        m.snapshots.get_or_insert_with(Default::default).taken = Some(index);
                    })
                    .await;
            }
            Ok(None) => tokio::time::sleep(RETRY).await,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot failed; trying again later");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Writes and publishes one snapshot; `None` when another worker holds the lock or the copy's
/// index is no longer among the recent group ends.
async fn take_one(shared: &Shared, settings: &SnapshotSettings) -> Result<Option<u64>> {
    let worker = shared.config.id.clone();
    let dir = settings.dir.clone();
    let locker = worker.clone();
    let Some(lock) = tokio::task::spawn_blocking(move || dir.try_lock(&locker))
        .await
        .map_err(|e| crate::Error::adapter("taking the snapshot lock", e))??
    else {
        return Ok(None);
    };
    let started = Instant::now();
    let temp = settings.dir.temp_path(&worker);
    let kind = settings.kind;
    let taken = match shared.store.export(temp.clone()).await? {
        Exported::Exact(taken) => taken,
        Exported::At(index) => match shared.recent.at(index) {
            Some(taken) => taken,
            None => {
                tracing::info!(
                    index,
                    "snapshot copy is older than the recent groups; dropped"
                );
                let _ = std::fs::remove_file(&temp);
                return Ok(None);
            }
        },
    };
    let dir = settings.dir.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        let published = dir.publish(&temp, kind, taken, &worker);
        if published.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        drop(lock);
        published
    })
    .await
    .map_err(|e| crate::Error::adapter("publishing a snapshot", e))??;
    tracing::info!(
        index = manifest.index,
        bytes = manifest.bytes,
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    metrics::counter!("rideshare_worker_snapshots_total").increment(1);
    Ok(Some(manifest.index))
}
