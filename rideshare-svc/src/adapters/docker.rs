//! `DockerRuntime`: workers as Docker containers of the locally built worker image
//! (`scripts/build-worker-image.sh`), started, killed and listed through the Docker engine API.
//!
//! Every container it starts carries the labels `rideshare.role=worker` and
//! `rideshare.cluster=<cluster>`, and it only ever touches containers with both: several clusters
//! (and test runs) can share one engine, and nothing else on the engine is at risk. The engine is
//! the whole state, so a restarted orchestrator finds the workers that still run. Containers share
//! the host's pid namespace, so a worker's own `std::process::id()` is the host pid the engine
//! reports, the pid election orders by. It never pulls an image: there may be no registry, and
//! a worker must run the binary built from this tree.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use rideshare_dbaas::error::{Error, Result};
use rideshare_dbaas::retry::RetryPolicy;
use rideshare_dbaas::runtime::{Runtime, WorkerHandle};

/// Label every worker container carries, whatever its cluster.
pub const ROLE_LABEL: &str = "rideshare.role";
/// Label naming the cluster a worker container belongs to.
pub const CLUSTER_LABEL: &str = "rideshare.cluster";
const ROLE: &str = "worker";

/// How to start a worker container.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// Local image holding the `rideshare` binary as its entrypoint.
    pub image: String,
    /// The subcommand, before `args` (default `["worker"]`).
    pub cmd_prefix: Vec<String>,
    /// Arguments every worker gets, e.g. `["--zk", ...]`.
    pub args: Vec<String>,
    /// Environment variables every worker gets, e.g. the AMQP URL, which carries a password and
    /// so stays off the command line.
    pub env: Vec<(String, String)>,
    /// Value of the `rideshare.cluster` label: this runtime's containers are those with it.
    pub cluster: String,
    /// Docker network mode; `host` (default) lets workers reach engines on loopback.
    pub network_mode: String,
    /// Further networks every container is connected to before it starts.
    pub networks: Vec<String>,
    /// Container names (the worker ids) are `<id_prefix>-<random hex>`.
    pub id_prefix: String,
    /// The flag the id is passed with, after `args` (default `--id`); `None` passes none.
    pub id_arg: Option<String>,
    /// Host directories mounted into every worker at the same path (the shared snapshot
    /// directory).
    pub shared_dirs: Vec<std::path::PathBuf>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            image: "rideshare-worker:latest".to_owned(),
            cmd_prefix: vec!["worker".to_owned()],
            args: Vec::new(),
            env: Vec::new(),
            cluster: "rideshare".to_owned(),
            network_mode: "host".to_owned(),
            networks: Vec::new(),
            id_prefix: "rideshare-worker".to_owned(),
            id_arg: Some("--id".to_owned()),
            shared_dirs: Vec::new(),
        }
    }
}

/// Workers as containers; see the module documentation.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
}

fn docker_err(context: impl Into<String>) -> impl FnOnce(DockerError) -> Error {
    let context = context.into();
    move |e| Error::adapter(context, e)
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What the engine says of one container of ours.
enum Found {
    Absent,
    Running(u32),
    Stopped,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and agrees on the API
    /// version, so an engine older than bollard's default version still answers.
    pub async fn new(config: DockerConfig) -> Result<Self> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(docker_err("connecting to the Docker engine"))?
            .negotiate_version()
            .await
            .map_err(docker_err("asking the Docker engine its API version"))?;
        Ok(Self::with_client(docker, config))
    }

    /// Uses an engine client already connected.
    pub fn with_client(docker: Docker, config: DockerConfig) -> Self {
        DockerRuntime { docker, config }
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// Fails with a message saying how to build the image when the engine does not have it, so
    /// a deployment stops at once instead of at its first worker.
    pub async fn ensure_image(&self) -> Result<()> {
        match self.docker.inspect_image(&self.config.image).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(self.missing_image()),
            Err(e) => Err(Error::adapter(
                format!("inspecting image {}", self.config.image),
                e,
            )),
        }
    }

    /// Force-removes every container of this cluster, running or not (tests, shutdown).
    /// Returns how many were removed.
    pub async fn remove_all(&self) -> Result<usize> {
        let names = self.containers(true).await?;
        let mut removed = 0;
        for (name, _) in names {
            match self.remove(&name).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Freezes a running container of this cluster (`docker pause`: the cgroup freezer, so the
    /// worker stops where it is, sees no signal, and keeps its connections open).
    ///
    /// The freezer can fail to freeze a busy container in time ("unable to freeze": a task in
    /// uninterruptible sleep, such as an fsync, under load; seen once in CI while other tests
    /// ran containers beside it); the pause is tried again, 5 tries 200 ms apart.
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.running(id).await?;
        RetryPolicy::fixed(5, Duration::from_millis(200))
            .run(
                || self.docker.pause_container(id),
                |e: &DockerError| e.to_string().contains("unable to freeze"),
            )
            .await
            .map_err(docker_err(format!("pausing container {id}")))
    }

    /// Resumes a container of this cluster that [`DockerRuntime::pause`] froze.
    pub async fn unpause(&self, id: &str) -> Result<()> {
        // A paused container still counts as running for the engine.
        self.running(id).await?;
        self.docker
            .unpause_container(id)
            .await
            .map_err(docker_err(format!("resuming container {id}")))
    }

    /// Fails with `NoWorker` unless `id` is a running container of this cluster.
    async fn running(&self, id: &str) -> Result<()> {
        match self.find(id).await? {
            Found::Running(_) => Ok(()),
            Found::Stopped | Found::Absent => Err(Error::NoWorker(id.to_owned())),
        }
    }

    fn missing_image(&self) -> Error {
        Error::Runtime(format!(
            "worker image {} not found on the Docker engine: build it with \
             scripts/build-worker-image.sh (nothing is pulled)",
            self.config.image
        ))
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (ROLE_LABEL.to_owned(), ROLE.to_owned()),
            (CLUSTER_LABEL.to_owned(), self.config.cluster.clone()),
        ])
    }

    /// Names and states of this cluster's containers (`all`: stopped ones too).
    async fn containers(
        &self,
        all: bool,
    ) -> Result<Vec<(String, Option<ContainerSummaryStateEnum>)>> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{ROLE_LABEL}={ROLE}"),
                format!("{CLUSTER_LABEL}={}", self.config.cluster),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err("listing worker containers"))?;
        Ok(summaries
            .into_iter()
            .filter_map(|c| {
                // The engine's names carry a leading '/'; the id we handed out has none.
                let name = c.names?.into_iter().next()?;
                Some((name.trim_start_matches('/').to_owned(), c.state))
            })
            .collect())
    }

    /// Looks one container up, answering `Absent` for a container outside this cluster too: a
    /// worker id must never reach another cluster's container, or any other.
    async fn find(&self, name: &str) -> Result<Found> {
        let info = match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(e) if status_of(&e) == Some(404) => return Ok(Found::Absent),
            Err(e) => return Err(Error::adapter(format!("inspecting container {name}"), e)),
        };
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let ours = labels.get(ROLE_LABEL).map(String::as_str) == Some(ROLE)
            && labels.get(CLUSTER_LABEL) == Some(&self.config.cluster);
        if !ours {
            return Ok(Found::Absent);
        }
        let state = info.state.unwrap_or_default();
        let pid = state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        Ok(if state.running == Some(true) && pid > 0 {
            Found::Running(pid)
        } else {
            Found::Stopped
        })
    }

    /// Force-removes a container; `false` if it was gone already.
    async fn remove(&self, name: &str) -> Result<bool> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            // 404: gone; 409: a removal is already under way (another list or kill).
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(Error::adapter(format!("removing container {name}"), e)),
        }
    }

    fn cmd(&self, name: &str) -> Vec<String> {
        let mut cmd = self.config.cmd_prefix.clone();
        cmd.extend(self.config.args.iter().cloned());
        if let Some(flag) = &self.config.id_arg {
            cmd.push(flag.clone());
            cmd.push(name.to_owned());
        }
        cmd
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self) -> Result<WorkerHandle> {
        // 48 random bits, like the short ids Docker shows: names must not collide with a
        // container left over from an earlier run of the cluster.
        let name = format!(
            "{}-{:012x}",
            self.config.id_prefix,
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(self.cmd(&name)),
            env: Some(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                network_mode: Some(self.config.network_mode.clone()),
                binds: Some(
                    self.config
                        .shared_dirs
                        .iter()
                        .map(|dir| format!("{0}:{0}", dir.display()))
                        .collect(),
                ),
                // The worker registers std::process::id(); in the host's pid namespace that is
                // the pid the engine reports and the orchestrator orders by.
                pid_mode: Some("host".to_owned()),
                // Exited containers are removed by `list`, after it has seen them exit.
                auto_remove: Some(false),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => return Err(self.missing_image()),
            Err(e) => return Err(Error::adapter(format!("creating container {name}"), e)),
        }
        for network in &self.config.networks {
            let connect = NetworkConnectRequest {
                container: Some(name.clone()),
                ..NetworkConnectRequest::default()
            };
            if let Err(e) = self.docker.connect_network(network, connect).await {
                let _ = self.remove(&name).await;
                return Err(Error::adapter(
                    format!("connecting container {name} to network {network}"),
                    e,
                ));
            }
        }
        if let Err(e) = self
            .docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
        {
            // Leave no garbage: a created container that never ran is nobody's worker.
            let _ = self.remove(&name).await;
            return Err(Error::adapter(format!("starting container {name}"), e));
        }
        match self.find(&name).await? {
            Found::Running(pid) => {
                tracing::info!(worker = %name, pid, "worker container started");
                Ok(WorkerHandle { id: name, pid })
            }
            Found::Stopped | Found::Absent => {
                self.remove(&name).await?;
                Err(Error::Runtime(format!(
                    "worker container {name} exited as soon as it started (see `docker logs` \
                     of a rerun; it was removed)"
                )))
            }
        }
    }

    async fn kill(&self, id: &str) -> Result<()> {
        match self.find(id).await? {
            Found::Absent => Err(Error::NoWorker(id.to_owned())),
            Found::Stopped => {
                // Crashed but not yet collected by `list`: not running, so not a worker to
                // kill; collect it now.
                self.remove(id).await?;
                Err(Error::NoWorker(id.to_owned()))
            }
            Found::Running(pid) => {
                // The engine sends SIGKILL and waits until the container has stopped, so the
                // worker runs no more code once this returns.
                let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
                match self.docker.kill_container(id, Some(options)).await {
                    Ok(()) => {}
                    // 409: it stopped meanwhile; 404: it is gone. Either way it no longer runs.
                    Err(e) if matches!(status_of(&e), Some(404 | 409)) => {}
                    Err(e) => return Err(Error::adapter(format!("killing container {id}"), e)),
                }
                self.remove(id).await?;
                tracing::info!(worker = %id, pid, "worker container killed");
                Ok(())
            }
        }
    }

    async fn list(&self) -> Result<Vec<WorkerHandle>> {
        let mut list = Vec::new();
        for (name, state) in self.containers(true).await? {
            match state {
                // A container being created or started by a concurrent `start` is not a
                // worker yet, and must not be removed under it.
                Some(ContainerSummaryStateEnum::CREATED) => continue,
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    tracing::warn!(worker = %name, "worker container exited; removing it");
                    self.remove(&name).await?;
                    continue;
                }
                _ => {}
            }
            // The summary has no pid; and the container may have stopped since the listing.
            match self.find(&name).await? {
                Found::Running(pid) => list.push(WorkerHandle { id: name, pid }),
                Found::Stopped => {
                    tracing::warn!(worker = %name, "worker container exited; removing it");
                    self.remove(&name).await?;
                }
                Found::Absent => {}
            }
        }
        list.sort_by_key(|w| w.pid);
        Ok(list)
    }
}
