//! The run's figures: what the fault schedule recorded, the checker's verdict, the JSON output
//! and the final verdict.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rideshare_dbaas::checker::{Completion, Event, Verdict};
use rideshare_dbaas::protocol::{CatchUp, MemberRecord};
use serde::Serialize;

use super::check::Checked;
use super::faults::{Fault, Injected};

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
    pub replicas_checked: usize,
    pub faults: BTreeMap<String, u32>,
    pub duration_s: u64,
}

/// What the fault schedule saw, for the figures.
#[derive(Debug, Default)]
pub struct Record {
    /// Injected faults by kind (`CrashMaster`, ...): refused ones are not counted.
    pub injected: BTreeMap<String, u32>,
    /// When (ms since the run's origin) each fault that took the master away began.
    pub failover_starts: Vec<u64>,
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
    pub fn note_injected(&mut self, fault: Fault, at_ms: u64, injected: &Injected) {
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

pub fn figures(events: &[Event], checked: Checked, mut record: Record, run: Duration) -> Figures {
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
        passed: checked.verdict.passed(),
        verdict: checked.verdict,
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
        replicas_checked: checked.replicas_checked,
        faults: record.injected,
        duration_s: run.as_secs(),
    }
}

/// Prints the figures, and writes them as JSON to `json` if asked.
pub fn publish(figures: &Figures, json: Option<&Path>) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(figures)?);
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
            "the checker found violations: {:?}",
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
    use rideshare_core::ops::{ReadOp, WriteOutcome};
    use rideshare_dbaas::checker::Operation;

    use super::*;

    fn event(invoked_ms: u64, completed_ms: u64, completion: Completion) -> Event {
        Event {
            client: 0,
            operation: Operation::Read {
                op: ReadOp::CountRides,
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

    #[test]
    fn refused_faults_are_missing_from_the_verdict() {
        let mut record = Record::default();
        record.note_injected(Fault::CrashMaster, 10, &Injected::CrashedMaster { pid: 7 });
        let checked = Checked {
            verdict: Verdict::default(),
            log_entries: 0,
            epochs: 0,
            replicas_checked: 0,
            reference_replay_entries_per_s: 0,
        };
        let figures = figures(&[], checked, record, Duration::from_secs(1));
        assert!(verdict(&figures, &[Fault::CrashMaster]).is_ok());
        let missing = verdict(&figures, &[Fault::CrashMaster, Fault::PauseMaster]);
        assert!(missing.is_err_and(|e| e.to_string().contains("PauseMaster")));
    }
}
