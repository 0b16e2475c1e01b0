//! What the API tests share: a whole RideShare (users, rides and gateway on real loopback
//! sockets, one in-memory database, a fixed clock) and small helpers to call a router.
//!
//! Routers are cheap to clone and a clone shares its state (database, request counter), so a
//! test can drive a service with `oneshot` while the same service also answers on a socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, GatewayConfig, PasswordHashing, RidesConfig,
    ServiceLimits, Upstream,
};
use rideshare_core::clock::FixedClock;
use rideshare_core::db::{Db, DbError, LocalDb};
use rideshare_core::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};
use rideshare_core::store::MemStore;
use rideshare_core::Timestamp;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A valid password: the SHA-1 hex digest of "password".
pub const PASSWORD: &str = "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8";

/// The fixed "now" of every test app: 12:00:00 on 15 June 2030.
pub const NOW: &str = "15-06-2030:00-00-12";
/// A day after [`NOW`]: upcoming.
pub const TOMORROW: &str = "16-06-2030:00-00-12";
/// A day before [`NOW`]: past.
pub const YESTERDAY: &str = "14-06-2030:00-00-12";

pub fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap_or_else(|e| panic!("test timestamp {text:?}: {e}"))
}

/// A status and a body as received.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, expected: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            expected,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
        );
        self
    }
}

/// A JSON request body.
pub fn json_body(value: &Value) -> Body {
    Body::from(serde_json::to_vec(value).expect("serialisable"))
}

/// Sends one request to a router without a socket.
pub async fn call(router: &Router, method: Method, uri: &str, body: Body) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|e| panic!("bad test request {uri:?}: {e}"));
    send(router, request).await
}

/// Sends a prepared request to a router without a socket.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("routers are infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply { status, body }
}

/// Sends `size` bytes to `path`, with or without a `content-length`.
pub async fn big_request(
    router: &Router,
    method: Method,
    path: &str,
    size: usize,
    announced: bool,
) -> StatusCode {
    let mut body = vec![b' '; size];
    body[0] = b'{';
    let builder = Request::builder().method(method).uri(path);
    let request = if announced {
        builder
            .header(header::CONTENT_LENGTH, size)
            .body(Body::from(body))
    } else {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(256 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        builder.body(Body::from_stream(futures::stream::iter(chunks)))
    }
    .unwrap();
    send(router, request).await.status
}

pub async fn get(router: &Router, uri: &str) -> Reply {
    call(router, Method::GET, uri, Body::empty()).await
}

pub async fn delete(router: &Router, uri: &str) -> Reply {
    call(router, Method::DELETE, uri, Body::empty()).await
}

pub async fn post(router: &Router, uri: &str, body: &Value) -> Reply {
    call(router, Method::POST, uri, json_body(body)).await
}

pub async fn put(router: &Router, uri: &str, body: &Value) -> Reply {
    call(router, Method::PUT, uri, json_body(body)).await
}

/// Binds a loopback listener on a free port.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Serves a router on a listener in a background task of the test's runtime (it ends with
/// the runtime, i.e. with the test).
pub fn serve_on(listener: TcpListener, router: Router) {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("test server failed");
    });
}

/// Serves a router on a fresh loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let (listener, addr) = listener().await;
    serve_on(listener, router);
    addr
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let (listener, addr) = listener().await;
    drop(listener);
    addr
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A client for real sockets: loopback only, never through a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

pub fn gateway_config(users_url: String, rides_url: String) -> GatewayConfig {
    GatewayConfig {
        users: Upstream::http(users_url, Duration::from_secs(10)),
        rides: Upstream::http(rides_url, Duration::from_secs(10)),
    }
}

pub fn rides_config(gateway_url: String, origin: String) -> RidesConfig {
    RidesConfig {
        gateway: Upstream::http(gateway_url, Duration::from_secs(10)),
        origin,
    }
}

/// A whole RideShare on loopback sockets sharing one database:
/// users ← gateway → rides, and rides → gateway → users for its user checks.
pub struct TestApp {
    /// The users service (also served at `users_addr`).
    pub users: Router,
    /// The rides service (also served at `rides_addr`); its user checks go through the gateway.
    pub rides: Router,
    /// The gateway (also served at `gateway_addr`).
    pub gateway: Router,
    pub users_addr: SocketAddr,
    pub rides_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    /// The rides service's clock, at [`NOW`] unless a test moves it.
    pub clock: Arc<FixedClock>,
    pub http: reqwest::Client,
}

impl TestApp {
    /// Spawns the app on a fresh in-memory database.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_on(LocalDb::new(MemStore::new())).await
    }

    /// Spawns the app on a given database.
    pub async fn spawn_on<D: Db + Clone>(db: D) -> TestApp {
        let limits = ServiceLimits::default();
        let (users_listener, users_addr) = listener().await;
        let (rides_listener, rides_addr) = listener().await;
        let (gateway_listener, gateway_addr) = listener().await;
        let clock = Arc::new(FixedClock::new(ts(NOW)));
        let config = rides_config(url(gateway_addr), url(rides_addr));

        let users = users_router(
            db.clone(),
            PasswordHashing::fast_for_tests(),
            limits.clone(),
        );
        let rides = rides_router(db, clock.clone(), config, limits.clone());
        let gateway = gateway_router(gateway_config(url(users_addr), url(rides_addr)), limits);
        serve_on(users_listener, users.clone());
        serve_on(rides_listener, rides.clone());
        serve_on(gateway_listener, gateway.clone());
        TestApp {
            users,
            rides,
            gateway,
            users_addr,
            rides_addr,
            gateway_addr,
            clock,
            http: http_client(),
        }
    }

    /// Adds a user through the users service; returns the status.
    pub async fn add_user(&self, name: &str) -> StatusCode {
        put(
            &self.users,
            "/api/v1/users",
            &json!({"username": name, "password": PASSWORD}),
        )
        .await
        .status
    }

    /// Adds users that must not exist yet.
    pub async fn add_users(&self, names: &[&str]) {
        for name in names {
            assert_eq!(self.add_user(name).await, StatusCode::CREATED, "{name}");
        }
    }

    /// Creates a ride through the rides service; returns the reply.
    pub async fn create_ride(
        &self,
        created_by: &str,
        timestamp: &str,
        source: Value,
        destination: Value,
    ) -> Reply {
        post(
            &self.rides,
            "/api/v1/rides",
            &json!({
                "created_by": created_by,
                "timestamp": timestamp,
                "source": source,
                "destination": destination,
            }),
        )
        .await
    }

    /// Creates a ride that must be accepted.
    pub async fn create_ride_ok(&self, created_by: &str, timestamp: &str, source: u16, dest: u16) {
        self.create_ride(created_by, timestamp, json!(source), json!(dest))
            .await
            .assert_status(StatusCode::CREATED);
    }

    /// The ids of the upcoming rides from `source` to `destination`, in listed order.
    pub async fn upcoming_ids(&self, source: u16, destination: u16) -> Vec<u64> {
        let reply = get(
            &self.rides,
            &format!("/api/v1/rides?source={source}&destination={destination}"),
        )
        .await;
        match reply.status {
            StatusCode::NO_CONTENT => vec![],
            StatusCode::OK => reply
                .json()
                .as_array()
                .expect("a list")
                .iter()
                .map(|r| r["rideId"].as_u64().expect("rideId is an integer"))
                .collect(),
            other => panic!("listing answered {other}"),
        }
    }

    pub async fn join(&self, ride_id: u64, username: &str) -> Reply {
        post(
            &self.rides,
            &format!("/api/v1/rides/{ride_id}"),
            &json!({"username": username}),
        )
        .await
    }

    /// `GET /api/v1/_count` of a service.
    pub async fn count_of(router: &Router) -> u64 {
        let reply = get(router, "/api/v1/_count").await;
        reply.assert_status(StatusCode::OK);
        let body = reply.json();
        let values = body.as_array().expect("[n]");
        assert_eq!(values.len(), 1, "{body}");
        values[0].as_u64().expect("n is an unsigned integer")
    }

    pub async fn reset_count(router: &Router) {
        delete(router, "/api/v1/_count")
            .await
            .assert_status(StatusCode::OK);
    }

    /// `GET /api/v1/users` as a list (empty on 204).
    pub async fn user_list(&self) -> Vec<String> {
        let reply = get(&self.users, "/api/v1/users").await;
        match reply.status {
            StatusCode::NO_CONTENT => vec![],
            StatusCode::OK => serde_json::from_value(reply.json()).expect("a list of names"),
            other => panic!("listing users answered {other}"),
        }
    }

    /// `GET /api/v1/rides/count`.
    pub async fn ride_count(&self) -> u64 {
        let reply = get(&self.rides, "/api/v1/rides/count").await;
        reply.assert_status(StatusCode::OK);
        reply.json()[0].as_u64().expect("[n]")
    }

    /// A request through the gateway's socket.
    pub async fn via_gateway(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", url(self.gateway_addr), path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("gateway reachable");
        let status = response.status();
        let body = response.bytes().await.expect("gateway body");
        Reply { status, body }
    }
}

/// The users service alone, on a fresh in-memory database.
pub fn users_only() -> Router {
    users_router(
        LocalDb::new(MemStore::new()),
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    )
}

/// A database that is down: every call fails.
#[derive(Clone, Copy, Debug)]
pub struct FailingDb;

#[async_trait::async_trait]
impl Db for FailingDb {
    async fn write(&self, _op: WriteOp) -> Result<WriteOutcome, DbError> {
        Err(DbError::Unavailable("the test database is down".into()))
    }
    async fn read(&self, _op: ReadOp) -> Result<ReadOutcome, DbError> {
        Err(DbError::Unavailable("the test database is down".into()))
    }
}

/// A database that records every write it is sent, then applies it to an in-memory store.
#[derive(Clone)]
pub struct RecordingDb {
    inner: LocalDb<MemStore>,
    pub writes: Arc<Mutex<Vec<WriteOp>>>,
}

impl RecordingDb {
    pub fn new() -> Self {
        RecordingDb {
            inner: LocalDb::new(MemStore::new()),
            writes: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Db for RecordingDb {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, DbError> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op.clone());
        self.inner.write(op).await
    }
    async fn read(&self, op: ReadOp) -> Result<ReadOutcome, DbError> {
        self.inner.read(op).await
    }
}
