//! `rideshare`: parse the command line, start tracing, run the chosen part of the system.

use clap::Parser;
use rideshare_svc::cli::{Cli, Command};
use rideshare_svc::serve::shutdown_signal;
use rideshare_svc::{roles, up};

/// mimalloc rather than glibc's malloc: memory allocated on one thread and freed on another (a
/// request's buffers cross tasks, workers and the store threads all the time) makes glibc take
/// its arena locks, and profiling `rideshare up` under load found three futex calls in four were
/// those locks (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    rideshare_svc::logging::init(cli.log_format);
    // A worker process runs its tasks on one thread (tokio's current-thread scheduler); every
    // other subcommand on the multi-threaded one, a thread per core. A worker's heavy work has
    // threads of its own (the SQLite store and reader threads, lapin's I/O loop); its tasks
    // decode, hand off and answer, and a second scheduler thread only adds wake-ups. On 2
    // cores a real-engine read at 1 client answered about 3 % sooner, over alternating runs
    // (docs/benchmarks.md, seventeenth session).
    let mut runtime = match cli.command {
        Command::Worker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
