//! Each HTTP role's metrics, readiness and request ids, wired the same way in `rideshare up`
//! and in the separate processes: the role's router goes in, the observed router comes out.

use std::sync::Arc;

use axum::Router;
use rideshare_core::api::common::health_route;
use rideshare_core::api::gateway::routes_to_users;
use rideshare_core::api::observe::{observe, Observed, Probe, UpstreamProbe};
use rideshare_dbaas::orchestrator::status::OrchestratorProbe;
use rideshare_dbaas::orchestrator::Orchestrator;

use crate::roles::HOP_TIMEOUT;

/// Bound on one readiness probe of an upstream: shorter than a hop, a probe is a `/health`.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn probe(upstreams: &[(&str, &str)]) -> Arc<UpstreamProbe> {
    let upstreams = upstreams
        .iter()
        .map(|(name, url)| ((*name).to_owned(), (*url).to_owned()))
        .collect();
    Arc::new(UpstreamProbe::new(
        upstreams,
        PROBE_TIMEOUT.min(HOP_TIMEOUT),
    ))
}

/// The gateway: ready when users and rides answer. It also answers `/health` itself (every
/// other path is proxied); requests are labelled by the upstream they go to.
pub fn gateway(router: Router, users_url: &str, rides_url: &str) -> Router {
    let observed = Observed {
        unmatched_route: |path| {
            if routes_to_users(path) {
                "/api/v1/users*"
            } else {
                "/* (rides)"
            }
        },
        ..Observed::new(
            "gateway",
            probe(&[("users", users_url), ("rides", rides_url)]),
        )
    };
    observe(router.merge(health_route()), observed)
}

/// The users or the rides service: ready when the orchestrator answers.
pub fn service(name: &'static str, router: Router, orchestrator_url: &str) -> Router {
    observe(
        router,
        Observed::new(name, probe(&[("orchestrator", orchestrator_url)])),
    )
}

/// The orchestrator: ready when the cluster has a ready master and a caught-up slave; its
/// `/metrics` adds the workers' figures read from the coordinator.
pub fn orchestrator(router: Router, orchestrator: Arc<Orchestrator>) -> Router {
    observe(
        router,
        Observed::new("orchestrator", Arc::new(OrchestratorProbe(orchestrator))),
    )
}

/// A worker: ready once it has caught up with the log and serves. Its `/metrics` holds its own
/// figures (applied index, epoch, caught up, master).
pub fn worker(ready: Arc<std::sync::atomic::AtomicBool>) -> Router {
    observe(
        health_route(),
        Observed::new("worker", Arc::new(WorkerProbe(ready))),
    )
}

struct WorkerProbe(Arc<std::sync::atomic::AtomicBool>);

#[async_trait::async_trait]
impl Probe for WorkerProbe {
    async fn ready(&self) -> Result<(), String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("catching up with the log".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_worker_is_ready_only_once_caught_up_and_serves_its_metrics() {
        let ready = Arc::new(AtomicBool::new(false));
        let router = worker(Arc::clone(&ready));
        assert_eq!(get(&router, "/health").await.0, StatusCode::OK);
        let (status, body) = get(&router, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("catching up"), "{body}");
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(&router, "/ready").await.0, StatusCode::OK);
        metrics::gauge!("rideshare_worker_applied_index", "worker" => "w-test").set(7.0);
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("rideshare_worker_applied_index{worker=\"w-test\"} 7"),
            "{body}"
        );
    }
}
