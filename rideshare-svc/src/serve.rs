//! Serving routers on sockets: which addresses may be served, the bounds every listener keeps
//! (connections, header-read and idle time), and stopping cleanly.
//!
//! Written on hyper's connection builder rather than `axum::serve`, which has no header-read
//! timeout and no connection bound: a client that opens a connection and stalls, or thousands
//! of them, must cost a bounded slot for a bounded time and never slow the others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rideshare_core::api::AdminToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Bounds one listener keeps on its connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once; past it a new one gets a 503 and is closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, on a new connection and between the
    /// requests of a kept-alive one (so it is the idle timeout too).
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// How long requests in flight get to finish once a stop is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses to serve admin calls to the network without a token: every listener must be on
/// loopback unless an admin token is set, or `--insecure-no-auth` says so explicitly.
pub fn check_exposure(
    addrs: &[SocketAddr],
    admin: &AdminToken,
    insecure_no_auth: bool,
) -> anyhow::Result<()> {
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if exposed.is_empty() || admin.is_set() {
        return Ok(());
    }
    if insecure_no_auth {
        tracing::warn!(
            addresses = %exposed.join(", "),
            "--insecure-no-auth: admin calls are open to anyone who reaches these addresses"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {} without an admin token: set --admin-token (or \
         RIDESHARE_ADMIN_TOKEN), listen on loopback, or pass --insecure-no-auth to serve admin \
         calls unauthenticated",
        exposed.join(", ")
    )
}

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

/// Serves `router` on `listener` until `stop` turns true, then drains requests in flight
/// (bounded by [`DRAIN_TIMEOUT`]).
pub fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let addr = listener.local_addr()?;
        tracing::info!("{name} listening on http://{addr}");
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            let (stream, _peer) = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "{name}: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refuse(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("{name}: requests still in flight after {DRAIN_TIMEOUT:?}, stopping");
        }
        Ok(())
    })
}

/// A connection past the bound: a short 503 if the socket takes it at once, then closed.
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 39\r\n\r\n{\"error\":\"too many connections; retry\"}";
    let _ = stream.try_write(BUSY);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_listeners_need_no_token() {
        let local = [addr("127.0.0.1:8080"), addr("[::1]:8081")];
        assert!(check_exposure(&local, &AdminToken::none(), false).is_ok());
    }

    #[test]
    fn a_public_listener_without_a_token_is_refused_naming_the_flag() {
        let public = [addr("127.0.0.1:8080"), addr("0.0.0.0:8083")];
        let error = check_exposure(&public, &AdminToken::none(), false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--admin-token"), "{error}");
        assert!(error.contains("0.0.0.0:8083"), "{error}");
        assert!(check_exposure(&public, &AdminToken::new("t"), false).is_ok());
        assert!(check_exposure(&public, &AdminToken::none(), true).is_ok());
    }
}
