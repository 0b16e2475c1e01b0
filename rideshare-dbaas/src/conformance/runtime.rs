//! The `Runtime` conformance suite: unique ids and pids, `list` by pid ascending, `kill` final
//! and visible in `list`, unknown ids refused. The subject's workers must run until killed;
//! how a worker that exits by itself disappears is runtime-specific and tested beside each one.

use std::future::Future;

use futures::FutureExt;

use super::{check, check_eq, ok, run_suite, CaseResult, Report};
use crate::error::Error;
use crate::runtime::Runtime;

pub async fn runtime_suite<R, F, Fut>(make: F) -> Report
where
    R: Runtime,
    F: Fn() -> Fut,
    Fut: Future<Output = R>,
{
    run_suite(
        "runtime",
        make,
        vec![
            ("started_workers_are_listed_by_pid_with_unique_ids", |r| {
                started_workers_are_listed_by_pid_with_unique_ids(r).boxed()
            }),
            ("a_killed_worker_is_no_longer_listed", |r| {
                a_killed_worker_is_no_longer_listed(r).boxed()
            }),
            ("killing_an_unknown_worker_is_no_worker", |r| {
                killing_an_unknown_worker_is_no_worker(r).boxed()
            }),
        ],
    )
    .await
}

async fn cleanup<R: Runtime>(runtime: &R) {
    for w in runtime.list().await.unwrap_or_default() {
        let _ = runtime.kill(&w.id).await;
    }
}

async fn started_workers_are_listed_by_pid_with_unique_ids<R: Runtime>(runtime: R) -> CaseResult {
    let a = ok("start a", runtime.start().await)?;
    let b = ok("start b", runtime.start().await)?;
    let listed = ok("list", runtime.list().await)?;
    cleanup(&runtime).await;
    check!(a.id != b.id, "two workers share id {}", a.id);
    check!(
        a.pid != b.pid && a.pid > 0 && b.pid > 0,
        "pids {} and {}",
        a.pid,
        b.pid
    );
    let mut want = vec![a, b];
    want.sort_by_key(|w| w.pid);
    check_eq!(listed, want, "list after two starts");
    Ok(())
}

async fn a_killed_worker_is_no_longer_listed<R: Runtime>(runtime: R) -> CaseResult {
    let a = ok("start a", runtime.start().await)?;
    let b = ok("start b", runtime.start().await)?;
    ok("kill a", runtime.kill(&a.id).await)?;
    let listed = ok("list", runtime.list().await)?;
    cleanup(&runtime).await;
    check_eq!(listed, vec![b], "list after killing one of two");
    Ok(())
}

async fn killing_an_unknown_worker_is_no_worker<R: Runtime>(runtime: R) -> CaseResult {
    let a = ok("start", runtime.start().await)?;
    ok("kill", runtime.kill(&a.id).await)?;
    let again = runtime.kill(&a.id).await;
    let unknown = runtime.kill("no-such-worker").await;
    check!(
        matches!(again, Err(Error::NoWorker(_))),
        "second kill: {again:?}"
    );
    check!(
        matches!(unknown, Err(Error::NoWorker(_))),
        "unknown id: {unknown:?}"
    );
    Ok(())
}
