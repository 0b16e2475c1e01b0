//! `ProcessRuntime`: workers as child OS processes of this one, each running the `rideshare`
//! binary (`rideshare worker ... --id <id>`), for hosts without Docker.
//!
//! A worker's pid is its OS pid, so the election order the contract defines ("lowest pid is
//! master") is the host's own. The runtime only starts, kills and lists its own children: it
//! must not signal any process it did not spawn, and it does not restart crashed workers (that
//! is the orchestrator's decision).
//!
//! Limit: children are killed when the runtime is dropped, but if this process is killed with
//! SIGKILL its children live on, and a new `ProcessRuntime` does not adopt them: workers must
//! notice their parent's death themselves (`rideshare worker --exit-with-parent`).
//!
//! It uses `std::process` rather than `tokio::process` (whose cargo feature this workspace does
//! not enable): every call it makes is non-blocking but the reaping `wait` after a SIGKILL, which
//! runs on the blocking pool.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use async_trait::async_trait;
use rideshare_dbaas::error::{Error, Result};
use rideshare_dbaas::runtime::{Runtime, WorkerHandle};

/// How to start a worker process.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// The program to run: the `rideshare` binary (default: this executable).
    pub program: PathBuf,
    /// Arguments every worker gets, e.g. `["worker", "--zk", ...]`.
    pub args: Vec<String>,
    /// Environment variables every worker gets on top of this process's, e.g. the AMQP URL,
    /// which carries a password and so stays off the command line (`ps` shows that to all).
    pub env: Vec<(String, String)>,
    /// Worker ids are `<id_prefix>-<random hex>`.
    pub id_prefix: String,
    /// The flag the id is passed with, after `args` (default `--id`); `None` passes no id, for
    /// programs that take none.
    pub id_arg: Option<String>,
    /// Where each worker's stdout and stderr go: `<log_dir>/<id>.log`; `None` shares this
    /// process's.
    pub log_dir: Option<PathBuf>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            // Falling back to a PATH lookup keeps `Default` infallible; spawning reports the
            // error if that is wrong too.
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rideshare")),
            args: vec!["worker".to_owned()],
            env: Vec::new(),
            id_prefix: "worker".to_owned(),
            id_arg: Some("--id".to_owned()),
            log_dir: None,
        }
    }
}

struct Worker {
    pid: u32,
    child: Child,
}

/// Workers as child processes; see the module documentation.
pub struct ProcessRuntime {
    config: ProcessConfig,
    running: Mutex<BTreeMap<String, Worker>>,
}

impl ProcessRuntime {
    pub fn new(config: ProcessConfig) -> Self {
        ProcessRuntime {
            config,
            running: Mutex::default(),
        }
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    /// Kills every worker and waits for each to be gone (shutdown).
    pub async fn kill_all(&self) -> Result<()> {
        let workers = std::mem::take(&mut *self.running.lock());
        let mut first_error = None;
        for (id, worker) in workers {
            if let Err(e) = stop(&id, worker).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn command(&self, id: &str) -> Result<Command> {
        let mut cmd = Command::new(&self.config.program);
        cmd.args(&self.config.args);
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)));
        if let Some(flag) = &self.config.id_arg {
            cmd.arg(flag).arg(id);
        }
        cmd.stdin(Stdio::null());
        if let Some(dir) = &self.config.log_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::adapter(format!("creating log dir {}", dir.display()), e))?;
            let path = dir.join(format!("{id}.log"));
            let log = std::fs::File::create(&path)
                .map_err(|e| Error::adapter(format!("creating {}", path.display()), e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| Error::adapter(format!("opening {}", path.display()), e))?;
            cmd.stdout(log).stderr(log2);
        }
        Ok(cmd)
    }
}

/// SIGKILLs the worker and reaps it, so its pid is gone from the host when this returns.
async fn stop(id: &str, worker: Worker) -> Result<()> {
    let pid = worker.pid;
    tokio::task::spawn_blocking(move || kill_and_reap(worker))
        .await
        .map_err(|e| Error::adapter(format!("killing worker {id} (pid {pid})"), e))?
        .map_err(|e| Error::adapter(format!("killing worker {id} (pid {pid})"), e))
}

fn kill_and_reap(mut worker: Worker) -> std::io::Result<()> {
    // `kill` on a child that exited but is not yet reaped still succeeds (it is a zombie), and
    // `wait` then reaps it.
    worker.child.kill()?;
    worker.child.wait().map(drop)
}

impl Drop for ProcessRuntime {
    /// No worker outlives its runtime (as `kill_on_drop` would do): one left running would stay
    /// a member of the cluster that nothing lists or kills.
    fn drop(&mut self) {
        for (id, worker) in std::mem::take(&mut *self.running.lock()) {
            if let Err(e) = kill_and_reap(worker) {
                tracing::warn!(worker = %id, error = %e, "cannot kill worker on drop");
            }
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self) -> Result<WorkerHandle> {
        // 48 random bits: ids of workers that ever ran must not collide, even across restarts
        // of the orchestrator (an old id may still name a znode).
        let id = format!(
            "{}-{:012x}",
            self.config.id_prefix,
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let child = self.command(&id)?.spawn().map_err(|e| {
            Error::adapter(
                format!("starting worker {id}: {}", self.config.program.display()),
                e,
            )
        })?;
        let pid = child.id();
        self.running
            .lock()
            .insert(id.clone(), Worker { pid, child });
        tracing::info!(worker = %id, pid, "worker process started");
        Ok(WorkerHandle { id, pid })
    }

    async fn kill(&self, id: &str) -> Result<()> {
        let Some(mut worker) = self.running.lock().remove(id) else {
            return Err(Error::NoWorker(id.to_owned()));
        };
        // A worker that already exited is not running: the same answer as for an unknown id,
        // as `list` would not have shown it either.
        match worker.child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(worker = %id, %status, "worker had already exited");
                Err(Error::NoWorker(id.to_owned()))
            }
            _ => {
                stop(id, worker).await?;
                tracing::info!(worker = %id, "worker process killed");
                Ok(())
            }
        }
    }

    async fn list(&self) -> Result<Vec<WorkerHandle>> {
        let mut running = self.running.lock();
        // Reaping here is what makes a crashed worker vanish (and frees its zombie).
        running.retain(|id, worker| match worker.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::warn!(worker = %id, pid = worker.pid, %status, "worker process exited");
                false
            }
            Err(e) => {
                // Cannot tell: keep it listed rather than let the orchestrator start a second
                // worker for one that may still run.
                tracing::warn!(worker = %id, pid = worker.pid, error = %e, "cannot poll worker");
                true
            }
        });
        let mut list: Vec<WorkerHandle> = running
            .iter()
            .map(|(id, w)| WorkerHandle {
                id: id.clone(),
                pid: w.pid,
            })
            .collect();
        list.sort_by_key(|w| w.pid);
        Ok(list)
    }
}
