//! Replica catch-up: how fast a new worker applies an existing log to its SQLite copy before it
//! serves, with commit groups of several sizes (the worker's default is 256; 1 is one
//! transaction per entry). The worker runs for real (`run_worker`) on the in-memory broker, log
//! and coordinator; the measured time is from its start to the catch-up it reports in its
//! member node. Run with `cargo bench -p rideshare-dbaas --bench catch_up`; criterion prints
//! time per catch-up and entries per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod workload;

use rideshare_core::ops::RequestId;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{encode, CatchUp, EntryBody, LogEntry, VERSION};
use rideshare_dbaas::registry::Registry;
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

/// Starts a worker on a fresh SQLite file over `log`; returns its reported catch-up.
async fn catch_up(group: usize, log: MemLog) -> CatchUp {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SqliteStore::open(&dir.path().join("replica.db")).unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Arc::new(MemCoordinator::new());
    let deps = WorkerDeps {
        broker: Arc::new(MemBroker::new()),
        log: Arc::new(log),
        coordinator: coordinator.clone(),
    };
    let mut config = WorkerConfig::new("bench-worker", 1);
    config.apply_group = group;
    let worker = tokio::spawn(run_worker(config, deps, Box::new(store)));
    let registry = Registry::connect(coordinator.as_ref())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reported = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let members = registry.members().await.unwrap_or_default();
            if let Some(c) = members.iter().find_map(|m| m.record.catch_up) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the worker did not catch up within 300 s"));
    worker.abort();
    reported
}

fn catch_ups(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("catch_up");
    group
        .throughput(Throughput::Elements(ENTRIES))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for size in [1, 16, 256] {
        group.bench_function(format!("sqlite, groups of {size}"), |b| {
            b.to_async(&runtime).iter_custom(|iterations| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    // The log is filled outside the measured time: only the catch-up counts.
                    let log = filled_log().await;
                    let started = Instant::now();
                    let reported = catch_up(size, log).await;
                    assert_eq!(reported.entries, ENTRIES, "a partial catch-up");
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, catch_ups);
criterion_main!(benches);
