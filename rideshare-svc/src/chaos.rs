//! `rideshare chaos`: the distributed system on the real engines under injected faults, with a
//! recorded history and a checker (Jepsen-style).
//!
//! It runs an orchestrator process (Docker workers) in a RabbitMQ virtual host and a ZooKeeper
//! chroot of its own, drives concurrent clients against it, and injects faults on a schedule:
//! crash the master, crash a slave, kill -9 and restart the orchestrator, restart RabbitMQ,
//! restart ZooKeeper, pause the master past its session timeout and resume it, and read bursts
//! that make the scaler add and then remove slaves. Then it replays the write log and checks
//! the history against it (`rideshare_dbaas::checker`). Traffic goes to loopback only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use rideshare_core::store::SqliteStore;
use rideshare_core::{Area, RideId, Timestamp, Username};
use rideshare_dbaas::checker::{
    check, Completion, Event, Operation, Replay, ReplicaState, Verdict,
};
use rideshare_dbaas::coord::Coordinator;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::protocol::{decode, CatchUp, MasterRecord, MemberRecord, MASTER, WORKERS};
use serde::Serialize;
use serde_json::{json, Value};

use crate::adapters::rabbit::RabbitLog;
use crate::adapters::zk::ZkCoordinator;
use crate::cli::RuntimeKind;

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// How long faults are injected (then the run settles and is checked).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// RabbitMQ URL without a virtual host; the run creates its own vhost (needs `rabbitmqctl`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    pub amqp_base: String,
    /// ZooKeeper connect string; the run uses a chroot of its own.
    #[arg(long, default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// ZooKeeper session timeout of the orchestrator and the workers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub zk_session_timeout: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Time between faults.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub fault_interval: Duration,
    /// Faults to inject, in rotation.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "crash-master,crash-slave,kill-orchestrator,pause-master,restart-rabbitmq,restart-zookeeper,scale,crash-master"
    )]
    pub faults: Vec<Fault>,
    /// The orchestrator's scaling window during the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub scale_interval: Duration,
    /// The orchestrator's reads per slave during the run: the clients read all the time, so the
    /// contract's 20 would keep the cluster at its maximum and the scale fault would show nothing.
    #[arg(long, default_value_t = 200)]
    pub reads_per_slave: u64,
    #[arg(long, default_value = "rideshare-worker:latest")]
    pub worker_image: String,
    /// Where workers run: Docker containers (paused with `docker pause`) or processes of this
    /// binary (paused with SIGSTOP).
    #[arg(long, value_enum, default_value = "docker")]
    pub runtime: crate::cli::RuntimeKind,
    /// Command that restarts RabbitMQ (run with `sh -c`).
    #[arg(long, default_value = "scripts/engines.sh restart-rabbitmq")]
    pub restart_rabbitmq_cmd: String,
    /// Command that restarts ZooKeeper (run with `sh -c`).
    #[arg(long, default_value = "scripts/engines.sh restart-zk")]
    pub restart_zk_cmd: String,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    CrashMaster,
    CrashSlave,
    KillOrchestrator,
    PauseMaster,
    RestartRabbitmq,
    RestartZookeeper,
    Scale,
}

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub passed: bool,
    /// lost, duplicated, stale_reads, replica_mismatches, ops_ok/failed/unknown, problems.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub failover_ms_p50: u64,
    pub failover_ms_p99: u64,
    pub failover_ms_max: u64,
    pub failovers: usize,
    pub replacement_ms_p50: u64,
    pub replacement_ms_max: u64,
    /// Workers' own catch-up at start (log entries applied before serving, per second of it),
    /// over every worker seen with something to catch up.
    pub catch_up_entries_per_s: u64,
    pub catch_up_ms_max: u64,
    pub catch_ups: usize,
    /// The checker's reference replay of the whole stream into a fresh SQLite store.
    pub reference_replay_entries_per_s: u64,
    pub log_entries: u64,
    pub epochs: u64,
    pub replicas_checked: usize,
    pub faults: BTreeMap<String, u32>,
    pub duration_s: u64,
}

/// A RabbitMQ vhost and ZooKeeper chroot for one run; removed (with the run's containers) at
/// the end.
struct Namespace {
    name: String,
    amqp: String,
    zk: String,
    /// The run's admin token: the orchestrator requires it on every call.
    admin_token: String,
}

fn sh(command: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", command])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

impl Namespace {
    fn create(args: &ChaosArgs) -> anyhow::Result<Self> {
        let name = format!("chaos-{:08x}", rand::random::<u32>());
        sh(&format!("rabbitmqctl -q add_vhost {name}"))
            .context("creating a RabbitMQ vhost (is RabbitMQ running, and rabbitmqctl here?)")?;
        sh(&format!(
            "rabbitmqctl -q set_permissions -p {name} guest '.*' '.*' '.*'"
        ))?;
        Ok(Namespace {
            amqp: format!("{}/{name}", args.amqp_base.trim_end_matches('/')),
            zk: format!("{}/{name}", args.zk),
            admin_token: format!("{:032x}", rand::random::<u128>()),
            name,
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "docker ps -aq --filter label=rideshare.cluster={} | xargs -r docker rm -f",
            self.name
        ));
        let _ = sh(&format!("rabbitmqctl -q delete_vhost {}", self.name));
    }
}

struct Orchestrator {
    child: Child,
    listen: SocketAddr,
}

fn spawn_orchestrator(
    args: &ChaosArgs,
    ns: &Namespace,
    listen: SocketAddr,
    log_path: &PathBuf,
) -> anyhow::Result<Orchestrator> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let child = Command::new(std::env::current_exe()?)
        .args([
            "orchestrator",
            "--listen",
            &listen.to_string(),
            "--zk",
            &ns.zk,
            "--zk-session-timeout",
            &humantime::format_duration(args.zk_session_timeout).to_string(),
            "--runtime",
            match args.runtime {
                RuntimeKind::Docker => "docker",
                RuntimeKind::Process => "process",
            },
            "--worker-program",
            &std::env::current_exe()?.display().to_string(),
            "--worker-data-dir",
            &std::env::temp_dir()
                .join(&ns.name)
                .join("workers")
                .display()
                .to_string(),
            "--cluster",
            &ns.name,
            "--worker-image",
            &args.worker_image,
            "--scale-interval",
            &humantime::format_duration(args.scale_interval).to_string(),
            "--reads-per-slave",
            &args.reads_per_slave.to_string(),
        ])
        // The URL and the token are secrets: the environment, not the command line.
        .env("RIDESHARE_AMQP_URL", &ns.amqp)
        .env("RIDESHARE_ADMIN_TOKEN", &ns.admin_token)
        .env("RIDESHARE_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the orchestrator process")?;
    Ok(Orchestrator { child, listen })
}

/// The clients' view of the orchestrator's HTTP API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    started: Instant,
}

impl Api {
    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn post(&self, path: &str, body: Value) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
    }

    async fn write(&self, request_id: &RequestId, op: &WriteOp) -> Completion {
        match self
            .post(
                "/api/v1/db/write",
                json!({"request_id": request_id, "op": op}),
            )
            .await
        {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(v) => match (
                    v["index"].as_u64(),
                    serde_json::from_value::<WriteOutcome>(v["outcome"].clone()),
                ) {
                    (Some(index), Ok(outcome)) => Completion::Written { index, outcome },
                    _ => Completion::Unknown {
                        reason: format!("unreadable answer {v}"),
                    },
                },
                Err(e) => Completion::Unknown {
                    reason: e.to_string(),
                },
            },
            Ok(r) if r.status().is_client_error() => Completion::Failed {
                reason: format!("{}", r.status()),
            },
            // A 503 after retries, or a lost connection: the write may still be applied.
            Ok(r) => Completion::Unknown {
                reason: format!("{}", r.status()),
            },
            Err(e) if e.is_connect() => Completion::Failed {
                reason: "orchestrator down".into(),
            },
            Err(e) => Completion::Unknown {
                reason: e.to_string(),
            },
        }
    }

    async fn read(&self, op: &ReadOp) -> Result<(u64, String, ReadOutcome), String> {
        let r = self
            .post("/api/v1/db/read", json!({"op": op}))
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(r.status().to_string());
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let outcome = serde_json::from_value(v["outcome"].clone()).map_err(|e| e.to_string())?;
        Ok((
            v["applied_index"].as_u64().unwrap_or(0),
            v["worker"].as_str().unwrap_or_default().to_owned(),
            outcome,
        ))
    }

    async fn pids(&self) -> Option<Vec<u64>> {
        let r = self
            .http
            .get(format!("{}/api/v1/worker/list", self.base))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn crash(&self, what: &str) -> Result<u64, String> {
        let r = self
            .http
            .post(format!("{}/api/v1/crash/{what}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        v[0].as_u64().ok_or_else(|| format!("{status} {v}"))
    }
}

fn random_write(rng: &mut SmallRng, client: u64, n: u64) -> WriteOp {
    let user = |rng: &mut SmallRng| {
        Username::parse(&format!("u{}-{}", rng.gen_range(0..4), rng.gen_range(0..8)))
            .unwrap_or_else(|_| unreachable!())
    };
    match rng.gen_range(0..10) {
        0..=3 => WriteOp::AddUser {
            username: Username::parse(&format!("u{client}-{}", n % 8))
                .unwrap_or_else(|_| unreachable!()),
            password_hash: "$argon2id$chaos".into(),
        },
        4..=6 => WriteOp::CreateRide {
            created_by: user(rng),
            timestamp: Timestamp::from_seconds(4_102_444_800 + rng.gen_range(0..86_400))
                .unwrap_or_else(|| unreachable!()),
            source: Area::new(rng.gen_range(1..5)).unwrap_or_else(|_| unreachable!()),
            destination: Area::new(rng.gen_range(1..5)).unwrap_or_else(|_| unreachable!()),
        },
        7..=8 => WriteOp::JoinRide {
            ride_id: RideId(rng.gen_range(1..200)),
            username: user(rng),
        },
        _ => WriteOp::DeleteRide {
            ride_id: RideId(rng.gen_range(1..200)),
        },
    }
}

fn random_read(rng: &mut SmallRng) -> ReadOp {
    match rng.gen_range(0..3) {
        0 => ReadOp::ListUsers,
        1 => ReadOp::CountRides,
        _ => ReadOp::GetRide {
            ride_id: RideId(rng.gen_range(1..200)),
        },
    }
}

async fn client(
    api: Api,
    id: u64,
    seed: u64,
    history: Arc<Mutex<Vec<Event>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(id));
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let invoked_ms = api.ms();
        let (operation, completion) = if rng.gen_bool(0.5) {
            let request_id = RequestId(format!("c{id}-{n}-{:08x}", rng.gen::<u32>()));
            let op = random_write(&mut rng, id, n);
            let completion = api.write(&request_id, &op).await;
            (Operation::Write { request_id, op }, completion)
        } else {
            let op = random_read(&mut rng);
            let completion = match api.read(&op).await {
                Ok((applied_index, _, _)) => Completion::Read { applied_index },
                Err(reason) => Completion::Failed { reason },
            };
            (Operation::Read { op }, completion)
        };
        let failed = !matches!(
            completion,
            Completion::Written { .. } | Completion::Read { .. }
        );
        history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Event {
                client: usize::try_from(id).unwrap_or(0),
                operation,
                invoked_ms,
                completed_ms: api.ms(),
                completion,
            });
        // Bounded pace: back off a little while the system is failing over.
        let pause = if failed { 200 } else { rng.gen_range(5..40) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn wait_for<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < bound {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Every live worker's member record (id, pid, role, catch-up, state digest).
async fn members(zk: &ZkCoordinator) -> Vec<MemberRecord> {
    let Ok(session) = zk.connect().await else {
        return vec![];
    };
    let Ok(children) = session.children(WORKERS).await else {
        return vec![];
    };
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        if let Ok(Some((data, _))) = session.get(&format!("{WORKERS}/{child}")).await {
            if let Ok(record) = decode::<MemberRecord>(&data) {
                out.push(record);
            }
        }
    }
    out
}

async fn master(zk: &ZkCoordinator) -> Option<MasterRecord> {
    let session = zk.connect().await.ok()?;
    let (data, _) = session.get(MASTER).await.ok()??;
    decode::<MasterRecord>(&data).ok()
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let ns = Namespace::create(&args)?;
    let work_dir = std::env::temp_dir().join(&ns.name);
    std::fs::create_dir_all(&work_dir)?;
    let orchestrator_log = work_dir.join("orchestrator.log");
    println!(
        "chaos: namespace {} (logs in {})",
        ns.name,
        work_dir.display()
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut orchestrator = spawn_orchestrator(&args, &ns, listen, &orchestrator_log)?;
    let mut admin = reqwest::header::HeaderMap::new();
    admin.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", ns.admin_token).parse()?,
    );
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .default_headers(admin)
            .build()?,
        base: format!("http://{}", orchestrator.listen),
        started: Instant::now(),
    };
    let zk = ZkCoordinator::new(&ns.zk, Duration::from_secs(4));
    let probe = |n: u64| WriteOp::AddUser {
        username: Username::parse(&format!("probe-{n}")).unwrap_or_else(|_| unreachable!()),
        password_hash: "$argon2id$chaos".into(),
    };
    let ready = wait_for(Duration::from_secs(90), || async {
        matches!(
            api.write(&RequestId::random(), &probe(0)).await,
            Completion::Written { .. }
        )
    })
    .await;
    if !ready {
        bail!(
            "the cluster did not accept a write within 90 s (see {})",
            orchestrator_log.display()
        );
    }

    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..args.clients {
        clients.spawn(client(
            api.clone(),
            id,
            args.seed,
            Arc::clone(&history),
            stopped.clone(),
        ));
    }

    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    let mut failover_starts: Vec<u64> = Vec::new();
    let mut replacements: Vec<u64> = Vec::new();
    let mut catch_ups: BTreeMap<String, CatchUp> = BTreeMap::new();
    let started = Instant::now();
    let mut k = 0usize;
    while started.elapsed() < args.duration && !args.faults.is_empty() {
        tokio::time::sleep(args.fault_interval).await;
        let fault = args.faults[k % args.faults.len()];
        k += 1;
        let at = api.ms();
        let what = match fault {
            Fault::CrashMaster => match api.crash("master").await {
                Ok(pid) => {
                    failover_starts.push(at);
                    format!("crashed master {pid}")
                }
                Err(e) => format!("crash master refused: {e}"),
            },
            Fault::CrashSlave => {
                let before = api.pids().await.unwrap_or_default().len();
                match api.crash("slave").await {
                    Ok(pid) => {
                        let t = Instant::now();
                        let back = wait_for(Duration::from_secs(60), || async {
                            api.pids()
                                .await
                                .is_some_and(|p| p.len() >= before && !p.contains(&pid))
                        })
                        .await;
                        if back {
                            replacements
                                .push(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
                        }
                        format!("crashed slave {pid}, replaced: {back}")
                    }
                    Err(e) => format!("crash slave refused: {e}"),
                }
            }
            Fault::KillOrchestrator => {
                let _ = orchestrator.child.kill();
                let _ = orchestrator.child.wait();
                tokio::time::sleep(Duration::from_secs(1)).await;
                orchestrator = spawn_orchestrator(&args, &ns, listen, &orchestrator_log)?;
                "kill -9 orchestrator, restarted".into()
            }
            Fault::PauseMaster => match master(&zk).await {
                Some(m) => {
                    let (pause, resume) = match args.runtime {
                        RuntimeKind::Docker => (
                            format!("docker pause {}", m.id),
                            format!("docker unpause {}", m.id),
                        ),
                        RuntimeKind::Process => (
                            format!("kill -STOP {}", m.pid),
                            format!("kill -CONT {}", m.pid),
                        ),
                    };
                    sh(&pause)?;
                    failover_starts.push(at);
                    // Past the session timeout: the master's nodes expire and a slave takes
                    // over while the old master is frozen; then it resumes, a zombie.
                    tokio::time::sleep(args.zk_session_timeout * 3).await;
                    let resumed = sh(&resume).is_ok();
                    format!(
                        "paused master {} for {:?}, resumed: {resumed}",
                        m.id,
                        args.zk_session_timeout * 3
                    )
                }
                None => "no master to pause".into(),
            },
            Fault::RestartRabbitmq => {
                sh(&args.restart_rabbitmq_cmd)?;
                "restarted RabbitMQ".into()
            }
            Fault::RestartZookeeper => {
                sh(&args.restart_zk_cmd)?;
                "restarted ZooKeeper".into()
            }
            Fault::Scale => {
                for _ in 0..60 {
                    let _ = api.read(&ReadOp::CountRides).await;
                }
                "60 extra reads (scale out at the window's end, back in after)".into()
            }
        };
        for m in members(&zk).await {
            if let Some(c) = m.catch_up {
                catch_ups.insert(m.id, c);
            }
        }
        // A fault the system refused (no master at that moment) was not injected.
        let refused = what.contains("refused") || what.starts_with("no master");
        if !refused {
            *injected.entry(format!("{fault:?}")).or_default() += 1;
        }
        let (ok, failed, unknown) = {
            let h = history.lock().unwrap_or_else(|e| e.into_inner());
            let ok = h
                .iter()
                .filter(|e| {
                    matches!(
                        e.completion,
                        Completion::Written { .. } | Completion::Read { .. }
                    )
                })
                .count();
            let unknown = h
                .iter()
                .filter(|e| matches!(e.completion, Completion::Unknown { .. }))
                .count();
            (ok, h.len() - ok - unknown, unknown)
        };
        println!(
            "[{:>4}s] {what}; ops ok {ok}, failed {failed}, unknown {unknown}; workers {:?}",
            started.elapsed().as_secs(),
            api.pids().await.unwrap_or_default()
        );
    }

    // Settle: the cluster must accept writes again, then the clients stop.
    println!(
        "chaos: faults over after {} s; settling",
        started.elapsed().as_secs()
    );
    let settled = wait_for(Duration::from_secs(120), || async {
        matches!(
            api.write(&RequestId::random(), &probe(1)).await,
            Completion::Written { .. }
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    while clients.join_next().await.is_some() {}
    if !settled {
        bail!("the cluster did not accept writes within 120 s after the faults");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Replicas: every live worker, the master included, publishes its applied index and
    // checksum in its member node once the log is quiet. Wait until each has the whole log.
    let log = RabbitLog::connect(&ns.amqp, "rideshare.log").await?;
    let end = log.end().await?;
    let waited = Instant::now();
    let last = loop {
        let now = members(&zk).await;
        let whole = |m: &MemberRecord| m.state.is_some_and(|s| s.applied_index >= end);
        if !now.is_empty() && now.iter().all(whole) {
            break now;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            // The checker counts each replica short of the log as behind.
            println!("chaos: not every replica published the whole log within 30 s");
            break now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let replica_states: Vec<ReplicaState> = last
        .iter()
        .map(|m| ReplicaState {
            worker: format!("{} (pid {}, {:?})", m.id, m.pid, m.role),
            applied_index: m.state.map_or(0, |s| s.applied_index),
            checksum: m.state.map_or(0, |s| s.checksum),
        })
        .collect();
    for m in &last {
        if let Some(c) = m.catch_up {
            catch_ups.insert(m.id.clone(), c);
        }
    }

    // The reference: replay the whole log stream into a fresh SQLite store.
    let store_path = work_dir.join("reference.db");
    let mut replay = Replay::new(SqliteStore::open(&store_path)?);
    let replay_started = Instant::now();
    let mut reader = log.read_from(1).await?;
    while replay.end < end {
        let record = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .context("the log stream stopped delivering")?
            .context("the log stream closed")??;
        replay.apply(&record)?;
    }
    let reference_replay = end as f64 / replay_started.elapsed().as_secs_f64().max(1e-3);
    let events = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    let (caught_up_entries, caught_up_ms, catch_up_ms_max) = catch_ups
        .values()
        .filter(|c| c.entries > 0)
        .fold((0u64, 0u64, 0u64), |(e, t, m), c| {
            (e + c.entries, t + c.ms, m.max(c.ms))
        });
    let verdict: Verdict = check(&events, &mut replay, &replica_states)?;

    // Failover: fault → first write invoked after it and acknowledged.
    let mut failovers: Vec<u64> = failover_starts
        .iter()
        .filter_map(|&t| {
            events
                .iter()
                .filter(|e| e.invoked_ms >= t && matches!(e.completion, Completion::Written { .. }))
                .map(|e| e.completed_ms - t)
                .min()
        })
        .collect();
    failovers.sort_unstable();
    replacements.sort_unstable();
    let figures = Figures {
        passed: verdict.passed(),
        verdict,
        failover_ms_p50: percentile(&failovers, 50.0),
        failover_ms_p99: percentile(&failovers, 99.0),
        failover_ms_max: failovers.last().copied().unwrap_or(0),
        failovers: failovers.len(),
        replacement_ms_p50: percentile(&replacements, 50.0),
        replacement_ms_max: replacements.last().copied().unwrap_or(0),
        catch_up_entries_per_s: (caught_up_entries as f64 * 1000.0 / caught_up_ms.max(1) as f64)
            as u64,
        catch_up_ms_max,
        catch_ups: catch_ups.values().filter(|c| c.entries > 0).count(),
        reference_replay_entries_per_s: reference_replay as u64,
        log_entries: end,
        epochs: replay.epochs,
        replicas_checked: replica_states.len(),
        faults: injected,
        duration_s: started.elapsed().as_secs(),
    };
    let _ = orchestrator.child.kill();
    let _ = orchestrator.child.wait();
    println!("{}", serde_json::to_string_pretty(&figures)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !figures.passed {
        bail!(
            "the checker found violations: {:?}",
            figures.verdict.problems
        );
    }
    let missing: Vec<String> = args
        .faults
        .iter()
        .map(|f| format!("{f:?}"))
        .filter(|f| !figures.faults.contains_key(f))
        .collect();
    if !missing.is_empty() {
        bail!("--duration too short: these faults were never injected: {missing:?}");
    }
    println!("chaos: passed");
    Ok(())
}
