//! How one service calls another: over HTTP with a pooled keep-alive client, or, when both run
//! in one process (`rideshare up`), by calling the other's router directly.
//!
//! Either way the request goes through every layer of the called service (its edge, limits,
//! counters, request id, metrics) and gets the same answer; only the socket, the HTTP framing
//! and the copies they cost are skipped. The gateway and the rides service name each other (the
//! gateway forwards to rides, rides checks users through the gateway), so an in-process upstream
//! is a slot filled once the router it names is built.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri};
use axum::Router;
use tower::ServiceExt as _;

/// A router in this process, set once it exists.
#[derive(Clone, Default)]
pub struct LocalRouter(Arc<OnceLock<Router>>);

impl LocalRouter {
    /// A slot to fill later with [`LocalRouter::set`].
    pub fn empty() -> Self {
        Self::default()
    }

    /// Fills the slot; a second call changes nothing.
    pub fn set(&self, router: Router) {
        let _ = self.0.set(router);
    }
}

impl From<Router> for LocalRouter {
    fn from(router: Router) -> Self {
        let slot = LocalRouter::empty();
        slot.set(router);
        slot
    }
}

/// Where another service is, and how to reach it.
#[derive(Clone)]
pub enum Upstream {
    /// Over HTTP at a base URL like `http://127.0.0.1:8081`.
    Http {
        base: String,
        client: reqwest::Client,
    },
    /// In this process.
    Local(LocalRouter),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Http { base, .. } => write!(f, "Upstream::Http({base})"),
            Upstream::Local(_) => f.write_str("Upstream::Local"),
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("broke off its answer: {0}")]
    BrokenAnswer(String),
}

impl Upstream {
    /// Over HTTP at `base`, each call bounded by `timeout`; redirects are handed back, not
    /// followed.
    pub fn http(base: impl Into<String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Upstream::Http {
            base: base.into().trim_end_matches('/').to_owned(),
            client,
        }
    }

    /// Sends one request and answers with the upstream's response (over HTTP, its body read
    /// whole within the client's timeout).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        match self {
            Upstream::Http { base, client } => {
                let url = format!("{base}{path_and_query}");
                let answer = client
                    .request(method, &url)
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
                let status = answer.status();
                let headers = answer.headers().clone();
                let bytes = answer
                    .bytes()
                    .await
                    .map_err(|e| UpstreamError::BrokenAnswer(e.to_string()))?;
                let mut response = Response::new(Body::from(bytes));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                Ok(response)
            }
            Upstream::Local(LocalRouter(slot)) => {
                let router = slot
                    .get()
                    .cloned()
                    .ok_or_else(|| UpstreamError::Unreachable("not started yet".into()))?;
                let uri: Uri = path_and_query
                    .parse()
                    .map_err(|e| UpstreamError::Unreachable(format!("bad path: {e}")))?;
                let mut request = Request::new(Body::from(body));
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                match router.oneshot(request).await {
                    Ok(response) => Ok(response),
                    Err(never) => match never {},
                }
            }
        }
    }

    /// `GET path` with extra headers: the status and the whole body, at most `max_body` bytes.
    pub async fn get(
        &self,
        path: &str,
        headers: &[(HeaderName, &str)],
        max_body: usize,
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let value = value
                .parse()
                .map_err(|e| UpstreamError::Unreachable(format!("bad header value: {e}")))?;
            map.insert(name.clone(), value);
        }
        if let Some(id) = super::observe::current_request_id().and_then(|id| id.parse().ok()) {
            map.insert(super::observe::REQUEST_ID_HEADER, id);
        }
        let response = self.send(Method::GET, path, map, Bytes::new()).await?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), max_body)
            .await
            .map_err(|e| UpstreamError::BrokenAnswer(e.to_string()))?;
        Ok((status, body))
    }
}
