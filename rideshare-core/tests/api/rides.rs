//! The rides service: every row of the contract's rides table, the user check through the
//! gateway (with its `Origin`), upcoming-only listings on an injected clock, cascades from user
//! deletion, ride ids, the request counter and 405s.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::{Json, Router};
use rideshare_core::api::{rides_router, users_router, PasswordHashing, ServiceLimits};
use rideshare_core::clock::FixedClock;
use rideshare_core::db::LocalDb;
use rideshare_core::store::{MemStore, SqliteStore};
use serde_json::{json, Value};

use crate::helpers::{
    big_request, call, dead_addr, delete, get, http_client, listener, post, put, rides_config,
    serve, serve_on, ts, url, FailingDb, TestApp, NOW, PASSWORD, TOMORROW, YESTERDAY,
};

fn ride(created_by: &str, timestamp: &str, source: Value, destination: Value) -> Value {
    json!({
        "created_by": created_by,
        "timestamp": timestamp,
        "source": source,
        "destination": destination,
    })
}

// ---------------------------------------------------------------- POST /api/v1/rides

#[tokio::test]
async fn creating_a_ride_is_201_with_an_empty_object() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    let reply = app.create_ride("alice", TOMORROW, json!(1), json!(2)).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(app.ride_count().await, 1);
}

#[tokio::test]
async fn creating_a_ride_for_an_unknown_user_is_400() {
    let app = TestApp::spawn().await;
    // No users at all: the users service answers 204.
    app.create_ride("alice", TOMORROW, json!(1), json!(2))
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    app.add_users(&["alice", "bob"]).await;
    for unknown in ["carol", "Alice", "alice ", "ali", ""] {
        let reply = app.create_ride(unknown, TOMORROW, json!(1), json!(2)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{unknown:?}");
    }
    // A deleted user is unknown too.
    delete(&app.users, "/api/v1/users/bob")
        .await
        .assert_status(StatusCode::OK);
    app.create_ride("bob", TOMORROW, json!(1), json!(2))
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(app.ride_count().await, 0);
}

#[tokio::test]
async fn creating_a_ride_with_a_bad_timestamp_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    let bad_strings = [
        "31-04-2030:00-00-00", // 31 April
        "29-02-2031:00-00-00", // not a leap year
        "00-01-2030:00-00-00",
        "01-13-2030:00-00-00",
        "1-1-2030:00-00-00", // digits must be two
        "01-1-2030:00-00-00",
        "01-01-30:00-00-00",
        "01-01-2030:60-00-00",
        "01-01-2030:00-60-00",
        "01-01-2030:00-00-24",
        "01-01-2030",
        "01-01-2030:00-00",
        "01-01-2030 00-00-00",
        "01-01-2030:00:00:00",
        "2030-01-01T00:00:00",
        "2030-01-01:00-00-00",
        " 01-01-2030:00-00-00",
        "01-01-2030:00-00-00Z",
        "aa-bb-cccc:dd-ee-ff",
        "",
    ];
    for bad in bad_strings {
        let reply = app.create_ride("alice", bad, json!(1), json!(2)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    for bad in [
        json!(null),
        json!(1_900_000_000),
        json!(["01-01-2030:00-00-00"]),
    ] {
        let body = ride("alice", "x", json!(1), json!(2));
        let mut body = body.as_object().unwrap().clone();
        body.insert("timestamp".into(), bad.clone());
        let reply = post(&app.rides, "/api/v1/rides", &Value::Object(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(app.ride_count().await, 0);
}

#[tokio::test]
async fn real_edge_dates_are_accepted_as_timestamps() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    for good in [
        "29-02-2032:59-59-23",
        "31-12-2030:00-00-00",
        "01-01-2031:00-00-00",
        "30-04-2030:05-10-17",
    ] {
        let reply = app.create_ride("alice", good, json!(1), json!(2)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{good}");
    }
}

#[tokio::test]
async fn areas_may_be_json_integers_or_decimal_strings() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    for (source, destination) in [
        (json!(1), json!(2)),
        (json!("1"), json!("2")),
        (json!(1), json!("2")),
        (json!("1"), json!(2)),
    ] {
        let reply = app
            .create_ride("alice", TOMORROW, source.clone(), destination.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{source} → {destination}"
        );
    }
    app.create_ride("alice", TOMORROW, json!("198"), json!(198))
        .await
        .assert_status(StatusCode::CREATED);
    assert_eq!(app.upcoming_ids(1, 2).await, vec![1, 2, 3, 4]);
    // They always come back as integers.
    for id in 1..=4 {
        let ride = get(&app.rides, &format!("/api/v1/rides/{id}")).await.json();
        assert_eq!(
            (ride["source"].clone(), ride["destination"].clone()),
            (json!(1), json!(2))
        );
    }
    let ride = get(&app.rides, "/api/v1/rides/5").await.json();
    assert_eq!(
        (ride["source"].clone(), ride["destination"].clone()),
        (json!(198), json!(198))
    );
}

#[tokio::test]
async fn areas_outside_the_list_or_of_another_form_are_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    let bad_areas = [
        json!(0),
        json!(199),
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!(65_537),
        json!(u64::MAX),
        json!("abc"),
        json!("0"),
        json!("199"),
        json!("1.5"),
        json!(" 1"),
        json!("1 "),
        json!("+1"),
        json!("-1"),
        json!("0x1"),
        json!(""),
        json!(null),
        json!(true),
        json!([1]),
        json!({"area": 1}),
    ];
    for bad in &bad_areas {
        for (source, destination) in [(bad.clone(), json!(2)), (json!(1), bad.clone())] {
            let reply = app
                .create_ride("alice", TOMORROW, source.clone(), destination.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{source} → {destination}"
            );
        }
    }
    assert_eq!(app.ride_count().await, 0);
}

#[tokio::test]
async fn a_ride_with_a_missing_field_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    let full = ride("alice", TOMORROW, json!(1), json!(2));
    for missing in ["created_by", "timestamp", "source", "destination"] {
        let mut body = full.as_object().unwrap().clone();
        body.remove(missing);
        let reply = post(&app.rides, "/api/v1/rides", &Value::Object(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "without {missing}");
    }
    post(&app.rides, "/api/v1/rides", &json!({}))
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(app.ride_count().await, 0);
}

#[tokio::test]
async fn a_creator_that_is_not_a_string_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "1"]).await;
    for bad in [
        json!(1),
        json!(null),
        json!(["alice"]),
        json!({"name": "alice"}),
        json!(true),
    ] {
        let mut body = ride("alice", TOMORROW, json!(1), json!(2))
            .as_object()
            .unwrap()
            .clone();
        body.insert("created_by".into(), bad.clone());
        let reply = post(&app.rides, "/api/v1/rides", &Value::Object(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn creating_a_ride_with_malformed_json_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    for body in [
        "",
        "{",
        r#"{"created_by": "alice", "timestamp": "16-06-2030:00-00-12", "source": 1, "destination": 2"#,
        r#"{"created_by": "alice", "timestamp": "16-06-2030:00-00-12", "source": 1, "destination": 2,}"#,
        r#"{"created_by": alice}"#,
        "[]",
        "null",
        "\"alice\"",
    ] {
        let reply = call(&app.rides, Method::POST, "/api/v1/rides", Body::from(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
    }
    assert_eq!(app.ride_count().await, 0);
}

// ---------------------------------------------------------------- the user check

type Seen = Arc<Mutex<Vec<(Method, String, Option<String>)>>>;

/// A stand-in for the gateway + users service: records each request's method, path and
/// `Origin`, and answers with a fixed user list.
fn stand_in_users(seen: Seen, users: Value) -> Router {
    Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let seen = Arc::clone(&seen);
        let users = users.clone();
        async move {
            let origin = headers
                .get("origin")
                .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
            seen.lock()
                .unwrap()
                .push((method, uri.path().to_owned(), origin));
            Json(users)
        }
    })
}

#[tokio::test]
async fn the_user_check_is_get_users_with_the_rides_services_origin() {
    let seen = Seen::default();
    let stand_in = serve(stand_in_users(seen.clone(), json!(["alice", "bob"]))).await;

    // The database still needs the users: the rides service only asks the users service.
    let db = LocalDb::new(MemStore::new());
    let users = users_router(
        db.clone(),
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    );
    for name in ["alice", "bob"] {
        put(
            &users,
            "/api/v1/users",
            &json!({"username": name, "password": PASSWORD}),
        )
        .await
        .assert_status(StatusCode::CREATED);
    }
    let (rides_listener, rides_addr) = listener().await;
    let config = rides_config(url(stand_in), url(rides_addr));
    let origin = config.origin.clone();
    let rides = rides_router(
        db,
        Arc::new(FixedClock::new(ts(NOW))),
        config,
        ServiceLimits::default(),
    );
    serve_on(rides_listener, rides);

    let http = http_client();
    let status = http
        .post(format!("{}/api/v1/rides", url(rides_addr)))
        .json(&ride("alice", TOMORROW, json!(1), json!(2)))
        .send()
        .await
        .expect("rides reachable")
        .status();
    assert_eq!(status, StatusCode::CREATED);
    let status = http
        .post(format!("{}/api/v1/rides/1", url(rides_addr)))
        .json(&json!({"username": "bob"}))
        .send()
        .await
        .expect("rides reachable")
        .status();
    assert_eq!(status, StatusCode::OK);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                Method::GET,
                "/api/v1/users".to_owned(),
                Some(origin.clone())
            ),
            (Method::GET, "/api/v1/users".to_owned(), Some(origin)),
        ]
    );
}

#[tokio::test]
async fn a_user_the_users_service_does_not_list_is_unknown_even_if_stored() {
    let seen = Seen::default();
    let stand_in = serve(stand_in_users(seen.clone(), json!(["bob"]))).await;
    let db = LocalDb::new(MemStore::new());
    let users = users_router(
        db.clone(),
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    );
    put(
        &users,
        "/api/v1/users",
        &json!({"username": "alice", "password": PASSWORD}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let rides = rides_router(
        db,
        Arc::new(FixedClock::new(ts(NOW))),
        rides_config(url(stand_in), "http://127.0.0.1:8082".into()),
        ServiceLimits::default(),
    );
    post(
        &rides,
        "/api/v1/rides",
        &ride("alice", TOMORROW, json!(1), json!(2)),
    )
    .await
    .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn creating_a_ride_while_the_users_service_is_unreachable_is_503() {
    let db = LocalDb::new(MemStore::new());
    let rides = rides_router(
        db,
        Arc::new(FixedClock::new(ts(NOW))),
        rides_config(url(dead_addr().await), "http://127.0.0.1:8082".into()),
        ServiceLimits::default(),
    );
    let reply = post(
        &rides,
        "/api/v1/rides",
        &ride("alice", TOMORROW, json!(1), json!(2)),
    )
    .await;
    reply.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.json()["error"].is_string());
}

// ---------------------------------------------------------------- GET /api/v1/rides

#[tokio::test]
async fn listing_upcoming_rides_is_200_with_summaries_sorted_by_time() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    // Created out of order; "01-01-2031" sorts before "15-06-2030" as text, not as time.
    app.create_ride_ok("alice", "01-01-2031:00-00-00", 1, 2)
        .await; // 1
    app.create_ride_ok("bob", TOMORROW, 1, 2).await; // 2
    app.create_ride_ok("alice", "15-06-2030:00-00-13", 1, 2)
        .await; // 3: today 13:00
    app.create_ride_ok("alice", TOMORROW, 1, 2).await; // 4: same time as 2
    app.create_ride_ok("bob", "15-06-2030:30-00-12", 1, 2).await; // 5: today 12:00:30
    let reply = get(&app.rides, "/api/v1/rides?source=1&destination=2").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!([
            {"rideId": 5, "username": "bob", "timestamp": "15-06-2030:30-00-12"},
            {"rideId": 3, "username": "alice", "timestamp": "15-06-2030:00-00-13"},
            {"rideId": 2, "username": "bob", "timestamp": TOMORROW},
            {"rideId": 4, "username": "alice", "timestamp": TOMORROW},
            {"rideId": 1, "username": "alice", "timestamp": "01-01-2031:00-00-00"},
        ])
    );
}

#[tokio::test]
async fn listing_is_204_when_no_ride_is_upcoming() {
    let app = TestApp::spawn().await;
    let reply = get(&app.rides, "/api/v1/rides?source=1&destination=2").await;
    reply.assert_status(StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 2, 1).await;
    app.create_ride_ok("alice", TOMORROW, 1, 3).await;
    app.create_ride_ok("alice", YESTERDAY, 1, 2).await;
    get(&app.rides, "/api/v1/rides?source=1&destination=2")
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn listing_only_shows_rides_with_that_exact_source_and_destination() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("alice", TOMORROW, 2, 1).await;
    app.create_ride_ok("alice", TOMORROW, 1, 198).await;
    app.create_ride_ok("alice", TOMORROW, 198, 198).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![1]);
    assert_eq!(app.upcoming_ids(2, 1).await, vec![2]);
    assert_eq!(app.upcoming_ids(1, 198).await, vec![3]);
    assert_eq!(app.upcoming_ids(198, 198).await, vec![4]);
}

#[tokio::test]
async fn listing_with_a_missing_or_invalid_parameter_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    for query in [
        "",
        "?",
        "?source=1",
        "?destination=2",
        "?src=1&dst=2",
        "?source=&destination=2",
        "?source=1&destination=",
        "?source=0&destination=2",
        "?source=1&destination=199",
        "?source=abc&destination=2",
        "?source=1.5&destination=2",
        "?source=-1&destination=2",
        "?source=%201&destination=2",
        "?source=1&destination=2%20",
        "?source=+1&destination=2",
        "?source=99999999999999999999&destination=2",
        "?source=%FF&destination=2",
    ] {
        let reply = get(&app.rides, &format!("/api/v1/rides{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query:?}");
    }
    // Extra parameters are ignored.
    get(&app.rides, "/api/v1/rides?source=1&destination=2&page=3")
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn a_ride_exactly_at_now_is_not_listed_but_one_second_later_is() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", "15-06-2030:59-59-11", 1, 2)
        .await; // 1: a second ago
    app.create_ride_ok("alice", NOW, 1, 2).await; // 2: now
    app.create_ride_ok("alice", "15-06-2030:01-00-12", 1, 2)
        .await; // 3: in a second
    assert_eq!(app.upcoming_ids(1, 2).await, vec![3]);
    // A second later, ride 3 is "now" and no longer upcoming.
    app.clock.set(ts("15-06-2030:01-00-12"));
    assert!(app.upcoming_ids(1, 2).await.is_empty());
    // Turn the clock back and ride 1 and 2 are upcoming again.
    app.clock.set(ts("15-06-2030:58-59-11"));
    assert_eq!(app.upcoming_ids(1, 2).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn past_rides_can_be_created_but_are_not_listed() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    for past in [YESTERDAY, "01-01-2020:00-00-00", "01-01-1970:00-00-00"] {
        let reply = app.create_ride("alice", past, json!(1), json!(2)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{past}");
    }
    assert!(app.upcoming_ids(1, 2).await.is_empty());
    // They exist: they can be fetched, joined, counted and deleted.
    assert_eq!(app.ride_count().await, 3);
    get(&app.rides, "/api/v1/rides/1")
        .await
        .assert_status(StatusCode::OK);
    app.join(1, "bob").await.assert_status(StatusCode::OK);
    delete(&app.rides, "/api/v1/rides/2")
        .await
        .assert_status(StatusCode::OK);
}

// ---------------------------------------------------------------- GET /api/v1/rides/{rideId}

#[tokio::test]
async fn getting_a_ride_gives_exactly_the_contract_shape() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride("alice", "01-09-2030:05-10-17", json!("7"), json!(198))
        .await
        .assert_status(StatusCode::CREATED);
    let reply = get(&app.rides, "/api/v1/rides/1").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({
            "rideId": 1,
            "created_by": "alice",
            "users": [],
            "timestamp": "01-09-2030:05-10-17",
            "source": 7,
            "destination": 198,
        })
    );
    app.join(1, "bob").await.assert_status(StatusCode::OK);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json(),
        json!({
            "rideId": 1,
            "created_by": "alice",
            "users": ["bob"],
            "timestamp": "01-09-2030:05-10-17",
            "source": 7,
            "destination": 198,
        })
    );
}

#[tokio::test]
async fn getting_an_unknown_ride_is_204_with_no_body() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/rides/1",
        "/api/v1/rides/0",
        "/api/v1/rides/18446744073709551615",
    ] {
        let reply = get(&app.rides, path).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{path}");
        assert!(reply.body.is_empty());
    }
}

// ---------------------------------------------------------------- POST /api/v1/rides/{rideId}

#[tokio::test]
async fn joining_a_ride_is_200_and_riders_are_listed_in_join_order_without_the_creator() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "zed", "bob", "mia"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    for name in ["zed", "bob", "mia"] {
        let reply = app.join(1, name).await;
        reply.assert_status(StatusCode::OK);
        assert_eq!(reply.json(), json!({}));
    }
    let ride = get(&app.rides, "/api/v1/rides/1").await.json();
    assert_eq!(ride["users"], json!(["zed", "bob", "mia"]));
    assert_eq!(ride["created_by"], json!("alice"));
}

#[tokio::test]
async fn joining_an_unknown_ride_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.join(1, "bob")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.join(2, "bob")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    delete(&app.rides, "/api/v1/rides/1")
        .await
        .assert_status(StatusCode::OK);
    app.join(1, "bob")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn joining_as_an_unknown_user_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    for unknown in ["carol", "Bob", "", "bob "] {
        let reply = app.join(1, unknown).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{unknown:?}");
    }
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json()["users"],
        json!([])
    );
}

#[tokio::test]
async fn the_creator_joining_their_own_ride_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.join(1, "alice")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json()["users"],
        json!([])
    );
}

#[tokio::test]
async fn joining_a_ride_twice_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.join(1, "bob").await.assert_status(StatusCode::OK);
    app.join(1, "bob")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/1").await.json()["users"],
        json!(["bob"])
    );
}

#[tokio::test]
async fn joining_with_a_missing_or_non_string_username_or_malformed_json_is_400() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    for body in [
        "",
        "{",
        "{}",
        r#"{"user": "bob"}"#,
        r#"{"username": null}"#,
        r#"{"username": 1}"#,
        r#"{"username": ["bob"]}"#,
        r#"["bob"]"#,
        r#""bob""#,
    ] {
        let reply = call(
            &app.rides,
            Method::POST,
            "/api/v1/rides/1",
            Body::from(body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
    }
}

// ---------------------------------------------------------------- DELETE /api/v1/rides/{rideId}

#[tokio::test]
async fn deleting_a_ride_is_200_and_it_is_gone() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.join(1, "bob").await.assert_status(StatusCode::OK);
    let reply = delete(&app.rides, "/api/v1/rides/1").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    get(&app.rides, "/api/v1/rides/1")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.upcoming_ids(1, 2).await, vec![2]);
    assert_eq!(app.ride_count().await, 1);
    delete(&app.rides, "/api/v1/rides/1")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deleting_an_unknown_ride_is_400() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/rides/1",
        "/api/v1/rides/0",
        "/api/v1/rides/18446744073709551615",
    ] {
        let reply = delete(&app.rides, path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
    }
}

// ---------------------------------------------------------------- count, clear, ids

#[tokio::test]
async fn ride_count_counts_the_rides_currently_stored() {
    let app = TestApp::spawn().await;
    let reply = get(&app.rides, "/api/v1/rides/count").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!([0]));
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("alice", YESTERDAY, 1, 2).await; // past rides are stored too
    app.create_ride_ok("alice", TOMORROW, 3, 4).await;
    assert_eq!(
        get(&app.rides, "/api/v1/rides/count").await.json(),
        json!([3])
    );
    delete(&app.rides, "/api/v1/rides/2")
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/count").await.json(),
        json!([2])
    );
}

#[tokio::test]
async fn clearing_the_rides_database_is_200_removes_rides_and_keeps_users() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("bob", TOMORROW, 1, 2).await;
    let reply = call(&app.rides, Method::POST, "/api/v1/db/clear", Body::empty()).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(app.ride_count().await, 0);
    assert!(app.upcoming_ids(1, 2).await.is_empty());
    assert_eq!(app.user_list().await, ["alice", "bob"]);
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
}

#[tokio::test]
async fn clearing_a_rides_database_that_cannot_be_cleared_is_400() {
    let rides = rides_router(
        FailingDb,
        Arc::new(FixedClock::new(ts(NOW))),
        rides_config(url(dead_addr().await), "http://127.0.0.1:8082".into()),
        ServiceLimits::default(),
    );
    let reply = call(&rides, Method::POST, "/api/v1/db/clear", Body::empty()).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn ride_ids_are_never_reused_after_a_delete_or_a_clear() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![1, 2]);
    // Deleting the newest ride does not free its id.
    delete(&app.rides, "/api/v1/rides/2")
        .await
        .assert_status(StatusCode::OK);
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![1, 3]);
    // The rides service's clear.
    call(&app.rides, Method::POST, "/api/v1/db/clear", Body::empty())
        .await
        .assert_status(StatusCode::OK);
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![4]);
    // The users service's clear takes every ride with it, and ids still go on.
    call(&app.users, Method::POST, "/api/v1/db/clear", Body::empty())
        .await
        .assert_status(StatusCode::OK);
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![5]);
    // Deleting the creator deletes the ride; ids go on.
    delete(&app.users, "/api/v1/users/alice")
        .await
        .assert_status(StatusCode::OK);
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![6]);
    for old in 1..=5 {
        get(&app.rides, &format!("/api/v1/rides/{old}"))
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn deleting_a_user_deletes_their_rides_and_removes_them_from_rides_they_joined() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob", "carol"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await; // 1: alice's, bob joins
    app.create_ride_ok("bob", TOMORROW, 1, 2).await; // 2: bob's, alice and carol join
    app.create_ride_ok("carol", TOMORROW, 1, 2).await; // 3: carol's, alice joins
    app.create_ride_ok("alice", YESTERDAY, 3, 4).await; // 4: alice's, in the past
    app.join(1, "bob").await.assert_status(StatusCode::OK);
    app.join(2, "alice").await.assert_status(StatusCode::OK);
    app.join(2, "carol").await.assert_status(StatusCode::OK);
    app.join(3, "alice").await.assert_status(StatusCode::OK);

    delete(&app.users, "/api/v1/users/alice")
        .await
        .assert_status(StatusCode::OK);

    for gone in [1, 4] {
        get(&app.rides, &format!("/api/v1/rides/{gone}"))
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
    let ride2 = get(&app.rides, "/api/v1/rides/2").await;
    ride2.assert_status(StatusCode::OK);
    assert_eq!(ride2.json()["users"], json!(["carol"]));
    assert_eq!(
        get(&app.rides, "/api/v1/rides/3").await.json()["users"],
        json!([])
    );
    assert_eq!(app.ride_count().await, 2);
    assert_eq!(app.upcoming_ids(1, 2).await, vec![2, 3]);
    // Whoever takes the name later starts with nothing.
    app.add_users(&["alice"]).await;
    assert_eq!(
        get(&app.rides, "/api/v1/rides/2").await.json()["users"],
        json!(["carol"])
    );
    app.join(2, "alice").await.assert_status(StatusCode::OK);
}

// ---------------------------------------------------------------- the request counter

#[tokio::test]
async fn count_counts_every_request_on_rides_paths_including_400s_and_405s() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    let valid_ride = ride("alice", TOMORROW, json!(1), json!(2)).to_string();
    let requests: Vec<(Method, &str, String)> = vec![
        (Method::POST, "/api/v1/rides", valid_ride), // 201
        (Method::POST, "/api/v1/rides", "{".into()), // 400
        (
            Method::GET,
            "/api/v1/rides?source=1&destination=2",
            String::new(),
        ), // 200
        (Method::GET, "/api/v1/rides?source=1", String::new()), // 400
        (
            Method::GET,
            "/api/v1/rides?source=3&destination=2",
            String::new(),
        ), // 204
        (Method::GET, "/api/v1/rides/1", String::new()), // 200
        (Method::GET, "/api/v1/rides/9", String::new()), // 204
        (Method::GET, "/api/v1/rides/abc", String::new()), // 400
        (
            Method::POST,
            "/api/v1/rides/1",
            r#"{"username":"bob"}"#.into(),
        ), // 200
        (
            Method::POST,
            "/api/v1/rides/1",
            r#"{"username":"bob"}"#.into(),
        ), // 400
        (Method::GET, "/api/v1/rides/count", String::new()), // 200
        (Method::PUT, "/api/v1/rides", String::new()), // 405
        (Method::PATCH, "/api/v1/rides/1", String::new()), // 405
        (Method::PUT, "/api/v1/rides/count", String::new()), // 405
        (Method::DELETE, "/api/v1/rides/1", String::new()), // 200
        (Method::DELETE, "/api/v1/rides/1", String::new()), // 400
    ];
    TestApp::reset_count(&app.rides).await;
    for (i, (method, path, body)) in requests.into_iter().enumerate() {
        let status = call(&app.rides, method.clone(), path, Body::from(body))
            .await
            .status;
        assert!(!status.is_server_error(), "{method} {path}: {status}");
        assert_eq!(
            TestApp::count_of(&app.rides).await,
            i as u64 + 1,
            "after {method} {path} ({status})"
        );
    }
}

#[tokio::test]
async fn rides_count_ignores_count_itself_db_clear_health_and_unknown_paths() {
    let app = TestApp::spawn().await;
    get(&app.rides, "/api/v1/rides/count").await; // counted: 1
    for (method, path) in [
        (Method::GET, "/api/v1/_count"),
        (Method::PUT, "/api/v1/_count"),
        (Method::POST, "/api/v1/db/clear"),
        (Method::DELETE, "/api/v1/db/clear"),
        (Method::GET, "/health"),
        (Method::GET, "/"),
        (Method::GET, "/api/v1/rides/1/users"),
        (Method::GET, "/api/v1/rides/"),
        (Method::GET, "/api/v1/ridesx"),
        (Method::GET, "/api/v1/users"),
        (Method::PUT, "/api/v1/users"),
    ] {
        call(&app.rides, method.clone(), path, Body::empty()).await;
        assert_eq!(TestApp::count_of(&app.rides).await, 1, "{method} {path}");
    }
    // The rides service's user checks are the users service's requests, not its own.
    app.add_users(&["alice"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    assert_eq!(TestApp::count_of(&app.rides).await, 2);
}

#[tokio::test]
async fn a_too_large_body_on_a_rides_path_is_counted_whether_or_not_its_length_is_announced() {
    let app = TestApp::spawn().await;
    let size = ServiceLimits::default().max_body_bytes + 1;
    let mut expected = 0;
    for announced in [true, false] {
        for (method, path) in [
            (Method::POST, "/api/v1/rides"),
            (Method::POST, "/api/v1/rides/1"),
            (Method::PUT, "/api/v1/rides/1"),
        ] {
            let status = big_request(&app.rides, method.clone(), path, size, announced).await;
            // 405 routes never read the body, so they only see the size when it is announced.
            assert!(
                status == StatusCode::PAYLOAD_TOO_LARGE
                    || (method == Method::PUT && status == StatusCode::METHOD_NOT_ALLOWED),
                "{method} {path}: {status}"
            );
            expected += 1;
            assert_eq!(
                TestApp::count_of(&app.rides).await,
                expected,
                "{method} {path} (content-length announced: {announced})"
            );
        }
    }
}

#[tokio::test]
async fn deleting_the_rides_count_resets_it_to_0() {
    let app = TestApp::spawn().await;
    for _ in 0..4 {
        get(&app.rides, "/api/v1/rides/count").await;
    }
    assert_eq!(get(&app.rides, "/api/v1/_count").await.json(), json!([4]));
    let reply = delete(&app.rides, "/api/v1/_count").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(get(&app.rides, "/api/v1/_count").await.json(), json!([0]));
    // Each service counts for itself.
    TestApp::reset_count(&app.users).await;
    get(&app.users, "/api/v1/users").await;
    assert_eq!(TestApp::count_of(&app.rides).await, 0);
    assert_eq!(TestApp::count_of(&app.users).await, 1);
}

#[tokio::test]
async fn every_rides_route_answers_unsupported_methods_with_405() {
    let app = TestApp::spawn().await;
    let routes: [(&str, &[&str]); 6] = [
        (
            "/api/v1/rides",
            &["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"],
        ),
        ("/api/v1/rides/1", &["PUT", "PATCH", "OPTIONS"]),
        (
            "/api/v1/rides/count",
            &["POST", "PUT", "DELETE", "PATCH", "OPTIONS"],
        ),
        (
            "/api/v1/db/clear",
            &["GET", "HEAD", "PUT", "DELETE", "PATCH"],
        ),
        ("/api/v1/_count", &["POST", "PUT", "PATCH"]),
        ("/health", &["POST", "PUT", "DELETE"]),
    ];
    for (path, methods) in routes {
        for method in methods {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let reply = call(&app.rides, method.clone(), path, Body::from("{}")).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_ride_creations_get_forty_distinct_ids() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice"]).await;
    let creations = (0..40).map(|_| {
        let http = app.http.clone();
        let url = format!("{}/api/v1/rides", url(app.gateway_addr));
        tokio::spawn(async move {
            http.post(url)
                .json(&ride("alice", TOMORROW, json!(1), json!(2)))
                .send()
                .await
                .map(|r| r.status())
        })
    });
    for status in futures::future::join_all(creations).await {
        assert_eq!(status.expect("task").expect("request"), StatusCode::CREATED);
    }
    assert_eq!(app.upcoming_ids(1, 2).await, (1..=40).collect::<Vec<_>>());
    assert_eq!(app.ride_count().await, 40);
}

// ---------------------------------------------------------------- another store

#[tokio::test]
async fn the_services_behave_the_same_on_the_sqlite_store() {
    let store = SqliteStore::in_memory().expect("in-memory sqlite");
    let app = TestApp::spawn_on(LocalDb::new(store)).await;
    app.add_users(&["bob", "alice", "Alice"]).await;
    assert_eq!(app.add_user("alice").await, StatusCode::BAD_REQUEST);
    assert_eq!(app.user_list().await, ["bob", "alice", "Alice"]);
    app.create_ride_ok("alice", "01-01-2031:00-00-00", 1, 2)
        .await; // 1
    app.create_ride_ok("bob", NOW, 1, 2).await; // 2: not upcoming
    app.create_ride_ok("bob", "15-06-2030:01-00-12", 1, 2).await; // 3
    assert_eq!(app.upcoming_ids(1, 2).await, vec![3, 1]);
    app.join(3, "alice").await.assert_status(StatusCode::OK);
    app.join(3, "Alice").await.assert_status(StatusCode::OK);
    app.join(3, "alice")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    delete(&app.users, "/api/v1/users/alice")
        .await
        .assert_status(StatusCode::OK);
    get(&app.rides, "/api/v1/rides/1")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app.rides, "/api/v1/rides/3").await.json()["users"],
        json!(["Alice"])
    );
    call(&app.rides, Method::POST, "/api/v1/db/clear", Body::empty())
        .await
        .assert_status(StatusCode::OK);
    app.create_ride_ok("bob", TOMORROW, 1, 2).await;
    assert_eq!(app.upcoming_ids(1, 2).await, vec![4]);
}
