//! The faults: each kind, how it is injected, and what was done (or why it was not).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use rideshare_core::Username;
use rideshare_dbaas::checker::{Completion, Event, Operation};
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{encode, EntryBody, LogEntry, Role, VERSION};
use serde::Serialize;
use tokio::task::JoinSet;

use super::api::{Api, CrashTarget};
use super::clients::Recorder;
use super::command::CommandLine;
use super::namespace::{Namespace, Undo};
use super::observe::Observer;
use super::partition::{Engine, Healed, Networks};
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
    /// SIGKILL of RabbitMQ's Erlang VM (`--kill-rabbitmq-cmd`), no shutdown at all; started
    /// again (`--start-rabbitmq-cmd`) after `--engine-down-for`.
    KillRabbitmq,
    /// SIGKILL of ZooKeeper (`--kill-zk-cmd`), started again (`--start-zk-cmd`) after
    /// `--engine-down-for`.
    KillZookeeper,
    /// A slave frozen past its session timeout, then resumed: it must come back or be
    /// replaced, and never answer from a state older than what a client has seen.
    PauseSlave,
    /// A burst of concurrent writes (recorded in the history like the clients'), and the
    /// orchestrator SIGKILLed while they are in flight, then started again: their outcomes are
    /// unknown, and none may be lost or applied twice.
    KillOrchestratorMidBurst,
    /// The master cut off from ZooKeeper (`docker network disconnect` from the run's
    /// ZooKeeper network, see `partition.rs`) for `--partition-for`, while it still reaches
    /// RabbitMQ: its session expires, a slave is promoted, and the deposed master, still
    /// consuming writes, must have none acknowledged that the new master's log fences off.
    PartitionMasterZk,
    /// The master cut off from RabbitMQ for `--partition-for`, while it keeps its ZooKeeper
    /// session: writes stall until it is connected again (or its connection is given up).
    PartitionMasterRabbitmq,
    /// `--engines cluster` only: kill -9 one RabbitMQ node (in rotation), start it again after
    /// `--engine-down-for` and wait until it has rejoined (see `cluster.rs`).
    KillRabbitmqNode,
    /// `--engines cluster` only: the same for one ZooKeeper server of the ensemble.
    KillZkServer,
}

impl Fault {
    /// Whether it needs the run's own networks (`partition.rs`).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Fault::PartitionMasterZk | Fault::PartitionMasterRabbitmq
        )
    }

    /// The key its change outside the run is undone under (see `Namespace::arm`).
    fn key(self) -> &'static str {
        match self {
            Fault::KillRabbitmq => "kill-rabbitmq",
            Fault::KillZookeeper => "kill-zookeeper",
            Fault::PauseSlave => "pause-slave",
            Fault::PauseMaster => "pause-master",
            _ => "other",
        }
    }
}

/// Reads the scale fault sends at once: past what one slave serves in a window during the run.
const READ_BURST: u32 = 60;

/// Writes in flight when the orchestrator is killed mid-burst.
const WRITE_BURST: usize = 32;

/// The history's client ids of the burst's writes: `BURST_CLIENT + n`, apart from the clients'.
const BURST_CLIENT: usize = 10_000;

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
    /// `killed`: how long the kill command took; `down_for`: from the kill to the start
    /// command; `start_took`: the start command, until the engine answered.
    KilledEngine {
        engine: &'static str,
        killed: Duration,
        down_for: Duration,
        start_took: Duration,
    },
    /// `back_after`: from the resume until the orchestrator listed as many workers as before
    /// the pause (the slave itself or its replacement); `None` if not within 60 s.
    PausedSlave {
        id: String,
        pid: u32,
        paused_for: Duration,
        resumed: bool,
        back_after: Option<Duration>,
    },
    KilledOrchestratorMidBurst {
        killed_pid: u32,
        new_pid: u32,
        writes: usize,
        /// Answered before the kill.
        acked_before_kill: usize,
        acked: usize,
        failed: usize,
        unknown: usize,
    },
    /// A fault on one node of the clustered engines (`--engines cluster`).
    Node(super::cluster::NodeFault),
    Partitioned {
        engine: Engine,
        id: String,
        pid: u32,
        cut_for: Duration,
        healed: Healed,
    },
}

impl Injected {
    /// Whether the fault took the master away, so writes stop until a failover.
    pub fn starts_failover(&self) -> bool {
        matches!(
            self,
            Injected::CrashedMaster { .. }
                | Injected::PausedMaster { .. }
                | Injected::Partitioned {
                    engine: Engine::Zookeeper,
                    ..
                }
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
            Injected::KilledEngine {
                engine,
                killed,
                down_for,
                start_took,
            } => write!(
                f,
                "kill -9 {engine} (in {killed:?}), down {down_for:?}, started again in {start_took:?}"
            ),
            Injected::PausedSlave {
                id,
                pid,
                paused_for,
                resumed,
                back_after,
            } => write!(
                f,
                "paused slave {id} (pid {pid}) for {paused_for:?}, resumed: {resumed}, workers \
                 back after {back_after:?}"
            ),
            Injected::KilledOrchestratorMidBurst {
                killed_pid,
                new_pid,
                writes,
                acked_before_kill,
                acked,
                failed,
                unknown,
            } => write!(
                f,
                "kill -9 orchestrator {killed_pid} with {writes} writes in flight ({acked_before_kill} \
                 answered before), restarted as {new_pid}; {acked} acknowledged, {failed} failed, \
                 {unknown} unknown"
            ),
            Injected::Node(done) => done.fmt(f),
            Injected::Partitioned {
                engine,
                id,
                pid,
                cut_for,
                healed,
            } => write!(
                f,
                "cut master {id} (pid {pid}) off from {engine} for {cut_for:?}; healed: {healed:?}"
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
    /// Freezes worker `id` (pid `pid`), noting in `ns` how to thaw it if the run ends first.
    async fn freeze(
        &self,
        ns: &Namespace,
        key: &'static str,
        id: &str,
        pid: u32,
    ) -> anyhow::Result<()> {
        match self {
            Freezer::Docker(docker) => {
                ns.arm(key, Undo::Unpause { id: id.to_owned() });
                Ok(docker.pause(id).await?)
            }
            Freezer::Process => {
                ns.arm(key, Undo::Continue { pid });
                signal(pid, rustix::process::Signal::STOP)
            }
        }
    }

    async fn thaw(
        &self,
        ns: &Namespace,
        key: &'static str,
        id: &str,
        pid: u32,
    ) -> anyhow::Result<()> {
        let thawed = match self {
            Freezer::Docker(docker) => Ok(docker.unpause(id).await?),
            Freezer::Process => signal(pid, rustix::process::Signal::CONT),
        };
        ns.disarm(key);
        thawed
    }
}

pub(super) fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
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
    engines: EngineKills<'a>,
    /// The run's RabbitMQ virtual host, for the late append.
    amqp: String,
    /// The clients' history, where the mid-burst kill records its writes.
    history: Recorder,
    /// `--engines cluster`: the engine faults act on its nodes.
    cluster: Option<&'a super::cluster::Cluster>,
    /// The run's own networks, with a partition fault in the rotation.
    networks: Option<&'a Networks>,
    partition_for: Duration,
}

/// Commands that kill an engine and start it again, and how long it stays down.
#[derive(Clone, Copy)]
pub struct EngineKills<'a> {
    pub kill_rabbitmq: &'a CommandLine,
    pub start_rabbitmq: &'a CommandLine,
    pub kill_zk: &'a CommandLine,
    pub start_zk: &'a CommandLine,
    pub down_for: Duration,
}

pub struct Setup<'a> {
    pub runtime: RuntimeKind,
    pub session_timeout: Duration,
    pub restart_rabbitmq: &'a CommandLine,
    pub restart_zk: &'a CommandLine,
    pub engines: EngineKills<'a>,
    pub history: Recorder,
    pub cluster: Option<&'a super::cluster::Cluster>,
    pub networks: Option<&'a Networks>,
    pub partition_for: Duration,
}

impl Setup<'_> {
    /// The commands `faults` need, each with the flag that sets it.
    pub fn commands(&self, faults: &[Fault]) -> Vec<(&'static str, &CommandLine)> {
        let mut needed = Vec::new();
        for fault in faults {
            match fault {
                Fault::RestartRabbitmq => {
                    needed.push(("--restart-rabbitmq-cmd", self.restart_rabbitmq));
                }
                Fault::RestartZookeeper => needed.push(("--restart-zk-cmd", self.restart_zk)),
                Fault::KillRabbitmq => {
                    needed.push(("--kill-rabbitmq-cmd", self.engines.kill_rabbitmq));
                    needed.push(("--start-rabbitmq-cmd", self.engines.start_rabbitmq));
                }
                Fault::KillZookeeper => {
                    needed.push(("--kill-zk-cmd", self.engines.kill_zk));
                    needed.push(("--start-zk-cmd", self.engines.start_zk));
                }
                _ => {}
            }
        }
        needed.sort_by_key(|(flag, _)| *flag);
        needed.dedup_by_key(|(flag, _)| *flag);
        needed
    }
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
            engines: setup.engines,
            amqp: ns.amqp().to_owned(),
            history: setup.history,
            cluster: setup.cluster,
            networks: setup.networks,
            partition_for: setup.partition_for,
        })
    }

    pub async fn inject(&self, fault: Fault, ns: &mut Namespace) -> Result<Injected, FaultError> {
        if let Some(cluster) = self.cluster {
            if let Some(done) = cluster.inject(fault, ns).await {
                return done;
            }
        }
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
            Fault::PauseMaster => self.pause_master(ns).await,
            Fault::RestartRabbitmq => Ok(Injected::RestartedRabbitmq {
                took: self.restart_rabbitmq.run().await?,
            }),
            Fault::RestartZookeeper => Ok(Injected::RestartedZookeeper {
                took: self.restart_zk.run().await?,
            }),
            Fault::Scale => Ok(self.read_burst().await),
            Fault::LateAppend => self.late_append().await,
            Fault::KillRabbitmq => {
                let e = self.engines;
                self.kill_engine(ns, fault, "RabbitMQ", e.kill_rabbitmq, e.start_rabbitmq)
                    .await
            }
            Fault::KillZookeeper => {
                let e = self.engines;
                self.kill_engine(ns, fault, "ZooKeeper", e.kill_zk, e.start_zk)
                    .await
            }
            Fault::PauseSlave => self.pause_slave(ns).await,
            Fault::KillOrchestratorMidBurst => self.kill_orchestrator_mid_burst(ns).await,
            Fault::KillRabbitmqNode | Fault::KillZkServer => Err(FaultError::NotInjected(
                "a node fault needs --engines cluster".into(),
            )),
            Fault::PartitionMasterZk => self.partition_master(Engine::Zookeeper).await,
            Fault::PartitionMasterRabbitmq => self.partition_master(Engine::Rabbitmq).await,
        }
    }

    /// Kills an engine, leaves it down a moment and starts it again. Armed in `ns` from
    /// before the kill: a run that ends meanwhile starts the engine again on its way out.
    async fn kill_engine(
        &self,
        ns: &Namespace,
        fault: Fault,
        engine: &'static str,
        kill: &CommandLine,
        start: &CommandLine,
    ) -> Result<Injected, FaultError> {
        ns.arm(fault.key(), Undo::Start(start.clone()));
        let killed_at = Instant::now();
        let killed = kill.run().await?;
        tokio::time::sleep(self.engines.down_for).await;
        let down_for = killed_at.elapsed();
        let start_took = start.run().await?;
        ns.disarm(fault.key());
        Ok(Injected::KilledEngine {
            engine,
            killed,
            down_for,
            start_took,
        })
    }

    /// Cuts the master off from `engine` for `--partition-for`, then connects it again. Nothing
    /// to undo if the run ends meanwhile: the namespace removes the container, and the
    /// networks go with the run.
    async fn partition_master(&self, engine: Engine) -> Result<Injected, FaultError> {
        let networks = self.networks.ok_or_else(|| {
            FaultError::NotInjected("the run has no networks of its own (--runtime docker)".into())
        })?;
        let master = self
            .observer
            .master()
            .await
            .ok_or_else(|| FaultError::NotInjected("no master to cut off".into()))?;
        let address = networks
            .cut(engine, &master.id)
            .await
            .map_err(|e| FaultError::NotInjected(format!("{e:#}")))?;
        let cut = Instant::now();
        tokio::time::sleep(self.partition_for).await;
        let healed = networks.heal(engine, &master.id, &address).await;
        Ok(Injected::Partitioned {
            engine,
            id: master.id,
            pid: master.pid,
            cut_for: cut.elapsed(),
            healed,
        })
    }

    /// Freezes a slave past its session timeout and resumes it; then waits until the
    /// orchestrator lists as many workers as before (it came back, or was replaced).
    async fn pause_slave(&self, ns: &Namespace) -> Result<Injected, FaultError> {
        let members = self.observer.members().await;
        // A serving slave (one that has published its progress) if there is one.
        let slaves = || members.iter().filter(|m| m.role == Role::Slave);
        let slave = slaves()
            .find(|m| m.progress.is_some())
            .or_else(|| slaves().next())
            .ok_or_else(|| FaultError::NotInjected("no slave to pause".into()))?;
        let (id, pid) = (slave.id.clone(), slave.pid);
        let before = self.api.pids().await.unwrap_or_default().len();
        let key = Fault::PauseSlave.key();
        self.freezer.freeze(ns, key, &id, pid).await?;
        let paused_for = self.session_timeout * 3;
        tokio::time::sleep(paused_for).await;
        let resumed = match self.freezer.thaw(ns, key, &id, pid).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(worker = %id, error = %e, "cannot resume the paused slave");
                false
            }
        };
        let thawed = Instant::now();
        let back = wait_for(Duration::from_secs(60), || async {
            self.api.pids().await.is_some_and(|p| p.len() >= before)
        })
        .await;
        Ok(Injected::PausedSlave {
            id,
            pid,
            paused_for,
            resumed,
            back_after: back.then(|| thawed.elapsed()),
        })
    }

    /// Starts a burst of writes, kills the orchestrator once the first is answered (or after
    /// 100 ms), starts it again, and waits for every write's outcome.
    async fn kill_orchestrator_mid_burst(
        &self,
        ns: &mut Namespace,
    ) -> Result<Injected, FaultError> {
        let burst = rand::random::<u32>();
        let answered = Arc::new(AtomicUsize::new(0));
        let mut writes = JoinSet::new();
        for n in 0..WRITE_BURST {
            let (api, history, answered) = (
                self.api.clone(),
                self.history.clone(),
                Arc::clone(&answered),
            );
            writes.spawn(async move {
                let request_id = RequestId(format!("burst-{burst:08x}-{n}"));
                let op = WriteOp::AddUser {
                    username: Username::parse(&format!("b{burst:08x}-{n}"))
                        .unwrap_or_else(|_| unreachable!()),
                    password_hash: "$argon2id$chaos".into(),
                };
                let invoked_ms = api.ms();
                let completion = api.write(&request_id, &op).await;
                answered.fetch_add(1, AtomicOrdering::SeqCst);
                history.push(Event {
                    client: BURST_CLIENT + n,
                    operation: Operation::Write { request_id, op },
                    invoked_ms,
                    completed_ms: api.ms(),
                    completion: completion.clone(),
                });
                completion
            });
        }
        let _ = wait_for(Duration::from_millis(100), || async {
            answered.load(AtomicOrdering::SeqCst) > 0
        })
        .await;
        let acked_before_kill = answered.load(AtomicOrdering::SeqCst);
        let (killed_pid, new_pid) = ns.restart_orchestrator().await?;
        let (mut acked, mut failed, mut unknown) = (0, 0, 0);
        while let Some(done) = writes.join_next().await {
            match done.context("a burst write panicked")? {
                Completion::Written { .. } => acked += 1,
                Completion::Failed { .. } => failed += 1,
                _ => unknown += 1,
            }
        }
        Ok(Injected::KilledOrchestratorMidBurst {
            killed_pid,
            new_pid,
            writes: WRITE_BURST,
            acked_before_kill,
            acked,
            failed,
            unknown,
        })
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
    async fn pause_master(&self, ns: &Namespace) -> Result<Injected, FaultError> {
        let master = self
            .observer
            .master()
            .await
            .ok_or_else(|| FaultError::NotInjected("no master to pause".into()))?;
        let key = Fault::PauseMaster.key();
        self.freezer.freeze(ns, key, &master.id, master.pid).await?;
        let paused_for = self.session_timeout * 3;
        tokio::time::sleep(paused_for).await;
        let resumed = match self.freezer.thaw(ns, key, &master.id, master.pid).await {
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
