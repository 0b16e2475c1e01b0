//! `rideshare chaos --engines cluster`: the run on the clustered engines of
//! `scripts/engines.sh start-cluster` (3 RabbitMQ nodes, a 3-server ZooKeeper ensemble), and the
//! faults that act on one node of them.
//!
//! - The run's URLs are the cluster's (`--cluster-amqp`, `--cluster-zk`, defaulting to the
//!   ports `start-cluster` uses); the orchestrator and the workers get the whole list and fail
//!   over between the nodes by themselves. The run's vhost is added to every URL of the list.
//! - `kill-rabbitmq-node` and `kill-zk-server` (`--cluster-faults`, added to the rotation)
//!   `kill -9` one node, the next one in rotation each time, leave it down for
//!   `--engine-down-for`, then start it again and wait until it is back in the cluster (RabbitMQ:
//!   3 running nodes; ZooKeeper: the server leads or follows). Faults run one at a time, so two
//!   of the three nodes, a majority, are up at every moment.
//! - In cluster mode the single-engine faults act on the cluster too: `restart-rabbitmq` is a
//!   graceful restart (`stop_app`, `start_app`) of one RabbitMQ node and `restart-zookeeper` a
//!   SIGTERM and start of one ZooKeeper server, in the same rotation; `kill-rabbitmq` and
//!   `kill-zookeeper` are the node kills above.
//!
//! Every step is a `scripts/engines.sh` subcommand (`--cluster-script`), run without a shell.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::command::CommandLine;
use super::faults::{Fault, FaultError, Injected};
use super::namespace::{Namespace, Undo};

/// What a node fault arms in the namespace while its node is down.
const UNDO_KEY: &str = "cluster-node";

/// The AMQP URLs of `scripts/engines.sh start-cluster`'s nodes.
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5701,\
amqp://guest:guest@127.0.0.1:5702,amqp://guest:guest@127.0.0.1:5703";
/// The connect string of `scripts/engines.sh start-cluster`'s ensemble.
pub const DEFAULT_ZK: &str = "127.0.0.1:2191,127.0.0.1:2192,127.0.0.1:2193";
/// How many nodes of each engine `start-cluster` runs.
pub const NODES: usize = 3;

/// Which engines a chaos run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engines {
    /// One RabbitMQ node and one ZooKeeper server (`scripts/engines.sh start`).
    #[default]
    Single,
    /// `scripts/engines.sh start-cluster`: 3 RabbitMQ nodes, 3 ZooKeeper servers.
    Cluster,
}

/// The RabbitMQ node names of the cluster, for `rabbitmqctl -n`.
pub fn rabbitmq_nodes() -> Vec<String> {
    (1..=NODES)
        .map(|n| format!("rabbit-c{n}@localhost"))
        .collect()
}

/// `base` (one URL without a vhost, or several comma-separated) with `vhost` added to each.
pub fn with_vhost(base: &str, vhost: &str) -> String {
    base.split(',')
        .map(|url| format!("{}/{vhost}", url.trim().trim_end_matches('/')))
        .collect::<Vec<_>>()
        .join(",")
}

/// One node fault, as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFault {
    pub what: NodeAction,
    /// 1 to [`NODES`].
    pub node: usize,
    /// From the kill to the start command (`None` for a restart, one command that stops the
    /// node and starts it again).
    pub down_for: Option<Duration>,
    /// The start (or restart) command, until the node was back in its cluster.
    pub back_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    KillRabbitmq,
    RestartRabbitmq,
    KillZookeeper,
    RestartZookeeper,
}

impl fmt::Display for NodeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (action, engine) = match self.what {
            NodeAction::KillRabbitmq => ("kill -9", "RabbitMQ node"),
            NodeAction::RestartRabbitmq => ("stop_app/start_app", "RabbitMQ node"),
            NodeAction::KillZookeeper => ("kill -9", "ZooKeeper server"),
            NodeAction::RestartZookeeper => ("SIGTERM and start", "ZooKeeper server"),
        };
        match self.down_for {
            Some(down_for) => write!(
                f,
                "{action} {engine} {}: down {down_for:?}, back in the cluster {:?} after its start",
                self.node, self.back_after
            ),
            None => write!(
                f,
                "{action} {engine} {}: back in the cluster {:?} after the restart began",
                self.node, self.back_after
            ),
        }
    }
}

/// The cluster the faults act on: the script and where each rotation is.
#[derive(Debug)]
pub struct Cluster {
    /// The command line the subcommands are added to, as given (`scripts/engines.sh`).
    script: String,
    down_for: Duration,
    next_rabbitmq: AtomicUsize,
    next_zk: AtomicUsize,
}

impl Cluster {
    /// `script`: the command its subcommands are added to (`scripts/engines.sh`), split like
    /// a shell would split it, run without one.
    pub fn new(script: String, down_for: Duration) -> Self {
        Cluster {
            script,
            down_for,
            next_rabbitmq: AtomicUsize::new(0),
            next_zk: AtomicUsize::new(0),
        }
    }

    /// Injects `fault` if it acts on the engines (`None` for the others): see the module doc.
    pub async fn inject(
        &self,
        fault: Fault,
        ns: &Namespace,
    ) -> Option<Result<Injected, FaultError>> {
        let action = match fault {
            Fault::KillRabbitmqNode | Fault::KillRabbitmq => NodeAction::KillRabbitmq,
            Fault::RestartRabbitmq => NodeAction::RestartRabbitmq,
            Fault::KillZkServer | Fault::KillZookeeper => NodeAction::KillZookeeper,
            Fault::RestartZookeeper => NodeAction::RestartZookeeper,
            _ => return None,
        };
        Some(
            self.node_fault(action, ns)
                .await
                .map(Injected::Node)
                .map_err(FaultError::Failed),
        )
    }

    async fn node_fault(&self, what: NodeAction, ns: &Namespace) -> anyhow::Result<NodeFault> {
        let rotation = match what {
            NodeAction::KillRabbitmq | NodeAction::RestartRabbitmq => &self.next_rabbitmq,
            NodeAction::KillZookeeper | NodeAction::RestartZookeeper => &self.next_zk,
        };
        let node = rotation.fetch_add(1, Ordering::Relaxed) % NODES + 1;
        let (stop, start) = match what {
            NodeAction::KillRabbitmq => (Some("kill-rabbitmq-node"), "start-rabbitmq-node"),
            // One subcommand: stop_app, a pause, start_app, and the wait for the cluster.
            NodeAction::RestartRabbitmq => (None, "restart-rabbitmq-node"),
            NodeAction::KillZookeeper => (Some("kill-zk-server"), "start-zk-server"),
            NodeAction::RestartZookeeper => (None, "restart-zk-server"),
        };
        let start = self.command(start, node)?;
        // A run that ends while the node is down starts it again on its way out.
        ns.arm(UNDO_KEY, Undo::Start(start.clone()));
        let stopped = Instant::now();
        let mut down_for = None;
        if let Some(stop) = stop {
            self.command(stop, node)?.run().await?;
            tokio::time::sleep(self.down_for).await;
            down_for = Some(stopped.elapsed());
        }
        let back_after = start.run().await?;
        ns.disarm(UNDO_KEY);
        Ok(NodeFault {
            what,
            node,
            down_for,
            back_after,
        })
    }

    fn command(&self, subcommand: &str, node: usize) -> anyhow::Result<CommandLine> {
        format!("{} {subcommand} {node}", self.script)
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--cluster-script {:?}: {e}", self.script))
    }
}

/// Before the run: every node of the cluster is up (`<script> status-cluster`), else why not.
pub fn preflight(script: &str) -> anyhow::Result<()> {
    let words = shlex::split(&format!("{script} status-cluster"))
        .ok_or_else(|| anyhow::anyhow!("--cluster-script {script:?}: unbalanced quotes"))?;
    let output = std::process::Command::new(&words[0])
        .args(&words[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{script} status-cluster`"))?;
    anyhow::ensure!(
        output.status.success(),
        "--engines cluster needs every node up (`scripts/engines.sh start-cluster`):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The faults of a run: `--faults`, and in cluster mode `--cluster-faults` after them (those
/// not in `--faults` already).
pub fn rotation(engines: Engines, faults: &[Fault], cluster_faults: &[Fault]) -> Vec<Fault> {
    let mut all = faults.to_vec();
    if engines == Engines::Cluster {
        all.extend(cluster_faults.iter().filter(|f| !faults.contains(f)));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_goes_on_every_url() {
        assert_eq!(
            with_vhost("amqp://g:g@127.0.0.1:5672/", "chaos-1"),
            "amqp://g:g@127.0.0.1:5672/chaos-1"
        );
        assert_eq!(
            with_vhost(DEFAULT_AMQP, "v"),
            "amqp://guest:guest@127.0.0.1:5701/v,amqp://guest:guest@127.0.0.1:5702/v,\
             amqp://guest:guest@127.0.0.1:5703/v"
        );
    }

    #[test]
    fn cluster_faults_join_the_rotation_in_cluster_mode_only() {
        let faults = [Fault::CrashMaster, Fault::KillZkServer];
        let cluster = [Fault::KillRabbitmqNode, Fault::KillZkServer];
        assert_eq!(
            rotation(Engines::Single, &faults, &cluster),
            faults.to_vec()
        );
        assert_eq!(
            rotation(Engines::Cluster, &faults, &cluster),
            vec![
                Fault::CrashMaster,
                Fault::KillZkServer,
                Fault::KillRabbitmqNode
            ]
        );
    }

    #[test]
    fn node_faults_read_well() {
        let done = NodeFault {
            what: NodeAction::KillRabbitmq,
            node: 2,
            down_for: Some(Duration::from_secs(3)),
            back_after: Duration::from_secs(9),
        };
        assert_eq!(
            done.to_string(),
            "kill -9 RabbitMQ node 2: down 3s, back in the cluster 9s after its start"
        );
        let restarted = NodeFault {
            what: NodeAction::RestartZookeeper,
            node: 1,
            down_for: None,
            back_after: Duration::from_secs(8),
        };
        assert_eq!(
            restarted.to_string(),
            "SIGTERM and start ZooKeeper server 1: back in the cluster 8s after the restart began"
        );
        assert_eq!(rabbitmq_nodes()[0], "rabbit-c1@localhost");
    }
}
