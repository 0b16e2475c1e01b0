//! The RabbitMQ adapters against a live RabbitMQ (`RIDESHARE_AMQP_URL`, by default
//! `amqp://127.0.0.1:5672/%2f`): the dbaas broker and log conformance suites, unchanged, then
//! what only the real server shows: `end()` (which RabbitMQ does not report directly), reading
//! from the middle of a stream of many chunks, retention (entries dropped, a stream made with
//! other retention arguments), and connection loss and recovery, made by cutting a TCP proxy
//! between the adapter and RabbitMQ (RabbitMQ itself keeps running).
//!
//! The tests that need RabbitMQ are ignored by a plain `cargo test`; `./scripts/test.sh` starts
//! RabbitMQ and runs them. Run without RabbitMQ they fail, saying so; none skips.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use rideshare_dbaas::broker::{Broker, Consumer, Delivery, Message};
use rideshare_dbaas::conformance::{broker_suite, log_suite};
use rideshare_dbaas::log::{Log, LogReader, Record};
use rideshare_dbaas::Error;
use rideshare_svc::adapters::rabbit::{RabbitBroker, RabbitLog, Retention};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

fn url() -> String {
    std::env::var("RIDESHARE_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

/// A name no other test or run uses.
fn unique(prefix: &str) -> String {
    format!("rabbit-test-{prefix}-{:016x}", rand::random::<u64>())
}

/// Fails the test, saying what to do, when RabbitMQ is not there.
async fn require_rabbit() {
    let url = url();
    if let Err(e) = RabbitBroker::connect(&url).await {
        panic!(
            "RabbitMQ is not reachable at RIDESHARE_AMQP_URL={url}: {e}\n\
             start it with `./scripts/engines.sh start`, or run everything with `./scripts/test.sh`"
        );
    }
}

async fn broker() -> RabbitBroker {
    RabbitBroker::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("connect to RabbitMQ at {}: {e}", url()))
}

async fn log(stream: &str) -> RabbitLog {
    RabbitLog::connect(&url(), stream)
        .await
        .unwrap_or_else(|e| panic!("open stream {stream} at {}: {e}", url()))
}

/// Deletes queues and streams a test made, so runs do not pile them up on the server.
async fn delete_queues(names: &[String]) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("connect for cleanup");
    let channel = conn.create_channel().await.expect("channel for cleanup");
    for name in names {
        if let Err(e) = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("could not delete {name}: {e}");
        }
    }
    let _ = conn.close(200, "cleanup done".into()).await;
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

async fn next_record(reader: &mut Box<dyn LogReader>) -> Record {
    match within("log record", reader.next()).await {
        Some(Ok(record)) => record,
        other => panic!("expected a record, got {other:?}"),
    }
}

async fn next_delivery(consumer: &mut Box<dyn Consumer>) -> Delivery {
    match within("delivery", consumer.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(e)) => panic!("expected a delivery, got error {e}"),
        None => panic!("expected a delivery, the consumer ended"),
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i:05}"))
}

// ---- the suites ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn rabbit_broker_passes_the_broker_suite() {
    require_rabbit().await;
    let report = broker_suite(broker).await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn rabbit_log_passes_the_log_suite() {
    require_rabbit().await;
    let streams = Arc::new(Mutex::new(Vec::new()));
    let report = log_suite(|| {
        let stream = unique("log-suite");
        streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream.clone());
        async move { log(&stream).await }
    })
    .await;
    println!("{report}");
    let made = streams.lock().unwrap_or_else(|e| e.into_inner()).clone();
    delete_queues(&made).await;
    report.assert_passed();
}

// ---- end() and reading from an offset -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn end_is_the_entry_count_of_an_empty_and_a_growing_stream() {
    require_rabbit().await;
    let stream = unique("end");
    let log = log(&stream).await;
    // A second connection: the count comes from the server, not from this client's appends.
    let other = self::log(&stream).await;
    assert_eq!(log.end().await.unwrap(), 0, "end of an empty stream");
    assert_eq!(
        other.end().await.unwrap(),
        0,
        "end of an empty stream, other connection"
    );

    for i in 1..=50 {
        log.append(entry(i)).await.unwrap();
        assert_eq!(
            log.end().await.unwrap(),
            i,
            "end right after confirmed append {i}"
        );
        assert_eq!(
            other.end().await.unwrap(),
            i,
            "end seen by another connection"
        );
    }

    // Pipelined appends: once all are confirmed, end counts every one of them.
    let appends: Vec<_> = (51..=550).map(|i| log.append(entry(i))).collect();
    for result in within("500 pipelined appends", futures::future::join_all(appends)).await {
        result.unwrap();
    }
    let end = other.end().await.unwrap();
    assert_eq!(end, 550, "end after 550 confirmed appends");

    // The last index a reader sees is end(), and its data is the last append.
    let mut reader = log.read_from(end).await.unwrap();
    assert_eq!(
        next_record(&mut reader).await,
        Record {
            index: 550,
            data: entry(550)
        }
    );
    drop(reader);
    drop((log, other));
    delete_queues(&[stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn end_during_appends_lies_between_the_confirmed_and_the_started() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    require_rabbit().await;
    let stream = unique("end-busy");
    let log = Arc::new(log(&stream).await);
    let started = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // One writer keeping 16 appends in flight, so chunks of several entries keep coming.
    let writer = tokio::spawn({
        let (log, started, confirmed, stop) = (
            Arc::clone(&log),
            Arc::clone(&started),
            Arc::clone(&confirmed),
            Arc::clone(&stop),
        );
        async move {
            while !stop.load(Ordering::SeqCst) {
                let first = started.fetch_add(16, Ordering::SeqCst) + 1;
                let batch: Vec<_> = (first..first + 16).map(|i| log.append(entry(i))).collect();
                for result in futures::future::join_all(batch).await {
                    result.expect("append");
                }
                confirmed.fetch_add(16, Ordering::SeqCst);
            }
        }
    });
    // Another connection asks for the end while the appends go on.
    let other = self::log(&stream).await;
    let mut probes = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let low = confirmed.load(Ordering::SeqCst);
        let end = other.end().await.unwrap();
        let high = started.load(Ordering::SeqCst);
        assert!(
            low <= end && end <= high,
            "end {end} outside [{low} confirmed before, {high} started after]"
        );
        probes += 1;
    }
    stop.store(true, Ordering::SeqCst);
    within("writer", writer).await.unwrap();
    let total = confirmed.load(Ordering::SeqCst);
    assert_eq!(
        other.end().await.unwrap(),
        total,
        "end once the appends stopped"
    );
    println!("{probes} end() probes during {total} appends");
    drop((log, other));
    delete_queues(&[stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn read_from_the_middle_of_a_stream_of_many_chunks() {
    require_rabbit().await;
    let stream = unique("middle");
    let log = log(&stream).await;
    const COUNT: u64 = 3000;
    // Pipelined in batches: RabbitMQ writes each batch as a few chunks, so an offset in the
    // middle of a chunk is asked for below.
    for batch in 0..COUNT / 500 {
        let appends: Vec<_> = (1..=500)
            .map(|i| log.append(entry(batch * 500 + i)))
            .collect();
        for result in within("append batch", futures::future::join_all(appends)).await {
            result.unwrap();
        }
    }
    assert_eq!(log.end().await.unwrap(), COUNT);

    for from in [2, 777, 1501, 2999, COUNT] {
        let mut reader = log.read_from(from).await.unwrap();
        for index in from..(from + 3).min(COUNT + 1) {
            assert_eq!(
                next_record(&mut reader).await,
                Record {
                    index,
                    data: entry(index)
                },
                "reading from {from}"
            );
        }
    }

    // The whole stream from 1, in order, without gaps.
    let mut reader = log.read_from(1).await.unwrap();
    for index in 1..=COUNT {
        let record = next_record(&mut reader).await;
        assert_eq!(record.index, index);
        assert_eq!(record.data, entry(index));
    }

    // Reading from past the end waits for entries to reach that index.
    let mut ahead = log.read_from(COUNT + 3).await.unwrap();
    let mut at_end = log.read_from(COUNT + 1).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), at_end.next())
            .await
            .is_err(),
        "a reader at the end waits"
    );
    for index in COUNT + 1..=COUNT + 3 {
        log.append(entry(index)).await.unwrap();
    }
    assert_eq!(next_record(&mut at_end).await.index, COUNT + 1);
    assert_eq!(
        next_record(&mut ahead).await,
        Record {
            index: COUNT + 3,
            data: entry(COUNT + 3)
        },
        "a reader from past the end starts at its index"
    );
    drop((reader, ahead, at_end, log));
    delete_queues(&[stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn dropping_many_consumers_and_readers_keeps_the_connection() {
    require_rabbit().await;
    let broker = broker().await;
    let queue = unique("churn");
    let watched = unique("churn-watched");
    broker.declare(&queue).await.unwrap();
    broker.declare(&watched).await.unwrap();
    // A lost connection would end this consumer: it must still get a message at the end.
    let mut survivor = broker.consume(&watched, 1).await.unwrap();
    for i in 0..200 {
        let mut consumer = broker.consume(&queue, 1).await.unwrap();
        if i % 2 == 0 {
            // Dropped holding an unacked delivery: requeued, delivered to the next one.
            broker.publish(&queue, Message::new("m")).await.unwrap();
            let _held = next_delivery(&mut consumer).await;
        }
        drop(consumer);
    }
    broker
        .publish(&watched, Message::new("still here"))
        .await
        .unwrap();
    let alive = next_delivery(&mut survivor).await;
    assert_eq!(alive.message.body, Bytes::from("still here"));
    alive.ack().await.unwrap();

    let stream = unique("churn-stream");
    let log = log(&stream).await;
    for i in 1..=20 {
        log.append(entry(i)).await.unwrap();
    }
    let mut survivor = log.read_from(1).await.unwrap();
    for i in 0..200u64 {
        let mut reader = log.read_from(1 + i % 20).await.unwrap();
        next_record(&mut reader).await;
        assert_eq!(log.end().await.unwrap(), 20);
    }
    for index in 1..=20 {
        assert_eq!(next_record(&mut survivor).await.index, index);
    }
    log.append(entry(21)).await.unwrap();
    assert_eq!(
        next_record(&mut survivor).await.index,
        21,
        "the first reader still follows the tail"
    );
    drop((survivor, log, broker));
    delete_queues(&[queue, watched, stream]).await;
}

// ---- retention ---------------------------------------------------------------------------------

/// An entry of exactly 200 bytes.
fn big_entry(i: u64) -> Bytes {
    let mut text = format!("entry-{i:05}-");
    text.extend(std::iter::repeat_n('x', 200 - text.len()));
    Bytes::from(text)
}

/// The append number `i` a [`big_entry`] holds.
fn big_entry_number(data: &Bytes) -> u64 {
    std::str::from_utf8(&data[6..11])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a big entry: {data:?}"))
}

/// Reads from `from` to the entry of append `last`, checking that the appends come in order,
/// none missing, and that indexes only grow, by one or, at a segment start, two. Returns the
/// reader, the last index, and how many indexes had no entry.
async fn read_appends_in_order(
    log: &RabbitLog,
    from: u64,
    first_append: u64,
    last: u64,
) -> (Box<dyn LogReader>, u64, u64) {
    let mut reader = log.read_from(from).await.unwrap();
    let mut index = from - 1;
    let mut holes = 0;
    for number in first_append..=last {
        let record = next_record(&mut reader).await;
        assert_eq!(
            big_entry_number(&record.data),
            number,
            "append {number}, read from {from}"
        );
        assert_eq!(record.data, big_entry(number));
        let step = record.index - index;
        if number == first_append {
            assert!(step <= 2, "first record {} read from {from}", record.index);
        } else {
            assert!(
                step == 1 || step == 2,
                "index {} after {index}: a segment start skips one index, nothing more",
                record.index
            );
        }
        holes += step - 1;
        index = record.index;
    }
    (reader, index, holes)
}

/// What a new reader from index 1 gets first: `Some(first)` if retention dropped index 1.
async fn truncated_at(log: &RabbitLog) -> Option<u64> {
    let mut reader = log.read_from(1).await.unwrap();
    match within("first read from 1", reader.next()).await {
        Some(Ok(record)) => {
            assert_eq!(
                record.index, 1,
                "a stream still holding entry 1 starts there"
            );
            None
        }
        Some(Err(Error::LogTruncated { first })) => Some(first),
        other => panic!("reading from 1: expected entry 1 or LogTruncated, got {other:?}"),
    }
}

/// Asks RabbitMQ directly to declare `stream` with `arguments` (on a connection of its own):
/// how the stream was made before the log set retention, and what RabbitMQ says to a declare.
async fn raw_declare_stream(stream: &str, retention: Option<(i64, i64)>) -> Result<(), String> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = conn.create_channel().await.expect("raw channel");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    if let Some((max, segment)) = retention {
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(max));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(segment),
        );
    }
    let declared = channel
        .queue_declare(stream.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let _ = conn.close(200, "declared".into()).await;
    declared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn retention_drops_the_oldest_entries_and_a_reader_below_gets_log_truncated() {
    require_rabbit().await;
    let stream = unique("retention");
    // Small, so a few thousand entries go past it: segments of 64 KiB, 256 KiB kept.
    let retention = Retention::new(256 * 1024, 64 * 1024).unwrap();
    let log = RabbitLog::connect_with(&url(), &stream, retention)
        .await
        .unwrap();
    // 4,000 entries of 200 bytes (about 800 KB), then more while retention has not acted yet:
    // RabbitMQ applies it when a segment fills up, and in the background.
    const BATCH: u64 = 500;
    let mut appended = 0;
    loop {
        let appends: Vec<_> = (appended + 1..=appended + BATCH)
            .map(|i| log.append(big_entry(i)))
            .collect();
        for result in within("append batch", futures::future::join_all(appends)).await {
            result.unwrap();
        }
        appended += BATCH;
        if appended >= 4_000 && truncated_at(&log).await.is_some() {
            break;
        }
        assert!(
            appended < 20_000,
            "retention dropped nothing after {appended} entries of 200 bytes"
        );
    }
    // Retention runs in the background: let it settle before reading what it kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = log.end().await.unwrap();
    assert!(
        end >= appended,
        "end {end} after {appended} appends: retention does not move it back"
    );

    // A reader from 1 is told where the stream now starts, and keeps saying it.
    let mut reader = log.read_from(1).await.unwrap();
    let first = match within("read from 1", reader.next()).await {
        Some(Err(Error::LogTruncated { first })) => first,
        other => panic!("read from 1 after retention: expected LogTruncated, got {other:?}"),
    };
    assert!(first > 2 && first <= end, "first kept {first}, end {end}");
    assert!(
        matches!(
            within("read from 1 again", reader.next()).await,
            Some(Err(Error::LogTruncated { first: again })) if again == first
        ),
        "a truncated reader says so on every call"
    );
    // Two below the first index kept: dropped too. One below is the first kept segment's
    // tracking offset, which holds no entry: that reader starts at `first`.
    let mut reader = log.read_from(first - 2).await.unwrap();
    match within("read from first - 2", reader.next()).await {
        Some(Err(Error::LogTruncated { first: said })) => assert_eq!(said, first),
        other => panic!(
            "read from {}: expected LogTruncated, got {other:?}",
            first - 2
        ),
    }
    let mut reader = log.read_from(first - 1).await.unwrap();
    assert_eq!(next_record(&mut reader).await.index, first);
    drop(reader);

    // From the first index kept, every append after the dropped ones, in order, then the tail.
    let mut reader = log.read_from(first).await.unwrap();
    let first_kept = big_entry_number(&next_record(&mut reader).await.data);
    drop(reader);
    let (mut reader, last_index, holes) =
        read_appends_in_order(&log, first, first_kept, appended).await;
    assert_eq!(last_index, end, "the last index read is end()");
    log.append(big_entry(appended + 1)).await.unwrap();
    let tail = next_record(&mut reader).await;
    assert_eq!(tail.data, big_entry(appended + 1));
    assert!(tail.index > end);
    println!(
        "retention dropped appends 1..={} ({} of {appended}, indexes 1..{first}); kept {} \
         appends ({} bytes of payload) at indexes {first}..={end}, {holes} segment-start \
         offsets among them; max {} bytes, segments of {} bytes",
        first_kept - 1,
        first_kept - 1,
        appended - first_kept + 1,
        (appended - first_kept + 1) * 200,
        retention.max_bytes,
        retention.segment_bytes
    );
    drop((reader, log));
    delete_queues(&[stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn a_segment_start_skips_an_index_and_drops_no_entry() {
    require_rabbit().await;
    let stream = unique("segments");
    // Small segments, nothing dropped: 2,000 entries of 200 bytes fill several segments.
    let retention = Retention::new(1 << 30, 64 * 1024).unwrap();
    let log = RabbitLog::connect_with(&url(), &stream, retention)
        .await
        .unwrap();
    const COUNT: u64 = 2_000;
    let appends: Vec<_> = (1..=COUNT).map(|i| log.append(big_entry(i))).collect();
    for result in within("appends", futures::future::join_all(appends)).await {
        result.unwrap();
    }
    let end = log.end().await.unwrap();
    let (_reader, last_index, holes) = read_appends_in_order(&log, 1, 1, COUNT).await;
    assert_eq!(last_index, end, "the last index read is end()");
    assert_eq!(end, COUNT + holes, "end counts the segment-start offsets");
    assert!(
        holes > 0,
        "2,000 entries of 200 bytes fill more than one 64 KiB segment"
    );
    println!("{COUNT} entries: end {end}, {holes} segment-start offsets without an entry");
    drop((_reader, log));
    delete_queues(&[stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn a_stream_made_with_other_retention_is_used_as_it_is() {
    require_rabbit().await;
    // Made without retention, as before the log set any, with two entries in it.
    let stream = unique("old-stream");
    raw_declare_stream(&stream, None).await.unwrap();
    let first = log(&stream).await;
    first.append(entry(1)).await.unwrap();
    drop(first);

    // Asked for other retention, RabbitMQ refuses the declare (406, "inequivalent arg"): the
    // log keeps the stream, its settings and its entries. Through a proxy, to reconnect below.
    let proxy = Proxy::start(rabbit_address()).await;
    let retention = Retention::new(256 * 1024, 64 * 1024).unwrap();
    let log = RabbitLog::connect_with(&proxy.url(), &stream, retention)
        .await
        .unwrap();
    log.append(entry(2)).await.unwrap();
    assert_eq!(log.end().await.unwrap(), 2);
    let mut reader = log.read_from(1).await.unwrap();
    for index in 1..=2 {
        assert_eq!(
            next_record(&mut reader).await,
            Record {
                index,
                data: entry(index)
            }
        );
    }
    // The stream has its own arguments still: none.
    raw_declare_stream(&stream, None)
        .await
        .expect("the stream keeps the arguments it was made with");
    let refused = raw_declare_stream(&stream, Some((256 * 1024, 64 * 1024))).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("inequivalent arg")),
        "the retention asked for was not applied: {refused:?}"
    );

    // After a reconnection the stream is declared again, refused again, and kept again.
    proxy.cut();
    match within("reader during the outage", reader.next()).await {
        Some(Err(Error::LogUnavailable(_))) => {}
        other => panic!("a reader of a lost connection reports it: {other:?}"),
    }
    proxy.restore().await;
    eventually("append after reconnection", async || {
        log.append(entry(3)).await
    })
    .await;
    assert_eq!(next_record(&mut reader).await.index, 3);

    // A stream made with retention, opened with other retention (the defaults): kept as well.
    let made_small = unique("small-stream");
    let small = RabbitLog::connect_with(&url(), &made_small, retention)
        .await
        .unwrap();
    let other = RabbitLog::connect(&url(), &made_small)
        .await
        .expect("a stream with other retention is used as it is");
    other.append(entry(1)).await.unwrap();
    assert_eq!(small.end().await.unwrap(), 1);
    raw_declare_stream(&made_small, Some((256 * 1024, 64 * 1024)))
        .await
        .expect("the stream keeps the retention it was made with");

    drop((reader, log, small, other));
    delete_queues(&[stream, made_small]).await;
}

// ---- connection loss ----------------------------------------------------------------------------

/// A TCP proxy to RabbitMQ that can be cut (every connection dropped, new ones refused) and
/// restored on the same port: a network failure between the adapter and a running RabbitMQ.
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = Proxy {
            port,
            target,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = Arc::clone(&self.tasks);
        let target = self.target.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap_or_else(|e| e.into_inner()).push(pipe);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accept);
    }

    /// Drops every connection through the proxy and stops accepting new ones.
    fn cut(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy again");
        self.serve(listener);
    }

    /// The RabbitMQ URL, through the proxy.
    fn url(&self) -> String {
        let uri: lapin::uri::AMQPUri = url().parse().expect("RIDESHARE_AMQP_URL");
        let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{vhost}",
            uri.authority.userinfo.username, uri.authority.userinfo.password, self.port
        )
    }
}

fn rabbit_address() -> String {
    let uri: lapin::uri::AMQPUri = url().parse().expect("RIDESHARE_AMQP_URL");
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Retries `attempt` until it succeeds or [`WAIT`] passes.
async fn eventually<T>(what: &str, mut attempt: impl AsyncFnMut() -> Result<T, Error>) -> T {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if started.elapsed() > WAIT => {
                panic!("{what}: still failing after {WAIT:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn broker_fails_fast_while_disconnected_and_recovers() {
    require_rabbit().await;
    let proxy = Proxy::start(rabbit_address()).await;
    let broker = RabbitBroker::connect(&proxy.url()).await.unwrap();
    let work = unique("work");
    let replies = unique("replies");
    broker.declare(&work).await.unwrap();
    broker.declare_exclusive(&replies).await.unwrap();
    broker
        .publish(&work, Message::new("held when the link drops"))
        .await
        .unwrap();
    let mut consumer = broker.consume(&work, 1).await.unwrap();
    let held = next_delivery(&mut consumer).await;
    assert!(!held.redelivered);

    proxy.cut();
    // The consumer of the dead connection ends, so its owner can subscribe again.
    assert!(
        within("consumer end", consumer.next()).await.is_none(),
        "a consumer of a lost connection ends"
    );
    assert!(held.ack().await.is_err(), "ack on a lost connection fails");

    // While disconnected every call fails at once.
    let started = Instant::now();
    let publish = broker.publish(&work, Message::new("lost")).await;
    assert!(
        matches!(publish, Err(Error::BrokerUnavailable(_))),
        "publish while disconnected: {publish:?}"
    );
    assert!(matches!(
        broker.consume(&work, 1).await.err(),
        Some(Error::BrokerUnavailable(_))
    ));
    assert!(matches!(
        broker.declare(&work).await,
        Err(Error::BrokerUnavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "calls while disconnected took {:?}",
        started.elapsed()
    );
    assert!(!broker.is_connected());

    // Let the backoff grow for a while, then bring the network back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore().await;
    let reconnect_started = Instant::now();
    let mut consumer = eventually("consume after reconnection", async || {
        broker.consume(&work, 1).await
    })
    .await;
    let reconnected_in = reconnect_started.elapsed();
    assert!(broker.is_connected());

    // The message held unacked by the lost consumer was requeued by RabbitMQ.
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.message.body, Bytes::from("held when the link drops"));
    assert!(
        again.redelivered,
        "a requeued message is marked redelivered"
    );
    again.ack().await.unwrap();

    // The exclusive reply queue died with the old connection and was declared again.
    let mut reply_consumer = broker.consume(&replies, 1).await.unwrap();
    broker
        .publish(&replies, Message::new("reply after reconnection"))
        .await
        .unwrap();
    let reply = next_delivery(&mut reply_consumer).await;
    assert_eq!(reply.message.body, Bytes::from("reply after reconnection"));
    reply.ack().await.unwrap();
    println!("reconnected {reconnected_in:?} after the network came back");

    drop((consumer, reply_consumer, broker));
    delete_queues(&[work]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test.sh"]
async fn log_fails_fast_while_disconnected_and_its_reader_resumes() {
    require_rabbit().await;
    let proxy = Proxy::start(rabbit_address()).await;
    let stream = unique("outage");
    let log = RabbitLog::connect(&proxy.url(), &stream).await.unwrap();
    for i in 1..=3 {
        log.append(entry(i)).await.unwrap();
    }
    let mut reader = log.read_from(1).await.unwrap();
    for index in 1..=3 {
        assert_eq!(next_record(&mut reader).await.index, index);
    }

    proxy.cut();
    match within("reader during the outage", reader.next()).await {
        Some(Err(Error::LogUnavailable(_))) => {}
        other => panic!("a reader of a lost connection reports it once: {other:?}"),
    }
    let started = Instant::now();
    assert!(matches!(
        log.append(entry(99)).await,
        Err(Error::LogUnavailable(_))
    ));
    assert!(matches!(log.end().await, Err(Error::LogUnavailable(_))));
    assert!(matches!(
        log.read_from(1).await.err(),
        Some(Error::LogUnavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "calls while disconnected took {:?}",
        started.elapsed()
    );

    // The reader, called again, waits for the reconnection and resumes where it was.
    let waiting = tokio::spawn(async move {
        let record = next_record(&mut reader).await;
        (reader, record)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore().await;
    eventually("append after reconnection", async || {
        log.append(entry(4)).await
    })
    .await;
    let (mut reader, record) = within("resumed reader", waiting).await.unwrap();
    assert_eq!(
        record,
        Record {
            index: 4,
            data: entry(4)
        },
        "the reader resumes after the last entry it handed out"
    );
    log.append(entry(5)).await.unwrap();
    assert_eq!(next_record(&mut reader).await.index, 5);
    assert_eq!(
        log.end().await.unwrap(),
        5,
        "the refused append left no entry"
    );

    drop((reader, log));
    delete_queues(&[stream]).await;
}

#[tokio::test]
async fn connecting_to_an_absent_rabbitmq_fails_fast() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let started = Instant::now();
    let broker = RabbitBroker::connect("amqp://127.0.0.1:1/%2f").await;
    assert!(
        matches!(broker, Err(Error::BrokerUnavailable(_))),
        "{broker:?}"
    );
    let log = RabbitLog::connect("amqp://127.0.0.1:1/%2f", "absent").await;
    assert!(matches!(log, Err(Error::LogUnavailable(_))), "{log:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
