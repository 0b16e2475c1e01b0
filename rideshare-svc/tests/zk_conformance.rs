//! `ZkCoordinator` against a real ZooKeeper (at `RIDESHARE_ZK`, default `127.0.0.1:2181`): the
//! dbaas coordinator conformance suite unchanged, then what only a real server shows: session
//! expiry (ephemeral nodes deleted, watches fired, `lost()` resolved, calls refused), a short
//! outage that a session survives, and how long a dead holder's ephemeral node lingers.
//!
//! Faults are made with a TCP proxy in this file between the adapter and ZooKeeper: "freeze"
//! stops forwarding (a partition, or a holder stopped dead), "cut" closes every connection and
//! refuses new ones (a holder killed: its sockets close, no `CloseSession` is sent).
//!
//! Every run works under its own chroot (`/rideshare-zk-test-<pid>-<nanos>`), removed at the end,
//! so runs sharing one server do not collide. The ZooKeeper tests are ignored by default and
//! fail (not skip) with a clear message when ZooKeeper is not there.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use rideshare_dbaas::conformance::coord_suite;
use rideshare_dbaas::coord::{Coordinator, CreateMode, Session};
use rideshare_dbaas::Error;
use rideshare_svc::adapters::zk::ZkCoordinator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// The connect string under test, checked to answer; panics saying how to get ZooKeeper if not.
async fn require_zk() -> String {
    let connect = std::env::var("RIDESHARE_ZK").unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
    let server = first_server(&connect);
    let why = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&server)).await
    {
        Ok(Ok(_)) => return connect,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 3 s".to_owned(),
    };
    panic!(
        "ZooKeeper is not reachable at {server} (RIDESHARE_ZK={connect:?}): {why}. \
         These tests need a running ZooKeeper: run ./scripts/test.sh, or \
         `scripts/engines.sh start` and set RIDESHARE_ZK"
    );
}

/// `host:port` of the first server of a connect string (`h1:p1,h2:p2/chroot`).
fn first_server(connect: &str) -> String {
    let servers = connect.split('/').next().unwrap_or(connect);
    servers.split(',').next().unwrap_or(servers).to_owned()
}

/// The chroot part of a connect string, or "" if none.
fn chroot_of(connect: &str) -> &str {
    connect.find('/').map_or("", |i| &connect[i..])
}

/// This run's own subtree: a chroot no other run uses.
struct TestRoot {
    /// The connect string as given (it may carry a chroot of its own).
    base: String,
    /// This run's chroot, relative to `base`.
    name: String,
}

impl TestRoot {
    fn new(base: &str, what: &str) -> TestRoot {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TestRoot {
            base: base.to_owned(),
            name: format!("/rideshare-zk-test-{what}-{}-{nanos}", std::process::id()),
        }
    }

    /// The connect string rooted at this run's subtree.
    fn connect(&self) -> String {
        format!("{}{}", self.base, self.name)
    }

    /// The same, through `proxy`.
    fn via(&self, proxy: &Proxy) -> String {
        format!("{}{}{}", proxy.addr, chroot_of(&self.base), self.name)
    }

    /// Deletes the subtree (ephemeral nodes of live sessions included).
    async fn remove(self) {
        let coord = ZkCoordinator::new(&self.base, Duration::from_secs(4));
        let session = coord.connect().await.expect("connect to clean up");
        remove_tree(session.as_ref(), &self.name).await;
    }
}

async fn remove_tree(session: &dyn Session, path: &str) {
    let mut stack = vec![(path.to_owned(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            match session.delete(&node).await {
                Ok(()) | Err(Error::NoNode(_)) => {}
                Err(e) => panic!("clean up: delete {node}: {e}"),
            }
            continue;
        }
        stack.push((node.clone(), true));
        for child in session.children(&node).await.expect("clean up: children") {
            stack.push((format!("{node}/{child}"), false));
        }
    }
}

// ---- a fault-injecting TCP proxy ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Forward both ways.
    Pass,
    /// Hold every connection open but forward nothing (new ones too): a partition.
    Freeze,
    /// Close every connection and every new one at once: the holder is dead.
    Cut,
}

struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (link, links) = watch::channel(Link::Pass);
        let task = tokio::spawn(async move {
            // Dropped with this task (when the proxy is), which aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                if *links.borrow() == Link::Cut {
                    continue;
                }
                let upstream = upstream.clone();
                let links = links.clone();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, links.clone()),
                        pump(server_read, client_write, links),
                    );
                });
            }
        });
        Proxy { addr, link, task }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction while the link passes; waits while frozen; returns (closing its halves)
/// when cut or at end of stream.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut links: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let link = *links.borrow_and_update();
        match link {
            Link::Cut => return,
            Link::Freeze => {
                if links.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Link::Pass => {}
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = links.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

// ---- the tests ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn zk_coordinator_passes_the_coordinator_suite() {
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "suite");
    let connect = root.connect();
    let report = coord_suite(|| {
        let coord = ZkCoordinator::new(&connect, Duration::from_secs(2));
        async move { coord }
    })
    .await;
    println!("{report}");
    root.remove().await;
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn an_expired_session_loses_its_ephemerals_fires_its_watches_and_refuses_calls() {
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "expiry");
    let proxy = Proxy::start(first_server(&zk)).await;
    let holder = ZkCoordinator::new(&root.via(&proxy), Duration::from_secs(1))
        .open()
        .await
        .expect("holder session");
    let observer = ZkCoordinator::new(&root.connect(), Duration::from_secs(4))
        .open()
        .await
        .expect("observer session");
    assert_ne!(holder.id(), observer.id());

    let member = holder
        .create("/members/w-", b("me"), CreateMode::EphemeralSequential)
        .await
        .unwrap();
    let lock = holder
        .create("/lock", b("me"), CreateMode::Ephemeral)
        .await
        .unwrap();
    holder
        .create("/kept", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    let (_, own_data_watch) = holder.get_watch("/unrelated").await.unwrap();
    let (_, own_children_watch) = holder.children_watch("/members").await.unwrap();
    let mut lost = holder.lost();
    assert!(
        (&mut lost).now_or_never().is_none(),
        "lost() of a live session"
    );
    let (_, member_gone) = observer.get_watch(&member).await.unwrap();
    let (_, members_changed) = observer.children_watch("/members").await.unwrap();
    let (_, lock_gone) = observer.get_watch(&lock).await.unwrap();

    // The holder goes silent: the server expires its session after the timeout.
    let silent_at = Instant::now();
    proxy.set(Link::Freeze);
    tokio::time::timeout(WAIT, member_gone)
        .await
        .expect("the observer's watch on the expired session's ephemeral node fires");
    let deleted_after = silent_at.elapsed();
    tokio::time::timeout(WAIT, members_changed)
        .await
        .expect("the observer's children watch fires");
    tokio::time::timeout(WAIT, lock_gone)
        .await
        .expect("the observer's watch on the other ephemeral node fires");
    assert_eq!(observer.get(&member).await.unwrap(), None);
    assert_eq!(observer.get(&lock).await.unwrap(), None);
    assert!(observer.children("/members").await.unwrap().is_empty());
    assert!(
        observer.get("/kept").await.unwrap().is_some(),
        "persistent nodes stay"
    );

    // Let the holder reach the server again: whether it hears "expired" from the server or has
    // concluded it by itself already, its session is over.
    proxy.set(Link::Pass);
    tokio::time::timeout(WAIT, lost)
        .await
        .expect("lost() resolves once the session expired");
    let lost_after = silent_at.elapsed();
    tokio::time::timeout(WAIT, own_data_watch)
        .await
        .expect("the expired session's own data watch fires");
    tokio::time::timeout(WAIT, own_children_watch)
        .await
        .expect("the expired session's own children watch fires");
    assert!(
        holder.lost().now_or_never().is_some(),
        "lost() of an ended session is ready at once"
    );
    assert!(matches!(
        holder.get("/kept").await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        holder.create("/x", b(""), CreateMode::Persistent).await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        holder.children_watch("/members").await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        holder.delete("/kept").await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        holder.set("/kept", b("x"), None).await,
        Err(Error::SessionExpired)
    ));
    println!(
        "silent holder (session timeout {:?}): ephemeral nodes deleted after {} ms, \
         lost() after {} ms",
        holder.session_timeout(),
        deleted_after.as_millis(),
        lost_after.as_millis()
    );
    drop((holder, observer));
    root.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn a_short_outage_fails_calls_in_flight_but_keeps_the_session_and_its_watches() {
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "outage");
    let proxy = Proxy::start(first_server(&zk)).await;
    // 4 s, the longest this server grants (20 ticks of 200 ms): the client declares the
    // connection lost after 2/5 of it, well before the server would expire the session.
    let holder = ZkCoordinator::new(&root.via(&proxy), Duration::from_secs(4))
        .open()
        .await
        .expect("holder session");
    let observer = ZkCoordinator::new(&root.connect(), Duration::from_secs(4))
        .open()
        .await
        .expect("observer session");
    let member = holder
        .create("/member", b("me"), CreateMode::Ephemeral)
        .await
        .unwrap();
    observer
        .create("/config", b("v0"), CreateMode::Persistent)
        .await
        .unwrap();
    let (_, config_changed) = holder.get_watch("/config").await.unwrap();
    let mut lost = holder.lost();

    proxy.set(Link::Freeze);
    let started = Instant::now();
    let during = tokio::time::timeout(WAIT, holder.get(&member))
        .await
        .expect("a call during an outage returns (bounded)");
    assert!(
        matches!(during, Err(Error::CoordinatorUnavailable(_))),
        "a call whose connection is lost: expected CoordinatorUnavailable, got {during:?}"
    );
    let failed_after = started.elapsed();
    observer
        .set("/config", b("v1"), Some(0))
        .await
        .expect("the observer changes the watched node during the outage");
    assert!(
        (&mut lost).now_or_never().is_none(),
        "an outage shorter than the session timeout does not end the session"
    );

    proxy.set(Link::Pass);
    let after = tokio::time::timeout(WAIT, holder.get(&member))
        .await
        .expect("a call after the outage returns");
    assert_eq!(
        after.expect("the session is still usable after the outage"),
        Some((b("me"), 0))
    );
    tokio::time::timeout(WAIT, config_changed)
        .await
        .expect("a watch set before the outage fires for a change made during it");
    assert!(
        lost.now_or_never().is_none(),
        "the session survived the outage"
    );
    assert!(
        observer.get(&member).await.unwrap().is_some(),
        "its ephemeral node too"
    );
    println!(
        "outage: the call in flight failed with CoordinatorUnavailable after {} ms; \
         the session (timeout {:?}) survived",
        failed_after.as_millis(),
        holder.session_timeout()
    );
    drop((holder, observer));
    root.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn measure_how_long_a_dead_holders_ephemeral_node_lingers() {
    const ROUNDS: usize = 3;
    let requested = Duration::from_secs(1);
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "linger");
    let observer = ZkCoordinator::new(&root.connect(), Duration::from_secs(4))
        .open()
        .await
        .expect("observer session");
    observer
        .create("/members", b(""), CreateMode::Persistent)
        .await
        .unwrap();

    // 1. Killed holder: its connection closes without `CloseSession` and it cannot reconnect.
    let proxy = Proxy::start(first_server(&zk)).await;
    let holders = ZkCoordinator::new(&root.via(&proxy), requested);
    let mut killed = Vec::new();
    let mut negotiated = Duration::ZERO;
    for _ in 0..ROUNDS {
        proxy.set(Link::Pass);
        let holder = holders.open().await.expect("holder session");
        negotiated = holder.session_timeout();
        let path = holder
            .create("/members/killed-", b(""), CreateMode::EphemeralSequential)
            .await
            .unwrap();
        let (_, gone) = observer.get_watch(&path).await.unwrap();
        let lost = holder.lost();
        let cut_at = Instant::now();
        proxy.set(Link::Cut);
        tokio::time::timeout(WAIT, gone)
            .await
            .expect("a killed holder's ephemeral node is deleted");
        let deleted = cut_at.elapsed();
        assert_eq!(observer.get(&path).await.unwrap(), None);
        tokio::time::timeout(WAIT, lost)
            .await
            .expect("the killed holder's own lost() resolves");
        killed.push((deleted, cut_at.elapsed()));
    }

    // 2. A client dropped without closing its session (the client crate's detached mode, which
    //    this adapter never uses): the server keeps the session until the timeout.
    let mut dropped = Vec::new();
    for _ in 0..ROUNDS {
        let mut connector = zookeeper_client::Client::connector();
        connector.session_timeout(requested).detached();
        let client = connector
            .connect(&root.connect())
            .await
            .expect("detached client");
        let path = "/members/dropped";
        client
            .create(
                path,
                b"",
                &zookeeper_client::CreateMode::Ephemeral
                    .with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
            .expect("create with the detached client");
        let (_, gone) = observer.get_watch(path).await.unwrap();
        let dropped_at = Instant::now();
        drop(client);
        tokio::time::timeout(WAIT, gone)
            .await
            .expect("a dropped session's ephemeral node is deleted");
        dropped.push(dropped_at.elapsed());
        assert_eq!(observer.get(path).await.unwrap(), None);
    }

    let ms = |d: &Duration| d.as_millis();
    println!(
        "session timeout requested {requested:?}, negotiated {negotiated:?} (tickTime 200 ms here)"
    );
    for (i, (deleted, lost)) in killed.iter().enumerate() {
        println!(
            "killed holder {i}: ephemeral node gone after {} ms; the holder's lost() after {} ms",
            ms(deleted),
            ms(lost)
        );
    }
    for (i, deleted) in dropped.iter().enumerate() {
        println!(
            "dropped-without-close client {i}: ephemeral node gone after {} ms",
            ms(deleted)
        );
    }
    for deleted in killed.iter().map(|(d, _)| d).chain(&dropped) {
        // Not closed (which takes milliseconds) but expired: about one session timeout after
        // the last heartbeat, rounded up to the server's expiry tick.
        assert!(
            *deleted >= negotiated / 2 && *deleted <= negotiated + Duration::from_secs(2),
            "an ephemeral node of a dead session went after {deleted:?}, session timeout {negotiated:?}"
        );
    }
    drop(observer);
    root.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn children_watch_on_an_absent_parent_fires_when_the_parent_appears() {
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "absent-parent");
    let s = ZkCoordinator::new(&root.connect(), Duration::from_secs(4))
        .open()
        .await
        .expect("session");
    let (before, watch) = s.children_watch("/fresh").await.unwrap();
    assert!(before.is_empty());
    s.create("/fresh/deep/leaf", b(""), CreateMode::Persistent)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, watch)
        .await
        .expect("the watch on the absent parent fires once it is created");
    assert_eq!(s.children("/fresh").await.unwrap(), vec!["deep".to_owned()]);
    drop(s);
    root.remove().await;
}

/// Pins where ZooKeeper and the trait's contract part: the sequence counter lives in the parent
/// node, so a parent deleted and created again starts its suffixes over (the in-memory
/// coordinator keeps counting). Nothing may delete a parent whose suffixes must stay unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper: run ./scripts/test.sh"]
async fn zookeeper_restarts_suffixes_under_a_recreated_parent() {
    let zk = require_zk().await;
    let root = TestRoot::new(&zk, "sequence");
    let s = ZkCoordinator::new(&root.connect(), Duration::from_secs(4))
        .open()
        .await
        .expect("session");
    let first = s
        .create("/seq/n-", b(""), CreateMode::PersistentSequential)
        .await
        .unwrap();
    assert_eq!(first, "/seq/n-0000000000");
    s.delete(&first).await.unwrap();
    s.delete("/seq").await.unwrap();
    let again = s
        .create("/seq/n-", b(""), CreateMode::PersistentSequential)
        .await
        .unwrap();
    assert_eq!(
        again, first,
        "ZooKeeper reuses the suffix under a recreated parent"
    );
    drop(s);
    root.remove().await;
}

#[tokio::test]
async fn connecting_to_no_server_fails_with_coordinator_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let started = Instant::now();
    let result = ZkCoordinator::new(&addr.to_string(), Duration::from_millis(500))
        .with_call_timeout(Duration::from_secs(3))
        .connect()
        .await;
    assert!(
        matches!(result, Err(Error::CoordinatorUnavailable(_))),
        "expected CoordinatorUnavailable, got {:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
}
