//! The distributed mode end to end on the real engines: RabbitMQ (queues and the log stream),
//! ZooKeeper (membership, election), and workers as Docker containers or OS processes.
//!
//! Each test gets its own RabbitMQ virtual host and ZooKeeper chroot, so nothing is shared with
//! another test or an earlier run. These tests need RabbitMQ at 127.0.0.1:5672, ZooKeeper at
//! `RIDESHARE_ZK` (default 127.0.0.1:2181), the Docker engine and the worker image:
//! `./scripts/test.sh` starts and builds all of them. They fail, loudly, when one is missing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin_headers, up_args, Client, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use rideshare_core::api::AdminToken;
use rideshare_core::db::Db;
use rideshare_core::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};
use rideshare_core::Username;
use rideshare_dbaas::client::OrchestratorDb;
use rideshare_svc::args::{EngineArgs, GroupCommitArgs, RuntimeArgs, RuntimeKind, SnapshotArgs};
use rideshare_svc::cli::UpArgs;
use rideshare_svc::up::start;
use serde_json::json;

/// The tests restart RabbitMQ or load the machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A RabbitMQ virtual host and a ZooKeeper chroot of their own, removed at the end.
struct Namespace {
    name: String,
    amqp: String,
    zk: String,
}

impl Namespace {
    fn new(what: &str) -> Self {
        let name = format!("e2e-{what}-{:08x}", rand::random::<u32>());
        let status = Command::new("rabbitmqctl").args(["-q", "status"]).output();
        assert!(
            matches!(&status, Ok(o) if o.status.success()),
            "RabbitMQ is not running here: run ./scripts/test.sh (or scripts/engines.sh start)"
        );
        run("rabbitmqctl", &["-q", "add_vhost", &name]);
        run(
            "rabbitmqctl",
            &[
                "-q",
                "set_permissions",
                "-p",
                &name,
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        );
        let zk = std::env::var("RIDESHARE_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into());
        assert!(
            std::net::TcpStream::connect_timeout(
                &zk.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse::<SocketAddr>()
                    .expect("RIDESHARE_ZK host:port"),
                Duration::from_secs(2)
            )
            .is_ok(),
            "ZooKeeper is not reachable at {zk}: run ./scripts/test.sh"
        );
        Namespace {
            amqp: format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
            zk: format!("{zk}/{name}"),
            name,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=rideshare.cluster={}", self.name),
            ])
            .output();
        if let Ok(ids) = ids {
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

fn args(ns: &Namespace, data_dir: &Path, runtime: RuntimeKind) -> UpArgs {
    up_args(
        data_dir,
        Duration::from_secs(600),
        engine_args(ns),
        runtime_args(ns, runtime),
    )
}

fn engine_args(ns: &Namespace) -> EngineArgs {
    EngineArgs {
        amqp_url: Some(ns.amqp.clone()),
        zk: Some(ns.zk.clone()),
        zk_session_timeout: Duration::from_secs(1),
        log_stream: "rideshare.log".into(),
        log_max_bytes: 1 << 30,
        log_segment_bytes: 64 << 20,
    }
}

fn runtime_args(ns: &Namespace, runtime: RuntimeKind) -> RuntimeArgs {
    RuntimeArgs {
        runtime,
        worker_image: "rideshare-worker:latest".into(),
        docker_network: "host".into(),
        worker_amqp_url: None,
        worker_zk: None,
        cluster: ns.name.clone(),
        worker_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_rideshare"))),
        worker_data_dir: PathBuf::from("/tmp/rideshare-workers").join(&ns.name),
        snapshots: SnapshotArgs {
            snapshot_every: 10_000,
            snapshot_keep: 2,
            snapshot_dir: None,
        },
        group_commit: GroupCommitArgs::default(),
    }
}

fn require_image() {
    let out = Command::new("docker")
        .args(["image", "inspect", "rideshare-worker:latest"])
        .output()
        .expect("docker must be installed");
    assert!(
        out.status.success(),
        "the worker image rideshare-worker:latest is missing: run scripts/build-worker-image.sh"
    );
}

/// Host pids of the namespace's running worker containers, as `docker inspect` shows them.
fn docker_pids(ns: &Namespace) -> Vec<u64> {
    let ids = run(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=rideshare.cluster={}", ns.name),
        ],
    );
    let mut pids: Vec<u64> = ids
        .split_whitespace()
        .map(|id| {
            run("docker", &["inspect", "-f", "{{.State.Pid}}", id])
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    pids.sort_unstable();
    pids
}

async fn end_to_end(kind: RuntimeKind, what: &str) {
    let _serial = SERIAL.lock().await;
    if kind == RuntimeKind::Docker {
        require_image();
    }
    let ns = Namespace::new(what);
    let dir = tempfile::tempdir().unwrap();
    let up = start(args(&ns, dir.path(), kind))
        .await
        .expect("rideshare up on the real engines");
    let c = Client::new(&up);

    let (pids, took) = c
        .wait_for_pids(Duration::from_secs(60), |p| p.len() == 2)
        .await;
    assert_eq!(pids.len(), 2, "one master and one slave at start: {pids:?}");
    println!(
        "[{what}] 2 workers up after {} ms: {pids:?}",
        took.as_millis()
    );
    if kind == RuntimeKind::Docker {
        assert_eq!(
            docker_pids(&ns),
            pids,
            "worker/list must show the pids docker inspect shows"
        );
    } else {
        for pid in &pids {
            let cmdline =
                std::fs::read(format!("/proc/{pid}/cmdline")).expect("worker process exists");
            assert!(String::from_utf8_lossy(&cmdline).contains("worker"));
        }
    }

    // Every worker serves its own health, readiness and metrics, at the address it published.
    let http = reqwest::Client::new();
    for pid in &pids {
        let started = Instant::now();
        let addr = loop {
            let (status, body) = c.orch(Method::GET, "/api/v1/status").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let worker = body["workers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["pid"].as_u64() == Some(*pid))
                .cloned();
            if let Some(addr) = worker.as_ref().and_then(|w| w["http"].as_str()) {
                break addr.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "worker {pid} published no address: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let started = Instant::now();
        loop {
            let ready = http.get(format!("http://{addr}/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{addr} never ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("rideshare_worker_caught_up"),
            "{addr}: {metrics}"
        );
    }

    // The contract through the gateway, on the real engines.
    let mut acked = vec![];
    for name in ["asha", "ravi"] {
        assert_eq!(c.add_user(name).await, StatusCode::CREATED);
        acked.push(name.to_owned());
    }
    assert_eq!(c.add_user("asha").await, StatusCode::BAD_REQUEST);
    let ride = json!({"created_by": "asha", "timestamp": "01-09-2099:05-10-17", "source": 1, "destination": "2"});
    assert_eq!(
        c.api(Method::POST, "/api/v1/rides", Some(ride)).await.0,
        StatusCode::CREATED
    );
    let (status, rides) = c
        .api(Method::GET, "/api/v1/rides?source=1&destination=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ride_id = rides[0]["rideId"].as_u64().unwrap();
    let path = format!("/api/v1/rides/{ride_id}");
    assert_eq!(
        c.api(Method::POST, &path, Some(json!({"username": "ravi"})))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        c.api(Method::POST, &path, Some(json!({"username": "asha"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.api(Method::GET, &path, None).await.1["users"],
        json!(["ravi"])
    );
    assert_eq!(
        c.api(Method::GET, "/api/v1/rides/4242", None).await.0,
        StatusCode::NO_CONTENT
    );

    // crash/slave: the highest pid dies, a new slave replaces it.
    let before = c.pids().await;
    let (status, body) = c.orch(Method::POST, "/api/v1/crash/slave").await;
    assert_eq!(status, StatusCode::OK);
    let killed = body[0].as_u64().unwrap();
    assert_eq!(killed, *before.iter().max().unwrap());
    let (after, took) = c
        .wait_for_pids(Duration::from_secs(30), |p| {
            p.len() == 2 && !p.contains(&killed)
        })
        .await;
    assert!(
        after.len() == 2 && !after.contains(&killed),
        "no replacement slave: {after:?}"
    );
    println!(
        "[{what}] crash/slave {killed}: replacement listed after {} ms",
        took.as_millis()
    );

    // crash/master: the lowest-pid slave takes over. Failover = kill → first acknowledged write.
    let (status, body) = c.orch(Method::POST, "/api/v1/crash/master").await;
    assert_eq!(status, StatusCode::OK);
    let master = body[0].as_u64().unwrap();
    let crashed = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let name = format!("after-crash-{n}");
        if c.add_user(&name).await == StatusCode::CREATED {
            acked.push(name);
            break;
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(30),
            "no write acknowledged within 30 s"
        );
    }
    println!(
        "[{what}] failover: crash/master {master} → first acknowledged write in {} ms",
        crashed.elapsed().as_millis()
    );
    let (after, _) = c
        .wait_for_pids(Duration::from_secs(30), |p| {
            p.len() == 2 && !p.contains(&master)
        })
        .await;
    assert!(after.len() == 2 && !after.contains(&master), "{after:?}");
    if kind == RuntimeKind::Docker {
        assert_eq!(docker_pids(&ns), after);
    }
    assert_eq!(c.users().await, acked, "every acknowledged write survives");
    assert_eq!(
        c.api(Method::GET, &path, None).await.1["users"],
        json!(["ravi"])
    );
    up.stop().await.unwrap();
    if kind == RuntimeKind::Docker {
        assert!(docker_pids(&ns).is_empty(), "up stops its workers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ, ZooKeeper, Docker and the worker image: run ./scripts/test.sh"]
async fn docker_workers_serve_the_contract_and_fail_over() {
    end_to_end(RuntimeKind::Docker, "docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and ZooKeeper: run ./scripts/test.sh"]
async fn process_workers_serve_the_contract_and_fail_over() {
    end_to_end(RuntimeKind::Process, "process").await;
}

/// A separate `rideshare orchestrator` process, so it can be killed with SIGKILL.
fn spawn_orchestrator(ns: &Namespace, listen: SocketAddr) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rideshare"))
        .args([
            "orchestrator",
            "--listen",
            &listen.to_string(),
            "--zk",
            &ns.zk,
            "--zk-session-timeout",
            "1s",
            "--runtime",
            "docker",
            "--cluster",
            &ns.name,
        ])
        // The URL holds the password: the environment, not the command line.
        .env("RIDESHARE_AMQP_URL", &ns.amqp)
        .env("RIDESHARE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RIDESHARE_LOG", "warn")
        .spawn()
        .expect("spawn rideshare orchestrator")
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ, ZooKeeper, Docker and the worker image: run ./scripts/test.sh"]
async fn broker_restart_and_orchestrator_kill_lose_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    require_image();
    let ns = Namespace::new("restarts");
    let listen = free_port();
    let mut orchestrator = spawn_orchestrator(&ns, listen);
    let url = format!("http://{listen}");
    let db = OrchestratorDb::new(
        url.clone(),
        Duration::from_secs(5),
        AdminToken::new(ADMIN_TOKEN),
    );
    let http = reqwest::Client::builder()
        .default_headers(admin_headers())
        .build()
        .unwrap();
    let workers = || async {
        match http.get(format!("{url}/api/v1/worker/list")).send().await {
            Ok(r) => r.json::<Vec<u64>>().await.unwrap_or_default().len(),
            Err(_) => 0,
        }
    };
    let started = Instant::now();
    while workers().await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "workers did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A steady write load; every write is recorded as acknowledged or failed.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let db = db.clone();
        async move {
            let mut acked = Vec::new();
            let mut failed = 0u32;
            let mut n = 0u32;
            while !*stopped.borrow() {
                n += 1;
                let name = format!("load-{n}");
                let op = WriteOp::AddUser {
                    username: Username::parse(&name).unwrap(),
                    password_hash: "h".into(),
                };
                match db.write(op).await {
                    Ok(WriteOutcome::Done) => acked.push(name),
                    Ok(other) => panic!("unexpected outcome {other:?}"),
                    Err(e) => {
                        failed += 1;
                        if failed % 20 == 1 {
                            println!("write failed (expected while an engine is down): {e}");
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed())
                            .await;
                    }
                }
            }
            (acked, failed)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // RabbitMQ restarts under the load.
    println!("restarting RabbitMQ");
    run("rabbitmqctl", &["-q", "stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    run("rabbitmqctl", &["-q", "start_app"]);
    run("rabbitmqctl", &["-q", "await_startup"]);
    let back = Instant::now();
    let probe = |n: u32| WriteOp::AddUser {
        username: Username::parse(&format!("probe-{n}")).unwrap(),
        password_hash: "h".into(),
    };
    let mut n = 0;
    loop {
        n += 1;
        if db.write(probe(n)).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "writes did not succeed again after the broker restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "writes succeed again {} ms after RabbitMQ is back",
        back.elapsed().as_millis()
    );

    // The orchestrator is killed (SIGKILL) and restarted under the load.
    orchestrator.kill().unwrap();
    orchestrator.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down = db.write(probe(1_000_000)).await;
    assert!(
        down.is_err(),
        "with the orchestrator down, clients get an error"
    );
    println!("while the orchestrator is down: {}", down.unwrap_err());
    let mut orchestrator = spawn_orchestrator(&ns, listen);
    let back = Instant::now();
    loop {
        n += 1;
        if db.write(probe(n)).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "writes did not succeed after the orchestrator restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "writes succeed again {} ms after the orchestrator restart",
        back.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let (acked, failed) = load.await.unwrap();

    let ReadOutcome::Users { users } = db.read(ReadOp::ListUsers).await.unwrap() else {
        panic!("unexpected read answer");
    };
    let lost: Vec<&String> = acked
        .iter()
        .filter(|a| !users.iter().any(|u| u.as_str() == a.as_str()))
        .collect();
    println!(
        "load: {} acknowledged, {failed} failed; lost: {}",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let mut seen = std::collections::HashSet::new();
    assert!(
        users.iter().all(|u| seen.insert(u.as_str())),
        "a user appears twice"
    );
    orchestrator.kill().unwrap();
    orchestrator.wait().unwrap();
}
