//! `rideshare up` end to end, in this process on real sockets (loopback, port 0): the contract
//! through the gateway, the orchestrator's crash and list endpoints, failover, scaling, and data
//! surviving a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rideshare_core::clock::Zone;
use rideshare_svc::cli::{EngineArgs, HttpArgs, RuntimeArgs, RuntimeKind, ScalingArgs, UpArgs};
use rideshare_svc::up::{start, Up};
use serde_json::{json, Value};

const PASSWORD: &str = "3d4f2bf07dc1be38b20cd6e46949a1071f9d0e3d";

fn args(data_dir: &Path, scale_interval: Duration) -> UpArgs {
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
        http: HttpArgs {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            tz: Zone::Local,
        },
        engines: EngineArgs {
            amqp_url: None,
            zk: None,
            zk_session_timeout: Duration::from_secs(4),
            log_stream: "rideshare.log".into(),
        },
        runtime: RuntimeArgs {
            runtime: RuntimeKind::Docker,
            worker_image: "rideshare-worker:latest".into(),
            docker_network: "host".into(),
            cluster: "rideshare".into(),
            worker_program: None,
            worker_data_dir: data_dir.join("workers"),
        },
    }
}

struct Client {
    http: reqwest::Client,
    gateway: String,
    orchestrator: String,
}

impl Client {
    fn new(up: &Up) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            gateway: format!("http://{}", up.gateway),
            orchestrator: format!("http://{}", up.orchestrator),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
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
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(method, format!("{}{path}", self.gateway), body)
            .await
    }

    async fn orch(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        self.send(method, format!("{}{path}", self.orchestrator), None)
            .await
    }

    async fn add_user(&self, name: &str) -> StatusCode {
        self.api(
            reqwest::Method::PUT,
            "/api/v1/users",
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await
        .0
    }

    async fn users(&self) -> Vec<String> {
        let (status, body) = self.api(reqwest::Method::GET, "/api/v1/users", None).await;
        if status == StatusCode::NO_CONTENT {
            return vec![];
        }
        assert_eq!(status, StatusCode::OK);
        serde_json::from_value(body).unwrap()
    }

    async fn pids(&self) -> Vec<u64> {
        let (status, body) = self.orch(reqwest::Method::GET, "/api/v1/worker/list").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_value(body).unwrap()
    }

    /// Polls the worker list until `check` holds, at most `bound`; returns the last list.
    async fn wait_for_pids(&self, bound: Duration, check: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        let started = Instant::now();
        loop {
            let pids = self.pids().await;
            if check(&pids) || started.elapsed() > bound {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_system_serves_the_contract_survives_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(args(dir.path(), Duration::from_secs(120)))
        .await
        .unwrap();
    let c = Client::new(&up);
    use reqwest::Method;

    let pids = c
        .wait_for_pids(Duration::from_secs(5), |p| p.len() == 2)
        .await;
    assert_eq!(pids.len(), 2, "one master and one slave at start: {pids:?}");

    // The contract through the gateway.
    assert_eq!(c.add_user("asha").await, StatusCode::CREATED);
    assert_eq!(c.add_user("asha").await, StatusCode::BAD_REQUEST);
    assert_eq!(c.add_user("ravi").await, StatusCode::CREATED);
    assert_eq!(c.users().await, ["asha", "ravi"]);
    let ride = json!({"created_by": "asha", "timestamp": "01-09-2099:05-10-17", "source": "1", "destination": 2});
    assert_eq!(
        c.api(Method::POST, "/api/v1/rides", Some(ride)).await.0,
        StatusCode::CREATED
    );
    let (status, rides) = c
        .api(Method::GET, "/api/v1/rides?source=1&destination=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ride_id = rides[0]["rideId"].as_u64().unwrap();
    let join = json!({"username": "ravi"});
    assert_eq!(
        c.api(
            Method::POST,
            &format!("/api/v1/rides/{ride_id}"),
            Some(join.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        c.api(
            Method::POST,
            &format!("/api/v1/rides/{ride_id}"),
            Some(join)
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (status, detail) = c
        .api(Method::GET, &format!("/api/v1/rides/{ride_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["users"], json!(["ravi"]));
    assert_eq!(
        c.api(Method::GET, "/api/v1/rides/count", None).await.1,
        json!([1])
    );
    assert_eq!(
        c.api(Method::GET, "/api/v1/rides/999", None).await.0,
        StatusCode::NO_CONTENT
    );

    // crash/slave kills the highest pid; a new slave is listed within 2 s.
    let before = c.pids().await;
    let (status, killed) = c.orch(Method::POST, "/api/v1/crash/slave").await;
    assert_eq!(status, StatusCode::OK);
    let killed = killed[0].as_u64().unwrap();
    assert_eq!(killed, *before.iter().max().unwrap());
    let after = c
        .wait_for_pids(Duration::from_secs(2), |p| {
            p.len() == 2 && !p.contains(&killed)
        })
        .await;
    assert!(
        after.len() == 2 && !after.contains(&killed),
        "no replacement slave within 2 s: {after:?}"
    );

    // crash/master: the lowest-pid slave takes over; writes succeed again within 2 s.
    let (status, master) = c.orch(Method::POST, "/api/v1/crash/master").await;
    assert_eq!(status, StatusCode::OK);
    let master = master[0].as_u64().unwrap();
    let crashed = Instant::now();
    let mut written = false;
    while crashed.elapsed() < Duration::from_secs(2) {
        if c.add_user("after-crash").await == StatusCode::CREATED {
            written = true;
            break;
        }
    }
    assert!(
        written,
        "no write succeeded within 2 s of crashing the master"
    );
    println!(
        "failover: first write acknowledged {} ms after crash/master",
        crashed.elapsed().as_millis()
    );
    let after = c
        .wait_for_pids(Duration::from_secs(2), |p| {
            p.len() == 2 && !p.contains(&master)
        })
        .await;
    assert!(!after.contains(&master) && after.len() == 2, "{after:?}");
    assert_eq!(
        c.users().await,
        ["asha", "ravi", "after-crash"],
        "every acknowledged write is still there"
    );
    assert_eq!(
        c.api(Method::GET, "/api/v1/rides/count", None).await.1,
        json!([1])
    );

    // Data survives a restart.
    up.stop().await.unwrap();
    let up = start(args(dir.path(), Duration::from_secs(120)))
        .await
        .unwrap();
    let c = Client::new(&up);
    assert_eq!(c.users().await, ["asha", "ravi", "after-crash"]);
    let (_, detail) = c
        .api(Method::GET, &format!("/api/v1/rides/{ride_id}"), None)
        .await;
    assert_eq!(detail["users"], json!(["ravi"]));
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_load_scales_slaves_and_an_idle_window_scales_back() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(5);
    let up = start(args(dir.path(), window)).await.unwrap();
    let c = Client::new(&up);
    c.wait_for_pids(Duration::from_secs(5), |p| p.len() == 2)
        .await;
    // 45 list-rides requests in one window: 45 reads → ceil(45 / 20) = 3 slaves.
    let started = Instant::now();
    for _ in 0..45 {
        let (status, _) = c
            .api(
                reqwest::Method::GET,
                "/api/v1/rides?source=1&destination=2",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert!(
        started.elapsed() < window,
        "the reads did not fit in one window"
    );
    let pids = c.wait_for_pids(window * 2, |p| p.len() == 4).await;
    assert_eq!(
        pids.len(),
        4,
        "45 reads should give 1 master + 3 slaves: {pids:?}"
    );
    // A window with no reads: back to 1 slave, and nobody respawns the stopped ones.
    let pids = c.wait_for_pids(window * 2, |p| p.len() == 2).await;
    assert_eq!(
        pids.len(),
        2,
        "an idle window should give 1 master + 1 slave: {pids:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.pids().await,
        pids,
        "scaling in must not look like a crash"
    );
    up.stop().await.unwrap();
}
