//! The adapters against the clustered engines of `scripts/engines.sh start-cluster` (3 RabbitMQ
//! nodes, a 3-server ZooKeeper ensemble), with nodes killed under them (kill -9, through the
//! script):
//! - the log's stream is replicated on the 3 nodes; appends go on after the node the log is
//!   connected to is killed, a reader on that node resumes on another from the next index it
//!   needs, and every confirmed append is readable from another node, once;
//! - a ZooKeeper session lives through each of its servers killed in turn (one of them the one
//!   it is connected to), its ephemeral node kept.
//!
//! Needs `RIDESHARE_CLUSTER_AMQP` and `RIDESHARE_CLUSTER_ZK` (which `start-cluster` prints and
//! `./scripts/test.sh` exports); ignored by a plain `cargo test`, failing, not skipping, when
//! they are absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use rideshare_dbaas::coord::{Coordinator, CreateMode};
use rideshare_dbaas::log::Log;
use rideshare_svc::adapters::rabbit::RabbitLog;
use rideshare_svc::adapters::zk::ZkCoordinator;

const HOW: &str = "start the cluster with `scripts/engines.sh start-cluster` and export what it \
                   prints, or run everything with ./scripts/test.sh";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW}"))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/engines.sh")
}

/// Runs `scripts/engines.sh <subcommand> <node>`, panicking if it fails.
fn engines(subcommand: &str, node: usize) {
    let status = Command::new(script())
        .args([subcommand, &node.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run scripts/engines.sh: {e}"));
    assert!(status.success(), "engines.sh {subcommand} {node}: {status}");
}

/// Starts node `node` again when dropped, however the test ends.
struct Restart {
    subcommand: &'static str,
    node: usize,
    done: bool,
}

impl Restart {
    fn now(mut self) {
        self.done = true;
        engines(self.subcommand, self.node);
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if !self.done {
            let _ = Command::new(script())
                .args([self.subcommand, &self.node.to_string()])
                .status();
        }
    }
}

/// The node number (1..=3) of `amqp://host:570N/...` among the cluster's URLs.
fn node_of(shown: &str, urls: &[String]) -> usize {
    let port = shown
        .trim_start_matches("amqp://")
        .split('/')
        .next()
        .and_then(|authority| authority.rsplit(':').next())
        .unwrap_or_else(|| panic!("no port in {shown}"));
    urls.iter()
        .position(|url| url.contains(&format!(":{port}")))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{shown} is none of the cluster's URLs"))
}

/// The members of queue `name` as `rabbitmqctl list_queues` shows them.
fn stream_members(name: &str) -> String {
    for node in [
        "rabbit-c1@localhost",
        "rabbit-c2@localhost",
        "rabbit-c3@localhost",
    ] {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "-n", node, "list_queues", "name", "type", "members"])
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(line) = text.lines().find(|l| l.starts_with(name)) {
                return line.to_owned();
            }
        }
    }
    String::new()
}

#[derive(Default)]
struct Appends {
    /// The payload number of every confirmed append.
    confirmed: BTreeSet<u64>,
    failed: u64,
    /// When each append was confirmed.
    confirmed_at: Vec<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the clustered engines: run ./scripts/test.sh"]
async fn the_stream_survives_the_kill_of_the_node_the_log_is_on() {
    let amqp = env("RIDESHARE_CLUSTER_AMQP");
    let urls: Vec<String> = amqp.split(',').map(str::to_owned).collect();
    assert_eq!(
        urls.len(),
        3,
        "RIDESHARE_CLUSTER_AMQP names 3 nodes: {amqp}"
    );
    let stream = format!("cluster-test-{:08x}", rand::random::<u32>());
    let log = RabbitLog::connect(&amqp, &stream)
        .await
        .unwrap_or_else(|e| panic!("open {stream} on the cluster: {e}"));
    let members = stream_members(&stream);
    assert_eq!(
        members.matches("rabbit-c").count(),
        3,
        "the stream is replicated on the 3 nodes: {members}"
    );
    let on = log.connected_to().expect("connected");
    let node = node_of(&on, &urls);
    println!("log on {on} (node {node}); {members}");

    // A reader on the same connection, from the first entry.
    let mut reader = log.read_from(1).await.expect("reader");
    let read = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let reading = {
        let read = Arc::clone(&read);
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Some(Ok(record)) => {
                        let n: u64 = String::from_utf8_lossy(&record.data)
                            .parse()
                            .expect("payload");
                        read.lock().unwrap().push((record.index, n));
                    }
                    // Reported once per lost connection; the next call resumes.
                    Some(Err(e)) => println!("reader: {e}"),
                    None => return,
                }
            }
        })
    };

    // One writer, 8 appends in flight, a new payload for every append (a failed one is not
    // retried: its payload may or may not be in the stream).
    let appends = Arc::new(Mutex::new(Appends::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let (log, appends, stop) = (log.clone(), Arc::clone(&appends), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..8)
                    .map(|k| {
                        let n = next + k;
                        (n, log.append(Bytes::from(n.to_string())))
                    })
                    .collect();
                next += 8;
                let mut any_failed = false;
                for (n, appended) in batch {
                    match appended.await {
                        Ok(()) => {
                            let mut a = appends.lock().unwrap();
                            a.confirmed.insert(n);
                            a.confirmed_at.push(Instant::now());
                        }
                        Err(_) => {
                            appends.lock().unwrap().failed += 1;
                            any_failed = true;
                        }
                    }
                }
                if any_failed {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let confirmed = || appends.lock().unwrap().confirmed.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed() < 300 {
        assert!(
            Instant::now() < deadline,
            "300 appends not confirmed in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let restart = Restart {
        subcommand: "start-rabbitmq-node",
        node,
        done: false,
    };
    engines("kill-rabbitmq-node", node);
    let killed = Instant::now();
    let before = confirmed();
    let deadline = killed + Duration::from_secs(60);
    while confirmed() < before + 300 {
        assert!(
            Instant::now() < deadline,
            "appends did not go on within 60 s of the kill: {} confirmed since, {} failed",
            confirmed() - before,
            appends.lock().unwrap().failed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writing.await.expect("writer");
    let first_after = appends
        .lock()
        .unwrap()
        .confirmed_at
        .iter()
        .copied()
        .find(|t| *t > killed)
        .map(|t| t - killed);
    let now_on = log.connected_to().unwrap_or_default();
    println!(
        "killed node {node}; log now on {now_on}; first confirm after the kill in {first_after:?}; \
         {} confirmed, {} failed",
        confirmed(),
        appends.lock().unwrap().failed
    );
    assert_ne!(
        node_of(&now_on, &urls),
        node,
        "the log moved to another node"
    );

    // Every confirmed append, from another node than the killed one, once.
    let other = urls[node % urls.len()].clone();
    let elsewhere = RabbitLog::connect(&other, &stream)
        .await
        .unwrap_or_else(|e| panic!("open {stream} at {other}: {e}"));
    let end = elsewhere.end().await.expect("end");
    let mut from_other = elsewhere.read_from(1).await.expect("reader elsewhere");
    let mut seen = BTreeMap::<u64, u64>::new();
    let read_deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    while last < end {
        let left = read_deadline.saturating_duration_since(Instant::now());
        let record = tokio::time::timeout(left, from_other.next())
            .await
            .unwrap_or_else(|_| panic!("read up to {end} from {other} in 30 s: at {last}"))
            .expect("entries")
            .expect("record");
        last = record.index;
        let n: u64 = String::from_utf8_lossy(&record.data)
            .parse()
            .expect("payload");
        assert!(
            seen.insert(n, record.index).is_none(),
            "payload {n} twice in the stream"
        );
    }
    let confirmed_map = appends.lock().unwrap().confirmed.clone();
    let missing: Vec<&u64> = confirmed_map
        .iter()
        .filter(|n| !seen.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed appends not read from {other}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // The reader that was on the killed node resumed: it has every confirmed entry, in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<u64> = read.lock().unwrap().iter().map(|(_, n)| *n).collect();
        if confirmed_map.iter().all(|n| got.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader did not resume: {} of {} confirmed entries read",
            confirmed_map.iter().filter(|n| got.contains(n)).count(),
            confirmed_map.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let indexes: Vec<u64> = read.lock().unwrap().iter().map(|(i, _)| *i).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "the reader handed out indexes in order, each once"
    );
    reading.abort();
    println!(
        "read {} entries from node {} and {} through the resumed reader; end {end}",
        seen.len(),
        node % urls.len() + 1,
        indexes.len()
    );
    restart.now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the clustered engines: run ./scripts/test.sh"]
async fn a_zookeeper_session_survives_each_server_killed_in_turn() {
    let connect = env("RIDESHARE_CLUSTER_ZK");
    let chroot = format!("/rideshare-cluster-test-{:08x}", rand::random::<u32>());
    // tickTime 200 ms: sessions of 4 s at most.
    let zk = ZkCoordinator::new(&format!("{connect}{chroot}"), Duration::from_secs(4));
    let session = zk
        .connect()
        .await
        .unwrap_or_else(|e| panic!("ZooKeeper at {connect}: {e}"));
    let id = session.id();
    session
        .create("/holder", Bytes::from_static(b"x"), CreateMode::Ephemeral)
        .await
        .expect("ephemeral node");
    let mut lost = session.lost();
    for node in 1..=3 {
        let restart = Restart {
            subcommand: "start-zk-server",
            node,
            done: false,
        };
        engines("kill-zk-server", node);
        let killed = Instant::now();
        // Calls go on through the others (after a reconnection if it was on this one).
        let deadline = killed + Duration::from_secs(10);
        let value = Bytes::from(format!("after kill {node}"));
        loop {
            match session.set("/holder", value.clone(), None).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no write within 10 s of killing server {node}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        println!(
            "server {node} killed: a write went through after {:?}",
            killed.elapsed()
        );
        assert_eq!(session.id(), id, "the same session");
        assert!(
            (&mut lost).now_or_never().is_none(),
            "the session was not lost"
        );
        restart.now();
    }
    let (data, _) = session
        .get("/holder")
        .await
        .expect("get")
        .expect("the ephemeral node is still there");
    assert_eq!(data, Bytes::from_static(b"after kill 3"));
    session.delete("/holder").await.expect("delete");
    drop(session);
    // The chroot itself, from the root.
    let root = ZkCoordinator::new(&connect, Duration::from_secs(4));
    if let Ok(s) = root.connect().await {
        let _ = s.delete(&chroot).await;
    }
}
