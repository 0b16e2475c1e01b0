//! The history checker: what clients saw, held against the log every replica applies.
//!
//! A client records each operation as invoked, then ok / fail / unknown, with times. After the
//! run the log is replayed into a reference store: the newest epoch marker wins and writes of
//! older epochs are skipped (the replica core's rule, watched from outside it as well), and each
//! request id is applied once, by the checker's own memory of the ids it has applied, not by the
//! state machine's deduplication, which is under test like the rest. [`check_all`] reports:
//! - `lost`: a write acknowledged to a client that the log does not apply, or applies with
//!   another outcome than the one acknowledged;
//! - `duplicated`: a write acknowledged at a later entry of a request id the log had already
//!   applied, with another outcome than the first application's: applied twice. A replica that
//!   applied a request twice without anyone seeing it differs from the reference, which applied
//!   it once: a `replica_mismatch`;
//! - `stale_reads`: a read answered from a state older than a write acknowledged before the read
//!   was invoked (read-your-writes, across clients);
//! - `non_monotonic`: a read answered from a state older than the one another read, completed
//!   before it was invoked, had seen (monotonic reads, across clients);
//! - `replica_mismatches`: a replica whose state at an index differs from the reference's at that
//!   index: the replicas alive once quiet (which must also have reached the log's end) and every
//!   digest a replica published during the run, the master's and the dead workers' included;
//! - `fenced_applied`: a write of a deposed master (written under an older epoch than a marker
//!   before it in the log) that the replay applied. The replay goes through the replica core, so
//!   this is the guarantee fencing must give, watched from outside the core: a broken core that
//!   applies such an entry agrees with the replicas and would pass every other check.

use std::collections::{BTreeMap, BTreeSet};

use rideshare_core::machine::{Applied, StateMachine, Store};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use serde::Serialize;

use crate::error::Result;
use crate::log::Record;
use crate::protocol::{decode_versioned, EntryBody, GroupedWrite, LogEntry};
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
    /// The outcome each request id got when it was applied.
    pub outcomes: BTreeMap<RequestId, (u64, WriteOutcome)>,
    pub epochs: u64,
    /// Writes found after a marker of a newer epoch than their own (a deposed master's late
    /// appends), and the indexes of those among them that the replay applied.
    pub fenced_entries: u64,
    pub fenced_applied: Vec<u64>,
    /// Records holding several writes (the master's group commit), and the writes in them.
    pub group_records: u64,
    pub group_writes: u64,
    /// Writes that repeat a request id applied before: (index, request id) → the first index.
    pub repeats: BTreeMap<(u64, RequestId), u64>,
    /// The reference checksum at each index asked for with [`Replay::checksums_at`].
    checksums: BTreeMap<u64, Option<u64>>,
    /// The newest epoch marker seen, read from the entries themselves rather than the core.
    newest_marker: u64,
    core: ReplicaCore,
}

impl<S: Store> Replay<S> {
    pub fn new(store: S) -> Self {
        Replay {
            machine: StateMachine::new(store),
            end: 0,
            outcomes: BTreeMap::new(),
            epochs: 0,
            fenced_entries: 0,
            fenced_applied: Vec::new(),
            repeats: BTreeMap::new(),
            group_records: 0,
            group_writes: 0,
            checksums: BTreeMap::new(),
            newest_marker: 0,
            core: ReplicaCore::default(),
        }
    }

    /// Asks the replay to note the reference checksum at each of `indexes` as it passes them
    /// (index 0: the empty state). Call before applying: an index already passed stays unknown.
    pub fn checksums_at(&mut self, indexes: impl IntoIterator<Item = u64>) -> Result<()> {
        for index in indexes {
            if index >= self.end {
                self.checksums.entry(index).or_insert(None);
            }
        }
        if self.end == 0 && self.checksums.contains_key(&0) {
            let empty = self.checksum()?;
            self.checksums.insert(0, Some(empty));
        }
        Ok(())
    }

    /// The reference checksum at `index`, if it was asked for and the replay reached it.
    pub fn checksum_at(&self, index: u64) -> Option<u64> {
        self.checksums.get(&index).copied().flatten()
    }

    /// Applies one log record by the replicas' own rule (the replica core, as a follower), each
    /// request id once.
    pub fn apply(&mut self, record: &Record) -> Result<()> {
        self.end = record.index;
        let (step, _) = self.core.step(record);
        self.epochs = self.core.epoch();
        let stale = self.watch_epochs(record);
        if stale && matches!(step, Step::Apply { .. }) {
            self.fenced_applied.push(record.index);
        }
        match step {
            Step::Apply { index, writes, .. } => {
                if writes.len() > 1 {
                    self.group_records += 1;
                    self.group_writes += writes.len() as u64;
                }
                // The checker's own memory: a request id applies once, whatever the machine's
                // deduplication would say.
                let mut fresh = Vec::with_capacity(writes.len());
                for write in writes {
                    match self.outcomes.get(&write.request_id) {
                        Some((first, _)) => {
                            self.repeats.insert((index, write.request_id), *first);
                        }
                        None if fresh
                            .iter()
                            .any(|w: &GroupedWrite| w.request_id == write.request_id) =>
                        {
                            // Twice in one record: the second is a repeat at the same index.
                            self.repeats.insert((index, write.request_id), index);
                        }
                        None => fresh.push(write),
                    }
                }
                let applied = self
                    .machine
                    .apply_record(index, fresh.iter().map(|w| (&w.request_id, &w.op)))?;
                for (write, applied) in fresh.into_iter().zip(applied) {
                    if let Applied::Fresh(outcome) = applied {
                        self.outcomes.insert(write.request_id, (index, outcome));
                    }
                }
            }
            Step::Skip { index, .. } => self.machine.skip(index)?,
        }
        if let Some(slot) = self.checksums.get(&record.index) {
            if slot.is_none() {
                let checksum = self.checksum()?;
                self.checksums.insert(record.index, Some(checksum));
            }
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
            EntryBody::Write { .. } | EntryBody::Writes { .. } => {
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
    /// Reads that went back behind a read completed before they began.
    pub non_monotonic: u64,
    pub replica_mismatches: u64,
    /// Distinct replicas compared (alive once quiet, and every one seen during the run).
    pub replicas_checked: u64,
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
            && self.non_monotonic == 0
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

/// Checks a history against a replay of the whole log and the replicas' reported states; see
/// [`check_all`].
pub fn check<S: Store>(
    events: &[Event],
    replay: &mut Replay<S>,
    replicas: &[ReplicaState],
) -> Result<Verdict> {
    check_all(events, replay, replicas, &[])
}

/// Checks a history against a replay of the whole log. `replicas` are the states read once
/// quiet: each must have reached the log's end and match the reference there. `seen` are the
/// digests replicas published during the run (any index): each must match the reference at its
/// index, which the replay must have been asked to note ([`Replay::checksums_at`]).
pub fn check_all<S: Store>(
    events: &[Event],
    replay: &mut Replay<S>,
    replicas: &[ReplicaState],
    seen: &[ReplicaState],
) -> Result<Verdict> {
    let mut verdict = Verdict::default();
    let acks = check_writes(events, replay, &mut verdict);
    check_fencing(replay, &mut verdict);
    check_reads(events, acks, &mut verdict);
    let want = replay.checksum()?;
    check_replicas(replicas, replay.end, want, &mut verdict);
    check_seen(seen, replay, &mut verdict);
    verdict.replicas_checked = replicas
        .iter()
        .chain(seen)
        .map(|r| r.worker.as_str())
        .collect::<BTreeSet<_>>()
        .len() as u64;
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
                    Some((first, applied))
                        if applied != outcome
                            && replay.repeats.get(&(*index, request_id.clone())) == Some(first) =>
                    {
                        verdict.duplicated += 1;
                        verdict.problem(format!(
                            "write {request_id} was applied at {first} as {applied:?}, and again at {index}: acknowledged as {outcome:?}"
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

/// The highest index known by each time: `points` as (time, index), sorted into a running
/// maximum for a binary search per read.
struct Floor(Vec<(u64, u64)>);

impl Floor {
    fn new(mut points: Vec<(u64, u64)>) -> Self {
        points.sort_unstable();
        let mut running_max = 0;
        Floor(
            points
                .into_iter()
                .map(|(at, index)| {
                    running_max = running_max.max(index);
                    (at, running_max)
                })
                .collect(),
        )
    }

    /// The highest index of a point strictly before `at`.
    fn before(&self, at: u64) -> u64 {
        let n = self.0.partition_point(|(time, _)| *time < at);
        if n == 0 {
            0
        } else {
            self.0[n - 1].1
        }
    }
}

/// Stale reads (below an index acknowledged before the read was invoked) and reads that went
/// back (below the index another read, completed before this one was invoked, answered at).
fn check_reads(events: &[Event], acks: Vec<(u64, u64)>, verdict: &mut Verdict) {
    let acked = Floor::new(acks);
    let read = Floor::new(
        events
            .iter()
            .filter_map(|e| match e.completion {
                Completion::Read { applied_index } => Some((e.completed_ms, applied_index)),
                _ => None,
            })
            .collect(),
    );
    for event in events {
        if let Completion::Read { applied_index } = event.completion {
            let must_see = acked.before(event.invoked_ms);
            let seen_before = read.before(event.invoked_ms);
            if applied_index < must_see {
                verdict.stale_reads += 1;
                verdict.problem(format!(
                    "read by client {} at {} ms answered at index {applied_index}; index {must_see} was acknowledged before it began",
                    event.client, event.invoked_ms
                ));
            } else if applied_index < seen_before {
                verdict.non_monotonic += 1;
                verdict.problem(format!(
                    "read by client {} at {} ms answered at index {applied_index}; a read completed before it began had seen index {seen_before}",
                    event.client, event.invoked_ms
                ));
            }
        }
    }
}

/// Digests published during the run, against the reference at their index.
fn check_seen<S: Store>(seen: &[ReplicaState], replay: &Replay<S>, verdict: &mut Verdict) {
    for replica in seen {
        match replay.checksum_at(replica.applied_index) {
            Some(want) if want == replica.checksum => {}
            Some(want) => {
                verdict.replica_mismatches += 1;
                verdict.problem(format!(
                    "replica {} published checksum {:x} at index {}; the log gives {want:x} there",
                    replica.worker, replica.checksum, replica.applied_index
                ));
            }
            None => {
                verdict.replica_mismatches += 1;
                verdict.problem(format!(
                    "replica {} published a state at index {}, which the replay did not reach (log end {})",
                    replica.worker, replica.applied_index, replay.end
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
    fn read_at(client: usize, invoked_ms: u64, completed_ms: u64, applied_index: u64) -> Event {
        Event {
            client,
            operation: Operation::Read {
                op: ReadOp::ListUsers,
            },
            invoked_ms,
            completed_ms,
            completion: Completion::Read { applied_index },
        }
    }

    #[test]
    fn a_read_behind_an_earlier_read_goes_back_in_time() {
        let mut replay = Replay::new(MemStore::new());
        for r in [
            record(1, 1, marker()),
            record(2, 1, write("a", "ann")),
            record(3, 1, write("b", "bob")),
        ] {
            replay.apply(&r).unwrap();
        }
        // Client 0 saw index 3 (not yet acknowledged); client 1's later read answered at 2.
        let events = [
            read_at(0, 10, 12, 3),
            read_at(1, 11, 20, 2),
            read_at(1, 13, 14, 2),
        ];
        let verdict = check(&events, &mut replay, &[]).unwrap();
        assert_eq!(verdict.non_monotonic, 1, "{verdict:?}");
        assert_eq!(verdict.stale_reads, 0);
        assert!(!verdict.passed());
    }

    #[test]
    fn every_published_digest_is_held_against_the_replay_at_its_index() {
        let records = [
            record(1, 1, marker()),
            record(2, 1, write("a", "ann")),
            record(3, 1, write("b", "bob")),
        ];
        let mut reference = Replay::new(MemStore::new());
        let mut at_2 = 0;
        for r in &records {
            reference.apply(r).unwrap();
            if r.index == 2 {
                at_2 = reference.checksum().unwrap();
            }
        }
        let seen = |worker: &str, applied_index, checksum| ReplicaState {
            worker: worker.into(),
            applied_index,
            checksum,
        };
        let published = [
            seen("dead", 2, at_2),
            seen("diverged", 2, at_2 ^ 1),
            seen("ahead", 9, at_2),
        ];
        let mut replay = Replay::new(MemStore::new());
        replay
            .checksums_at(published.iter().map(|p| p.applied_index))
            .unwrap();
        for r in &records {
            replay.apply(r).unwrap();
        }
        let verdict = check_all(&[], &mut replay, &[], &published).unwrap();
        assert_eq!(verdict.replica_mismatches, 2, "{verdict:?}");
        assert_eq!(verdict.replicas_checked, 3);
        assert!(!verdict.passed());
    }

    #[test]
    fn a_request_applied_again_by_a_broken_machine_is_caught_by_the_checkers_own_memory() {
        // The log holds request "c" twice (a retry through a failover). A replica whose
        // deduplication failed applied it twice and acknowledged the second application.
        let create = |id: &str| EntryBody::Write {
            request_id: RequestId(id.into()),
            op: WriteOp::CreateRide {
                created_by: Username::parse("ann").unwrap(),
                timestamp: rideshare_core::Timestamp::from_seconds(1_893_456_000).unwrap(),
                source: rideshare_core::Area::new(1).unwrap(),
                destination: rideshare_core::Area::new(2).unwrap(),
            },
        };
        let mut replay = Replay::new(MemStore::new());
        for r in [
            record(1, 1, marker()),
            record(2, 1, write("a", "ann")),
            record(3, 1, create("c")),
            record(4, 2, marker()),
            record(5, 2, create("c")),
        ] {
            replay.apply(&r).unwrap();
        }
        assert_eq!(replay.repeats.get(&(5, RequestId("c".into()))), Some(&3));
        let first = replay.outcomes[&RequestId("c".into())].1.clone();
        let again = WriteOutcome::RideCreated {
            ride_id: rideshare_core::RideId(2),
        };
        assert_ne!(first, again);
        let events = [Event {
            client: 0,
            operation: Operation::Write {
                request_id: RequestId("c".into()),
                op: WriteOp::DeleteRide {
                    ride_id: rideshare_core::RideId(1),
                },
            },
            invoked_ms: 1,
            completed_ms: 2,
            completion: Completion::Written {
                index: 5,
                outcome: again,
            },
        }];
        let verdict = check(&events, &mut replay, &[]).unwrap();
        assert_eq!((verdict.duplicated, verdict.lost), (1, 0), "{verdict:?}");
        assert!(!verdict.passed());
    }
}
