//! `rideshare up` end to end, in this process on real sockets (loopback, port 0): the contract
//! through the gateway, the orchestrator's crash and list endpoints, failover, scaling, and data
//! surviving a restart.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{embedded_args, embedded_up, Client};
use reqwest::StatusCode;
use rideshare_svc::cli::UpArgs;
use rideshare_svc::up::start;
use serde_json::json;

fn args(data_dir: &Path, scale_interval: Duration) -> UpArgs {
    embedded_args(data_dir, scale_interval)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_system_serves_the_contract_survives_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = embedded_up(dir.path(), |_| {}).await;
    use reqwest::Method;

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
        .await
        .0;
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
        .await
        .0;
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
    let pids = c.wait_for_pids(window * 2, |p| p.len() == 4).await.0;
    assert_eq!(
        pids.len(),
        4,
        "45 reads should give 1 master + 3 slaves: {pids:?}"
    );
    // A window with no reads: back to 1 slave, and nobody respawns the stopped ones.
    let pids = c.wait_for_pids(window * 2, |p| p.len() == 2).await.0;
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

/// The log's segment files in `data_dir`.
fn segments(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rideshare.log."))
        .collect();
    names.sort();
    names
}

/// Waits up to `bound` for `GET /api/v1/workers` to satisfy `done`; returns the last listing.
async fn wait_for_workers(
    c: &Client,
    bound: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let (_, workers) = c.orch(reqwest::Method::GET, "/api/v1/workers").await;
        let workers = workers.as_array().cloned().unwrap_or_default();
        if done(&workers) || started.elapsed() > bound {
            return workers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_new_workers_install_them() {
    let dir = tempfile::tempdir().unwrap();
    let small = |a: &mut UpArgs| {
        a.runtime.snapshots.snapshot_every = 40;
        a.engines.log_segment_bytes = 2048;
    };
    let (up, c) = embedded_up(dir.path(), small).await;
    let names: Vec<String> = (0..240).map(|i| format!("user{i:03}")).collect();
    for name in &names {
        assert_eq!(c.add_user(name).await, StatusCode::CREATED);
    }
    // Snapshots are written, and the log drops the segments they cover (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while segments(dir.path()).first().map(String::as_str)
        == Some("rideshare.log.00000000000000000001")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = segments(dir.path());
    assert_ne!(
        kept.first().map(String::as_str),
        Some("rideshare.log.00000000000000000001"),
        "the first segment is still there: {kept:?}"
    );
    let snapshots = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(snapshots, 2, "the newest two snapshots are kept");

    // A replacement slave installs the newest snapshot and replays only what follows it.
    let (status, killed) = c.orch(reqwest::Method::POST, "/api/v1/crash/slave").await;
    assert_eq!(status, StatusCode::OK);
    let killed = killed[0].as_u64().unwrap();
    let installed = |w: &serde_json::Value| {
        w["state"] == "serving" && w["catch_up"]["from"].as_u64().unwrap_or(0) > 0
    };
    let workers = wait_for_workers(&c, Duration::from_secs(5), |ws| {
        ws.iter()
            .any(|w| w["pid"].as_u64() > Some(killed) && installed(w))
    })
    .await;
    assert!(
        workers
            .iter()
            .any(|w| w["pid"].as_u64() > Some(killed) && installed(w)),
        "no replacement from a snapshot: {workers:?}"
    );
    assert_eq!(c.users().await, names);

    // After a restart every worker starts from a snapshot, with every user there.
    up.stop().await.unwrap();
    let mut restarted = args(dir.path(), Duration::from_secs(120));
    small(&mut restarted);
    let up = start(restarted).await.unwrap();
    let c = Client::new(&up);
    let workers = wait_for_workers(&c, Duration::from_secs(5), |ws| {
        ws.len() == 2 && ws.iter().all(installed)
    })
    .await;
    assert!(
        workers.len() == 2 && workers.iter().all(installed),
        "{workers:?}"
    );
    assert_eq!(c.users().await, names);
    up.stop().await.unwrap();
}
