//! Runs each conformance suite against the in-memory implementations (and the file log), then
//! pins the fault controls the simulations rely on.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rideshare_dbaas::broker::mem::MemBroker;
use rideshare_dbaas::broker::{Broker, Consumer, Delivery, Message};
use rideshare_dbaas::conformance::{broker_suite, coord_suite, log_suite};
use rideshare_dbaas::coord::mem::MemCoordinator;
use rideshare_dbaas::coord::{Coordinator, CreateMode};
use rideshare_dbaas::log::file::{segment_path, FileLog, FileLogConfig, MAX_RECORD_BYTES};
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::{Appended, Log, LogReader, Record};
use rideshare_dbaas::Error;

const WAIT: Duration = Duration::from_secs(5);

// ---- the suites -------------------------------------------------------------------------------

#[tokio::test]
async fn mem_broker_passes_the_broker_suite() {
    broker_suite(|| async { MemBroker::new() })
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_broker_passes_the_broker_suite_on_threads() {
    broker_suite(|| async { MemBroker::with_seed(7) })
        .await
        .assert_passed();
}

#[tokio::test]
async fn mem_log_passes_the_log_suite() {
    log_suite(|| async { MemLog::new() }).await.assert_passed();
}

#[tokio::test(start_paused = true)]
async fn mem_log_with_append_delay_passes_the_log_suite() {
    log_suite(|| async {
        let log = MemLog::new();
        log.set_append_delay(Duration::from_millis(3));
        log
    })
    .await
    .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_passes_the_log_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicU32::new(0);
    log_suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("log-{n}"));
        async move { FileLog::open(path).expect("open file log") }
    })
    .await
    .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_with_tiny_segments_passes_the_log_suite() {
    // Every batch starts a segment, so truncation has whole segments to delete.
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicU32::new(0);
    log_suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("log-{n}"));
        async move {
            FileLog::open_with(path, FileLogConfig { segment_bytes: 1 }).expect("open file log")
        }
    })
    .await
    .assert_passed();
}

#[tokio::test]
async fn mem_coordinator_passes_the_coordinator_suite() {
    coord_suite(|| async { MemCoordinator::new() })
        .await
        .assert_passed();
}

#[tokio::test]
async fn one_coordinator_shared_by_every_case_passes_the_suite() {
    // As against a real server: cases share one tree and tell their paths apart by name.
    let shared = MemCoordinator::new();
    coord_suite(|| {
        let c = shared.clone();
        async move { c }
    })
    .await
    .assert_passed();
}

/// A broker that ignores the prefetch bound: the suite must notice.
struct NoPrefetch(MemBroker);

#[async_trait::async_trait]
impl Broker for NoPrefetch {
    async fn declare(&self, queue: &str) -> rideshare_dbaas::Result<()> {
        self.0.declare(queue).await
    }
    async fn declare_exclusive(&self, queue: &str) -> rideshare_dbaas::Result<()> {
        self.0.declare_exclusive(queue).await
    }
    async fn publish(&self, queue: &str, message: Message) -> rideshare_dbaas::Result<()> {
        self.0.publish(queue, message).await
    }
    async fn consume(
        &self,
        queue: &str,
        _prefetch: u16,
    ) -> rideshare_dbaas::Result<Box<dyn Consumer>> {
        self.0.consume(queue, 0).await
    }
    async fn consume_prioritized(
        &self,
        queue: &str,
        _prefetch: u16,
        priority: i32,
    ) -> rideshare_dbaas::Result<Box<dyn Consumer>> {
        self.0.consume_prioritized(queue, 0, priority).await
    }
}

#[tokio::test(start_paused = true)]
async fn broker_suite_fails_a_broker_that_ignores_prefetch() {
    let report = broker_suite(|| async { NoPrefetch(MemBroker::new()) }).await;
    let failed: Vec<&str> = report.failures().map(|c| c.name).collect();
    assert_eq!(
        failed,
        // Priorities rest on prefetch: a full high-priority consumer is what lets a low one in.
        [
            "consumer_holds_at_most_prefetch_unacked",
            "higher_priority_consumer_with_room_gets_every_message"
        ],
        "{report}"
    );
}

/// A log that reports one entry too few at its end: the suite must notice.
struct ShortEnd(MemLog);

#[async_trait::async_trait]
impl Log for ShortEnd {
    fn append(&self, data: Bytes) -> Appended {
        self.0.append(data)
    }
    async fn read_from(&self, from: u64) -> rideshare_dbaas::Result<Box<dyn LogReader>> {
        self.0.read_from(from).await
    }
    async fn end(&self) -> rideshare_dbaas::Result<u64> {
        Ok(self.0.end().await?.saturating_sub(1))
    }
}

#[tokio::test(start_paused = true)]
async fn log_suite_fails_a_log_with_a_wrong_end() {
    let report = log_suite(|| async { ShortEnd(MemLog::new()) }).await;
    assert!(!report.passed());
    assert!(
        report.failures().any(|c| c.name == "end_is_the_last_index"),
        "{report}"
    );
}

/// A log that only enqueues an append when its confirmation is first polled, so the order is
/// the order of the awaits rather than of the calls: the suite must notice.
struct OrderedWhenPolled(MemLog);

#[async_trait::async_trait]
impl Log for OrderedWhenPolled {
    fn append(&self, data: Bytes) -> Appended {
        let log = self.0.clone();
        Appended::pending(async move { log.append(data).await })
    }
    async fn read_from(&self, from: u64) -> rideshare_dbaas::Result<Box<dyn LogReader>> {
        self.0.read_from(from).await
    }
    async fn end(&self) -> rideshare_dbaas::Result<u64> {
        self.0.end().await
    }
}

#[tokio::test(start_paused = true)]
async fn log_suite_fails_a_log_that_orders_appends_when_first_polled() {
    let report = log_suite(|| async { OrderedWhenPolled(MemLog::new()) }).await;
    let failed: Vec<&str> = report.failures().map(|c| c.name).collect();
    assert_eq!(
        failed,
        ["appends_enqueued_then_confirmed_in_reverse_keep_call_order"],
        "{report}"
    );
}

/// A log that drops one entry more than asked: the suite must notice.
struct TruncatesTooMuch(MemLog);

#[async_trait::async_trait]
impl Log for TruncatesTooMuch {
    fn append(&self, data: Bytes) -> Appended {
        self.0.append(data)
    }
    async fn read_from(&self, from: u64) -> rideshare_dbaas::Result<Box<dyn LogReader>> {
        self.0.read_from(from).await
    }
    async fn end(&self) -> rideshare_dbaas::Result<u64> {
        self.0.end().await
    }
    async fn truncate_before(&self, index: u64) -> rideshare_dbaas::Result<u64> {
        self.0.truncate_before(index + 1).await
    }
    async fn first(&self) -> rideshare_dbaas::Result<u64> {
        self.0.first().await
    }
}

#[tokio::test(start_paused = true)]
async fn log_suite_fails_a_log_that_truncates_at_the_index() {
    let report = log_suite(|| async { TruncatesTooMuch(MemLog::new()) }).await;
    let failed: Vec<&str> = report.failures().map(|c| c.name).collect();
    assert_eq!(
        failed,
        ["truncation_keeps_every_entry_at_or_above_the_index"],
        "{report}"
    );
}

/// A log that drops what it is asked to but says it kept everything: the suite must notice.
struct HidesItsFirst(MemLog);

#[async_trait::async_trait]
impl Log for HidesItsFirst {
    fn append(&self, data: Bytes) -> Appended {
        self.0.append(data)
    }
    async fn read_from(&self, from: u64) -> rideshare_dbaas::Result<Box<dyn LogReader>> {
        self.0.read_from(from).await
    }
    async fn end(&self) -> rideshare_dbaas::Result<u64> {
        self.0.end().await
    }
    async fn truncate_before(&self, index: u64) -> rideshare_dbaas::Result<u64> {
        self.0.truncate_before(index).await?;
        Ok(1)
    }
}

#[tokio::test(start_paused = true)]
async fn log_suite_fails_a_log_that_hides_what_it_dropped() {
    let report = log_suite(|| async { HidesItsFirst(MemLog::new()) }).await;
    let failed: Vec<&str> = report.failures().map(|c| c.name).collect();
    assert_eq!(
        failed,
        [
            "truncation_keeps_every_entry_at_or_above_the_index",
            "truncating_up_to_the_end_keeps_the_next_index",
            "a_reader_behind_the_truncation_gets_log_truncated"
        ],
        "{report}"
    );
}

// ---- helpers ----------------------------------------------------------------------------------

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

async fn recv(consumer: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("no error")
}

async fn quiet(consumer: &mut Box<dyn Consumer>) -> bool {
    tokio::time::timeout(Duration::from_millis(100), consumer.next())
        .await
        .is_err()
}

async fn publish(broker: &MemBroker, queue: &str, body: &str) {
    broker
        .publish(queue, Message::new(body.to_owned()))
        .await
        .expect("publish");
}

async fn next_record(reader: &mut Box<dyn LogReader>) -> Record {
    tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("a record in time")
        .expect("log open")
        .expect("no error")
}

async fn all_records(log: &impl Log) -> Vec<Bytes> {
    let end = log.end().await.expect("end");
    let mut reader = log.read_from(1).await.expect("read_from");
    let mut out = Vec::new();
    for _ in 0..end {
        out.push(next_record(&mut reader).await.data);
    }
    out
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

// ---- MemBroker --------------------------------------------------------------------------------

#[tokio::test]
async fn consumers_are_served_round_robin() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(broker.consume("q", 10).await.unwrap());
    }
    for i in 0..6 {
        publish(&broker, "q", &format!("m{i}")).await;
    }
    for (c, want) in consumers
        .iter_mut()
        .zip([["m0", "m3"], ["m1", "m4"], ["m2", "m5"]])
    {
        let got = [text(&recv(c).await), text(&recv(c).await)];
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn queue_len_and_unacked_count_what_waits_and_what_is_held() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    for i in 0..5 {
        publish(&broker, "q", &format!("m{i}")).await;
    }
    assert_eq!((broker.queue_len("q"), broker.unacked("q")), (5, 0));
    let mut c = broker.consume("q", 2).await.unwrap();
    assert_eq!((broker.queue_len("q"), broker.unacked("q")), (3, 2));
    let d = recv(&mut c).await;
    d.ack().await.unwrap();
    assert_eq!((broker.queue_len("q"), broker.unacked("q")), (2, 2));
    assert!(
        d.ack().await.is_err(),
        "a second ack of one delivery is refused"
    );
    assert_eq!(broker.queue_len("absent"), 0);
    assert_eq!(broker.consumer_count("q"), 1);
}

#[tokio::test]
async fn dropped_consumer_requeues_its_messages_at_the_front_in_order() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    for i in 0..4 {
        publish(&broker, "q", &format!("m{i}")).await;
    }
    let mut first = broker.consume("q", 2).await.unwrap();
    let taken = recv(&mut first).await;
    assert_eq!(text(&taken), "m0");
    drop(first);
    assert!(
        taken.ack().await.is_err(),
        "ack after the consumer went away"
    );
    assert_eq!((broker.queue_len("q"), broker.unacked("q")), (4, 0));
    let mut second = broker.consume("q", 10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = recv(&mut second).await;
        got.push((text(&d), d.redelivered));
    }
    assert_eq!(
        got,
        [
            ("m0".to_owned(), true),
            ("m1".to_owned(), true),
            ("m2".to_owned(), false),
            ("m3".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn publish_to_an_undeclared_queue_is_confirmed_and_dropped() {
    let broker = MemBroker::new();
    publish(&broker, "nowhere", "lost").await;
    assert!(broker.queues().is_empty());
    broker.declare("nowhere").await.unwrap();
    assert_eq!(broker.queue_len("nowhere"), 0);
    assert!(matches!(
        broker.consume("other", 1).await.err(),
        Some(Error::QueueClosed(_))
    ));
}

#[tokio::test]
async fn full_drop_rate_loses_every_message_but_confirms() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    broker.set_drop_rate(1.0);
    for _ in 0..10 {
        publish(&broker, "q", "x").await;
    }
    assert_eq!(broker.queue_len("q"), 0);
    broker.set_drop_rate(0.0);
    publish(&broker, "q", "kept").await;
    assert_eq!(broker.queue_len("q"), 1);
}

#[tokio::test]
async fn drops_follow_the_seed() {
    async fn survivors(seed: u64) -> Vec<String> {
        let broker = MemBroker::with_seed(seed);
        broker.declare("q").await.unwrap();
        broker.set_drop_rate(0.5);
        for i in 0..64 {
            publish(&broker, "q", &format!("m{i}")).await;
        }
        // Prefetch 0 (unbounded) dispatches every survivor at once.
        let mut c = broker.consume("q", 0).await.unwrap();
        let mut out = Vec::new();
        while let Some(Some(Ok(d))) = c.next().now_or_never() {
            out.push(text(&d));
        }
        out
    }
    let a = survivors(42).await;
    assert_eq!(a, survivors(42).await, "same seed, same drops");
    assert!(
        a.len() > 10 && a.len() < 54,
        "about half dropped: {}",
        a.len()
    );
    assert_ne!(a, survivors(43).await, "another seed, other drops");
}

#[tokio::test(start_paused = true)]
async fn delay_holds_back_each_publish() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    let mut c = broker.consume("q", 1).await.unwrap();
    broker.set_delay(Duration::from_millis(250));
    let started = tokio::time::Instant::now();
    publish(&broker, "q", "slow").await;
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(text(&recv(&mut c).await), "slow");
}

#[tokio::test]
async fn unavailable_broker_refuses_calls_and_closes_consumers() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    publish(&broker, "q", "m0").await;
    let mut c = broker.consume("q", 1).await.unwrap();
    let held = recv(&mut c).await;
    broker.set_unavailable(true);
    assert!(matches!(
        broker.publish("q", Message::new("x")).await,
        Err(Error::BrokerUnavailable(_))
    ));
    assert!(matches!(
        broker.declare("r").await,
        Err(Error::BrokerUnavailable(_))
    ));
    assert!(matches!(
        broker.consume("q", 1).await.err(),
        Some(Error::BrokerUnavailable(_))
    ));
    assert!(c.next().await.is_none(), "consumer closed by the outage");
    assert!(matches!(held.ack().await, Err(Error::BrokerUnavailable(_))));
    assert_eq!(broker.queue_len("q"), 1, "the unacked message was requeued");

    broker.set_unavailable(false);
    let mut again = broker.consume("q", 1).await.unwrap();
    let d = recv(&mut again).await;
    assert_eq!((text(&d), d.redelivered), ("m0".to_owned(), true));
}

#[tokio::test]
async fn waiting_consumer_is_closed_by_an_outage() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    let mut c = broker.consume("q", 1).await.unwrap();
    let waiting = tokio::spawn(async move { c.next().await.is_none() });
    tokio::task::yield_now().await;
    broker.set_unavailable(true);
    assert!(tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap());
}

#[tokio::test]
async fn deleting_a_queue_closes_its_consumers() {
    let broker = MemBroker::new();
    broker.declare_exclusive("replies").await.unwrap();
    let mut c = broker.consume("replies", 1).await.unwrap();
    assert!(broker.delete_queue("replies"));
    assert!(c.next().await.is_none());
    assert!(!broker.delete_queue("replies"));
    // A queue declared again under the name is a new queue; the old consumer stays closed.
    broker.declare("replies").await.unwrap();
    publish(&broker, "replies", "new").await;
    assert!(c.next().now_or_never().flatten().is_none());
}

#[tokio::test]
async fn prefetch_zero_is_unbounded() {
    let broker = MemBroker::new();
    broker.declare("q").await.unwrap();
    for i in 0..50 {
        publish(&broker, "q", &format!("m{i}")).await;
    }
    let mut c = broker.consume("q", 0).await.unwrap();
    assert_eq!(broker.unacked("q"), 50);
    for _ in 0..50 {
        recv(&mut c).await;
    }
    assert!(quiet(&mut c).await);
}

// ---- MemLog -----------------------------------------------------------------------------------

#[tokio::test]
async fn read_from_zero_reads_from_the_first_entry() {
    let log = MemLog::new();
    log.append(b("a")).await.unwrap();
    let mut r = log.read_from(0).await.unwrap();
    assert_eq!(
        next_record(&mut r).await,
        Record {
            index: 1,
            data: b("a")
        }
    );
}

#[tokio::test]
async fn unavailable_log_refuses_appends_and_reads_then_recovers() {
    let log = MemLog::new();
    log.append(b("a")).await.unwrap();
    let mut r = log.read_from(1).await.unwrap();
    next_record(&mut r).await;
    let waiting = tokio::spawn(async move {
        let during = r.next().await;
        (r, during)
    });
    tokio::task::yield_now().await;
    log.set_unavailable(true);
    let (mut r, during) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(matches!(during, Some(Err(Error::LogUnavailable(_)))));
    assert!(matches!(
        log.append(b("b")).await,
        Err(Error::LogUnavailable(_))
    ));
    assert!(matches!(log.end().await, Err(Error::LogUnavailable(_))));
    assert!(matches!(
        log.read_from(1).await.err(),
        Some(Error::LogUnavailable(_))
    ));

    log.set_unavailable(false);
    log.append(b("c")).await.unwrap();
    assert_eq!(
        next_record(&mut r).await,
        Record {
            index: 2,
            data: b("c")
        },
        "the reader resumes where it was; the refused append left no entry"
    );
}

#[tokio::test(start_paused = true)]
async fn append_delay_holds_back_confirm_and_visibility() {
    let log = MemLog::new();
    log.set_append_delay(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    let append = tokio::spawn({
        let log = log.clone();
        async move { log.append(b("slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.end().await.unwrap(), 0, "not visible before the delay");
    append.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(log.end().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn appends_keep_call_order_even_when_polled_in_reverse() {
    let log = MemLog::new();
    log.set_append_delay(Duration::from_millis(10));
    let appends: Vec<_> = (0..20).map(|i| log.append(b(&format!("{i}")))).collect();
    for result in futures::future::join_all(appends.into_iter().rev()).await {
        result.unwrap();
    }
    let want: Vec<Bytes> = (0..20).map(|i| b(&format!("{i}"))).collect();
    assert_eq!(all_records(&log).await, want);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_append_does_not_block_later_ones() {
    let log = MemLog::new();
    log.set_append_delay(Duration::from_millis(10));
    drop(log.append(b("sent")));
    log.append(b("next")).await.unwrap();
    // Like a request already on the wire, the dropped append still lands, first.
    assert_eq!(all_records(&log).await, vec![b("sent"), b("next")]);
}

#[tokio::test(start_paused = true)]
async fn an_outage_fails_appends_in_flight() {
    let log = MemLog::new();
    log.set_append_delay(Duration::from_millis(10));
    let pending = log.append(b("x"));
    log.set_unavailable(true);
    assert!(matches!(pending.await, Err(Error::LogUnavailable(_))));
    log.set_unavailable(false);
    assert_eq!(log.end().await.unwrap(), 0);
}

// ---- FileLog ----------------------------------------------------------------------------------

#[tokio::test]
async fn file_log_keeps_its_entries_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let log = FileLog::open(&path).unwrap();
        for i in 1..=3 {
            log.append(b(&format!("e{i}"))).await.unwrap();
        }
        log.append(Bytes::new()).await.unwrap();
    }
    let log = FileLog::open(&path).unwrap();
    assert_eq!(log.end().await.unwrap(), 4);
    assert_eq!(
        all_records(&log).await,
        vec![b("e1"), b("e2"), b("e3"), Bytes::new()]
    );
    log.append(b("e5")).await.unwrap();
    drop(log);
    let log = FileLog::open(&path).unwrap();
    assert_eq!(log.end().await.unwrap(), 5);
}

#[tokio::test]
async fn torn_tail_is_truncated_on_open_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let log = FileLog::open(&path).unwrap();
        for i in 1..=3 {
            log.append(b(&format!("entry-{i}"))).await.unwrap();
        }
    }
    let segment = segment_path(&path, 1);
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);

    let log = FileLog::open(&path).unwrap();
    assert_eq!(all_records(&log).await, vec![b("entry-1"), b("entry-2")]);
    log.append(b("entry-3b")).await.unwrap();
    drop(log);
    let log = FileLog::open(&path).unwrap();
    assert_eq!(
        all_records(&log).await,
        vec![b("entry-1"), b("entry-2"), b("entry-3b")]
    );
}

#[tokio::test]
async fn corrupt_or_zeroed_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let log = FileLog::open(&path).unwrap();
        log.append(b("keep")).await.unwrap();
        log.append(b("flip")).await.unwrap();
    }
    // Flip the last byte of the second record's data: its checksum no longer matches.
    let segment = segment_path(&path, 1);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let log = FileLog::open(&path).unwrap();
    assert_eq!(all_records(&log).await, vec![b("keep")]);
    drop(log);

    // A crash can leave the file longer, filled with zeros: not empty records.
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0; 64]);
    std::fs::write(&segment, &bytes).unwrap();
    let log = FileLog::open(&path).unwrap();
    assert_eq!(all_records(&log).await, vec![b("keep")]);
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        8 + 4,
        "file cut back to its whole records"
    );
}

#[tokio::test]
async fn file_log_refuses_a_record_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path().join("log")).unwrap();
    let huge = Bytes::from(vec![0u8; MAX_RECORD_BYTES + 1]);
    assert!(matches!(
        log.append(huge).await,
        Err(Error::LogUnavailable(_))
    ));
    log.append(b("fine")).await.unwrap();
    assert_eq!(log.end().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_appends_keep_call_order_when_polled_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path().join("log")).unwrap();
    let appends: Vec<_> = (0..200).map(|i| log.append(b(&format!("{i}")))).collect();
    for result in futures::future::join_all(appends.into_iter().rev()).await {
        result.unwrap();
    }
    let want: Vec<Bytes> = (0..200).map(|i| b(&format!("{i}"))).collect();
    assert_eq!(all_records(&log).await, want);
}

// ---- MemCoordinator ---------------------------------------------------------------------------

#[tokio::test]
async fn expiring_a_session_removes_its_ephemerals_and_fails_its_calls() {
    let coord = MemCoordinator::new();
    let doomed = coord.connect().await.unwrap();
    let other = coord.connect().await.unwrap();
    assert_eq!(coord.sessions(), vec![doomed.id(), other.id()]);

    let member = doomed
        .create("/members/w-", b("me"), CreateMode::EphemeralSequential)
        .await
        .unwrap();
    assert_eq!(member, "/members/w-0000000000");
    doomed
        .create("/kept", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    let (_, own_watch) = doomed.get_watch("/unrelated").await.unwrap();
    let (_, members_changed) = other.children_watch("/members").await.unwrap();
    let lost = doomed.lost();

    assert!(coord.expire(doomed.id()));
    tokio::time::timeout(WAIT, lost)
        .await
        .expect("lost() resolves");
    tokio::time::timeout(WAIT, members_changed)
        .await
        .expect("other session's children watch fires");
    tokio::time::timeout(WAIT, own_watch)
        .await
        .expect("the expired session's own watch fires");
    assert_eq!(other.get(&member).await.unwrap(), None);
    assert!(
        other.get("/kept").await.unwrap().is_some(),
        "persistent nodes stay"
    );
    assert!(matches!(
        doomed.get("/kept").await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        doomed.create("/x", b(""), CreateMode::Persistent).await,
        Err(Error::SessionExpired)
    ));
    assert!(
        doomed.lost().now_or_never().is_some(),
        "lost() of an ended session is ready"
    );
    assert_eq!(coord.sessions(), vec![other.id()]);
    assert!(!coord.expire(doomed.id()));
}

#[tokio::test]
async fn dropping_a_session_closes_it() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    let id = s.id();
    s.create("/e", b(""), CreateMode::Ephemeral).await.unwrap();
    drop(s);
    assert!(!coord.sessions().contains(&id));
    let observer = coord.connect().await.unwrap();
    assert_eq!(observer.get("/e").await.unwrap(), None);
}

#[tokio::test]
async fn unavailable_coordinator_refuses_calls_but_keeps_sessions() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    s.create("/e", b(""), CreateMode::Ephemeral).await.unwrap();
    coord.set_unavailable(true);
    assert!(matches!(
        coord.connect().await.err(),
        Some(Error::CoordinatorUnavailable(_))
    ));
    assert!(matches!(
        s.get("/e").await,
        Err(Error::CoordinatorUnavailable(_))
    ));
    assert!(
        s.lost().now_or_never().is_none(),
        "an outage alone does not end a session"
    );
    coord.set_unavailable(false);
    assert!(s.get("/e").await.unwrap().is_some());
}

#[tokio::test]
async fn sequence_counters_are_per_parent_and_shared_by_prefixes() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    let mut paths = Vec::new();
    for prefix in ["/a/x-", "/a/y-", "/b/x-", "/a/x-"] {
        paths.push(
            s.create(prefix, b(""), CreateMode::PersistentSequential)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        paths,
        [
            "/a/x-0000000000",
            "/a/y-0000000001",
            "/b/x-0000000000",
            "/a/x-0000000002"
        ]
    );
    // Deleting and recreating the parent does not reset its counter here.
    for p in [
        "/a/x-0000000000",
        "/a/y-0000000001",
        "/a/x-0000000002",
        "/a",
    ] {
        s.delete(p).await.unwrap();
    }
    let again = s
        .create("/a/x-", b(""), CreateMode::PersistentSequential)
        .await
        .unwrap();
    assert_eq!(again, "/a/x-0000000003");
}

#[tokio::test]
async fn zookeeper_refusals_are_kept() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    s.create("/p/c", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    assert!(
        matches!(s.delete("/p").await, Err(Error::Adapter { .. })),
        "a node with children cannot be deleted"
    );
    s.create("/eph", b(""), CreateMode::Ephemeral)
        .await
        .unwrap();
    assert!(
        matches!(
            s.create("/eph/child", b(""), CreateMode::Persistent).await,
            Err(Error::Adapter { .. })
        ),
        "an ephemeral node cannot have children"
    );
    for bad in ["", "relative", "/trailing/", "/double//slash"] {
        assert!(
            matches!(s.get(bad).await, Err(Error::Adapter { .. })),
            "path {bad:?} is refused"
        );
    }
    assert!(matches!(
        s.create("/", b(""), CreateMode::Persistent).await,
        Err(Error::NodeExists(_))
    ));
}

#[tokio::test]
async fn a_watch_fires_at_most_once_and_only_for_its_path() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    let (_, mut watch) = s.get_watch("/w").await.unwrap();
    s.create("/other", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    assert!((&mut watch).now_or_never().is_none(), "a change elsewhere");
    s.create("/w", b(""), CreateMode::Persistent).await.unwrap();
    assert!(watch.now_or_never().is_some());
    // A new watch is needed for the next change; the old one is spent.
    let (now, watch) = s.get_watch("/w").await.unwrap();
    assert_eq!(now, Some((b(""), 0)));
    s.set("/w", b("1"), None).await.unwrap();
    assert!(watch.now_or_never().is_some());
}

#[tokio::test]
async fn unused_watches_do_not_pile_up() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    for _ in 0..1000 {
        let (_, watch) = s.get_watch("/polled").await.unwrap();
        drop(watch);
    }
    // Nothing observable but memory; this pins that registering again after a drop works.
    let (_, watch) = s.get_watch("/polled").await.unwrap();
    s.create("/polled", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    assert!(watch.now_or_never().is_some());
}

#[tokio::test]
async fn children_watch_sees_auto_created_parent_children_once() {
    let coord = MemCoordinator::new();
    let s = coord.connect().await.unwrap();
    let (before, watch) = s.children_watch("/fresh").await.unwrap();
    assert!(before.is_empty());
    s.create("/fresh/deep/leaf", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    assert!(watch.now_or_never().is_some());
    let kids: BTreeSet<String> = s.children("/fresh").await.unwrap().into_iter().collect();
    assert_eq!(kids, BTreeSet::from(["deep".to_owned()]));
}

/// Task workers that run until killed.
fn idle_task_runtime() -> rideshare_dbaas::runtime::tasks::TaskRuntime {
    rideshare_dbaas::runtime::tasks::TaskRuntime::new(
        std::sync::Arc::new(|_| Box::pin(std::future::pending())),
        "conformance",
        100,
    )
}

#[tokio::test]
async fn task_runtime_passes_the_runtime_suite() {
    rideshare_dbaas::conformance::runtime_suite(|| async { idle_task_runtime() })
        .await
        .assert_passed();
}

#[tokio::test]
async fn a_task_worker_that_ends_by_itself_is_no_longer_listed() {
    use rideshare_dbaas::runtime::Runtime;
    let runtime = rideshare_dbaas::runtime::tasks::TaskRuntime::new(
        std::sync::Arc::new(|_| Box::pin(async {})),
        "ends",
        100,
    );
    let w = runtime.start().await.unwrap();
    for _ in 0..100 {
        if runtime.list().await.unwrap().is_empty() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("worker {} that ended is still listed", w.id);
}
