//! The replica core: the one rule by which a log record changes a replica, with no IO and no
//! async, so the worker, the history checker and the simulation all replay through it.
//!
//! The rule (DESIGN.md, "Replication"): an epoch marker raises the replica's epoch when it is
//! newer, and leaves its index empty; a write record (one write, or several of one commit
//! group) is applied only when it was written under the newest epoch applied so far, otherwise
//! it is fenced off (its index left empty) because its writer was deposed; an entry that does
//! not decode is left empty by every replica alike. The writes of one record apply in their
//! order, each at most once per request id, all at the record's index.
//! A master hears only of its own writes, and learns from a newer marker that it is deposed.
//!
//! The core decides; the caller does the IO: it applies or skips the index on its store and,
//! once the commit group is durable, carries out the effects.

use rideshare_core::machine::Applied;
use rideshare_core::ops::{RequestId, WriteOutcome};

use crate::log::Record;
use crate::protocol::{decode_versioned, EntryBody, GroupedWrite, LogEntry, Refusal};

/// One replica's view of the epochs: the newest marker applied, and its own epoch while it is
/// master (0 otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCore {
    epoch: u64,
    my_epoch: u64,
}

/// What to do with one record's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply `writes` in order at `index`; `mine` when this master wrote them in its own epoch.
    Apply {
        index: u64,
        writes: Vec<GroupedWrite>,
        mine: bool,
    },
    /// Leave `index` empty.
    Skip { index: u64, why: Skip },
}

/// Why an index is left empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The entry does not decode (every replica skips it alike).
    Undecodable(String),
    /// An epoch marker.
    EpochMarker,
    /// The writes of a deposed master: written under an older epoch than the newest marker.
    Fenced {
        request_ids: Vec<RequestId>,
        mine: bool,
    },
}

/// What a replica tells others about a record, once its commit group is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// This master's own write: its waiters get this answer.
    Answer(RequestId, Result<(u64, WriteOutcome), Refusal>),
    /// A newer epoch marker: this master is deposed and answers nothing more.
    Deposed { my_epoch: u64, new_epoch: u64 },
}

impl ReplicaCore {
    /// A replica that has applied markers up to `epoch` and is master of `my_epoch` (0: not).
    pub fn at(epoch: u64, my_epoch: u64) -> Self {
        ReplicaCore { epoch, my_epoch }
    }

    /// The newest epoch marker applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reads one record: what to do with its index, and what a marker tells this master.
    pub fn step(&mut self, record: &Record) -> (Step, Option<Effect>) {
        let index = record.index;
        let entry = match decode_versioned::<LogEntry>(&record.data) {
            Ok(entry) => entry,
            Err(e) => {
                let why = Skip::Undecodable(e.to_string());
                return (Step::Skip { index, why }, None);
            }
        };
        let mine = self.my_epoch != 0 && entry.epoch == self.my_epoch;
        match entry.body {
            EntryBody::EpochMarker { .. } => {
                self.epoch = self.epoch.max(entry.epoch);
                let deposed = (self.my_epoch != 0 && entry.epoch > self.my_epoch).then_some(
                    Effect::Deposed {
                        my_epoch: self.my_epoch,
                        new_epoch: entry.epoch,
                    },
                );
                let why = Skip::EpochMarker;
                (Step::Skip { index, why }, deposed)
            }
            EntryBody::Write { request_id, op } => self.writes(
                index,
                entry.epoch,
                mine,
                vec![GroupedWrite { request_id, op }],
            ),
            EntryBody::Writes { writes } => self.writes(index, entry.epoch, mine, writes),
        }
    }

    fn writes(
        &self,
        index: u64,
        epoch: u64,
        mine: bool,
        writes: Vec<GroupedWrite>,
    ) -> (Step, Option<Effect>) {
        if epoch == self.epoch {
            return (
                Step::Apply {
                    index,
                    writes,
                    mine,
                },
                None,
            );
        }
        let request_ids = writes.into_iter().map(|w| w.request_id).collect();
        let why = Skip::Fenced { request_ids, mine };
        (Step::Skip { index, why }, None)
    }
}

impl Step {
    /// The answers this master owes for the step, given what applying each of its writes did
    /// (empty when the index was skipped). Only a master's own writes are answered: an older
    /// master's entry with the same request id must not answer this master's waiter.
    pub fn answers(&self, applied: &[Applied]) -> Vec<Effect> {
        match self {
            Step::Apply {
                index,
                writes,
                mine: true,
            } => writes
                .iter()
                .zip(applied)
                .filter_map(|(write, applied)| match applied {
                    Applied::Fresh(outcome) | Applied::Duplicate(outcome) => Some(Effect::Answer(
                        write.request_id.clone(),
                        Ok((*index, outcome.clone())),
                    )),
                    Applied::AlreadyApplied => None,
                })
                .collect(),
            Step::Skip {
                why:
                    Skip::Fenced {
                        request_ids,
                        mine: true,
                    },
                ..
            } => request_ids
                .iter()
                .map(|id| Effect::Answer(id.clone(), Err(Refusal::NotMaster)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rideshare_core::ops::WriteOp;

    use super::*;
    use crate::protocol::{encode, VERSION};

    fn record(index: u64, epoch: u64, body: EntryBody) -> Record {
        Record {
            index,
            data: encode(&LogEntry {
                v: VERSION,
                epoch,
                body,
            }),
        }
    }

    fn write(index: u64, epoch: u64, id: &str) -> Record {
        record(
            index,
            epoch,
            EntryBody::Write {
                request_id: RequestId(id.into()),
                op: WriteOp::ClearAll,
            },
        )
    }

    fn marker(index: u64, epoch: u64) -> Record {
        record(index, epoch, EntryBody::EpochMarker { master: "w".into() })
    }

    #[test]
    fn writes_of_the_newest_epoch_apply_and_older_ones_are_fenced() {
        let mut core = ReplicaCore::default();
        assert!(matches!(core.step(&marker(1, 1)).0, Step::Skip { .. }));
        assert!(matches!(
            core.step(&write(2, 1, "a")).0,
            Step::Apply { index: 2, .. }
        ));
        core.step(&marker(3, 2));
        assert_eq!(core.epoch(), 2);
        let (step, _) = core.step(&write(4, 1, "late"));
        assert!(
            matches!(
                step,
                Step::Skip {
                    index: 4,
                    why: Skip::Fenced { .. }
                }
            ),
            "{step:?}"
        );
        assert!(matches!(core.step(&write(5, 2, "b")).0, Step::Apply { .. }));
        // An older marker after a newer one changes nothing.
        core.step(&marker(6, 1));
        assert_eq!(core.epoch(), 2);
        assert!(matches!(core.step(&write(7, 1, "c")).0, Step::Skip { .. }));
    }

    #[test]
    fn a_newer_marker_deposes_this_master_and_its_fenced_writes_are_refused() {
        let mut core = ReplicaCore::at(2, 2);
        let (_, effect) = core.step(&marker(10, 3));
        assert_eq!(
            effect,
            Some(Effect::Deposed {
                my_epoch: 2,
                new_epoch: 3
            })
        );
        let (step, _) = core.step(&write(11, 2, "mine"));
        assert_eq!(
            step.answers(&[]),
            vec![Effect::Answer(
                RequestId("mine".into()),
                Err(Refusal::NotMaster)
            )]
        );
    }

    #[test]
    fn only_this_masters_own_writes_are_answered() {
        let mut core = ReplicaCore::at(3, 3);
        let (mine, _) = core.step(&write(1, 3, "x"));
        let done = Applied::Fresh(WriteOutcome::Done);
        assert_eq!(
            mine.answers(std::slice::from_ref(&done)),
            vec![Effect::Answer(
                RequestId("x".into()),
                Ok((1, WriteOutcome::Done))
            )]
        );
        assert_eq!(mine.answers(&[Applied::AlreadyApplied]), vec![]);
        let mut follower = ReplicaCore::at(3, 0);
        let (theirs, _) = follower.step(&write(1, 3, "x"));
        assert_eq!(theirs.answers(&[done]), vec![]);
    }

    fn group(index: u64, epoch: u64, ids: &[&str]) -> Record {
        let writes = ids
            .iter()
            .map(|id| GroupedWrite {
                request_id: RequestId((*id).into()),
                op: WriteOp::ClearAll,
            })
            .collect();
        record(index, epoch, EntryBody::Writes { writes })
    }

    #[test]
    fn a_group_record_applies_its_writes_in_order_and_each_is_answered_at_its_index() {
        let mut core = ReplicaCore::at(4, 4);
        let (step, _) = core.step(&group(9, 4, &["a", "b", "c"]));
        let Step::Apply {
            index: 9,
            writes,
            mine: true,
        } = &step
        else {
            panic!("{step:?}");
        };
        let ids: Vec<_> = writes.iter().map(|w| w.request_id.0.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let done = Applied::Fresh(WriteOutcome::Done);
        let again = Applied::Duplicate(WriteOutcome::Done);
        let answers = step.answers(&[done, Applied::AlreadyApplied, again]);
        let answered: Vec<_> = answers
            .iter()
            .map(|e| match e {
                Effect::Answer(id, Ok((9, _))) => id.0.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(answered, ["a", "c"]);
        // A deposed master's group is fenced whole, and each of its writes refused.
        core.step(&marker(10, 5));
        let (fenced, _) = core.step(&group(11, 4, &["d", "e"]));
        assert_eq!(
            fenced.answers(&[]),
            vec![
                Effect::Answer(RequestId("d".into()), Err(Refusal::NotMaster)),
                Effect::Answer(RequestId("e".into()), Err(Refusal::NotMaster)),
            ]
        );
    }

    #[test]
    fn an_undecodable_entry_is_skipped() {
        let mut core = ReplicaCore::default();
        let record = Record {
            index: 1,
            data: Bytes::from_static(b"\xff not an entry"),
        };
        assert!(matches!(
            core.step(&record).0,
            Step::Skip {
                index: 1,
                why: Skip::Undecodable(_)
            }
        ));
    }
}
