//! Store throughput: how many writes per second the state machine applies on each store, and how
//! many reads it answers. Prints figures; run with `cargo bench --bench store`.
//!
//! Each figure is the best of three runs of `OPS` operations, so a busy neighbour on the
//! machine shows up as spread, not as a slower best.

mod workload;

use std::time::Instant;

use rideshare_core::machine::{StateMachine, Store};
use rideshare_core::ops::{ReadOp, RequestId};
use rideshare_core::store::{MemStore, SqliteStore};
use rideshare_core::RideId;
use workload::workload;

const OPS: u64 = 20_000;

/// Applies `OPS` writes, `group` per commit group (1: each its own transaction), then reads.
fn bench<S: Store>(name: &str, group: u64, mut make: impl FnMut() -> S) {
    let mut best_write = f64::MAX;
    let mut best_read = f64::MAX;
    for _ in 0..3 {
        let mut m = StateMachine::new(make());
        let start = Instant::now();
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
        best_write = best_write.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in 1..=OPS / 10 {
            m.read(&ReadOp::GetRide { ride_id: RideId(i) })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        best_read = best_read.min(start.elapsed().as_secs_f64() * 10.0);
    }
    println!(
        "{name:<24} apply {:>9.0} writes/s   get_ride {:>9.0} reads/s",
        OPS as f64 / best_write,
        OPS as f64 / best_read
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store bench: pass --bench (cargo bench) to measure");
        return;
    }
    bench("memory", 1, MemStore::new);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0;
    let mut open = || {
        n += 1;
        SqliteStore::open(&dir.path().join(format!("bench{n}.db")))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // A replica applies one entry per transaction when entries come one at a time, and groups
    // what is already waiting in the log (catch-up, bursts) up to the worker's group bound.
    bench("sqlite (file, WAL)", 1, &mut open);
    bench("sqlite, groups of 16", 16, &mut open);
    bench("sqlite, groups of 256", 256, &mut open);
}
