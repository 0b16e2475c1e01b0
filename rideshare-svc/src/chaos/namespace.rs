//! The run's namespace: a RabbitMQ virtual host, a ZooKeeper chroot, an admin token, and the
//! orchestrator process started in them. Dropping the [`Namespace`] removes everything the run
//! started (orchestrator, worker containers, chroot, vhost), whichever way the run ends, and
//! first undoes what a fault cut short had changed (an engine it killed is started again, a
//! frozen worker thawed).
//!
//! The orchestrator is started under `setpriv --pdeathsig KILL` when `setpriv` is there: the
//! kernel kills it if this process dies without running its `Drop` (SIGKILL, abort).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parking_lot::Mutex;

use anyhow::Context;
use rideshare_dbaas::coord::{Coordinator, Session};

use super::command::CommandLine;
use super::partition::WorkerView;
use crate::adapters::docker::{DockerConfig, DockerRuntime};
use crate::adapters::zk::ZkCoordinator;
use crate::args::{
    OrchestratorArgs, RuntimeKind, ADMIN_TOKEN_ENV, AMQP_URL_ENV, WORKER_AMQP_URL_ENV,
};

/// Where the run's namespace lives, and how its orchestrator runs.
pub struct Settings<'a> {
    /// The run's name (see [`new_name`]).
    pub name: String,
    /// RabbitMQ URL without a vhost.
    pub amqp_base: &'a str,
    /// ZooKeeper connect string without the run's chroot.
    pub zk: &'a str,
    pub zk_session_timeout: Duration,
    pub runtime: RuntimeKind,
    pub worker_image: &'a str,
    pub scale_interval: Duration,
    pub reads_per_slave: u64,
    pub snapshot_every: u64,
    /// `rabbitmqctl -n` targets, tried in turn (the cluster's nodes); empty: its default node.
    pub rabbitmq_nodes: Vec<String>,
    /// The engines as the workers reach them, when that is through the run's own networks
    /// (the partition faults); `None`: as this process does.
    pub workers: Option<WorkerView>,
}

/// `chaos-<random hex>`: the vhost, the chroot and the workers' cluster label.
pub fn new_name() -> String {
    format!("chaos-{:08x}", rand::random::<u32>())
}

pub struct Namespace {
    /// `chaos-<random hex>`: the vhost, the chroot and the workers' cluster label.
    name: String,
    amqp: String,
    /// The run's RabbitMQ URL(s) as the workers reach them, if not as `amqp`.
    worker_amqp: Option<String>,
    zk_base: String,
    /// Where `rabbitmqctl` is run (see `Settings::rabbitmq_nodes`).
    rabbitmq_nodes: Vec<String>,
    admin_token: String,
    work_dir: PathBuf,
    orchestrator: OrchestratorArgs,
    child: Option<Child>,
    /// What faults under way have changed outside the run, by fault: undone if the run ends
    /// before they do.
    undo: Mutex<BTreeMap<&'static str, Undo>>,
}

/// A change a fault makes outside the run, and how it is put back.
#[derive(Debug, Clone)]
pub enum Undo {
    /// An engine the run stopped: the command that starts it again.
    Start(CommandLine),
    /// A worker process the run stopped (SIGSTOP): SIGCONT, so it can follow its orchestrator
    /// out.
    Continue { pid: u32 },
    /// A worker container the run froze: unpaused before the run's containers are removed.
    Unpause { id: String },
}

impl Namespace {
    /// Creates the vhost and the work directory and starts the orchestrator (the chroot is
    /// created by the first session in it). From the vhost on, the value is the guard.
    pub fn create(settings: &Settings<'_>) -> anyhow::Result<Self> {
        let name = settings.name.clone();
        let work_dir = std::env::temp_dir().join(&name);
        let zk = format!("{}/{name}", settings.zk);
        let orchestrator = orchestrator_args(settings, &name, zk, &work_dir)?;
        let nodes = settings.rabbitmq_nodes.clone();
        rabbitmqctl(&nodes, ["add_vhost", &name])
            .context("creating a RabbitMQ vhost (is RabbitMQ running, and rabbitmqctl here?)")?;
        let mut ns = Namespace {
            amqp: super::cluster::with_vhost(settings.amqp_base, &name),
            worker_amqp: settings
                .workers
                .as_ref()
                .map(|view| super::cluster::with_vhost(&view.amqp_base, &name)),
            rabbitmq_nodes: nodes,
            zk_base: settings.zk.to_owned(),
            admin_token: format!("{:032x}", rand::random::<u128>()),
            work_dir,
            orchestrator,
            child: None,
            undo: Mutex::default(),
            name,
        };
        rabbitmqctl(
            &ns.rabbitmq_nodes,
            ["set_permissions", "-p", &ns.name, "guest", ".*", ".*", ".*"],
        )?;
        std::fs::create_dir_all(&ns.work_dir)?;
        ns.start_orchestrator()?;
        Ok(ns)
    }

    fn start_orchestrator(&mut self) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.orchestrator_log())?;
        let exe = std::env::current_exe()?;
        let mut command = if on_path("setpriv") {
            let mut setpriv = Command::new("setpriv");
            setpriv.args(["--pdeathsig", "KILL", "--"]).arg(exe);
            setpriv
        } else {
            Command::new(exe)
        };
        if let Some(amqp) = &self.worker_amqp {
            command.env(WORKER_AMQP_URL_ENV, amqp);
        }
        let child = command
            .args(self.orchestrator.to_args())
            // The URL and the token are secrets: the environment, not the command line.
            .env(AMQP_URL_ENV, &self.amqp)
            .env(ADMIN_TOKEN_ENV, &self.admin_token)
            .env("RIDESHARE_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the orchestrator process")?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// SIGKILL (`Child::kill`) and reap the orchestrator; its pid, if it ran.
    fn kill_orchestrator(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let _ = child.wait();
        Some(child.id())
    }

    /// Kills the orchestrator and starts a new one on the same address a second later (it
    /// adopts the running workers). The killed and the new pid.
    pub async fn restart_orchestrator(&mut self) -> anyhow::Result<(u32, u32)> {
        let killed = self.kill_orchestrator().unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((killed, self.start_orchestrator()?))
    }

    /// Stops the orchestrator for good, before the figures are printed.
    pub fn stop_orchestrator(&mut self) {
        self.kill_orchestrator();
    }

    /// Notes a change `fault` is about to make outside the run, to be undone if the run ends
    /// before [`Namespace::disarm`].
    pub fn arm(&self, fault: &'static str, undo: Undo) {
        self.undo.lock().insert(fault, undo);
    }

    /// The change `fault` made is undone by the fault itself.
    pub fn disarm(&self, fault: &'static str) {
        self.undo.lock().remove(fault);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn amqp(&self) -> &str {
        &self.amqp
    }

    /// The run's ZooKeeper connect string, chroot included.
    pub fn zk(&self) -> &str {
        self.orchestrator.engines.zk.as_deref().unwrap_or_default()
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn orchestrator_addr(&self) -> SocketAddr {
        self.orchestrator.listen
    }

    /// Logs and the reference replay; kept after the run.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn orchestrator_log(&self) -> PathBuf {
        self.work_dir.join("orchestrator.log")
    }
}

/// The orchestrator's flags: this process's environment and defaults, with the run's
/// namespace, runtime and scaling on top.
fn orchestrator_args(
    settings: &Settings<'_>,
    name: &str,
    zk: String,
    work_dir: &Path,
) -> anyhow::Result<OrchestratorArgs> {
    let mut args = OrchestratorArgs::from_env()?;
    args.listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    args.engines.zk = Some(zk);
    args.engines.zk_session_timeout = settings.zk_session_timeout;
    args.runtime.runtime = settings.runtime;
    args.runtime.worker_program = Some(std::env::current_exe()?);
    args.runtime.worker_data_dir = work_dir.join("workers");
    args.runtime.cluster = name.to_owned();
    args.runtime.worker_image = settings.worker_image.to_owned();
    args.scaling.scale_interval = settings.scale_interval;
    args.scaling.reads_per_slave = settings.reads_per_slave;
    args.runtime.snapshots.snapshot_every = settings.snapshot_every;
    if let Some(view) = &settings.workers {
        args.runtime.docker_network = view.docker_network.clone();
        args.runtime.worker_zk = Some(format!("{}/{name}", view.zk));
    }
    Ok(args)
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // First the orchestrator, which would otherwise start workers anew; process workers
        // follow it out by themselves (`--exit-with-parent`).
        self.kill_orchestrator();
        // Then what a fault cut short changed: the engines first, which the removal needs.
        let mut unpause = Vec::new();
        for (fault, undo) in std::mem::take(&mut *self.undo.lock()) {
            let undone = match &undo {
                Undo::Start(command) => {
                    println!("chaos: {fault} cut short: `{command}`");
                    command.run_blocking()
                }
                Undo::Continue { pid } => {
                    super::faults::signal(*pid, rustix::process::Signal::CONT)
                }
                Undo::Unpause { id } => {
                    unpause.push(id.clone());
                    Ok(())
                }
            };
            if let Err(e) = undone {
                eprintln!("chaos: cannot undo {fault} ({undo:?}): {e:#}");
            }
        }
        let (name, zk_base) = (self.name.clone(), self.zk_base.clone());
        // Drop cannot await, and may run inside the run's runtime or after it: the engine
        // clients get a runtime of their own on a thread of their own.
        let cleaned = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(remove_remote(&name, &zk_base, &unpause))
        })
        .join();
        let removed_vhost = rabbitmqctl(&self.rabbitmq_nodes, ["delete_vhost", &self.name]);
        match (cleaned, removed_vhost) {
            (Ok(Ok(())), Ok(())) => println!("chaos: namespace {} removed", self.name),
            (cleaned, vhost) => eprintln!(
                "chaos: namespace {} not wholly removed: engines {cleaned:?}, vhost {vhost:?}",
                self.name
            ),
        }
    }
}

/// Removes the run's worker containers (unpausing `paused` first) and its ZooKeeper chroot.
async fn remove_remote(name: &str, zk_base: &str, paused: &[String]) -> anyhow::Result<()> {
    // With `--runtime process` there may be no Docker engine at all: then there are no
    // containers to remove either.
    if let Ok(docker) = DockerRuntime::new(DockerConfig {
        cluster: name.to_owned(),
        ..DockerConfig::default()
    })
    .await
    {
        for id in paused {
            let _ = docker.unpause(id).await;
        }
        docker.remove_all().await?;
        // A container the killed orchestrator had asked for may be created a moment later.
        tokio::time::sleep(Duration::from_millis(500)).await;
        docker.remove_all().await?;
    }
    let zk = ZkCoordinator::new(zk_base, Duration::from_secs(4));
    let session = zk.connect().await?;
    // A worker's session can outlive its process by the session timeout and a node can be
    // created under a parent listed a moment earlier: a few tries until the tree is gone.
    let mut tries = 0;
    loop {
        match delete_tree(session.as_ref(), &format!("/{name}")).await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= 5 => return Err(e.into()),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes `root` and everything under it; done if it is absent.
async fn delete_tree(session: &dyn Session, root: &str) -> rideshare_dbaas::Result<()> {
    // Breadth first, then deleted deepest first: ZooKeeper refuses to delete a parent with
    // children.
    let mut nodes = vec![root.to_owned()];
    let mut next = 0;
    while next < nodes.len() {
        let path = nodes[next].clone();
        for child in session.children(&path).await? {
            nodes.push(format!("{}/{child}", path.trim_end_matches('/')));
        }
        next += 1;
    }
    for path in nodes.iter().rev() {
        match session.delete(path).await {
            Ok(()) | Err(rideshare_dbaas::Error::NoNode(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Runs `rabbitmqctl` on the first of `nodes` where it succeeds (on its default node if none
/// are named): in a cluster, a node down for a fault must not stop the run's set-up or cleanup.
fn rabbitmqctl<const N: usize>(nodes: &[String], args: [&str; N]) -> anyhow::Result<()> {
    let targets: Vec<Option<&String>> = if nodes.is_empty() {
        vec![None]
    } else {
        nodes.iter().map(Some).collect()
    };
    let mut failed = Vec::new();
    for node in targets {
        let mut command = Command::new("rabbitmqctl");
        if let Some(node) = node {
            command.args(["-n", node]);
        }
        let status = command
            .arg("-q")
            .args(args)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("cannot run rabbitmqctl {args:?}"))?;
        if status.success() {
            return Ok(());
        }
        failed.push(format!("{}: {status}", node.map_or("default node", |n| n)));
    }
    anyhow::bail!("rabbitmqctl {args:?} failed: {}", failed.join("; "))
}
