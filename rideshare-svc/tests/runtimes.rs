//! One `Runtime` conformance check, run against the real runtimes: `ProcessRuntime` (needs
//! nothing) and `DockerRuntime` (needs the Docker engine and the worker image; ignored unless
//! asked for, and failing loudly when asked without them).
//!
//! The workers here are stand-ins that live until killed and need no engine (`rideshare worker`
//! needs RabbitMQ and ZooKeeper): `sleep` for processes, `rideshare up` on ephemeral loopback
//! ports for containers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rideshare_dbaas::error::Error;
use rideshare_dbaas::runtime::{Runtime, WorkerHandle};
use rideshare_svc::adapters::docker::{DockerConfig, DockerRuntime, CLUSTER_LABEL};
use rideshare_svc::adapters::process::{ProcessConfig, ProcessRuntime};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills a worker behind its runtime's back, as a crash would.
fn crash(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

async fn wait_until_unlisted<R: Runtime>(rt: &R, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = rt.list().await.expect("list");
        if list.iter().all(|w| w.id != id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker {id} still listed 10 s after its process died: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_worker(result: Result<(), Error>, id: &str) {
    match result {
        Err(Error::NoWorker(got)) => assert_eq!(got, id),
        other => panic!("kill({id}): expected NoWorker, got {other:?}"),
    }
}

/// What every runtime must do. `host_pid(id)` is the pid the runtime's own engine reports for
/// a worker, when it has one besides the runtime (Docker's inspect).
async fn conformance<R: Runtime>(rt: &R, host_pid: impl Fn(&str) -> Option<u32>) {
    assert_eq!(
        rt.list().await.expect("list"),
        vec![],
        "a new runtime runs nothing"
    );

    let a = rt.start().await.expect("start a");
    let b = rt.start().await.expect("start b");
    assert_ne!(a.id, b.id, "ids are unique");
    assert_ne!(a.pid, b.pid, "pids are unique");
    assert!(a.pid > 0 && b.pid > 0, "pids are real: {a:?} {b:?}");
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort_by_key(|w| w.pid);
    assert_eq!(
        rt.list().await.expect("list"),
        expected,
        "both listed, by pid"
    );
    for w in [&a, &b] {
        assert!(alive(w.pid), "{w:?}: no /proc/{}", w.pid);
        if let Some(pid) = host_pid(&w.id) {
            assert_eq!(pid, w.pid, "{w:?}: the engine reports pid {pid}");
        }
    }

    rt.kill(&a.id).await.expect("kill a");
    assert_eq!(rt.list().await.expect("list"), vec![b.clone()], "a is gone");
    assert!(!alive(a.pid), "a's process {} outlived kill", a.pid);
    assert_no_worker(rt.kill(&a.id).await, &a.id);

    crash(b.pid);
    wait_until_unlisted(rt, &b.id).await;
    assert!(!alive(b.pid), "b's process {} is still there", b.pid);
    assert_eq!(rt.list().await.expect("list"), Vec::<WorkerHandle>::new());
    assert_no_worker(rt.kill(&b.id).await, &b.id);

    assert_no_worker(rt.kill("no-such-worker").await, "no-such-worker");
}

// ---- processes ----

fn sleeper() -> ProcessConfig {
    ProcessConfig {
        program: "/bin/sleep".into(),
        args: vec!["30".to_owned()],
        env: vec![],
        id_prefix: "test-worker".to_owned(),
        // `sleep` takes no id.
        id_arg: None,
        log_dir: None,
    }
}

#[tokio::test]
async fn process_runtime_conforms() {
    let rt = ProcessRuntime::new(sleeper());
    conformance(&rt, |_| None).await;
}

#[tokio::test]
async fn process_runtime_passes_the_runtime_suite() {
    rideshare_dbaas::conformance::runtime_suite(|| async { ProcessRuntime::new(sleeper()) })
        .await
        .assert_passed();
}

#[tokio::test]
async fn process_runtime_passes_the_id_and_logs_to_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    // `sh -c SCRIPT --id ID` binds $0 to `--id` and $1 to ID.
    let rt = ProcessRuntime::new(ProcessConfig {
        program: "/bin/sh".into(),
        args: vec![
            "-c".to_owned(),
            r#"echo "$0 $1 $RIDESHARE_TEST_SECRET"; exec sleep 30"#.to_owned(),
        ],
        env: vec![("RIDESHARE_TEST_SECRET".to_owned(), "s3cret".to_owned())],
        id_prefix: "logged".to_owned(),
        id_arg: Some("--id".to_owned()),
        log_dir: Some(logs.clone()),
    });
    let w = rt.start().await.expect("start");
    assert!(w.id.starts_with("logged-"), "{w:?}");
    let log = logs.join(format!("{}.log", w.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.ends_with('\n') || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(text, format!("--id {} s3cret\n", w.id));
    rt.kill(&w.id).await.expect("kill");
}

#[tokio::test]
async fn process_that_exits_by_itself_vanishes() {
    let rt = ProcessRuntime::new(ProcessConfig {
        program: "/bin/true".into(),
        args: vec![],
        ..sleeper()
    });
    let w = rt.start().await.expect("start");
    wait_until_unlisted(&rt, &w.id).await;
    assert!(!alive(w.pid), "exited worker {} was not reaped", w.pid);
    assert_no_worker(rt.kill(&w.id).await, &w.id);
}

#[tokio::test]
async fn dropping_the_process_runtime_kills_its_workers() {
    let rt = ProcessRuntime::new(sleeper());
    let w = rt.start().await.expect("start");
    assert!(alive(w.pid));
    drop(rt);
    assert!(!alive(w.pid), "worker {} outlived its runtime", w.pid);
}

#[tokio::test]
async fn process_runtime_reports_a_missing_program() {
    let rt = ProcessRuntime::new(ProcessConfig {
        program: "/nonexistent/rideshare".into(),
        ..sleeper()
    });
    let err = rt.start().await.expect_err("start must fail");
    assert!(format!("{err}").contains("/nonexistent/rideshare"), "{err}");
    assert_eq!(rt.list().await.expect("list"), vec![]);
}

// ---- Docker ----

const DOCKER: &str = "needs Docker and the worker image: run ./scripts/test.sh";
const IMAGE: &str = "rideshare-worker:latest";

/// A cluster label of its own per test, and every container of it removed at the end, even
/// when the test fails.
struct Cluster(String);

impl Cluster {
    fn new(test: &str) -> Self {
        Cluster(format!(
            "test-{test}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={CLUSTER_LABEL}={}", self.0))
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(ids).output();
        }
    }
}

/// Worker containers that live until killed: `rideshare up` on ephemeral loopback ports (host
/// network), standing in for `rideshare worker`. The id goes to `--data-dir`, which `up` takes,
/// so the id is still passed the way production passes `--id`.
fn long_lived(cluster: &Cluster) -> DockerConfig {
    let any_port = "127.0.0.1:0".to_owned();
    DockerConfig {
        image: IMAGE.to_owned(),
        cmd_prefix: vec!["up".to_owned()],
        args: ["--gateway", "--users", "--rides", "--orchestrator"]
            .into_iter()
            .flat_map(|flag| [flag.to_owned(), any_port.clone()])
            .collect(),
        cluster: cluster.0.clone(),
        id_prefix: "test-worker".to_owned(),
        id_arg: Some("--data-dir".to_owned()),
        ..DockerConfig::default()
    }
}

async fn docker_runtime(config: DockerConfig) -> DockerRuntime {
    let rt = DockerRuntime::new(config)
        .await
        .unwrap_or_else(|e| panic!("the Docker engine is needed ({DOCKER}): {e}"));
    if let Err(e) = rt.ensure_image().await {
        panic!("{e}");
    }
    rt
}

fn inspect(name: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "docker inspect {name} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
#[ignore = "needs Docker and the worker image: run ./scripts/test.sh"]
async fn docker_runtime_conforms() {
    let cluster = Cluster::new("conforms");
    let rt = docker_runtime(long_lived(&cluster)).await;
    conformance(&rt, |name| {
        let cmd = inspect(name, "{{json .Config.Cmd}}");
        assert!(
            cmd.ends_with(&format!(r#""--data-dir","{name}"]"#)),
            "{name} was not given its id: {cmd}"
        );
        Some(inspect(name, "{{.State.Pid}}").parse().expect("a pid"))
    })
    .await;
    assert_eq!(
        cluster.containers(),
        Vec::<String>::new(),
        "killed and crashed workers leave no container"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the worker image: run ./scripts/test.sh"]
async fn docker_runtime_passes_the_runtime_suite() {
    let cluster = Cluster::new("suite");
    let config = long_lived(&cluster);
    rideshare_dbaas::conformance::runtime_suite(|| docker_runtime(config.clone()))
        .await
        .assert_passed();
    assert!(
        cluster.containers().is_empty(),
        "the suite leaves no container"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the worker image: run ./scripts/test.sh"]
async fn docker_clusters_do_not_touch_each_other() {
    let (one, two) = (Cluster::new("one"), Cluster::new("two"));
    let rt1 = docker_runtime(long_lived(&one)).await;
    let rt2 = docker_runtime(long_lived(&two)).await;
    let w = rt1.start().await.expect("start");
    assert_eq!(rt2.list().await.expect("list"), vec![]);
    assert_no_worker(rt2.kill(&w.id).await, &w.id);
    assert_eq!(rt1.list().await.expect("list"), vec![w.clone()]);
    assert_eq!(rt2.remove_all().await.expect("remove_all"), 0);
    assert_eq!(rt1.remove_all().await.expect("remove_all"), 1);
    assert!(!alive(w.pid), "remove_all left {} running", w.pid);
    assert_eq!(one.containers(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs Docker and the worker image: run ./scripts/test.sh"]
async fn docker_pauses_and_resumes_only_its_own_cluster() {
    let (one, two) = (Cluster::new("pause-one"), Cluster::new("pause-two"));
    let rt1 = docker_runtime(long_lived(&one)).await;
    let rt2 = docker_runtime(long_lived(&two)).await;
    let w = rt1.start().await.expect("start");
    assert_no_worker(rt2.pause(&w.id).await, &w.id);
    assert_eq!(inspect(&w.id, "{{.State.Paused}}"), "false");
    rt1.pause(&w.id).await.expect("pause");
    assert_eq!(inspect(&w.id, "{{.State.Paused}}"), "true");
    assert_no_worker(rt2.unpause(&w.id).await, &w.id);
    rt1.unpause(&w.id).await.expect("unpause");
    assert_eq!(inspect(&w.id, "{{.State.Paused}}"), "false");
    assert_eq!(rt1.remove_all().await.expect("remove_all"), 1);
    assert_no_worker(rt1.pause(&w.id).await, &w.id);
}

#[tokio::test]
#[ignore = "needs Docker and the worker image: run ./scripts/test.sh"]
async fn docker_runtime_names_the_missing_image() {
    let cluster = Cluster::new("noimage");
    let rt = DockerRuntime::new(DockerConfig {
        image: "rideshare-worker:no-such-tag".to_owned(),
        ..long_lived(&cluster)
    })
    .await
    .unwrap_or_else(|e| panic!("the Docker engine is needed ({DOCKER}): {e}"));
    let err = rt.start().await.expect_err("start must fail");
    assert!(
        matches!(&err, Error::Runtime(m) if m.contains("build-worker-image.sh")),
        "{err:?}"
    );
    assert!(rt.ensure_image().await.is_err());
    assert_eq!(cluster.containers(), Vec::<String>::new());
}
