//! `MemLog`: the in-memory [`Log`] used by tests and simulations, with fault controls; also the
//! in-memory index [`super::file::FileLog`] serves its readers from.
//!
//! Entries live in a `VecDeque<Bytes>` that starts at index `first` (index `i` is element
//! `i - first`), behind a parking_lot mutex that is never held across an `.await`; readers
//! waiting at the tail are woken through a `tokio::sync::watch`. Truncation pops entries off the
//! front and moves `first` on, so it frees their memory without renumbering anything; a reader
//! left behind yields [`Error::LogTruncated`] rather than skipping ahead.
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

#[derive(Debug)]
struct State {
    /// The index of `entries[0]`; `first - 1 + entries.len()` is the last index.
    first: u64,
    entries: VecDeque<Bytes>,
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
        MemLog::with_entries_from(1, entries)
    }

    /// A log truncated before `first` that holds `entries` at indexes `first..`: reading below
    /// `first` fails with [`Error::LogTruncated`], and the next append gets
    /// `first + entries.len()`.
    ///
    /// # Panics
    /// If `first` is 0 (indexes start at 1).
    pub fn with_entries_from(first: u64, entries: Vec<Bytes>) -> Self {
        assert!(first >= 1, "log indexes start at 1");
        let (changed, _) = watch::channel(0);
        MemLog {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    first,
                    entries: entries.into(),
                    unavailable: false,
                    append_delay: Duration::ZERO,
                    in_flight: VecDeque::new(),
                    committer_running: false,
                }),
                changed,
            }),
        }
    }

    /// While unavailable, `append`, `read_from`, `end`, `first` and `truncate_before` fail with [`Error::LogUnavailable`],
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

    /// The last index (0 when nothing was ever appended), like [`Log::end`] but never failing.
    /// After a truncation it is still the last index, not the number of entries held.
    pub fn len(&self) -> u64 {
        self.shared.lock().end()
    }

    /// Whether the last index is 0: nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends entries that are already durable elsewhere (the file log's confirmed batch), in
    /// order, bypassing delay and availability.
    pub(crate) fn push_confirmed(&self, batch: impl IntoIterator<Item = Bytes>) {
        self.shared.lock().entries.extend(batch);
        self.shared.bump();
    }

    /// Drops the entries below `index` (never past the end, so indexes do not move) and returns
    /// the first index kept; bypasses availability, like [`MemLog::push_confirmed`].
    pub(crate) fn drop_before(&self, index: u64) -> u64 {
        let first = {
            let mut state = self.shared.lock();
            let keep_from = index.clamp(state.first, state.end() + 1);
            let dropped = usize::try_from(keep_from - state.first).unwrap_or(usize::MAX);
            state.entries.drain(..dropped);
            state.first = keep_from;
            // A deque keeps its capacity; give it back once most of it is unused.
            if state.entries.capacity() > 4 * state.entries.len().max(1024) {
                state.entries.shrink_to_fit();
            }
            keep_from
        };
        // Readers left behind learn it on their next `next()`; waking them costs nothing.
        self.shared.bump();
        first
    }

    fn unavailable_error() -> Error {
        Error::LogUnavailable("in-memory log set unavailable".into())
    }
}

impl State {
    fn end(&self) -> u64 {
        self.first - 1 + self.entries.len() as u64
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
                    state.entries.push_back(next.data);
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
            state.entries.push_back(data);
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

    /// `from` 0 reads from index 1, like 1.
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        let from = from.max(1);
        {
            let state = self.shared.lock();
            if state.unavailable {
                return Err(MemLog::unavailable_error());
            }
            if from < state.first {
                return Err(Error::LogTruncated { first: state.first });
            }
        }
        Ok(Box::new(MemLogReader {
            shared: Arc::clone(&self.shared),
            changed: self.shared.changed.subscribe(),
            next: from,
        }))
    }

    async fn end(&self) -> Result<u64> {
        let state = self.shared.lock();
        if state.unavailable {
            return Err(MemLog::unavailable_error());
        }
        Ok(state.end())
    }

    /// Drops exactly the entries below `index` (up to the end), freeing their memory.
    async fn truncate_before(&self, index: u64) -> Result<u64> {
        if self.shared.lock().unavailable {
            return Err(MemLog::unavailable_error());
        }
        Ok(self.drop_before(index))
    }

    async fn first(&self) -> Result<u64> {
        let state = self.shared.lock();
        if state.unavailable {
            return Err(MemLog::unavailable_error());
        }
        Ok(state.first)
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
    /// Never `None`: an in-memory log is not closed while a reader holds it. Once the next
    /// entry has been truncated away, yields [`Error::LogTruncated`] on every call.
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
                if self.next < state.first {
                    return Some(Err(Error::LogTruncated { first: state.first }));
                }
                let slot = usize::try_from(self.next - state.first).unwrap_or(usize::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Bytes {
        Bytes::from(format!("e{i}"))
    }

    async fn filled(count: u64) -> MemLog {
        let log = MemLog::new();
        for i in 1..=count {
            log.append(entry(i)).await.unwrap();
        }
        log
    }

    async fn next_ok(reader: &mut Box<dyn LogReader>) -> Record {
        reader.next().await.expect("open").expect("no error")
    }

    #[tokio::test]
    async fn truncate_before_drops_exactly_the_entries_below_the_index() {
        let log = filled(10).await;
        assert_eq!(log.truncate_before(4).await.unwrap(), 4);
        assert_eq!(log.first().await.unwrap(), 4);
        assert_eq!(log.end().await.unwrap(), 10);
        assert_eq!(log.len(), 10, "len stays the last index");
        assert_eq!(
            log.shared.lock().entries.len(),
            7,
            "dropped entries are freed"
        );
        let mut r = log.read_from(4).await.unwrap();
        for i in 4..=10 {
            assert_eq!(
                next_ok(&mut r).await,
                Record {
                    index: i,
                    data: entry(i)
                }
            );
        }
        log.append(entry(11)).await.unwrap();
        assert_eq!(next_ok(&mut r).await.index, 11);
    }

    #[tokio::test]
    async fn read_from_below_first_fails_with_log_truncated() {
        let log = filled(5).await;
        log.truncate_before(3).await.unwrap();
        for from in [0, 1, 2] {
            assert!(
                matches!(
                    log.read_from(from).await.err(),
                    Some(Error::LogTruncated { first: 3 })
                ),
                "read_from({from})"
            );
        }
        assert!(log.read_from(3).await.is_ok());
    }

    #[tokio::test]
    async fn a_reader_behind_the_truncation_point_gets_log_truncated() {
        let log = filled(5).await;
        let mut behind = log.read_from(1).await.unwrap();
        assert_eq!(next_ok(&mut behind).await.index, 1);
        let mut ahead = log.read_from(4).await.unwrap();
        log.truncate_before(4).await.unwrap();
        for _ in 0..2 {
            assert!(
                matches!(
                    behind.next().await,
                    Some(Err(Error::LogTruncated { first: 4 }))
                ),
                "it does not skip ahead"
            );
        }
        assert_eq!(next_ok(&mut ahead).await.index, 4);
    }

    #[tokio::test]
    async fn truncating_past_the_end_keeps_the_next_index() {
        let log = filled(3).await;
        assert_eq!(log.truncate_before(100).await.unwrap(), 4);
        assert_eq!(log.first().await.unwrap(), 4);
        assert_eq!(log.end().await.unwrap(), 3);
        let mut r = log.read_from(4).await.unwrap();
        log.append(entry(4)).await.unwrap();
        assert_eq!(
            next_ok(&mut r).await,
            Record {
                index: 4,
                data: entry(4)
            }
        );
    }

    #[tokio::test]
    async fn truncate_before_never_moves_first_back() {
        let log = filled(6).await;
        log.truncate_before(5).await.unwrap();
        assert_eq!(log.truncate_before(2).await.unwrap(), 5);
        assert_eq!(log.first().await.unwrap(), 5);
    }

    #[tokio::test]
    async fn with_entries_from_starts_at_first() {
        let log = MemLog::with_entries_from(7, vec![entry(7), entry(8)]);
        assert_eq!(log.first().await.unwrap(), 7);
        assert_eq!(log.end().await.unwrap(), 8);
        assert!(matches!(
            log.read_from(6).await.err(),
            Some(Error::LogTruncated { first: 7 })
        ));
        let mut r = log.read_from(7).await.unwrap();
        assert_eq!(next_ok(&mut r).await.data, entry(7));
        log.append(entry(9)).await.unwrap();
        assert_eq!(log.end().await.unwrap(), 9);
    }

    #[tokio::test]
    async fn an_unavailable_log_refuses_truncation_and_first() {
        let log = filled(3).await;
        log.set_unavailable(true);
        assert!(matches!(
            log.truncate_before(2).await,
            Err(Error::LogUnavailable(_))
        ));
        assert!(matches!(log.first().await, Err(Error::LogUnavailable(_))));
        log.set_unavailable(false);
        assert_eq!(
            log.first().await.unwrap(),
            1,
            "the refused truncation dropped nothing"
        );
    }
}
