//! The gateway (load balancer): every path beginning `/api/v1/users` goes to the users service,
//! every other path to the rides service. It adds nothing to the contract: method, path, query,
//! headers and body pass through; only hop-by-hop headers are dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::common::{ApiError, ServiceLimits};
use super::openapi::{gateway_openapi, openapi_route};

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Base URL of the users service, e.g. `http://127.0.0.1:8081`.
    pub users_url: String,
    /// Base URL of the rides service, e.g. `http://127.0.0.1:8082`.
    pub rides_url: String,
    /// Bound on one upstream call.
    pub upstream_timeout: Duration,
}

struct GatewayState {
    config: GatewayConfig,
    http: reqwest::Client,
    max_body_bytes: usize,
}

/// The gateway service.
pub fn gateway_router(config: GatewayConfig, limits: ServiceLimits) -> Router {
    let http = reqwest::Client::builder()
        .timeout(config.upstream_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let state = Arc::new(GatewayState {
        config,
        http,
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
    let base = if routes_to_users(parts.uri.path()) {
        &state.config.users_url
    } else {
        &state.config.rides_url
    };
    let url = format!("{}{}", base.trim_end_matches('/'), path_and_query);
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
    let upstream = state
        .http
        .request(parts.method, &url)
        .headers(forwardable(&parts.headers))
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(%url, error = %e, "upstream unreachable");
            return ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: "the upstream service is unreachable".into(),
            }
            .into_response();
        }
    };
    let status = upstream.status();
    let headers = forwardable(upstream.headers());
    match upstream.bytes().await {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "upstream broke off its answer");
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: "the upstream service broke off its answer".into(),
            }
            .into_response()
        }
    }
}
