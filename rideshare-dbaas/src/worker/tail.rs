//! The tailer: follows the log, hands the records to the store owner in commit groups, and
//! once a group is durable wakes whoever waits on it (this master's writers, the applied index).
//! Also the worker's one call to `Log::append`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use rideshare_core::ops::{RequestId, WriteOutcome};
use tokio::sync::oneshot;

use super::store::Group;
use super::{Position, Shared};
use crate::error::{Error, Result};
use crate::log::{Log, LogReader, Record};
use crate::protocol::{encode, LogEntry, Refusal};
use crate::replica::Effect;

type Outcome = std::result::Result<(u64, WriteOutcome), Refusal>;

/// This master's writes waiting to see their entry applied, by request id. Write handlers
/// register, the tailer resolves; the lock is never held across an await.
#[derive(Default)]
pub(super) struct Waiters(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    by_request: HashMap<RequestId, Vec<oneshot::Sender<Outcome>>>,
    /// Set once this master is deposed: it answers nothing more.
    closed: bool,
}

impl Waiters {
    /// Registers a wait for `id`'s entry; `None` once deposed.
    pub fn register(&self, id: RequestId) -> Option<oneshot::Receiver<Outcome>> {
        let mut pending = self.0.lock();
        if pending.closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        pending.by_request.entry(id).or_default().push(tx);
        Some(rx)
    }

    pub fn resolve(&self, id: &RequestId, outcome: Outcome) {
        let waiters = self.0.lock().by_request.remove(id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Deposed: every waiter hears `NotMaster`, and later ones are refused at once.
    fn close(&self) {
        let all: Vec<_> = {
            let mut pending = self.0.lock();
            pending.closed = true;
            pending.by_request.drain().flat_map(|(_, w)| w).collect()
        };
        for waiter in all {
            let _ = waiter.send(Err(Refusal::NotMaster));
        }
    }
}

/// Appends one entry to the log: the only place the worker writes it.
pub(super) async fn append(log: &dyn Log, entry: &LogEntry) -> Result<()> {
    log.append(encode(entry)).await
}

/// Records one command to the store thread carries at most (more when one commit group is
/// larger). A backlog (catch-up, a burst) then costs one handoff to the store thread per this
/// many records rather than one per commit group, and this master's writers in it wait for at
/// most this many records' work before they hear back.
const PER_COMMAND: usize = 1024;

/// Follows the log from after `start_index` and applies every entry, grouping those that are
/// already there (`LogReader::next` is cancel-safe, so asking without waiting loses nothing).
/// Ends with `NotMaster` when a newer marker deposes this master.
#[tracing::instrument(name = "tail", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn tail(shared: Arc<Shared>, log: Arc<dyn Log>, start_index: u64) -> Result<()> {
    let mut reader = log.read_from(start_index + 1).await?;
    while let Some(first) = reader.next().await {
        let (groups, failed) = take_groups(first?, reader.as_mut(), shared.config.apply_group);
        let applied = shared.store.apply(groups).await?;
        for group in applied.groups {
            announce(&shared, group)?;
        }
        if let Some(e) = applied.failed.or(failed) {
            return Err(e);
        }
    }
    Err(Error::LogUnavailable("log closed".into()))
}

/// `first` and the records already waiting behind it, in commit groups of at most `size`
/// records, `PER_COMMAND` records in all (or one group); and the error that cut them short,
/// once the records before it are applied.
fn take_groups(
    first: Record,
    reader: &mut dyn LogReader,
    size: usize,
) -> (Vec<Vec<Record>>, Option<Error>) {
    let size = size.max(1);
    let mut left = size.max(PER_COMMAND) - 1;
    let mut groups = vec![vec![first]];
    while left > 0 {
        let record = match reader.next().now_or_never() {
            Some(Some(Ok(record))) => record,
            Some(Some(Err(e))) => return (groups, Some(e)),
            // Nothing more yet, or the log closed (the next wait says so).
            Some(None) | None => break,
        };
        left -= 1;
        match groups.last_mut() {
            Some(group) if group.len() < size => group.push(record),
            _ => groups.push(vec![record]),
        }
    }
    (groups, None)
}

/// Tells of one applied commit group, once it is durable: nobody hears of an entry (waiters,
/// the applied index, a deposition) before.
fn announce(shared: &Shared, group: Group) -> Result<()> {
    let mut deposed = false;
    for effect in group.effects {
        match effect {
            Effect::Answer(request_id, outcome) => shared.waiters.resolve(&request_id, outcome),
            Effect::Deposed {
                my_epoch,
                new_epoch,
            } => {
                tracing::warn!(my_epoch, new_epoch, "deposed by a newer master");
                shared.waiters.close();
                deposed = true;
            }
        }
    }
    shared.recent.push(crate::snapshot::Taken {
        index: group.last,
        epoch: group.epoch,
        checksum: group.checksum,
    });
    shared.position.send_replace(Position {
        index: group.last,
        epoch: group.epoch,
        checksum: Some(group.checksum.value()),
    });
    // Labelled by worker: in `rideshare up` every worker shares the process's registry.
    let worker = shared.config.id.clone();
    metrics::gauge!("rideshare_worker_applied_index", "worker" => worker.clone())
        .set(group.last as f64);
    metrics::gauge!("rideshare_worker_log_epoch", "worker" => worker).set(group.epoch as f64);
    if deposed {
        return Err(Error::NotMaster);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;

    /// A reader with `ready` records waiting, then (if `fail`) an error, then nothing yet.
    struct Waiting {
        next: u64,
        ready: u64,
        fail: bool,
    }

    #[async_trait]
    impl LogReader for Waiting {
        async fn next(&mut self) -> Option<Result<Record>> {
            if self.next <= self.ready {
                self.next += 1;
                return Some(Ok(Record {
                    index: self.next - 1,
                    data: Bytes::new(),
                }));
            }
            if std::mem::take(&mut self.fail) {
                return Some(Err(Error::LogUnavailable("gone".into())));
            }
            futures::future::pending().await
        }
    }

    fn sizes(groups: &[Vec<Record>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    fn take(ready: u64, fail: bool, size: usize) -> (Vec<Vec<Record>>, Option<Error>) {
        let mut reader = Waiting {
            next: 2,
            ready,
            fail,
        };
        let first = Record {
            index: 1,
            data: Bytes::new(),
        };
        take_groups(first, &mut reader, size)
    }

    #[test]
    fn what_waits_is_cut_into_groups_in_order_and_bounded_per_command() {
        let (groups, failed) = take(40, false, 16);
        assert_eq!(sizes(&groups), [16, 16, 8]);
        assert!(failed.is_none());
        let indexes: Vec<u64> = groups.iter().flatten().map(|r| r.index).collect();
        assert_eq!(indexes, (1..=40).collect::<Vec<_>>());

        let (groups, _) = take(10_000, false, 1);
        assert_eq!(groups.len(), PER_COMMAND, "one record per group, bounded");
        let (groups, _) = take(10_000, false, 4096);
        assert_eq!(
            sizes(&groups),
            [4096],
            "a group larger than the bound stays whole"
        );
    }

    #[test]
    fn an_error_cuts_the_groups_short_after_what_came_before() {
        let (groups, failed) = take(5, true, 2);
        assert_eq!(sizes(&groups), [2, 2, 1]);
        assert!(matches!(failed, Some(Error::LogUnavailable(_))));
    }
}
