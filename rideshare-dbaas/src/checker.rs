//! The history checker: what clients saw, held against the log every replica applies.
//!
//! A client records each operation as invoked, then ok / fail / unknown, with times. After the
//! run the log is replayed with the replicas' rules (newest epoch marker wins, writes of older
//! epochs are skipped, request ids apply once) into a reference store, and [`check`] reports:
//! - `lost`: a write acknowledged to a client that the log does not apply, or applies with
//!   another outcome than the one acknowledged;
//! - `duplicated`: a request id the log applies freshly more than once;
//! - `stale_reads`: a read answered from a state older than a write acknowledged before the read
//!   was invoked;
//! - `replica_mismatches`: a replica at the log's end whose state differs from the reference
//!   (this also covers writes of unknown outcome: present or absent, but alike everywhere);
//! - `fenced_applied`: a write of a deposed master (written under an older epoch than a marker
//!   before it in the log) that the replay applied. The replay goes through the replica core, so
//!   this is the guarantee fencing must give, watched from outside the core: a broken core that
//!   applies such an entry agrees with the replicas and would pass every other check.

use std::collections::BTreeMap;

use rideshare_core::machine::{Applied, StateMachine, Store};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use serde::Serialize;

use crate::error::Result;
use crate::log::Record;
use crate::protocol::{decode_versioned, EntryBody, LogEntry};
use crate::replica::{ReplicaCore, Step};

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Completion {
    /// A write acknowledged at this log index with this outcome.
    Written { index: u64, outcome: WriteOutcome },
    /// A read answered by a replica that had applied `applied_index`.
    Read { applied_index: u64 },
    /// Definitely not done (refused before anything was sent).
    Failed { reason: String },
    /// May or may not have happened (timed out, connection lost).
    Unknown { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    Write { request_id: RequestId, op: WriteOp },
    Read { op: ReadOp },
}

/// One operation of one client: invoked at `invoked_ms`, completed at `completed_ms` (ms since
/// the start of the run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub client: usize,
    pub operation: Operation,
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub completion: Completion,
}

/// The reference state of the log, and what applying it did.
pub struct Replay<S> {
    pub machine: StateMachine<S>,
    /// The index of the last entry replayed.
    pub end: u64,
    /// Fresh applications per request id (more than one is a double application).
    pub fresh: BTreeMap<RequestId, u32>,
    /// The outcome each request id got when it was applied.
    pub outcomes: BTreeMap<RequestId, (u64, WriteOutcome)>,
    pub epochs: u64,
    /// Writes found after a marker of a newer epoch than their own (a deposed master's late
    /// appends), and the indexes of those among them that the replay applied.
    pub fenced_entries: u64,
    pub fenced_applied: Vec<u64>,
    /// The newest epoch marker seen, read from the entries themselves rather than the core.
    newest_marker: u64,
    core: ReplicaCore,
}

impl<S: Store> Replay<S> {
    pub fn new(store: S) -> Self {
        Replay {
            machine: StateMachine::new(store),
            end: 0,
            fresh: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            epochs: 0,
            fenced_entries: 0,
            fenced_applied: Vec::new(),
            newest_marker: 0,
            core: ReplicaCore::default(),
        }
    }

    /// Applies one log record by the replicas' own rule (the replica core, as a follower).
    pub fn apply(&mut self, record: &Record) -> Result<()> {
        self.end = record.index;
        let (step, _) = self.core.step(record);
        self.epochs = self.core.epoch();
        let stale = self.watch_epochs(record);
        if stale && matches!(step, Step::Apply { .. }) {
            self.fenced_applied.push(record.index);
        }
        match step {
            Step::Apply {
                index,
                request_id,
                op,
                ..
            } => {
                if let Applied::Fresh(outcome) = self.machine.apply(index, &request_id, &op)? {
                    *self.fresh.entry(request_id.clone()).or_default() += 1;
                    self.outcomes.insert(request_id, (index, outcome));
                }
            }
            Step::Skip { index, .. } => self.machine.skip(index)?,
        }
        Ok(())
    }

    /// Notes the epoch of a marker, and whether a write is older than the newest marker so far.
    fn watch_epochs(&mut self, record: &Record) -> bool {
        let Ok(entry) = decode_versioned::<LogEntry>(&record.data) else {
            return false;
        };
        match entry.body {
            EntryBody::EpochMarker { .. } => {
                self.newest_marker = self.newest_marker.max(entry.epoch);
                false
            }
            EntryBody::Write { .. } => {
                let stale = entry.epoch < self.newest_marker;
                self.fenced_entries += u64::from(stale);
                stale
            }
        }
    }

    /// The reference state's checksum.
    pub fn checksum(&mut self) -> Result<u64> {
        match self.machine.read(&ReadOp::Checksum)? {
            ReadOutcome::Checksum { checksum, .. } => Ok(checksum),
            _ => Ok(0),
        }
    }
}

/// A replica's state as it reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaState {
    pub worker: String,
    pub applied_index: u64,
    pub checksum: u64,
}

/// The checker's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub lost: u64,
    pub duplicated: u64,
    pub stale_reads: u64,
    pub replica_mismatches: u64,
    /// Writes of a deposed master that the replay applied (fencing broken).
    pub fenced_applied: u64,
    /// Writes of a deposed master found in the log (all of them must be fenced off).
    pub fenced_entries: u64,
    /// Replicas that had not applied the whole log when checked (once quiet, none may be).
    pub replicas_behind: u64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_unknown: u64,
    /// Writes of unknown outcome that the log applied / did not apply.
    pub unknown_applied: u64,
    pub unknown_absent: u64,
    /// The first problems found, for people.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.stale_reads == 0
            && self.replica_mismatches == 0
            && self.fenced_applied == 0
            && self.replicas_behind == 0
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 20 {
            self.problems.push(text);
        }
    }
}

/// Checks a history against a replay of the whole log and the replicas' reported states.
pub fn check<S: Store>(
    events: &[Event],
    replay: &mut Replay<S>,
    replicas: &[ReplicaState],
) -> Result<Verdict> {
    let mut verdict = Verdict::default();
    let acks = check_writes(events, replay, &mut verdict);
    check_fencing(replay, &mut verdict);
    check_reads(events, acks, &mut verdict);
    let want = replay.checksum()?;
    check_replicas(replicas, replay.end, want, &mut verdict);
    Ok(verdict)
}

/// Lost and doubled writes, and the counts of outcomes; returns the acknowledged writes as
/// (completion time, index), to find what a read must see.
fn check_writes<S: Store>(
    events: &[Event],
    replay: &Replay<S>,
    verdict: &mut Verdict,
) -> Vec<(u64, u64)> {
    let mut acks: Vec<(u64, u64)> = Vec::new();
    for event in events {
        match (&event.operation, &event.completion) {
            (Operation::Write { request_id, op }, Completion::Written { index, outcome }) => {
                verdict.ops_ok += 1;
                acks.push((event.completed_ms, *index));
                match replay.outcomes.get(request_id) {
                    None => {
                        verdict.lost += 1;
                        verdict.problem(format!(
                            "acknowledged write {request_id} ({op:?}) is not in the log"
                        ));
                    }
                    Some((_, applied)) if applied != outcome => {
                        verdict.lost += 1;
                        verdict.problem(format!(
                            "write {request_id} was acknowledged as {outcome:?}, the log gives {applied:?}"
                        ));
                    }
                    Some(_) => {}
                }
            }
            (Operation::Write { request_id, .. }, Completion::Unknown { .. }) => {
                verdict.ops_unknown += 1;
                if replay.outcomes.contains_key(request_id) {
                    verdict.unknown_applied += 1;
                } else {
                    verdict.unknown_absent += 1;
                }
            }
            (_, Completion::Unknown { .. }) => verdict.ops_unknown += 1,
            (_, Completion::Failed { .. }) => verdict.ops_failed += 1,
            (_, _) => verdict.ops_ok += 1,
        }
    }
    for (request_id, n) in &replay.fresh {
        if *n > 1 {
            verdict.duplicated += 1;
            verdict.problem(format!("write {request_id} was applied {n} times"));
        }
    }
    acks
}

/// A deposed master's write that the replay applied.
fn check_fencing<S: Store>(replay: &Replay<S>, verdict: &mut Verdict) {
    verdict.fenced_entries = replay.fenced_entries;
    for index in &replay.fenced_applied {
        verdict.fenced_applied += 1;
        verdict.problem(format!(
            "index {index} holds a deposed master's write (older epoch than a marker before it) and was applied"
        ));
    }
}

/// Stale reads: a read answered below an index acknowledged before it was invoked.
fn check_reads(events: &[Event], mut acks: Vec<(u64, u64)>, verdict: &mut Verdict) {
    acks.sort_unstable();
    // Highest index acknowledged by each completion time, for a binary search per read.
    let mut running_max = 0;
    let acked_by: Vec<(u64, u64)> = acks
        .iter()
        .map(|(at, index)| {
            running_max = running_max.max(*index);
            (*at, running_max)
        })
        .collect();
    for event in events {
        if let Completion::Read { applied_index } = event.completion {
            let before = acked_by.partition_point(|(at, _)| *at < event.invoked_ms);
            let must_see = if before == 0 {
                0
            } else {
                acked_by[before - 1].1
            };
            if applied_index < must_see {
                verdict.stale_reads += 1;
                verdict.problem(format!(
                    "read by client {} at {} ms answered at index {applied_index}; index {must_see} was acknowledged before it began",
                    event.client, event.invoked_ms
                ));
            }
        }
    }
}

/// Replicas short of the log, or whose state differs from the replay's (`want`).
fn check_replicas(replicas: &[ReplicaState], end: u64, want: u64, verdict: &mut Verdict) {
    for replica in replicas {
        if replica.applied_index < end {
            verdict.replicas_behind += 1;
            verdict.problem(format!(
                "replica {} is at index {}, short of the log's {}",
                replica.worker, replica.applied_index, end
            ));
        } else if replica.checksum != want {
            verdict.replica_mismatches += 1;
            verdict.problem(format!(
                "replica {} at index {} has checksum {:x}; the log gives {want:x}",
                replica.worker, replica.applied_index, replica.checksum
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode, EntryBody, LogEntry, VERSION};
    use bytes::Bytes;
    use rideshare_core::store::MemStore;
    use rideshare_core::Username;

    fn record(index: u64, epoch: u64, body: EntryBody) -> Record {
        Record {
            index,
            data: Bytes::from(
                encode(&LogEntry {
                    v: VERSION,
                    epoch,
                    body,
                })
                .to_vec(),
            ),
        }
    }

    fn add(name: &str) -> WriteOp {
        WriteOp::AddUser {
            username: Username::parse(name).unwrap(),
            password_hash: "h".into(),
        }
    }

    fn write(id: &str, name: &str) -> EntryBody {
        EntryBody::Write {
            request_id: RequestId(id.into()),
            op: add(name),
        }
    }

    fn marker() -> EntryBody {
        EntryBody::EpochMarker { master: "m".into() }
    }

    fn acked(id: &str, name: &str, index: u64, at: u64) -> Event {
        Event {
            client: 0,
            operation: Operation::Write {
                request_id: RequestId(id.into()),
                op: add(name),
            },
            invoked_ms: at,
            completed_ms: at,
            completion: Completion::Written {
                index,
                outcome: WriteOutcome::Done,
            },
        }
    }

    #[test]
    fn a_zombie_masters_write_after_a_newer_marker_counts_as_lost_if_acknowledged() {
        let mut replay = Replay::new(MemStore::new());
        for r in [
            record(1, 1, marker()),
            record(2, 1, write("a", "ann")),
            record(3, 2, marker()),
            record(4, 1, write("z", "zed")),
        ] {
            replay.apply(&r).unwrap();
        }
        let events = [acked("a", "ann", 2, 10), acked("z", "zed", 4, 20)];
        let verdict = check(&events, &mut replay, &[]).unwrap();
        assert_eq!(verdict.lost, 1, "{verdict:?}");
        assert_eq!(verdict.fenced_entries, 1, "{verdict:?}");
        assert_eq!(verdict.fenced_applied, 0, "{verdict:?}");
        assert!(!verdict.passed());
    }

    #[test]
    fn a_zombie_masters_write_leaves_no_trace_even_unacknowledged() {
        let mut replay = Replay::new(MemStore::new());
        for r in [
            record(1, 1, marker()),
            record(2, 2, marker()),
            record(3, 1, write("z", "zed")),
            record(4, 2, write("b", "bob")),
        ] {
            replay.apply(&r).unwrap();
        }
        assert!(!replay.outcomes.contains_key(&RequestId("z".into())));
        assert_eq!(replay.outcomes[&RequestId("b".into())].0, 4);
        let verdict = check(&[], &mut replay, &[]).unwrap();
        assert_eq!((verdict.fenced_entries, verdict.fenced_applied), (1, 0));
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn a_read_older_than_an_earlier_acknowledgement_is_stale() {
        let mut replay = Replay::new(MemStore::new());
        replay.apply(&record(1, 1, marker())).unwrap();
        replay.apply(&record(2, 1, write("a", "ann"))).unwrap();
        let read = |invoked_ms, applied_index| Event {
            client: 1,
            operation: Operation::Read {
                op: ReadOp::ListUsers,
            },
            invoked_ms,
            completed_ms: invoked_ms + 1,
            completion: Completion::Read { applied_index },
        };
        let events = [
            acked("a", "ann", 2, 10),
            read(5, 1),
            read(11, 1),
            read(12, 2),
        ];
        let verdict = check(&events, &mut replay, &[]).unwrap();
        assert_eq!(verdict.stale_reads, 1);
        assert_eq!(verdict.lost, 0);
    }

    #[test]
    fn replicas_must_match_the_replay_and_double_applications_are_counted() {
        let mut replay = Replay::new(MemStore::new());
        replay.apply(&record(1, 1, marker())).unwrap();
        replay.apply(&record(2, 1, write("a", "ann"))).unwrap();
        replay.apply(&record(3, 1, write("a", "ann"))).unwrap();
        let want = replay.checksum().unwrap();
        let replicas = [
            ReplicaState {
                worker: "w1".into(),
                applied_index: 3,
                checksum: want,
            },
            ReplicaState {
                worker: "w2".into(),
                applied_index: 3,
                checksum: want ^ 1,
            },
            ReplicaState {
                worker: "w3".into(),
                applied_index: 2,
                checksum: want,
            },
        ];
        let verdict = check(&[], &mut replay, &replicas).unwrap();
        assert_eq!(verdict.replica_mismatches, 1);
        assert_eq!(verdict.replicas_behind, 1, "a replica short of the log");
        assert!(!verdict.passed());
        assert_eq!(
            verdict.duplicated, 0,
            "a redelivered request id applies once"
        );
    }
}
