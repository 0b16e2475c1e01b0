//! `FileLog`: the [`Log`] of embedded mode (`rideshare up`), persisted in append-only segment
//! files.
//!
//! Each record is framed as `[u32 LE length][u32 LE crc32][bytes]`, where the crc32 covers the
//! four length bytes and then the data (so a zero-filled tail, which a crash can leave behind,
//! does not pass as empty records). [`FileLog::open`] reads every segment, truncates a torn or
//! corrupt tail of the last one (with a warning) and keeps the entries in memory, in a [`MemLog`]
//! that serves the readers.
//!
//! # Segments
//!
//! The log at `path` is a run of files beside it, `<path>.<first index>`, the index written as
//! 20 zero-padded digits (`rideshare.log.00000000000000000001`), so that names sort in log
//! order. A segment holds the records from its first index up to the next segment's first index
//! minus one; the last segment is the one being written. When it has grown to
//! [`FileLogConfig::segment_bytes`] or more, the flusher starts a new one before writing the next
//! batch (so a segment may pass the bound by up to one batch) and fsyncs the directory so the
//! new file's name is durable before any entry in it is confirmed.
//!
//! At open the segments must be contiguous: each one's first index is the previous one's first
//! index plus its record count. A gap, or a torn or corrupt record anywhere but in the last
//! segment, fails the open rather than renumber or skip entries. A file at exactly `path`, the
//! single-file layout from before segments, is adopted as the segment that starts at 1 (renamed,
//! then the directory fsynced); it and segment files together fail the open, as the two cannot
//! be told apart.
//!
//! [`Log::truncate_before`] deletes whole segments whose every entry is below the index, oldest
//! first and fsyncing the directory after each, so a crash leaves a shorter but still contiguous
//! run; it never deletes the segment being written. After a reopen the log starts at the first
//! index of its first remaining segment.
//!
//! Appends are group-committed: an append joins a pending queue when it is called (which fixes
//! its order), and one blocking flusher at a time writes everything pending, fsyncs once, then
//! makes the batch readable and confirms it. Nothing holds a lock across an `.await`; the files
//! are only touched on tokio's blocking pool.
//!
//! It must not confirm an entry before `fdatasync` returned, nor accept a record over
//! [`MAX_RECORD_BYTES`]. After a failed write it refuses every later append (the file's tail is
//! unknown until it is reopened, which truncates it back to the last whole record).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use super::mem::MemLog;
use super::{Appended, Log, LogReader};
use crate::error::{Error, Result};

/// Largest entry a `FileLog` accepts, in bytes.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes one group commit writes before it fsyncs; the rest waits for the next one.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
/// Digits of the first index in a segment file's name.
const INDEX_DIGITS: usize = 20;

/// How a [`FileLog`] lays out its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLogConfig {
    /// Size at which the flusher starts a new segment, in bytes; the unit truncation frees.
    pub segment_bytes: u64,
}

impl FileLogConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            segment_bytes: FileLogConfig::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// The file of the segment of the log at `path` that starts at index `first`.
pub fn segment_path(path: impl AsRef<Path>, first: u64) -> PathBuf {
    let mut name = path.as_ref().as_os_str().to_owned();
    name.push(format!(".{first:0width$}", width = INDEX_DIGITS));
    PathBuf::from(name)
}

/// A log in segment files. Cloning gives another handle on the same log.
#[derive(Clone, Debug)]
pub struct FileLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    config: FileLogConfig,
    entries: MemLog,
    /// Short critical sections only: appends push here when called.
    queue: Mutex<Queue>,
    /// Held only by the flusher, on a blocking thread, while it rolls, writes and fsyncs.
    writer: Mutex<Writer>,
    /// The segments on disk, oldest first; the last is the one being written. Locked only on
    /// blocking threads: by the flusher to add a segment, by truncation while it deletes.
    segments: Mutex<VecDeque<Segment>>,
}

/// The segment being written.
#[derive(Debug)]
struct Writer {
    file: File,
    /// Bytes in it so far.
    bytes: u64,
    /// The index the next record written gets.
    next_index: u64,
}

#[derive(Clone, Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Pending>,
    flushing: bool,
    /// Set after a failed write or fsync: the tail of the file is unknown.
    broken: Option<String>,
}

#[derive(Debug)]
struct Pending {
    data: Bytes,
    done: oneshot::Sender<Result<()>>,
}

impl FileLog {
    /// Opens (or creates) the log at `path` with the default [`FileLogConfig`]; see
    /// [`FileLog::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<FileLog> {
        FileLog::open_with(path, FileLogConfig::default())
    }

    /// Opens (or creates) the log whose segments are `<path>.<first index>`, adopting a legacy
    /// single file at `path`, and truncating a torn or corrupt tail of the last segment. It reads
    /// every segment, blocking the calling thread.
    pub fn open_with(path: impl AsRef<Path>, config: FileLogConfig) -> Result<FileLog> {
        let path = path.as_ref().to_path_buf();
        adopt_legacy_file(&path)?;
        let mut found = list_segments(&path)?;
        if found.is_empty() {
            let first = segment_path(&path, 1);
            create_segment(&first).map_err(|e| {
                Error::adapter(format!("creating log segment {}", first.display()), e)
            })?;
            found.push(Segment {
                first: 1,
                path: first,
            });
        }

        let mut entries = Vec::new();
        let mut next_index = found[0].first;
        let last = found.len() - 1;
        let mut last_len = 0;
        for (i, segment) in found.iter().enumerate() {
            let shown = segment.path.display();
            if segment.first != next_index {
                return Err(corrupt(format!(
                    "log segment {shown} starts at index {}, but the previous segment ends at {}; \
                     a segment is missing",
                    segment.first,
                    next_index - 1
                )));
            }
            let contents = Bytes::from(
                std::fs::read(&segment.path)
                    .map_err(|e| Error::adapter(format!("reading log segment {shown}"), e))?,
            );
            let scan = scan(&contents);
            if let Some(problem) = scan.problem {
                if i != last {
                    return Err(corrupt(format!(
                        "log segment {shown} is damaged at offset {} ({problem}), and it is not \
                         the last segment",
                        scan.valid_len
                    )));
                }
                tracing::warn!(
                    path = %shown,
                    offset = scan.valid_len,
                    dropped_bytes = contents.len() - scan.valid_len,
                    problem,
                    kept_entries = scan.entries.len(),
                    "log segment has a torn or corrupt tail; truncating it"
                );
                OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .and_then(|f| {
                        f.set_len(scan.valid_len as u64)?;
                        f.sync_all()
                    })
                    .map_err(|e| Error::adapter(format!("truncating log segment {shown}"), e))?;
            }
            next_index += scan.entries.len() as u64;
            last_len = scan.valid_len as u64;
            entries.extend(scan.entries);
        }

        let current = &found[last];
        let file = OpenOptions::new()
            .append(true)
            .open(&current.path)
            .map_err(|e| {
                Error::adapter(format!("opening log segment {}", current.path.display()), e)
            })?;
        Ok(FileLog {
            shared: Arc::new(Shared {
                entries: MemLog::with_entries_from(found[0].first, entries),
                queue: Mutex::new(Queue::default()),
                writer: Mutex::new(Writer {
                    file,
                    bytes: last_len,
                    next_index,
                }),
                segments: Mutex::new(found.into()),
                path,
                config,
            }),
        })
    }

    /// The path the segment names are built on (not a file itself).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn config(&self) -> FileLogConfig {
        self.shared.config
    }
}

/// An error for files that do not form a valid log: `what` says which and how.
fn corrupt(what: String) -> Error {
    Error::adapter(
        what,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the log's files do not form one contiguous log",
        ),
    )
}

/// The directory the log's files live in.
fn log_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Renames a single-file log at exactly `path` to the segment that starts at 1.
fn adopt_legacy_file(path: &Path) -> Result<()> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::adapter(format!("looking for log file {shown}"), e)),
        Ok(_) => {}
    }
    if let Some(segment) = list_segments(path)?.first() {
        return Err(corrupt(format!(
            "both a single-file log {shown} and log segments (such as {}) exist; keep one",
            segment.path.display()
        )));
    }
    let first = segment_path(path, 1);
    tracing::info!(from = %shown, to = %first.display(), "adopting a single-file log as its first segment");
    std::fs::rename(path, &first)
        .map_err(|e| Error::adapter(format!("renaming log file {shown}"), e))?;
    sync_dir(log_dir(path))
}

/// The segment files of the log at `path`, in index order.
fn list_segments(path: &Path) -> Result<Vec<Segment>> {
    let dir = log_dir(path);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(corrupt(format!(
            "log path {} does not end in a UTF-8 file name",
            path.display()
        )));
    };
    let prefix = format!("{name}.");
    let listing = std::fs::read_dir(dir)
        .map_err(|e| Error::adapter(format!("listing log directory {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for item in listing {
        let item = item
            .map_err(|e| Error::adapter(format!("listing log directory {}", dir.display()), e))?;
        let file_name = item.file_name();
        let Some(digits) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if digits.len() != INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let first: u64 = digits
            .parse()
            .map_err(|_| corrupt(format!("log segment {digits} has an index out of range")))?;
        if first == 0 {
            return Err(corrupt(format!(
                "log segment {} starts at index 0",
                item.path().display()
            )));
        }
        segments.push(Segment {
            first,
            path: segment_path(path, first),
        });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Creates an empty segment file and makes its name durable.
fn create_segment(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)?;
    File::open(log_dir(path))?.sync_all()?;
    Ok(file)
}

/// What a scan of the file found: the whole records, and where and why it stopped early.
struct Scan {
    entries: Vec<Bytes>,
    valid_len: usize,
    problem: Option<&'static str>,
}

fn scan(contents: &Bytes) -> Scan {
    let mut entries = Vec::new();
    let mut offset = 0;
    let problem = loop {
        let rest = &contents[offset..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER_BYTES {
            break Some("partial header");
        }
        let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD_BYTES {
            break Some("length over the record limit");
        }
        if rest.len() < HEADER_BYTES + len {
            break Some("partial record");
        }
        let start = offset + HEADER_BYTES;
        let data = contents.slice(start..start + len);
        if checksum(&len_bytes, &data) != crc {
            break Some("checksum mismatch");
        }
        entries.push(data);
        offset = start + len;
    };
    Scan {
        entries,
        valid_len: offset,
        problem,
    }
}

fn checksum(len_bytes: &[u8; 4], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(data);
    hasher.finalize()
}

fn encode_into(buf: &mut Vec<u8>, data: &[u8]) {
    // `append` refuses records over MAX_RECORD_BYTES, so the length fits in a u32.
    let len_bytes = (data.len() as u32).to_le_bytes();
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&checksum(&len_bytes, data).to_le_bytes());
    buf.extend_from_slice(data);
}

/// Makes the directory's entries (a created, renamed or deleted file) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::adapter(format!("syncing directory {}", dir.display()), e))
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock()
    }

    /// Runs the flusher; should it panic, refuses further appends rather than leave them waiting
    /// for a flusher that will never run.
    fn flush_guarded(&self) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.flush_pending()));
        if run.is_err() {
            let mut queue = self.queue();
            queue.flushing = false;
            queue.broken = Some(format!("log {} flusher panicked", self.path.display()));
            // Dropping their senders fails the waiting appends.
            queue.pending.clear();
        }
    }

    /// Starts a new segment at the next index once the current one has reached the size bound
    /// (and holds something, so a segment is never empty behind the one being written).
    /// Fails with what it was doing and why.
    fn roll_if_full(&self, writer: &mut Writer) -> Result<(), (String, std::io::Error)> {
        if writer.bytes == 0 || writer.bytes < self.config.segment_bytes {
            return Ok(());
        }
        let path = segment_path(&self.path, writer.next_index);
        // Durable (file and directory entry) before any entry in it is confirmed.
        let file = create_segment(&path)
            .map_err(|e| (format!("creating log segment {}", path.display()), e))?;
        self.segments.lock().push_back(Segment {
            first: writer.next_index,
            path,
        });
        writer.file = file;
        writer.bytes = 0;
        Ok(())
    }

    /// Deletes the segments whose every entry is below `index`, oldest first, never the one
    /// being written, then drops their entries from memory; returns the first index kept.
    /// Blocks: runs on the blocking pool.
    fn truncate_before(&self, index: u64) -> Result<u64> {
        let mut segments = self.segments.lock();
        let mut result = Ok(());
        // The next segment's first index bounds this one's entries; the last segment has no
        // next one, so it is never deleted.
        while segments.len() > 1 && segments[1].first <= index {
            let doomed = &segments[0].path;
            if let Err(e) = std::fs::remove_file(doomed) {
                result = Err(Error::adapter(
                    format!("deleting log segment {}", doomed.display()),
                    e,
                ));
                break;
            }
            tracing::info!(path = %doomed.display(), "deleted a log segment below a snapshot");
            segments.pop_front();
            // Each deletion durable before the next, so a crash leaves a contiguous run.
            if let Err(e) = sync_dir(log_dir(&self.path)) {
                result = Err(e);
                break;
            }
        }
        let first = segments[0].first;
        drop(segments);
        self.entries.drop_before(first);
        result.map(|()| first)
    }

    /// Writes and fsyncs pending appends, batch by batch, until none is left. Runs on a blocking
    /// thread, alone: `Queue::flushing` admits one flusher at a time.
    fn flush_pending(&self) {
        let mut writer = self.writer.lock();
        loop {
            let batch = {
                let mut queue = self.queue();
                if queue.pending.is_empty() || queue.broken.is_some() {
                    queue.flushing = false;
                    let reason = queue.broken.clone();
                    let left: Vec<Pending> = queue.pending.drain(..).collect();
                    drop(queue);
                    if let Some(reason) = reason {
                        for p in left {
                            let _ = p.done.send(Err(Error::LogUnavailable(reason.clone())));
                        }
                    }
                    return;
                }
                let mut bytes = 0;
                let mut batch = Vec::new();
                while let Some(p) = queue.pending.front() {
                    if !batch.is_empty() && bytes + p.data.len() > MAX_BATCH_BYTES {
                        break;
                    }
                    bytes += p.data.len() + HEADER_BYTES;
                    batch.extend(queue.pending.pop_front());
                }
                batch
            };
            let mut buf = Vec::with_capacity(
                batch
                    .iter()
                    .map(|p| p.data.len() + HEADER_BYTES)
                    .sum::<usize>(),
            );
            for p in &batch {
                encode_into(&mut buf, &p.data);
            }
            let written = self.roll_if_full(&mut writer).and_then(|()| {
                writer
                    .file
                    .write_all(&buf)
                    .and_then(|()| writer.file.sync_data())
                    .map_err(|e| (format!("appending to log {}", self.path.display()), e))
            });
            match written {
                Ok(()) => {
                    writer.bytes += buf.len() as u64;
                    writer.next_index += batch.len() as u64;
                    // Readable only now that it is durable, in the order it was written.
                    self.entries
                        .push_confirmed(batch.iter().map(|p| p.data.clone()));
                    for p in batch {
                        let _ = p.done.send(Ok(()));
                    }
                }
                Err((context, e)) => {
                    let reason = format!("{context} failed: {e}");
                    tracing::error!(path = %self.path.display(), error = %e, context, "log append failed; refusing further appends until reopened");
                    self.queue().broken = Some(reason);
                    for p in batch {
                        let _ = p.done.send(Err(Error::adapter(
                            context.clone(),
                            std::io::Error::new(e.kind(), e.to_string()),
                        )));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Log for FileLog {
    fn append(&self, data: Bytes) -> Appended {
        if data.len() > MAX_RECORD_BYTES {
            return Appended::ready(Err(Error::LogUnavailable(format!(
                "entry of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
                data.len()
            ))));
        }
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            Err(e) => {
                return Appended::ready(Err(Error::adapter(
                    "appending to log file outside a tokio runtime",
                    e,
                )))
            }
        };
        let (done, confirmed) = oneshot::channel();
        {
            let mut queue = self.shared.queue();
            if let Some(reason) = &queue.broken {
                return Appended::ready(Err(Error::LogUnavailable(reason.clone())));
            }
            queue.pending.push_back(Pending { data, done });
            if !queue.flushing {
                queue.flushing = true;
                let shared = Arc::clone(&self.shared);
                // The flusher owns its work: dropping this append's confirmation does not stop it.
                runtime.spawn_blocking(move || shared.flush_guarded());
            }
        }
        Appended::from_receiver(confirmed, "log file flusher stopped before confirming")
    }

    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        self.shared.entries.read_from(from).await
    }

    async fn end(&self) -> Result<u64> {
        self.shared.entries.end().await
    }

    /// Deletes whole segments below `index`; see the module docs.
    async fn truncate_before(&self, index: u64) -> Result<u64> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.truncate_before(index))
            .await
            .map_err(|e| Error::adapter("log truncation task failed", e))?
    }

    async fn first(&self) -> Result<u64> {
        self.shared.entries.first().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Record;

    /// Each test entry is 2 bytes, 10 with its header: with this bound a segment takes two
    /// appends made one at a time, and the third starts a new one.
    const SMALL: FileLogConfig = FileLogConfig { segment_bytes: 20 };

    fn entry(i: u64) -> Bytes {
        Bytes::from(format!("e{i}"))
    }

    fn open(path: &Path) -> FileLog {
        FileLog::open_with(path, SMALL).unwrap()
    }

    async fn filled(path: &Path, count: u64) -> FileLog {
        let log = open(path);
        for i in 1..=count {
            log.append(entry(i)).await.unwrap();
        }
        log
    }

    /// The first indexes of the segment files on disk.
    fn segments_on_disk(path: &Path) -> Vec<u64> {
        list_segments(path)
            .unwrap()
            .into_iter()
            .map(|s| s.first)
            .collect()
    }

    /// Every entry from `from` to the end, checking each index.
    async fn records_from(log: &FileLog, from: u64) -> Vec<Bytes> {
        let end = log.end().await.unwrap();
        let mut r = log.read_from(from).await.unwrap();
        let mut got = Vec::new();
        for index in from..=end {
            let record = r.next().await.unwrap().unwrap();
            assert_eq!(record.index, index);
            got.push(record.data);
        }
        got
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
        indexes.map(entry).collect()
    }

    #[tokio::test]
    async fn segments_roll_once_the_current_one_reaches_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = filled(&path, 5).await;
        assert_eq!(segments_on_disk(&path), [1, 3, 5]);
        assert!(!path.exists(), "no file at the bare path");
        assert_eq!(
            std::fs::metadata(segment_path(&path, 3)).unwrap().len(),
            20,
            "entries 3 and 4"
        );
        drop(log);
        let log = open(&path);
        assert_eq!(log.first().await.unwrap(), 1);
        assert_eq!(log.end().await.unwrap(), 5);
        assert_eq!(records_from(&log, 1).await, entries(1..=5));
        log.append(entry(6)).await.unwrap();
        assert_eq!(segments_on_disk(&path), [1, 3, 5], "6 joins 5's segment");
    }

    #[tokio::test]
    async fn the_default_config_keeps_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = FileLog::open(&path).unwrap();
        for i in 1..=20 {
            log.append(entry(i)).await.unwrap();
        }
        assert_eq!(segments_on_disk(&path), [1]);
        assert_eq!(log.config(), FileLogConfig::default());
    }

    #[tokio::test]
    async fn truncate_deletes_only_whole_segments_below_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = filled(&path, 6).await;
        assert_eq!(segments_on_disk(&path), [1, 3, 5]);
        // Segment 3 holds 3 and 4: 4 is at the index, so it stays, and 3 with it.
        assert_eq!(log.truncate_before(4).await.unwrap(), 3);
        assert_eq!(segments_on_disk(&path), [3, 5]);
        assert_eq!(log.first().await.unwrap(), 3);
        assert_eq!(log.end().await.unwrap(), 6);
        assert_eq!(records_from(&log, 3).await, entries(3..=6));
        assert!(matches!(
            log.read_from(2).await.err(),
            Some(Error::LogTruncated { first: 3 })
        ));
        // Below what is already gone: nothing changes.
        assert_eq!(log.truncate_before(2).await.unwrap(), 3);
        assert_eq!(segments_on_disk(&path), [3, 5]);
    }

    #[tokio::test]
    async fn truncate_never_deletes_the_segment_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = filled(&path, 4).await;
        assert_eq!(segments_on_disk(&path), [1, 3]);
        // Everything is covered, but segment 3 is the one being written.
        assert_eq!(log.truncate_before(5).await.unwrap(), 3);
        assert_eq!(segments_on_disk(&path), [3]);
        assert_eq!(records_from(&log, 3).await, entries(3..=4));
        log.append(entry(5)).await.unwrap();
        assert_eq!(segments_on_disk(&path), [3, 5]);
        assert_eq!(records_from(&log, 3).await, entries(3..=5));
    }

    #[tokio::test]
    async fn reopening_after_truncation_keeps_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = filled(&path, 6).await;
        log.truncate_before(6).await.unwrap();
        drop(log);
        assert_eq!(segments_on_disk(&path), [5]);
        let log = open(&path);
        assert_eq!(log.first().await.unwrap(), 5);
        assert_eq!(log.end().await.unwrap(), 6);
        assert_eq!(records_from(&log, 5).await, entries(5..=6));
        assert!(matches!(
            log.read_from(4).await.err(),
            Some(Error::LogTruncated { first: 5 })
        ));
        log.append(entry(7)).await.unwrap();
        assert_eq!(records_from(&log, 5).await, entries(5..=7));
        drop(log);
        let log = open(&path);
        assert_eq!(log.end().await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_reader_behind_the_truncation_gets_log_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = filled(&path, 6).await;
        let mut behind = log.read_from(1).await.unwrap();
        assert_eq!(behind.next().await.unwrap().unwrap().index, 1);
        log.truncate_before(5).await.unwrap();
        assert!(matches!(
            behind.next().await,
            Some(Err(Error::LogTruncated { first: 5 }))
        ));
    }

    #[tokio::test]
    async fn a_single_file_log_is_adopted_as_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut legacy = Vec::new();
        for i in 1..=3 {
            encode_into(&mut legacy, &entry(i));
        }
        std::fs::write(&path, &legacy).unwrap();

        let log = open(&path);
        assert!(!path.exists(), "renamed away");
        assert_eq!(
            std::fs::read(segment_path(&path, 1)).unwrap(),
            legacy,
            "same bytes"
        );
        assert_eq!(log.first().await.unwrap(), 1);
        assert_eq!(records_from(&log, 1).await, entries(1..=3));
        log.append(entry(4)).await.unwrap();
        assert_eq!(segments_on_disk(&path), [1, 4]);
        drop(log);
        let log = open(&path);
        assert_eq!(records_from(&log, 1).await, entries(1..=4));
    }

    #[tokio::test]
    async fn a_single_file_log_beside_segments_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(filled(&path, 1).await);
        std::fs::write(&path, b"").unwrap();
        let err = FileLog::open_with(&path, SMALL).unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_middle_segment_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(filled(&path, 6).await);
        std::fs::remove_file(segment_path(&path, 3)).unwrap();
        let err = FileLog::open_with(&path, SMALL).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn a_torn_tail_in_the_last_segment_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(filled(&path, 6).await);
        let last = segment_path(&path, 5);
        let len = std::fs::metadata(&last).unwrap().len();
        let file = OpenOptions::new().write(true).open(&last).unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);

        let log = open(&path);
        assert_eq!(log.end().await.unwrap(), 5);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), 10);
        log.append(Bytes::from_static(b"6b")).await.unwrap();
        drop(log);
        let log = open(&path);
        let mut want = entries(1..=5);
        want.push(Bytes::from_static(b"6b"));
        assert_eq!(records_from(&log, 1).await, want);
    }

    #[tokio::test]
    async fn a_torn_middle_segment_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(filled(&path, 6).await);
        let middle = segment_path(&path, 3);
        let file = OpenOptions::new().write(true).open(&middle).unwrap();
        file.set_len(17).unwrap();
        drop(file);
        let err = FileLog::open_with(&path, SMALL).unwrap_err().to_string();
        assert!(err.contains("not the last segment"), "{err}");
        assert_eq!(
            std::fs::metadata(&middle).unwrap().len(),
            17,
            "left for an operator to look at"
        );
    }

    #[tokio::test]
    async fn an_empty_segment_left_by_a_crash_while_rolling_is_written_into() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(filled(&path, 2).await);
        std::fs::write(segment_path(&path, 3), b"").unwrap();
        let log = open(&path);
        assert_eq!(log.end().await.unwrap(), 2);
        log.append(entry(3)).await.unwrap();
        assert_eq!(segments_on_disk(&path), [1, 3]);
        assert_eq!(std::fs::metadata(segment_path(&path, 3)).unwrap().len(), 10);
        assert_eq!(
            log.read_from(3)
                .await
                .unwrap()
                .next()
                .await
                .unwrap()
                .unwrap(),
            Record {
                index: 3,
                data: entry(3)
            }
        );
    }

    #[test]
    fn segment_names_sort_in_index_order() {
        assert_eq!(
            segment_path("/data/rideshare.log", 42),
            PathBuf::from("/data/rideshare.log.00000000000000000042")
        );
        assert!(segment_path("l", 9) < segment_path("l", 10));
    }
}
