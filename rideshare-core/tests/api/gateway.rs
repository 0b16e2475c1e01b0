//! The gateway: `/api/v1/users*` to the users service, everything else to the rides service,
//! status and body passed through, 502 when an upstream is down, 413 for a too large body.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use rideshare_core::api::{gateway_router, ServiceLimits};
use serde_json::{json, Value};

use crate::helpers::{
    call, dead_addr, gateway_config, send, serve, url, TestApp, PASSWORD, TOMORROW,
};

type Seen = Arc<Mutex<Vec<Value>>>;

/// A request through the gateway and the status and (when given) the JSON body expected back.
type Case<'a> = (Method, &'a str, Option<Value>, StatusCode, Option<Value>);

/// A stand-in upstream: records and echoes what it got, answering 418 so that a status passed
/// through is told apart from one made up by the gateway.
fn echo(name: &'static str, seen: Seen) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let header = |h: &str| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let echo = json!({
                    "service": name,
                    "method": method.as_str(),
                    "path": uri.path(),
                    "query": uri.query(),
                    "origin": header("origin"),
                    "x-test": header("x-test"),
                    "body": String::from_utf8_lossy(&body),
                });
                seen.lock().unwrap().push(echo.clone());
                (
                    StatusCode::IM_A_TEAPOT,
                    [("x-served-by", name)],
                    axum::Json(echo),
                )
                    .into_response()
            }
        },
    )
}

/// A gateway (for `oneshot`) in front of two echoing stand-ins on sockets.
async fn gateway_with_echoes() -> (Router, Seen, Seen) {
    let users_seen = Seen::default();
    let rides_seen = Seen::default();
    let users = serve(echo("users", users_seen.clone())).await;
    let rides = serve(echo("rides", rides_seen.clone())).await;
    let gateway = gateway_router(
        gateway_config(url(users), url(rides)),
        ServiceLimits::default(),
    );
    (gateway, users_seen, rides_seen)
}

#[tokio::test]
async fn paths_beginning_api_v1_users_go_to_users_and_all_others_to_rides() {
    let (gateway, _, _) = gateway_with_echoes().await;
    for (path, service) in [
        ("/api/v1/users", "users"),
        ("/api/v1/users/alice", "users"),
        ("/api/v1/users/a/b/c", "users"),
        ("/api/v1/users?x=1", "users"),
        ("/api/v1/usersx", "users"),
        ("/api/v1/rides", "rides"),
        ("/api/v1/rides/1", "rides"),
        ("/api/v1/rides/count", "rides"),
        ("/api/v1/rides?source=1&destination=2", "rides"),
        ("/api/v1/db/clear", "rides"),
        ("/api/v1/_count", "rides"),
        ("/health", "rides"),
        ("/", "rides"),
        ("/api/v1/user", "rides"),
        ("/api/v1", "rides"),
        ("/API/v1/users", "rides"),
        ("/x/api/v1/users", "rides"),
    ] {
        let reply = call(&gateway, Method::GET, path, Body::empty()).await;
        assert_eq!(reply.status, StatusCode::IM_A_TEAPOT, "{path}");
        assert_eq!(reply.json()["service"], json!(service), "{path}");
    }
}

#[tokio::test]
async fn the_gateway_passes_method_path_query_headers_and_body_through() {
    let (gateway, users_seen, rides_seen) = gateway_with_echoes().await;
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/users/x%20y?a=1&b=%C3%BC")
        .header("origin", "http://127.0.0.1:8082")
        .header("x-test", "kept")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"username":"u"}"#))
        .unwrap();
    let reply = send(&gateway, request).await;
    reply.assert_status(StatusCode::IM_A_TEAPOT);
    let expected = json!({
        "service": "users",
        "method": "PUT",
        "path": "/api/v1/users/x%20y",
        "query": "a=1&b=%C3%BC",
        "origin": "http://127.0.0.1:8082",
        "x-test": "kept",
        "body": r#"{"username":"u"}"#,
    });
    assert_eq!(reply.json(), expected);
    assert_eq!(*users_seen.lock().unwrap(), vec![expected]);
    assert!(rides_seen.lock().unwrap().is_empty());

    for method in ["DELETE", "PATCH", "OPTIONS", "POST"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = call(
            &gateway,
            method.clone(),
            "/api/v1/rides/7",
            Body::from("{}"),
        )
        .await;
        assert_eq!(reply.json()["method"], json!(method.as_str()));
        assert_eq!(reply.json()["service"], json!("rides"));
    }
}

#[tokio::test]
async fn the_gateway_passes_the_services_statuses_and_bodies_through() {
    let app = TestApp::spawn().await;
    let user = json!({"username": "alice", "password": PASSWORD});
    let cases: Vec<Case<'_>> = vec![
        (
            Method::GET,
            "/api/v1/users",
            None,
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            Method::PUT,
            "/api/v1/users",
            Some(user.clone()),
            StatusCode::CREATED,
            Some(json!({})),
        ),
        (
            Method::PUT,
            "/api/v1/users",
            Some(user),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/api/v1/users",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        (
            Method::GET,
            "/api/v1/users",
            None,
            StatusCode::OK,
            Some(json!(["alice"])),
        ),
        (
            Method::POST,
            "/api/v1/rides",
            Some(
                json!({"created_by": "alice", "timestamp": TOMORROW, "source": "1", "destination": 2}),
            ),
            StatusCode::CREATED,
            Some(json!({})),
        ),
        (
            Method::GET,
            "/api/v1/rides?source=1&destination=2",
            None,
            StatusCode::OK,
            Some(json!([{"rideId": 1, "username": "alice", "timestamp": TOMORROW}])),
        ),
        (
            Method::GET,
            "/api/v1/rides?source=2&destination=1",
            None,
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            Method::GET,
            "/api/v1/rides?source=0&destination=1",
            None,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::GET,
            "/api/v1/rides/1",
            None,
            StatusCode::OK,
            Some(json!({
                "rideId": 1, "created_by": "alice", "users": [],
                "timestamp": TOMORROW, "source": 1, "destination": 2,
            })),
        ),
        (
            Method::GET,
            "/api/v1/rides/2",
            None,
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            Method::GET,
            "/api/v1/rides/count",
            None,
            StatusCode::OK,
            Some(json!([1])),
        ),
        (
            Method::PUT,
            "/api/v1/rides/count",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/users/alice",
            None,
            StatusCode::OK,
            Some(json!({})),
        ),
        (
            Method::GET,
            "/api/v1/rides/count",
            None,
            StatusCode::OK,
            Some(json!([0])),
        ),
        (Method::GET, "/nowhere", None, StatusCode::NOT_FOUND, None),
    ];
    for (method, path, body, status, expected) in cases {
        let reply = app.via_gateway(method.clone(), path, body.as_ref()).await;
        assert_eq!(reply.status, status, "{method} {path}");
        match expected {
            Some(expected) => assert_eq!(reply.json(), expected, "{method} {path}"),
            None if status == StatusCode::NO_CONTENT => {
                assert!(reply.body.is_empty(), "{method} {path}")
            }
            None => {}
        }
    }
    // The rides service's counter went through the gateway too (the `_count` path is not
    // under /api/v1/users, so it is the rides service's).
    let reply = app.via_gateway(Method::GET, "/api/v1/_count", None).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!([9]));
}

#[tokio::test]
async fn the_gateway_answers_502_when_an_upstream_is_down() {
    let gateway = gateway_router(
        gateway_config(url(dead_addr().await), url(dead_addr().await)),
        ServiceLimits::default(),
    );
    for (method, path) in [
        (Method::GET, "/api/v1/users"),
        (Method::PUT, "/api/v1/users"),
        (Method::GET, "/api/v1/rides?source=1&destination=2"),
        (Method::POST, "/api/v1/rides"),
        (Method::GET, "/health"),
    ] {
        let reply = call(&gateway, method.clone(), path, Body::from("{}")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{method} {path}");
        assert!(reply.json()["error"].is_string());
    }
}

#[tokio::test]
async fn one_upstream_down_does_not_affect_the_other() {
    let rides_seen = Seen::default();
    let rides = serve(echo("rides", rides_seen)).await;
    let gateway = gateway_router(
        gateway_config(url(dead_addr().await), url(rides)),
        ServiceLimits::default(),
    );
    call(&gateway, Method::GET, "/api/v1/users", Body::empty())
        .await
        .assert_status(StatusCode::BAD_GATEWAY);
    call(&gateway, Method::GET, "/api/v1/rides/count", Body::empty())
        .await
        .assert_status(StatusCode::IM_A_TEAPOT);
}

#[tokio::test]
async fn the_gateway_answers_413_for_a_too_large_body_without_calling_upstream() {
    let (gateway, users_seen, rides_seen) = gateway_with_echoes().await;
    let limit = ServiceLimits::default().max_body_bytes;
    let too_large = vec![b'x'; limit + 1];

    // Announced by content-length ...
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/users")
        .header(header::CONTENT_LENGTH, too_large.len())
        .body(Body::from(too_large.clone()))
        .unwrap();
    send(&gateway, request)
        .await
        .assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    // ... or only found out while reading a stream.
    let stream = futures::stream::iter(
        too_large
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/rides")
        .body(Body::from_stream(stream))
        .unwrap();
    send(&gateway, request)
        .await
        .assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    // Ten megabytes.
    call(
        &gateway,
        Method::POST,
        "/api/v1/rides",
        Body::from(vec![b'{'; 10 * 1024 * 1024]),
    )
    .await
    .assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(users_seen.lock().unwrap().is_empty());
    assert!(rides_seen.lock().unwrap().is_empty());

    // A body right at the limit goes through.
    let at_limit = vec![b'y'; limit];
    let reply = call(
        &gateway,
        Method::POST,
        "/api/v1/rides",
        Body::from(at_limit),
    )
    .await;
    reply.assert_status(StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.json()["body"].as_str().map(str::len), Some(limit));
}
