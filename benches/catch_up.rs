//! Replica catch-up: how fast a new worker applies an existing log to its SQLite copy before it
//! serves, with commit groups of several sizes (the worker's default is 256; 1 is one
//! transaction per entry). The worker runs for real (`run_worker`) on the in-memory broker, log
//! and coordinator; the figure is the catch-up it reports in its member node. Prints figures;
//! run with `cargo bench --bench catch_up`.

use std::sync::Arc;
use std::time::Duration;

mod workload;

use rideshare_core::ops::RequestId;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::coord::Coordinator;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{
    decode, encode, CatchUp, EntryBody, LogEntry, MemberRecord, VERSION, WORKERS,
};
use rideshare_dbaas::worker::{run_worker, WorkerConfig, WorkerDeps};
use workload::workload;

const ENTRIES: u64 = 20_000;

/// A log of one epoch marker and `ENTRIES - 1` writes of that epoch.
async fn filled_log() -> MemLog {
    let log = MemLog::new();
    let marker = LogEntry {
        v: VERSION,
        epoch: 1,
        body: EntryBody::EpochMarker {
            master: "bench-master".into(),
        },
    };
    log.append(encode(&marker))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 1..ENTRIES {
        let entry = LogEntry {
            v: VERSION,
            epoch: 1,
            body: EntryBody::Write {
                request_id: RequestId(format!("r{i}")),
                op: workload(i),
            },
        };
        log.append(encode(&entry))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    log
}

/// Starts a worker on a fresh SQLite file over a filled log; returns its reported catch-up.
async fn catch_up(group: usize) -> CatchUp {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SqliteStore::open(&dir.path().join("replica.db")).unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Arc::new(MemCoordinator::new());
    let deps = WorkerDeps {
        broker: Arc::new(MemBroker::new()),
        log: Arc::new(filled_log().await),
        coordinator: coordinator.clone(),
    };
    let mut config = WorkerConfig::new("bench-worker", 1);
    config.apply_group = group;
    let worker = tokio::spawn(run_worker(config, deps, Box::new(store)));
    let session = coordinator
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reported = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            for child in session.children(WORKERS).await.unwrap_or_default() {
                if let Ok(Some((data, _))) = session.get(&format!("{WORKERS}/{child}")).await {
                    if let Ok(MemberRecord {
                        catch_up: Some(c), ..
                    }) = decode::<MemberRecord>(&data)
                    {
                        return c;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the worker did not catch up within 300 s"));
    worker.abort();
    reported
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("catch_up bench: pass --bench (cargo bench) to measure");
        return;
    }
    for group in [1, 16, 256] {
        let mut best: Option<CatchUp> = None;
        for _ in 0..3 {
            let c = catch_up(group).await;
            if best.is_none_or(|b| c.ms < b.ms) {
                best = Some(c);
            }
        }
        let c = best.unwrap_or_else(|| unreachable!());
        println!(
            "catch-up into SQLite, groups of {group:<3}  {:>6} entries in {:>6} ms  {:>8.0} entries/s",
            c.entries,
            c.ms,
            c.entries as f64 * 1000.0 / c.ms.max(1) as f64
        );
    }
}
