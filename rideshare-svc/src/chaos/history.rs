//! Checks on the clients' history alone, beside the checker's (`rideshare_dbaas::checker`):
//! each client's session guarantees (monotonic reads, read-your-writes) and the progress floor
//! (the cluster must do its work outside the fault windows).

use std::collections::BTreeMap;

use rideshare_dbaas::checker::{Completion, Event, Operation};
use serde::Serialize;

/// A client's reads against what that client had seen before them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Sessions {
    /// Reads answered below the index of a read the same client had already been answered at.
    pub non_monotonic: u64,
    /// Reads answered below the index of a write the same client had already seen
    /// acknowledged.
    pub read_your_writes: u64,
    #[serde(skip)]
    pub problems: Vec<String>,
}

/// Each client, in its own order, keeps the highest index it was answered with (its
/// acknowledged writes' `index`, its reads' `applied_index`); a read below what it had seen is
/// a violation. A client runs one operation at a time, so its events are in its own order.
pub fn sessions(events: &[Event]) -> Sessions {
    #[derive(Default)]
    struct Client {
        written: u64,
        read: u64,
    }
    let mut clients: BTreeMap<usize, Client> = BTreeMap::new();
    let mut found = Sessions::default();
    for e in events {
        let client = clients.entry(e.client).or_default();
        match e.completion {
            Completion::Written { index, .. } => client.written = client.written.max(index),
            Completion::Read { applied_index } => {
                if applied_index < client.written {
                    found.read_your_writes += 1;
                    note(&mut found.problems, format!(
                        "client {} read at {} ms answered at index {applied_index}, below its own write acknowledged at {}",
                        e.client, e.invoked_ms, client.written
                    ));
                }
                if applied_index < client.read {
                    found.non_monotonic += 1;
                    note(&mut found.problems, format!(
                        "client {} read at {} ms answered at index {applied_index}, below its earlier read at {}",
                        e.client, e.invoked_ms, client.read
                    ));
                }
                client.read = client.read.max(applied_index);
            }
            Completion::Failed { .. } | Completion::Unknown { .. } => {}
        }
    }
    found
}

fn note(problems: &mut Vec<String>, text: String) {
    if problems.len() < 10 {
        problems.push(text);
    }
}

/// A fault's time span as the schedule saw it: from just before it was injected to when the
/// injection returned (ms since the run's origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    pub start_ms: u64,
    pub injected_ms: u64,
}

/// The progress floor's figures.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Floor {
    /// Operations that neither began nor ended in a fault window, and those of them that
    /// succeeded (a write acknowledged, a read answered).
    pub outside_faults_ops: u64,
    pub outside_faults_ok: u64,
    pub outside_faults_ok_ratio: f64,
    /// The writes among them, on their own: a failed write is retried only after a pause,
    /// so refused writes are fewer in the history than the reads beside them.
    pub outside_faults_writes: u64,
    pub outside_faults_writes_ok: u64,
    pub outside_faults_writes_ok_ratio: f64,
    /// Windows that ended at the recovery bound, not at an acknowledged write: the cluster
    /// took no write for that long after a fault (fails the run).
    pub windows_unrecovered: u64,
    /// Total length of the fault windows, ms.
    pub fault_windows_ms: u64,
}

/// A fault's window runs from its injection to the completion of the first write invoked after
/// the injection returned that was acknowledged (the cluster takes writes again), and at most
/// `recovery_bound_ms` past the injection's return: a cluster that never takes a write again
/// is outside the window from then on, and fails the floor.
///
/// Operations that overlap a window are left out; of the rest, the share that succeeded is
/// the floor's ratio.
pub fn floor(events: &[Event], injections: &[Injection], recovery_bound_ms: u64) -> Floor {
    let mut windows: Vec<(u64, u64)> = Vec::new();
    let mut unrecovered = 0;
    for i in injections {
        let bound = i.injected_ms.saturating_add(recovery_bound_ms);
        let recovered = events
            .iter()
            .filter(|e| {
                e.invoked_ms >= i.injected_ms && matches!(e.completion, Completion::Written { .. })
            })
            .map(|e| e.completed_ms)
            .min();
        let end = match recovered {
            Some(at) if at <= bound => at,
            _ => {
                unrecovered += 1;
                bound
            }
        };
        windows.push((i.start_ms, end));
    }
    let overlaps = |e: &Event| {
        windows
            .iter()
            .any(|&(start, end)| e.invoked_ms <= end && e.completed_ms >= start)
    };
    let outside: Vec<&Event> = events.iter().filter(|e| !overlaps(e)).collect();
    let ok = outside
        .iter()
        .filter(|e| super::clients::succeeded(&e.completion))
        .count() as u64;
    let ops = outside.len() as u64;
    let writes: Vec<&&Event> = outside
        .iter()
        .filter(|e| matches!(e.operation, Operation::Write { .. }))
        .collect();
    let writes_ok = writes
        .iter()
        .filter(|e| matches!(e.completion, Completion::Written { .. }))
        .count() as u64;
    Floor {
        outside_faults_writes: writes.len() as u64,
        outside_faults_writes_ok: writes_ok,
        outside_faults_writes_ok_ratio: ratio(writes_ok, writes.len() as u64),
        outside_faults_ops: ops,
        outside_faults_ok: ok,
        outside_faults_ok_ratio: ratio(ok, ops),
        windows_unrecovered: unrecovered,
        fault_windows_ms: merged_length(windows),
    }
}

impl Floor {
    /// Whether the floor holds: no window ran to the recovery bound, and at least `floor` of
    /// the operations, and of the writes, outside the windows succeeded (none outside: fails).
    pub fn holds(&self, floor: f64) -> bool {
        self.windows_unrecovered == 0
            && self.outside_faults_writes > 0
            && self.outside_faults_ok_ratio >= floor
            && self.outside_faults_writes_ok_ratio >= floor
    }
}

fn ratio(ok: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        ok as f64 / of as f64
    }
}

/// The length of the union of `windows`.
fn merged_length(mut windows: Vec<(u64, u64)>) -> u64 {
    windows.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in windows {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rideshare_core::ops::{ReadOp, RequestId, WriteOp, WriteOutcome};
    use rideshare_core::Username;

    fn read(client: usize, at: u64, applied_index: u64) -> Event {
        Event {
            client,
            operation: Operation::Read {
                op: ReadOp::CountRides,
            },
            invoked_ms: at,
            completed_ms: at + 1,
            completion: Completion::Read { applied_index },
        }
    }

    fn write(client: usize, at: u64, completion: Completion) -> Event {
        Event {
            client,
            operation: Operation::Write {
                request_id: RequestId(format!("r{at}")),
                op: WriteOp::AddUser {
                    username: Username::parse("ann").unwrap_or_else(|_| unreachable!()),
                    password_hash: "h".into(),
                },
            },
            invoked_ms: at,
            completed_ms: at + 1,
            completion,
        }
    }

    fn acked(client: usize, at: u64, index: u64) -> Event {
        write(
            client,
            at,
            Completion::Written {
                index,
                outcome: WriteOutcome::Done,
            },
        )
    }

    fn failed(client: usize, at: u64) -> Event {
        write(
            client,
            at,
            Completion::Failed {
                reason: "503".into(),
            },
        )
    }

    #[test]
    fn a_read_below_what_its_client_saw_is_a_violation() {
        let events = [
            read(0, 0, 5),
            // Another client's view does not bind client 0.
            read(1, 1, 9),
            read(0, 2, 5),
            read(0, 3, 4),
            acked(0, 4, 12),
            read(0, 5, 11),
            read(0, 6, 12),
            read(1, 7, 8),
        ];
        let found = sessions(&events);
        assert_eq!(found.non_monotonic, 2, "{found:?}");
        assert_eq!(found.read_your_writes, 1, "{found:?}");
        assert_eq!(found.problems.len(), 3);
        assert_eq!(
            sessions(&[read(0, 0, 3), acked(0, 1, 4), read(0, 2, 4)]),
            Sessions::default()
        );
    }

    #[test]
    fn a_window_ends_at_the_first_acknowledged_write_after_the_injection() {
        let events = [
            acked(0, 0, 1),
            // In the window: left out.
            failed(0, 100),
            failed(0, 290),
            acked(0, 400, 2),
            failed(0, 500),
            acked(0, 600, 3),
        ];
        let injection = Injection {
            start_ms: 50,
            injected_ms: 300,
        };
        let got = floor(&events, &[injection], 10_000);
        assert_eq!((got.outside_faults_ops, got.outside_faults_ok), (3, 2));
        assert_eq!(got.windows_unrecovered, 0);
        assert_eq!(got.fault_windows_ms, 351);
    }

    #[test]
    fn a_cluster_that_never_takes_a_write_again_fails_the_floor_after_the_bound() {
        let mut events = vec![acked(0, 0, 1)];
        events.extend((1..100).map(|n| failed(0, n * 100)));
        let injection = Injection {
            start_ms: 50,
            injected_ms: 60,
        };
        let got = floor(&events, &[injection], 1_000);
        assert_eq!(got.windows_unrecovered, 1);
        assert!(got.outside_faults_ok_ratio < 0.1, "{got:?}");
        assert!(!got.holds(0.9));
        // Refused writes among answered reads: the reads do not carry the floor.
        let mut mixed = vec![acked(0, 0, 1)];
        mixed.extend((1..100).map(|n| read(0, n * 10, 1)));
        mixed.extend((1..20).map(|n| failed(1, n * 50)));
        let got = floor(&mixed, &[], 1_000);
        assert!(got.outside_faults_ok_ratio > 0.8, "{got:?}");
        assert!(got.outside_faults_writes_ok_ratio < 0.1, "{got:?}");
        assert!(!got.holds(0.8));
        // Without a fault at all, the same history is as bad.
        assert!(floor(&events, &[], 1_000).outside_faults_ok_ratio < 0.1);
    }

    #[test]
    fn overlapping_windows_count_once() {
        assert_eq!(merged_length(vec![(0, 10), (5, 20), (30, 40)]), 30);
        assert_eq!(merged_length(vec![]), 0);
    }
}
