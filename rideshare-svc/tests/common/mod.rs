//! What the end-to-end tests share: `UpArgs` for a system on ephemeral loopback ports, and a
//! small HTTP client for the gateway and the orchestrator.

// Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rideshare_core::api::AdminToken;
use rideshare_core::clock::Zone;
use rideshare_svc::args::{
    BatchArgs, EngineArgs, GroupCommitArgs, HttpArgs, RuntimeArgs, RuntimeKind, ScalingArgs,
    SnapshotArgs,
};
use rideshare_svc::cli::{HashingArgs, UpArgs};
use rideshare_svc::up::Up;
use serde_json::{json, Value};

pub const PASSWORD: &str = "3d4f2bf07dc1be38b20cd6e46949a1071f9d0e3d";

/// The admin token every end-to-end system runs with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// `Authorization` headers carrying [`ADMIN_TOKEN`].
pub fn admin_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    headers
}

/// `rideshare up` on port 0 everywhere, with the contract's scaling rule over `scale_interval`.
pub fn up_args(
    data_dir: &Path,
    scale_interval: Duration,
    engines: EngineArgs,
    runtime: RuntimeArgs,
) -> UpArgs {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    UpArgs {
        data_dir: data_dir.to_path_buf(),
        gateway: any,
        users: any,
        rides: any,
        orchestrator: any,
        scaling: ScalingArgs {
            scale_interval,
            reads_per_slave: 20,
            max_slaves: 16,
        },
        batching: BatchArgs::default(),
        http: HttpArgs {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            admin_token: Some(AdminToken::new(ADMIN_TOKEN)),
            insecure_no_auth: false,
            tz: Zone::Local,
        },
        hashing: HashingArgs {
            hash_memory_kib: 8,
            hash_iterations: 1,
            hash_threads: 2,
            hash_queue: 64,
        },
        engines,
        runtime,
    }
}

/// `rideshare up` fully embedded (no engine flags), on port 0 everywhere.
pub fn embedded_args(data_dir: &Path, scale_interval: Duration) -> UpArgs {
    up_args(
        data_dir,
        scale_interval,
        EngineArgs {
            amqp_url: None,
            zk: None,
            zk_session_timeout: Duration::from_secs(4),
            log_stream: "rideshare.log".into(),
            log_max_bytes: 1 << 30,
            log_segment_bytes: 64 << 20,
        },
        RuntimeArgs {
            runtime: RuntimeKind::Docker,
            worker_image: "rideshare-worker:latest".into(),
            docker_network: "host".into(),
            worker_amqp_url: None,
            worker_zk: None,
            cluster: "rideshare".into(),
            worker_program: None,
            worker_data_dir: data_dir.join("workers"),
            snapshots: SnapshotArgs {
                snapshot_every: 10_000,
                snapshot_keep: 2,
                snapshot_dir: None,
            },
            group_commit: GroupCommitArgs::default(),
        },
    )
}

/// An embedded `rideshare up` serving, with its master and slave registered, and a client.
pub async fn embedded_up(data_dir: &Path, args: impl FnOnce(&mut UpArgs)) -> (Up, Client) {
    let mut up_args = embedded_args(data_dir, Duration::from_secs(120));
    args(&mut up_args);
    let up = rideshare_svc::up::start(up_args).await.unwrap();
    let client = Client::new(&up);
    let (pids, _) = client
        .wait_for_pids(Duration::from_secs(5), |p| p.len() == 2)
        .await;
    assert_eq!(pids.len(), 2, "one master and one slave at start: {pids:?}");
    (up, client)
}

/// A client that, like an operator, sends the admin token with every call.
pub struct Client {
    http: reqwest::Client,
    gateway: String,
    orchestrator: String,
}

impl Client {
    pub fn new(up: &Up) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(admin_headers())
                .build()
                .unwrap(),
            gateway: format!("http://{}", up.gateway),
            orchestrator: format!("http://{}", up.orchestrator),
        }
    }

    /// One request; the body is `Null` when the answer has none (204).
    pub async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e}): {text}"))
        };
        (status, value)
    }

    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, format!("{}{path}", self.gateway), body)
            .await
    }

    pub async fn orch(&self, method: Method, path: &str) -> (StatusCode, Value) {
        self.call(method, format!("{}{path}", self.orchestrator), None)
            .await
    }

    pub async fn add_user(&self, name: &str) -> StatusCode {
        self.api(
            Method::PUT,
            "/api/v1/users",
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await
        .0
    }

    pub async fn users(&self) -> Vec<String> {
        match self.api(Method::GET, "/api/v1/users", None).await {
            (StatusCode::NO_CONTENT, _) => vec![],
            (StatusCode::OK, body) => serde_json::from_value(body).unwrap(),
            other => panic!("listing users: {other:?}"),
        }
    }

    pub async fn pids(&self) -> Vec<u64> {
        let (status, body) = self.orch(Method::GET, "/api/v1/worker/list").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Polls the worker list until `check` holds, at most `bound`; returns the last list and
    /// how long it took.
    pub async fn wait_for_pids(
        &self,
        bound: Duration,
        check: impl Fn(&[u64]) -> bool,
    ) -> (Vec<u64>, Duration) {
        let started = Instant::now();
        loop {
            let pids = self.pids().await;
            if check(&pids) || started.elapsed() > bound {
                return (pids, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
