//! What lets an operator see a running role: Prometheus metrics at `GET /metrics`, readiness at
//! `GET /ready`, and a request id (`x-request-id`) that follows one request through every hop
//! and stands in every log line written while serving it.
//!
//! [`observe`] wraps a finished service router with all three. It must not change what the
//! service answers on its own paths: it only adds routes, headers and measurements.
//!
//! Metrics go to the process-wide `metrics` recorder ([`metrics_handle`] installs a Prometheus
//! one). In `rideshare up` every role shares one process and so one registry; the `service`
//! label tells them apart.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

/// The request id header, generated where a request arrives without one and passed on by
/// every hop.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Upper bounds of the HTTP latency histogram buckets, in seconds.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How long a readiness answer is reused: `/ready` probes upstreams, and a flood of `/ready`
/// calls must not become a flood of probes.
pub const READY_CACHE: Duration = Duration::from_secs(1);

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The process's Prometheus registry, installed as the global `metrics` recorder on first use.
///
/// If another recorder was installed first (a test harness, an embedding program), metrics go
/// there and this handle renders only what it was given: an empty page, never a failure.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS_S)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only this role's scrape-time figures");
        }
        describe_http_metrics();
        handle
    })
}

fn describe_http_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "rideshare_http_requests_total",
        "HTTP requests answered, by service, method, route template and status."
    );
    describe_histogram!(
        "rideshare_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by service, method and route template."
    );
    describe_gauge!(
        "rideshare_http_requests_in_flight",
        "HTTP requests being served now, by service."
    );
    describe_gauge!(
        "rideshare_password_hashes_in_flight",
        "Password digests being hashed (argon2id) or waiting for a blocking thread to do it."
    );
    describe_counter!(
        "rideshare_http_rejected_total",
        "HTTP requests answered 503 (the database or an upstream unavailable), by service and route."
    );
}

/// The id of the request being served by the current task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// Adds the current request's id to an outgoing call, so the next hop logs under the same id.
pub fn propagate(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current_request_id() {
        Some(id) => builder.header(REQUEST_ID_HEADER, id),
        None => builder,
    }
}

/// Runs `work` as part of the request `id`: [`current_request_id`] answers it inside.
pub async fn with_request_id<F: std::future::Future>(id: String, work: F) -> F::Output {
    CURRENT_REQUEST_ID.scope(id, work).await
}

/// What a role says about itself beyond the registry: whether it can serve, and figures only
/// known at scrape time.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when the role can serve; otherwise why not, in a sentence.
    async fn ready(&self) -> Result<(), String>;

    /// Extra Prometheus text appended to `/metrics` (already formatted, may be empty).
    async fn scrape(&self) -> String {
        String::new()
    }
}

/// Ready when every named upstream answers its `/health` with a success. Answers are reused for
/// [`READY_CACHE`], and concurrent checks wait for one probe instead of each sending their own.
pub struct UpstreamProbe {
    upstreams: Vec<(String, String)>,
    http: reqwest::Client,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl UpstreamProbe {
    /// `upstreams`: (name, base URL) pairs, e.g. `("orchestrator", "http://127.0.0.1:8083")`.
    pub fn new(upstreams: Vec<(String, String)>, timeout: Duration) -> Self {
        UpstreamProbe {
            upstreams,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn probe(&self) -> Result<(), String> {
        for (name, base) in &self.upstreams {
            let url = format!("{}/health", base.trim_end_matches('/'));
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(format!("{name} at {base} answered {}", r.status())),
                Err(e) => return Err(format!("{name} at {base} unreachable: {e}")),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Probe for UpstreamProbe {
    async fn ready(&self) -> Result<(), String> {
        // Held across the probe on purpose: callers arriving meanwhile get its answer.
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < READY_CACHE {
                return answer.clone();
            }
        }
        let answer = self.probe().await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// How one role is observed.
#[derive(Clone)]
pub struct Observed {
    /// The `service` label and span field: `gateway`, `users`, `rides`, `orchestrator`.
    pub service: &'static str,
    pub probe: Arc<dyn Probe>,
    /// The `route` label of a request no route template matched (the gateway's proxy, 404s):
    /// a small fixed set, never the raw path, so the number of series stays bounded.
    pub unmatched_route: fn(&str) -> &'static str,
}

impl Observed {
    pub fn new(service: &'static str, probe: Arc<dyn Probe>) -> Self {
        Observed {
            service,
            probe,
            unmatched_route: |_| "unmatched",
        }
    }
}

/// Adds `/metrics` and `/ready` to `router`, measures every request, and gives each one a
/// request id (the caller's `x-request-id`, or a new UUID) that is echoed in the answer and
/// carried by the span every log line of the request is written in.
pub fn observe(router: Router, observed: Observed) -> Router {
    // Installed now, so that what happens before the first scrape is counted.
    metrics_handle();
    let routes = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/ready", get(ready))
        .with_state(Arc::clone(&observed.probe));
    // One stack, outermost first: one boxed service per request instead of three (see
    // `ServiceLimits::layers`).
    router.merge(routes).layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
            .layer(axum::middleware::from_fn_with_state(observed, track)),
    )
}

async fn render_metrics(State(probe): State<Arc<dyn Probe>>) -> Response {
    let handle = metrics_handle();
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&probe.scrape().await);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn ready(State(probe): State<Arc<dyn Probe>>) -> Response {
    match probe.ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// Counts one piece of work in a gauge while it lasts: raised now, lowered when dropped, so the
/// gauge stays right even when the work is abandoned half way (the client went away).
pub struct InFlight(metrics::Gauge);

impl InFlight {
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

async fn track(State(observed): State<Observed>, request: Request, next: Next) -> Response {
    let service = observed.service;
    // The route template is known only once routed: the edge routes on the canonical path
    // inside this layer and hands the template back on the response.
    let early_route = request.extensions().get::<MatchedPath>().cloned();
    let unmatched = (observed.unmatched_route)(request.uri().path());
    let method = request.method().as_str().to_owned();
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        service,
        %method,
        route = tracing::field::Empty
    );
    let _in_flight = InFlight::new(metrics::gauge!(
        "rideshare_http_requests_in_flight",
        "service" => service
    ));
    let started = Instant::now();
    let response = with_request_id(id, next.run(request))
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let status = response.status();
    let route: String = match response
        .extensions()
        .get::<MatchedPath>()
        .or(early_route.as_ref())
    {
        Some(matched) => matched.as_str().to_owned(),
        None => unmatched.to_owned(),
    };
    span.record("route", route.as_str());
    metrics::counter!(
        "rideshare_http_requests_total",
        "service" => service,
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(
        "rideshare_http_request_duration_seconds",
        "service" => service,
        "method" => method,
        "route" => route.clone(),
    )
    .record(elapsed.as_secs_f64());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        metrics::counter!(
            "rideshare_http_rejected_total",
            "service" => service,
            "route" => route,
        )
        .increment(1);
    }
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "request finished"
        )
    });
    response
}

/// Prometheus text for one gauge family computed at scrape time.
///
/// `samples`: label pairs and value of each series. Label values are escaped as the text
/// format requires.
pub fn gauge_family(name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{key}=\"{escaped}\"");
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_time_gauges_escape_label_values() {
        let text = gauge_family(
            "rideshare_x",
            "An example.",
            &[(vec![("worker", "a\"b\\c".to_owned())], 2.0)],
        );
        assert_eq!(
            text,
            "# HELP rideshare_x An example.\n# TYPE rideshare_x gauge\nrideshare_x{worker=\"a\\\"b\\\\c\"} 2\n"
        );
    }

    struct Flaky(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl Probe for Flaky {
        async fn ready(&self) -> Result<(), String> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                Err("first call".into())
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn ready_answers_503_with_a_json_reason_then_200() {
        use tower::ServiceExt;
        let probe = Arc::new(Flaky(Default::default()));
        let app = observe(Router::new(), Observed::new("test", probe));
        let get = || {
            Request::builder()
                .uri("/ready")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let first = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(first.headers().contains_key(&REQUEST_ID_HEADER));
        let body = axum::body::to_bytes(first.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["reason"], "first call");
        let second = app.oneshot(get()).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_callers_request_id_is_kept_and_visible_to_the_handler() {
        use tower::ServiceExt;
        let app = observe(
            Router::new().route(
                "/echo",
                get(|| async { current_request_id().unwrap_or_default() }),
            ),
            Observed::new("test", Arc::new(Flaky(Default::default()))),
        );
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/echo")
                    .header("x-request-id", "abc-123")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()[&REQUEST_ID_HEADER], "abc-123");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"abc-123");
    }
}
