//! Snapshots: a replica's whole state at one applied log index, kept in a directory every
//! worker of a cluster shares, so a new worker installs the newest one and replays only the
//! log's tail, and the log can drop what the oldest one kept covers.
//!
//! Why a shared directory rather than streaming from a live replica (rqlite's way): every
//! runtime here runs its workers on one host (tasks, processes, containers with the directory
//! mounted as a volume), a file copy is the fastest install there is (a 100 MB SQLite file
//! copies in 0.3 s), and a snapshot outlives every worker, so a restarted `rideshare up`
//! installs it too. What a shared directory cannot do, serve workers on other hosts, a stream
//! from a replica would.
//!
//! Layout: `snapshot-<index, 20 digits>-<worker>.data` is the store's own file (a SQLite
//! database from `VACUUM INTO`, or a memory store's image), and `….json` beside it is its
//! [`Manifest`]: the index, the epoch, the state checksum, the data's size and crc32. The
//! manifest is written last (to a temporary name, fsynced, renamed), so a snapshot exists only
//! once it is whole. Before use, a snapshot is verified: the copy's size and crc32 must be the
//! manifest's, and the installed store's applied index the manifest's index; one that fails is
//! deleted and the next older one tried. The newest `keep` snapshots are kept.
//!
//! One worker at a time writes a snapshot: it takes `snapshot.lock` (created exclusively; one
//! older than [`STALE_LOCK`] is from a worker that died while writing, and is broken).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rideshare_core::checksum::StateChecksum;
use rideshare_core::machine::Store;
use rideshare_core::store::{MemStore, SqliteStore};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest's format version.
pub const FORMAT: u32 = 1;
/// A lock this old was left by a worker that died while writing a snapshot.
pub const STALE_LOCK: Duration = Duration::from_secs(60);
const LOCK: &str = "snapshot.lock";

/// Which store wrote a snapshot (and so which can install it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Sqlite,
    Memory,
}

/// What a snapshot is: written beside its data, last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    /// The applied log index of the state: a worker installing it replays from `index + 1`.
    pub index: u64,
    /// The newest epoch marker applied at `index` (the replica's fencing state).
    pub epoch: u64,
    /// The state checksum at `index` (the value every digest publishes) and its parts.
    pub checksum: u64,
    pub checksum_parts: StateChecksum,
    pub kind: StoreKind,
    /// Size and crc32 of the data file.
    pub bytes: u64,
    pub crc32: u32,
    /// The worker that wrote it, and when (ms since the Unix epoch).
    pub worker: String,
    pub created_unix_ms: u64,
}

/// A snapshot's state before it is written: where it stands, from the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub index: u64,
    pub epoch: u64,
    pub checksum: StateChecksum,
}

/// The shared snapshot directory.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
}

fn io(context: impl Into<String>, e: std::io::Error) -> Error {
    Error::adapter(context, e)
}

impl SnapshotDir {
    /// The directory (created if missing); the newest `keep` snapshots (at least 1) are kept.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        Ok(SnapshotDir {
            dir,
            keep: keep.max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn stem(index: u64, worker: &str) -> String {
        format!("snapshot-{index:020}-{worker}")
    }

    fn data_path(&self, m: &Manifest) -> PathBuf {
        self.dir
            .join(format!("{}.data", Self::stem(m.index, &m.worker)))
    }

    fn manifest_path(&self, m: &Manifest) -> PathBuf {
        self.dir
            .join(format!("{}.json", Self::stem(m.index, &m.worker)))
    }

    /// Every snapshot whose manifest reads, oldest first (not yet verified).
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io(format!("listing {}", self.dir.display()), e))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("snapshot-") && name.ends_with(".json")) {
                continue;
            }
            match fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) if m.v == FORMAT => found.push(m),
                Ok(m) => tracing::warn!(
                    file = name,
                    v = m.v,
                    "snapshot manifest of another format; ignored"
                ),
                Err(e) => {
                    tracing::warn!(file = name, error = %e, "unreadable snapshot manifest; ignored")
                }
            }
        }
        found.sort_by(|a, b| (a.index, &a.worker).cmp(&(b.index, &b.worker)));
        Ok(found)
    }

    /// The newest snapshot's index (0 when there is none).
    pub fn newest_index(&self) -> Result<u64> {
        Ok(self.list()?.last().map_or(0, |m| m.index))
    }

    /// The oldest kept snapshot's index: the log may drop entries up to it. `None` when there is
    /// no snapshot (then the log must keep everything).
    pub fn oldest_index(&self) -> Result<Option<u64>> {
        Ok(self.list()?.first().map(|m| m.index))
    }

    /// Where a worker writes a snapshot before it is published.
    pub fn temp_path(&self, worker: &str) -> PathBuf {
        self.dir.join(format!("tmp-{worker}.data"))
    }

    /// Takes the writer's lock, or `None` while another worker holds it. Dropping the guard
    /// releases it.
    pub fn try_lock(&self, worker: &str) -> Result<Option<LockGuard>> {
        let path = self.dir.join(LOCK);
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let _ = file.write_all(worker.as_bytes());
                    return Ok(Some(LockGuard { path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|age| age > STALE_LOCK) {
                        tracing::warn!(lock = %path.display(), "breaking a stale snapshot lock");
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    return Ok(None);
                }
                Err(e) => return Err(io(format!("creating {}", path.display()), e)),
            }
        }
        Ok(None)
    }

    /// Publishes the snapshot data written at `file` (moved into place), taken at `taken` by
    /// `worker`; then keeps only the newest `keep`. Blocking.
    pub fn publish(
        &self,
        file: &Path,
        kind: StoreKind,
        taken: Taken,
        worker: &str,
    ) -> Result<Manifest> {
        let (bytes, crc32) = {
            let mut f =
                File::open(file).map_err(|e| io(format!("opening {}", file.display()), e))?;
            let (bytes, crc32) =
                crc_of(&mut f, None).map_err(|e| io(format!("reading {}", file.display()), e))?;
            f.sync_all()
                .map_err(|e| io(format!("syncing {}", file.display()), e))?;
            (bytes, crc32)
        };
        let manifest = Manifest {
            v: FORMAT,
            index: taken.index,
            epoch: taken.epoch,
            checksum: taken.checksum.value(),
            checksum_parts: taken.checksum,
            kind,
            bytes,
            crc32,
            worker: worker.to_owned(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let data = self.data_path(&manifest);
        fs::rename(file, &data).map_err(|e| io(format!("moving {}", file.display()), e))?;
        let target = self.manifest_path(&manifest);
        let temp = target.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&manifest)?;
        let mut f =
            File::create(&temp).map_err(|e| io(format!("creating {}", temp.display()), e))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| io(format!("writing {}", temp.display()), e))?;
        fs::rename(&temp, &target).map_err(|e| io(format!("moving {}", temp.display()), e))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(manifest)
    }

    /// Deletes all but the newest `keep` snapshots, and the temporary files of writers that
    /// died while writing (older than [`STALE_LOCK`]; their ids are never reused).
    pub fn prune(&self) -> Result<()> {
        let all = self.list()?;
        let cut = all.len().saturating_sub(self.keep);
        for old in &all[..cut] {
            self.delete(old);
        }
        for entry in fs::read_dir(&self.dir)
            .map_err(|e| io(format!("listing {}", self.dir.display()), e))?
            .flatten()
        {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_LOCK);
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let temporary = name.starts_with("tmp-") || name.starts_with("install-");
            if stale && temporary {
                tracing::info!(file = %name, "removing a dead writer's temporary snapshot file");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Removes a snapshot: its manifest first, so it is never seen half gone.
    fn delete(&self, m: &Manifest) {
        let _ = fs::remove_file(self.manifest_path(m));
        let _ = fs::remove_file(self.data_path(m));
    }

    /// Copies the newest snapshot of `kind` at or below `log_end` that verifies to `to`
    /// (replacing it), newest first; a snapshot that fails verification is deleted. One past
    /// the log's end is not of this log (a directory shared by mistake): it is skipped, and
    /// left. `None` when none verifies. Blocking.
    pub fn copy_newest(
        &self,
        kind: StoreKind,
        log_end: u64,
        to: &Path,
    ) -> Result<Option<Manifest>> {
        let all = self.list()?;
        if let Some(foreign) = all.iter().find(|m| m.index > log_end) {
            tracing::warn!(
                index = foreign.index,
                log_end,
                dir = %self.dir.display(),
                "a snapshot is past the log's end: the directory holds another log's snapshots; ignoring those"
            );
        }
        for m in all
            .into_iter()
            .rev()
            .filter(|m| m.kind == kind && m.index <= log_end)
        {
            match self.copy_verified(&m, to) {
                Ok(()) => return Ok(Some(m)),
                Err(e) => {
                    tracing::warn!(index = m.index, worker = %m.worker, error = %e, "snapshot failed verification; deleting it");
                    self.delete(&m);
                }
            }
        }
        Ok(None)
    }

    fn copy_verified(&self, m: &Manifest, to: &Path) -> std::result::Result<(), String> {
        let from = self.data_path(m);
        let mut source =
            File::open(&from).map_err(|e| format!("opening {}: {e}", from.display()))?;
        let mut target = File::create(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
        let (bytes, crc32) =
            crc_of(&mut source, Some(&mut target)).map_err(|e| format!("copying: {e}"))?;
        if bytes != m.bytes || crc32 != m.crc32 {
            let _ = fs::remove_file(to);
            return Err(format!(
                "data is {bytes} bytes with crc32 {crc32:08x}, the manifest says {} bytes with crc32 {:08x}",
                m.bytes, m.crc32
            ));
        }
        target
            .sync_all()
            .map_err(|e| format!("syncing {}: {e}", to.display()))
    }
}

/// Where a worker keeps its copy of the database.
#[derive(Clone, Debug)]
pub enum StoreAt {
    Memory,
    /// A SQLite file (removed first: a worker's file is never reused).
    Sqlite(PathBuf),
}

impl StoreAt {
    fn kind(&self) -> StoreKind {
        match self {
            StoreAt::Memory => StoreKind::Memory,
            StoreAt::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// Opens the worker's store: from the newest snapshot in `snapshots` that verifies and is
    /// not past `log_end` (its manifest returned), or empty. Blocking.
    pub fn open(
        &self,
        snapshots: Option<&SnapshotDir>,
        log_end: u64,
    ) -> Result<(Box<dyn Store>, Option<Manifest>)> {
        if let Some(dir) = snapshots {
            loop {
                let target = match self {
                    StoreAt::Memory => dir
                        .dir
                        .join(format!("install-{:08x}.tmp", rand::random::<u32>())),
                    StoreAt::Sqlite(path) => {
                        self.remove();
                        path.clone()
                    }
                };
                let Some(m) = dir.copy_newest(self.kind(), log_end, &target)? else {
                    break;
                };
                let opened = self.open_installed(&target);
                if let StoreAt::Memory = self {
                    let _ = fs::remove_file(&target);
                }
                match opened {
                    Ok((store, index)) if index == m.index => {
                        tracing::info!(
                            index = m.index,
                            epoch = m.epoch,
                            bytes = m.bytes,
                            "installed snapshot"
                        );
                        return Ok((store, Some(m)));
                    }
                    Ok((_, index)) => tracing::warn!(
                        index,
                        manifest = m.index,
                        "installed snapshot is at another index than its manifest; deleting it"
                    ),
                    Err(e) => {
                        tracing::warn!(index = m.index, error = %e, "installed snapshot does not open; deleting it")
                    }
                }
                dir.delete(&m);
            }
        }
        self.remove();
        let store: Box<dyn Store> = match self {
            StoreAt::Memory => Box::new(MemStore::new()),
            StoreAt::Sqlite(path) => Box::new(SqliteStore::open(path)?),
        };
        Ok((store, None))
    }

    fn open_installed(&self, at: &Path) -> Result<(Box<dyn Store>, u64)> {
        let mut store: Box<dyn Store> = match self {
            StoreAt::Memory => Box::new(MemStore::import(at)?),
            StoreAt::Sqlite(_) => Box::new(SqliteStore::open(at)?),
        };
        let index = store.applied_index()?;
        Ok((store, index))
    }

    /// Removes the worker's database files.
    pub fn remove(&self) {
        if let StoreAt::Sqlite(path) = self {
            for suffix in ["", "-wal", "-shm"] {
                let _ = fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

/// Size and crc32 of everything `source` holds, copied to `copy` on the way.
fn crc_of(source: &mut File, mut copy: Option<&mut File>) -> std::io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(copy) = copy.as_mut() {
            copy.write_all(&buf[..n])?;
        }
        bytes += n as u64;
    }
    Ok((bytes, hasher.finalize()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(format!("syncing {}", dir.display()), e))
}

/// Holds the snapshot writer's lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use rideshare_core::machine::StateMachine;
    use rideshare_core::ops::{RequestId, WriteOp};
    use rideshare_core::Username;

    use super::*;

    /// A SQLite store with `users` users at indexes 1.., exported to a temp file in `dir` and
    /// published there by `worker`.
    fn publish(dir: &SnapshotDir, users: u64, worker: &str) -> Manifest {
        let scratch = tempfile::tempdir().unwrap();
        let mut machine =
            StateMachine::new(SqliteStore::open(&scratch.path().join("w.db")).unwrap());
        for i in 1..=users {
            let op = WriteOp::AddUser {
                username: Username::parse(&format!("user{i}")).unwrap(),
                password_hash: "h".into(),
            };
            machine.apply(i, &RequestId(format!("r{i}")), &op).unwrap();
        }
        let temp = dir.temp_path(worker);
        machine.export(&temp).unwrap();
        let taken = Taken {
            index: users,
            epoch: 1,
            checksum: machine.checksum_parts().unwrap(),
        };
        dir.publish(&temp, StoreKind::Sqlite, taken, worker)
            .unwrap()
    }

    fn install(dir: &SnapshotDir) -> Option<u64> {
        let target = tempfile::tempdir().unwrap();
        let at = StoreAt::Sqlite(target.path().join("new.db"));
        let (mut store, manifest) = at.open(Some(dir), u64::MAX).unwrap();
        let index = store.applied_index().unwrap();
        assert_eq!(
            manifest.as_ref().map(|m| m.index),
            Some(index).filter(|i| *i > 0)
        );
        manifest.map(|m| m.index)
    }

    #[test]
    fn the_newest_verified_snapshot_is_installed_and_a_corrupt_one_deleted() {
        let root = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(root.path(), 2).unwrap();
        assert_eq!(install(&dir), None, "no snapshot: an empty store");
        publish(&dir, 3, "a");
        let newest = publish(&dir, 5, "b");
        assert_eq!(install(&dir), Some(5));
        let target = tempfile::tempdir().unwrap();
        let at = StoreAt::Sqlite(target.path().join("new.db"));
        let (_, past_end) = at.open(Some(&dir), 4).unwrap();
        assert_eq!(
            past_end.map(|m| m.index),
            Some(3),
            "a snapshot past the log's end is skipped"
        );
        assert_eq!(dir.list().unwrap().len(), 2, "and left");

        // One flipped byte in the newest: it is deleted, and the older one installed.
        let data = dir.data_path(&newest);
        let mut bytes = fs::read(&data).unwrap();
        bytes[100] ^= 1;
        fs::write(&data, bytes).unwrap();
        assert_eq!(install(&dir), Some(3));
        assert_eq!(dir.list().unwrap().len(), 1);
        assert!(!data.exists());
    }

    #[test]
    fn only_the_newest_are_kept_and_the_oldest_bounds_the_log() {
        let root = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(root.path(), 2).unwrap();
        for users in [2, 4, 6] {
            publish(&dir, users, "w");
        }
        let kept: Vec<u64> = dir.list().unwrap().iter().map(|m| m.index).collect();
        assert_eq!(kept, [4, 6]);
        assert_eq!(dir.oldest_index().unwrap(), Some(4));
        assert_eq!(dir.newest_index().unwrap(), 6);
        let files = fs::read_dir(root.path()).unwrap().count();
        assert_eq!(files, 4, "two manifests and two data files, nothing else");
    }

    #[test]
    fn one_writer_at_a_time_and_a_stale_lock_is_broken() {
        let root = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(root.path(), 2).unwrap();
        let held = dir.try_lock("a").unwrap().expect("free");
        assert!(dir.try_lock("b").unwrap().is_none());
        drop(held);
        let held = dir.try_lock("b").unwrap().expect("released");
        let old = SystemTime::now() - STALE_LOCK - Duration::from_secs(1);
        File::options()
            .write(true)
            .open(root.path().join(LOCK))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(dir.try_lock("c").unwrap().is_some(), "stale lock broken");
        drop(held);
    }

    #[test]
    fn a_dead_writers_temporary_file_is_removed_once_stale() {
        let root = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(root.path(), 2).unwrap();
        let fresh = dir.temp_path("alive");
        let dead = dir.temp_path("dead");
        fs::write(&fresh, b"x").unwrap();
        fs::write(&dead, b"x").unwrap();
        File::options()
            .write(true)
            .open(&dead)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_LOCK - Duration::from_secs(1))
            .unwrap();
        dir.prune().unwrap();
        assert!(fresh.exists(), "a writer at work keeps its file");
        assert!(!dead.exists());
    }
}
