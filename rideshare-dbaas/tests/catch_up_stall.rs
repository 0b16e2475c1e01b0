//! A worker whose log reader stops handing out entries mid catch-up (as a RabbitMQ stream
//! consumer made while the broker restarts was seen to do, without ending) stops after
//! `catch_up_stall` instead of waiting out `catch_up_wait`, so its supervisor replaces it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rideshare_core::ops::{RequestId, WriteOp};
use rideshare_core::store::MemStore;
use rideshare_core::Username;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::{Appended, Log, LogReader, Record};
use rideshare_dbaas::protocol::{encode, EntryBody, LogEntry, VERSION};
use rideshare_dbaas::worker::{run_worker, WorkerConfig, WorkerDeps};
use rideshare_dbaas::{Error, Result};

/// A log whose readers hand out `before_hang` entries, then wait forever.
struct HangingLog {
    inner: MemLog,
    before_hang: u64,
}

struct HangingReader {
    inner: Box<dyn LogReader>,
    left: u64,
}

#[async_trait]
impl LogReader for HangingReader {
    async fn next(&mut self) -> Option<Result<Record>> {
        if self.left == 0 {
            return std::future::pending().await;
        }
        self.left -= 1;
        self.inner.next().await
    }
}

#[async_trait]
impl Log for HangingLog {
    fn append(&self, data: Bytes) -> Appended {
        self.inner.append(data)
    }
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        Ok(Box::new(HangingReader {
            inner: self.inner.read_from(from).await?,
            left: self.before_hang,
        }))
    }
    async fn end(&self) -> Result<u64> {
        self.inner.end().await
    }
}

async fn log_of(entries: u64, before_hang: u64) -> HangingLog {
    let inner = MemLog::new();
    let marker = LogEntry {
        v: VERSION,
        epoch: 1,
        body: EntryBody::EpochMarker { master: "m".into() },
    };
    inner.append(encode(&marker)).await.unwrap();
    for i in 1..entries {
        let entry = LogEntry {
            v: VERSION,
            epoch: 1,
            body: EntryBody::Write {
                request_id: RequestId(format!("r{i}")),
                op: WriteOp::AddUser {
                    username: Username::parse(&format!("u{i}")).unwrap(),
                    password_hash: "h".into(),
                },
            },
        };
        inner.append(encode(&entry)).await.unwrap();
    }
    HangingLog { inner, before_hang }
}

async fn run(log: HangingLog) -> Result<()> {
    let deps = WorkerDeps {
        broker: Arc::new(MemBroker::new()),
        log: Arc::new(log),
        coordinator: Arc::new(MemCoordinator::new()),
    };
    let mut config = WorkerConfig::new("w", 1);
    config.catch_up_wait = Duration::from_secs(300);
    config.catch_up_stall = Duration::from_secs(15);
    run_worker(config, deps, Box::new(MemStore::default())).await
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_that_stops_applying_ends_the_worker_after_the_stall_bound() {
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), run(log_of(100, 40).await)).await;
    let Ok(Err(Error::Timeout(what, _))) = ended else {
        panic!("the worker did not stop on the stall: {ended:?}");
    };
    assert_eq!(what, "catch-up (stalled)");
    assert!(
        started.elapsed() < Duration::from_secs(31),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_that_completes_is_not_cut_short() {
    // The reader never hangs within the log: the worker catches up and serves, running on.
    let served =
        tokio::time::timeout(Duration::from_secs(60), run(log_of(100, u64::MAX).await)).await;
    assert!(served.is_err(), "the worker stopped: {served:?}");
}
