//! Seeing a running system: `/metrics` on every role parses as Prometheus text and moves under
//! load, `/ready` tells a failover apart, and one request's id is found in the log lines of
//! every hop it took. All on the embedded `rideshare up`, in this process, on loopback.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{embedded_up, Client, PASSWORD};
use reqwest::{Method, StatusCode};
use rideshare_svc::logging::{subscriber, LogFormat};
use rideshare_svc::up::Up;
use serde_json::{json, Value};

async fn started(dir: &Path) -> (Up, Client) {
    let (up, c) = embedded_up(dir, |_| {}).await;
    wait_ready(&up, Duration::from_secs(10)).await;
    (up, c)
}

async fn get(url: String) -> (StatusCode, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn wait_ready(up: &Up, bound: Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = get(format!("http://{}/ready", up.orchestrator)).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "not ready within {bound:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every sample line is `name{labels} value` with a float value, then the parser reads it.
fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a number in {line:?}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            name_end == series.len() || series.ends_with('}'),
            "unclosed labels in {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (status, text) = get(format!("http://{addr}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    parse_metrics(&text)
}

/// The sum of a counter's or gauge's samples whose labels include `labels`.
fn total(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map(|b| b.count).unwrap_or_default()
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_every_role_parse_as_prometheus_text_and_move_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = started(dir.path()).await;
    let roles = [
        ("gateway", up.gateway),
        ("users", up.users),
        ("rides", up.rides),
        ("orchestrator", up.orchestrator),
    ];
    let mut before = HashMap::new();
    for (role, addr) in roles {
        before.insert(role, scrape(addr).await);
    }

    for i in 0..5 {
        assert_eq!(c.add_user(&format!("load-{i}")).await, StatusCode::CREATED);
    }
    for _ in 0..10 {
        c.users().await;
    }
    let (status, _) = c
        .api(Method::GET, "/api/v1/rides?source=1&destination=2", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // In `up` the services call the orchestrator in process: its HTTP API counts only the
    // calls made to it over HTTP, as this one.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/v1/db/read", up.orchestrator))
        .headers(common::admin_headers())
        .json(&json!({"op": {"op": "count_rides"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);

    for (role, addr) in roles {
        let after = scrape(addr).await;
        let moved = |metric: &str, labels: &[(&str, &str)]| {
            total(&after, metric, labels) - total(&before[role], metric, labels)
        };
        let own = [("service", role)];
        let expected = match role {
            "gateway" => 16.0,
            "users" => 15.0,
            "rides" => 1.0,
            _ => 1.0,
        };
        assert!(
            moved("rideshare_http_requests_total", &own) >= expected,
            "{role}: requests counted {} (expected at least {expected})",
            moved("rideshare_http_requests_total", &own)
        );
        assert!(
            moved("rideshare_http_request_duration_seconds", &own) >= expected,
            "{role}: latency histogram did not move"
        );
        assert!(
            after
                .docs
                .contains_key("rideshare_http_request_duration_seconds"),
            "{role}: histogram has no HELP"
        );
    }
    let orchestrator = scrape(up.orchestrator).await;
    let o = &before["orchestrator"];
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        total(&orchestrator, metric, labels) - total(o, metric, labels)
    };
    assert!(moved("rideshare_db_writes_total", &[("result", "acknowledged")]) >= 5.0);
    assert!(
        moved(
            "rideshare_db_reads_total",
            &[("consistency", "strong"), ("result", "answered")]
        ) >= 11.0
    );
    assert!(total(&orchestrator, "rideshare_scale_window_reads", &[]) >= 11.0);
    assert_eq!(total(&orchestrator, "rideshare_master_up", &[]), 1.0);
    assert_eq!(
        total(
            &orchestrator,
            "rideshare_worker_info",
            &[("role", "master")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &orchestrator,
            "rideshare_worker_info",
            &[("role", "slave"), ("state", "serving")]
        ),
        1.0
    );
    let acked = total(&orchestrator, "rideshare_acked_index", &[]);
    assert!(acked >= 6.0, "acked index {acked}");
    let master_pid = c.pids().await[0].to_string();
    assert!(
        total(
            &orchestrator,
            "rideshare_worker_applied_index",
            &[("pid", &master_pid)]
        ) >= acked,
        "the master has applied every acknowledged write"
    );
    up.stop().await.unwrap();
}

/// How long after the crash a probe may still find the cluster ready: an embedded failover can
/// be over before the first probe after it, so a window with no 503 is retried by the caller.
const FIND_UNREADY: Duration = Duration::from_secs(3);
/// How long after the crash the cluster must be ready again once it was seen unready: a new
/// master, and a replacement slave started and caught up. Failover p99 was 8.3 s under 64
/// clients (docs/reliability.md); a CI run once took over 3 s here with two other tests beside.
const READY_AGAIN: Duration = Duration::from_secs(20);

/// Crashes the master while probing `/ready` as fast as it answers; answers what was seen: until
/// it was 200 again after a 503, or no 503 in `FIND_UNREADY`, or `READY_AGAIN` passed.
async fn crash_master_watching_ready(up: &Up, c: &Client) -> Vec<(StatusCode, String)> {
    let ready_url = format!("http://{}/ready", up.orchestrator);
    let seen: Arc<Mutex<Vec<(StatusCode, String)>>> = Arc::default();
    let watcher = tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            let started = Instant::now();
            loop {
                let answer = get(ready_url.clone()).await;
                let was_unready = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE);
                let done = answer.0 == StatusCode::OK && was_unready;
                let is_unready = was_unready || answer.0 == StatusCode::SERVICE_UNAVAILABLE;
                seen.lock().unwrap().push(answer);
                let bound = if is_unready {
                    READY_AGAIN
                } else {
                    FIND_UNREADY
                };
                if done || started.elapsed() >= bound {
                    return;
                }
                if is_unready {
                    // The 503 is seen; the probes need not crowd the recovery.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, _) = c.orch(Method::POST, "/api/v1/crash/master").await;
    assert_eq!(status, StatusCode::OK);
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_with_a_reason_during_a_failover_and_200_after() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c) = started(dir.path()).await;
    // An embedded failover can be over within a few probes; on a loaded machine a probe may
    // miss it. Up to three failovers, then the 503 must have been seen.
    let mut attempts = Vec::new();
    let unready = loop {
        let (status, _) = get(format!("http://{}/ready", up.orchestrator)).await;
        assert_eq!(status, StatusCode::OK, "ready before the crash");
        let seen = crash_master_watching_ready(&up, &c).await;
        attempts.push(seen.len());
        if let Some(unready) = seen
            .iter()
            .find(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        {
            assert_eq!(
                seen.last().map(|(s, _)| *s),
                Some(StatusCode::OK),
                "ready again within {READY_AGAIN:?} of the crash; last answers: {:?}",
                &seen[seen.len().saturating_sub(3)..]
            );
            break unready.clone();
        }
        assert!(
            attempts.len() < 3,
            "no 503 seen during 3 failovers (probes: {attempts:?})"
        );
        wait_ready(&up, Duration::from_secs(10)).await;
    };
    let body: Value = serde_json::from_str(&unready.1).unwrap();
    assert_eq!(body["status"], "not ready");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // And it serves again.
    assert_eq!(c.add_user("after-failover").await, StatusCode::CREATED);
    up.stop().await.unwrap();
}

/// Log lines of this test binary, as JSON, one per line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn capture_logs() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let filter = tracing_subscriber::EnvFilter::new(
                "info,rideshare_core=debug,rideshare_dbaas=debug",
            );
            tracing::subscriber::set_global_default(subscriber(
                LogFormat::Json,
                filter,
                captured.clone(),
                false,
            ))
            .expect("no other subscriber in this test binary");
            captured
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_is_in_the_gateway_service_orchestrator_and_worker_logs() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let (up, _c) = started(dir.path()).await;

    // No id sent: the gateway makes one and answers with it.
    let response = reqwest::Client::new()
        .put(format!("http://{}/api/v1/users", up.gateway))
        .json(&json!({"username": "traced", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.len() >= 16, "a generated id: {id:?}");
    // A rides request checks its user through the gateway: the same id comes back in.
    let rides_id = format!("{id}-ride");
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/rides", up.gateway))
        .header("x-request-id", &rides_id)
        .json(&json!({"created_by": "traced", "timestamp": "01-09-2099:05-10-17", "source": 1, "destination": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-request-id"], rides_id.as_str());
    up.stop().await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let hops = |id: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["span"]["request_id"] == id)
            .map(|line| match line["span"]["name"].as_str() {
                Some("db") => "worker".to_owned(),
                _ => line["span"]["service"].as_str().unwrap_or("?").to_owned(),
            })
            .collect()
    };
    let expected: BTreeSet<String> = ["gateway", "users", "orchestrator", "worker"]
        .map(String::from)
        .into();
    assert_eq!(hops(&id), expected, "hops that logged request {id}");
    let expected: BTreeSet<String> = ["gateway", "users", "rides", "orchestrator", "worker"]
        .map(String::from)
        .into();
    assert_eq!(hops(&rides_id), expected, "hops that logged {rides_id}");
}
