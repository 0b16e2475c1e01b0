//! `rideshare`: parse the command line, start tracing, run the chosen part of the system.

use clap::Parser;
use rideshare_svc::cli::{Cli, Command};
use rideshare_svc::serve::shutdown_signal;
use rideshare_svc::{roles, up};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rideshare_svc::logging::init(cli.log_format);
    let shutdown = shutdown_signal();
    match cli.command {
        Command::Up(args) => up::run(args, shutdown).await,
        Command::Gateway(args) => roles::gateway(args, shutdown).await,
        Command::Users(args) => roles::users(args, shutdown).await,
        Command::Rides(args) => roles::rides(args, shutdown).await,
        Command::Orchestrator(args) => roles::orchestrator(args, shutdown).await,
        Command::Worker(args) => roles::worker(args).await,
        Command::Chaos(args) => rideshare_svc::chaos::run(args).await,
        Command::Bench(args) => rideshare_svc::bench::run(args).await,
        Command::Status(args) => rideshare_svc::status::status(args).await,
        Command::Crash(args) => rideshare_svc::status::crash(args).await,
        Command::Switchover(args) => rideshare_svc::status::switchover(args).await,
    }
}
