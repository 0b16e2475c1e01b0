//! A small DBaaS cluster on the in-memory engines: write, crash the master, write again, and
//! check that every acknowledged write is still there. Run: `cargo run --example failover`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp};
use rideshare_core::Username;
use rideshare_dbaas::cluster::{EmbeddedCluster, EmbeddedConfig};
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::orchestrator::Freshness;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster =
        EmbeddedCluster::start(Arc::new(MemLog::new()), EmbeddedConfig::default()).await?;
    let orchestrator = Arc::clone(cluster.orchestrator());
    wait_for_workers(&orchestrator, 2).await?;
    println!("workers: {:?}", orchestrator.worker_pids().await?);

    let mut acked = Vec::new();
    for n in 0..10 {
        let name = format!("before-{n}");
        orchestrator
            .write(RequestId::random(), add_user(&name)?)
            .await?;
        acked.push(name);
    }
    let killed = orchestrator.crash_master().await?;
    let crashed_at = Instant::now();
    println!("crashed the master (pid {killed})");

    // The first write after the crash waits through the election.
    orchestrator
        .write(RequestId::random(), add_user("after-0")?)
        .await?;
    println!(
        "first write acknowledged {} ms after the crash",
        crashed_at.elapsed().as_millis()
    );
    acked.push("after-0".into());
    wait_for_workers(&orchestrator, 2).await?;
    println!("workers: {:?}", orchestrator.worker_pids().await?);

    let ReadOutcome::Users { users } = orchestrator
        .read(ReadOp::ListUsers, Freshness::STRONG)
        .await?
        .outcome
    else {
        anyhow::bail!("unexpected read answer");
    };
    let lost: Vec<&String> = acked
        .iter()
        .filter(|name| !users.iter().any(|u| u.as_str() == name.as_str()))
        .collect();
    println!(
        "{} acknowledged writes, {} present, lost: {lost:?}",
        acked.len(),
        users.len()
    );
    cluster.shutdown();
    anyhow::ensure!(lost.is_empty(), "acknowledged writes were lost");
    Ok(())
}

fn add_user(name: &str) -> anyhow::Result<WriteOp> {
    Ok(WriteOp::AddUser {
        username: Username::parse(name)?,
        password_hash: "$argon2id$example".into(),
    })
}

async fn wait_for_workers(
    orchestrator: &rideshare_dbaas::orchestrator::Orchestrator,
    n: usize,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        if orchestrator.members().await?.len() >= n && orchestrator.master().await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the cluster did not reach {n} workers")
}
