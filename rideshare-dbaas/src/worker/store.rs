//! The store owner: one dedicated thread owns the replica's store and its replica core, and
//! does every store call (commit groups, reads, digests) in the order the commands arrive, so
//! the async tasks never block the executor on SQLite and never lock the store.
//!
//! Commands come over a bounded channel (a slow store holds its callers back instead of
//! queueing without end); each carries a oneshot for its answer. The thread ends when the last
//! handle is dropped, after the commands already sent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rideshare_core::checksum::StateChecksum;
use rideshare_core::machine::{SnapshotReader, StateMachine, Store};
use rideshare_core::ops::{ReadOp, ReadOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::log::Record;
use crate::protocol::StateDigest;
use crate::replica::{Effect, ReplicaCore, Skip, Step};
use crate::snapshot::Taken;

/// Commands waiting for the store at most: reads (a slave's prefetch), commit groups, a
/// digest, a promotion.
const COMMANDS: usize = 64;

type Answer<T> = oneshot::Sender<Result<T>>;

enum Command {
    Apply(Vec<Vec<Record>>, Answer<Applied>),
    Read(Vec<ReadOp>, Answer<Reads>),
    Digest(Answer<StateDigest>),
    Promote(u64, Answer<()>),
    Export(PathBuf, Answer<Taken>),
}

/// What applying one commit group did, told once it is durable.
pub(super) struct Group {
    /// The index of the group's last record: the replica's applied index now.
    pub last: u64,
    /// The newest epoch marker applied.
    pub epoch: u64,
    /// The state checksum once the group is applied (what a snapshot at `last` carries).
    pub checksum: StateChecksum,
    /// What to tell waiters, in log order.
    pub effects: Vec<Effect>,
}

/// What one apply command did: the commit groups made durable, in order, and the error that
/// stopped the next one (which, with the groups behind it, was not applied).
pub(super) struct Applied {
    pub groups: Vec<Group>,
    pub failed: Option<Error>,
}

/// What several reads found, in their order, and the applied index they all saw.
pub(super) struct Reads {
    pub applied_index: u64,
    pub outcomes: Vec<Result<ReadOutcome>>,
}

/// Reads waiting for one reader thread at most.
const READS_PER_READER: usize = 16;

/// Most reads of one message answered on the calling thread (see [`StoreHandle::read`]).
const INLINE_READS: usize = 8;

type ReadCommand = (Vec<ReadOp>, Answer<Reads>);

/// The async side's way to the store thread and its reader threads; cheap to share behind the
/// worker's `Arc`.
pub(super) struct StoreHandle {
    commands: mpsc::Sender<Command>,
    /// Threads that answer reads on their own connections to the store's file, beside the
    /// store thread; none for a store without a file (reads then go to the store thread).
    readers: Vec<mpsc::Sender<ReadCommand>>,
    next_reader: AtomicUsize,
    /// A connection of its own for point reads answered on the calling thread
    /// (`WorkerConfig::inline_point_reads`); none otherwise, or for a store without a file.
    inline: Option<parking_lot::Mutex<Box<dyn SnapshotReader>>>,
    /// A connection of its own for snapshots (`export`), so writing one holds back neither the
    /// log nor the reads; none for a store without a file (the store thread exports then).
    exporter: parking_lot::Mutex<Option<Box<dyn SnapshotReader>>>,
    handoff: Handoff,
}

/// Where a store starts: from scratch, or installed from a snapshot whose epoch and checksum
/// are known.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Start {
    pub epoch: u64,
    pub checksum: Option<StateChecksum>,
}

/// What an export wrote: the applied index of the copy, with its epoch and checksum when the
/// store thread wrote it (a reader's copy is at an index the caller looks up).
pub(super) enum Exported {
    Exact(Taken),
    At(u64),
}

impl StoreHandle {
    /// Starts the store thread and up to `readers` reader threads; returns the handle and the
    /// store's applied index.
    pub async fn spawn(
        store: Box<dyn Store>,
        worker: &str,
        readers: usize,
        from: Start,
        clock_may_pause: bool,
        inline_point_reads: bool,
    ) -> Result<(Self, u64)> {
        let handoff = Handoff::for_this_runtime(clock_may_pause);
        let mut reader_senders = Vec::with_capacity(readers);
        for n in 0..readers {
            let Some(reader) = store.reader()? else { break };
            reader_senders.push(spawn_reader(reader, worker, n)?);
        }
        let inline = if inline_point_reads {
            store.reader()?.map(parking_lot::Mutex::new)
        } else {
            None
        };
        let exporter = store.reader()?;
        let (commands, received) = mpsc::channel(COMMANDS);
        let (started, start) = oneshot::channel();
        // The thread's log lines (skipped entries) carry the worker like its tasks' do.
        let span = tracing::info_span!("store", worker = %worker);
        std::thread::Builder::new()
            .name(format!("store-{worker}"))
            .spawn(move || {
                let _entered = span.entered();
                let mut owner = Owner {
                    machine: match from.checksum {
                        Some(checksum) => StateMachine::with_checksum(store, checksum),
                        None => StateMachine::new(store),
                    },
                    core: ReplicaCore::at(from.epoch, 0),
                };
                let _ = started.send(owner.machine.applied_index().map_err(Error::from));
                owner.run(received);
            })
            .map_err(|e| Error::adapter("starting the store thread", e))?;
        let start_index = handoff.wait(start).await?;
        Ok((
            StoreHandle {
                commands,
                readers: reader_senders,
                next_reader: AtomicUsize::new(0),
                inline,
                exporter: parking_lot::Mutex::new(exporter),
                handoff,
            },
            start_index,
        ))
    }

    /// Applies commit groups in order, each in one transaction, in one handoff to the store
    /// thread.
    pub async fn apply(&self, groups: Vec<Vec<Record>>) -> Result<Applied> {
        self.call(|answer| Command::Apply(groups, answer)).await
    }

    /// Answers a read with the applied index it was answered at.
    /// Answers reads one after another, in one handoff to the store thread (a batch of reads
    /// pays for one), all at the same applied index.
    ///
    /// With reader threads, reads go to them (the first with room, from a rotating start), so
    /// several batches are read at once and none waits behind a commit group; a digest
    /// (`checksum`) still goes to the store thread, which keeps the running checksum.
    ///
    /// The same op asked more than once in a batch (many riders listing one route, the rides
    /// service's user check under a burst of new rides) is read once: every op of the batch
    /// reads the same snapshot, so their answers are equal by definition.
    pub async fn read(&self, ops: Vec<ReadOp>) -> Result<Reads> {
        let (distinct, slots) = distinct_ops(ops);
        let reads = self.read_distinct(distinct).await?;
        Ok(match slots {
            None => reads,
            Some(slots) => Reads {
                applied_index: reads.applied_index,
                outcomes: spread(reads.outcomes, &slots),
            },
        })
    }

    async fn read_distinct(&self, ops: Vec<ReadOp>) -> Result<Reads> {
        if let Some(reads) = self.read_inline(&ops) {
            return reads;
        }
        if self.readers.is_empty() || ops.iter().any(|op| matches!(op, ReadOp::Checksum)) {
            return self.call(|answer| Command::Read(ops, answer)).await;
        }
        let (answer, answered) = oneshot::channel();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut command = (ops, answer);
        for k in 0..self.readers.len() {
            match self.readers[(start + k) % self.readers.len()].try_send(command) {
                Ok(()) => return self.handoff.wait(answered).await,
                Err(mpsc::error::TrySendError::Full(back)) => command = back,
                Err(e @ mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Error::adapter("a reader thread ended", e))
                }
            }
        }
        // All full: wait for room at the one this read started with.
        self.readers[start % self.readers.len()]
            .send(command)
            .await
            .map_err(|e| Error::adapter("a reader thread ended", e))?;
        self.handoff.wait(answered).await
    }

    /// Answers a few point reads (whether a user exists, one ride) on the calling thread, from
    /// the inline connection, when there is one and no other caller holds it; `None` leaves
    /// the reads to the reader threads. A point read takes a few microseconds, and handing it
    /// to a reader thread and back costs two thread wake-ups, each longer than the read on a
    /// machine whose idle cores must be woken (`perf sched latency` put a reader thread's
    /// wake-up delay at about 70 µs on average on the 2-core VM measured).
    /// Listings, counts and the user list grow with the data and always go to a reader.
    fn read_inline(&self, ops: &[ReadOp]) -> Option<Result<Reads>> {
        let point = |op: &ReadOp| matches!(op, ReadOp::UserExists { .. } | ReadOp::GetRide { .. });
        if ops.len() > INLINE_READS || !ops.iter().all(point) {
            return None;
        }
        let mut reader = self.inline.as_ref()?.try_lock()?;
        metrics::counter!("rideshare_worker_inline_reads_total").increment(ops.len() as u64);
        Some(answer_reads(reader.read_snapshot(ops)))
    }

    /// The applied index and the checksum of the data there, read together.
    pub async fn digest(&self) -> Result<StateDigest> {
        self.call(Command::Digest).await
    }

    /// From the next record on, writes of `epoch` are this master's own. Sent before its
    /// marker is appended, so it is in force before any record of that epoch is applied.
    pub async fn promote(&self, epoch: u64) -> Result<()> {
        self.call(|answer| Command::Promote(epoch, answer)).await
    }

    /// Writes a snapshot of the store to `to`: on the exporter connection when there is one
    /// (the copy is at whatever group end it read), else on the store thread between groups.
    pub async fn export(&self, to: PathBuf) -> Result<Exported> {
        let exporter = self.exporter.lock().take();
        let Some(mut exporter) = exporter else {
            return self
                .call(|answer| Command::Export(to, answer))
                .await
                .map(Exported::Exact);
        };
        let (exported, exporter) = tokio::task::spawn_blocking(move || {
            let index = exporter.export(&to).map_err(Error::from);
            (index, exporter)
        })
        .await
        .map_err(|e| Error::adapter("writing a snapshot", e))?;
        *self.exporter.lock() = Some(exporter);
        exported.map(Exported::At)
    }

    async fn call<T: Send + 'static>(
        &self,
        command: impl FnOnce(Answer<T>) -> Command,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        self.commands
            .send(command(answer))
            .await
            .map_err(|e| Error::adapter("the store thread ended", e))?;
        self.handoff.wait(answered).await
    }
}

/// `ops` without repeats, in first-asked order, and for each op of `ops` the position of its
/// answer among them; `None` when nothing repeats (the common case costs no copy). A batch holds
/// at most `--batch-max` ops, so the quadratic search is over a few dozen small values.
fn distinct_ops(ops: Vec<ReadOp>) -> (Vec<ReadOp>, Option<Vec<usize>>) {
    let mut distinct: Vec<ReadOp> = Vec::with_capacity(ops.len());
    let mut slots = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        match distinct.iter().position(|seen| seen == op) {
            Some(slot) => slots.push(slot),
            None => {
                slots.push(distinct.len());
                distinct.push(ops[i].clone());
            }
        }
    }
    if distinct.len() == ops.len() {
        (ops, None)
    } else {
        (distinct, Some(slots))
    }
}

/// The answers of [`distinct_ops`]'s ops, one per op asked: a repeated op gets a copy of its
/// answer (a failure, which carries no value to copy, is told again by its message).
fn spread(outcomes: Vec<Result<ReadOutcome>>, slots: &[usize]) -> Vec<Result<ReadOutcome>> {
    slots
        .iter()
        .map(|&slot| match &outcomes[slot] {
            Ok(outcome) => Ok(outcome.clone()),
            Err(e) => Err(Error::adapter(
                "a read of this batch",
                std::io::Error::other(e.to_string()),
            )),
        })
        .collect()
}

/// A reader's answer as the worker passes it on.
fn answer_reads(
    read: std::result::Result<
        rideshare_core::machine::SnapshotReads,
        rideshare_core::error::StoreError,
    >,
) -> Result<Reads> {
    read.map(|read| Reads {
        applied_index: read.applied_index,
        outcomes: read
            .outcomes
            .into_iter()
            .map(|o| o.map_err(Error::from))
            .collect(),
    })
    .map_err(Error::from)
}

/// Starts one reader thread; it ends when the handle (its sender) is dropped.
fn spawn_reader(
    mut reader: Box<dyn SnapshotReader>,
    worker: &str,
    n: usize,
) -> Result<mpsc::Sender<ReadCommand>> {
    let (sender, mut received) = mpsc::channel::<ReadCommand>(READS_PER_READER);
    let span = tracing::info_span!("reader", worker = %worker, reader = n);
    std::thread::Builder::new()
        .name(format!("read{n}-{worker}"))
        .spawn(move || {
            let _entered = span.entered();
            while let Some((ops, answer)) = received.blocking_recv() {
                let _ = answer.send(answer_reads(reader.read_snapshot(&ops)));
            }
        })
        .map_err(|e| Error::adapter("starting a reader thread", e))?;
    Ok(sender)
}

/// How a task waits for a store or reader thread's answer.
///
/// `Direct`: the oneshot is awaited, and the other thread's send wakes the task, one handoff.
/// `BlockingPool`: the wait goes to tokio's blocking pool instead, for a current-thread runtime
/// whose clock may be paused (`tokio::time::pause` refuses any other runtime): under a paused
/// clock (the simulation) tokio moves time on as soon as every task waits, and a task waiting
/// for another OS thread looks idle, so timers would fire in the middle of a commit. A
/// blocking-pool task holds the clock while it runs, at the cost of two more thread handoffs per
/// call, which profiling showed to be the largest cost of a read in `rideshare up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handoff {
    Direct,
    BlockingPool,
}

impl Handoff {
    /// For the runtime the caller runs on: `BlockingPool` only on a current-thread runtime
    /// whose clock may be paused.
    fn for_this_runtime(clock_may_pause: bool) -> Self {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if clock_may_pause && Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            Handoff::BlockingPool
        } else {
            Handoff::Direct
        }
    }

    async fn wait<T: Send + 'static>(self, answered: oneshot::Receiver<Result<T>>) -> Result<T> {
        let answer = match self {
            Handoff::BlockingPool => tokio::task::spawn_blocking(move || answered.blocking_recv())
                .await
                .map_err(|e| Error::adapter("waiting for the store thread", e))?,
            Handoff::Direct => answered.await,
        };
        answer.map_err(|e| Error::adapter("the store thread ended", e))?
    }
}

/// What the store thread owns.
struct Owner {
    machine: StateMachine<Box<dyn Store>>,
    core: ReplicaCore,
}

impl Owner {
    fn run(&mut self, mut received: mpsc::Receiver<Command>) {
        while let Some(command) = received.blocking_recv() {
            // A caller that gave up no longer listens; the work is done all the same.
            match command {
                Command::Apply(groups, answer) => {
                    let _ = answer.send(Ok(self.apply_all(groups)));
                }
                Command::Read(ops, answer) => {
                    let _ = answer.send(self.read(&ops));
                }
                Command::Digest(answer) => {
                    let _ = answer.send(self.digest());
                }
                Command::Promote(epoch, answer) => {
                    self.core = ReplicaCore::at(self.core.epoch(), epoch);
                    let _ = answer.send(Ok(()));
                }
                Command::Export(to, answer) => {
                    let _ = answer.send(self.export(&to));
                }
            }
        }
    }

    /// Applies commit groups in order, up to the first that fails.
    fn apply_all(&mut self, groups: Vec<Vec<Record>>) -> Applied {
        let mut applied = Applied {
            groups: Vec::with_capacity(groups.len()),
            failed: None,
        };
        for records in groups {
            match self.apply(records) {
                Ok(group) => applied.groups.push(group),
                Err(e) => {
                    applied.failed = Some(e);
                    break;
                }
            }
        }
        applied
    }

    /// Applies log records in order, in one commit group: the replica's only way to change its
    /// state. The effects are handed back only once the group is durable.
    fn apply(&mut self, records: Vec<Record>) -> Result<Group> {
        let before = self.core;
        let Owner { machine, core } = self;
        let mut effects = Vec::new();
        let applied = machine.grouped(|machine| {
            for record in &records {
                apply_record(machine, core, record, &mut effects)?;
            }
            Ok::<_, Error>(())
        });
        if let Err(e) = applied {
            // The group was dropped: so are the markers it held.
            self.core = before;
            return Err(e);
        }
        let last = match records.last() {
            Some(record) => record.index,
            None => self.machine.applied_index()?,
        };
        Ok(Group {
            last,
            epoch: self.core.epoch(),
            checksum: self.machine.checksum_parts()?,
            effects,
        })
    }

    fn export(&mut self, to: &std::path::Path) -> Result<Taken> {
        self.machine.export(to)?;
        Ok(Taken {
            index: self.machine.applied_index()?,
            epoch: self.core.epoch(),
            checksum: self.machine.checksum_parts()?,
        })
    }

    fn read(&mut self, ops: &[ReadOp]) -> Result<Reads> {
        let applied_index = self.machine.applied_index()?;
        let outcomes = ops
            .iter()
            .map(|op| self.machine.read(op).map_err(Error::from))
            .collect();
        Ok(Reads {
            applied_index,
            outcomes,
        })
    }

    fn digest(&mut self) -> Result<StateDigest> {
        Ok(StateDigest {
            applied_index: self.machine.applied_index()?,
            checksum: self.machine.checksum()?,
        })
    }
}

/// One record, by the replica core's rule (`replica.rs`); the effects wait for the group.
fn apply_record(
    machine: &mut StateMachine<Box<dyn Store>>,
    core: &mut ReplicaCore,
    record: &Record,
    effects: &mut Vec<Effect>,
) -> Result<()> {
    let (step, marker_effect) = core.step(record);
    let applied = match &step {
        Step::Apply { index, writes, .. } => {
            machine.apply_record(*index, writes.iter().map(|w| (&w.request_id, &w.op)))?
        }
        Step::Skip { index, why } => {
            if let Skip::Undecodable(error) = why {
                tracing::warn!(index, %error, "skipping undecodable log entry");
            }
            machine.skip(*index)?;
            Vec::new()
        }
    };
    effects.extend(marker_effect);
    effects.extend(step.answers(&applied));
    Ok(())
}

#[cfg(test)]
mod tests {
    use rideshare_core::{Area, RideId, Timestamp, Username};

    use super::*;

    fn listing(after: &str) -> ReadOp {
        ReadOp::UpcomingRides {
            source: Area::new(1).unwrap(),
            destination: Area::new(2).unwrap(),
            after: Timestamp::parse(after).unwrap(),
        }
    }

    #[tokio::test]
    async fn on_one_thread_store_answers_take_the_blocking_pool_only_if_the_clock_may_pause() {
        assert_eq!(Handoff::for_this_runtime(true), Handoff::BlockingPool);
        assert_eq!(Handoff::for_this_runtime(false), Handoff::Direct);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_several_threads_store_answers_are_awaited_directly() {
        assert_eq!(Handoff::for_this_runtime(true), Handoff::Direct);
        assert_eq!(Handoff::for_this_runtime(false), Handoff::Direct);
    }

    /// The `rideshare worker` process: one thread, a real clock, answers awaited directly.
    #[tokio::test]
    async fn a_store_on_one_thread_with_a_real_clock_answers_directly() {
        let store = Box::new(rideshare_core::store::mem::MemStore::new());
        let (store, index) = StoreHandle::spawn(store, "w", 0, Start::default(), false, false)
            .await
            .unwrap();
        assert_eq!((store.handoff, index), (Handoff::Direct, 0));
        let reads = store.read(vec![ReadOp::CountRides]).await.unwrap();
        assert_eq!(reads.applied_index, 0);
        assert!(matches!(
            reads.outcomes.as_slice(),
            [Ok(ReadOutcome::Count { count: 0 })]
        ));
    }

    /// The `rideshare worker` process's reads: a few point reads on the calling thread, what
    /// grows with the data on a reader thread, and the same answers either way.
    #[tokio::test]
    async fn only_a_few_point_reads_are_answered_on_the_calling_thread() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Box::new(
                rideshare_core::store::sqlite::SqliteStore::open(&dir.path().join("w.db")).unwrap(),
            )
        };
        let (inline, _) = StoreHandle::spawn(open(), "w", 1, Start::default(), false, true)
            .await
            .unwrap();
        let (handed_off, _) = StoreHandle::spawn(open(), "v", 1, Start::default(), false, false)
            .await
            .unwrap();
        let user = ReadOp::UserExists {
            username: Username::parse("ann").unwrap(),
        };
        let ride = ReadOp::GetRide {
            ride_id: rideshare_core::domain::RideId::parse("7").unwrap(),
        };
        let points = vec![user.clone(), ride.clone()];
        assert!(inline.read_inline(&points).is_some());
        assert!(handed_off.read_inline(&points).is_none());
        for grows in [
            ReadOp::ListUsers,
            ReadOp::CountRides,
            listing("01-01-2030:00-00-00"),
        ] {
            assert!(inline.read_inline(&[user.clone(), grows]).is_none());
        }
        assert!(inline
            .read_inline(&vec![ride.clone(); INLINE_READS + 1])
            .is_none());
        // The caller holding the connection (another read in progress) sends the next one on.
        let held = inline.inline.as_ref().unwrap().lock();
        assert!(inline.read_inline(&points).is_none());
        drop(held);
        let (a, b) = (
            inline.read(points.clone()).await.unwrap(),
            handed_off.read(points).await.unwrap(),
        );
        assert_eq!(a.applied_index, b.applied_index);
        assert_eq!(format!("{:?}", a.outcomes), format!("{:?}", b.outcomes));
    }

    #[test]
    fn repeated_ops_are_read_once_and_each_asker_gets_its_answer() {
        let user = ReadOp::UserExists {
            username: Username::parse("ann").unwrap(),
        };
        let early = listing("01-01-2030:00-00-00");
        let late = listing("01-01-2030:00-00-01");
        let ops = vec![
            ReadOp::ListUsers,
            early.clone(),
            ReadOp::ListUsers,
            user.clone(),
            late.clone(),
            early.clone(),
            ReadOp::ListUsers,
        ];
        let (distinct, slots) = distinct_ops(ops.clone());
        assert_eq!(distinct, vec![ReadOp::ListUsers, early, user, late]);
        let slots = slots.expect("repeats");
        assert_eq!(slots, vec![0, 1, 0, 2, 3, 1, 0]);
        for (op, slot) in ops.iter().zip(&slots) {
            assert_eq!(op, &distinct[*slot]);
        }

        // Each answer goes to every op that asked it, a failure included.
        let outcomes = vec![
            Ok(ReadOutcome::Count { count: 1 }),
            Ok(ReadOutcome::Count { count: 2 }),
            Err(Error::Protocol("no".into())),
            Ok(ReadOutcome::Count { count: 4 }),
        ];
        let spread: Vec<String> = spread(outcomes, &slots)
            .into_iter()
            .map(|o| match o {
                Ok(ReadOutcome::Count { count }) => count.to_string(),
                Ok(other) => panic!("{other:?}"),
                Err(e) => format!("{e:#}"),
            })
            .collect();
        assert_eq!(spread[..2], ["1", "2"]);
        assert_eq!(spread[2], "1");
        assert!(
            spread[3].starts_with("a read of this batch"),
            "{}",
            spread[3]
        );
        assert_eq!(spread[4..], ["4", "2", "1"]);
    }

    #[test]
    fn a_batch_without_repeats_is_passed_on_as_it_is() {
        let ops = vec![
            ReadOp::ListUsers,
            ReadOp::GetRide {
                ride_id: RideId::parse("7").unwrap(),
            },
            ReadOp::CountRides,
        ];
        let (distinct, slots) = distinct_ops(ops.clone());
        assert_eq!(distinct, ops);
        assert!(slots.is_none());
    }
}
