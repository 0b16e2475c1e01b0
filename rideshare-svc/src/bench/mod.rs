//! `rideshare bench`: the project's load generator. It loads a running gateway through the public
//! HTTP API and reports throughput and latency per concurrency level and operation.
//!
//! It seeds what it needs in a namespace of its own ([`seed`]), then for each `--concurrency`
//! level runs that many closed-loop clients for `--warmup` + `--duration`: each client is one
//! task with one keep-alive HTTP/1.1 connection ([`client`]) and sends its next request when the
//! previous answer has arrived, picking the operation from the `--mix` ([`mix`]). Each client
//! records into histograms of its own, merged when the level ends ([`report`]); the only shared
//! state on the request path is a per-client progress counter and, for `join`, one atomic
//! counter handing out (user, ride) pairs. Every loop ends at its level's deadline.

pub mod client;
pub mod mix;
pub mod report;
pub mod seed;
pub mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode, Uri};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use self::client::{Conn, Failure, Target};
use self::mix::{Mix, Op};
use self::report::{LevelReport, OpStats, Report, SeedSummary, VerifyReport};
use self::seed::{SeedPlan, Seeded};
use self::watch::Watch;

/// Joins per second the join pool is sized for (pairs = this × join share × run time), about
/// twice the most a `rideshare up` on 2 shared cores was measured to take (docs/benchmarks.md);
/// joins past the pool get 400 (already joined), which the report shows.
pub const JOIN_RATE_BOUND: f64 = 2000.0;

/// Flags of `rideshare bench`; each has a `RIDESHARE_BENCH_*` environment twin.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the running gateway to load (`http://host:port`).
    #[arg(
        long,
        env = "RIDESHARE_BENCH_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// Concurrent clients, one level after another (e.g. `1,16,64`).
    #[arg(
        long,
        env = "RIDESHARE_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,16,64",
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub concurrency: Vec<u32>,
    /// Measured time per concurrency level.
    #[arg(long, env = "RIDESHARE_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each level's measured time (connections stay open across it).
    #[arg(long, env = "RIDESHARE_BENCH_WARMUP", default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Operations to send: one of list, details, create-ride, join, add-user, health (`GET
    /// /health`, no database: a reference for the machine's state), or weights like
    /// `list=8,create-ride=2`.
    #[arg(long, env = "RIDESHARE_BENCH_MIX", default_value = "list")]
    pub mix: Mix,
    /// Upcoming rides seeded on the listed area pair.
    #[arg(long, env = "RIDESHARE_BENCH_LIST_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub list_size: u64,
    /// Users seeded to join rides (when the mix joins); rides to join are seeded to match.
    #[arg(long, env = "RIDESHARE_BENCH_JOIN_USERS", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub join_users: u64,
    /// Bound on one request, connecting included.
    #[arg(long, env = "RIDESHARE_BENCH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Write the whole report as JSON to this file.
    #[arg(long, env = "RIDESHARE_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// After the run, check that every user that got 201 is in `GET /api/v1/users`; exit
    /// non-zero when one is missing.
    #[arg(long, env = "RIDESHARE_BENCH_VERIFY_USERS")]
    pub verify_users: bool,
    /// Sample /proc/PID/status every 100 ms and report peak VmRSS, VmHWM and threads.
    #[arg(long, env = "RIDESHARE_BENCH_WATCH_PID")]
    pub watch_pid: Option<u32>,
}

/// Why a bench run could not be carried out (a bad answer during the run is a figure, not this).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bad arguments: {0}")]
    Args(String),
    #[error("gateway {0}")]
    Gateway(String),
    #[error("seeding failed: {0}")]
    Seed(String),
    #[error("--watch-pid: {0}")]
    Watch(String),
    #[error("--verify-users: {0}")]
    Verify(String),
    #[error("a client task failed: {0}")]
    Client(String),
}

/// `rideshare bench`: runs, prints the tables, writes the JSON, and fails when a created user
/// is missing from the user list.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = run_bench(&args).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if let Some(v) = &report.verify_users {
        anyhow::ensure!(
            v.missing == 0,
            "{} of {} users that got 201 are missing from GET /api/v1/users",
            v.missing,
            v.created
        );
    }
    Ok(())
}

/// Seeds, runs every concurrency level and (with `--verify-users`) checks the created users.
/// Prints a progress line on stderr about once a second.
pub async fn run_bench(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.concurrency.is_empty() {
        return Err(BenchError::Args("--concurrency lists no level".into()));
    }
    if args.duration.is_zero() || args.timeout.is_zero() {
        return Err(BenchError::Args(
            "--duration and --timeout must be more than zero".into(),
        ));
    }
    let list_size = usize::try_from(args.list_size).unwrap_or(usize::MAX);
    if args.mix.contains(Op::Details) && list_size == 0 {
        return Err(BenchError::Args(
            "details reads the listed rides: --list-size must be at least 1".into(),
        ));
    }
    let target = Target::resolve(&args.gateway).await?;
    let measured = (args.warmup + args.duration).as_secs_f64() * args.concurrency.len() as f64;
    let plan = SeedPlan {
        mix: args.mix.clone(),
        list_size,
        join_users: usize::try_from(args.join_users).unwrap_or(1),
        join_pairs: (measured * args.mix.share(Op::Join) * JOIN_RATE_BOUND).ceil() as usize,
    };
    let seeding = Instant::now();
    let seeded = seed::seed(&target, args.timeout, &plan).await?;
    let seed_s = seeding.elapsed().as_secs_f64();
    eprintln!(
        "bench: seeded run {} in {seed_s:.1} s ({} listed rides on {:?}, {} join pairs)",
        seeded.run_id,
        seeded.list_rides.len(),
        seeded.list_pair,
        seeded.join_pairs()
    );
    let requests = Arc::new(Requests::new(&seeded)?);
    let mut levels = Vec::new();
    let mut created = Vec::new();
    for (level, &concurrency) in args.concurrency.iter().enumerate() {
        let (report, mut names) = run_level(args, &target, &requests, level, concurrency).await?;
        created.append(&mut names);
        levels.push(report);
    }
    let verify_users = if args.verify_users {
        Some(verify(&target, args.timeout, &created).await?)
    } else {
        None
    };
    Ok(Report {
        gateway: target.url.clone(),
        mix: args.mix.to_string(),
        list_size,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        timeout_s: args.timeout.as_secs_f64(),
        seeded: SeedSummary::new(&seeded, seed_s),
        levels,
        verify_users,
    })
}

/// The requests the operations send, built once from the seeded data.
struct Requests {
    list: Uri,
    details: Vec<Uri>,
    rides: Uri,
    users: Uri,
    health: Uri,
    owner: String,
    create_pair: (u16, u16),
    prefix: String,
    password: String,
    join_uris: Vec<Uri>,
    join_bodies: Vec<Bytes>,
    /// The next (user, ride) pair a join takes.
    join_next: AtomicU64,
}

impl Requests {
    fn new(seeded: &Seeded) -> Result<Self, BenchError> {
        let ride_uri = |id: &u64| seed::uri(format!("/api/v1/rides/{id}"));
        Ok(Requests {
            list: seed::list_uri(seeded.list_pair)?,
            details: seeded
                .list_rides
                .iter()
                .map(ride_uri)
                .collect::<Result<_, _>>()?,
            rides: seed::uri("/api/v1/rides".into())?,
            users: seed::uri("/api/v1/users".into())?,
            health: seed::uri("/health".into())?,
            owner: seeded.owner.clone(),
            create_pair: seeded.create_pair,
            prefix: seeded.prefix(),
            password: seeded.password.clone(),
            join_uris: seeded
                .join_rides
                .iter()
                .map(ride_uri)
                .collect::<Result<_, _>>()?,
            join_bodies: seeded
                .join_users
                .iter()
                .map(|u| Bytes::from(serde_json::json!({ "username": u }).to_string()))
                .collect(),
            join_next: AtomicU64::new(0),
        })
    }
}

/// What every client of a level shares with the progress line: padded so that clients do not
/// write to one cache line.
#[repr(align(64))]
#[derive(Default)]
struct Progress {
    requests: AtomicU64,
    non_2xx: AtomicU64,
}

/// What one client measured.
struct ClientResult {
    ops: Vec<OpStats>,
    /// Usernames that got 201 from add-user.
    created: Vec<String>,
}

async fn run_level(
    args: &BenchArgs,
    target: &Target,
    requests: &Arc<Requests>,
    level: usize,
    concurrency: u32,
) -> Result<(LevelReport, Vec<String>), BenchError> {
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        let mut conn = Conn::new(target.clone(), args.timeout);
        conn.connect()
            .await
            .map_err(|e| BenchError::Gateway(format!("{}: {e}", target.url)))?;
        conns.push(conn);
    }
    let watch = args.watch_pid.map(Watch::start).transpose()?;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = measure_from + args.duration;
    let progress: Arc<Vec<Progress>> =
        Arc::new((0..concurrency).map(|_| Progress::default()).collect());
    let mut tasks = Vec::new();
    for (client, conn) in conns.into_iter().enumerate() {
        let client_args = ClientArgs {
            requests: Arc::clone(requests),
            mix: args.mix.clone(),
            level,
            client,
            measure_from,
            deadline,
            progress: Arc::clone(&progress),
        };
        tasks.push(tokio::spawn(client_loop(conn, client_args)));
    }
    let ticker = tokio::spawn(progress_lines(
        concurrency,
        measure_from,
        deadline,
        Arc::clone(&progress),
    ));
    let mut ops: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::default()).collect();
    let mut created = Vec::new();
    for task in tasks {
        let result = task.await.map_err(|e| BenchError::Client(e.to_string()))?;
        for (all, one) in ops.iter_mut().zip(&result.ops) {
            all.merge(one);
        }
        created.extend(result.created);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    ticker.abort();
    let process = match watch {
        Some(w) => Some(w.finish().await?),
        None => None,
    };
    let mut total = OpStats::default();
    let mut op_reports = Vec::new();
    for op in Op::ALL {
        if args.mix.contains(op) {
            let stats = &ops[op.index()];
            total.merge(stats);
            op_reports.push(stats.report(op.name(), elapsed));
        }
    }
    Ok((
        LevelReport {
            concurrency,
            elapsed_s: elapsed.as_secs_f64(),
            ops: op_reports,
            total: total.report("all", elapsed),
            process,
        },
        created,
    ))
}

struct ClientArgs {
    requests: Arc<Requests>,
    mix: Mix,
    level: usize,
    client: usize,
    measure_from: Instant,
    deadline: Instant,
    progress: Arc<Vec<Progress>>,
}

/// One closed-loop client: the next request goes when the previous answer is in, until the
/// deadline.
async fn client_loop(mut conn: Conn, a: ClientArgs) -> ClientResult {
    let r = &a.requests;
    let mut rng = SmallRng::from_entropy();
    let mut ops: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::default()).collect();
    let mut created = Vec::new();
    let mine = &a.progress[a.client];
    let join_pairs = (r.join_uris.len() * r.join_bodies.len()) as u64;
    let mut sent: u64 = 0;
    while Instant::now() < a.deadline {
        let op = a.mix.pick(rng.gen_range(0..a.mix.total_weight()));
        sent += 1;
        let mut new_user = None;
        let (method, uri, body) = match op {
            Op::List => (Method::GET, r.list.clone(), None),
            Op::Health => (Method::GET, r.health.clone(), None),
            Op::Details => {
                let i = (a.client + sent as usize) % r.details.len().max(1);
                (Method::GET, r.details[i].clone(), None)
            }
            Op::CreateRide => {
                let timestamp = seed::future_timestamp(&mut rng);
                let body = seed::ride_body(&r.owner, &timestamp, r.create_pair);
                (Method::POST, r.rides.clone(), Some(body))
            }
            Op::Join => {
                let n = r.join_next.fetch_add(1, Ordering::Relaxed) % join_pairs.max(1);
                let users = r.join_bodies.len() as u64;
                let user = (n % users) as usize;
                let ride = (n / users) as usize;
                (
                    Method::POST,
                    r.join_uris[ride].clone(),
                    Some(r.join_bodies[user].clone()),
                )
            }
            Op::AddUser => {
                let name = format!("{}l{}c{}n{}", r.prefix, a.level, a.client, sent);
                let body = seed::user_body(&name, &r.password);
                new_user = Some(name);
                (Method::PUT, r.users.clone(), Some(body))
            }
        };
        let started = Instant::now();
        let outcome = conn.call(method, uri, body).await;
        let latency = started.elapsed();
        if let (Ok((StatusCode::CREATED, _)), Some(name)) = (&outcome, new_user) {
            created.push(name);
        }
        let measured = started >= a.measure_from;
        let stats = &mut ops[op.index()];
        match &outcome {
            Ok((status, _)) => {
                if measured {
                    stats.answered(status.as_u16(), latency);
                    mine.requests.fetch_add(1, Ordering::Relaxed);
                    if !status.is_success() {
                        mine.non_2xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(failure) => {
                if measured {
                    stats.failed(failure);
                    mine.requests.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(failure, Failure::Transport(_)) {
                    // The gateway refused or dropped us: do not spin on reconnecting.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    ClientResult { ops, created }
}

/// Prints elapsed time, requests, current rate and non-2xx on stderr about once a second.
async fn progress_lines(
    concurrency: u32,
    measure_from: Instant,
    deadline: Instant,
    progress: Arc<Vec<Progress>>,
) {
    tokio::time::sleep_until(measure_from.into()).await;
    let mut last = (Instant::now(), 0u64);
    let mut ticks = tokio::time::interval_at(
        (measure_from + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        let now = ticks.tick().await.into_std();
        if now > deadline {
            return;
        }
        let requests: u64 = progress
            .iter()
            .map(|p| p.requests.load(Ordering::Relaxed))
            .sum();
        let non_2xx: u64 = progress
            .iter()
            .map(|p| p.non_2xx.load(Ordering::Relaxed))
            .sum();
        let rate = (requests - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        eprintln!(
            "bench c={concurrency} {:>5.1}s: {requests} requests, {rate:.0} req/s, {non_2xx} non-2xx",
            now.duration_since(measure_from).as_secs_f64()
        );
        last = (now, requests);
    }
}

/// `GET /api/v1/users` once: how many of `created` are listed.
async fn verify(
    target: &Target,
    timeout: Duration,
    created: &[String],
) -> Result<VerifyReport, BenchError> {
    let mut conn = Conn::new(target.clone(), timeout);
    let (status, body) = conn
        .call(Method::GET, seed::uri("/api/v1/users".into())?, None)
        .await
        .map_err(|e| BenchError::Verify(format!("GET /api/v1/users: {e}")))?;
    let listed: Vec<String> = match status {
        StatusCode::NO_CONTENT => Vec::new(),
        StatusCode::OK => serde_json::from_slice(&body)
            .map_err(|e| BenchError::Verify(format!("the user list is not a list: {e}")))?,
        other => {
            return Err(BenchError::Verify(format!(
                "GET /api/v1/users answered {other}"
            )))
        }
    };
    let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let missing: Vec<&String> = created
        .iter()
        .filter(|name| !listed.contains(name.as_str()))
        .collect();
    Ok(VerifyReport {
        created: created.len() as u64,
        listed: (created.len() - missing.len()) as u64,
        missing: missing.len() as u64,
        missing_examples: missing.iter().take(10).map(|s| s.to_string()).collect(),
    })
}
