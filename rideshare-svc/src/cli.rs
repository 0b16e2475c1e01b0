//! Command-line flags. Every flag has an environment-variable twin (`RIDESHARE_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rideshare_core::clock::Zone;

/// RideShare: a ride-pooling backend with its own small replicated database service.
#[derive(Debug, Parser)]
#[command(name = "rideshare", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process (gateway, users, rides, orchestrator, workers) with
    /// nothing installed; data lives in --data-dir and survives restarts.
    Up(UpArgs),
}

/// Bounds and zone every HTTP service takes.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, env = "RIDESHARE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bound on handling one request (e.g. `30s`); past it the answer is 408.
    #[arg(long, env = "RIDESHARE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Zone ride timestamps are read in: `local` (the host's), `UTC`, or an offset like `+05:30`.
    #[arg(long, env = "RIDESHARE_TZ", default_value = "local")]
    pub tz: Zone,
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
