//! `rideshare up`: the whole system in one process on embedded engines, nothing installed.
//!
//! Gateway, users, rides and the orchestrator serve HTTP; the DBaaS runs on the in-memory broker
//! and coordinator, a log file in the data directory and task workers, each worker with its own
//! SQLite file. The log file is the database: on restart every worker replays it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, GatewayConfig, PasswordHashing, RidesConfig,
    ServiceLimits,
};
use rideshare_core::clock::SystemClock;
use rideshare_dbaas::client::OrchestratorDb;
use rideshare_dbaas::cluster::{EmbeddedCluster, EmbeddedConfig, WorkerStores};
use rideshare_dbaas::log::file::FileLog;
use rideshare_dbaas::orchestrator::http::orchestrator_router;
use rideshare_dbaas::orchestrator::OrchestratorConfig;
use rideshare_dbaas::policy::ScalePolicy;
use tokio::sync::watch;

use crate::cli::UpArgs;
use crate::serve::{bind, run_until, spawn_server};

/// Bound on one internal HTTP hop (gateway → service, rides → users, service → orchestrator).
const HOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `rideshare up`: where it listens, and how to stop it.
pub struct Up {
    pub gateway: SocketAddr,
    pub users: SocketAddr,
    pub rides: SocketAddr,
    pub orchestrator: SocketAddr,
    cluster: EmbeddedCluster,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Up {
    /// Serves until `shutdown` resolves (or a server fails), then stops everything.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let result = run_until(shutdown, self.stop, self.servers).await;
        self.cluster.shutdown();
        result
    }

    /// Stops everything now.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.run_until(async {}).await
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
    let log_path = args.data_dir.join("rideshare.log");
    let log = FileLog::open(&log_path).with_context(|| format!("cannot open the write log {}", log_path.display()))?;
    tracing::info!("write log in {}", log_path.display());

    let limits = ServiceLimits {
        max_body_bytes: args.http.max_body_bytes,
        request_timeout: args.http.request_timeout,
    };
    // Bind everything first, so a taken port fails the start before anything serves.
    let gateway_listener = bind("gateway", args.gateway).await?;
    let users_listener = bind("users", args.users).await?;
    let rides_listener = bind("rides", args.rides).await?;
    let orchestrator_listener = bind("orchestrator", args.orchestrator).await?;
    let gateway_url = format!("http://{}", gateway_listener.local_addr()?);
    let users_url = format!("http://{}", users_listener.local_addr()?);
    let rides_url = format!("http://{}", rides_listener.local_addr()?);
    let orchestrator_url = format!("http://{}", orchestrator_listener.local_addr()?);

    let cluster = EmbeddedCluster::start(
        Arc::new(log),
        EmbeddedConfig {
            stores: WorkerStores::SqliteDir(args.data_dir.join("workers")),
            orchestrator: OrchestratorConfig {
                scale_window: args.scaling.scale_interval,
                policy: ScalePolicy {
                    reads_per_slave: args.scaling.reads_per_slave,
                    max_slaves: args.scaling.max_slaves,
                },
                ..OrchestratorConfig::default()
            },
            ..EmbeddedConfig::default()
        },
    )
    .await
    .context("cannot start the database service")?;

    let db = OrchestratorDb::new(orchestrator_url, HOP_TIMEOUT);
    let users = users_router(db.clone(), PasswordHashing::default(), limits);
    let rides = rides_router(
        db,
        Arc::new(SystemClock { zone: args.http.tz }),
        RidesConfig {
            gateway_url,
            origin: rides_url.clone(),
            users_timeout: HOP_TIMEOUT,
        },
        limits,
    );
    let gateway = gateway_router(
        GatewayConfig {
            users_url,
            rides_url,
            upstream_timeout: HOP_TIMEOUT,
        },
        limits,
    );
    let orchestrator = orchestrator_router(Arc::clone(cluster.orchestrator()), limits);

    let addrs = (
        gateway_listener.local_addr()?,
        users_listener.local_addr()?,
        rides_listener.local_addr()?,
        orchestrator_listener.local_addr()?,
    );
    let (stop, stopped) = watch::channel(false);
    let servers = vec![
        spawn_server("gateway", gateway_listener, gateway, stopped.clone()),
        spawn_server("users", users_listener, users, stopped.clone()),
        spawn_server("rides", rides_listener, rides, stopped.clone()),
        spawn_server("orchestrator", orchestrator_listener, orchestrator, stopped),
    ];
    Ok(Up {
        gateway: addrs.0,
        users: addrs.1,
        rides: addrs.2,
        orchestrator: addrs.3,
        cluster,
        stop,
        servers,
    })
}
