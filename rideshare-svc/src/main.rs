//! `rideshare`: parse the command line, start tracing, run the chosen part of the system.

use clap::Parser;
use rideshare_svc::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIDESHARE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    match cli.command {
        Command::Up(args) => {
            rideshare_svc::up::run(args, rideshare_svc::serve::shutdown_signal()).await
        }
    }
}
