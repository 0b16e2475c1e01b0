//! The run's figures: what the fault schedule recorded, the checker's verdict, the JSON output
//! and the final verdict.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rideshare_dbaas::checker::{Completion, Event, Verdict};
use rideshare_dbaas::protocol::{CatchUp, MemberRecord};
use serde::Serialize;

use super::check::{Checked, Replicas};
use super::faults::{Fault, Injected};
use super::history::{self, Floor, Injection, Sessions};

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub passed: bool,
    /// lost, duplicated, stale_reads, replica_mismatches, ops_ok/failed/unknown, problems.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub failover_ms_p50: u64,
    pub failover_ms_p99: u64,
    pub failover_ms_max: u64,
    pub failovers: usize,
    pub replacement_ms_p50: u64,
    pub replacement_ms_max: u64,
    /// Workers' own catch-up at start (log entries applied before serving, per second of it),
    /// over every worker seen with something to catch up.
    pub catch_up_entries_per_s: u64,
    pub catch_up_ms_max: u64,
    pub catch_ups: usize,
    /// Workers seen that started from a snapshot (installed it, then replayed the tail).
    pub snapshot_installs: usize,
    /// The newest snapshot index a worker was seen installed from or writing.
    pub newest_snapshot_index: u64,
    /// The checker's reference replay of the whole stream into a fresh SQLite store.
    pub reference_replay_entries_per_s: u64,
    pub log_entries: u64,
    pub epochs: u64,
    /// Every replica seen during the run: digests compared with the replay at their index.
    /// Nested, not flattened: the checker's verdict may carry fields of the same names.
    pub replicas: Replicas,
    /// Each client's reads against what it had seen before.
    pub sessions: Sessions,
    /// Operations outside the fault windows, and the floor their success ratio must reach.
    pub progress: Progress,
    pub faults: BTreeMap<String, u32>,
    pub duration_s: u64,
}

/// The progress floor's figures and the floor itself.
#[derive(Debug, Serialize)]
pub struct Progress {
    #[serde(flatten)]
    pub floor: Floor,
    pub progress_floor: f64,
}

/// What the fault schedule saw, for the figures.
#[derive(Debug, Default)]
pub struct Record {
    /// Injected faults by kind (`CrashMaster`, ...): refused ones are not counted.
    pub injected: BTreeMap<String, u32>,
    /// When (ms since the run's origin) each fault that took the master away began.
    pub failover_starts: Vec<u64>,
    /// Every injected fault's span, for the progress floor's windows.
    pub injections: Vec<Injection>,
    /// How long each crashed slave took to be replaced, in ms.
    pub replacements: Vec<u64>,
    /// Every worker seen with its catch-up at start, by id.
    pub catch_ups: BTreeMap<String, CatchUp>,
    /// Workers seen installed from a snapshot, by id.
    pub installs: std::collections::BTreeSet<String>,
    pub newest_snapshot: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Record {
    pub fn note_injected(&mut self, fault: Fault, span: Injection, injected: &Injected) {
        let at_ms = span.start_ms;
        self.injections.push(span);
        *self.injected.entry(format!("{fault:?}")).or_default() += 1;
        if injected.starts_failover() {
            self.failover_starts.push(at_ms);
        }
        if let Some(took) = injected.replacement() {
            self.replacements.push(ms(took));
        }
    }

    pub fn note_catch_ups(&mut self, members: &[MemberRecord]) {
        for m in members {
            if let Some(c) = m.catch_up {
                self.catch_ups.insert(m.id.clone(), c);
            }
            if let Some(snapshots) = m.snapshots {
                if snapshots.installed.is_some() {
                    self.installs.insert(m.id.clone());
                }
                let newest = snapshots.installed.into_iter().chain(snapshots.taken).max();
                self.newest_snapshot = self.newest_snapshot.max(newest.unwrap_or(0));
            }
        }
    }
}

/// From each failover's start to the first write invoked after it and acknowledged.
fn failovers(starts: &[u64], events: &[Event]) -> Vec<u64> {
    let mut failovers: Vec<u64> = starts
        .iter()
        .filter_map(|&t| {
            events
                .iter()
                .filter(|e| e.invoked_ms >= t && matches!(e.completion, Completion::Written { .. }))
                .map(|e| e.completed_ms - t)
                .min()
        })
        .collect();
    failovers.sort_unstable();
    failovers
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the figures are held against.
pub struct Bounds {
    /// The share of operations outside fault windows that must succeed.
    pub progress_floor: f64,
    /// A fault window ends at most this long after its injection returned.
    pub recovery_bound: Duration,
}

pub fn figures(
    events: &[Event],
    checked: Checked,
    mut record: Record,
    bounds: &Bounds,
    run: Duration,
) -> Figures {
    let sessions = history::sessions(events);
    let floor = history::floor(events, &record.injections, ms(bounds.recovery_bound));
    let mut verdict = checked.verdict;
    verdict.problems.extend(sessions.problems.iter().cloned());
    let floor_held = floor.holds(bounds.progress_floor);
    if !floor_held {
        verdict.problems.push(format!(
            "progress floor: {} of {} operations ({:.3}) and {} of {} writes ({:.3}) outside fault \
             windows succeeded (floor {}); {} fault windows without an acknowledged write within {:?}",
            floor.outside_faults_ok,
            floor.outside_faults_ops,
            floor.outside_faults_ok_ratio,
            floor.outside_faults_writes_ok,
            floor.outside_faults_writes,
            floor.outside_faults_writes_ok_ratio,
            bounds.progress_floor,
            floor.windows_unrecovered,
            bounds.recovery_bound
        ));
    }
    if checked.replicas.replicas_checked == 0 {
        verdict
            .problems
            .push("no replica's digest was compared with the log".into());
    }
    let passed = verdict.passed()
        && checked.replicas.replicas_checked > 0
        && sessions.non_monotonic == 0
        && sessions.read_your_writes == 0
        && floor_held;
    let failovers = failovers(&record.failover_starts, events);
    record.replacements.sort_unstable();
    let replacements = &record.replacements;
    let caught_up: Vec<&CatchUp> = record
        .catch_ups
        .values()
        .filter(|c| c.entries > 0)
        .collect();
    let entries: u64 = caught_up.iter().map(|c| c.entries).sum();
    let took_ms: u64 = caught_up.iter().map(|c| c.ms).sum();
    Figures {
        passed,
        verdict,
        failover_ms_p50: percentile(&failovers, 50.0),
        failover_ms_p99: percentile(&failovers, 99.0),
        failover_ms_max: failovers.last().copied().unwrap_or(0),
        failovers: failovers.len(),
        replacement_ms_p50: percentile(replacements, 50.0),
        replacement_ms_max: replacements.last().copied().unwrap_or(0),
        catch_up_entries_per_s: (entries as f64 * 1000.0 / took_ms.max(1) as f64) as u64,
        catch_up_ms_max: caught_up.iter().map(|c| c.ms).max().unwrap_or(0),
        catch_ups: caught_up.len(),
        snapshot_installs: record.installs.len(),
        newest_snapshot_index: record.newest_snapshot,
        reference_replay_entries_per_s: checked.reference_replay_entries_per_s,
        log_entries: checked.log_entries,
        epochs: checked.epochs,
        replicas: checked.replicas,
        sessions,
        progress: Progress {
            floor,
            progress_floor: bounds.progress_floor,
        },
        faults: record.injected,
        duration_s: run.as_secs(),
    }
}

/// Prints the figures, and writes them as JSON to `json` if asked.
pub fn publish(figures: &Figures, json: Option<&Path>) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(figures)?);
    let (r, s, p) = (
        &figures.replicas,
        &figures.sessions,
        &figures.progress.floor,
    );
    println!(
        "chaos: replicas_checked {} ({} digests; {} replica mismatches, the quiet ones included); \
         non_monotonic {}, read_your_writes {}; {} of {} operations outside fault windows ok \
         ({:.4}, floor {})",
        r.replicas_checked,
        r.replica_digests_checked,
        figures.verdict.replica_mismatches,
        s.non_monotonic,
        s.read_your_writes,
        p.outside_faults_ok,
        p.outside_faults_ops,
        p.outside_faults_ok_ratio,
        figures.progress.progress_floor
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(figures)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Passes when the checker found nothing and every fault asked for was injected at least once.
pub fn verdict(figures: &Figures, asked: &[Fault]) -> anyhow::Result<()> {
    if !figures.passed {
        bail!(
            "the checks found violations: {:?}",
            figures.verdict.problems
        );
    }
    let missing: Vec<String> = asked
        .iter()
        .map(|f| format!("{f:?}"))
        .filter(|f| !figures.faults.contains_key(f))
        .collect();
    if !missing.is_empty() {
        bail!("--duration too short: these faults were never injected: {missing:?}");
    }
    println!("chaos: passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use rideshare_core::ops::{ReadOp, RequestId, WriteOp, WriteOutcome};
    use rideshare_core::RideId;
    use rideshare_dbaas::checker::Operation;

    use super::*;

    /// A write if `completion` is `Written` or `Failed`, else a read.
    fn event(invoked_ms: u64, completed_ms: u64, completion: Completion) -> Event {
        let write = matches!(
            completion,
            Completion::Written { .. } | Completion::Failed { .. }
        );
        Event {
            client: 0,
            operation: if write {
                Operation::Write {
                    request_id: RequestId(format!("r{invoked_ms}")),
                    op: WriteOp::DeleteRide { ride_id: RideId(1) },
                }
            } else {
                Operation::Read {
                    op: ReadOp::CountRides,
                }
            },
            invoked_ms,
            completed_ms,
            completion,
        }
    }

    fn written() -> Completion {
        Completion::Written {
            index: 1,
            outcome: WriteOutcome::Done,
        }
    }

    #[test]
    fn a_failover_ends_at_the_first_write_invoked_after_it_and_acknowledged() {
        let events = [
            // Invoked before the fault: does not count, however late it completes.
            event(90, 150, written()),
            event(110, 900, Completion::Unknown { reason: "x".into() }),
            event(120, 700, written()),
            event(130, 400, written()),
        ];
        assert_eq!(failovers(&[100], &events), vec![300]);
        // No acknowledged write after it: no failover figure.
        assert!(failovers(&[1_000], &events).is_empty());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&sorted, 50.0), 5);
        assert_eq!(percentile(&sorted, 99.0), 10);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    fn checked(replicas_checked: usize) -> Checked {
        Checked {
            verdict: Verdict::default(),
            log_entries: 0,
            epochs: 0,
            reference_replay_entries_per_s: 0,
            replicas: Replicas {
                replicas_checked,
                ..Replicas::default()
            },
        }
    }

    const BOUNDS: Bounds = Bounds {
        progress_floor: 0.9,
        recovery_bound: Duration::from_secs(15),
    };

    fn span(start_ms: u64) -> Injection {
        Injection {
            start_ms,
            injected_ms: start_ms,
        }
    }

    #[test]
    fn refused_faults_are_missing_from_the_verdict() {
        let mut record = Record::default();
        record.note_injected(
            Fault::CrashMaster,
            span(10),
            &Injected::CrashedMaster { pid: 7 },
        );
        let events = [event(0, 5, written()), event(20, 30, written())];
        let figures = figures(&events, checked(1), record, &BOUNDS, Duration::from_secs(1));
        assert!(verdict(&figures, &[Fault::CrashMaster]).is_ok());
        let missing = verdict(&figures, &[Fault::CrashMaster, Fault::PauseMaster]);
        assert!(missing.is_err_and(|e| e.to_string().contains("PauseMaster")));
    }

    #[test]
    fn no_replica_checked_or_no_progress_fails_the_run() {
        let events = [event(0, 5, written())];
        let none = figures(
            &events,
            checked(0),
            Record::default(),
            &BOUNDS,
            Duration::ZERO,
        );
        assert!(!none.passed);
        assert!(verdict(&none, &[]).is_err_and(|e| e.to_string().contains("no replica")));
        // Writes refused all along: the reads alone are half the operations.
        let refused: Vec<Event> = (0..100)
            .map(|n| {
                let failed = Completion::Failed {
                    reason: "503".into(),
                };
                event(
                    n * 10,
                    n * 10 + 1,
                    if n % 2 == 0 { failed } else { written() },
                )
            })
            .collect();
        let stuck = figures(
            &refused,
            checked(1),
            Record::default(),
            &BOUNDS,
            Duration::ZERO,
        );
        assert!(!stuck.passed);
        assert!(verdict(&stuck, &[]).is_err_and(|e| e.to_string().contains("progress floor")));
        let empty = figures(&[], checked(1), Record::default(), &BOUNDS, Duration::ZERO);
        assert!(!empty.passed, "no operation outside faults proves nothing");
    }
}
