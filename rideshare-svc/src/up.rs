//! `rideshare up`: the whole system in one process on embedded engines, nothing installed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, GatewayConfig, PasswordHashing, RidesConfig,
    ServiceLimits,
};
use rideshare_core::clock::SystemClock;
use rideshare_core::db::LocalDb;
use rideshare_core::store::SqliteStore;
use tokio::sync::watch;

use crate::cli::UpArgs;
use crate::serve::{bind, run_until, spawn_server};

/// Bound on one internal HTTP hop (gateway → service, rides → users check).
const HOP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let db_path = args.data_dir.join("rideshare.db");
    let store = SqliteStore::open(&db_path)
        .with_context(|| format!("cannot open database {}", db_path.display()))?;
    let db = LocalDb::new(store);
    tracing::info!("data in {}", db_path.display());

    let limits = ServiceLimits {
        max_body_bytes: args.http.max_body_bytes,
        request_timeout: args.http.request_timeout,
    };
    // Bind everything first, so a taken port fails the start before anything serves.
    let gateway_listener = bind("gateway", args.gateway).await?;
    let users_listener = bind("users", args.users).await?;
    let rides_listener = bind("rides", args.rides).await?;
    let gateway_url = format!("http://{}", gateway_listener.local_addr()?);
    let users_url = format!("http://{}", users_listener.local_addr()?);
    let rides_url = format!("http://{}", rides_listener.local_addr()?);

    let users = users_router(db.clone(), PasswordHashing::default(), limits);
    let rides = rides_router(
        db,
        Arc::new(SystemClock { zone: args.http.tz }),
        RidesConfig {
            gateway_url: gateway_url.clone(),
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

    let (stop, stopped) = watch::channel(false);
    let servers = vec![
        spawn_server("gateway", gateway_listener, gateway, stopped.clone()),
        spawn_server("users", users_listener, users, stopped.clone()),
        spawn_server("rides", rides_listener, rides, stopped),
    ];
    run_until(shutdown, stop, servers).await?;
    tracing::info!("stopped");
    Ok(())
}
