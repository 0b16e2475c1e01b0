//! The operator's commands against a running system: `rideshare status`, `rideshare crash` and
//! `rideshare switchover` (the real binary, pointed at an embedded `rideshare up` in this
//! process). A switchover under a steady write load fails no write.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{embedded_args, Client, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use rideshare_svc::cli::UpArgs;
use rideshare_svc::up::{start, Up};
use serde_json::Value;

/// Fully embedded: no engine flags.
fn args(data_dir: &Path) -> UpArgs {
    embedded_args(data_dir, Duration::from_secs(120))
}

/// Runs the `rideshare` binary with `args` against `up`'s orchestrator; answers stdout.
async fn rideshare(up: &Up, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rideshare"));
    command
        .args(args)
        .env(
            "RIDESHARE_ORCHESTRATOR_URL",
            format!("http://{}", up.orchestrator),
        )
        // The operator's token, as an operator would set it.
        .env("RIDESHARE_ADMIN_TOKEN", ADMIN_TOKEN);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "rideshare {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn status(c: &Client) -> Value {
    let (code, status) = c.orch(Method::GET, "/api/v1/status").await;
    assert_eq!(code, StatusCode::OK);
    status
}

async fn master_pid(c: &Client) -> Option<u64> {
    status(c).await["master"]["pid"].as_u64()
}

/// Waits until the cluster has a ready master and a caught-up slave.
async fn wait_ready(up: &Up) {
    let started = Instant::now();
    while reqwest::get(format!("http://{}/ready", up.orchestrator))
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(started.elapsed() < Duration::from_secs(10), "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_lists_every_worker_and_crash_command_replaces_a_slave() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(args(dir.path())).await.unwrap();
    let c = Client::new(&up);
    wait_ready(&up).await;
    assert_eq!(c.add_user("asha").await, StatusCode::CREATED);

    let pids = c.pids().await;
    let table = rideshare(&up, &["status"]).await;
    for pid in &pids {
        assert!(
            table.contains(&format!("| {pid} ")),
            "pid {pid} missing:\n{table}"
        );
    }
    assert!(
        table.contains("master") && table.contains("slave"),
        "{table}"
    );
    assert!(table.contains("serving"), "{table}");
    assert!(table.contains("reads so far"), "{table}");

    let workers: Vec<Value> =
        serde_json::from_value(c.orch(Method::GET, "/api/v1/workers").await.1).unwrap();
    let listed: Vec<u64> = workers.iter().filter_map(|w| w["pid"].as_u64()).collect();
    assert_eq!(listed, pids, "one object per worker, by pid");
    for w in &workers {
        for field in ["pid", "role", "applied_index", "lag", "state"] {
            assert!(w.get(field).is_some(), "{field} missing in {w}");
        }
    }

    let slave = *pids.iter().max().unwrap();
    let said = rideshare(&up, &["crash", "slave"]).await;
    assert_eq!(said.trim(), format!("killed worker pid {slave}"));
    let after = c
        .wait_for_pids(Duration::from_secs(5), |p| {
            p.len() == 2 && !p.contains(&slave)
        })
        .await
        .0;
    assert!(!after.contains(&slave) && after.len() == 2, "{after:?}");
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_a_steady_write_load_fails_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(args(dir.path())).await.unwrap();
    let c = Client::new(&up);
    wait_ready(&up).await;
    let old_master = master_pid(&c).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let c = Client::new(&up);
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let status = c.add_user(&format!("w{writer}-{i}")).await;
                slowest = slowest.max(started.elapsed());
                if status == StatusCode::CREATED {
                    written.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.push(status);
                }
                i += 1;
            }
            (failures, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = written.load(Ordering::SeqCst);
    assert!(before > 0, "the load is running");

    let said = rideshare(&up, &["switchover"]).await;
    println!("{}", said.trim());
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for writer in writers {
        let (f, s) = writer.await.unwrap();
        failures.extend(f);
        slowest = slowest.max(s);
    }
    let total = written.load(Ordering::SeqCst);
    println!("{total} writes, slowest {} ms", slowest.as_millis());

    assert!(
        failures.is_empty(),
        "writes failed during the switchover: {failures:?}"
    );
    assert!(total > before, "writes went on after the switchover");
    let new_master = master_pid(&c).await.unwrap();
    assert_ne!(new_master, old_master, "the master changed");
    assert!(
        said.contains(&format!("from pid {old_master} to pid {new_master}")),
        "{said}"
    );
    assert_eq!(
        c.users().await.len() as u64,
        total,
        "every acknowledged write is there"
    );
    let failovers = status(&c).await["failovers"].clone();
    assert_eq!(failovers[0]["old_pid"], old_master);
    up.stop().await.unwrap();
}
