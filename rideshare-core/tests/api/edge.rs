//! The edge every service keeps: the path rule (tricks get 400 and reach no handler, the
//! gateway forwards exactly the canonical path it matched), the admin token, the bound on
//! requests in flight (503 at once) and the request timeout (504).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use rideshare_core::api::gateway::routes_to_users;
use rideshare_core::api::path::canonical_path;
use rideshare_core::api::{
    gateway_router, rides_router, users_router, AdminToken, PasswordHashing, ServiceLimits,
};
use rideshare_core::clock::FixedClock;
use rideshare_core::db::{Db, DbError, LocalDb};
use rideshare_core::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};
use rideshare_core::store::MemStore;
use serde_json::{json, Value};

use crate::helpers::{
    big_request, call, gateway_config, json_body, rides_config, send, serve, ts, url, NOW, PASSWORD,
};

const TOKEN: &str = "edge-test-token";

fn with_token() -> ServiceLimits {
    ServiceLimits {
        admin: AdminToken::new(TOKEN),
        ..ServiceLimits::default()
    }
}

fn users_and_rides(limits: ServiceLimits) -> (Router, Router) {
    let db = LocalDb::new(MemStore::new());
    let users = users_router(
        db.clone(),
        PasswordHashing::fast_for_tests(),
        limits.clone(),
    );
    let rides = rides_router(
        db,
        Arc::new(FixedClock::new(ts(NOW))),
        rides_config("http://127.0.0.1:9".into(), "http://127.0.0.1:9".into()),
        limits,
    );
    (users, rides)
}

async fn with_bearer(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> StatusCode {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(router, request.body(Body::empty()).unwrap())
        .await
        .status
}

#[tokio::test]
async fn with_a_token_every_admin_call_needs_it_and_other_calls_do_not() {
    let (users, rides) = users_and_rides(with_token());
    for router in [&users, &rides] {
        for (method, path) in [
            (Method::POST, "/api/v1/db/clear"),
            (Method::DELETE, "/api/v1/_count"),
        ] {
            let reply = call(router, method.clone(), path, Body::empty()).await;
            reply.assert_status(StatusCode::UNAUTHORIZED);
            assert!(reply.json()["error"].as_str().unwrap().contains("Bearer"));
            for wrong in ["", "edge-test-toke", "edge-test-token2"] {
                let status = with_bearer(router, method.clone(), path, Some(wrong)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {wrong:?}");
            }
            assert_eq!(
                with_bearer(router, method.clone(), path, Some(TOKEN)).await,
                StatusCode::OK,
                "{path}"
            );
        }
        // Not admin calls: open.
        let count = call(router, Method::GET, "/api/v1/_count", Body::empty()).await;
        count.assert_status(StatusCode::OK);
    }
    let body = json!({"username": "asha", "password": PASSWORD});
    call(&users, Method::PUT, "/api/v1/users", json_body(&body))
        .await
        .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn without_a_token_admin_calls_stay_open() {
    let (users, rides) = users_and_rides(ServiceLimits::default());
    for router in [&users, &rides] {
        assert_eq!(
            with_bearer(router, Method::POST, "/api/v1/db/clear", None).await,
            StatusCode::OK
        );
    }
}

/// Path tricks that `http::Uri` accepts (raw backslashes and NULs are refused before a router
/// sees them; the socket test in rideshare-svc sends those).
const TRICKS: &[&str] = &[
    "/api/v1/users/../db/clear",
    "/api/v1/users/%2e%2e/db/clear",
    "/api/v1/users/%2E%2E/db/clear",
    "/api/v1/users/%2e./db/clear",
    "/api/v1/users/.%2E/db/clear",
    "/api/v1/users/%252e%252e/db/clear",
    "/api/v1/users/..;/db/clear",
    "/api/v1/users/..;x=1/db/clear",
    "/api/v1/users/%2e%2e;/db/clear",
    "/api/v1/users/..%2fdb%2fclear",
    "/api/v1/users/%2e%2e%2Fdb%2Fclear",
    "/api/v1/users/..%5cdb%5cclear",
    "/api/v1/users/%c0%ae%c0%ae/db/clear",
    "/api/v1//db/clear",
    "//api/v1/db/clear",
    "/api/v1/db/clear/",
    "/api/v1/db/./clear",
    "/api/v1/db/clear%00",
    "/api/v1/rides/1/../../db/clear",
    "/api/v1/rides/%2e%2e/%2e%2e/_count",
];

#[tokio::test]
async fn path_tricks_get_400_from_every_service_and_reach_no_handler() {
    let (users, rides) = users_and_rides(ServiceLimits::default());
    let body = json!({"username": "asha", "password": PASSWORD});
    call(&users, Method::PUT, "/api/v1/users", json_body(&body))
        .await
        .assert_status(StatusCode::CREATED);
    for router in [&users, &rides] {
        for path in TRICKS {
            for method in [Method::POST, Method::DELETE, Method::GET] {
                let reply = call(router, method.clone(), path, Body::empty()).await;
                reply.assert_status(StatusCode::BAD_REQUEST);
                assert!(reply.json()["error"].is_string(), "{method} {path}");
            }
        }
    }
    let listed = call(&users, Method::GET, "/api/v1/users", Body::empty()).await;
    assert_eq!(listed.json(), json!(["asha"]));
    // The rejected requests were not counted either (they reached no route).
    let count = call(&users, Method::GET, "/api/v1/_count", Body::empty()).await;
    assert_eq!(count.json(), json!([2]));
}

/// A gateway in front of two upstreams that answer 418 with the path they were sent.
async fn gateway_with_echoes() -> Router {
    let echo = |name: &'static str| {
        Router::new().fallback(move |uri: axum::http::Uri| async move {
            (
                StatusCode::IM_A_TEAPOT,
                axum::Json(json!({"service": name, "path": uri.path()})),
            )
        })
    };
    let users = serve(echo("users")).await;
    let rides = serve(echo("rides")).await;
    gateway_router(
        gateway_config(url(users), url(rides)),
        ServiceLimits::default(),
    )
}

fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "api",
            "v1",
            "users",
            "rides",
            "db",
            "clear",
            "_count",
            "crash",
            "master",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "%252e%252e",
            "..;",
            "%2e%2e;x",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "%00",
            "",
            "a",
            "%61",
            "%c0%ae",
            "%ff",
            "x%20y",
            "%25",
            "50%25",
            "~",
            "%7e",
            ";",
            ":",
            "%3b",
            "%u002e",
            "%%32%65",
            "..%00",
            "%e2%80%a8",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9%._;~:@!$&'()*+,=-]{0,6}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(path_piece(), 0..7),
        prop::option::of("[a-z0-9=&%.]{0,8}"),
    )
        .prop_map(|(pieces, query)| {
            let mut path = format!("/{}", pieces.join("/"));
            if let Some(query) = query {
                path.push('?');
                path.push_str(&query);
            }
            path
        })
}

#[test]
fn the_gateway_refuses_a_path_or_forwards_exactly_the_canonical_path_it_matched() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gateway = runtime.block_on(gateway_with_echoes());
    let config = ProptestConfig {
        cases: 768,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(raw in raw_path())| {
        let Ok(request) = Request::builder().uri(raw.as_str()).body(Body::empty()) else {
            // Not a URI at all: a server refuses it before any router.
            return Ok(());
        };
        let reply = runtime.block_on(send(&gateway, request));
        let path_only = raw.split('?').next().unwrap_or_default();
        match canonical_path(path_only) {
            Err(_) => prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", raw),
            Ok(canonical) => {
                prop_assert_eq!(reply.status, StatusCode::IM_A_TEAPOT, "{}", raw);
                let echo: Value = reply.json();
                prop_assert_eq!(echo["path"].as_str(), Some(canonical.as_str()), "{}", raw);
                let service = if routes_to_users(&canonical) { "users" } else { "rides" };
                prop_assert_eq!(echo["service"].as_str(), Some(service), "{}", raw);
                // What was forwarded is itself canonical: no later hop can read it otherwise.
                prop_assert_eq!(canonical_path(&canonical), Ok(canonical.clone()));
            }
        }
    });
}

/// A database whose every call waits, to hold requests in flight.
#[derive(Clone)]
struct SlowDb(Duration);

#[async_trait::async_trait]
impl Db for SlowDb {
    async fn write(&self, _op: WriteOp) -> Result<WriteOutcome, DbError> {
        tokio::time::sleep(self.0).await;
        Ok(WriteOutcome::Done)
    }
    async fn read(&self, _op: ReadOp) -> Result<ReadOutcome, DbError> {
        tokio::time::sleep(self.0).await;
        Ok(ReadOutcome::Users { users: vec![] })
    }
}

#[tokio::test]
async fn past_the_bound_of_requests_in_flight_the_answer_is_503_at_once() {
    let limits = ServiceLimits {
        max_in_flight: 2,
        ..ServiceLimits::default()
    };
    let users = users_router(
        SlowDb(Duration::from_millis(500)),
        PasswordHashing::fast_for_tests(),
        limits,
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let users = users.clone();
            tokio::spawn(
                async move { call(&users, Method::GET, "/api/v1/users", Body::empty()).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let request = Request::get("/api/v1/users").body(Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(users.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    for request in held {
        request.await.unwrap().assert_status(StatusCode::NO_CONTENT);
    }
    // Capacity is back once they finish.
    call(&users, Method::GET, "/api/v1/users", Body::empty())
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_request_past_the_timeout_gets_504_with_a_json_error() {
    let limits = ServiceLimits {
        request_timeout: Duration::from_millis(100),
        ..ServiceLimits::default()
    };
    let users = users_router(
        SlowDb(Duration::from_secs(5)),
        PasswordHashing::fast_for_tests(),
        limits,
    );
    let reply = call(&users, Method::GET, "/api/v1/users", Body::empty()).await;
    reply.assert_status(StatusCode::GATEWAY_TIMEOUT);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn database_failures_reveal_no_internal_detail() {
    let users = users_router(
        crate::helpers::FailingDb,
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    );
    let reply = call(&users, Method::GET, "/api/v1/users", Body::empty()).await;
    reply.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert!(!text.contains("test database"), "{text}");
}

#[tokio::test]
async fn a_full_hashing_queue_answers_503_with_retry_after_and_loses_no_sign_up() {
    let users = users_router(
        LocalDb::new(MemStore::new()),
        PasswordHashing {
            m_cost_kib: 2 * 1024,
            t_cost: 4,
            threads: 1,
            queue: 1,
        },
        ServiceLimits::default(),
    );
    let replies = futures::future::join_all((0..12).map(|n| {
        let users = users.clone();
        async move {
            let body = json!({"username": format!("u{n}"), "password": PASSWORD});
            let request = Request::put("/api/v1/users")
                .header(header::CONTENT_TYPE, "application/json")
                .body(json_body(&body))
                .unwrap();
            let response = tower::ServiceExt::oneshot(users, request).await.unwrap();
            let retry = response.headers().get(header::RETRY_AFTER).cloned();
            (format!("u{n}"), response.status(), retry)
        }
    }))
    .await;
    let created: Vec<String> = replies
        .iter()
        .filter(|r| r.1 == StatusCode::CREATED)
        .map(|r| r.0.clone())
        .collect();
    let busy: Vec<_> = replies
        .iter()
        .filter(|r| r.1 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(created.len() + busy.len(), 12, "{replies:?}");
    assert!(!busy.is_empty() && !created.is_empty(), "{replies:?}");
    assert!(busy.iter().all(|r| r.2.as_ref().is_some_and(|v| v == "1")));
    let listed = call(&users, Method::GET, "/api/v1/users", Body::empty()).await;
    let listed: Vec<String> = serde_json::from_value(listed.json()).unwrap();
    let mut expected = created.clone();
    expected.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, expected);
}

/// The body limit is the configured one, whatever axum's extractors would take by default
/// (2 MiB): a 2.5 MiB body under a 3 MiB limit reaches the JSON parser (400 for this bad JSON),
/// one byte over the limit is 413, with the length announced or not.
#[tokio::test]
async fn the_body_limit_is_the_configured_one_even_above_axums_default() {
    let limit = 3 * 1024 * 1024;
    let (users, rides) = users_and_rides(ServiceLimits {
        max_body_bytes: limit,
        ..ServiceLimits::default()
    });
    for announced in [true, false] {
        for (router, method, path) in [
            (&users, Method::PUT, "/api/v1/users"),
            (&rides, Method::POST, "/api/v1/rides"),
        ] {
            let under = big_request(router, method.clone(), path, limit / 6 * 5, announced).await;
            assert_eq!(
                under,
                StatusCode::BAD_REQUEST,
                "{method} {path} {announced}"
            );
            let over = big_request(router, method.clone(), path, limit + 1, announced).await;
            assert_eq!(
                over,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method} {path} {announced}"
            );
        }
    }
}
