//! `MemLog`: the in-memory [`Log`] used by tests and simulations, with fault controls; also the
//! in-memory index [`super::file::FileLog`] serves its readers from.
//!
//! Entries live in a `Vec<Bytes>` (index `i` is element `i - 1`) behind a parking_lot mutex
//! that is never held across an `.await`; readers waiting at the tail are woken through a
//! `tokio::sync::watch`.
//!
//! An append takes its place in the order when `append` is called, not when its confirmation is
//! first polled, so appends a task pipelines (creates in order, then awaits together) land in call
//! order whatever order they are polled in. It behaves like a client that sends the request at
//! once and waits for the confirm: an append whose future is dropped may still land.
//!
//! Fault controls: [`MemLog::set_unavailable`], [`MemLog::set_append_delay`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Appended, Log, LogReader, Record};
use crate::error::{Error, Result};

/// An in-memory log. Cloning gives another handle on the same entries.
#[derive(Clone, Debug)]
pub struct MemLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change readers may wait for (a new entry, availability).
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Bytes>,
    unavailable: bool,
    append_delay: Duration,
    /// Appends called while others were still in flight, in call order. Only the committer task
    /// takes from it, so they commit in that order.
    in_flight: VecDeque<InFlight>,
    committer_running: bool,
}

#[derive(Debug)]
struct InFlight {
    data: Bytes,
    commit_at: Instant,
    done: oneshot::Sender<Result<()>>,
}

impl Default for MemLog {
    fn default() -> Self {
        MemLog::new()
    }
}

impl MemLog {
    pub fn new() -> Self {
        MemLog::with_entries(Vec::new())
    }

    /// A log that already holds `entries` (at indexes 1..).
    pub fn with_entries(entries: Vec<Bytes>) -> Self {
        let (changed, _) = watch::channel(0);
        MemLog {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    entries,
                    ..State::default()
                }),
                changed,
            }),
        }
    }

    /// While unavailable, `append`, `read_from` and `end` fail with [`Error::LogUnavailable`],
    /// and readers' `next()` yields that error (they continue where they were once it is
    /// available again). Appends already in flight fail when their turn to commit comes.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.lock().unavailable = unavailable;
        self.shared.bump();
    }

    /// Makes each later append commit (become readable and confirmed) `delay` after it was
    /// called, still in call order.
    pub fn set_append_delay(&self, delay: Duration) {
        self.shared.lock().append_delay = delay;
    }

    /// Number of entries (the last index).
    pub fn len(&self) -> u64 {
        self.shared.lock().entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends entries that are already durable elsewhere (the file log's confirmed batch), in
    /// order, bypassing delay and availability.
    pub(crate) fn push_confirmed(&self, batch: impl IntoIterator<Item = Bytes>) {
        self.shared.lock().entries.extend(batch);
        self.shared.bump();
    }

    fn unavailable_error() -> Error {
        Error::LogUnavailable("in-memory log set unavailable".into())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Commits in-flight appends in call order, each at its time, until none is left.
    async fn run_committer(self: Arc<Self>) {
        loop {
            let commit_at = {
                let mut state = self.lock();
                match state.in_flight.front() {
                    Some(front) => front.commit_at,
                    None => {
                        state.committer_running = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(commit_at).await;
            let Some(next) = self.lock().in_flight.pop_front() else {
                continue;
            };
            let result = {
                let mut state = self.lock();
                if state.unavailable {
                    Err(MemLog::unavailable_error())
                } else {
                    state.entries.push(next.data);
                    Ok(())
                }
            };
            self.bump();
            // The appender may have stopped waiting; the entry stands either way.
            let _ = next.done.send(result);
        }
    }
}

#[async_trait]
impl Log for MemLog {
    fn append(&self, data: Bytes) -> Appended {
        let mut state = self.shared.lock();
        if state.unavailable {
            return Appended::ready(Err(MemLog::unavailable_error()));
        }
        let delay = state.append_delay;
        if delay.is_zero() && state.in_flight.is_empty() {
            state.entries.push(data);
            drop(state);
            self.shared.bump();
            return Appended::ready(Ok(()));
        }
        let (done, confirmed) = oneshot::channel();
        state.in_flight.push_back(InFlight {
            data,
            commit_at: Instant::now() + delay,
            done,
        });
        if !state.committer_running {
            state.committer_running = true;
            tokio::spawn(Arc::clone(&self.shared).run_committer());
        }
        drop(state);
        Appended::from_receiver(confirmed, "in-memory log stopped before confirming")
    }

    /// `from` 0 reads from the first entry, like 1.
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        if self.shared.lock().unavailable {
            return Err(MemLog::unavailable_error());
        }
        Ok(Box::new(MemLogReader {
            shared: Arc::clone(&self.shared),
            changed: self.shared.changed.subscribe(),
            next: from.max(1),
        }))
    }

    async fn end(&self) -> Result<u64> {
        let state = self.shared.lock();
        if state.unavailable {
            return Err(MemLog::unavailable_error());
        }
        Ok(state.entries.len() as u64)
    }
}

/// Follows a [`MemLog`] from an index.
#[derive(Debug)]
pub struct MemLogReader {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    next: u64,
}

#[async_trait]
impl LogReader for MemLogReader {
    /// Never `None`: an in-memory log is not closed while a reader holds it.
    async fn next(&mut self) -> Option<Result<Record>> {
        loop {
            // Mark the current generation seen *before* looking, so a change made after the look
            // wakes the wait below.
            self.changed.borrow_and_update();
            {
                let state = self.shared.lock();
                if state.unavailable {
                    return Some(Err(MemLog::unavailable_error()));
                }
                let slot = usize::try_from(self.next - 1).unwrap_or(usize::MAX);
                if let Some(data) = state.entries.get(slot) {
                    let record = Record {
                        index: self.next,
                        data: data.clone(),
                    };
                    self.next += 1;
                    return Some(Ok(record));
                }
            }
            if self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}
