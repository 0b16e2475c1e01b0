//! The scaler: counts client reads in windows; the first read starts the timer, and every
//! window's end sets the slave target from the reads counted in it (the policy's
//! `target_slaves`), stores it in the coordinator so a restarted orchestrator keeps it, and
//! has the supervisor reconcile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::telemetry::Telemetry;
use super::{Orchestrator, OrchestratorConfig};
use crate::error::Result;
use crate::policy::{target_slaves, ScalePolicy};
use crate::registry::RenewingRegistry;

pub(super) struct Scaler {
    policy: ScalePolicy,
    window: Duration,
    /// Reads counted in the current window.
    reads: AtomicU64,
    first_read: Notify,
    target: AtomicU64,
    registry: Arc<RenewingRegistry>,
    telemetry: Arc<Telemetry>,
}

impl Scaler {
    /// Starts from `target` slaves (the stored target, or 1).
    pub(super) fn new(
        config: &OrchestratorConfig,
        target: u64,
        registry: Arc<RenewingRegistry>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Scaler {
            policy: config.policy,
            window: config.scale_window,
            reads: AtomicU64::new(0),
            first_read: Notify::new(),
            target: AtomicU64::new(target.max(1)),
            registry,
            telemetry,
        }
    }

    pub(super) fn policy(&self) -> ScalePolicy {
        self.policy
    }

    pub(super) fn window(&self) -> Duration {
        self.window
    }

    pub(super) fn target(&self) -> u64 {
        self.target.load(Ordering::SeqCst)
    }

    /// Reads counted so far in this window.
    pub(super) fn reads_so_far(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Counts one client read; the first starts the window timer.
    pub(super) fn count_read(&self) {
        if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_read.notify_one();
        }
    }

    /// Ends a window: the new target from its reads, recorded for display and in the
    /// coordinator. Counting starts again at once.
    async fn close_window(&self) {
        let reads = self.reads.swap(0, Ordering::SeqCst);
        self.telemetry.window_started();
        let target = target_slaves(self.policy, reads);
        tracing::info!(reads, target, "scaling window closed");
        self.telemetry.decided(reads, self.target(), target);
        let previous = self.target.swap(target, Ordering::SeqCst);
        if previous != target {
            tracing::info!(from = previous, to = target, "scaling target changed");
        }
        if let Err(e) = self.store_target(target).await {
            tracing::warn!(error = %e, "could not record the scaling target");
        }
    }

    async fn store_target(&self, slaves: u64) -> Result<()> {
        self.registry.get().set_scale_target(slaves).await
    }
}

/// The scaler's loop: waits for the first read, then closes a window every `scale_window`
/// and has the supervisor act on the new target.
pub(super) async fn run(orchestrator: Arc<Orchestrator>) {
    let scaler = &orchestrator.scaler;
    if scaler.reads_so_far() == 0 {
        scaler.first_read.notified().await;
    }
    scaler.telemetry.window_started();
    let mut windows = tokio::time::interval_at(Instant::now() + scaler.window, scaler.window);
    loop {
        windows.tick().await;
        scaler.close_window().await;
        if let Err(e) = orchestrator.reconcile_once().await {
            tracing::warn!(error = %e, "reconcile after scaling failed");
        }
    }
}
