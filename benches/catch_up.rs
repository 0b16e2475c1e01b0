//! Replica catch-up: how fast a new worker applies an existing log to its SQLite copy before it
//! serves, with commit groups of several sizes (the worker's default is 256; 1 is one
//! transaction per entry). The worker runs for real (`run_worker`) on the in-memory broker, log
//! and coordinator; the measured time is from its start to the catch-up it reports in its
//! member node. Run with `cargo bench -p rideshare-dbaas --bench catch_up`; criterion prints
//! time per catch-up and entries per second.
//!
//! `catch_up_from_snapshot`: the same log, but a snapshot at `ENTRIES - TAIL` waits in the
//! shared directory (the log replayed by the replicas' rule, exported and published
//! beforehand); the measured time is the new worker's install (copy, verify, open) plus its
//! replay of the last `TAIL` entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod workload;

use rideshare_core::ops::RequestId;
use rideshare_core::store::SqliteStore;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::checker::Replay;
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{encode, CatchUp, EntryBody, LogEntry, VERSION};
use rideshare_dbaas::registry::Registry;
use rideshare_dbaas::snapshot::{SnapshotDir, StoreAt, StoreKind, Taken};
use rideshare_dbaas::worker::{run_worker_from, SnapshotSettings, WorkerConfig, WorkerDeps};
use workload::workload;

const ENTRIES: u64 = 20_000;
/// Entries after the snapshot, in the snapshot bench.
const TAIL: u64 = 1_000;

/// A log of one epoch marker and `ENTRIES - 1` writes of that epoch.
async fn filled_log() -> MemLog {
    let log = MemLog::new();
    fill(&log, 1, ENTRIES).await;
    log
}

/// Appends entries `from..=to` (entry 1 is the epoch marker, the rest writes of epoch 1).
async fn fill(log: &MemLog, from: u64, to: u64) {
    for i in from..=to {
        let entry = if i == 1 {
            LogEntry {
                v: VERSION,
                epoch: 1,
                body: EntryBody::EpochMarker {
                    master: "bench-master".into(),
                },
            }
        } else {
            LogEntry {
                v: VERSION,
                epoch: 1,
                body: EntryBody::Write {
                    request_id: RequestId(format!("r{}", i - 1)),
                    op: workload(i - 1),
                },
            }
        };
        log.append(encode(&entry))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Starts a worker on a fresh SQLite file over `log`; returns its reported catch-up.
async fn catch_up(group: usize, log: MemLog) -> CatchUp {
    run_until_caught_up(group, log, None).await.0
}

/// Starts a worker over `log`, installing the newest snapshot in `snapshots` if any (and
/// writing snapshots there); returns its reported catch-up and the snapshot it installed.
async fn run_until_caught_up(
    group: usize,
    log: MemLog,
    snapshots: Option<SnapshotSettings>,
) -> (CatchUp, Option<u64>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let at = StoreAt::Sqlite(dir.path().join("replica.db"));
    let (store, installed) = at
        .open(snapshots.as_ref().map(|s| &s.dir), u64::MAX)
        .unwrap_or_else(|e| panic!("{e}"));
    let installed_index = installed.as_ref().map(|m| m.index);
    let coordinator = Arc::new(MemCoordinator::new());
    let deps = WorkerDeps {
        broker: Arc::new(MemBroker::new()),
        log: Arc::new(log),
        coordinator: coordinator.clone(),
    };
    let mut config = WorkerConfig::new("bench-worker", 1);
    config.apply_group = group;
    config.snapshots = snapshots;
    let worker = tokio::spawn(run_worker_from(config, deps, store, installed));
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
    (reported, installed_index)
}

/// A snapshot directory holding one snapshot at `ENTRIES - TAIL` of the log's entries (the
/// log replayed by the checker's `Replay`, the replicas' rule, into a SQLite store, exported
/// and published as a worker does), and the whole log's entries (each measured worker gets a
/// log of its own: once caught up it elects itself and appends its marker).
async fn snapshot_and_tail() -> (tempfile::TempDir, SnapshotSettings, Vec<bytes::Bytes>) {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = SnapshotSettings {
        dir: SnapshotDir::open(root.path(), 2).unwrap_or_else(|e| panic!("{e}")),
        every: ENTRIES - TAIL,
        kind: StoreKind::Sqlite,
    };
    let log = filled_log().await;
    let store = SqliteStore::open(&root.path().join("writer.db")).unwrap_or_else(|e| panic!("{e}"));
    let mut replay = Replay::new(store);
    let mut reader = log.read_from(1).await.unwrap_or_else(|e| panic!("{e}"));
    let mut entries = Vec::new();
    for n in 1..=ENTRIES {
        let record = reader
            .next()
            .await
            .unwrap_or_else(|| panic!("log ended"))
            .unwrap_or_else(|e| panic!("{e}"));
        if n <= ENTRIES - TAIL {
            replay.apply(&record).unwrap_or_else(|e| panic!("{e}"));
        }
        entries.push(record.data);
    }
    let temp = settings.dir.temp_path("bench");
    replay
        .machine
        .export(&temp)
        .unwrap_or_else(|e| panic!("{e}"));
    let taken = Taken {
        index: ENTRIES - TAIL,
        epoch: 1,
        checksum: replay
            .machine
            .checksum_parts()
            .unwrap_or_else(|e| panic!("{e}")),
    };
    settings
        .dir
        .publish(&temp, StoreKind::Sqlite, taken, "bench")
        .unwrap_or_else(|e| panic!("{e}"));
    (root, settings, entries)
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

    let mut group = c.benchmark_group("catch_up_from_snapshot");
    group
        .throughput(Throughput::Elements(ENTRIES))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let (_root, settings, entries) = runtime.block_on(snapshot_and_tail());
    group.bench_function(
        format!("sqlite, snapshot at {} + tail of {TAIL}", ENTRIES - TAIL),
        |b| {
            let settings = settings.clone();
            let entries = entries.clone();
            b.to_async(&runtime).iter_custom(move |iterations| {
                let settings = settings.clone();
                let entries = entries.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let log = MemLog::with_entries(entries.clone());
                        let started = Instant::now();
                        // Install and tail only: this worker writes no snapshot of its own.
                        let mut reading = settings.clone();
                        reading.every = u64::MAX / 2;
                        let (reported, installed) =
                            run_until_caught_up(256, log, Some(reading)).await;
                        assert_eq!(installed, Some(ENTRIES - TAIL), "no snapshot installed");
                        assert_eq!(reported.entries, TAIL, "replayed more than the tail");
                        total += started.elapsed();
                    }
                    total
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, catch_ups);
criterion_main!(benches);
