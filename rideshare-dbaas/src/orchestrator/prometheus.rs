//! The orchestrator's Prometheus figures: the counters and histograms it keeps as things
//! happen (described here), and the gauges computed from the cluster's status at scrape time.

use std::collections::BTreeMap;

use rideshare_core::api::observe::gauge_family;

use super::api::{ClusterStatus, ShownRole, WorkerState, WorkerStatus};

/// Installs the process's Prometheus registry if need be, and describes the orchestrator's
/// counters and histograms in it.
pub(super) fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    rideshare_core::api::observe::metrics_handle();
    describe_counter!(
        "rideshare_db_writes_total",
        "Database writes answered to clients: acknowledged (durable and applied) or failed."
    );
    describe_counter!(
        "rideshare_db_reads_total",
        "Database reads answered to clients, by consistency (strong, stale) and result."
    );
    describe_counter!(
        "rideshare_elections_total",
        "Master changes seen by this orchestrator (a ready master after the previous one was lost)."
    );
    describe_histogram!(
        "rideshare_election_duration_seconds",
        Unit::Seconds,
        "From the old master seen gone to the new master ready for writes."
    );
    describe_counter!(
        "rideshare_worker_starts_total",
        "Workers started by this orchestrator (at start, to replace dead ones, to scale out)."
    );
    describe_counter!(
        "rideshare_worker_deaths_total",
        "Registered workers found no longer running (crashed, killed, or stopped on their own)."
    );
    describe_counter!(
        "rideshare_worker_kills_total",
        "Workers killed by this orchestrator, by reason."
    );
    describe_counter!(
        "rideshare_switchovers_total",
        "Planned hand-overs of the master role, by result (done, failed)."
    );
    describe_counter!(
        "rideshare_scaling_decisions_total",
        "Scaling windows closed, by change of the slave target (out, in, none)."
    );
}

/// A gauge per worker: name, help, and the value a worker shows (none: no sample).
type PerWorker = (&'static str, &'static str, fn(&WorkerStatus) -> Option<f64>);

/// The per-worker gauges, in the order they are written.
const PER_WORKER: &[PerWorker] = &[
    (
        "rideshare_worker_is_master",
        "1 for the worker that is master, 0 for the others.",
        |w| {
            Some(if w.role == ShownRole::Master {
                1.0
            } else {
                0.0
            })
        },
    ),
    (
        "rideshare_worker_epoch",
        "The newest epoch marker the worker has applied.",
        |w| w.epoch.map(|e| e as f64),
    ),
    (
        "rideshare_worker_applied_index",
        "The highest write-log index the worker is known to have applied.",
        |w| w.applied_index.map(|i| i as f64),
    ),
    (
        "rideshare_worker_lag_entries",
        "Acknowledged index minus the worker's applied index.",
        |w| w.lag.map(|l| l as f64),
    ),
    (
        "rideshare_worker_uptime_seconds",
        "Seconds since this orchestrator first saw the worker running.",
        |w| Some(w.uptime_s),
    ),
    (
        "rideshare_worker_catch_up_entries",
        "Log entries the worker replayed at start before serving.",
        |w| w.catch_up_entries.map(|e| e as f64),
    ),
    (
        "rideshare_worker_catch_up_seconds",
        "How long the worker's catch-up at start took.",
        |w| w.catch_up_ms.map(|m| m as f64 / 1e3),
    ),
];

fn worker_labels(w: &WorkerStatus) -> Vec<(&'static str, String)> {
    vec![("worker", w.id.clone()), ("pid", w.pid.to_string())]
}

fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::CatchingUp => "catching_up",
        WorkerState::Serving => "serving",
    }
}

fn role_name(role: ShownRole) -> &'static str {
    match role {
        ShownRole::Master => "master",
        ShownRole::Slave => "slave",
        ShownRole::None => "none",
    }
}

/// One unlabelled gauge.
fn single(name: &str, help: &str, value: f64) -> String {
    gauge_family(name, help, &[(vec![], value)])
}

/// The cluster's figures in Prometheus text: one series per live worker, none left behind by
/// gone ones.
pub fn scrape_text(status: &ClusterStatus) -> String {
    let mut out = cluster_gauges(status);
    out += &worker_gauges(&status.workers);
    out += &scaling_gauges(status);
    out
}

/// The master and the acknowledged index.
fn cluster_gauges(status: &ClusterStatus) -> String {
    let master_ready = status.master.as_ref().is_some_and(|m| m.ready);
    let mut out = single(
        "rideshare_master_up",
        "1 when a master is ready for writes, 0 during an election.",
        if master_ready { 1.0 } else { 0.0 },
    );
    out += &single(
        "rideshare_master_epoch",
        "The current master's epoch (0 while it takes over).",
        status.master.as_ref().map_or(0.0, |m| m.epoch as f64),
    );
    out += &single(
        "rideshare_acked_index",
        "The highest write-log index acknowledged to a client.",
        status.acked_index as f64,
    );
    out
}

/// Workers by state, then one series per worker and gauge.
fn worker_gauges(workers: &[WorkerStatus]) -> String {
    let mut by_state: BTreeMap<&str, f64> =
        [("starting", 0.0), ("catching_up", 0.0), ("serving", 0.0)].into();
    for w in workers {
        *by_state.entry(state_name(w.state)).or_default() += 1.0;
    }
    let by_state: Vec<_> = by_state
        .iter()
        .map(|(state, n)| (vec![("state", (*state).to_owned())], *n))
        .collect();
    let mut out = gauge_family("rideshare_workers", "Running workers by state.", &by_state);
    let info: Vec<_> = workers
        .iter()
        .map(|w| {
            let mut labels = worker_labels(w);
            labels.push(("role", role_name(w.role).to_owned()));
            labels.push(("state", state_name(w.state).to_owned()));
            (labels, 1.0)
        })
        .collect();
    out += &gauge_family(
        "rideshare_worker_info",
        "1 per running worker, with its role and state.",
        &info,
    );
    for (name, help, value) in PER_WORKER {
        let samples: Vec<_> = workers
            .iter()
            .filter_map(|w| value(w).map(|v| (worker_labels(w), v)))
            .collect();
        out += &gauge_family(name, help, &samples);
    }
    out
}

/// The scaler's window and the calls waiting.
fn scaling_gauges(status: &ClusterStatus) -> String {
    let mut out = single(
        "rideshare_scale_window_reads",
        "Reads counted so far in the current scaling window.",
        status.scaling.reads as f64,
    );
    out += &single(
        "rideshare_scale_target_slaves",
        "The number of slaves the scaler asks for.",
        status.scaling.target_slaves as f64,
    );
    out += &single(
        "rideshare_scale_next_decision_seconds",
        "Seconds until the current scaling window closes (-1 before the first read).",
        status.scaling.next_decision_s.unwrap_or(-1.0),
    );
    out += &single(
        "rideshare_db_calls_waiting",
        "Reads and writes waiting for a worker's answer now.",
        status.calls_waiting as f64,
    );
    out
}
