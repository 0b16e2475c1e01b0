//! `rideshare up`: the whole system in one process on embedded engines, nothing installed.
//!
//! Gateway, users, rides and the orchestrator each serve HTTP on their own port; inside the
//! process they call each other directly (`Upstream::Local`, `InProcessDb`), without a socket.
//! The DBaaS runs on the in-memory broker
//! and coordinator, a log file in the data directory and task workers, each worker with its own
//! SQLite file. The log file is the database: on restart every worker replays it.
//!
//! With `--amqp-url` and `--zk` the same processes run on the real engines instead: RabbitMQ
//! queues and log stream, ZooKeeper, and workers as Docker containers or OS processes
//! (`--runtime`). The workers are stopped when `up` stops; the data stays in the stream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, GatewayConfig, LocalRouter, RidesConfig, Upstream,
};
use rideshare_core::clock::SystemClock;
use rideshare_dbaas::client::InProcessDb;
use rideshare_dbaas::cluster::{EmbeddedCluster, EmbeddedConfig, WorkerStores};
use rideshare_dbaas::log::file::{FileLog, FileLogConfig};
use rideshare_dbaas::orchestrator::http::orchestrator_router;
use rideshare_dbaas::orchestrator::{Orchestrator, RunningOrchestrator};
use rideshare_dbaas::runtime::Runtime;
use rideshare_dbaas::worker::{SnapshotSettings, WorkerConfig};
use tokio::sync::watch;

use crate::cli::UpArgs;
use crate::engines;
use crate::observe;
use crate::roles::snapshot_dir;
use crate::serve::{bind, run_until, spawn_server};

/// A running `rideshare up`: where it listens, and how to stop it.
pub struct Up {
    pub gateway: SocketAddr,
    pub users: SocketAddr,
    pub rides: SocketAddr,
    pub orchestrator: SocketAddr,
    dbaas: Dbaas,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Up {
    /// Serves until `shutdown` resolves (or a server fails), then stops everything.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let orchestrator = Arc::clone(self.dbaas.orchestrator());
        let shutdown = async move {
            shutdown.await;
            orchestrator.close_event_streams();
        };
        let result = run_until(shutdown, self.stop, self.servers).await;
        self.dbaas.shutdown().await;
        result
    }

    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        self.dbaas.orchestrator()
    }

    /// Stops everything now.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.run_until(async {}).await
    }
}

/// The database service behind `up`: embedded, or an orchestrator on the real engines.
enum Dbaas {
    Embedded(Box<EmbeddedCluster>),
    Real {
        running: RunningOrchestrator,
        runtime: Arc<dyn Runtime>,
    },
}

impl Dbaas {
    async fn start(args: &UpArgs) -> anyhow::Result<Self> {
        let mut config = args.scaling.orchestrator_config(&args.batching);
        if !args.engines.is_real() {
            let log_path = args.data_dir.join("rideshare.log");
            let log = FileLog::open_with(
                &log_path,
                FileLogConfig {
                    segment_bytes: args.engines.log_segment_bytes,
                },
            )
            .with_context(|| format!("cannot open the write log {}", log_path.display()))?;
            tracing::info!("write log in {}.<first index>", log_path.display());
            let snapshots = snapshot_dir(
                args.runtime.snapshots.dir(args.data_dir.join("snapshots")),
                &args.runtime.snapshots,
            )?;
            config.snapshots = snapshots.clone();
            let stores = WorkerStores::SqliteDir(args.data_dir.join("workers"));
            let mut worker = WorkerConfig::new("", 0);
            worker.group_commit = args.runtime.group_commit.settings();
            worker.snapshots = snapshots.map(|dir| SnapshotSettings {
                dir,
                every: args.runtime.snapshots.snapshot_every,
                kind: stores.kind(),
            });
            let cluster = EmbeddedCluster::start(
                Arc::new(log),
                EmbeddedConfig {
                    stores,
                    orchestrator: config,
                    worker,
                    ..EmbeddedConfig::default()
                },
            )
            .await
            .context("cannot start the database service")?;
            return Ok(Dbaas::Embedded(Box::new(cluster)));
        }
        config.snapshots = snapshot_dir(args.runtime.snapshot_dir(), &args.runtime.snapshots)?;
        let engines = args.engines.connect().await?;
        let runtime = engines::runtime(&args.engines, &args.runtime).await?;
        let running = Orchestrator::start(config, engines.orchestrator_deps(Arc::clone(&runtime)))
            .await
            .context("cannot start the orchestrator")?;
        Ok(Dbaas::Real { running, runtime })
    }

    fn orchestrator(&self) -> &Arc<Orchestrator> {
        match self {
            Dbaas::Embedded(cluster) => cluster.orchestrator(),
            Dbaas::Real { running, .. } => &running.orchestrator,
        }
    }

    async fn shutdown(self) {
        match self {
            Dbaas::Embedded(cluster) => cluster.shutdown(),
            Dbaas::Real { running, runtime } => {
                drop(running);
                for worker in runtime.list().await.unwrap_or_default() {
                    if let Err(e) = runtime.kill(&worker.id).await {
                        tracing::warn!(id = %worker.id, error = %e, "could not stop a worker");
                    }
                }
            }
        }
    }
}

/// `rideshare up` until Ctrl-C / SIGTERM.
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    start(args).await?.run_until(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the data directory, binds every address, starts the DBaaS and the services.
pub async fn start(args: UpArgs) -> anyhow::Result<Up> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;

    args.http
        .check_exposure(&[args.gateway, args.users, args.rides, args.orchestrator])?;
    let limits = args.http.limits();
    // Bind everything first, so a taken port fails the start before anything serves.
    let gateway_listener = bind("gateway", args.gateway).await?;
    let users_listener = bind("users", args.users).await?;
    let rides_listener = bind("rides", args.rides).await?;
    let orchestrator_listener = bind("orchestrator", args.orchestrator).await?;
    let users_url = format!("http://{}", users_listener.local_addr()?);
    let rides_url = format!("http://{}", rides_listener.local_addr()?);
    let orchestrator_url = format!("http://{}", orchestrator_listener.local_addr()?);

    let dbaas = Dbaas::start(&args).await?;

    // One process: the services call the orchestrator, and the gateway and the services call
    // each other, without a socket; each still serves its own port for everyone else.
    let db = InProcessDb::new(Arc::clone(dbaas.orchestrator()));
    let users = users_router(db.clone(), args.hashing.config(), limits.clone());
    let users = observe::service("users", users, &orchestrator_url);
    let gateway_slot = LocalRouter::empty();
    let rides = rides_router(
        db,
        Arc::new(SystemClock { zone: args.http.tz }),
        RidesConfig {
            gateway: Upstream::Local(gateway_slot.clone()),
            origin: rides_url.clone(),
        },
        limits.clone(),
    );
    let rides = observe::service("rides", rides, &orchestrator_url);
    let gateway = gateway_router(
        GatewayConfig {
            users: Upstream::Local(users.clone().into()),
            rides: Upstream::Local(rides.clone().into()),
        },
        limits.clone(),
    );
    let gateway = observe::gateway(gateway, &users_url, &rides_url);
    gateway_slot.set(gateway.clone());
    let orchestrator = orchestrator_router(Arc::clone(dbaas.orchestrator()), limits);
    let orchestrator = observe::orchestrator(orchestrator, Arc::clone(dbaas.orchestrator()));

    let addrs = (
        gateway_listener.local_addr()?,
        users_listener.local_addr()?,
        rides_listener.local_addr()?,
        orchestrator_listener.local_addr()?,
    );
    let (stop, stopped) = watch::channel(false);
    let conn = args.http.conn_limits();
    let servers = vec![
        spawn_server("gateway", gateway_listener, gateway, stopped.clone(), conn),
        spawn_server("users", users_listener, users, stopped.clone(), conn),
        spawn_server("rides", rides_listener, rides, stopped.clone(), conn),
        spawn_server(
            "orchestrator",
            orchestrator_listener,
            orchestrator,
            stopped,
            conn,
        ),
    ];
    Ok(Up {
        gateway: addrs.0,
        users: addrs.1,
        rides: addrs.2,
        orchestrator: addrs.3,
        dbaas,
        stop,
        servers,
    })
}
