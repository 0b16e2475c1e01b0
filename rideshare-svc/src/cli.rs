//! Command-line flags. Every flag has an environment-variable twin (`RIDESHARE_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rideshare_core::api::AdminToken;

use crate::args::{
    parse_admin_token, BatchArgs, EngineArgs, HttpArgs, OrchestratorArgs, RuntimeArgs, ScalingArgs,
    ADMIN_TOKEN_ENV,
};

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
    #[command(flatten)]
    pub snapshots: crate::args::SnapshotArgs,
    #[command(flatten)]
    pub group_commit: crate::args::GroupCommitArgs,
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
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<AdminToken>,
    /// Allow a non-loopback `--listen` without an admin token.
    #[arg(long, env = "RIDESHARE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
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
    pub batching: BatchArgs,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use rideshare_core::clock::Zone;

    use super::{Cli, Command};
    use crate::args::{
        BatchArgs, EngineArgs, GroupCommitArgs, HttpArgs, OrchestratorArgs, RuntimeArgs,
        RuntimeKind, ScalingArgs, SnapshotArgs,
    };

    /// Flags unlike every default (and unlike one another), so a flag that `to_args` left out
    /// or misnamed cannot come back equal by chance.
    fn unusual(runtime: RuntimeKind, tz: Zone, insecure_no_auth: bool) -> OrchestratorArgs {
        OrchestratorArgs {
            listen: "127.0.0.1:9183".parse().unwrap_or_else(|_| unreachable!()),
            engines: EngineArgs {
                amqp_url: None,
                zk: Some("127.0.0.1:2182/chaos-0000abcd".into()),
                zk_session_timeout: Duration::from_millis(1_500),
                log_stream: "chaos.log".into(),
                log_max_bytes: 3 << 30,
                log_segment_bytes: 16 << 20,
            },
            runtime: RuntimeArgs {
                runtime,
                worker_image: "rideshare-worker:test".into(),
                docker_network: "bridge".into(),
                worker_amqp_url: None,
                worker_zk: Some("10.9.0.1:2182/chaos-0000abcd".into()),
                cluster: "chaos-0000abcd".into(),
                worker_program: Some("/opt/rideshare/bin/rideshare".into()),
                worker_data_dir: "/tmp/chaos-0000abcd/workers".into(),
                snapshots: SnapshotArgs {
                    snapshot_every: 777,
                    snapshot_keep: 5,
                    snapshot_dir: Some("/srv/snapshots".into()),
                },
                group_commit: GroupCommitArgs {
                    group_max: 9,
                    group_wait: Duration::from_micros(300),
                    group_in_flight: 5,
                },
            },
            scaling: ScalingArgs {
                scale_interval: Duration::from_secs(7),
                reads_per_slave: 210,
                max_slaves: 9,
            },
            batching: BatchArgs {
                batch_max: 7,
                batch_wait: Duration::from_micros(1_250),
                batch_in_flight: 3,
                write_batch_in_flight: 2,
            },
            http: HttpArgs {
                max_body_bytes: 4_096,
                request_timeout: Duration::from_millis(12_250),
                max_in_flight: 33,
                max_connections: 44,
                header_read_timeout: Duration::from_secs(3),
                admin_token: None,
                insecure_no_auth,
                tz,
            },
        }
    }

    fn parse_back(args: &OrchestratorArgs) -> OrchestratorArgs {
        let argv = std::iter::once("rideshare".into()).chain(args.to_args());
        let cli =
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("to_args does not parse: {e}"));
        let Command::Orchestrator(mut parsed) = cli.command else {
            panic!("to_args names another subcommand: {:?}", cli.command);
        };
        // The secrets are not on the command line by design: a test process may still have
        // them in its environment (scripts/test.sh exports RIDESHARE_AMQP_URL).
        parsed.engines.amqp_url = None;
        parsed.http.admin_token = None;
        parsed
    }

    #[test]
    fn orchestrator_args_parse_back_from_their_command_line() {
        let offset =
            chrono::FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap_or_else(|| unreachable!());
        for args in [
            unusual(RuntimeKind::Process, Zone::Fixed(offset), true),
            unusual(RuntimeKind::Docker, Zone::Local, false),
        ] {
            // `AdminToken` has no `PartialEq` (its one comparison is the constant-time
            // `admits`), so the flags are compared through their derived `Debug`, which shows
            // every field.
            assert_eq!(format!("{:?}", parse_back(&args)), format!("{args:?}"));
        }
    }

    #[test]
    fn orchestrator_args_keep_secrets_off_the_command_line() {
        let mut args = unusual(RuntimeKind::Docker, Zone::Local, false);
        args.engines.amqp_url = Some("amqp://guest:s3cret@127.0.0.1:5672/chaos".into());
        args.http.admin_token = Some(rideshare_core::api::AdminToken::new("t0ken-s3cret"));
        let argv: Vec<String> = args
            .to_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            argv.iter().all(|a| !a.contains("s3cret")),
            "a secret on the command line: {argv:?}"
        );
    }
}
