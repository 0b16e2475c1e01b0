//! The [`Coordinator`] conformance suite: one case per "must" of the trait's contract, plus the
//! ZooKeeper behaviour the worker and orchestrator rely on.

use std::future::Future;

use bytes::Bytes;
use futures::FutureExt;

use super::{check, check_eq, ok, run_suite, unique, within, Case, CaseResult, Report, QUIET};
use crate::coord::{Coordinator, CreateMode, Session, Watch};
use crate::error::Error;

/// Runs every coordinator case, each on a coordinator from `make`.
pub async fn coord_suite<C, F, Fut>(make: F) -> Report
where
    C: Coordinator,
    F: Fn() -> Fut,
    Fut: Future<Output = C>,
{
    let cases: Vec<Case<C>> = vec![
        ("create_get_set_delete", |c| {
            create_get_set_delete(c).boxed()
        }),
        ("create_of_an_existing_path_fails_with_node_exists", |c| {
            create_of_an_existing_path_fails_with_node_exists(c).boxed()
        }),
        ("racing_creates_of_one_path_let_exactly_one_win", |c| {
            racing_creates_of_one_path_let_exactly_one_win(c).boxed()
        }),
        (
            "set_or_delete_at_a_stale_version_fails_with_bad_version",
            |c| set_or_delete_at_a_stale_version_fails_with_bad_version(c).boxed(),
        ),
        ("missing_nodes_fail_set_and_delete_with_no_node", |c| {
            missing_nodes_fail_set_and_delete_with_no_node(c).boxed()
        }),
        (
            "sequential_suffixes_increase_and_children_are_sorted",
            |c| sequential_suffixes_increase_and_children_are_sorted(c).boxed(),
        ),
        ("sequential_suffixes_are_never_reused", |c| {
            sequential_suffixes_are_never_reused(c).boxed()
        }),
        ("missing_parents_are_created_persistent", |c| {
            missing_parents_are_created_persistent(c).boxed()
        }),
        ("ephemeral_nodes_vanish_when_their_session_closes", |c| {
            ephemeral_nodes_vanish_when_their_session_closes(c).boxed()
        }),
        ("get_watch_fires_on_create", |c| {
            get_watch_fires_on_create(c).boxed()
        }),
        ("get_watch_fires_on_set", |c| {
            get_watch_fires_on_set(c).boxed()
        }),
        ("get_watch_fires_on_delete", |c| {
            get_watch_fires_on_delete(c).boxed()
        }),
        ("another_session_can_delete_an_ephemeral_node", |c| {
            another_session_can_delete_an_ephemeral_node(c).boxed()
        }),
        ("closing_a_session_resolves_lost", |c| {
            closing_a_session_resolves_lost(c).boxed()
        }),
    ];
    run_suite("coordinator", make, cases).await
}

fn data(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn connect(coord: &impl Coordinator) -> Result<Box<dyn Session>, String> {
    ok("connect", coord.connect().await)
}

/// A fresh top-level path for one case.
fn root() -> String {
    format!("/{}", unique("conformance"))
}

async fn create(
    session: &dyn Session,
    path: &str,
    text: &str,
    mode: CreateMode,
) -> Result<String, String> {
    ok(
        format!("create {path} ({mode:?})"),
        session.create(path, data(text), mode).await,
    )
}

async fn get(session: &dyn Session, path: &str) -> Result<Option<(Bytes, i32)>, String> {
    ok(format!("get {path}"), session.get(path).await)
}

async fn children(session: &dyn Session, path: &str) -> Result<Vec<String>, String> {
    ok(format!("children of {path}"), session.children(path).await)
}

/// Fails if `watch` fires within [`QUIET`] (nothing it watches has changed yet).
async fn expect_not_fired(watch: &mut Watch, what: &str) -> CaseResult {
    match tokio::time::timeout(QUIET, watch).await {
        Err(_) => Ok(()),
        Ok(()) => Err(format!("{what}: fired before any change")),
    }
}

async fn create_get_set_delete<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let path = format!("{}/node", root());
    let created = create(&*s, &path, "v0", CreateMode::Persistent).await?;
    check_eq!(created, path, "path returned by a non-sequential create");
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v0"), 0)),
        "node after create"
    );
    ok("set", s.set(&path, data("v1"), None).await)?;
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v1"), 1)),
        "node after set"
    );
    ok("set at version 1", s.set(&path, data("v2"), Some(1)).await)?;
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v2"), 2)),
        "node after versioned set"
    );
    ok("delete", s.delete(&path).await)?;
    check_eq!(get(&*s, &path).await?, None, "deleted node");
    Ok(())
}

async fn create_of_an_existing_path_fails_with_node_exists<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let path = format!("{}/once", root());
    create(&*s, &path, "first", CreateMode::Persistent).await?;
    for mode in [CreateMode::Persistent, CreateMode::Ephemeral] {
        match s.create(&path, data("second"), mode).await {
            Err(Error::NodeExists(_)) => {}
            other => {
                return Err(format!(
                    "second create ({mode:?}): expected NodeExists, got {other:?}"
                ))
            }
        }
    }
    check_eq!(
        get(&*s, &path).await?,
        Some((data("first"), 0)),
        "node after a failed create"
    );
    Ok(())
}

async fn racing_creates_of_one_path_let_exactly_one_win<C: Coordinator>(coord: C) -> CaseResult {
    let path = format!("{}/lock", root());
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(connect(&coord).await?);
    }
    let results = within(
        "racing creates",
        futures::future::join_all(
            sessions
                .iter()
                .enumerate()
                .map(|(i, s)| s.create(&path, data(&format!("s{i}")), CreateMode::Ephemeral)),
        ),
    )
    .await?;
    let mut winners = 0;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(_) => winners += 1,
            Err(Error::NodeExists(_)) => {}
            Err(e) => return Err(format!("create by session {i}: unexpected error: {e}")),
        }
    }
    check_eq!(winners, 1, "creates that succeeded");
    Ok(())
}

async fn set_or_delete_at_a_stale_version_fails_with_bad_version<C: Coordinator>(
    coord: C,
) -> CaseResult {
    let s = connect(&coord).await?;
    let path = format!("{}/versioned", root());
    create(&*s, &path, "v0", CreateMode::Persistent).await?;
    ok("set at version 0", s.set(&path, data("v1"), Some(0)).await)?;
    match s.set(&path, data("stale"), Some(0)).await {
        Err(Error::BadVersion(_)) => {}
        other => {
            return Err(format!(
                "set at stale version 0: expected BadVersion, got {other:?}"
            ))
        }
    }
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v1"), 1)),
        "node after a refused set"
    );
    match s.delete_at(&path, 0).await {
        Err(Error::BadVersion(_)) => {}
        other => {
            return Err(format!(
                "delete at stale version 0: expected BadVersion, got {other:?}"
            ))
        }
    }
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v1"), 1)),
        "node after a refused delete"
    );
    ok("delete at version 1", s.delete_at(&path, 1).await)?;
    check_eq!(
        get(&*s, &path).await?,
        None,
        "node after a versioned delete"
    );
    Ok(())
}

async fn missing_nodes_fail_set_and_delete_with_no_node<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let path = format!("{}/absent", root());
    check_eq!(get(&*s, &path).await?, None, "absent node");
    check_eq!(
        children(&*s, &path).await?,
        Vec::<String>::new(),
        "children of an absent node"
    );
    match s.set(&path, data("x"), None).await {
        Err(Error::NoNode(_)) => {}
        other => {
            return Err(format!(
                "set of an absent node: expected NoNode, got {other:?}"
            ))
        }
    }
    match s.delete(&path).await {
        Err(Error::NoNode(_)) => {}
        other => {
            return Err(format!(
                "delete of an absent node: expected NoNode, got {other:?}"
            ))
        }
    }
    Ok(())
}

/// The 10-digit suffix of a sequential node's path, checked against its prefix.
fn suffix(path: &str, prefix: &str) -> Result<u64, String> {
    let digits = path
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{path} does not start with {prefix}"))?;
    check!(
        digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()),
        "{path}: suffix {digits:?} is not 10 digits"
    );
    digits.parse().map_err(|e| format!("{path}: {e}"))
}

async fn sequential_suffixes_increase_and_children_are_sorted<C: Coordinator>(
    coord: C,
) -> CaseResult {
    let s = connect(&coord).await?;
    let parent = format!("{}/members", root());
    let prefix = format!("{parent}/w-");
    let mut paths = Vec::new();
    for (i, mode) in [
        CreateMode::EphemeralSequential,
        CreateMode::PersistentSequential,
        CreateMode::EphemeralSequential,
        CreateMode::EphemeralSequential,
    ]
    .into_iter()
    .enumerate()
    {
        paths.push(create(&*s, &prefix, &format!("m{i}"), mode).await?);
    }
    let mut last = None;
    for path in &paths {
        let n = suffix(path, &prefix)?;
        check!(
            last.is_none_or(|l| n > l),
            "suffixes not increasing: {paths:?}"
        );
        last = Some(n);
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    check_eq!(
        children(&*s, &parent).await?,
        names,
        "children (sorted, as created)"
    );
    check_eq!(
        get(&*s, &paths[2]).await?,
        Some((data("m2"), 0)),
        "a sequential node's data"
    );
    Ok(())
}

async fn sequential_suffixes_are_never_reused<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let prefix = format!("{}/seq/n-", root());
    let first = create(&*s, &prefix, "", CreateMode::PersistentSequential).await?;
    let second = create(&*s, &prefix, "", CreateMode::PersistentSequential).await?;
    ok("delete the last sequential node", s.delete(&second).await)?;
    let third = create(&*s, &prefix, "", CreateMode::PersistentSequential).await?;
    let (a, b, c) = (
        suffix(&first, &prefix)?,
        suffix(&second, &prefix)?,
        suffix(&third, &prefix)?,
    );
    check!(
        a < b && b < c,
        "suffix reused or not increasing: {first}, {second}, then {third}"
    );
    Ok(())
}

async fn missing_parents_are_created_persistent<C: Coordinator>(coord: C) -> CaseResult {
    let owner = connect(&coord).await?;
    let observer = connect(&coord).await?;
    let base = root();
    let path = format!("{base}/a/b/leaf");
    create(&*owner, &path, "leaf", CreateMode::Ephemeral).await?;
    check!(
        get(&*observer, &format!("{base}/a")).await?.is_some(),
        "parent {base}/a not created"
    );
    check!(
        get(&*observer, &format!("{base}/a/b")).await?.is_some(),
        "parent {base}/a/b not created"
    );
    let (_, gone) = ok(
        "children_watch",
        observer.children_watch(&format!("{base}/a/b")).await,
    )?;
    drop(owner);
    within("children watch after the owner closed", gone).await?;
    check_eq!(
        get(&*observer, &path).await?,
        None,
        "ephemeral leaf after its session closed"
    );
    check!(
        get(&*observer, &format!("{base}/a/b")).await?.is_some(),
        "auto-created parent {base}/a/b vanished with the session"
    );
    Ok(())
}

async fn ephemeral_nodes_vanish_when_their_session_closes<C: Coordinator>(coord: C) -> CaseResult {
    let member = connect(&coord).await?;
    let watcher = connect(&coord).await?;
    let parent = format!("{}/members", root());
    let mine = create(
        &*member,
        &format!("{parent}/w-"),
        "me",
        CreateMode::EphemeralSequential,
    )
    .await?;
    create(
        &*watcher,
        &format!("{parent}/keeper"),
        "",
        CreateMode::Persistent,
    )
    .await?;
    let (before, mut watch) = ok("children_watch", watcher.children_watch(&parent).await)?;
    check_eq!(before.len(), 2, "children before the member left");
    expect_not_fired(&mut watch, "children watch").await?;
    drop(member);
    within("children watch after the member's session closed", watch).await?;
    check_eq!(
        get(&*watcher, &mine).await?,
        None,
        "ephemeral node after its session closed"
    );
    check_eq!(
        children(&*watcher, &parent).await?,
        vec!["keeper".to_owned()],
        "children after"
    );
    Ok(())
}

async fn get_watch_fires_on_create<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let other = connect(&coord).await?;
    let path = format!("{}/later", root());
    let (now, mut watch) = ok("get_watch", s.get_watch(&path).await)?;
    check_eq!(now, None, "node before create");
    expect_not_fired(&mut watch, "get_watch on an absent node").await?;
    create(&*other, &path, "born", CreateMode::Persistent).await?;
    within("get_watch after create", watch).await?;
    check_eq!(
        get(&*s, &path).await?,
        Some((data("born"), 0)),
        "node after the watch fired"
    );
    Ok(())
}

async fn get_watch_fires_on_set<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let other = connect(&coord).await?;
    let path = format!("{}/changing", root());
    create(&*s, &path, "v0", CreateMode::Persistent).await?;
    let (now, mut watch) = ok("get_watch", s.get_watch(&path).await)?;
    check_eq!(now, Some((data("v0"), 0)), "node when watched");
    expect_not_fired(&mut watch, "get_watch on an unchanged node").await?;
    ok("set", other.set(&path, data("v1"), Some(0)).await)?;
    within("get_watch after set", watch).await?;
    check_eq!(
        get(&*s, &path).await?,
        Some((data("v1"), 1)),
        "node after the watch fired"
    );
    Ok(())
}

async fn get_watch_fires_on_delete<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let other = connect(&coord).await?;
    let path = format!("{}/doomed", root());
    create(&*s, &path, "x", CreateMode::Persistent).await?;
    let (_, mut watch) = ok("get_watch", s.get_watch(&path).await)?;
    expect_not_fired(&mut watch, "get_watch before delete").await?;
    ok("delete", other.delete(&path).await)?;
    within("get_watch after delete", watch).await?;
    check_eq!(get(&*s, &path).await?, None, "node after the watch fired");
    Ok(())
}

async fn another_session_can_delete_an_ephemeral_node<C: Coordinator>(coord: C) -> CaseResult {
    let owner = connect(&coord).await?;
    let other = connect(&coord).await?;
    let path = format!("{}/stale-member", root());
    create(&*owner, &path, "x", CreateMode::Ephemeral).await?;
    ok("delete by another session", other.delete(&path).await)?;
    check_eq!(
        get(&*owner, &path).await?,
        None,
        "ephemeral node deleted by another session"
    );
    // Its owner can create it again: nothing of the old node lingers.
    create(&*owner, &path, "y", CreateMode::Ephemeral).await?;
    Ok(())
}

async fn closing_a_session_resolves_lost<C: Coordinator>(coord: C) -> CaseResult {
    let s = connect(&coord).await?;
    let mut lost = s.lost();
    expect_not_fired(&mut lost, "lost() of a live session").await?;
    drop(s);
    within("lost() after the session closed", lost).await
}
