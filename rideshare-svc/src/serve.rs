//! Serving routers on sockets and stopping cleanly.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received, stopping"),
        _ = term => tracing::info!("SIGTERM received, stopping"),
    }
}

/// Binds `addr`, failing with a message that names the service.
pub async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{name}: cannot listen on {addr}"))
}

/// Serves `router` on `listener` until `stop` turns true, draining requests in flight.
pub fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let addr = listener.local_addr()?;
        tracing::info!("{name} listening on http://{addr}");
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .with_context(|| format!("{name} server failed"))
    })
}

/// Runs `servers` until `shutdown` resolves or one of them fails, then stops them all.
pub async fn run_until(
    shutdown: impl Future<Output = ()>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    let mut servers = Servers(servers);
    tokio::select! {
        _ = shutdown => {}
        first = servers.next_failure() => {
            let _ = stop.send(true);
            return first;
        }
    }
    let _ = stop.send(true);
    servers.wait_all().await
}

/// A small set of server tasks: wait for the first to end, or for all.
struct Servers(Vec<tokio::task::JoinHandle<anyhow::Result<()>>>);

impl Servers {
    /// Resolves when any server ends (they only end on failure before shutdown).
    async fn next_failure(&mut self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let (result, _, rest) = futures::future::select_all(self.0.drain(..)).await;
        self.0 = rest;
        match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("a server stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
        }
    }

    async fn wait_all(self) -> anyhow::Result<()> {
        for handle in self.0 {
            handle.await??;
        }
        Ok(())
    }
}
