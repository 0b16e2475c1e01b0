//! What the orchestrator remembers for display, and the history of events it saw: the workers'
//! reported progress, when each was first seen, failovers and scaling decisions, totals of
//! answers. Soft: rebuilt empty at restart. It never changes anything in the cluster.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::api::{Decision, Failover, ReadAnswer, Totals, WriteAck};
use super::Orchestrator;
use crate::error::Result;
use crate::protocol::MasterRecord;
use crate::runtime::WorkerHandle;

/// Failovers and scaling decisions kept for display, at most.
const HISTORY: usize = 10;
/// How often the master is looked at besides its watch firing.
const MASTER_POLL: Duration = Duration::from_millis(200);

/// What the orchestrator remembers for display: soft, rebuilt empty at restart.
pub(super) struct Telemetry {
    started: Instant,
    /// The highest applied index each worker has reported in an answer.
    reported: Mutex<HashMap<String, u64>>,
    /// When this orchestrator first saw each running worker.
    first_seen: Mutex<HashMap<String, Instant>>,
    master: Mutex<MasterWatch>,
    failovers: Mutex<VecDeque<Failover>>,
    window: Mutex<Window>,
    writes_acked: AtomicU64,
    writes_failed: AtomicU64,
    reads_answered: AtomicU64,
    reads_failed: AtomicU64,
    pub(super) ready: tokio::sync::Mutex<Option<ReadyAnswer>>,
    /// Set when the HTTP server stops: event streams end, so draining connections can finish.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
    /// Masters this orchestrator killed or found dead: a readiness answer from before is stale.
    pub(super) losses: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: Instant::now(),
            reported: Mutex::default(),
            first_seen: Mutex::default(),
            master: Mutex::default(),
            failovers: Mutex::default(),
            window: Mutex::default(),
            writes_acked: AtomicU64::new(0),
            writes_failed: AtomicU64::new(0),
            reads_answered: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            ready: tokio::sync::Mutex::new(None),
            closing: tokio::sync::watch::channel(false).0,
            losses: AtomicU64::new(0),
        }
    }
}

/// A readiness answer: when, at which master-change count, and what.
pub(super) type ReadyAnswer = (Instant, u64, std::result::Result<(), String>);

#[derive(Default)]
struct MasterWatch {
    /// The ready master last seen: id, pid.
    current: Option<(String, u32)>,
    /// Since when there has been no ready master, and which one was lost.
    lost: Option<(Instant, SystemTime, String, u32)>,
}

#[derive(Default)]
struct Window {
    /// When the current scaling window began (the first read starts the first one).
    started: Option<Instant>,
    decisions: VecDeque<Decision>,
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Telemetry {
    /// A write answered (or not) to a client.
    pub(super) fn written(&self, answer: &Result<WriteAck>) {
        match answer {
            Ok(ack) => {
                self.writes_acked.fetch_add(1, Ordering::Relaxed);
                self.report(&ack.worker, ack.index);
                metrics::counter!("rideshare_db_writes_total", "result" => "acknowledged")
                    .increment(1);
            }
            Err(_) => {
                self.writes_failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rideshare_db_writes_total", "result" => "failed").increment(1);
            }
        }
    }

    /// A read answered (or not) to a client.
    pub(super) fn read(&self, answer: &Result<ReadAnswer>, stale: bool) {
        let consistency = if stale { "stale" } else { "strong" };
        let result = match answer {
            Ok(a) => {
                self.reads_answered.fetch_add(1, Ordering::Relaxed);
                self.report(&a.worker, a.applied_index);
                "answered"
            }
            Err(_) => {
                self.reads_failed.fetch_add(1, Ordering::Relaxed);
                "failed"
            }
        };
        metrics::counter!("rideshare_db_reads_total", "consistency" => consistency, "result" => result)
            .increment(1);
    }

    fn report(&self, worker: &str, index: u64) {
        let mut reported = self.reported.lock();
        let entry = reported.entry(worker.to_owned()).or_default();
        *entry = (*entry).max(index);
    }

    /// Remembers when each running worker was first seen, and forgets the gone ones.
    pub(super) fn seen(&self, running: &[WorkerHandle]) {
        let now = Instant::now();
        let mut first_seen = self.first_seen.lock();
        first_seen.retain(|id, _| running.iter().any(|w| &w.id == id));
        for w in running {
            first_seen.entry(w.id.clone()).or_insert(now);
        }
        self.reported
            .lock()
            .retain(|id, _| running.iter().any(|w| &w.id == id));
    }

    /// A scaling window began (the first read, or the previous window's end).
    pub(super) fn window_started(&self) {
        self.window.lock().started = Some(Instant::now());
    }

    /// A scaling window closed with a decision.
    pub(super) fn decided(&self, reads: u64, from_slaves: u64, to_slaves: u64) {
        let change = match to_slaves.cmp(&from_slaves) {
            std::cmp::Ordering::Greater => "out",
            std::cmp::Ordering::Less => "in",
            std::cmp::Ordering::Equal => "none",
        };
        metrics::counter!("rideshare_scaling_decisions_total", "change" => change).increment(1);
        let mut window = self.window.lock();
        if window.decisions.len() == HISTORY {
            window.decisions.pop_front();
        }
        window.decisions.push_back(Decision {
            at_unix_ms: unix_ms(SystemTime::now()),
            reads,
            from_slaves,
            to_slaves,
        });
    }

    /// The master `id` is gone (killed on request, or found dead): the failover starts now,
    /// even if the next look at the master node already finds its successor.
    pub(super) fn master_lost(&self, id: &str) {
        self.losses.fetch_add(1, Ordering::SeqCst);
        let mut watch = self.master.lock();
        if watch
            .current
            .as_ref()
            .is_some_and(|(current, _)| current == id)
        {
            if let Some((id, pid)) = watch.current.take() {
                watch.lost = Some((Instant::now(), SystemTime::now(), id, pid));
            }
        }
    }

    /// Looks at the master node: a ready master after a lost one is a failover.
    pub(super) fn master_seen(&self, master: Option<&MasterRecord>) {
        let mut watch = self.master.lock();
        match master {
            Some(m) if m.ready => {
                if watch.current.as_ref().is_some_and(|(id, _)| id == &m.id) {
                    return;
                }
                let lost = match watch.lost.take() {
                    Some((since, at, id, pid)) => Some((Some(since.elapsed()), at, id, pid)),
                    // Replaced between two looks: how long it took was not seen.
                    None => watch
                        .current
                        .take()
                        .map(|(id, pid)| (None, SystemTime::now(), id, pid)),
                };
                if let Some(lost) = lost {
                    self.failed_over(lost, m);
                }
                watch.current = Some((m.id.clone(), m.pid));
            }
            _ => {
                if let Some((id, pid)) = watch.current.take() {
                    watch.lost = Some((Instant::now(), SystemTime::now(), id, pid));
                }
            }
        }
    }

    /// A ready master `new` after the loss of the old one (seen `took` before, if seen).
    fn failed_over(
        &self,
        (took, at, old_id, old_pid): (Option<Duration>, SystemTime, String, u32),
        new: &MasterRecord,
    ) {
        metrics::counter!("rideshare_elections_total").increment(1);
        if let Some(took) = took {
            metrics::histogram!("rideshare_election_duration_seconds").record(took.as_secs_f64());
        }
        tracing::info!(
            old_pid,
            new_pid = new.pid,
            epoch = new.epoch,
            ms = took.map(ms),
            "failover complete"
        );
        let mut failovers = self.failovers.lock();
        if failovers.len() == HISTORY {
            failovers.pop_front();
        }
        failovers.push_back(Failover {
            old_id,
            old_pid,
            new_id: new.id.clone(),
            new_pid: new.pid,
            epoch: new.epoch,
            at_unix_ms: unix_ms(at),
            duration_ms: took.map(ms),
        });
    }

    /// Since when this orchestrator runs.
    pub(super) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The highest applied index each worker reported in an answer.
    pub(super) fn reported(&self) -> HashMap<String, u64> {
        self.reported.lock().clone()
    }

    /// When this orchestrator first saw each running worker.
    pub(super) fn first_seen(&self) -> HashMap<String, Instant> {
        self.first_seen.lock().clone()
    }

    /// When the current scaling window began, and the last decisions, oldest first.
    pub(super) fn window(&self) -> (Option<Instant>, Vec<Decision>) {
        let w = self.window.lock();
        (w.started, w.decisions.iter().cloned().collect())
    }

    /// The last failovers, oldest first.
    pub(super) fn failovers(&self) -> Vec<Failover> {
        self.failovers.lock().iter().cloned().collect()
    }

    pub(super) fn totals(&self) -> Totals {
        Totals {
            writes_acked: self.writes_acked.load(Ordering::Relaxed),
            writes_failed: self.writes_failed.load(Ordering::Relaxed),
            reads_answered: self.reads_answered.load(Ordering::Relaxed),
            reads_failed: self.reads_failed.load(Ordering::Relaxed),
        }
    }
}

/// Keeps the telemetry's view of the master current: on every change of the master node, and
/// every `MASTER_POLL` in case a change happened between two watches.
pub(super) async fn follow_master(orchestrator: Arc<Orchestrator>) {
    let mut changes = orchestrator.master_changes.subscribe();
    loop {
        if let Ok(master) = orchestrator.master().await {
            orchestrator.telemetry.master_seen(master.as_ref());
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(MASTER_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(id: &str, pid: u32, ready: bool) -> MasterRecord {
        MasterRecord {
            id: id.into(),
            pid,
            epoch: 3,
            ready,
        }
    }

    #[test]
    fn a_lost_master_then_a_ready_one_is_one_failover() {
        let t = Telemetry::default();
        t.master_seen(Some(&master("a", 10, true)));
        assert!(
            t.failovers.lock().is_empty(),
            "the first master is no failover"
        );
        t.master_seen(None);
        t.master_seen(Some(&master("b", 11, false)));
        t.master_seen(Some(&master("b", 11, true)));
        t.master_seen(Some(&master("b", 11, true)));
        let failovers = t.failovers.lock();
        assert_eq!(failovers.len(), 1);
        assert_eq!((failovers[0].old_pid, failovers[0].new_pid), (10, 11));
        assert!(failovers[0].duration_ms.is_some());
    }

    #[test]
    fn a_master_crashed_on_request_is_timed_even_if_its_successor_is_seen_first() {
        let t = Telemetry::default();
        t.master_seen(Some(&master("a", 10, true)));
        t.master_lost("a");
        t.master_seen(Some(&master("b", 11, true)));
        t.master_seen(Some(&master("c", 12, true)));
        let failovers = t.failovers.lock();
        assert_eq!(failovers.len(), 2);
        assert!(failovers[0].duration_ms.is_some(), "timed from the crash");
        assert_eq!(failovers[1].duration_ms, None, "the gap was not seen");
    }
}
