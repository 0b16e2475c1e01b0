//! Bounding the log's history: every so often, drops the log entries that every live worker
//! has applied and the oldest kept snapshot covers, so a new worker (which installs a snapshot
//! and replays from its index) never needs them. A log that keeps its own bound (RabbitMQ's
//! stream retention) ignores the call.

use std::sync::Arc;
use std::time::Duration;

use super::Orchestrator;
use crate::snapshot::SnapshotDir;

/// How often the bound is recomputed.
pub const EVERY: Duration = Duration::from_secs(5);

/// The first index the log must keep: one past the smallest of the oldest snapshot's index
/// and every live worker's applied index. `None` while there is no snapshot (everything is
/// needed) or a live worker has not said how far it is.
pub fn keep_from(oldest_snapshot: Option<u64>, applied: &[Option<u64>]) -> Option<u64> {
    let mut bound = oldest_snapshot?;
    for a in applied {
        bound = bound.min((*a)?);
    }
    Some(bound + 1)
}

/// Truncates the log every [`EVERY`] while the orchestrator runs.
pub(super) async fn run(orchestrator: Arc<Orchestrator>, dir: SnapshotDir) {
    let mut kept_from = 1;
    loop {
        tokio::time::sleep(EVERY).await;
        let listing = dir.clone();
        let oldest = match tokio::task::spawn_blocking(move || listing.oldest_index()).await {
            Ok(Ok(oldest)) => oldest,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list snapshots");
                continue;
            }
            Err(_) => return,
        };
        let Ok(members) = orchestrator.members().await else {
            continue;
        };
        let applied: Vec<Option<u64>> = members
            .iter()
            .map(|m| m.record.progress.map(|p| p.applied_index))
            .collect();
        let Some(from) = keep_from(oldest, &applied) else {
            continue;
        };
        if from <= kept_from {
            continue;
        }
        match orchestrator.log.truncate_before(from).await {
            Ok(first) => {
                if first > kept_from {
                    tracing::info!(first, asked = from, "log truncated");
                }
                kept_from = from;
                metrics::gauge!("rideshare_log_first_index").set(first as f64);
            }
            Err(e) => tracing::warn!(error = %e, "log truncation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_from;

    #[test]
    fn keeps_what_the_oldest_snapshot_or_a_lagging_worker_needs() {
        assert_eq!(keep_from(None, &[Some(50)]), None, "no snapshot: keep all");
        assert_eq!(keep_from(Some(40), &[Some(50), Some(60)]), Some(41));
        assert_eq!(keep_from(Some(40), &[Some(30), Some(60)]), Some(31));
        assert_eq!(
            keep_from(Some(40), &[Some(50), None]),
            None,
            "one unknown: keep all"
        );
        assert_eq!(keep_from(Some(40), &[]), Some(41));
    }
}
