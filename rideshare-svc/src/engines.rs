//! Building the DBaaS dependencies from flags: the real engines (RabbitMQ, ZooKeeper, Docker or
//! OS processes) for the distributed mode.

use std::sync::Arc;

use anyhow::Context;
use rideshare_dbaas::broker::Broker;
use rideshare_dbaas::coord::Coordinator;
use rideshare_dbaas::log::Log;
use rideshare_dbaas::orchestrator::OrchestratorDeps;
use rideshare_dbaas::runtime::Runtime;

use crate::adapters::docker::{DockerConfig, DockerRuntime};
use crate::adapters::process::{ProcessConfig, ProcessRuntime};
use crate::adapters::rabbit::{RabbitBroker, RabbitLog, Retention};
use crate::adapters::zk::ZkCoordinator;
use crate::args::{EngineArgs, RuntimeArgs, RuntimeKind, AMQP_URL_ENV};

/// Connections to the real broker, log and coordinator.
#[derive(Clone)]
pub struct Engines {
    pub broker: Arc<dyn Broker>,
    pub log: Arc<dyn Log>,
    pub coordinator: Arc<dyn Coordinator>,
}

impl EngineArgs {
    /// True when the real engines are named (both are needed).
    pub fn is_real(&self) -> bool {
        self.amqp_url.is_some() || self.zk.is_some()
    }

    fn urls(&self) -> anyhow::Result<(&str, &str)> {
        match (&self.amqp_url, &self.zk) {
            (Some(amqp), Some(zk)) => Ok((amqp, zk)),
            _ => anyhow::bail!("the real engines need both --amqp-url and --zk"),
        }
    }

    /// Connects to RabbitMQ (queues and the log stream) and prepares ZooKeeper sessions.
    pub async fn connect(&self) -> anyhow::Result<Engines> {
        let (amqp, zk) = self.urls()?;
        let shown = redact(amqp);
        let broker = RabbitBroker::connect(amqp)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {shown}"))?;
        let retention = Retention::new(self.log_max_bytes, self.log_segment_bytes)
            .map_err(|e| anyhow::anyhow!("--log-max-bytes / --log-segment-bytes: {e}"))?;
        let log = RabbitLog::connect_with(amqp, &self.log_stream, retention)
            .await
            .with_context(|| {
                format!("cannot open the log stream {} at {shown}", self.log_stream)
            })?;
        let coordinator = ZkCoordinator::new(zk, self.zk_session_timeout);
        // Fail at start, not at the first request, when ZooKeeper is not there.
        drop(
            coordinator
                .connect()
                .await
                .with_context(|| format!("cannot reach ZooKeeper at {zk}"))?,
        );
        Ok(Engines {
            broker: Arc::new(broker),
            log: Arc::new(log),
            coordinator: Arc::new(coordinator),
        })
    }

    /// The flags every worker the runtime starts gets, after `worker` (the runtime adds `--id`).
    /// The AMQP URL is not among them: it goes in the environment (`worker_env`).
    fn worker_args(&self, runtime: &RuntimeArgs) -> anyhow::Result<Vec<String>> {
        let (_, zk) = self.urls()?;
        let zk = runtime.worker_zk.as_deref().unwrap_or(zk);
        let snapshots = &runtime.snapshots;
        let mut args = vec![
            "--zk".into(),
            zk.into(),
            "--zk-session-timeout".into(),
            humantime::format_duration(self.zk_session_timeout).to_string(),
            "--log-stream".into(),
            self.log_stream.clone(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string(),
            "--log-segment-bytes".into(),
            self.log_segment_bytes.to_string(),
            "--data-dir".into(),
            runtime.worker_data_dir.display().to_string(),
            // Health, readiness and metrics on a free loopback port, published in the
            // worker's member record.
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--snapshot-every".into(),
            snapshots.snapshot_every.to_string(),
            "--snapshot-keep".into(),
            snapshots.snapshot_keep.to_string(),
        ];
        if let Some(dir) = runtime.snapshot_dir() {
            args.push("--snapshot-dir".into());
            args.push(dir.display().to_string());
        }
        runtime.group_commit.push_args(&mut |name, value| {
            args.push(format!("--{name}"));
            args.push(value.to_string_lossy().into_owned());
        });
        Ok(args)
    }
}

impl EngineArgs {
    /// The environment every worker gets: the AMQP URL, password included, which a command
    /// line would show to every user of the host through `ps`.
    fn worker_env(&self, runtime: &RuntimeArgs) -> anyhow::Result<Vec<(String, String)>> {
        let (amqp, _) = self.urls()?;
        let amqp = runtime.worker_amqp_url.as_deref().unwrap_or(amqp);
        let mut env = vec![(AMQP_URL_ENV.to_owned(), amqp.to_owned())];
        if crate::logging::format() == crate::logging::LogFormat::Json {
            env.push(("RIDESHARE_LOG_FORMAT".to_owned(), "json".to_owned()));
        }
        Ok(env)
    }
}

impl Engines {
    pub fn orchestrator_deps(&self, runtime: Arc<dyn Runtime>) -> OrchestratorDeps {
        OrchestratorDeps {
            broker: Arc::clone(&self.broker),
            log: Arc::clone(&self.log),
            coordinator: Arc::clone(&self.coordinator),
            runtime,
        }
    }
}

/// The runtime the flags ask for.
pub async fn runtime(engines: &EngineArgs, args: &RuntimeArgs) -> anyhow::Result<Arc<dyn Runtime>> {
    let worker_args = engines.worker_args(args)?;
    let worker_env = engines.worker_env(args)?;
    Ok(match args.runtime {
        RuntimeKind::Process => {
            // A worker process follows its orchestrator out: a restarted orchestrator cannot
            // adopt another process's children, so it must not find them still running.
            let mut process_args = vec!["worker".to_owned(), "--exit-with-parent".to_owned()];
            process_args.extend(worker_args);
            let mut config = ProcessConfig {
                args: process_args,
                env: worker_env,
                id_prefix: format!("{}-worker", args.cluster),
                ..ProcessConfig::default()
            };
            if let Some(program) = &args.worker_program {
                config.program = program.clone();
            }
            Arc::new(ProcessRuntime::new(config))
        }
        RuntimeKind::Docker => {
            let names: Vec<&str> = args.docker_network.split(',').map(str::trim).collect();
            if names.iter().any(|n| n.is_empty()) {
                anyhow::bail!(
                    "--docker-network {:?}: a network name is empty (give a mode, then any \
                     further networks, comma-separated)",
                    args.docker_network
                );
            }
            let mut networks = names.into_iter();
            let docker = DockerRuntime::new(DockerConfig {
                image: args.worker_image.clone(),
                args: worker_args,
                env: worker_env,
                cluster: args.cluster.clone(),
                network_mode: networks.next().unwrap_or("host").to_owned(),
                networks: networks.map(str::to_owned).collect(),
                id_prefix: format!("{}-worker", args.cluster),
                shared_dirs: args.snapshot_dir().into_iter().collect(),
                ..DockerConfig::default()
            })
            .await
            .context("cannot use the Docker engine")?;
            // Fail at start, not at every reconcile, when the image was never built.
            docker.ensure_image().await.with_context(|| {
                format!(
                    "the worker image {} is missing: build it with scripts/build-worker-image.sh",
                    args.worker_image
                )
            })?;
            Arc::new(docker)
        }
    })
}

/// A URL fit for logs: the password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        // The nodes of one cluster: each URL on its own.
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_shown_in_urls() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/v"),
            "amqp://guest:***@host:5672/v"
        );
        assert_eq!(
            redact("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("amqp://g:a@127.0.0.1:5701/v,amqp://g:b@127.0.0.1:5702/v"),
            "amqp://g:***@127.0.0.1:5701/v,amqp://g:***@127.0.0.1:5702/v"
        );
    }
}
