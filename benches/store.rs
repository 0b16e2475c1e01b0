//! Store throughput: how fast the state machine applies writes on each store (one transaction
//! per write, or commit groups as a replica uses them) and answers reads. Run with
//! `cargo bench -p rideshare-core --bench store`; criterion prints time per batch and
//! elements per second.

mod workload;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rideshare_core::machine::{StateMachine, Store};
use rideshare_core::ops::{ReadOp, RequestId};
use rideshare_core::store::{MemStore, SqliteStore};
use rideshare_core::RideId;
use workload::workload;

/// Writes per measured batch.
const OPS: u64 = 20_000;

/// Applies `OPS` writes of the mix, `group` per commit group (1: each its own transaction).
fn apply_all<S: Store>(m: &mut StateMachine<S>, group: u64) {
    let mut i = 1;
    while i <= OPS {
        let end = (i + group).min(OPS + 1);
        m.grouped(|m| {
            for i in i..end {
                m.apply(i, &RequestId(i.to_string()), &workload(i))?;
            }
            Ok::<_, rideshare_core::StoreError>(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        i = end;
    }
}

fn sqlite(dir: &tempfile::TempDir, n: &mut u32) -> SqliteStore {
    *n += 1;
    SqliteStore::open(&dir.path().join(format!("bench{n}.db"))).unwrap_or_else(|e| panic!("{e}"))
}

fn stores(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0;
    let mut apply = c.benchmark_group("apply");
    apply
        .throughput(Throughput::Elements(OPS))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    apply.bench_function("memory", |b| {
        b.iter_batched(
            || StateMachine::new(MemStore::new()),
            |mut m| apply_all(&mut m, 1),
            BatchSize::PerIteration,
        )
    });
    // A replica applies one entry per transaction when entries come one at a time, and groups
    // what is already waiting in the log (catch-up, bursts) up to the worker's group bound.
    for group in [1, 16, 256] {
        apply.bench_function(format!("sqlite, groups of {group}"), |b| {
            b.iter_batched(
                || StateMachine::new(sqlite(&dir, &mut n)),
                |mut m| apply_all(&mut m, group),
                BatchSize::PerIteration,
            )
        });
    }
    apply.finish();

    let mut read = c.benchmark_group("get_ride");
    read.throughput(Throughput::Elements(1));
    let mut memory = StateMachine::new(MemStore::new());
    apply_all(&mut memory, 1);
    let mut file = StateMachine::new(sqlite(&dir, &mut n));
    apply_all(&mut file, 256);
    let mut id = 0;
    read.bench_function("memory", |b| {
        b.iter(|| {
            id = id % (OPS / 2) + 1;
            memory.read(&ReadOp::GetRide {
                ride_id: RideId(id),
            })
        })
    });
    read.bench_function("sqlite", |b| {
        b.iter(|| {
            id = id % (OPS / 2) + 1;
            file.read(&ReadOp::GetRide {
                ride_id: RideId(id),
            })
        })
    });
    read.finish();
}

criterion_group!(benches, stores);
criterion_main!(benches);
