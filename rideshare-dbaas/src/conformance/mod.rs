//! The conformance suites: one per trait, run against the in-memory implementation in every test
//! run and against the real adapter (in `rideshare-svc`) when its server is there.
//!
//! Each suite is a public async function taking a factory that builds a fresh subject for each
//! case ([`broker_suite`], [`log_suite`], [`coord_suite`]); it runs every case, each in its own
//! task with an overall time limit, and returns a [`Report`]. [`Report::assert_passed`] panics
//! with every failed case named. Cases use unique queue names and paths, so they can share one
//! real server with other runs; every wait is bounded, so a broken implementation fails instead of
//! hanging.
//!
//! The suites assume what the traits' users assume: `Consumer::next` and `LogReader::next` can be
//! cancelled (raced against a timeout) without losing a message or an entry.
//!
//! If an implementation and the in-memory one disagree on something the protocol relies on, the
//! suite is missing a case: add it here, not to one implementation's tests.

pub mod broker;
pub mod coord;
pub mod log;
pub mod runtime;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::BoxFuture;

pub use broker::broker_suite;
pub use coord::coord_suite;
pub use log::log_suite;
pub use runtime::runtime_suite;

/// How long a case waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a case watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);
/// How long one case may run in all.
pub const CASE_LIMIT: Duration = Duration::from_secs(60);

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseReport {
    pub name: &'static str,
    pub result: Result<(), String>,
}

/// The outcome of a suite run.
#[derive(Clone, Debug)]
pub struct Report {
    pub suite: &'static str,
    pub cases: Vec<CaseReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.result.is_ok())
    }

    pub fn failures(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| c.result.is_err())
    }

    /// Panics, listing every failed case and why, unless all passed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passed = self.cases.iter().filter(|c| c.result.is_ok()).count();
        writeln!(
            f,
            "{} suite: {passed} of {} cases passed",
            self.suite,
            self.cases.len()
        )?;
        for case in &self.cases {
            match &case.result {
                Ok(()) => writeln!(f, "  ok    {}", case.name)?,
                Err(why) => writeln!(f, "  FAIL  {}: {why}", case.name)?,
            }
        }
        Ok(())
    }
}

/// What a case returns: `Err` says what went wrong.
pub(crate) type CaseResult = Result<(), String>;
/// A case: takes a fresh subject, checks one behaviour.
pub(crate) type Case<T> = (&'static str, fn(T) -> BoxFuture<'static, CaseResult>);

/// Runs each case on a fresh subject from `make`, in its own task (so a panic fails that case
/// only), within [`CASE_LIMIT`].
pub(crate) async fn run_suite<T, F, Fut>(
    suite: &'static str,
    make: F,
    cases: Vec<Case<T>>,
) -> Report
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let mut report = Report {
        suite,
        cases: Vec::with_capacity(cases.len()),
    };
    for (name, case) in cases {
        let subject = make().await;
        let run = tokio::spawn(tokio::time::timeout(CASE_LIMIT, case(subject)));
        let result = match run.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("did not finish within {CASE_LIMIT:?}")),
            Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => Err(format!("case task failed: {e}")),
        };
        match &result {
            Ok(()) => tracing::info!(suite, case = name, "conformance case passed"),
            Err(why) => tracing::warn!(suite, case = name, why, "conformance case failed"),
        }
        report.cases.push(CaseReport { name, result });
    }
    report
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A name no other case, and no other run against the same server, uses.
pub(crate) fn unique(prefix: &str) -> String {
    static RUN: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = *RUN.get_or_init(rand::random);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{run:08x}-{n}")
}

/// Waits up to [`WAIT`] for `fut`; `what` names it in the failure.
pub(crate) async fn within<T>(
    what: impl fmt::Display,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| format!("{what}: nothing within {WAIT:?}"))
}

/// Turns an implementation's error into a case failure that says what was being done.
pub(crate) fn ok<T>(what: impl fmt::Display, result: crate::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: unexpected error: {e}"))
}

/// Fails the case with a message unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// Fails the case unless the two are equal, showing both.
macro_rules! check_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err(format!("{}: expected {:?}, got {:?}", format!($($what)+), want, got));
        }
    }};
}

pub(crate) use {check, check_eq};
