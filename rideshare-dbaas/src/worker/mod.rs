//! The worker: one program that is a slave or the master, with its own copy of the database.
//!
//! Every worker follows the log (the tailer) and applies it in order to its store. A slave serves
//! reads from the read queue, waiting (bounded) until it has applied the index a read asks for.
//! When the master's node disappears, the worker the election picks takes the `/rideshare/master`
//! node, draws a new epoch from the coordinator, appends its epoch marker and, once its tailer
//! has applied the marker (so it holds everything before it), consumes the write queue: it
//! appends the writes waiting, stamped with its epoch, as one record (group commit) and answers
//! each only after its tailer applied it.
//!
//! Fencing: entries of an older epoch after a newer marker are skipped by every replica, and a
//! master that sees a newer marker (or loses its session) stops and never acknowledges again.
//! A worker must not serve reads before it has caught up with the log as it was at its start.
//!
//! One job per module: `store` owns the store and the replica core on a thread of its own,
//! `tail` follows the log into it and wakes waiters, `serve` answers the queues, `group`
//! appends the master's waiting writes as records, and `membership` is everything said to the
//! coordinator (member node, election, master node).
//!
//! The synchronisation left, and why each is needed:
//! - the store thread's bounded command channel, with a oneshot per answer: the one way to the
//!   store, so it has one owner, is never locked, and never blocks the executor;
//! - a `watch` of the replica's `Position` (applied index and epoch, moved together once a
//!   group is durable): reads wait for their `min_index`, the promotion for its marker, the
//!   publishers for changes, each without polling;
//! - a `parking_lot` mutex over this master's pending writes (`tail::Waiters`): write
//!   handlers register, the tailer resolves, and registration is refused once deposed; it is
//!   never held across an await;
//! - an async mutex over the member record: every change (role, catch-up, progress, state) is
//!   a read-modify-write of one coordinator node, so concurrent ones must not undo each other,
//!   and it is held across the coordinator write;
//! - the group appender's bounded queue and its semaphore of records in flight: write handlers
//!   queue, one task appends, and the semaphore bounds the confirmations awaited at once;
//! - `WorkerConfig::ready`, an atomic flag: the worker's `/ready`, read by its HTTP server.
//!
//! Gone: the store's mutex (the thread owns it), the epoch and master-epoch atomics (in the
//! `watch`, and handed from the election to the write server), and the deposition `watch` (the
//! tailer ends with `NotMaster`, which ends the worker, and closes the pending writes).

mod group;
mod membership;
mod serve;
mod snapshot;
mod store;
mod tail;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rideshare_core::machine::Store;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::coord::Coordinator;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::protocol::{
    CatchUp, CatchUpPlan, MemberRecord, Role, SnapshotState, READ_QUEUE, WRITE_QUEUE,
};
use crate::registry::Registry;
use crate::snapshot::{Manifest, SnapshotDir, StoreKind, Taken};
use store::StoreHandle;

pub use group::GroupCommit;

/// A worker's settings. Every wait has a bound.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: String,
    pub pid: u32,
    /// Unacked reads one slave holds at most.
    pub read_prefetch: u16,
    /// Unacked writes the master holds at most (its pipelining depth).
    pub write_prefetch: u16,
    /// How long a read waits for its `min_index` before answering `Behind`.
    pub read_wait: Duration,
    /// How long the master waits to see its own append applied before giving up on it.
    pub write_wait: Duration,
    /// Bound on catching up with the log at start.
    pub catch_up_wait: Duration,
    /// A catch-up that applies nothing for this long has stalled (its log reader hangs, as
    /// a RabbitMQ stream consumer made while the broker restarts was seen to): the worker
    /// stops and is replaced rather than wait out `catch_up_wait`.
    pub catch_up_stall: Duration,
    /// Log entries applied in one commit group at most: those already waiting when one arrives
    /// (catch-up, bursts of writes), so a replica that fell behind pays one transaction per
    /// group, not per entry, and holds its store for a bounded time. 1 turns grouping off.
    pub apply_group: usize,
    /// The master's group commit: how many writes share a log record, and how long and how
    /// many records may wait (see `group.rs`).
    pub group_commit: GroupCommit,
    /// Threads that answer reads on their own connections to the store's file, beside the
    /// store thread that applies the log (so a long listing neither waits behind a commit
    /// group nor holds one back, and several are read at once). 0, or a store without a file,
    /// leaves every read to the store thread.
    pub read_threads: usize,
    /// Turned on once the worker has caught up with the log and serves (its `/ready`).
    pub ready: Arc<AtomicBool>,
    /// Where this worker serves `/health`, `/ready` and `/metrics`, published in its member
    /// record; `None` when it serves none.
    pub http: Option<String>,
    /// Where and how often it writes snapshots; `None`: never.
    pub snapshots: Option<SnapshotSettings>,
    /// Whether the clock of the runtime it runs on may be paused (`tokio::time::pause`: tests
    /// and the simulation). On a current-thread runtime the worker then awaits its store's
    /// threads through tokio's blocking pool (see `store::Handoff`), at two more thread
    /// handoffs per store call. The `rideshare worker` process, whose clock is real, turns it
    /// off.
    pub clock_may_pause: bool,
    /// Whether a message of a few point reads (whether a user exists, one ride) is answered on
    /// the task's own thread, from a connection of its own, rather than handed to a reader
    /// thread (`store::StoreHandle::read`). Off by default: a worker in `rideshare up` shares
    /// its runtime's threads with the services. The `rideshare worker` process, whose runtime
    /// only routes messages, turns it on.
    pub inline_point_reads: bool,
}

/// A worker's snapshot settings.
#[derive(Clone, Debug)]
pub struct SnapshotSettings {
    /// The directory every worker of the cluster shares.
    pub dir: SnapshotDir,
    /// A snapshot once the replica is this many entries past the newest one.
    pub every: u64,
    /// The worker's store, which writes the snapshot in its own format.
    pub kind: StoreKind,
}

impl WorkerConfig {
    pub fn new(id: impl Into<String>, pid: u32) -> Self {
        WorkerConfig {
            id: id.into(),
            pid,
            read_prefetch: 32,
            write_prefetch: 64,
            read_wait: Duration::from_secs(2),
            write_wait: Duration::from_secs(5),
            catch_up_wait: Duration::from_secs(300),
            catch_up_stall: Duration::from_secs(15),
            apply_group: 256,
            group_commit: GroupCommit::default(),
            read_threads: 2,
            ready: Arc::default(),
            http: None,
            snapshots: None,
            clock_may_pause: true,
            inline_point_reads: false,
        }
    }
}

/// The engines a worker talks to.
#[derive(Clone)]
pub struct WorkerDeps {
    pub broker: Arc<dyn Broker>,
    pub log: Arc<dyn Log>,
    pub coordinator: Arc<dyn Coordinator>,
}

/// How far the replica got: its applied index and the newest epoch marker applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Position {
    index: u64,
    epoch: u64,
    /// The state checksum's value at `index`, once known (from the first commit group applied,
    /// or the snapshot installed).
    checksum: Option<u64>,
}

/// State shared by a worker's tasks.
struct Shared {
    config: WorkerConfig,
    store: StoreHandle,
    /// Moved by the tailer once each commit group is durable.
    position: watch::Sender<Position>,
    waiters: tail::Waiters,
    /// The last group ends, to tell a snapshot copy's epoch and checksum by its index.
    recent: snapshot::Recent,
    /// This worker's member record as last written to its node; every change goes through
    /// this lock, so concurrent updates (role, state) do not undo each other.
    member: tokio::sync::Mutex<MemberRecord>,
}

impl Shared {
    async fn wait_applied(&self, index: u64, bound: Duration) -> bool {
        let mut position = self.position.subscribe();
        tokio::time::timeout(bound, position.wait_for(|p| p.index >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Runs a worker until it must stop: its session ended, it was deposed, or an engine failed.
/// It never returns `Ok` on its own; the caller (a runtime) treats any return as the worker's
/// death, and the orchestrator replaces it.
pub async fn run_worker(
    config: WorkerConfig,
    deps: WorkerDeps,
    store: Box<dyn Store>,
) -> Result<()> {
    run_worker_from(config, deps, store, None).await
}

/// [`run_worker`] on a store installed from the snapshot `installed` (its epoch and checksum
/// are the store's starting ones).
#[tracing::instrument(name = "worker", skip_all, fields(worker = %config.id, pid = config.pid))]
pub async fn run_worker_from(
    config: WorkerConfig,
    deps: WorkerDeps,
    store: Box<dyn Store>,
    installed: Option<Manifest>,
) -> Result<()> {
    let start = store::Start {
        epoch: installed.as_ref().map_or(0, |m| m.epoch),
        checksum: installed.as_ref().map(|m| m.checksum_parts),
    };
    let (store, start_index) = StoreHandle::spawn(
        store,
        &config.id,
        config.read_threads,
        start,
        config.clock_may_pause,
        config.inline_point_reads,
    )
    .await?;
    let member = MemberRecord {
        id: config.id.clone(),
        pid: config.pid,
        role: Role::Slave,
        catch_up: None,
        state: None,
        progress: None,
        http: config.http.clone(),
        catching_up: None,
        snapshots: installed.as_ref().map(|m| SnapshotState {
            installed: Some(m.index),
            taken: None,
        }),
    };
    let recent = snapshot::Recent::default();
    if let Some(checksum) = start.checksum {
        recent.push(Taken {
            index: start_index,
            epoch: start.epoch,
            checksum,
        });
    }
    let shared = Arc::new(Shared {
        config,
        store,
        position: watch::channel(Position {
            index: start_index,
            epoch: start.epoch,
            checksum: start.checksum.map(|c| c.value()),
        })
        .0,
        waiters: tail::Waiters::default(),
        recent,
        member: tokio::sync::Mutex::new(member),
    });
    let registry = Registry::connect(deps.coordinator.as_ref()).await?;
    deps.broker.declare(READ_QUEUE).await?;
    deps.broker.declare(WRITE_QUEUE).await?;

    let mut tasks = JoinSet::new();
    let log = Arc::clone(&deps.log);
    tasks.spawn(tail::tail(Arc::clone(&shared), log, start_index));
    let member_path = membership::register(&shared, &registry).await?;
    tasks.spawn(membership::publish_progress(
        Arc::clone(&shared),
        registry.clone(),
        member_path.clone(),
    ));
    catch_up(&shared, &deps, &registry, &member_path, start_index).await?;
    if let Some(settings) = shared.config.snapshots.clone() {
        tasks.spawn(snapshot::take_snapshots(
            Arc::clone(&shared),
            settings,
            registry.clone(),
            member_path.clone(),
        ));
    }
    tasks.spawn(membership::publish_state(
        Arc::clone(&shared),
        registry.clone(),
        member_path.clone(),
    ));

    let roles = serve::serve_roles(shared, deps, registry.clone(), member_path);
    tokio::select! {
        result = roles => result,
        _ = registry.lost() => Err(Error::SessionExpired),
        ended = tasks.join_next() => match ended {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(Error::LogUnavailable("log reader ended".into())),
        },
    }
}

/// Waits (bounded) until the replica has applied the log as it was at its start, records how
/// long that took in the member node, and turns `ready` on.
async fn catch_up(
    shared: &Shared,
    deps: &WorkerDeps,
    registry: &Registry,
    member_path: &str,
    start_index: u64,
) -> Result<()> {
    let started = Instant::now();
    let config = &shared.config;
    let end = deps.log.end().await?;
    shared
        .update_member(registry, member_path, |m| {
            m.catching_up = Some(CatchUpPlan {
                from: start_index,
                to: end,
            })
        })
        .await?;
    tokio::select! {
        caught_up = wait_progressing(shared, end) => caught_up?,
        _ = registry.lost() => return Err(Error::SessionExpired),
    }
    let catch_up = CatchUp {
        entries: end.saturating_sub(start_index),
        ms: duration_ms(started.elapsed()),
    };
    tracing::info!(
        index = end,
        entries = catch_up.entries,
        ms = catch_up.ms,
        "caught up with the log"
    );
    shared
        .update_member(registry, member_path, |m| m.catch_up = Some(catch_up))
        .await?;
    config.ready.store(true, Ordering::SeqCst);
    metrics::gauge!("rideshare_worker_caught_up", "worker" => config.id.clone()).set(1.0);
    Ok(())
}

/// How often a catch-up logs its progress.
const CATCH_UP_REPORT: Duration = Duration::from_secs(1);

/// Waits until `end` is applied: at most `catch_up_wait` in all, and at most `catch_up_stall`
/// without applying anything; logs progress (entries/s) every [`CATCH_UP_REPORT`].
async fn wait_progressing(shared: &Shared, end: u64) -> Result<()> {
    let config = &shared.config;
    // The runtime's clock (paused in tests), like the waits it measures.
    let started = tokio::time::Instant::now();
    let mut seen = shared.position.borrow().index;
    let mut last_move = tokio::time::Instant::now();
    loop {
        let step = tokio::time::Instant::now();
        let left = config.catch_up_wait.saturating_sub(started.elapsed());
        if shared.wait_applied(end, CATCH_UP_REPORT.min(left)).await {
            return Ok(());
        }
        let now = shared.position.borrow().index;
        if started.elapsed() >= config.catch_up_wait {
            return Err(Error::Timeout(
                "catch-up",
                duration_ms(config.catch_up_wait),
            ));
        }
        if now != seen {
            last_move = tokio::time::Instant::now();
        } else if last_move.elapsed() >= config.catch_up_stall {
            tracing::warn!(applied = now, end, "catch-up stalled: nothing applied");
            return Err(Error::Timeout(
                "catch-up (stalled)",
                duration_ms(config.catch_up_stall),
            ));
        }
        tracing::info!(
            applied = now,
            end,
            entries_per_s = ((now - seen) as f64 / step.elapsed().as_secs_f64().max(1e-3)).round(),
            "catching up"
        );
        seen = now;
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
