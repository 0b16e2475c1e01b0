//! The separate processes of the distributed mode: gateway, users, rides, orchestrator, worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, AdminToken, GatewayConfig, PasswordHashing,
    RidesConfig, ServiceLimits, Upstream,
};
use rideshare_core::clock::SystemClock;
use rideshare_dbaas::client::OrchestratorDb;
use rideshare_dbaas::orchestrator::http::orchestrator_router;
use rideshare_dbaas::orchestrator::{Orchestrator, OrchestratorConfig};
use rideshare_dbaas::policy::ScalePolicy;
use rideshare_dbaas::snapshot::{SnapshotDir, StoreAt, StoreKind};
use rideshare_dbaas::worker::{run_worker_from, SnapshotSettings, WorkerConfig, WorkerDeps};
use tokio::sync::watch;

use crate::args::{BatchArgs, HttpArgs, OrchestratorArgs, ScalingArgs};
use crate::cli::{GatewayArgs, HashingArgs, RidesArgs, UsersArgs, WorkerArgs};
use crate::engines::runtime;
use crate::observe;
use crate::serve::{bind, check_exposure, run_until, spawn_server, ConnLimits};

/// Bound on one internal HTTP hop.
pub const HOP_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpArgs {
    pub fn limits(&self) -> ServiceLimits {
        ServiceLimits {
            max_body_bytes: self.max_body_bytes,
            request_timeout: self.request_timeout,
            max_in_flight: self.max_in_flight as usize,
            admin: self.admin(),
        }
    }

    pub fn admin(&self) -> AdminToken {
        self.admin_token.clone().unwrap_or_default()
    }

    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
        }
    }

    /// Fails the start when `addrs` would expose admin calls without a token.
    pub fn check_exposure(&self, addrs: &[std::net::SocketAddr]) -> anyhow::Result<()> {
        check_exposure(addrs, &self.admin(), self.insecure_no_auth)
    }
}

impl HashingArgs {
    pub fn config(&self) -> PasswordHashing {
        PasswordHashing {
            m_cost_kib: self.hash_memory_kib,
            t_cost: self.hash_iterations,
            threads: self.hash_threads as usize,
            queue: self.hash_queue as usize,
        }
    }
}

impl ScalingArgs {
    /// The orchestrator's configuration from its scaling and batching flags.
    pub fn orchestrator_config(&self, batching: &BatchArgs) -> OrchestratorConfig {
        OrchestratorConfig {
            batching: batching.batching(),
            scale_window: self.scale_interval,
            policy: ScalePolicy {
                reads_per_slave: self.reads_per_slave,
                max_slaves: self.max_slaves,
            },
            ..OrchestratorConfig::default()
        }
    }
}

async fn serve_one(
    name: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    http: &HttpArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = bind(name, addr).await?;
    let (stop, stopped) = watch::channel(false);
    let server = spawn_server(name, listener, router, stopped, http.conn_limits());
    run_until(shutdown, stop, vec![server]).await
}

pub async fn gateway(args: GatewayArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    args.http.check_exposure(&[args.listen])?;
    let (users_url, rides_url) = (args.users_url.clone(), args.rides_url.clone());
    let router = gateway_router(
        GatewayConfig {
            users: Upstream::http(args.users_url, HOP_TIMEOUT),
            rides: Upstream::http(args.rides_url, HOP_TIMEOUT),
        },
        args.http.limits(),
    );
    let router = observe::gateway(router, &users_url, &rides_url);
    serve_one("gateway", args.listen, router, &args.http, shutdown).await
}

pub async fn users(args: UsersArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    args.http.check_exposure(&[args.listen])?;
    let db = OrchestratorDb::new(
        args.orchestrator_url.clone(),
        HOP_TIMEOUT,
        args.http.admin(),
    );
    let router = users_router(db, args.hashing.config(), args.http.limits());
    let router = observe::service("users", router, &args.orchestrator_url);
    serve_one("users", args.listen, router, &args.http, shutdown).await
}

pub async fn rides(args: RidesArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    args.http.check_exposure(&[args.listen])?;
    let db = OrchestratorDb::new(
        args.orchestrator_url.clone(),
        HOP_TIMEOUT,
        args.http.admin(),
    );
    let orchestrator_url = args.orchestrator_url;
    let router = rides_router(
        db,
        Arc::new(SystemClock { zone: args.http.tz }),
        RidesConfig {
            gateway: Upstream::http(args.gateway_url, HOP_TIMEOUT),
            origin: args.public_url,
        },
        args.http.limits(),
    );
    let router = observe::service("rides", router, &orchestrator_url);
    serve_one("rides", args.listen, router, &args.http, shutdown).await
}

/// The orchestrator on the real engines. Stopping it leaves the workers running: a restarted
/// orchestrator takes them over.
pub async fn orchestrator(
    args: OrchestratorArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    args.http.check_exposure(&[args.listen])?;
    let engines = args.engines.connect().await?;
    let runtime = runtime(&args.engines, &args.runtime).await?;
    let mut config = args.scaling.orchestrator_config(&args.batching);
    config.snapshots = snapshot_dir(args.runtime.snapshot_dir(), &args.runtime.snapshots)?;
    let running = Orchestrator::start(config, engines.orchestrator_deps(runtime))
        .await
        .context("cannot start the orchestrator")?;
    let router = orchestrator_router(Arc::clone(&running.orchestrator), args.http.limits());
    let router = observe::orchestrator(router, Arc::clone(&running.orchestrator));
    let orchestrator = Arc::clone(&running.orchestrator);
    let shutdown = async move {
        shutdown.await;
        orchestrator.close_event_streams();
    };
    serve_one("orchestrator", args.listen, router, &args.http, shutdown).await
}

/// One worker until it must stop (session lost, deposed, engine failure): then the process
/// exits non-zero and the orchestrator replaces it.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut config = WorkerConfig::new(args.id.clone(), std::process::id());
    config.group_commit = args.group_commit.settings();
    // This process's clock is real: its store's answers are awaited directly, even on the
    // current-thread runtime `main` gives a worker.
    config.clock_may_pause = false;
    // Its runtime only routes messages: a few point reads are answered on it directly.
    config.inline_point_reads = true;
    // Health, readiness and metrics, when asked for: bound before anything else, so the
    // address can go into the member record.
    let (stop, stopped) = watch::channel(false);
    let mut server = None;
    if let Some(listen) = args.listen {
        let admin = args.admin_token.clone().unwrap_or_default();
        check_exposure(&[listen], &admin, args.insecure_no_auth)?;
        let listener = bind("worker", listen).await?;
        config.http = Some(listener.local_addr()?.to_string());
        let router = observe::worker(Arc::clone(&config.ready));
        server = Some(spawn_server(
            "worker",
            listener,
            router,
            stopped,
            ConnLimits::default(),
        ));
    }
    let result = run_worker_process(args, config).await;
    let _ = stop.send(true);
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}

async fn run_worker_process(args: WorkerArgs, mut config: WorkerConfig) -> anyhow::Result<()> {
    let engines = args.engines.connect().await?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let at = StoreAt::Sqlite(args.data_dir.join(format!("{}.db", args.id)));
    let snapshots = snapshot_dir(
        args.snapshots.dir(args.data_dir.join("snapshots")),
        &args.snapshots,
    )?;
    config.snapshots = snapshots.clone().map(|dir| SnapshotSettings {
        dir,
        every: args.snapshots.snapshot_every,
        kind: StoreKind::Sqlite,
    });
    // A worker never reuses a file: it installs the newest snapshot, or starts empty, and
    // replays the log from there.
    let opening = at.clone();
    let log_end = engines
        .log
        .end()
        .await
        .context("cannot read the log's end")?;
    let (store, installed) =
        tokio::task::spawn_blocking(move || opening.open(snapshots.as_ref(), log_end))
            .await?
            .with_context(|| format!("cannot open the worker database for {}", args.id))?;
    tracing::info!(id = %args.id, pid = config.pid, http = ?config.http, snapshot = ?installed.as_ref().map(|m| m.index), "worker starting");
    let work = run_worker_from(
        config,
        WorkerDeps {
            broker: engines.broker,
            log: engines.log,
            coordinator: engines.coordinator,
        },
        store,
        installed,
    );
    let result = if args.exit_with_parent {
        tokio::select! {
            result = work => result,
            _ = parent_gone() => Err(rideshare_dbaas::Error::Runtime("the parent process is gone".into())),
        }
    } else {
        work.await
    };
    at.remove();
    result.context("worker stopped")
}

/// The shared snapshot directory `dir` (created), keeping the number of snapshots `args` says;
/// `None` when snapshots are off.
pub fn snapshot_dir(
    dir: Option<std::path::PathBuf>,
    args: &crate::args::SnapshotArgs,
) -> anyhow::Result<Option<SnapshotDir>> {
    dir.map(|dir| {
        SnapshotDir::open(&dir, args.snapshot_keep as usize)
            .with_context(|| format!("cannot use the snapshot directory {}", dir.display()))
    })
    .transpose()
}

/// Resolves when this process is re-parented (its parent died).
async fn parent_gone() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}
