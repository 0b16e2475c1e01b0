//! `rideshare up` at its edge, over raw sockets as an attacker would send: path tricks sent as
//! is (`curl --path-as-is`) to every admin path reach no admin handler, admin calls need the
//! token, and stalled half-requests are closed without slowing anyone else.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{embedded_up, Client, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use rideshare_svc::up::Up;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `method path` exactly as written and returns the status code (0: the connection was
/// closed without an answer).
async fn raw_status(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Path tricks leading from `prefix` (a path under which the sender may go) to `target` (an
/// admin path), in the forms that have fooled servers and proxies.
fn tricks(prefix: &str, target: &str) -> Vec<String> {
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        "%2e%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%25252e%25252e",
        "..;",
        "..;x=1",
        "%2e%2e;",
        "..%00",
        "%c0%ae%c0%ae",
        "%uff0e%uff0e",
    ];
    let mut out = Vec::new();
    for dot in dots {
        out.push(format!("{prefix}/{dot}/{target}"));
        out.push(format!("{prefix}/x/{dot}/{dot}/{target}"));
    }
    let target_slashed = target.replace('/', "%2f");
    let target_back = target.replace('/', "%5c");
    out.extend([
        format!("{prefix}/..%2f{target_slashed}"),
        format!("{prefix}/%2e%2e%2F{target_slashed}"),
        format!("{prefix}/..%5c{target_back}"),
        format!("{prefix}/..\\{}", target.replace('/', "\\")),
        format!("{prefix}\\..\\{}", target.replace('/', "\\")),
        format!("{prefix}//../{target}"),
        format!("{prefix}/.//{target}"),
        format!("{prefix}/./../{target}"),
        format!("/api/v1//{target}"),
        format!("//api/v1/{target}"),
        format!("/api/v1/{target}/"),
        format!("/api/v1/{target}/."),
        format!("/api/v1/{target}%00"),
        format!("/api/v1/{target}%2f"),
        format!("/api/v1/./{target}"),
    ]);
    out
}

struct Counts {
    users: Vec<String>,
    rides: u64,
    users_count: u64,
    rides_count: u64,
    pids: Vec<u64>,
}

async fn counts(up: &Up, c: &Client) -> Counts {
    let get = |url: String| async move {
        let (_, body) = c.call(Method::GET, url, None).await;
        body[0].as_u64().unwrap()
    };
    let rides = match c.api(Method::GET, "/api/v1/rides/count", None).await {
        (StatusCode::OK, body) => body[0].as_u64().unwrap(),
        other => panic!("{other:?}"),
    };
    Counts {
        users: c.users().await,
        rides,
        users_count: get(format!("http://{}/api/v1/_count", up.users)).await,
        rides_count: get(format!("http://{}/api/v1/_count", up.rides)).await,
        pids: c.pids().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_to_every_admin_path_reach_no_admin_handler() {
    let dir = tempfile::tempdir().unwrap();
    // No token: only the path rule stands between a trick and an admin handler.
    let (up, c) = embedded_up(dir.path(), |args| args.http.admin_token = None).await;
    assert_eq!(c.add_user("asha").await, StatusCode::CREATED);
    let ride = json!({"created_by": "asha", "timestamp": "01-09-2099:05-10-17", "source": 1, "destination": 2});
    assert_eq!(
        c.api(Method::POST, "/api/v1/rides", Some(ride)).await.0,
        StatusCode::CREATED
    );
    let before = counts(&up, &c).await;

    let mut sent = 0;
    // Through the gateway (the public door), from the users and rides prefixes to the
    // services' admin paths; then straight at each service and at the orchestrator.
    let service_admin = ["db/clear", "_count"];
    let orchestrator_admin = [
        "db/clear",
        "crash/master",
        "crash/slave",
        "db/write",
        "db/read",
    ];
    let mut targets: Vec<(SocketAddr, &str, &str)> = Vec::new();
    for target in service_admin {
        for prefix in ["/api/v1/users", "/api/v1/rides", "/api/v1/rides/1"] {
            targets.push((up.gateway, prefix, target));
        }
        targets.push((up.users, "/api/v1/users", target));
        targets.push((up.rides, "/api/v1/rides", target));
    }
    for target in orchestrator_admin {
        targets.push((up.orchestrator, "/api/v1/worker", target));
        targets.push((up.orchestrator, "/health", target));
    }
    for (addr, prefix, target) in targets {
        let list = tricks(prefix, target);
        assert!(list.len() >= 30);
        for path in list {
            for method in ["POST", "DELETE"] {
                let status = raw_status(addr, method, &path, None).await;
                assert!(
                    status == 400 || status == 404,
                    "{method} {path} on {addr} answered {status}"
                );
                sent += 1;
            }
        }
    }
    let after = counts(&up, &c).await;
    assert_eq!(after.users, before.users);
    assert_eq!(after.rides, before.rides);
    assert_eq!(after.pids, before.pids, "no worker was crashed");
    // No counted request and no reset: the counters moved only by our own count reads.
    assert!(after.users_count >= before.users_count);
    assert!(after.rides_count >= before.rides_count);
    assert!(sent > 1000, "{sent}");

    // The plain admin path still works without a token (the course contract).
    assert_eq!(
        raw_status(up.users, "POST", "/api/v1/db/clear", None).await,
        200
    );
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_admin_call_answers_401_without_it_and_works_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = embedded_up(dir.path(), |_| {}).await;
    let admin = [
        (up.orchestrator, "GET", "/api/v1/worker/list"),
        (up.orchestrator, "POST", "/api/v1/db/read"),
        (up.orchestrator, "POST", "/api/v1/db/write"),
        (up.orchestrator, "POST", "/api/v1/db/clear"),
        (up.orchestrator, "POST", "/api/v1/crash/slave"),
        (up.orchestrator, "POST", "/api/v1/crash/master"),
        (up.orchestrator, "POST", "/api/v1/switchover"),
        (up.orchestrator, "GET", "/api/v1/status"),
        (up.orchestrator, "GET", "/api/v1/workers"),
        (up.orchestrator, "GET", "/api/v1/events"),
        (up.users, "POST", "/api/v1/db/clear"),
        (up.users, "DELETE", "/api/v1/_count"),
        (up.rides, "POST", "/api/v1/db/clear"),
        (up.rides, "DELETE", "/api/v1/_count"),
        (up.gateway, "POST", "/api/v1/db/clear"),
        (up.gateway, "DELETE", "/api/v1/_count"),
    ];
    for (addr, method, path) in admin {
        for token in [None, Some("wrong"), Some("e2e-admin-toke")] {
            let status = raw_status(addr, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} on {addr} with {token:?}");
        }
    }
    assert_eq!(c.pids().await.len(), 2, "nothing was crashed");
    // With the token (the test client sends it): each works.
    let ok = |status: u16| (200..300).contains(&status) || status == 400;
    for (addr, method, path) in admin {
        // Crashes, hand-overs and the endless event stream are driven by their own tests.
        if path.starts_with("/api/v1/crash")
            || path.ends_with("switchover")
            || path.ends_with("events")
        {
            continue;
        }
        let status = raw_status(addr, method, path, Some(ADMIN_TOKEN)).await;
        assert!(
            ok(status),
            "{method} {path} on {addr} with the token: {status}"
        );
    }
    let (status, body) = c.orch(Method::POST, "/api/v1/crash/slave").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The public API needs no token: the services send it to the orchestrator themselves.
    assert_eq!(c.add_user("asha").await, StatusCode::CREATED);
    let (status, _) = c
        .call(
            Method::GET,
            format!("http://{}/api/v1/users", up.gateway),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_half_requests_are_closed_and_do_not_slow_others() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = embedded_up(dir.path(), |_| {}).await;
    assert_eq!(c.add_user("asha").await, StatusCode::CREATED);

    // 500 connections each send half a request and stall.
    let stalled_at = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(up.gateway).await.unwrap();
        stream
            .write_all(b"GET /api/v1/users HTTP/1.1\r\nhost: x\r\nx-half: ")
            .await
            .unwrap();
        stalled.push(stream);
    }

    // A normal request on a fresh connection each time stays fast.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let response = client
            .get(format!("http://{}/api/v1/users", up.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_millis(100), "slowest {slowest:?}");

    // Each stalled connection is closed by the server within 30 s (the header-read timeout).
    for stream in &mut stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(
            Duration::from_secs(30).saturating_sub(stalled_at.elapsed()),
            stream.read(&mut buf),
        )
        .await;
        match read {
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => panic!("a stalled connection was still open after 30 s"),
        }
    }
    let closed_after = stalled_at.elapsed();
    assert!(closed_after < Duration::from_secs(30), "{closed_after:?}");
    println!(
        "500 stalled connections closed after {closed_after:?}; slowest normal request {slowest:?}"
    );
    up.stop().await.unwrap();
}
