//! What every service shares: error bodies, JSON body parsing, limits, the request counter.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, MethodRouter, Route};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::{Layer, ServiceBuilder};
use tower_http::body::Limited;
use tower_http::limit::{RequestBodyLimitLayer, ResponseBody as LimitedResponseBody};
use tower_http::timeout::TimeoutLayer;

use super::admin::{require_admin, AdminToken};
use super::path::guard_path;
use crate::db::{Db, DbError};
use crate::error::ValidationError;
use crate::ops::{ReadOutcome, RideList, WriteOp, WriteOutcome};

/// Bounds and access rules every service applies at its edge.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// A request that takes longer gets 504.
    pub request_timeout: Duration,
    /// Requests handled at once by one service; past it the answer is 503 at once.
    pub max_in_flight: usize,
    /// The token admin calls need (none: admin calls are open).
    pub admin: AdminToken,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            admin: AdminToken::none(),
        }
    }
}

impl ServiceLimits {
    /// Adds the body limit and the timeout to a router.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(self.layers())
    }

    /// The body limit and the timeout (and the JSON error bodies and the matched route that
    /// go with them), as one stack, outermost first.
    ///
    /// One stack because `Router::layer` boxes each layer it is given and clones the box on
    /// every request: five calls of it cost five boxed services and five boxed futures per
    /// request, where one stack costs one (docs/benchmarks.md, twentieth session).
    /// `Router::layer` would also turn each layer's request and response into axum's `Body`;
    /// the two `map_*` steps do that where a layer changes the body type.
    fn layers(
        &self,
    ) -> impl Layer<
        Route,
        Service: tower::Service<
            Request,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
                     + Send
                     + Sync
                     + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        ServiceBuilder::new()
            .layer(axum::middleware::from_fn(expose_matched_path))
            .layer(axum::middleware::map_response(json_error_body))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                self.request_timeout,
            ))
            .map_response(|response: Response<LimitedResponseBody<Body>>| response.into_response())
            .layer(RequestBodyLimitLayer::new(self.max_body_bytes))
            .map_request(|request: axum::http::Request<Limited<Body>>| request.map(Body::new))
            // The body limit is `RequestBodyLimitLayer`'s alone (announced lengths and streamed
            // bodies both, and axum's extractors answer 413 when its limited body stops them):
            // axum's own default limit for extractors (2 MiB) is switched off, so it is neither a
            // second copy of the rule nor a cap under a larger `max_body_bytes`.
            .layer(axum::extract::DefaultBodyLimit::disable())
    }

    /// Makes `route` an admin route: 401 without the admin token, when one is set.
    pub fn admin_only<S: Clone + Send + Sync + 'static>(
        &self,
        route: MethodRouter<S>,
    ) -> MethodRouter<S> {
        route.route_layer(axum::middleware::from_fn_with_state(
            self.admin.clone(),
            require_admin,
        ))
    }

    /// Makes every route of `router` an admin route.
    pub fn admin_routes<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.route_layer(axum::middleware::from_fn_with_state(
            self.admin.clone(),
            require_admin,
        ))
    }

    /// The outermost layers of a whole service, in the order a request meets them: a bound on
    /// requests in flight (503 at once past it, never a queue), then the path rule (400 before
    /// any route is chosen), then routing on the canonical path.
    pub fn edge(&self, service: Router) -> Router {
        let edge = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                overloaded()
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(self.max_in_flight.max(1)))
            .layer(axum::middleware::from_fn(guard_path))
            .service(service);
        Router::new().fallback_service(edge)
    }
}

/// Copies the route template a request matched into its response, so layers outside the edge
/// (which routes on the canonical path, after them) can label the request by its route.
async fn expose_matched_path(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// 503 with `Retry-After`: the service is at its bound of requests in flight.
pub fn overloaded() -> Response {
    let mut response = ApiError::unavailable("overloaded; try again shortly").into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// Gives every error answer a JSON body: the 405s, 413s and 504s made by the framework and its
/// layers come with an empty or plain-text body otherwise, and the contract says all bodies
/// are JSON.
async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<DbError> for ApiError {
    /// The details (addresses, queue names) go to the log, never to the client.
    fn from(e: DbError) -> Self {
        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "database call failed");
        match e {
            DbError::Timeout(_) => ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: "the database did not answer in time".into(),
            },
            _ => ApiError::unavailable("the database is unavailable; try again shortly"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// 200 with the list, or 204 with no body when it is empty.
pub fn list_or_no_content<T: serde::Serialize>(items: Vec<T>) -> Response {
    if items.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Json(items).into_response()
    }
}

/// An upcoming-rides listing: 204 when there is none, else its JSON text as the store's replica
/// encoded it, passed on without decoding it again.
pub fn ride_list_or_no_content(rides: RideList) -> Response {
    if rides.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            String::from(rides.into_json()),
        )
            .into_response()
    }
}

/// A read answered with a result of another kind: a broken database, not the client's fault.
pub fn unexpected_read(outcome: ReadOutcome) -> ApiError {
    ApiError::unavailable(format!("unexpected read result {outcome:?}"))
}

/// `db/clear`: 200, or 400 when the database cannot be cleared (the contract's status).
pub async fn clear_with<D: Db>(db: &D, op: WriteOp) -> Result<Response, ApiError> {
    match db.write(op).await {
        Ok(WriteOutcome::Done) => Ok(empty(StatusCode::OK)),
        Ok(other) => Err(ApiError::bad_request(format!("could not clear: {other:?}"))),
        Err(e) => {
            tracing::warn!(error = %e, "db/clear failed");
            Err(ApiError::bad_request("could not clear the database"))
        }
    }
}

/// `{}` with a status: the contract's empty success body.
pub fn empty(status: StatusCode) -> Response {
    (status, Json(json!({}))).into_response()
}

/// Parses a request body as a JSON object. Unknown fields are kept and ignored by callers.
pub fn json_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

/// A required string field of a JSON object.
pub fn string_field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!(
            "field {name:?} must be a string"
        ))),
        None => Err(ApiError::bad_request(format!("field {name:?} is missing"))),
    }
}

/// A required field of any type.
pub fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ApiError> {
    body.get(name)
        .ok_or_else(|| ApiError::bad_request(format!("field {name:?} is missing")))
}

/// The per-instance count of requests on a service's own API paths.
#[derive(Debug, Default)]
pub struct RequestCounter(AtomicU64);

impl RequestCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Middleware counting every request that reached a counted route (405s included).
pub async fn count_request(
    State(counter): State<Arc<RequestCounter>>,
    request: Request,
    next: Next,
) -> Response {
    counter.bump();
    next.run(request).await
}

/// Wraps the service's own API routes so each request to them is counted, and adds the
/// uncounted `_count` routes (`DELETE` an admin call), all with the limits applied.
///
/// The limits go inside the counter: a request refused for its size (413) was still received on
/// a counted path, and must count the same whether or not it announced its length. The caller
/// applies the limits to its other, uncounted routes itself (not on top of this router, where
/// the body limit would refuse announced bodies before they are counted).
pub fn with_counter<S: Clone + Send + Sync + 'static>(
    counted: Router<S>,
    counter: Arc<RequestCounter>,
    limits: &ServiceLimits,
) -> Router<S> {
    let count_routes = Router::new()
        .route(
            "/api/v1/_count",
            get(count).merge(limits.admin_only(delete(reset_count))),
        )
        .with_state(Arc::clone(&counter));
    // The counter outside the limits, in the same stack (see `ServiceLimits::layers`). A
    // route layer is enough: `counted` has no fallback of its own.
    counted
        .route_layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(counter, count_request))
                .layer(limits.layers()),
        )
        .merge(limits.apply(count_routes))
}

/// `GET /api/v1/_count`: `[n]`, the requests this instance received on its own API paths.
#[utoipa::path(get, path = "/api/v1/_count", tag = "counters",
    responses((status = 200, description = "[n]", body = [u64])))]
pub(crate) async fn count(State(counter): State<Arc<RequestCounter>>) -> Json<[u64; 1]> {
    Json([counter.get()])
}

/// `DELETE /api/v1/_count`: resets the count to 0 (an admin call).
#[utoipa::path(delete, path = "/api/v1/_count", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Reset to 0", body = super::openapi::Empty)))]
pub(crate) async fn reset_count(State(counter): State<Arc<RequestCounter>>) -> Response {
    counter.reset();
    empty(StatusCode::OK)
}

/// Unknown paths: 404 with a JSON body.
pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such path".into(),
    }
}

/// `GET /health`: liveness, not counted.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = super::openapi::Health)))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The `/health` route.
pub fn health_route<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/health", get(health))
}
