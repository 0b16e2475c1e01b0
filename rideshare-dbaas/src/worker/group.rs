//! Group commit: the master appends the writes waiting for it as one log record.
//!
//! Write handlers queue their write here ([`Appender::submit`]) after registering their waiter;
//! one task takes the first write waiting, every write queued behind it (up to
//! [`GroupCommit::max`], and for up to [`GroupCommit::wait`] more when that is not zero) and
//! appends them as one `Writes` record (a lone write as a plain `Write`). At most
//! [`GroupCommit::in_flight`] records wait for the log's confirmation at once; while they do,
//! the writes arriving queue up and go out together in the next record, so a group grows with
//! the load and a lone write is appended at once.
//!
//! Nothing here answers a write: the tailer does, once the record is applied (each write with
//! its own outcome, at the record's index). A record the log refuses fails every write in it
//! (`Unavailable`), as a refused lone append did before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::Shared;
use crate::log::Log;
use crate::protocol::{encode, EntryBody, GroupedWrite, LogEntry, Refusal, VERSION};

/// The master's group commit settings. Every bound is at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// Writes in one record at most (1: every write its own record).
    pub max: usize,
    /// How long the first write of a record may wait for more before the record is appended
    /// (0: only the writes already queued join it).
    pub wait: Duration,
    /// Records appended and not yet confirmed at most.
    pub in_flight: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max: 64,
            wait: Duration::ZERO,
            in_flight: 2,
        }
    }
}

/// Where the master's write handlers queue their writes.
pub(super) struct Appender {
    queue: mpsc::Sender<GroupedWrite>,
}

impl Appender {
    /// Starts the task that appends the queued writes of `epoch` as records; it ends when
    /// every [`Appender`] is dropped, or with the set it is spawned on.
    pub fn start(
        shared: Arc<Shared>,
        log: Arc<dyn Log>,
        epoch: u64,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let settings = shared.config.group_commit;
        // The queue holds at most what the master holds unacked (its prefetch) anyway; the
        // bound only keeps a mistake from growing it.
        let bound = usize::from(shared.config.write_prefetch)
            .max(settings.max)
            .max(1);
        let (queue, queued) = mpsc::channel(bound);
        tasks.spawn(run(shared, log, epoch, queued, settings));
        Appender { queue }
    }

    /// Queues one write for the next record; `false` when the appender is gone (the master
    /// is stopping).
    pub async fn submit(&self, write: GroupedWrite) -> bool {
        self.queue.send(write).await.is_ok()
    }
}

async fn run(
    shared: Arc<Shared>,
    log: Arc<dyn Log>,
    epoch: u64,
    mut queued: mpsc::Receiver<GroupedWrite>,
    settings: GroupCommit,
) {
    let max = settings.max.max(1);
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let mut confirms = JoinSet::new();
    loop {
        // A free slot first: while every slot waits for its confirmation, writes queue up.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queued.recv().await else {
            return;
        };
        let mut writes = vec![first];
        take_queued(&mut queued, &mut writes, max);
        if !settings.wait.is_zero() && writes.len() < max {
            let deadline = tokio::time::Instant::now() + settings.wait;
            while writes.len() < max {
                match tokio::time::timeout_at(deadline, queued.recv()).await {
                    Ok(Some(write)) => {
                        writes.push(write);
                        take_queued(&mut queued, &mut writes, max);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let ids: Vec<_> = writes.iter().map(|w| w.request_id.clone()).collect();
        metrics::histogram!("rideshare_worker_group_writes").record(ids.len() as f64);
        let entry = LogEntry {
            v: VERSION,
            epoch,
            body: EntryBody::writes(writes),
        };
        // `append` fixes the record's place before it returns; only the confirmation is waited
        // for in the background, holding the slot.
        let appended = log.append(encode(&entry));
        let shared = Arc::clone(&shared);
        while confirms.try_join_next().is_some() {}
        confirms.spawn(async move {
            let confirmed = appended.await;
            drop(slot);
            if let Err(e) = confirmed {
                tracing::warn!(error = %e, writes = ids.len(), "append of a write record failed");
                for id in &ids {
                    shared.waiters.resolve(id, Err(Refusal::Unavailable));
                }
            }
        });
    }
}

/// Moves the writes already queued into `writes`, up to `max` in all.
fn take_queued(
    queued: &mut mpsc::Receiver<GroupedWrite>,
    writes: &mut Vec<GroupedWrite>,
    max: usize,
) {
    while writes.len() < max {
        match queued.try_recv() {
            Ok(write) => writes.push(write),
            Err(_) => break,
        }
    }
}
