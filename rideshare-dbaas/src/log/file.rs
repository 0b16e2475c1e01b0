//! `FileLog`: the [`Log`] of embedded mode (`rideshare up`), persisted in one append-only file.
//!
//! Each record is framed as `[u32 LE length][u32 LE crc32][bytes]`, where the crc32 covers the
//! four length bytes and then the data (so a zero-filled tail, which a crash can leave behind,
//! does not pass as empty records). [`FileLog::open`] reads the whole file, truncates a torn or
//! corrupt tail (with a warning) and keeps the entries in memory, in a [`MemLog`] that serves the
//! readers.
//!
//! Appends are group-committed: an append joins a pending queue when it is called (which fixes
//! its order), and one blocking flusher at a time writes everything pending, fsyncs once, then
//! makes the batch readable and confirms it. Nothing holds a lock across an `.await`; the file is
//! only touched on tokio's blocking pool.
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

/// A log in one file. Cloning gives another handle on the same log.
#[derive(Clone, Debug)]
pub struct FileLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    entries: MemLog,
    /// Short critical sections only: appends push here when called.
    queue: Mutex<Queue>,
    /// Held only by the flusher, on a blocking thread, while it writes and fsyncs.
    file: Mutex<File>,
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
    /// Opens (or creates) the log at `path`, truncating a torn or corrupt tail. It reads the whole
    /// file, blocking the calling thread.
    pub fn open(path: impl AsRef<Path>) -> Result<FileLog> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::adapter(format!("opening log file {}", path.display()), e))?;
        if !existed {
            sync_parent_dir(&path)?;
        }
        let contents = Bytes::from(
            std::fs::read(&path)
                .map_err(|e| Error::adapter(format!("reading log file {}", path.display()), e))?,
        );
        let scan = scan(&contents);
        if let Some(problem) = scan.problem {
            tracing::warn!(
                path = %path.display(),
                offset = scan.valid_len,
                dropped_bytes = contents.len() - scan.valid_len,
                problem,
                kept_entries = scan.entries.len(),
                "log file has a torn or corrupt tail; truncating it"
            );
            file.set_len(scan.valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    Error::adapter(format!("truncating log file {}", path.display()), e)
                })?;
        }
        Ok(FileLog {
            shared: Arc::new(Shared {
                path,
                entries: MemLog::with_entries(scan.entries),
                queue: Mutex::new(Queue::default()),
                file: Mutex::new(file),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
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

/// Makes a newly created file's directory entry durable, so the file survives a crash.
fn sync_parent_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
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
            queue.broken = Some(format!("log file {} flusher panicked", self.path.display()));
            // Dropping their senders fails the waiting appends.
            queue.pending.clear();
        }
    }

    /// Writes and fsyncs pending appends, batch by batch, until none is left. Runs on a blocking
    /// thread, alone: `Queue::flushing` admits one flusher at a time.
    fn flush_pending(&self) {
        let mut file = self.file.lock();
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
            match file.write_all(&buf).and_then(|()| file.sync_data()) {
                Ok(()) => {
                    // Readable only now that it is durable, in the order it was written.
                    self.entries
                        .push_confirmed(batch.iter().map(|p| p.data.clone()));
                    for p in batch {
                        let _ = p.done.send(Ok(()));
                    }
                }
                Err(e) => {
                    let reason = format!("writing log file {} failed: {e}", self.path.display());
                    tracing::error!(path = %self.path.display(), error = %e, "log append failed; refusing further appends until reopened");
                    self.queue().broken = Some(reason.clone());
                    for p in batch {
                        let _ = p.done.send(Err(Error::adapter(
                            format!("appending to log file {}", self.path.display()),
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
}
