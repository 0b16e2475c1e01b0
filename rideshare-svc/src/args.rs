//! The flags that more than one command takes: where the engines are, how workers run and
//! scale, the HTTP bounds, and the orchestrator's own. `cli` assembles the commands from them,
//! and `chaos` builds an orchestrator's flags as a value (`OrchestratorArgs::to_args`) to start
//! one as a child process, so neither needs the other's module.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use rideshare_core::api::AdminToken;
use rideshare_core::clock::Zone;
use rideshare_dbaas::batch::Batching;
use rideshare_dbaas::worker::GroupCommit;

/// The variable the AMQP URL is read from: it may carry a password, so a child process gets it
/// in its environment, never on its command line (which `ps` shows every user of the host).
pub const AMQP_URL_ENV: &str = "RIDESHARE_AMQP_URL";
/// The variable `--worker-amqp-url` is read from; a secret like [`AMQP_URL_ENV`].
pub const WORKER_AMQP_URL_ENV: &str = "RIDESHARE_WORKER_AMQP_URL";
/// The variable the admin token is read from; a secret, passed like [`AMQP_URL_ENV`].
pub const ADMIN_TOKEN_ENV: &str = "RIDESHARE_ADMIN_TOKEN";

/// Where the real engines are. Without `--amqp-url` and `--zk`, `rideshare up` stays embedded.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// RabbitMQ URL, e.g. `amqp://127.0.0.1:5672/%2f`; or the URLs of the nodes of one
    /// cluster, comma-separated: it connects to the first that answers, and after a lost
    /// connection to the next one that does.
    #[arg(long, env = AMQP_URL_ENV)]
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
    /// Bytes the log stream keeps on disk: past them RabbitMQ deletes its oldest segments (a
    /// replica that needs them installs a snapshot instead). Set when the stream is created; an
    /// existing stream keeps its own. At least `--log-segment-bytes`.
    #[arg(long, env = "RIDESHARE_LOG_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_max_bytes: u64,
    /// Size of one segment file of the log (the stream's, or `rideshare up`'s file log):
    /// retention and truncation delete whole segments, and only once a segment is full.
    #[arg(long, env = "RIDESHARE_LOG_SEGMENT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_segment_bytes: u64,
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
    /// Docker network mode of worker containers; `host` reaches engines on loopback. Several
    /// networks, comma-separated: the first is the mode, the others are connected before the
    /// container starts (with `--worker-amqp-url` and `--worker-zk` naming the engines as the
    /// workers reach them there).
    #[arg(long, env = "RIDESHARE_DOCKER_NETWORK", default_value = "host")]
    pub docker_network: String,
    /// The RabbitMQ URL(s) workers are given, when they reach RabbitMQ under another address
    /// than this process does (workers on a Docker network of their own); default
    /// `--amqp-url`. A secret like it: set it in the environment.
    #[arg(long, env = WORKER_AMQP_URL_ENV, hide_env_values = true)]
    pub worker_amqp_url: Option<String>,
    /// The ZooKeeper connect string workers are given (see `--worker-amqp-url`); default
    /// `--zk`.
    #[arg(long, env = "RIDESHARE_WORKER_ZK")]
    pub worker_zk: Option<String>,
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
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
    #[command(flatten)]
    pub group_commit: GroupCommitArgs,
}

impl RuntimeArgs {
    /// The shared snapshot directory of this cluster's workers; `None` when snapshots are off.
    /// Absolute: Docker mounts only absolute host paths.
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        let dir = self
            .snapshots
            .dir(self.worker_data_dir.join("snapshots").join(&self.cluster))?;
        Some(std::path::absolute(&dir).unwrap_or(dir))
    }
}

/// The master's group commit (see `rideshare_dbaas::worker::GroupCommit`): the writes waiting
/// for the master go into the log as one record.
#[derive(Debug, Clone, Args)]
pub struct GroupCommitArgs {
    /// Writes in one log record at most (1: every write its own record).
    #[arg(long, env = "RIDESHARE_GROUP_MAX", default_value_t = GroupCommitArgs::default().group_max, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub group_max: u64,
    /// How long a record's first write may wait for more to join it (0s: only the writes
    /// already waiting join).
    #[arg(long, env = "RIDESHARE_GROUP_WAIT", default_value = "0s", value_parser = parse_group_wait)]
    pub group_wait: Duration,
    /// Records appended and not yet confirmed by the log at most; while they are, new writes
    /// wait and go out together in the next record.
    #[arg(long, env = "RIDESHARE_GROUP_IN_FLIGHT", default_value_t = GroupCommitArgs::default().group_in_flight, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub group_in_flight: u64,
}

/// A group wait of at most one second: longer would hold every write that long.
fn parse_group_wait(text: &str) -> Result<Duration, String> {
    let wait = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if wait > Duration::from_secs(1) {
        return Err(format!("{text} is over the 1s bound"));
    }
    Ok(wait)
}

/// The worker's own defaults (`GroupCommit::default`), so they are written once.
impl Default for GroupCommitArgs {
    fn default() -> Self {
        let defaults = GroupCommit::default();
        GroupCommitArgs {
            group_max: defaults.max as u64,
            group_wait: defaults.wait,
            group_in_flight: defaults.in_flight as u64,
        }
    }
}

impl GroupCommitArgs {
    /// The worker's settings.
    pub fn settings(&self) -> GroupCommit {
        GroupCommit {
            max: usize::try_from(self.group_max).unwrap_or(usize::MAX),
            wait: self.group_wait,
            in_flight: usize::try_from(self.group_in_flight).unwrap_or(usize::MAX),
        }
    }

    /// The flags, as workers and child orchestrators are given them.
    pub fn push_args(&self, flag: &mut impl FnMut(&str, OsString)) {
        let GroupCommitArgs {
            group_max,
            group_wait,
            group_in_flight,
        } = self;
        flag("group-max", group_max.to_string().into());
        flag(
            "group-wait",
            humantime::format_duration(*group_wait).to_string().into(),
        );
        flag("group-in-flight", group_in_flight.to_string().into());
    }
}

/// Snapshots of the workers' stores (see `rideshare_dbaas::snapshot`).
#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// A worker writes a snapshot once it has applied this many log entries past the newest
    /// one (0: no snapshots, and the log keeps everything).
    #[arg(long, env = "RIDESHARE_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Snapshots kept, the newest ones; the log keeps what the oldest does not cover.
    #[arg(long, env = "RIDESHARE_SNAPSHOT_KEEP", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub snapshot_keep: u64,
    /// The snapshot directory every worker of one cluster shares (mounted at the same path into
    /// worker containers); it belongs to one log. Default: `<data-dir>/snapshots` for
    /// `rideshare up` embedded, `<worker-data-dir>/snapshots/<cluster>` with the real engines.
    #[arg(long, env = "RIDESHARE_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
}

impl SnapshotArgs {
    /// The directory: the flag's, or `default_dir`; `None` when snapshots are off.
    pub fn dir(&self, default_dir: PathBuf) -> Option<PathBuf> {
        (self.snapshot_every > 0).then(|| self.snapshot_dir.clone().unwrap_or(default_dir))
    }

    fn push_args(&self, flag: &mut impl FnMut(&str, OsString)) {
        let SnapshotArgs {
            snapshot_every,
            snapshot_keep,
            snapshot_dir,
        } = self;
        flag("snapshot-every", snapshot_every.to_string().into());
        flag("snapshot-keep", snapshot_keep.to_string().into());
        if let Some(dir) = snapshot_dir {
            flag("snapshot-dir", dir.into());
        }
    }
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
    pub batching: BatchArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// How the orchestrator batches its calls to the workers that queue up (see
/// `rideshare_dbaas::batch`).
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Calls in one queue message, at most (1: every call is its own message).
    #[arg(long, env = "RIDESHARE_BATCH_MAX", default_value_t = BatchArgs::default().batch_max, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_max: u32,
    /// How long a batch may wait for more calls while an earlier one of its queue is
    /// unanswered (e.g. `2ms`, at most `100ms`; `0s`: it never waits). A lone call never waits.
    /// Tokio's timer counts whole milliseconds: any wait above zero can hold a batch for 1 ms.
    #[arg(long, env = "RIDESHARE_BATCH_WAIT", default_value = "0s", value_parser = parse_batch_wait)]
    pub batch_wait: Duration,
    /// Batches of one queue unanswered at once; calls beyond them queue and go together in the
    /// next message (so batches grow with the load, with no wait).
    #[arg(long, env = "RIDESHARE_BATCH_IN_FLIGHT", default_value_t = BatchArgs::default().batch_in_flight, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_in_flight: u32,
    /// The same bound for write batches (to the one master, whose group commit appends each
    /// batch as one log record).
    #[arg(long, env = "RIDESHARE_WRITE_BATCH_IN_FLIGHT", default_value_t = BatchArgs::default().write_batch_in_flight, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub write_batch_in_flight: u32,
}

/// The orchestrator's own defaults (`Batching::default`), so they are written once.
impl Default for BatchArgs {
    fn default() -> Self {
        let defaults = Batching::default();
        BatchArgs {
            batch_max: defaults.max as u32,
            batch_wait: defaults.wait,
            batch_in_flight: defaults.in_flight as u32,
            write_batch_in_flight: defaults.write_in_flight as u32,
        }
    }
}

impl BatchArgs {
    pub fn batching(&self) -> Batching {
        Batching {
            max: self.batch_max as usize,
            wait: self.batch_wait,
            in_flight: self.batch_in_flight as usize,
            write_in_flight: self.write_batch_in_flight as usize,
        }
    }
}

fn parse_batch_wait(text: &str) -> Result<Duration, String> {
    let wait = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if wait > Duration::from_millis(100) {
        return Err("the batch wait is at most 100ms".into());
    }
    Ok(wait)
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
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<AdminToken>,
    /// Listen on non-loopback addresses without an admin token (admin calls open to anyone).
    #[arg(long, env = "RIDESHARE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Zone ride timestamps are read in: `local` (the host's), `UTC`, or an offset like `+05:30`.
    #[arg(long, env = "RIDESHARE_TZ", default_value = "local")]
    pub tz: Zone,
}

pub(crate) fn parse_admin_token(text: &str) -> Result<AdminToken, String> {
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the admin token must not hold spaces or control characters".into());
    }
    Ok(AdminToken::new(text))
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

impl OrchestratorArgs {
    /// The subcommand these flags belong to (`rideshare orchestrator`).
    pub const SUBCOMMAND: &'static str = "orchestrator";

    /// The flags as clap would take them from the environment and the defaults alone: what an
    /// orchestrator started with no flags, in this process's environment, would run with.
    pub fn from_env() -> anyhow::Result<Self> {
        let command = Self::augment_args(clap::Command::new(Self::SUBCOMMAND));
        let matches = command.try_get_matches_from([Self::SUBCOMMAND])?;
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// The command line (after the program name, subcommand first) that parses back into these
    /// flags. The AMQP URLs and the admin token are left out: they are secrets, and the caller
    /// passes them in the child's environment ([`AMQP_URL_ENV`], [`WORKER_AMQP_URL_ENV`],
    /// [`ADMIN_TOKEN_ENV`]).
    pub fn to_args(&self) -> Vec<OsString> {
        // Destructured here and below, so a field added without its flag fails to compile.
        let OrchestratorArgs {
            listen,
            engines,
            runtime,
            scaling,
            batching,
            http,
        } = self;
        let mut argv: Vec<OsString> = vec![Self::SUBCOMMAND.into()];
        let mut flag = |name: &str, value: OsString| {
            argv.push(format!("--{name}").into());
            argv.push(value);
        };
        flag("listen", listen.to_string().into());
        let EngineArgs {
            amqp_url: _,
            zk,
            zk_session_timeout,
            log_stream,
            log_max_bytes,
            log_segment_bytes,
        } = engines;
        if let Some(zk) = zk {
            flag("zk", zk.into());
        }
        flag("zk-session-timeout", duration(*zk_session_timeout));
        flag("log-stream", log_stream.into());
        flag("log-max-bytes", log_max_bytes.to_string().into());
        flag("log-segment-bytes", log_segment_bytes.to_string().into());
        runtime.push_args(&mut flag);
        let ScalingArgs {
            scale_interval,
            reads_per_slave,
            max_slaves,
        } = scaling;
        flag("scale-interval", duration(*scale_interval));
        flag("reads-per-slave", reads_per_slave.to_string().into());
        flag("max-slaves", max_slaves.to_string().into());
        let BatchArgs {
            batch_max,
            batch_wait,
            batch_in_flight,
            write_batch_in_flight,
        } = batching;
        flag("batch-max", batch_max.to_string().into());
        flag("batch-wait", duration(*batch_wait));
        flag("batch-in-flight", batch_in_flight.to_string().into());
        flag(
            "write-batch-in-flight",
            write_batch_in_flight.to_string().into(),
        );
        let insecure_no_auth = http.push_args(&mut flag);
        if insecure_no_auth {
            argv.push("--insecure-no-auth".into());
        }
        argv
    }
}

impl RuntimeArgs {
    fn push_args(&self, flag: &mut impl FnMut(&str, OsString)) {
        let RuntimeArgs {
            runtime,
            worker_image,
            docker_network,
            worker_amqp_url: _,
            worker_zk,
            cluster,
            worker_program,
            worker_data_dir,
            snapshots,
            group_commit,
        } = self;
        let runtime = match runtime {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        };
        flag("runtime", runtime.into());
        flag("worker-image", worker_image.into());
        flag("docker-network", docker_network.into());
        if let Some(zk) = worker_zk {
            flag("worker-zk", zk.into());
        }
        flag("cluster", cluster.into());
        if let Some(program) = worker_program {
            flag("worker-program", program.into());
        }
        flag("worker-data-dir", worker_data_dir.into());
        snapshots.push_args(flag);
        group_commit.push_args(flag);
    }
}

impl HttpArgs {
    /// Pushes the valued flags; returns whether `--insecure-no-auth` (a switch) is to be added.
    fn push_args(&self, flag: &mut impl FnMut(&str, OsString)) -> bool {
        let HttpArgs {
            max_body_bytes,
            request_timeout,
            max_in_flight,
            max_connections,
            header_read_timeout,
            admin_token: _,
            insecure_no_auth,
            tz,
        } = self;
        flag("max-body-bytes", max_body_bytes.to_string().into());
        flag("request-timeout", duration(*request_timeout));
        flag("max-in-flight", max_in_flight.to_string().into());
        flag("max-connections", max_connections.to_string().into());
        flag("header-read-timeout", duration(*header_read_timeout));
        let tz = match tz {
            Zone::Local => "local".to_owned(),
            // chrono writes an offset as `+05:30`, the form `Zone` parses.
            Zone::Fixed(offset) => offset.to_string(),
        };
        flag("tz", tz.into());
        *insecure_no_auth
    }
}

/// A duration as `humantime` writes it (`1s 500ms`), which its parser reads back exactly.
fn duration(d: Duration) -> OsString {
    humantime::format_duration(d).to_string().into()
}
