//! The master's group commit under a log that stops confirming: the records in flight hold
//! their slots, the appender's queue fills, and every write still gets an answer within the
//! master's write bound (`unavailable`, so the orchestrator retries it), none waits forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rideshare_core::ops::{RequestId, WriteOp};
use rideshare_core::store::MemStore;
use rideshare_core::Username;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::broker::{Broker, Message};
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::{Appended, Log, LogReader};
use rideshare_dbaas::protocol::{encode, Refusal, Reply, WriteRequest, VERSION, WRITE_QUEUE};
use rideshare_dbaas::worker::{run_worker, GroupCommit, WorkerConfig, WorkerDeps};
use rideshare_dbaas::Result;

/// A log that confirms its first `confirmed` appends (the epoch marker) and none after.
struct StallingLog {
    inner: MemLog,
    confirmed: u64,
    appended: AtomicU64,
}

#[async_trait]
impl Log for StallingLog {
    fn append(&self, data: Bytes) -> Appended {
        if self.appended.fetch_add(1, Ordering::SeqCst) < self.confirmed {
            self.inner.append(data)
        } else {
            Appended::pending(std::future::pending())
        }
    }
    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        self.inner.read_from(from).await
    }
    async fn end(&self) -> Result<u64> {
        self.inner.end().await
    }
}

#[tokio::test(start_paused = true)]
async fn writes_behind_a_stalled_log_are_refused_within_the_write_bound() {
    let broker = Arc::new(MemBroker::new());
    broker.declare(WRITE_QUEUE).await.unwrap();
    broker.declare_exclusive("replies").await.unwrap();
    let mut replies = broker.consume("replies", 8).await.unwrap();
    let deps = WorkerDeps {
        broker: Arc::clone(&broker) as Arc<dyn Broker>,
        log: Arc::new(StallingLog {
            inner: MemLog::new(),
            confirmed: 1,
            appended: AtomicU64::new(0),
        }),
        coordinator: Arc::new(MemCoordinator::new()),
    };
    let mut config = WorkerConfig::new("w", 1);
    config.write_wait = Duration::from_secs(2);
    config.group_commit = GroupCommit {
        max: 4,
        wait: Duration::ZERO,
        in_flight: 1,
    };
    let worker = tokio::spawn(run_worker(config, deps, Box::new(MemStore::default())));

    // More writes in one message than one record in flight and the appender's queue hold.
    let writes: Vec<WriteRequest> = (0..300)
        .map(|i| WriteRequest {
            v: VERSION,
            request_id: RequestId(format!("r{i}")),
            op: WriteOp::AddUser {
                username: Username::parse(&format!("u{i}")).unwrap(),
                password_hash: "h".into(),
            },
            trace: None,
        })
        .collect();
    let message = Message {
        body: encode(&writes),
        correlation_id: Some("c1".into()),
        reply_to: Some("replies".into()),
        transient: false,
    };
    broker.publish(WRITE_QUEUE, message).await.unwrap();
    let sent = tokio::time::Instant::now();

    let delivery = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("no reply: a write waited past the bound")
        .expect("the reply queue closed")
        .unwrap();
    assert!(
        sent.elapsed() <= Duration::from_secs(5),
        "answered after {:?}",
        sent.elapsed()
    );
    let answers: Vec<Reply> = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(answers.len(), writes.len());
    for answer in &answers {
        assert!(
            matches!(
                answer,
                Reply::Refused {
                    refusal: Refusal::Unavailable,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
    worker.abort();
}
