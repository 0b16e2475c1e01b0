//! Command-line flags. Every flag has an environment-variable twin (`RIDESHARE_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rideshare_core::api::AdminToken;
use rideshare_core::clock::Zone;

/// RideShare: a ride-pooling backend with its own small replicated database service.
#[derive(Debug, Parser)]
#[command(name = "rideshare", version, about = "RideShare: a ride-pooling backend with its own small replicated database service.", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written: `text` or `json` (one object per line, with the request id).
    #[arg(
        long,
        global = true,
        env = "RIDESHARE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process (gateway, users, rides, orchestrator, workers) with
    /// nothing installed; data lives in --data-dir and survives restarts.
    Up(UpArgs),
    /// The load balancer: `/api/v1/users*` to the users service, everything else to rides.
    Gateway(GatewayArgs),
    /// The users service (its database is the DBaaS, reached through the orchestrator).
    Users(UsersArgs),
    /// The rides service (checks users through the gateway).
    Rides(RidesArgs),
    /// The DBaaS orchestrator on the real engines: queues, membership, healing, scaling.
    Orchestrator(OrchestratorArgs),
    /// One DBaaS worker (master or slave) on the real engines; started by a runtime.
    Worker(WorkerArgs),
    /// Run the distributed system on the real engines under injected faults and check the
    /// recorded history against the write log.
    Chaos(crate::chaos::ChaosArgs),
    /// Load a running gateway through the public API and report req/s and latency per
    /// concurrency level and operation.
    Bench(crate::bench::BenchArgs),
    /// The cluster in the terminal: workers, scaling window, last failovers (`--watch`).
    Status(crate::status::StatusArgs),
    /// Kill the master's or a slave's worker through the orchestrator.
    Crash(crate::status::CrashArgs),
    /// Hand the master role to a caught-up slave without failing a write.
    Switchover(crate::status::SwitchoverArgs),
}

/// Where the real engines are. Without `--amqp-url` and `--zk`, `rideshare up` stays embedded.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// RabbitMQ URL, e.g. `amqp://127.0.0.1:5672/%2f`.
    #[arg(long, env = "RIDESHARE_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// ZooKeeper connect string, e.g. `127.0.0.1:2181`.
    #[arg(long, env = "RIDESHARE_ZK")]
    pub zk: Option<String>,
    /// ZooKeeper session timeout: how long a silent worker stays a member (failure detection).
    #[arg(long, env = "RIDESHARE_ZK_SESSION_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub zk_session_timeout: Duration,
    /// Name of the RabbitMQ stream that holds the write log.
    #[arg(long, env = "RIDESHARE_LOG_STREAM", default_value = "rideshare.log")]
    pub log_stream: String,
}

/// How the orchestrator starts workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Containers of the worker image on the local Docker engine.
    Docker,
    /// Child processes running `rideshare worker`.
    Process,
}

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Where workers run: `docker` or `process` (only with the real engines).
    #[arg(long, env = "RIDESHARE_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: RuntimeKind,
    /// Worker image (built locally by scripts/build-worker-image.sh).
    #[arg(
        long,
        env = "RIDESHARE_WORKER_IMAGE",
        default_value = "rideshare-worker:latest"
    )]
    pub worker_image: String,
    /// Docker network mode of worker containers; `host` reaches engines on loopback.
    #[arg(long, env = "RIDESHARE_DOCKER_NETWORK", default_value = "host")]
    pub docker_network: String,
    /// Label value naming this cluster's worker containers.
    #[arg(long, env = "RIDESHARE_CLUSTER", default_value = "rideshare")]
    pub cluster: String,
    /// The `rideshare` binary worker processes run (`--runtime process`); default: this one.
    #[arg(long, env = "RIDESHARE_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,
    /// Directory workers keep their SQLite copies in (inside the container for docker).
    #[arg(
        long,
        env = "RIDESHARE_WORKER_DATA_DIR",
        default_value = "/tmp/rideshare-workers"
    )]
    pub worker_data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[arg(long, env = "RIDESHARE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Base URL of the users service.
    #[arg(
        long,
        env = "RIDESHARE_USERS_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub users_url: String,
    /// Base URL of the rides service.
    #[arg(
        long,
        env = "RIDESHARE_RIDES_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub rides_url: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UsersArgs {
    #[arg(long, env = "RIDESHARE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Base URL of the DBaaS orchestrator.
    #[arg(
        long,
        env = "RIDESHARE_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub orchestrator_url: String,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub hashing: HashingArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RidesArgs {
    #[arg(long, env = "RIDESHARE_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Base URL of the DBaaS orchestrator.
    #[arg(
        long,
        env = "RIDESHARE_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub orchestrator_url: String,
    /// Base URL of the gateway, through which users are checked.
    #[arg(
        long,
        env = "RIDESHARE_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway_url: String,
    /// This service's public address, sent as `Origin` on the user check.
    #[arg(
        long,
        env = "RIDESHARE_PUBLIC_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub public_url: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Clone, Args)]
pub struct OrchestratorArgs {
    #[arg(long, env = "RIDESHARE_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub engines: EngineArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub scaling: ScalingArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// This worker's id (the runtime names it: container or process name).
    #[arg(long, env = "RIDESHARE_WORKER_ID")]
    pub id: String,
    #[command(flatten)]
    pub engines: EngineArgs,
    /// Directory for this worker's SQLite copy (`<id>.db`), created if missing.
    #[arg(
        long,
        env = "RIDESHARE_WORKER_DATA_DIR",
        default_value = "/tmp/rideshare-workers"
    )]
    pub data_dir: PathBuf,
    /// Stop when the parent process (the orchestrator that started this worker) is gone.
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Serve `/health`, `/ready` (caught up) and `/metrics` here (port 0: any free port); the
    /// address is published in the worker's member record. Runtimes start workers with
    /// `127.0.0.1:0`.
    #[arg(long, env = "RIDESHARE_WORKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The cluster's admin token: only decides whether `--listen` may be a non-loopback address
    /// (the worker's routes are all read-only).
    #[arg(long, env = "RIDESHARE_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<AdminToken>,
    /// Allow a non-loopback `--listen` without an admin token.
    #[arg(long, env = "RIDESHARE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Bounds, access and zone every HTTP service takes.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, env = "RIDESHARE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bound on handling one request (e.g. `30s`); past it the answer is 504.
    #[arg(long, env = "RIDESHARE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Requests one service handles at once; past it the answer is 503 at once.
    #[arg(long, env = "RIDESHARE_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Connections one listener keeps open at once; past it a new one gets 503 and is closed.
    #[arg(long, env = "RIDESHARE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Time a client has to send a request's headers, also between kept-alive requests (the
    /// idle timeout); a stalled connection is closed after it.
    #[arg(long, env = "RIDESHARE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Token the admin calls need as `Authorization: Bearer <token>` (db/*, crash/*,
    /// worker/list, the services' db/clear and DELETE _count). Without it admin calls are open
    /// and only loopback addresses may be listened on.
    #[arg(long, env = "RIDESHARE_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<AdminToken>,
    /// Listen on non-loopback addresses without an admin token (admin calls open to anyone).
    #[arg(long, env = "RIDESHARE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Zone ride timestamps are read in: `local` (the host's), `UTC`, or an offset like `+05:30`.
    #[arg(long, env = "RIDESHARE_TZ", default_value = "local")]
    pub tz: Zone,
}

fn parse_admin_token(text: &str) -> Result<AdminToken, String> {
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the admin token must not hold spaces or control characters".into());
    }
    Ok(AdminToken::new(text))
}

/// The cost of the users service's argon2id hash and the bounds of its hashing pool.
#[derive(Debug, Clone, Args)]
pub struct HashingArgs {
    /// argon2id memory cost in KiB per hash (default: OWASP's minimum, 19 MiB).
    #[arg(long, env = "RIDESHARE_HASH_MEMORY_KIB", default_value_t = 19 * 1024, value_parser = clap::value_parser!(u32).range(8..=1024 * 1024))]
    pub hash_memory_kib: u32,
    /// argon2id iterations per hash.
    #[arg(long, env = "RIDESHARE_HASH_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hash_iterations: u32,
    /// Hashing threads (0: one per core); each keeps one memory area of the memory cost.
    #[arg(long, env = "RIDESHARE_HASH_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub hash_threads: u32,
    /// Sign-ups that may wait for a hashing thread (0: four per thread); past it 503.
    #[arg(long, env = "RIDESHARE_HASH_QUEUE", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub hash_queue: u32,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Directory holding the database (created if missing); data survives restarts.
    #[arg(long, env = "RIDESHARE_DATA_DIR", default_value = "./rideshare-data")]
    pub data_dir: PathBuf,
    /// Address of the gateway (load balancer), the one clients use.
    #[arg(long, env = "RIDESHARE_GATEWAY", default_value = "127.0.0.1:8080")]
    pub gateway: SocketAddr,
    /// Address of the users service.
    #[arg(long, env = "RIDESHARE_USERS", default_value = "127.0.0.1:8081")]
    pub users: SocketAddr,
    /// Address of the rides service.
    #[arg(long, env = "RIDESHARE_RIDES", default_value = "127.0.0.1:8082")]
    pub rides: SocketAddr,
    /// Address of the DBaaS orchestrator.
    #[arg(long, env = "RIDESHARE_ORCHESTRATOR", default_value = "127.0.0.1:8083")]
    pub orchestrator: SocketAddr,
    #[command(flatten)]
    pub scaling: ScalingArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub hashing: HashingArgs,
    /// The real engines; without them everything is embedded.
    #[command(flatten)]
    pub engines: EngineArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How the orchestrator scales read replicas.
#[derive(Debug, Clone, Args)]
pub struct ScalingArgs {
    /// Length of a scaling window (e.g. `2m`, `5s`); the first read starts the timer.
    #[arg(long, env = "RIDESHARE_SCALE_INTERVAL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub scale_interval: Duration,
    /// Reads per window one slave serves: slaves = max(1, ceil(reads / this)).
    #[arg(long, env = "RIDESHARE_READS_PER_SLAVE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub reads_per_slave: u64,
    /// Upper bound on slaves, whatever the load.
    #[arg(long, env = "RIDESHARE_MAX_SLAVES", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_slaves: u64,
}
