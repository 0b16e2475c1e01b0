//! Each HTTP role's metrics, readiness and request ids, wired the same way in `rideshare up`
//! and in the separate processes: the role's router goes in, the observed router comes out.

use std::sync::Arc;

use axum::Router;
use rideshare_core::api::common::health_route;
use rideshare_core::api::gateway::routes_to_users;
use rideshare_core::api::observe::{observe, Observed, UpstreamProbe};
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
