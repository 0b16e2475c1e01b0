//! The faults: each kind, how it is injected, and what was done (or why it was not).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use rideshare_core::Username;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{encode, EntryBody, LogEntry, MasterRecord, VERSION};
use serde::Serialize;

use super::api::{Api, CrashTarget};
use super::command::CommandLine;
use super::namespace::Namespace;
use super::observe::Observer;
use super::wait_for;
use crate::adapters::docker::{DockerConfig, DockerRuntime};
use crate::adapters::rabbit::RabbitLog;
use crate::args::RuntimeKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    CrashMaster,
    CrashSlave,
    KillOrchestrator,
    PauseMaster,
    RestartRabbitmq,
    RestartZookeeper,
    Scale,
    /// A deposed master's append landing late: a write entry of an older epoch than the
    /// current master's, appended to the run's log after that master's marker. Every replica
    /// must leave it without effect (fencing); the checker reports it if one applied it.
    LateAppend,
}

/// Reads the scale fault sends at once: past what one slave serves in a window during the run.
const READ_BURST: u32 = 60;

/// A fault that was injected, with what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    CrashedMaster {
        pid: u64,
    },
    /// `replaced_after`: until the orchestrator listed as many workers as before, without the
    /// crashed one; `None` if it did not within 60 s.
    CrashedSlave {
        pid: u64,
        replaced_after: Option<Duration>,
    },
    RestartedOrchestrator {
        killed_pid: u32,
        new_pid: u32,
    },
    PausedMaster {
        id: String,
        pid: u32,
        paused_for: Duration,
        resumed: bool,
    },
    RestartedRabbitmq {
        took: Duration,
    },
    RestartedZookeeper {
        took: Duration,
    },
    ReadBurst {
        reads: u32,
        answered: u32,
    },
    LateAppend {
        epoch: u64,
        after_epoch: u64,
    },
}

impl Injected {
    /// Whether the fault took the master away, so writes stop until a failover.
    pub fn starts_failover(&self) -> bool {
        matches!(
            self,
            Injected::CrashedMaster { .. } | Injected::PausedMaster { .. }
        )
    }

    /// How long a crashed slave took to be replaced.
    pub fn replacement(&self) -> Option<Duration> {
        match self {
            Injected::CrashedSlave { replaced_after, .. } => *replaced_after,
            _ => None,
        }
    }
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Injected::CrashedMaster { pid } => write!(f, "crashed master {pid}"),
            Injected::CrashedSlave {
                pid,
                replaced_after,
            } => write!(f, "crashed slave {pid}, replaced after {replaced_after:?}"),
            Injected::RestartedOrchestrator {
                killed_pid,
                new_pid,
            } => write!(
                f,
                "kill -9 orchestrator {killed_pid}, restarted as {new_pid}"
            ),
            Injected::PausedMaster {
                id,
                pid,
                paused_for,
                resumed,
            } => write!(
                f,
                "paused master {id} (pid {pid}) for {paused_for:?}, resumed: {resumed}"
            ),
            Injected::RestartedRabbitmq { took } => write!(f, "restarted RabbitMQ in {took:?}"),
            Injected::RestartedZookeeper { took } => write!(f, "restarted ZooKeeper in {took:?}"),
            Injected::LateAppend { epoch, after_epoch } => write!(
                f,
                "appended a write of epoch {epoch} after the marker of epoch {after_epoch}"
            ),
            Injected::ReadBurst { reads, answered } => write!(
                f,
                "{reads} extra reads, {answered} answered (scale out at the window's end, back \
                 in after)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// Nothing to fault at that moment (no master, or the orchestrator refused the crash): not
    /// injected, and the run goes on.
    #[error("not injected: {0}")]
    NotInjected(String),
    /// The fault could not be injected: the run stops.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Stops and resumes a worker without killing it: the cgroup freezer for containers, SIGSTOP
/// and SIGCONT for processes.
enum Freezer {
    // Boxed: one per run, and the process variant carries nothing.
    Docker(Box<DockerRuntime>),
    Process,
}

impl Freezer {
    async fn freeze(&self, master: &MasterRecord) -> anyhow::Result<()> {
        match self {
            Freezer::Docker(docker) => Ok(docker.pause(&master.id).await?),
            Freezer::Process => signal(master.pid, rustix::process::Signal::STOP),
        }
    }

    async fn thaw(&self, master: &MasterRecord) -> anyhow::Result<()> {
        match self {
            Freezer::Docker(docker) => Ok(docker.unpause(&master.id).await?),
            Freezer::Process => signal(master.pid, rustix::process::Signal::CONT),
        }
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{pid} is not a pid"))?;
    rustix::process::kill_process(pid, signal)
        .with_context(|| format!("cannot send {signal:?} to {pid:?}"))
}

/// Everything a fault acts on.
pub struct Injector<'a> {
    api: &'a Api,
    observer: &'a Observer,
    freezer: Freezer,
    /// The pause lasts 3 × this: past the session timeout, so the master's nodes expire.
    session_timeout: Duration,
    restart_rabbitmq: &'a CommandLine,
    restart_zk: &'a CommandLine,
    /// The run's RabbitMQ virtual host, for the late append.
    amqp: String,
}

pub struct Setup<'a> {
    pub runtime: RuntimeKind,
    pub session_timeout: Duration,
    pub restart_rabbitmq: &'a CommandLine,
    pub restart_zk: &'a CommandLine,
}

impl<'a> Injector<'a> {
    pub async fn new(
        setup: Setup<'a>,
        ns: &Namespace,
        api: &'a Api,
        observer: &'a Observer,
    ) -> anyhow::Result<Self> {
        let freezer = match setup.runtime {
            // Scoped to the run's cluster label: it cannot pause any other container.
            RuntimeKind::Docker => Freezer::Docker(Box::new(
                DockerRuntime::new(DockerConfig {
                    cluster: ns.name().to_owned(),
                    ..DockerConfig::default()
                })
                .await
                .context("cannot use the Docker engine")?,
            )),
            RuntimeKind::Process => Freezer::Process,
        };
        Ok(Injector {
            api,
            observer,
            freezer,
            session_timeout: setup.session_timeout,
            restart_rabbitmq: setup.restart_rabbitmq,
            restart_zk: setup.restart_zk,
            amqp: ns.amqp().to_owned(),
        })
    }

    pub async fn inject(&self, fault: Fault, ns: &mut Namespace) -> Result<Injected, FaultError> {
        match fault {
            Fault::CrashMaster => self.crash_master().await,
            Fault::CrashSlave => self.crash_slave().await,
            Fault::KillOrchestrator => {
                let (killed_pid, new_pid) = ns.restart_orchestrator().await?;
                Ok(Injected::RestartedOrchestrator {
                    killed_pid,
                    new_pid,
                })
            }
            Fault::PauseMaster => self.pause_master().await,
            Fault::RestartRabbitmq => Ok(Injected::RestartedRabbitmq {
                took: self.restart_rabbitmq.run().await?,
            }),
            Fault::RestartZookeeper => Ok(Injected::RestartedZookeeper {
                took: self.restart_zk.run().await?,
            }),
            Fault::Scale => Ok(self.read_burst().await),
            Fault::LateAppend => self.late_append().await,
        }
    }

    async fn crash_master(&self) -> Result<Injected, FaultError> {
        match self.api.crash(CrashTarget::Master).await {
            Ok(pid) => Ok(Injected::CrashedMaster { pid }),
            Err(e) => Err(FaultError::NotInjected(format!(
                "crash master refused: {e}"
            ))),
        }
    }

    async fn crash_slave(&self) -> Result<Injected, FaultError> {
        let before = self.api.pids().await.unwrap_or_default().len();
        let pid = self
            .api
            .crash(CrashTarget::Slave)
            .await
            .map_err(|e| FaultError::NotInjected(format!("crash slave refused: {e}")))?;
        let crashed = Instant::now();
        let replaced = wait_for(Duration::from_secs(60), || async {
            self.api
                .pids()
                .await
                .is_some_and(|p| p.len() >= before && !p.contains(&pid))
        })
        .await;
        Ok(Injected::CrashedSlave {
            pid,
            replaced_after: replaced.then(|| crashed.elapsed()),
        })
    }

    /// Freezes the master past its session timeout: its nodes expire and a slave takes over
    /// while it is frozen; then it resumes, a zombie that must not acknowledge anything.
    async fn pause_master(&self) -> Result<Injected, FaultError> {
        let master = self
            .observer
            .master()
            .await
            .ok_or_else(|| FaultError::NotInjected("no master to pause".into()))?;
        self.freezer.freeze(&master).await?;
        let paused_for = self.session_timeout * 3;
        tokio::time::sleep(paused_for).await;
        let resumed = match self.freezer.thaw(&master).await {
            Ok(()) => true,
            Err(e) => {
                // Replaced (and removed) while frozen, most likely: still a fault injected.
                tracing::warn!(worker = %master.id, error = %e, "cannot resume the paused master");
                false
            }
        };
        Ok(Injected::PausedMaster {
            id: master.id,
            pid: master.pid,
            paused_for,
            resumed,
        })
    }

    /// Appends a write under the epoch before the current master's, as a deposed master whose
    /// append was delayed would. It names a request id no client uses, so nothing else can
    /// account for it: if any replica applies it, the replicas' state or the checker's fencing
    /// check shows it.
    async fn late_append(&self) -> Result<Injected, FaultError> {
        let master = self
            .observer
            .master()
            .await
            .ok_or_else(|| FaultError::NotInjected("no master".into()))?;
        if master.epoch < 2 {
            return Err(FaultError::NotInjected("no deposed master yet".into()));
        }
        let epoch = master.epoch - 1;
        let entry = LogEntry {
            v: VERSION,
            epoch,
            body: EntryBody::Write {
                request_id: RequestId(format!("chaos-zombie-{}", rand::random::<u32>())),
                op: WriteOp::AddUser {
                    username: Username::parse(&format!("zombie{}", rand::random::<u16>()))
                        .context("zombie user name")?,
                    password_hash: "zombie".into(),
                },
            },
        };
        let log = RabbitLog::connect(&self.amqp, "rideshare.log")
            .await
            .map_err(|e| FaultError::NotInjected(format!("log unreachable: {e}")))?;
        log.append(encode(&entry))
            .await
            .map_err(|e| FaultError::NotInjected(format!("late append refused: {e}")))?;
        Ok(Injected::LateAppend {
            epoch,
            after_epoch: master.epoch,
        })
    }

    /// A burst of reads: at the window's end the scaler adds slaves, and removes them after.
    async fn read_burst(&self) -> Injected {
        let mut answered = 0;
        for _ in 0..READ_BURST {
            if self.api.read(&ReadOp::CountRides).await.is_ok() {
                answered += 1;
            }
        }
        Injected::ReadBurst {
            reads: READ_BURST,
            answered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_master_faults_start_a_failover() {
        assert!(Injected::CrashedMaster { pid: 1 }.starts_failover());
        let slave = Injected::CrashedSlave {
            pid: 2,
            replaced_after: Some(Duration::from_millis(300)),
        };
        assert!(!slave.starts_failover());
        assert_eq!(slave.replacement(), Some(Duration::from_millis(300)));
        let burst = Injected::ReadBurst {
            reads: 60,
            answered: 60,
        };
        assert!(!burst.starts_failover() && burst.replacement().is_none());
    }
}
