//! The tailer: follows the log, hands the records to the store owner in commit groups, and
//! once a group is durable wakes whoever waits on it (this master's writers, the applied index).
//! Also the worker's one call to `Log::append`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use rideshare_core::ops::{RequestId, WriteOutcome};
use tokio::sync::oneshot;

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

/// Follows the log from after `start_index` and applies every entry, grouping those that are
/// already there (`LogReader::next` is cancel-safe, so asking without waiting loses nothing).
/// Ends with `NotMaster` when a newer marker deposes this master.
#[tracing::instrument(name = "tail", skip_all, fields(worker = %shared.config.id))]
pub(super) async fn tail(shared: Arc<Shared>, log: Arc<dyn Log>, start_index: u64) -> Result<()> {
    let mut reader = log.read_from(start_index + 1).await?;
    while let Some(first) = reader.next().await {
        let (group, failed) = take_group(first?, reader.as_mut(), shared.config.apply_group);
        apply_group(&shared, group).await?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Err(Error::LogUnavailable("log closed".into()))
}

/// `first` and the records already waiting behind it, up to `limit`; and the error that cut
/// the group short, once the records before it are applied.
fn take_group(
    first: Record,
    reader: &mut dyn LogReader,
    limit: usize,
) -> (Vec<Record>, Option<Error>) {
    let mut group = vec![first];
    while group.len() < limit {
        match reader.next().now_or_never() {
            Some(Some(Ok(record))) => group.push(record),
            Some(Some(Err(e))) => return (group, Some(e)),
            // Nothing more yet, or the log closed (the next wait says so).
            Some(None) | None => break,
        }
    }
    (group, None)
}

/// Has the store owner apply one group; nobody hears of an entry (waiters, the applied index,
/// a deposition) before the group is durable.
async fn apply_group(shared: &Shared, records: Vec<Record>) -> Result<()> {
    let group = shared.store.apply(records).await?;
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
    shared.position.send_replace(Position {
        index: group.last,
        epoch: group.epoch,
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
