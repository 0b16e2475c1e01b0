//! The supervisor: keeps one master and the target number of slaves running. It compares the
//! runtime's workers with the registered members on every membership or master change and at
//! least every tick: registered but not running is dead (its nodes go at once), running but not
//! registered past the grace period is stuck (killed), and the policy's plan says what to start
//! or stop. The crash endpoints kill through it too.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::api::MemberInfo;
use super::telemetry::Telemetry;
use super::{Orchestrator, OrchestratorConfig};
use crate::error::{Error, Result};
use crate::policy::{reconcile, Member, Plan, Unregistered, Unregistering};
use crate::registry::{Registry, RenewingRegistry};
use crate::runtime::{Runtime, WorkerHandle};

pub(super) struct Supervisor {
    runtime: Arc<dyn Runtime>,
    registry: Arc<RenewingRegistry>,
    telemetry: Arc<Telemetry>,
    /// How often it looks, whatever the watches say.
    every: Duration,
    /// A worker running without a node this long is killed and replaced.
    grace: Duration,
    /// Running workers without a member node (starting, or lost their session).
    unregistered: Mutex<Unregistered>,
    /// One reconcile at a time: two would both start the missing workers.
    reconciling: tokio::sync::Mutex<()>,
}

impl Supervisor {
    pub(super) fn new(
        config: &OrchestratorConfig,
        runtime: Arc<dyn Runtime>,
        registry: Arc<RenewingRegistry>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Supervisor {
            runtime,
            registry,
            telemetry,
            every: config.reconcile_every,
            grace: config.start_grace,
            unregistered: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
        }
    }

    /// How often it looks, whatever the watches say.
    pub(super) fn every(&self) -> Duration {
        self.every
    }

    /// Pids of all running workers, ascending.
    pub(super) async fn worker_pids(&self) -> Result<Vec<u32>> {
        Ok(self
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|w| w.pid)
            .collect())
    }

    /// Kills a worker and removes its nodes at once, rather than waiting for its session to
    /// expire: the orchestrator knows it is dead.
    pub(super) async fn kill_worker(&self, id: &str) -> Result<()> {
        self.runtime.kill(id).await?;
        self.registry.get().forget_worker(id).await;
        Ok(())
    }

    /// `crash/master`: kills the master; the election and the supervisor take it from there.
    pub(super) async fn crash_master(&self) -> Result<u32> {
        let master = self
            .registry
            .get()
            .master()
            .await?
            .ok_or(Error::NotMaster)?;
        self.kill_worker(&master.id).await?;
        self.telemetry.master_lost(&master.id);
        metrics::counter!("rideshare_worker_kills_total", "reason" => "crash_master").increment(1);
        tracing::info!(id = %master.id, pid = master.pid, "crashed the master on request");
        Ok(master.pid)
    }

    /// `crash/slave`: kills the slave with the highest pid.
    pub(super) async fn crash_slave(&self) -> Result<u32> {
        let master = self.registry.get().master().await?.map(|m| m.id);
        let slave = self
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|w| Some(&w.id) != master.as_ref())
            .max_by_key(|w| w.pid)
            .ok_or_else(|| Error::NoWorker("slave".into()))?;
        self.kill_worker(&slave.id).await?;
        metrics::counter!("rideshare_worker_kills_total", "reason" => "crash_slave").increment(1);
        tracing::info!(id = %slave.id, pid = slave.pid, "crashed a slave on request");
        Ok(slave.pid)
    }

    /// One supervision step toward one master and `target` slaves: forget dead workers, kill
    /// stuck ones, start or stop as the policy plans.
    pub(super) async fn reconcile_once(&self, target: u64) -> Result<()> {
        let _one_at_a_time = self.reconciling.lock().await;
        let running = self.runtime.list().await?;
        self.telemetry.seen(&running);
        let registry = self.registry.get();
        let members = self.forget_dead(&registry, &running).await?;
        let unregistered = self.sort_unregistered(&running, &members);
        for id in &unregistered.stuck {
            tracing::warn!(%id, "worker never registered; killing it");
            metrics::counter!("rideshare_worker_kills_total", "reason" => "never_registered")
                .increment(1);
            let _ = self.runtime.kill(id).await;
        }
        let master = registry.master().await?.map(|m| m.id);
        let live: Vec<Member> = members.iter().map(MemberInfo::member).collect();
        let plan = reconcile(
            target,
            &live,
            master.as_deref(),
            unregistered.starting,
            unregistered.launching,
        );
        self.carry_out(plan).await
    }

    /// Registered but not running: dead. Drops their nodes now instead of after the session
    /// timeout. Answers the members that do run.
    async fn forget_dead(
        &self,
        registry: &Registry,
        running: &[WorkerHandle],
    ) -> Result<Vec<MemberInfo>> {
        let runs = |m: &MemberInfo| running.iter().any(|w| w.id == m.record.id);
        let (live, dead): (Vec<MemberInfo>, Vec<MemberInfo>) =
            registry.members().await?.into_iter().partition(runs);
        for dead in dead {
            tracing::info!(id = %dead.record.id, pid = dead.record.pid, "worker died");
            metrics::counter!("rideshare_worker_deaths_total").increment(1);
            self.telemetry.master_lost(&dead.record.id);
            let _ = registry.remove_member(&dead.path).await;
            registry.release_master_of(&dead.record.id).await;
        }
        Ok(live)
    }

    /// Running but not registered: starting, or stuck past the grace period.
    fn sort_unregistered(&self, running: &[WorkerHandle], members: &[MemberInfo]) -> Unregistering {
        let running: Vec<&str> = running.iter().map(|w| w.id.as_str()).collect();
        let registered: Vec<&str> = members.iter().map(|m| m.record.id.as_str()).collect();
        self.unregistered
            .lock()
            .sort(&running, &registered, Instant::now(), self.grace)
    }

    async fn carry_out(&self, plan: Plan) -> Result<()> {
        for id in &plan.stop {
            tracing::info!(%id, "scaling in: stopping a slave");
            metrics::counter!("rideshare_worker_kills_total", "reason" => "scale_in").increment(1);
            self.kill_worker(id).await?;
        }
        for _ in 0..plan.start {
            let handle = self.runtime.start().await?;
            tracing::info!(id = %handle.id, pid = handle.pid, "started a worker");
            metrics::counter!("rideshare_worker_starts_total").increment(1);
            self.unregistered.lock().launched(handle.id, Instant::now());
        }
        Ok(())
    }
}

/// The supervisor's loop: reconciles on every membership or master change and at least every
/// tick, opening a new coordinator session when the last one ended.
pub(super) async fn run(orchestrator: Arc<Orchestrator>) {
    let supervisor = &orchestrator.supervisor;
    let mut master_changes = orchestrator.master_changes.subscribe();
    loop {
        if let Err(e) = supervisor.registry.renew().await {
            tracing::warn!(error = %e, "coordinator unavailable");
        }
        if let Err(e) = orchestrator.reconcile_once().await {
            tracing::warn!(error = %e, "reconcile failed");
        }
        let watch = supervisor.registry.get().members_changed().await;
        let tick = tokio::time::sleep(supervisor.every);
        match watch {
            Ok(changed) => {
                tokio::select! {
                    _ = changed => {}
                    _ = master_changes.changed() => {}
                    _ = tick => {}
                }
            }
            Err(_) => tick.await,
        }
    }
}
