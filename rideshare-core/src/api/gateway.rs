//! The gateway (load balancer): every path beginning `/api/v1/users` goes to the users service,
//! every other path to the rides service. It adds nothing to the contract: method, path, query,
//! headers and body pass through; only hop-by-hop headers are dropped.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::common::{ApiError, ServiceLimits};
use super::openapi::{gateway_openapi, openapi_route};
use super::upstream::{Upstream, UpstreamError};

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The users service: over HTTP (`Upstream::http`, each call bounded), or in this process.
    pub users: Upstream,
    /// The rides service, likewise.
    pub rides: Upstream,
}

struct GatewayState {
    config: GatewayConfig,
    max_body_bytes: usize,
}

/// The gateway service.
pub fn gateway_router(config: GatewayConfig, limits: ServiceLimits) -> Router {
    let state = Arc::new(GatewayState {
        config,
        max_body_bytes: limits.max_body_bytes,
    });
    // The edge's path rule has made the URI canonical before `proxy` sees it, so the gateway
    // routes on, and forwards, exactly the path it matched.
    let router = Router::new()
        .fallback(proxy)
        .with_state(state)
        .merge(openapi_route(&gateway_openapi()));
    limits.edge(limits.apply(router))
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn forwardable(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Which upstream a path belongs to.
pub fn routes_to_users(path: &str) -> bool {
    path.starts_with("/api/v1/users")
}

async fn proxy(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let upstream = if routes_to_users(parts.uri.path()) {
        &state.config.users
    } else {
        &state.config.rides
    };
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("request body larger than {} bytes", state.max_body_bytes),
            }
            .into_response()
        }
    };
    let answer = upstream
        .send(
            parts.method,
            path_and_query,
            forwardable(&parts.headers),
            body,
        )
        .await;
    match answer {
        Ok(mut response) => {
            let headers = forwardable(response.headers());
            *response.headers_mut() = headers;
            response
        }
        Err(e) => {
            tracing::warn!(?upstream, error = %e, "upstream failed");
            let message = match e {
                UpstreamError::Unreachable(_) => "the upstream service is unreachable",
                UpstreamError::BrokenAnswer(_) => "the upstream service broke off its answer",
            };
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: message.into(),
            }
            .into_response()
        }
    }
}
