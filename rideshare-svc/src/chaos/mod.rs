//! `rideshare chaos`: the distributed system on the real engines under injected faults, with a
//! recorded history and a checker (Jepsen-style).
//!
//! It runs an orchestrator process (Docker workers) in a RabbitMQ virtual host and a ZooKeeper
//! chroot of its own, drives concurrent clients against it, and injects faults on a schedule:
//! crash the master, crash a slave, kill -9 and restart the orchestrator, restart RabbitMQ,
//! restart ZooKeeper, pause the master past its session timeout and resume it, read bursts
//! that make the scaler add and then remove slaves, and more (`faults::Fault` has every kind:
//! engines SIGKILLed, a paused slave, the master cut off from one engine). Then it replays the write log and checks
//! the history against it (`rideshare_dbaas::checker`). Traffic goes to loopback only.
//!
//! One job per module: `namespace` (the run's vhost, chroot, token and orchestrator, removed
//! however the run ends), `clients` (the load and its history), `faults` (injection, typed),
//! `api` and `observe` (what the run reads of the orchestrator and of ZooKeeper), `check`
//! (replay and checker), `report` (figures and verdict), `cluster` (the clustered engines'
//! node faults), `partition` (the networks and relays the partition faults cut). `run` is the
//! sequence of steps.

mod api;
mod check;
mod clients;
mod cluster;
mod command;
mod faults;
mod history;
mod namespace;
mod observe;
mod partition;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rideshare_core::ops::RequestId;
use rideshare_dbaas::checker::{Completion, Event};

use self::api::Api;
use self::clients::{probe, Load, Recorder};
pub use self::command::CommandLine;
pub use self::faults::Fault;
use self::faults::{EngineKills, FaultError, Injector, Setup};
use self::history::Injection;
use self::namespace::{Namespace, Settings};
use self::observe::{Observer, Tracker};
use self::report::Record;
use crate::args::RuntimeKind;

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// How long faults are injected (then the run settles and is checked).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// RabbitMQ URL without a virtual host; the run creates its own vhost (needs `rabbitmqctl`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    pub amqp_base: String,
    /// ZooKeeper connect string; the run uses a chroot of its own.
    #[arg(long, default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// ZooKeeper session timeout of the orchestrator and the workers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub zk_session_timeout: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Time between faults.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub fault_interval: Duration,
    /// Faults to inject, in rotation.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "crash-master,crash-slave,kill-orchestrator,pause-master,late-append,restart-rabbitmq,restart-zookeeper,scale,crash-master"
    )]
    pub faults: Vec<Fault>,
    /// The orchestrator's scaling window during the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub scale_interval: Duration,
    /// The orchestrator's reads per slave during the run: the clients read all the time, so the
    /// contract's 20 would keep the cluster at its maximum and the scale fault would show nothing.
    #[arg(long, default_value_t = 200)]
    pub reads_per_slave: u64,
    #[arg(long, default_value = "rideshare-worker:latest")]
    pub worker_image: String,
    /// Where workers run: Docker containers (paused with `docker pause`) or processes of this
    /// binary (paused with SIGSTOP).
    #[arg(long, value_enum, default_value = "docker")]
    pub runtime: RuntimeKind,
    /// Command that restarts RabbitMQ (split into words like a shell would, run without one).
    #[arg(long, default_value = "scripts/engines.sh restart-rabbitmq")]
    pub restart_rabbitmq_cmd: CommandLine,
    /// Command that restarts ZooKeeper (split into words like a shell would, run without one).
    #[arg(long, default_value = "scripts/engines.sh restart-zk")]
    pub restart_zk_cmd: CommandLine,
    /// Command that SIGKILLs RabbitMQ (kill-rabbitmq fault), like `--restart-rabbitmq-cmd`.
    #[arg(long, default_value = "scripts/engines.sh kill-rabbitmq")]
    pub kill_rabbitmq_cmd: CommandLine,
    /// Command that starts RabbitMQ again after `--kill-rabbitmq-cmd`, and returns once it
    /// answers; also run on the way out if the run ends while RabbitMQ is down.
    #[arg(long, default_value = "scripts/engines.sh start-rabbitmq")]
    pub start_rabbitmq_cmd: CommandLine,
    /// Command that SIGKILLs ZooKeeper (kill-zookeeper fault).
    #[arg(long, default_value = "scripts/engines.sh kill-zk")]
    pub kill_zk_cmd: CommandLine,
    /// Command that starts ZooKeeper again after `--kill-zk-cmd`, and returns once it
    /// answers; also run on the way out if the run ends while ZooKeeper is down.
    #[arg(long, default_value = "scripts/engines.sh start-zk")]
    pub start_zk_cmd: CommandLine,
    /// How long the partition faults cut the master off from an engine.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub partition_for: Duration,
    /// How long a killed engine stays down before it is started again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub engine_down_for: Duration,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The share of operations invoked outside fault windows that must succeed (a write
    /// acknowledged, a read answered), else the run fails. A fault's window runs from its
    /// injection to the first acknowledged write invoked after it, at most
    /// `--fault-recovery-bound` past the injection's end.
    #[arg(long, default_value_t = 0.9)]
    pub progress_floor: f64,
    /// See `--progress-floor`.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub fault_recovery_bound: Duration,
    /// How often the workers' member records are read from ZooKeeper during the run (every
    /// digest seen is compared with the log afterwards).
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub observe_interval: Duration,
    /// Workers write a snapshot every this many log entries: small, so that a run writes
    /// several and every replacement installs one (0: none).
    #[arg(long, default_value_t = 300)]
    pub snapshot_every: u64,
    /// The engines: `single` (`--amqp-base`, `--zk`) or `cluster`, the 3 RabbitMQ nodes and 3
    /// ZooKeeper servers of `scripts/engines.sh start-cluster` (`--cluster-amqp`,
    /// `--cluster-zk`), where the engine faults act on one node at a time (see `cluster.rs`).
    #[arg(long, value_enum, default_value = "single")]
    pub engines: cluster::Engines,
    /// `--engines cluster`: the RabbitMQ nodes' URLs, comma-separated, without a vhost.
    #[arg(long, default_value = cluster::DEFAULT_AMQP)]
    pub cluster_amqp: String,
    /// `--engines cluster`: the ensemble's connect string; the run uses a chroot of its own.
    #[arg(long, default_value = cluster::DEFAULT_ZK)]
    pub cluster_zk: String,
    /// `--engines cluster`: faults added to the rotation after `--faults`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-rabbitmq-node,kill-zk-server"
    )]
    pub cluster_faults: Vec<Fault>,
    /// `--engines cluster`: the script whose subcommands kill and start one node
    /// (`kill-rabbitmq-node N`, `start-rabbitmq-node N`, ...), split like a shell would.
    #[arg(long, default_value = "scripts/engines.sh")]
    pub cluster_script: String,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::select! {
        result = run_in_namespace(&args) => result,
        // Ctrl-C, SIGTERM (a CI timeout) and SIGHUP drop the run like any other end, so its
        // guard removes what it started.
        signal = tokio::signal::ctrl_c() => {
            signal?;
            bail!("interrupted")
        }
        _ = terminate.recv() => bail!("terminated (SIGTERM)"),
        _ = hangup.recv() => bail!("hung up (SIGHUP)"),
    }
}

/// The fault schedule's setup; `history` is where the mid-burst kill records its writes.
fn setup(args: &ChaosArgs, history: Recorder) -> Setup<'_> {
    Setup {
        runtime: args.runtime,
        session_timeout: args.zk_session_timeout,
        restart_rabbitmq: &args.restart_rabbitmq_cmd,
        restart_zk: &args.restart_zk_cmd,
        engines: EngineKills {
            kill_rabbitmq: &args.kill_rabbitmq_cmd,
            start_rabbitmq: &args.start_rabbitmq_cmd,
            kill_zk: &args.kill_zk_cmd,
            start_zk: &args.start_zk_cmd,
            down_for: args.engine_down_for,
        },
        history,
        cluster: None,
        networks: None,
        partition_for: args.partition_for,
    }
}

/// Before anything is started: every command the faults asked for can run (the engines were
/// started by `scripts/engines.sh`, or commands were given that act on them).
fn preflight(args: &ChaosArgs) -> anyhow::Result<()> {
    if args.runtime != RuntimeKind::Docker && faults(args).iter().any(|f| f.is_partition()) {
        bail!(
            "the partition faults cut a worker container off a Docker network: they need \
             --runtime docker"
        );
    }
    if args.engines == cluster::Engines::Cluster {
        // The engine faults act on the cluster's nodes (cluster.rs), not through those commands.
        return cluster::preflight(&args.cluster_script);
    }
    let setup = setup(args, Recorder::default());
    let mut missing = Vec::new();
    for (flag, command) in setup.commands(&args.faults) {
        if let Err(e) = command.preflight() {
            missing.push(format!("{flag}: {e:#}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the faults asked for need commands that cannot run here:\n  {}\nGive commands that \
             act on these engines with the flags above, or leave those faults out of --faults.",
            missing.join("\n  ")
        );
    }
    Ok(())
}

async fn run_in_namespace(args: &ChaosArgs) -> anyhow::Result<()> {
    preflight(args)?;
    let name = namespace::new_name();
    let mut settings = settings(args, name.clone());
    // Declared before the namespace, so dropped after it: the containers go first.
    let networks = if faults(args).iter().any(|f| f.is_partition()) {
        let (networks, view) =
            partition::Networks::create(&name, settings.amqp_base, settings.zk).await?;
        settings.workers = Some(view);
        Some(networks)
    } else {
        None
    };
    let mut ns = Namespace::create(&settings)?;
    println!(
        "chaos: namespace {} (logs in {})",
        ns.name(),
        ns.work_dir().display()
    );
    let api = Api::new(ns.orchestrator_addr(), ns.admin_token())?;
    let observer = Observer::new(ns.zk());
    let tracker = Tracker::start(ns.zk(), args.observe_interval);
    await_first_write(&api, &ns).await?;
    let load = Load::start(&api, args.clients, args.seed);
    let started = Instant::now();
    let mut record = inject_faults(
        args,
        &mut ns,
        networks.as_ref(),
        (&api, &observer, &load),
        started,
    )
    .await?;
    let events = settle(&api, load, started).await?;
    let checked = check::check_run(
        ns.amqp(),
        &observer,
        tracker,
        ns.work_dir(),
        &events,
        &mut record,
    )
    .await?;
    let bounds = report::Bounds {
        progress_floor: args.progress_floor,
        recovery_bound: args.fault_recovery_bound,
    };
    let figures = report::figures(&events, checked, record, &bounds, started.elapsed());
    ns.stop_orchestrator();
    report::publish(&figures, args.json.as_deref())?;
    report::verdict(&figures, &faults(args))
}

/// The faults in rotation: `--faults`, and `--cluster-faults` with `--engines cluster`.
fn faults(args: &ChaosArgs) -> Vec<Fault> {
    cluster::rotation(args.engines, &args.faults, &args.cluster_faults)
}

fn settings(args: &ChaosArgs, name: String) -> Settings<'_> {
    let cluster = args.engines == cluster::Engines::Cluster;
    Settings {
        name,
        workers: None,
        amqp_base: if cluster {
            &args.cluster_amqp
        } else {
            &args.amqp_base
        },
        zk: if cluster { &args.cluster_zk } else { &args.zk },
        rabbitmq_nodes: if cluster {
            cluster::rabbitmq_nodes()
        } else {
            Vec::new()
        },
        zk_session_timeout: args.zk_session_timeout,
        runtime: args.runtime,
        worker_image: &args.worker_image,
        scale_interval: args.scale_interval,
        reads_per_slave: args.reads_per_slave,
        snapshot_every: args.snapshot_every,
    }
}

async fn accepts_a_write(api: &Api, n: u64) -> bool {
    matches!(
        api.write(&RequestId::random(), &probe(n)).await,
        Completion::Written { .. }
    )
}

async fn await_first_write(api: &Api, ns: &Namespace) -> anyhow::Result<()> {
    if !wait_for(Duration::from_secs(90), || accepts_a_write(api, 0)).await {
        bail!(
            "the cluster did not accept a write within 90 s (see {})",
            ns.orchestrator_log().display()
        );
    }
    Ok(())
}

/// The faults in rotation, one every `--fault-interval`, until `--duration` is over.
async fn inject_faults(
    args: &ChaosArgs,
    ns: &mut Namespace,
    networks: Option<&partition::Networks>,
    (api, observer, load): (&Api, &Observer, &Load),
    started: Instant,
) -> anyhow::Result<Record> {
    let nodes = (args.engines == cluster::Engines::Cluster)
        .then(|| cluster::Cluster::new(args.cluster_script.clone(), args.engine_down_for));
    let mut setup = setup(args, load.recorder());
    setup.cluster = nodes.as_ref();
    setup.networks = networks;
    let injector = Injector::new(setup, ns, api, observer).await?;
    let mut record = Record::default();
    for fault in faults(args).into_iter().cycle() {
        if started.elapsed() >= args.duration {
            break;
        }
        tokio::time::sleep(args.fault_interval).await;
        let at_ms = api.ms();
        let outcome = injector.inject(fault, ns).await;
        let span = Injection {
            start_ms: at_ms,
            injected_ms: api.ms(),
        };
        record.note_catch_ups(&observer.members().await);
        let what = match outcome {
            Ok(injected) => {
                record.note_injected(fault, span, &injected);
                injected.to_string()
            }
            Err(FaultError::NotInjected(reason)) => reason,
            Err(FaultError::Failed(e)) => return Err(e.context(format!("injecting {fault:?}"))),
        };
        let counts = load.counts();
        println!(
            "[{:>4}s] {what}; ops ok {}, failed {}, unknown {}; workers {:?}",
            started.elapsed().as_secs(),
            counts.ok,
            counts.failed,
            counts.unknown,
            api.pids().await.unwrap_or_default()
        );
    }
    Ok(record)
}

/// Waits until the cluster accepts writes again, then stops the clients: their history.
async fn settle(api: &Api, load: Load, started: Instant) -> anyhow::Result<Vec<Event>> {
    println!(
        "chaos: faults over after {} s; settling",
        started.elapsed().as_secs()
    );
    let settled = wait_for(Duration::from_secs(120), || accepts_a_write(api, 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = load.stop().await;
    if !settled {
        bail!("the cluster did not accept writes within 120 s after the faults");
    }
    // Quiet: the replicas publish their state digests once the log has been still a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(events)
}

/// Polls `check` every 100 ms until it holds (true) or `bound` has passed (false).
async fn wait_for<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < bound {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
