//! Everything the worker reads from or writes to the coordinator: its member node (registration,
//! role, catch-up, progress, state digest), the election, and the master node.

use std::sync::Arc;
use std::time::Duration;

use super::{duration_ms, tail, Shared, WorkerDeps};
use crate::error::{Error, Result};
use crate::policy::elect;
use crate::protocol::{EntryBody, LogEntry, MasterRecord, MemberRecord, Progress, VERSION};
use crate::registry::{MasterClaim, Registry};

impl Shared {
    /// Changes this worker's member record and writes it to its node.
    pub(super) async fn update_member(
        &self,
        registry: &Registry,
        path: &str,
        change: impl FnOnce(&mut MemberRecord),
    ) -> Result<()> {
        let mut member = self.member.lock().await;
        change(&mut member);
        registry.update_member(path, &member).await
    }
}

/// Creates this worker's member node; returns its path.
pub(super) async fn register(shared: &Shared, registry: &Registry) -> Result<String> {
    let member_path = registry
        .register_member(&*shared.member.lock().await)
        .await?;
    tracing::info!(pid = shared.config.pid, path = %member_path, "worker registered");
    Ok(member_path)
}

/// How long the log must be quiet before a replica publishes its state digest.
const STATE_QUIET: Duration = Duration::from_secs(1);
/// Publications at most this often: each is a coordinator write.
const STATE_EVERY: Duration = Duration::from_secs(5);

/// Publishes the replica's state digest in its member node now, then after every change to it
/// once the log has been quiet for `STATE_QUIET`, at most every `STATE_EVERY`. A failed
/// publication is retried at the next one; losing the session ends the worker elsewhere.
#[tracing::instrument(name = "publish_state", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn publish_state(
    shared: Arc<Shared>,
    registry: Registry,
    member_path: String,
) -> Result<()> {
    let mut applied = shared.position.subscribe();
    let mut published: Option<u64> = None;
    loop {
        let digest = shared.store.digest().await?;
        if published != Some(digest.applied_index) {
            match shared
                .update_member(&registry, &member_path, |m| m.state = Some(digest))
                .await
            {
                Ok(()) => published = Some(digest.applied_index),
                Err(e) => tracing::warn!(error = %e, "could not publish the state digest"),
            }
        }
        tokio::time::sleep(STATE_EVERY).await;
        // Something new applied since, then quiet.
        if applied.borrow_and_update().index == digest.applied_index
            && applied.changed().await.is_err()
        {
            return Ok(());
        }
        while let Ok(changed) = tokio::time::timeout(STATE_QUIET, applied.changed()).await {
            if changed.is_err() {
                return Ok(());
            }
        }
    }
}

/// A replica's progress (applied index, epoch) is written to its member node once the log has
/// been quiet this long, so a pause in writes (a switchover holding them) shows at once...
const PROGRESS_QUIET: Duration = Duration::from_millis(50);
/// ...or after this long at the latest while entries keep coming (catch-up, steady load).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// At least this long between two writes to the node: at most a few per second.
const PROGRESS_GAP: Duration = Duration::from_millis(200);

/// Publishes the replica's applied index and epoch in its member node whenever they moved,
/// from registration on: operators see catch-up progress and lag without asking the replica,
/// and a switchover sees its successor caught up. An idle replica writes nothing. A failed
/// publication is retried; it never ends the worker.
#[tracing::instrument(name = "publish_progress", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn publish_progress(
    shared: Arc<Shared>,
    registry: Registry,
    member_path: String,
) -> Result<()> {
    let mut applied = shared.position.subscribe();
    let mut published: Option<Progress> = None;
    loop {
        let position = *applied.borrow_and_update();
        let progress = Progress {
            applied_index: position.index,
            epoch: position.epoch,
            checksum: position.checksum,
        };
        if published != Some(progress) {
            match shared
                .update_member(&registry, &member_path, |m| m.progress = Some(progress))
                .await
            {
                Ok(()) => published = Some(progress),
                Err(e) => tracing::debug!(error = %e, "could not publish progress"),
            }
            tokio::time::sleep(PROGRESS_GAP).await;
            if published != Some(progress) {
                continue;
            }
        }
        if applied.changed().await.is_err() {
            return Ok(());
        }
        // Let a burst settle: quiet for PROGRESS_QUIET, or PROGRESS_EVERY at the latest.
        let latest = tokio::time::Instant::now() + PROGRESS_EVERY;
        loop {
            let until = (tokio::time::Instant::now() + PROGRESS_QUIET).min(latest);
            match tokio::time::timeout_at(until, applied.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Ok(()),
                Err(_) => break,
            }
        }
    }
}

/// Takes part in elections until this worker wins one; returns its epoch and its claim on the
/// master node.
#[tracing::instrument(name = "election", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn elect_self(
    shared: &Shared,
    deps: &WorkerDeps,
    registry: &Registry,
) -> Result<(u64, MasterClaim)> {
    loop {
        let (master, master_changed) = registry.master_watch().await?;
        if master.is_some() {
            master_changed.await;
            continue;
        }
        let (members, members_changed) = registry.members_watch().await?;
        // Only workers that serve stand: one still catching up (installing a snapshot,
        // replaying) would hold the election until it is done.
        let members: Vec<_> = members
            .iter()
            .filter(|m| m.record.catch_up.is_some())
            .map(|m| m.member())
            .collect();
        if elect(&members, None).map(|m| &m.id) == Some(&shared.config.id) {
            if let Some(elected) = try_promote(shared, deps, registry).await? {
                return Ok(elected);
            }
        }
        tokio::select! {
            _ = master_changed => {}
            _ = members_changed => {}
        }
    }
}

/// Takes the master node, draws an epoch, appends the marker and waits until it is applied.
/// `Ok(None)`: another worker took the master node first.
async fn try_promote(
    shared: &Shared,
    deps: &WorkerDeps,
    registry: &Registry,
) -> Result<Option<(u64, MasterClaim)>> {
    let id = shared.config.id.clone();
    let pid = shared.config.pid;
    let record = MasterRecord {
        id: id.clone(),
        pid,
        epoch: 0,
        ready: false,
    };
    let Some(mut claim) = registry.claim_master(&record).await? else {
        return Ok(None);
    };
    // Above every epoch already in the log, even if the coordinator lost its data.
    let applied_epoch = shared.position.borrow().epoch;
    let drawn = registry.next_epoch(applied_epoch + 1).await?;
    let epoch = drawn.number;
    let record = MasterRecord { epoch, ..record };
    registry.set_master(&record, &mut claim).await?;
    shared.store.promote(epoch).await?;
    let marker = LogEntry {
        v: VERSION,
        epoch,
        body: EntryBody::EpochMarker { master: id.clone() },
    };
    tail::append(deps.log.as_ref(), &marker).await?;
    wait_for_marker(shared, epoch).await?;
    registry.prune_epochs(&drawn).await;
    tracing::info!(%id, pid, epoch, "became master");
    Ok(Some((epoch, claim)))
}

/// Applying our own marker means every earlier entry is applied: we hold all acked writes.
async fn wait_for_marker(shared: &Shared, epoch: u64) -> Result<()> {
    let mut position = shared.position.subscribe();
    let bound = shared.config.catch_up_wait;
    let seen = tokio::time::timeout(bound, position.wait_for(|p| p.epoch >= epoch))
        .await
        .is_ok_and(|r| r.is_ok());
    if !seen {
        return Err(Error::Timeout("epoch marker", duration_ms(bound)));
    }
    if shared.position.borrow().epoch > epoch {
        return Err(Error::NotMaster);
    }
    Ok(())
}

/// Marks this master ready in the master node, once it consumes the write queue.
pub(super) async fn announce_ready(
    shared: &Shared,
    registry: &Registry,
    epoch: u64,
    claim: &mut MasterClaim,
) -> Result<()> {
    let ready = MasterRecord {
        id: shared.config.id.clone(),
        pid: shared.config.pid,
        epoch,
        ready: true,
    };
    registry.set_master(&ready, claim).await
}
