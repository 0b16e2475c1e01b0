//! Input a careful client would never send: malformed, wrongly typed, huge and random. The
//! contract: a clean 400 (or 413 past the body limit) or a success, never a 5xx or a hang.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{
    big_request, call, get, post, put, url, users_only, TestApp, PASSWORD, TOMORROW,
};

const MEGABYTE: usize = 1_000_000;

#[track_caller]
fn assert_400_or_413(status: StatusCode, what: &str) {
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "{what}: {status}"
    );
}

#[tokio::test]
async fn malformed_or_non_utf8_bodies_are_400_everywhere() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"{\"username\"}".to_vec(),
        b"{\"username\": \"a\" \"password\": \"b\"}".to_vec(),
        b"\xff\xfe\x00{}".to_vec(),
        b"{\"username\": \"\xff\xff\"}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(), // a byte order mark
        b"{} {}".to_vec(),
        b"{}x".to_vec(),
        "[".repeat(100_000).into_bytes(), // nesting far beyond any recursion limit
        format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes(),
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        for (router, method, path) in [
            (&app.users, Method::PUT, "/api/v1/users"),
            (&app.rides, Method::POST, "/api/v1/rides"),
            (&app.rides, Method::POST, "/api/v1/rides/1"),
        ] {
            let reply = call(router, method, path, Body::from(body.clone())).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {shown:?}");
        }
    }
    assert_eq!(app.user_list().await, ["alice", "bob"]);
    assert_eq!(app.ride_count().await, 1);
}

#[tokio::test]
async fn bodies_of_the_wrong_json_type_are_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    let users_bodies = [
        json!({"username": 12345, "password": PASSWORD}),
        json!({"username": ["alice"], "password": PASSWORD}),
        json!([{"username": "carol", "password": PASSWORD}]),
        json!(["carol", PASSWORD]),
        json!("carol"),
        json!(42),
        json!(null),
        json!(true),
    ];
    for body in &users_bodies {
        let reply = put(&app.users, "/api/v1/users", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let ride_bodies = [
        json!({"created_by": 7, "timestamp": TOMORROW, "source": 1, "destination": 2}),
        json!([{"created_by": "alice", "timestamp": TOMORROW, "source": 1, "destination": 2}]),
        json!("alice"),
        json!(17),
        json!(null),
    ];
    for body in &ride_bodies {
        let reply = post(&app.rides, "/api/v1/rides", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    for body in [json!(["bob"]), json!("bob"), json!({"username": 5})] {
        let reply = post(&app.rides, "/api/v1/rides/1", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(app.user_list().await, ["alice", "bob"]);
    assert_eq!(app.ride_count().await, 1);
}

#[tokio::test]
async fn one_megabyte_strings_are_400_or_413_never_5xx() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    let huge = "a".repeat(MEGABYTE);
    let huge_digits = "1".repeat(MEGABYTE);
    let huge_hex = "f".repeat(MEGABYTE);

    for (what, body) in [
        ("username", json!({"username": huge, "password": PASSWORD})),
        (
            "password",
            json!({"username": "carol", "password": huge_hex}),
        ),
        ("both", json!({"username": huge_digits, "password": huge})),
    ] {
        let reply = put(&app.users, "/api/v1/users", &body).await;
        assert_400_or_413(reply.status, what);
    }
    let ride = |field: &str, value: Value| {
        let mut body = json!({
            "created_by": "alice", "timestamp": TOMORROW, "source": 1, "destination": 2,
        });
        body[field] = value;
        body
    };
    for (what, body) in [
        ("created_by", ride("created_by", json!(huge))),
        ("timestamp", ride("timestamp", json!(huge))),
        ("timestamp digits", ride("timestamp", json!(huge_digits))),
        ("source", ride("source", json!(huge))),
        ("source digits", ride("source", json!(huge_digits))),
        (
            "destination digits",
            ride("destination", json!(huge_digits)),
        ),
    ] {
        let reply = post(&app.rides, "/api/v1/rides", &body).await;
        assert_400_or_413(reply.status, what);
    }
    // A megabyte-long JSON number, not a string.
    let body = format!(
        r#"{{"created_by": "alice", "timestamp": "{TOMORROW}", "source": {huge_digits}, "destination": 2}}"#
    );
    let reply = call(&app.rides, Method::POST, "/api/v1/rides", Body::from(body)).await;
    assert_400_or_413(reply.status, "source as a huge number");
    let reply = post(&app.rides, "/api/v1/rides/1", &json!({"username": huge})).await;
    assert_400_or_413(reply.status, "join username");

    // Long paths and query strings (a URI is bounded well below a megabyte by `http`).
    let long = "9".repeat(60_000);
    for uri in [
        format!("/api/v1/rides?source={long}&destination=2"),
        format!("/api/v1/rides?source=1&destination={}", "x".repeat(60_000)),
    ] {
        let reply = get(&app.rides, &uri).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", &uri[..40]);
    }
    let reply = call(
        &app.rides,
        Method::POST,
        &format!("/api/v1/rides/{long}"),
        Body::from(r#"{"username": "bob"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = call(
        &app.rides,
        Method::DELETE,
        &format!("/api/v1/rides/{long}"),
        Body::empty(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = get(&app.rides, &format!("/api/v1/rides/{long}")).await;
    assert!(
        reply.status == StatusCode::BAD_REQUEST || reply.status == StatusCode::NO_CONTENT,
        "{}",
        reply.status
    );
    let reply = call(
        &app.users,
        Method::DELETE,
        &format!("/api/v1/users/{long}"),
        Body::empty(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Nothing of it landed.
    assert_eq!(app.user_list().await, ["alice", "bob"]);
    assert_eq!(app.ride_count().await, 1);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json()["users"],
        json!([])
    );
}

#[tokio::test]
async fn ride_ids_that_are_not_unsigned_integers_are_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    for id in [
        "abc",
        "-1",
        "1.0",
        "%201",
        "1%20",
        "0x1",
        "99999999999999999999999",
        "%FF",
    ] {
        let path = format!("/api/v1/rides/{id}");
        let reply = call(
            &app.rides,
            Method::POST,
            &path,
            Body::from(r#"{"username":"bob"}"#),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "join {id}");
        let reply = call(&app.rides, Method::DELETE, &path, Body::empty()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "delete {id}");
        let reply = get(&app.rides, &path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "get {id}");
    }
    assert_eq!(app.ride_count().await, 1);
}

#[tokio::test]
async fn a_ten_megabyte_body_is_413() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    let ten = 10 * 1024 * 1024;
    for announced in [true, false] {
        for (router, method, path) in [
            (&app.users, Method::PUT, "/api/v1/users"),
            (&app.rides, Method::POST, "/api/v1/rides"),
            (&app.rides, Method::POST, "/api/v1/rides/1"),
            (&app.gateway, Method::PUT, "/api/v1/users"),
            (&app.gateway, Method::POST, "/api/v1/rides"),
        ] {
            let status = big_request(router, method.clone(), path, ten, announced).await;
            assert_eq!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method} {path} (content-length announced: {announced})"
            );
        }
    }
    assert_eq!(app.user_list().await, ["alice"]);
}

#[tokio::test]
async fn unknown_extra_fields_are_ignored() {
    let app = TestApp::spawn().await;
    let reply = put(
        &app.users,
        "/api/v1/users",
        &json!({"username": "alice", "password": PASSWORD, "email": "a@example.org", "admin": true, "nested": {"x": [1, 2]}}),
    )
    .await;
    reply.assert_status(StatusCode::CREATED);
    app.add_users(&["bob"]).await;
    post(
        &app.rides,
        "/api/v1/rides",
        &json!({
            "created_by": "alice", "timestamp": TOMORROW, "source": 1, "destination": 2,
            "rideId": 99, "users": ["mallory"], "seats": 3,
        }),
    )
    .await
    .assert_status(StatusCode::CREATED);
    post(
        &app.rides,
        "/api/v1/rides/1",
        &json!({"username": "bob", "seats": 2, "created_by": "bob"}),
    )
    .await
    .assert_status(StatusCode::OK);
    // The extra fields changed nothing: the id is the service's, and only bob joined.
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json(),
        json!({
            "rideId": 1, "created_by": "alice", "users": ["bob"],
            "timestamp": TOMORROW, "source": 1, "destination": 2,
        })
    );
}

#[tokio::test]
async fn usernames_that_are_too_long_or_not_printable_are_400() {
    let users = users_only();
    for name in ["", "a\nb", "tab\there", "\u{7f}", &"x".repeat(129)] {
        let reply = put(
            &users,
            "/api/v1/users",
            &json!({"username": name, "password": PASSWORD}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name:?}");
    }
    let longest = "x".repeat(128);
    put(
        &users,
        "/api/v1/users",
        &json!({"username": longest, "password": PASSWORD}),
    )
    .await
    .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn a_ten_megabyte_body_on_a_real_socket_is_413_not_a_broken_connection() {
    let app = TestApp::spawn().await;
    let ten = vec![b' '; 10 * 1024 * 1024];
    for (addr, method, path) in [
        (app.users_addr, Method::PUT, "/api/v1/users"),
        (app.rides_addr, Method::POST, "/api/v1/rides"),
        (app.gateway_addr, Method::PUT, "/api/v1/users"),
        (app.gateway_addr, Method::POST, "/api/v1/rides"),
    ] {
        let response = app
            .http
            .request(method.clone(), format!("{}{path}", url(addr)))
            .body(ten.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {addr}{path}"
        );
    }
}

// ---------------------------------------------------------------- random requests

#[derive(Clone, Copy, Debug)]
enum Target {
    Users,
    Rides,
    Gateway,
}

fn arb_method() -> impl Strategy<Value = Method> {
    let method = |m: &str| Method::from_bytes(m.as_bytes()).expect("a method");
    prop_oneof![
        // The methods the services answer, most of the time ...
        4 => prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]),
        // ... and the others now and then.
        1 => prop::sample::select(vec!["HEAD", "PATCH", "OPTIONS", "TRACE", "FROB"]).prop_map(method),
    ]
}

fn percent_encoded(bytes: Vec<u8>) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn arb_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1", "2", "0", "count", "alice", "bob", "", "users", "rides"
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,25}",
        "[A-Za-z0-9._~!$&'()*+,;=:@-]{1,16}",
        prop::collection::vec(any::<u8>(), 1..8).prop_map(percent_encoded),
    ]
}

fn arb_query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        (0u32..250).prop_map(|n| n.to_string()),
        "[a-z0-9+.-]{0,8}",
        prop::collection::vec(any::<u8>(), 0..4).prop_map(percent_encoded),
    ];
    let key = prop::sample::select(vec!["source", "destination", "x"]);
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn arb_path() -> impl Strategy<Value = String> {
    let real = prop::sample::select(vec![
        "/api/v1/users",
        "/api/v1/users/alice",
        "/api/v1/users/bob",
        "/api/v1/rides",
        "/api/v1/rides?source=1&destination=2",
        "/api/v1/rides/1",
        "/api/v1/rides/2",
        "/api/v1/rides/count",
        "/api/v1/db/clear",
        "/api/v1/_count",
    ])
    .prop_map(str::to_owned);
    let under = (
        prop::sample::select(vec!["/api/v1/users/", "/api/v1/rides/", "/api/v1/rides?"]),
        prop_oneof![arb_segment(), arb_query()],
    )
        .prop_map(|(prefix, rest)| format!("{prefix}{rest}"));
    let prefix = prop::sample::select(vec![
        "/api/v1/users",
        "/api/v1/rides",
        "/api/v1/rides/count",
        "/api/v1/db/clear",
        "/api/v1/_count",
        "/api/v1",
        "/health",
        "",
    ]);
    let anywhere = (
        prefix,
        prop::collection::vec(arb_segment(), 0..3),
        prop::option::of(arb_query()),
    )
        .prop_map(|(prefix, segments, query)| {
            let mut path = prefix.to_owned();
            for segment in segments {
                path.push('/');
                path.push_str(&segment);
            }
            if path.is_empty() {
                path.push('/');
            }
            if let Some(query) = query {
                path.push('?');
                path.push_str(&query);
            }
            path
        });
    prop_oneof![3 => real, 2 => under, 2 => anywhere]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((arb_key(), inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "username",
            "password",
            "created_by",
            "timestamp",
            "source",
            "destination",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_]{0,10}",
    ]
}

fn arb_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec!["alice", "bob", "carol", "Alice"]).prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn arb_timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => prop::sample::select(vec![TOMORROW, "14-06-2030:00-00-12", "01-01-2031:59-59-23", "31-04-2030:00-00-00"])
            .prop_map(Value::from),
        1 => (1u32..=31, 1u32..=12, 1990u32..2100, 0u32..61, 0u32..61, 0u32..25)
            .prop_map(|(d, mo, y, s, mi, h)| Value::from(format!("{d:02}-{mo:02}-{y}:{s:02}-{mi:02}-{h:02}"))),
        1 => arb_json(),
    ]
}

fn arb_area() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => (0u32..=200).prop_map(Value::from),
        2 => (0u32..=200).prop_map(|n| Value::from(n.to_string())),
        1 => arb_json(),
    ]
}

fn arb_user_body() -> impl Strategy<Value = Value> {
    let password = prop_oneof![
        3 => Just(Value::from(PASSWORD)),
        1 => "[0-9a-fA-F]{40}".prop_map(Value::from),
        1 => arb_json(),
    ];
    (arb_name(), password)
        .prop_map(|(username, password)| json!({"username": username, "password": password}))
}

fn arb_ride_body() -> impl Strategy<Value = Value> {
    (arb_name(), arb_timestamp(), arb_area(), arb_area()).prop_map(
        |(created_by, timestamp, source, destination)| {
            json!({"created_by": created_by, "timestamp": timestamp, "source": source, "destination": destination})
        },
    )
}

fn arb_join_body() -> impl Strategy<Value = Value> {
    arb_name().prop_map(|username| json!({"username": username}))
}

fn to_bytes(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Bodies: nothing, random bytes, random JSON, and JSON shaped like the real requests.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        2 => arb_json().prop_map(to_bytes),
        1 => arb_user_body().prop_map(to_bytes),
        1 => arb_ride_body().prop_map(to_bytes),
        1 => arb_join_body().prop_map(to_bytes),
    ]
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::Users),
        Just(Target::Rides),
        Just(Target::Gateway)
    ]
}

/// A small ride id, so that joins and deletes often meet a ride that exists.
fn arb_ride_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => (0u64..8).prop_map(|id| id.to_string()), 1 => arb_segment()]
}

type RandomRequest = (Target, Method, String, Vec<u8>);

/// Requests aimed at a real endpoint of the service that serves it (directly or through the
/// gateway), with plausible bodies, so that rides really get created, joined and deleted and
/// the rides service really calls the users service through the gateway.
fn arb_aimed_request() -> impl Strategy<Value = RandomRequest> {
    let users_side = prop_oneof![Just(Target::Users), Just(Target::Gateway)];
    let rides_side = prop_oneof![Just(Target::Rides), Just(Target::Gateway)];
    let users = prop_oneof![
        4 => arb_user_body().prop_map(|b| (Method::PUT, "/api/v1/users".to_owned(), to_bytes(b))),
        1 => Just((Method::GET, "/api/v1/users".to_owned(), Vec::new())),
        1 => prop_oneof![
            prop::sample::select(vec!["alice", "bob", "carol", "Alice"]).prop_map(str::to_owned),
            arb_segment(),
        ]
        .prop_map(|name| (Method::DELETE, format!("/api/v1/users/{name}"), Vec::new())),
    ];
    let rides = prop_oneof![
        4 => arb_ride_body().prop_map(|b| (Method::POST, "/api/v1/rides".to_owned(), to_bytes(b))),
        3 => (arb_ride_id(), arb_join_body())
            .prop_map(|(id, b)| (Method::POST, format!("/api/v1/rides/{id}"), to_bytes(b))),
        2 => arb_query().prop_map(|q| (Method::GET, format!("/api/v1/rides?{q}"), Vec::new())),
        1 => (1u32..=200, 1u32..=200).prop_map(|(s, d)| {
            (Method::GET, format!("/api/v1/rides?source={s}&destination={d}"), Vec::new())
        }),
        2 => arb_ride_id().prop_map(|id| (Method::GET, format!("/api/v1/rides/{id}"), Vec::new())),
        1 => arb_ride_id().prop_map(|id| (Method::DELETE, format!("/api/v1/rides/{id}"), Vec::new())),
        1 => Just((Method::GET, "/api/v1/rides/count".to_owned(), Vec::new())),
    ];
    prop_oneof![
        (users_side, users).prop_map(|(t, (m, p, b))| (t, m, p, b)),
        (rides_side, rides).prop_map(|(t, (m, p, b))| (t, m, p, b)),
    ]
}

fn arb_request() -> impl Strategy<Value = RandomRequest> {
    prop_oneof![
        1 => arb_aimed_request(),
        1 => (arb_target(), arb_method(), arb_path(), arb_body()),
    ]
}

#[test]
fn random_requests_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // One app for all cases: state left by one request is input to the next.
    let app = runtime.block_on(async {
        let app = TestApp::spawn().await;
        app.add_users(&["alice", "bob"]).await;
        app.create_ride_ok("alice", TOMORROW, 1, 2).await;
        app
    });
    let mut runner = TestRunner::new(ProptestConfig {
        // A modest default that runs in a few seconds; PROPTEST_CASES asks for a deeper search.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = arb_request();
    let result = runner.run(&strategy, |(target, method, path, body)| {
        let router = match target {
            Target::Users => &app.users,
            Target::Rides => &app.rides,
            Target::Gateway => &app.gateway,
        };
        let reply = runtime.block_on(call(
            router,
            method.clone(),
            &path,
            Body::from(body.clone()),
        ));
        prop_assert!(
            !reply.status.is_server_error(),
            "{method} {path} to {target:?} with body {:?} answered {}: {}",
            String::from_utf8_lossy(&body),
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
