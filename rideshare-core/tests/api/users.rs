//! The users service: every row of the contract's users table, its request counter and its 405s.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use rideshare_core::api::{users_router, PasswordHashing, ServiceLimits};
use rideshare_core::ops::WriteOp;
use serde_json::json;

use crate::helpers::{
    big_request, call, delete, get, http_client, post, put, serve, url, users_only, FailingDb,
    RecordingDb, TestApp, PASSWORD, TOMORROW,
};

fn user(name: &str) -> serde_json::Value {
    json!({"username": name, "password": PASSWORD})
}

#[tokio::test]
async fn creating_a_user_is_201_with_an_empty_object() {
    let users = users_only();
    let reply = put(&users, "/api/v1/users", &user("alice")).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.json(), json!({}));
}

#[tokio::test]
async fn creating_an_existing_user_is_400() {
    let users = users_only();
    put(&users, "/api/v1/users", &user("alice"))
        .await
        .assert_status(StatusCode::CREATED);
    put(&users, "/api/v1/users", &user("alice"))
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    // A different password does not make it a different user.
    let other = json!({"username": "alice", "password": "f".repeat(40)});
    put(&users, "/api/v1/users", &other)
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(get(&users, "/api/v1/users").await.json(), json!(["alice"]));
}

#[tokio::test]
async fn usernames_are_case_sensitive() {
    let users = users_only();
    for name in ["alice", "Alice", "ALICE"] {
        put(&users, "/api/v1/users", &user(name))
            .await
            .assert_status(StatusCode::CREATED);
    }
    assert_eq!(
        get(&users, "/api/v1/users").await.json(),
        json!(["alice", "Alice", "ALICE"])
    );
    delete(&users, "/api/v1/users/ALICE")
        .await
        .assert_status(StatusCode::OK);
    delete(&users, "/api/v1/users/aLiCe")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&users, "/api/v1/users").await.json(),
        json!(["alice", "Alice"])
    );
}

#[tokio::test]
async fn a_missing_username_or_password_is_400() {
    let users = users_only();
    for body in [
        json!({"password": PASSWORD}),
        json!({"username": "alice"}),
        json!({}),
        json!({"user": "alice", "pass": PASSWORD}),
    ] {
        let reply = put(&users, "/api/v1/users", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(
        get(&users, "/api/v1/users").await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_username_or_password_that_is_not_a_string_is_400() {
    let users = users_only();
    let not_strings = [
        json!(null),
        json!(42),
        json!(1.5),
        json!(true),
        json!(["alice"]),
        json!({"name": "alice"}),
    ];
    for bad in &not_strings {
        for body in [
            json!({"username": bad, "password": PASSWORD}),
            json!({"username": "alice", "password": bad}),
        ] {
            let reply = put(&users, "/api/v1/users", &body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        }
    }
    // A SHA-1 digest sent as a JSON number is still not a string.
    let numeric =
        json!({"username": "alice", "password": 1234567890123456789012345678901234567890.0});
    put(&users, "/api/v1/users", &numeric)
        .await
        .assert_status(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_password_that_is_not_exactly_40_hex_digits_is_400() {
    let users = users_only();
    for bad in [
        String::new(),
        "a".repeat(39),
        "a".repeat(41),
        "g".repeat(40),
        format!("0x{}", "a".repeat(38)),
        format!(" {}", "a".repeat(39)),
        format!("{} ", "a".repeat(39)),
        format!("{}-", "a".repeat(39)),
        format!("{}\u{e9}", "a".repeat(39)),
        "a".repeat(80),
        "password".into(),
    ] {
        let body = json!({"username": "alice", "password": bad});
        let reply = put(&users, "/api/v1/users", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(
        get(&users, "/api/v1/users").await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn passwords_in_lower_upper_and_mixed_case_hex_are_accepted() {
    let users = users_only();
    let cases = [
        ("lower", PASSWORD.to_owned()),
        ("upper", PASSWORD.to_ascii_uppercase()),
        (
            "mixed",
            "0123456789abcdefABCDEF0123456789aBcDeF00".to_owned(),
        ),
        ("digits", "0".repeat(40)),
    ];
    for (name, password) in cases {
        assert_eq!(password.len(), 40);
        let body = json!({"username": name, "password": password});
        put(&users, "/api/v1/users", &body)
            .await
            .assert_status(StatusCode::CREATED);
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let users = users_only();
    for body in [
        "",
        "{",
        "{\"username\": \"alice\", \"password\": ",
        "{\"username\": \"alice\",}",
        "{'username': 'alice'}",
        "username=alice&password=x",
        "nul",
    ] {
        let reply = call(&users, Method::PUT, "/api/v1/users", Body::from(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
    }
}

#[tokio::test]
async fn the_password_is_hashed_with_argon2_before_it_reaches_the_database() {
    let db = RecordingDb::new();
    let users = users_router(
        db.clone(),
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    );
    let upper = PASSWORD.to_ascii_uppercase();
    put(
        &users,
        "/api/v1/users",
        &json!({"username": "alice", "password": upper}),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let writes = db.writes.lock().unwrap().clone();
    let [WriteOp::AddUser {
        username,
        password_hash,
    }] = writes.as_slice()
    else {
        panic!("expected one AddUser write, got {writes:?}");
    };
    assert_eq!(username.as_str(), "alice");
    assert!(password_hash.starts_with("$argon2id$"), "{password_hash}");
    assert!(!password_hash.contains(PASSWORD));
    assert!(!password_hash.contains(&upper));
}

#[tokio::test]
async fn deleting_a_user_is_200_and_removes_them() {
    let users = users_only();
    for name in ["alice", "bob"] {
        put(&users, "/api/v1/users", &user(name))
            .await
            .assert_status(StatusCode::CREATED);
    }
    let reply = delete(&users, "/api/v1/users/alice").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(get(&users, "/api/v1/users").await.json(), json!(["bob"]));
    // Deleted means gone: a second delete is a delete of an unknown user.
    delete(&users, "/api/v1/users/alice")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    // ... and the name is free again.
    put(&users, "/api/v1/users", &user("alice"))
        .await
        .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn deleting_an_unknown_user_is_400() {
    let users = users_only();
    delete(&users, "/api/v1/users/nobody")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    put(&users, "/api/v1/users", &user("alice"))
        .await
        .assert_status(StatusCode::CREATED);
    for path in [
        "/api/v1/users/nobody",
        "/api/v1/users/alic",
        "/api/v1/users/alice%20",
        // Not even a possible username: still just "no such user".
        "/api/v1/users/%0A",
    ] {
        let reply = delete(&users, path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[tokio::test]
async fn users_with_spaces_percent_signs_or_unicode_can_be_deleted_percent_encoded() {
    let users = users_only();
    for (name, path) in [
        ("Alice Smith", "/api/v1/users/Alice%20Smith"),
        ("Jürgen", "/api/v1/users/J%C3%BCrgen"),
        ("50%", "/api/v1/users/50%25"),
    ] {
        put(&users, "/api/v1/users", &user(name))
            .await
            .assert_status(StatusCode::CREATED);
        let reply = delete(&users, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{name:?} via {path}");
    }
    assert_eq!(
        get(&users, "/api/v1/users").await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_name_holding_a_slash_cannot_be_addressed_in_a_path_and_stays() {
    // An encoded slash is refused by the path rule (SPEC.md, admin calls and paths), so such a
    // user is listed but not deletable by name: the price of one meaning per path.
    let users = users_only();
    put(&users, "/api/v1/users", &user("a/b"))
        .await
        .assert_status(StatusCode::CREATED);
    for path in [
        "/api/v1/users/a%2Fb",
        "/api/v1/users/a%2fb",
        "/api/v1/users/a/b",
    ] {
        let reply = delete(&users, path).await;
        assert!(reply.status.is_client_error(), "{path}: {}", reply.status);
    }
    assert_eq!(get(&users, "/api/v1/users").await.json(), json!(["a/b"]));
}

#[tokio::test]
async fn listing_users_is_204_with_no_body_when_there_are_none() {
    let users = users_only();
    let reply = get(&users, "/api/v1/users").await;
    reply.assert_status(StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
    // Empty again after the last user goes.
    put(&users, "/api/v1/users", &user("alice"))
        .await
        .assert_status(StatusCode::CREATED);
    delete(&users, "/api/v1/users/alice")
        .await
        .assert_status(StatusCode::OK);
    get(&users, "/api/v1/users")
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn listing_users_gives_names_in_creation_order() {
    let users = users_only();
    let names = ["zoe", "amy", "Mike", "bob", "1", "émile"];
    for name in names {
        put(&users, "/api/v1/users", &user(name))
            .await
            .assert_status(StatusCode::CREATED);
    }
    let reply = get(&users, "/api/v1/users").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!(names));
    // A deleted and re-created user moves to the end.
    delete(&users, "/api/v1/users/amy")
        .await
        .assert_status(StatusCode::OK);
    put(&users, "/api/v1/users", &user("amy"))
        .await
        .assert_status(StatusCode::CREATED);
    assert_eq!(
        get(&users, "/api/v1/users").await.json(),
        json!(["zoe", "Mike", "bob", "1", "émile", "amy"])
    );
}

#[tokio::test]
async fn clearing_the_database_is_200_and_removes_every_user_and_ride() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await;
    app.create_ride_ok("bob", TOMORROW, 2, 1).await;
    let reply = post(&app.users, "/api/v1/db/clear", &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    get(&app.users, "/api/v1/users")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.ride_count().await, 0);
    // Clearing an empty database is fine too.
    call(&app.users, Method::POST, "/api/v1/db/clear", Body::empty())
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn clearing_a_database_that_cannot_be_cleared_is_400() {
    let users = users_router(
        FailingDb,
        PasswordHashing::fast_for_tests(),
        ServiceLimits::default(),
    );
    let reply = call(&users, Method::POST, "/api/v1/db/clear", Body::empty()).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn count_is_200_with_a_one_element_list_starting_at_0() {
    let users = users_only();
    let reply = get(&users, "/api/v1/_count").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!([0]));
}

#[tokio::test]
async fn count_counts_every_request_on_users_paths_including_400s_and_405s() {
    let users = users_only();
    let requests: [(Method, &str, &str); 9] = [
        (
            Method::PUT,
            "/api/v1/users",
            r#"{"username":"a","password":"5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"}"#,
        ), // 201
        (
            Method::PUT,
            "/api/v1/users",
            r#"{"username":"a","password":"5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"}"#,
        ), // 400 exists
        (Method::PUT, "/api/v1/users", "{"),  // 400 malformed
        (Method::GET, "/api/v1/users", ""),   // 200
        (Method::POST, "/api/v1/users", ""),  // 405
        (Method::PATCH, "/api/v1/users", ""), // 405
        (Method::DELETE, "/api/v1/users/nobody", ""), // 400
        (Method::GET, "/api/v1/users/a", ""), // 405
        (Method::DELETE, "/api/v1/users/a", ""), // 200
    ];
    for (i, (method, path, body)) in requests.into_iter().enumerate() {
        let status = call(&users, method.clone(), path, Body::from(body))
            .await
            .status;
        assert!(!status.is_server_error(), "{method} {path}: {status}");
        assert_eq!(
            TestApp::count_of(&users).await,
            i as u64 + 1,
            "after {method} {path} ({status})"
        );
    }
    // The count does not depend on which statuses came back.
    get(&users, "/api/v1/users")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(TestApp::count_of(&users).await, 10);
}

#[tokio::test]
async fn count_ignores_count_itself_db_clear_health_and_unknown_paths() {
    let users = users_only();
    get(&users, "/api/v1/users").await; // counted: 1
    for (method, path) in [
        (Method::GET, "/api/v1/_count"),
        (Method::POST, "/api/v1/_count"), // a 405 on _count is still _count
        (Method::POST, "/api/v1/db/clear"),
        (Method::GET, "/api/v1/db/clear"),
        (Method::GET, "/health"),
        (Method::GET, "/"),
        (Method::GET, "/nowhere"),
        (Method::GET, "/api/v1/users/a/b"),
        (Method::PUT, "/api/v1/users/"),
        (Method::GET, "/api/v1/usersx"),
        (Method::GET, "/api/v1/rides"),
        (Method::GET, "/api/v2/users"),
    ] {
        call(&users, method.clone(), path, Body::empty()).await;
        assert_eq!(TestApp::count_of(&users).await, 1, "{method} {path}");
    }
}

#[tokio::test]
async fn a_too_large_body_on_a_users_path_is_counted_whether_or_not_its_length_is_announced() {
    let users = users_only();
    let size = ServiceLimits::default().max_body_bytes + 1;
    let mut expected = 0;
    for announced in [true, false] {
        for (method, path) in [
            (Method::PUT, "/api/v1/users"),
            (Method::PATCH, "/api/v1/users"),
            (Method::DELETE, "/api/v1/users/alice"),
        ] {
            let status = big_request(&users, method.clone(), path, size, announced).await;
            assert!(!status.is_server_error(), "{method} {path}: {status}");
            expected += 1;
            assert_eq!(
                TestApp::count_of(&users).await,
                expected,
                "{method} {path} ({status}, content-length announced: {announced})"
            );
        }
        let status = big_request(&users, Method::PUT, "/api/v1/users", size, announced).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        expected += 1;
        // Not counted paths stay not counted, however large the body.
        for (method, path) in [
            (Method::POST, "/api/v1/db/clear"),
            (Method::POST, "/nowhere"),
        ] {
            big_request(&users, method, path, size, announced).await;
        }
        assert_eq!(TestApp::count_of(&users).await, expected);
    }
}

#[tokio::test]
async fn deleting_the_count_resets_it_to_0() {
    let users = users_only();
    for _ in 0..3 {
        get(&users, "/api/v1/users").await;
    }
    assert_eq!(TestApp::count_of(&users).await, 3);
    let reply = delete(&users, "/api/v1/_count").await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(TestApp::count_of(&users).await, 0);
    get(&users, "/api/v1/users").await;
    assert_eq!(TestApp::count_of(&users).await, 1);
}

#[tokio::test]
async fn the_users_count_includes_the_rides_services_user_checks_through_the_gateway() {
    let app = TestApp::spawn().await;
    app.add_users(&["alice", "bob"]).await;
    TestApp::reset_count(&app.users).await;
    app.create_ride_ok("alice", TOMORROW, 1, 2).await; // one user check
    assert_eq!(TestApp::count_of(&app.users).await, 1);
    app.join(1, "bob").await.assert_status(StatusCode::OK); // another
    assert_eq!(TestApp::count_of(&app.users).await, 2);
    // A refused ride still asked the users service first.
    app.create_ride("carol", TOMORROW, json!(1), json!(2))
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(TestApp::count_of(&app.users).await, 3);
    // Requests through the gateway are counted by the service they reach.
    app.via_gateway(Method::GET, "/api/v1/users", None)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(TestApp::count_of(&app.users).await, 4);
}

#[tokio::test]
async fn every_users_route_answers_unsupported_methods_with_405() {
    let users = users_only();
    let routes: [(&str, &[&str]); 5] = [
        (
            "/api/v1/users",
            &["POST", "DELETE", "PATCH", "OPTIONS", "TRACE"],
        ),
        (
            "/api/v1/users/alice",
            &["GET", "HEAD", "PUT", "POST", "PATCH", "OPTIONS"],
        ),
        (
            "/api/v1/db/clear",
            &["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"],
        ),
        ("/api/v1/_count", &["POST", "PUT", "PATCH", "OPTIONS"]),
        ("/health", &["POST", "PUT", "DELETE", "PATCH"]),
    ];
    for (path, methods) in routes {
        for method in methods {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let reply = call(&users, method.clone(), path, Body::from("{}")).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if method != Method::HEAD {
                assert!(
                    reply.json()["error"].is_string(),
                    "{method} {path}: 405 without a JSON error body"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_user_creations_all_land() {
    let addr = serve(users_only()).await;
    let http = http_client();
    let names: Vec<String> = (0..40).map(|i| format!("user{i:02}")).collect();
    let requests = names.iter().map(|name| {
        let http = http.clone();
        let body = user(name);
        let url = format!("{}/api/v1/users", url(addr));
        tokio::spawn(async move { http.put(url).json(&body).send().await.map(|r| r.status()) })
    });
    let statuses = futures::future::join_all(requests).await;
    for status in statuses {
        assert_eq!(status.expect("task").expect("request"), StatusCode::CREATED);
    }
    let listed: Vec<String> = http
        .get(format!("{}/api/v1/users", url(addr)))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("a list");
    assert_eq!(listed.len(), 40);
    assert_eq!(
        listed.into_iter().collect::<BTreeSet<_>>(),
        names.into_iter().collect::<BTreeSet<_>>()
    );
}
