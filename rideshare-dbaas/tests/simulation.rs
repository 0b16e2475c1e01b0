//! The seeded simulation: the whole DBaaS on the in-memory engines under a paused tokio clock,
//! random client operations, and random faults, polite and not: master and slave crashes,
//! workers dying on their own (at once, or frozen first with their session expiring late),
//! paused workers (every call held, the session expired late or not at all), slow replicas (the
//! log read an entry at a time, tens of ms apart), congestion (the master's replies late while
//! a slave reads the log slowly), the orchestrator
//! killed with requests in flight, dropped, duplicated, delayed and reordered messages, log and
//! coordinator outages, expired sessions, and late appends of a deposed master (write entries of
//! an older epoch landing after a newer marker, new ones and copies of old ones).
//!
//! After every run the history is checked by the one history checker, `rideshare_dbaas::checker`
//! (lost, doubled, stale and non-monotonic reads, a deposed master's write applied, and every
//! replica's state: those alive once quiet at the log's end, and every digest any worker, the
//! master and the dead included, published during the run, at its index). The simulation adds
//! what only it can see: at most one worker acknowledges writes per epoch; once quiet the cluster
//! has one master and the number of slaves the scaling policy says; and a progress floor: once
//! the faults are over, the clients' operations succeed.
//!
//! Three seeds in four also take snapshots every few entries (a shared directory per seed),
//! install them in every new worker and truncate the log behind them, with two more faults: a
//! corrupted snapshot, and a new worker killed while it installs one. The log's whole history
//! is kept by an archive that follows it from the first entry, for the checker.
//!
//! `SIM_SEEDS=N` runs seeds 0..N (default 200), on one thread per core (`SIM_THREADS`);
//! `SIM_SEED=S` replays one seed (`SIM_LOG=info` prints its log lines).

#[path = "simulation/pause.rs"]
mod pause;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp};
use rideshare_core::store::MemStore;
use rideshare_core::{Area, RideId, Timestamp, Username};
use rideshare_dbaas::batch::Batching;
use rideshare_dbaas::checker::{check_all, Completion, Event, Operation, Replay, ReplicaState};
use rideshare_dbaas::cluster::{EmbeddedCluster, EmbeddedConfig, WorkerStores};
use rideshare_dbaas::runtime::WorkerHandle;

use self::pause::Gates;
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::{Log, Record};
use rideshare_dbaas::orchestrator::{Freshness, Orchestrator, OrchestratorConfig};
use rideshare_dbaas::policy::ScalePolicy;
use rideshare_dbaas::protocol::{decode_versioned, encode, EntryBody, LogEntry, VERSION};
use rideshare_dbaas::runtime::Runtime;
use rideshare_dbaas::snapshot::{SnapshotDir, StoreKind};
use rideshare_dbaas::worker::{SnapshotSettings, WorkerConfig};

const CLIENTS: usize = 8;
const OPS_PER_CLIENT: usize = 40;
const FAULT_PHASE: Duration = Duration::from_secs(20);
/// Operations per client once the faults are over and the cluster has settled...
const QUIET_OPS_PER_CLIENT: usize = 8;
/// ...of which at least this share must succeed (the progress floor): a build that refuses
/// writes, or reads, fails here whatever else it gets right.
const PROGRESS_FLOOR: f64 = 0.9;

/// What the clients saw (checker events), which worker acknowledged each write in which epoch,
/// and the faults injected.
#[derive(Debug, Default)]
struct History {
    events: Vec<Event>,
    acked_by: Vec<(u64, String)>,
    faults: Vec<String>,
}

/// Snapshots on three seeds in four: every few entries, two kept.
fn snapshots(seed: u64, dir: &std::path::Path) -> Option<SnapshotDir> {
    (!seed.is_multiple_of(4)).then(|| SnapshotDir::open(dir, 2).expect("snapshot dir"))
}

fn config(seed: u64, snapshots: Option<SnapshotDir>, gates: &Gates) -> EmbeddedConfig {
    let mut worker = WorkerConfig::new("", 0);
    worker.snapshots = snapshots.clone().map(|dir| SnapshotSettings {
        dir,
        every: 5 + seed % 30,
        kind: StoreKind::Memory,
    });
    worker.read_wait = Duration::from_millis(500);
    worker.write_wait = Duration::from_secs(1);
    worker.catch_up_wait = Duration::from_secs(30);
    EmbeddedConfig {
        stores: WorkerStores::Memory,
        orchestrator: OrchestratorConfig {
            name: format!("sim{seed}"),
            attempt_timeout: Duration::from_millis(600),
            attempts: 4,
            retry_pause: Duration::from_millis(50),
            scale_window: Duration::from_secs(5),
            policy: ScalePolicy {
                reads_per_slave: 20,
                max_slaves: 4,
            },
            reconcile_every: Duration::from_millis(100),
            start_grace: Duration::from_secs(5),
            max_in_flight: 64,
            // Batches of every size up to 8, some collected for a while, behind 1 to 5 unanswered
            // ones (writes: 1 to 3): writes and reads of one message face the same faults as
            // lone ones.
            batching: Batching {
                max: 1 + (seed % 8) as usize,
                wait: Duration::from_micros(seed % 3 * 700),
                in_flight: 1 + (seed % 5) as usize,
                write_in_flight: 1 + (seed / 5 % 3) as usize,
            },
            snapshots,
        },
        worker,
        first_pid: 100,
        worker_deps: Some({
            let gates = gates.clone();
            Arc::new(move |handle: &WorkerHandle, deps| gates.wrap(handle, deps))
        }),
    }
}

fn random_write(rng: &mut SmallRng) -> WriteOp {
    let user = Username::parse(&format!("u{}", rng.gen_range(0..6))).unwrap();
    match rng.gen_range(0..10) {
        0..=2 => WriteOp::AddUser {
            username: user,
            password_hash: "h".into(),
        },
        3..=5 => WriteOp::CreateRide {
            created_by: user,
            timestamp: Timestamp::from_seconds(1_893_456_000 + rng.gen_range(0..86_400)).unwrap(),
            source: Area::new(rng.gen_range(1..4)).unwrap(),
            destination: Area::new(rng.gen_range(1..4)).unwrap(),
        },
        6..=7 => WriteOp::JoinRide {
            ride_id: RideId(rng.gen_range(1..15)),
            username: user,
        },
        8 => WriteOp::DeleteRide {
            ride_id: RideId(rng.gen_range(1..15)),
        },
        _ => WriteOp::DeleteUser { username: user },
    }
}

fn random_read(rng: &mut SmallRng) -> ReadOp {
    match rng.gen_range(0..3) {
        0 => ReadOp::ListUsers,
        1 => ReadOp::CountRides,
        _ => ReadOp::GetRide {
            ride_id: RideId(rng.gen_range(1..15)),
        },
    }
}

/// Every entry the log ever held, in order: the log itself drops what snapshots cover.
#[derive(Clone, Default)]
struct Archive(Arc<Mutex<Vec<Record>>>);

impl Archive {
    /// Follows `log` from its first entry for as long as it lives.
    async fn follow(log: Arc<dyn Log>) -> Archive {
        let archive = Archive::default();
        let mut reader = log.read_from(1).await.expect("archive reader");
        let records = Arc::clone(&archive.0);
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Some(Ok(record)) => records.lock().unwrap().push(record),
                    // An outage: the reader goes on where it was once the log is back.
                    Some(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                    None => return,
                }
            }
        });
        archive
    }

    /// The first `end` entries, once the archive holds them.
    async fn up_to(&self, end: u64) -> Vec<Record> {
        loop {
            {
                let records = self.0.lock().unwrap();
                if records.len() as u64 >= end {
                    return records[..end as usize].to_vec();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Replays the log through the replica core, as the history checker does: the reference, with
/// its checksum noted at each of `at`.
async fn replay(
    log: &dyn Log,
    archive: &Archive,
    at: impl IntoIterator<Item = u64>,
) -> Replay<MemStore> {
    let end = log.end().await.unwrap();
    let mut replay = Replay::new(MemStore::new());
    replay.checksums_at(at).unwrap();
    for record in archive.up_to(end).await {
        replay.apply(&record).unwrap();
    }
    replay
}

async fn wait_for_master(cluster: &EmbeddedCluster, bound: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(m)) = cluster.orchestrator().master().await {
            if m.epoch > 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The last state digest each worker published in its member node (progress with a checksum,
/// or the quiet state digest), by worker id: the dead and the master included.
#[derive(Clone, Default)]
struct Published(Arc<Mutex<BTreeMap<String, ReplicaState>>>);

impl Published {
    /// Looks at the member nodes every 50 ms, through whichever orchestrator is current.
    fn watch(
        orchestrator: Arc<Mutex<Arc<Orchestrator>>>,
    ) -> (Published, tokio::task::JoinHandle<()>) {
        let published = Published::default();
        let seen = Arc::clone(&published.0);
        let task = tokio::spawn(async move {
            loop {
                let o = Arc::clone(&orchestrator.lock().unwrap());
                for member in o.members().await.unwrap_or_default() {
                    let record = member.record;
                    let digests = [
                        record
                            .progress
                            .and_then(|p| p.checksum.map(|c| (p.applied_index, c))),
                        record.state.map(|s| (s.applied_index, s.checksum)),
                    ];
                    let Some((applied_index, checksum)) =
                        digests.into_iter().flatten().max_by_key(|(i, _)| *i)
                    else {
                        continue;
                    };
                    let mut seen = seen.lock().unwrap();
                    let newer = seen
                        .get(&record.id)
                        .is_none_or(|s| s.applied_index <= applied_index);
                    if newer {
                        seen.insert(
                            record.id.clone(),
                            ReplicaState {
                                worker: record.id,
                                applied_index,
                                checksum,
                            },
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (published, task)
    }

    fn states(&self) -> Vec<ReplicaState> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

/// The current orchestrator, and a count of orchestrators killed: a client's call to one that
/// is killed under it ends there (a process's requests die with it), its outcome unknown.
#[derive(Clone)]
struct Current {
    orchestrator: Arc<Mutex<Arc<Orchestrator>>>,
    killed: tokio::sync::watch::Sender<u64>,
}

impl Current {
    fn new(o: &Arc<Orchestrator>) -> Self {
        Current {
            orchestrator: Arc::new(Mutex::new(Arc::clone(o))),
            killed: tokio::sync::watch::channel(0).0,
        }
    }

    fn get(&self) -> (Arc<Orchestrator>, u64) {
        let o = Arc::clone(&self.orchestrator.lock().unwrap());
        (o, *self.killed.borrow())
    }

    /// Kills the current one (its calls in flight end) and puts `next` in its place.
    fn replace(&self, next: &Arc<Orchestrator>) {
        *self.orchestrator.lock().unwrap() = Arc::clone(next);
        self.killed.send_modify(|n| *n += 1);
    }

    /// Resolves once the orchestrator of generation `generation` has been killed.
    async fn killed(&self, generation: u64) {
        let mut killed = self.killed.subscribe();
        let _ = killed.wait_for(|n| *n > generation).await;
    }
}

/// One client operation against the current orchestrator, as the history records it.
async fn operate(
    current: &Current,
    rng: &mut SmallRng,
    request_id: RequestId,
    history: &Mutex<History>,
) -> (Operation, Completion) {
    let (o, generation) = current.get();
    if rng.gen_bool(0.6) {
        let op = random_write(rng);
        let completion = tokio::select! {
            written = o.write(request_id.clone(), op.clone()) => match written {
                Ok(ack) => {
                    history.lock().unwrap().acked_by.push((ack.epoch, ack.worker));
                    Completion::Written {
                        index: ack.index,
                        outcome: ack.outcome,
                    }
                }
                // The orchestrator may have sent it before failing: unknown.
                Err(e) => Completion::Unknown {
                    reason: e.to_string(),
                },
            },
            _ = current.killed(generation) => Completion::Unknown {
                reason: "orchestrator killed with the write in flight".into(),
            },
        };
        (Operation::Write { request_id, op }, completion)
    } else {
        let op = random_read(rng);
        o.count_read();
        let completion = tokio::select! {
            read = o.read(op.clone(), Freshness::STRONG) => match read {
                Ok(answer) => Completion::Read {
                    applied_index: answer.applied_index,
                },
                Err(e) => Completion::Failed {
                    reason: e.to_string(),
                },
            },
            _ = current.killed(generation) => Completion::Failed {
                reason: "orchestrator killed with the read in flight".into(),
            },
        };
        (Operation::Read { op }, completion)
    }
}

/// Runs `CLIENTS` clients of `ops` sequential operations each, against whichever orchestrator
/// is current when each operation starts.
fn start_clients(
    seed: u64,
    phase: &'static str,
    ops: usize,
    pause: std::ops::Range<u64>,
    current: &Current,
    history: &Arc<Mutex<History>>,
    origin: tokio::time::Instant,
) -> tokio::task::JoinSet<()> {
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let history = Arc::clone(history);
        let current = current.clone();
        let pause = pause.clone();
        clients.spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(seed * 1000 + c as u64 + phase.len() as u64 * 100);
            for n in 0..ops {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(pause.clone()))).await;
                let invoked_ms = ms(origin);
                let request_id = RequestId(format!("s{seed}-{phase}-c{c}-{n}"));
                let (operation, completion) =
                    operate(&current, &mut rng, request_id, &history).await;
                history.lock().unwrap().events.push(Event {
                    client: c,
                    operation,
                    invoked_ms,
                    completed_ms: ms(origin),
                    completion,
                });
            }
        });
    }
    clients
}

/// The kinds of fault, drawn at random; the last two only with snapshots.
#[derive(Clone, Copy, Debug)]
enum FaultKind {
    CrashMaster,
    CrashSlave,
    WorkerDies,
    WorkerFreezesThenDies,
    PauseWorker,
    SlowReplica,
    Congestion,
    KillOrchestrator,
    DropMessages,
    DuplicateMessages,
    DelayAndReorder,
    LogOutage,
    CoordinatorOutage,
    ExpireSession,
    LateAppend,
    CorruptSnapshot,
    KillInstallingReplacement,
}

const FAULTS: [FaultKind; 17] = [
    FaultKind::CrashMaster,
    FaultKind::CrashSlave,
    FaultKind::WorkerDies,
    FaultKind::WorkerFreezesThenDies,
    FaultKind::PauseWorker,
    FaultKind::SlowReplica,
    FaultKind::Congestion,
    FaultKind::KillOrchestrator,
    FaultKind::DropMessages,
    FaultKind::DuplicateMessages,
    FaultKind::DelayAndReorder,
    FaultKind::LogOutage,
    FaultKind::CoordinatorOutage,
    FaultKind::ExpireSession,
    FaultKind::LateAppend,
    FaultKind::CorruptSnapshot,
    FaultKind::KillInstallingReplacement,
];

/// A random live worker: the master about half the time.
async fn pick_worker(cluster: &EmbeddedCluster, rng: &mut SmallRng) -> Option<WorkerHandle> {
    let workers = cluster.runtime.list().await.unwrap_or_default();
    if workers.is_empty() {
        return None;
    }
    if rng.gen_bool(0.5) {
        if let Ok(Some(master)) = cluster.orchestrator().master().await {
            if let Some(m) = workers.iter().find(|w| w.id == master.id) {
                return Some(m.clone());
            }
        }
    }
    Some(workers[rng.gen_range(0..workers.len())].clone())
}

/// Undoes a fault `during` from now, while the next faults come (it does not wait its turn).
fn undo_after(during: Duration, undo: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(during).await;
        undo();
    });
}

/// A congested switch between the master, a slave and the rest: the master's messages (its
/// write acknowledgements) reach the broker late while the slaves apply its entries at once, so
/// reads are answered above the acknowledged index; and the slave reads the log slowly, so a
/// later read it serves must not go back below such an answer. Lasts while the next faults come.
async fn congestion(cluster: &EmbeddedCluster, gates: &Gates, rng: &mut SmallRng) -> String {
    let Ok(Some(master)) = cluster.orchestrator().master().await else {
        return "no master to slow".into();
    };
    let workers = cluster.runtime.list().await.unwrap_or_default();
    let slaves: Vec<&WorkerHandle> = workers.iter().filter(|w| w.id != master.id).collect();
    if slaves.is_empty() {
        return "no slave to slow".into();
    }
    let slave = slaves[rng.gen_range(0..slaves.len())];
    let (Some(master_gate), Some(slave_gate)) = (gates.get(&master.id), gates.get(&slave.id))
    else {
        return format!("no gate for {} or {}", master.id, slave.id);
    };
    let delay = Duration::from_millis(rng.gen_range(50..400));
    let lag = Duration::from_millis(rng.gen_range(40..150));
    let during = Duration::from_millis(rng.gen_range(1000..5000));
    master_gate.set_send_delay(delay);
    slave_gate.set_lag(lag);
    undo_after(during, move || {
        master_gate.set_send_delay(Duration::ZERO);
        slave_gate.set_lag(Duration::ZERO);
    });
    format!(
        "master {}'s messages reach the broker {} ms late, slave {} reads the log at {} ms an entry, for {} ms",
        master.pid,
        delay.as_millis(),
        slave.pid,
        lag.as_millis(),
        during.as_millis()
    )
}

/// Pauses `worker` for `pause`; if `expire_after` is shorter, its session expires then (late:
/// ZooKeeper notices a silent holder only after the session timeout).
async fn pause_worker(
    cluster: &EmbeddedCluster,
    gates: &Gates,
    worker: &WorkerHandle,
    pause: Duration,
    expire_after: Option<Duration>,
) -> String {
    let Some(gate) = gates.get(&worker.id) else {
        return format!("no gate for {}", worker.id);
    };
    gate.set_paused(true);
    let mut expired = String::new();
    match expire_after.filter(|after| *after < pause) {
        Some(after) => {
            tokio::time::sleep(after).await;
            let n = expire_sessions_of(cluster, gates, worker);
            expired = format!(
                ", its {n} session(s) expired after {} ms",
                after.as_millis()
            );
            tokio::time::sleep(pause - after).await;
        }
        None => tokio::time::sleep(pause).await,
    }
    gate.set_paused(false);
    format!(
        "paused {} for {} ms{expired}",
        worker.pid,
        pause.as_millis()
    )
}

/// Expires the live sessions `worker` opened; returns how many.
fn expire_sessions_of(cluster: &EmbeddedCluster, gates: &Gates, worker: &WorkerHandle) -> usize {
    gates.get(&worker.id).map_or(0, |gate| {
        gate.sessions()
            .into_iter()
            .filter(|s| cluster.coordinator.expire(*s))
            .count()
    })
}

async fn simulate(seed: u64) -> Result<String, String> {
    let log = MemLog::new();
    let archive = Archive::follow(Arc::new(log.clone())).await;
    let snapshot_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let snapshots = snapshots(seed, snapshot_dir.path());
    let gates = Gates::default();
    let mut cluster = EmbeddedCluster::start(
        Arc::new(log.clone()),
        config(seed, snapshots.clone(), &gates),
    )
    .await
    .map_err(|e| format!("start: {e}"))?;
    if !wait_for_master(&cluster, Duration::from_secs(10)).await {
        return Err("no master elected at start".into());
    }
    let history = Arc::new(Mutex::new(History::default()));
    let current = Current::new(cluster.orchestrator());
    let (published, watching) = Published::watch(Arc::clone(&current.orchestrator));
    let origin = tokio::time::Instant::now();
    let mut clients = start_clients(
        seed,
        "faults",
        OPS_PER_CLIENT,
        10..300,
        &current,
        &history,
        origin,
    );

    // Faults, on a seeded schedule.
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let kinds = if snapshots.is_some() {
        &FAULTS[..]
    } else {
        &FAULTS[..FAULTS.len() - 2]
    };
    let start = tokio::time::Instant::now();
    while start.elapsed() < FAULT_PHASE {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let o = Arc::clone(cluster.orchestrator());
        let what = match kind {
            FaultKind::CrashMaster => format!(
                "crash master: {:?}",
                o.crash_master().await.map_err(|e| e.to_string())
            ),
            FaultKind::CrashSlave => format!(
                "crash slave: {:?}",
                o.crash_slave().await.map_err(|e| e.to_string())
            ),
            FaultKind::WorkerDies => match pick_worker(&cluster, &mut rng).await {
                // Nobody deletes its nodes for it; its session closes with it.
                Some(w) => {
                    let _ = cluster.runtime.kill(&w.id).await;
                    format!("worker {} died", w.pid)
                }
                None => "no worker to kill".into(),
            },
            FaultKind::WorkerFreezesThenDies => match pick_worker(&cluster, &mut rng).await {
                // A process killed -9: silent at once, its session expires only later.
                Some(w) => {
                    if let Some(gate) = gates.get(&w.id) {
                        gate.set_paused(true);
                    }
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2500))).await;
                    let n = expire_sessions_of(&cluster, &gates, &w);
                    let _ = cluster.runtime.kill(&w.id).await;
                    format!(
                        "worker {} froze, its {n} session(s) expired late, then died",
                        w.pid
                    )
                }
                None => "no worker to freeze".into(),
            },
            FaultKind::PauseWorker => match pick_worker(&cluster, &mut rng).await {
                Some(w) => {
                    let pause = Duration::from_millis(rng.gen_range(200..4000));
                    let expire = rng
                        .gen_bool(0.5)
                        .then(|| Duration::from_millis(rng.gen_range(1000..3000)));
                    pause_worker(&cluster, &gates, &w, pause, expire).await
                }
                None => "no worker to pause".into(),
            },
            FaultKind::SlowReplica => match pick_worker(&cluster, &mut rng).await {
                // Falls behind the log while it serves: reads must wait for what was acknowledged.
                // The lag lasts while the next faults come (a slow disk does not wait its turn).
                Some(w) => match gates.get(&w.id) {
                    Some(gate) => {
                        let lag = Duration::from_millis(rng.gen_range(20..150));
                        let during = Duration::from_millis(rng.gen_range(1000..6000));
                        gate.set_lag(lag);
                        undo_after(during, move || gate.set_lag(Duration::ZERO));
                        format!(
                            "worker {} reads the log at {} ms an entry for {} ms",
                            w.pid,
                            lag.as_millis(),
                            during.as_millis()
                        )
                    }
                    None => format!("no gate for {}", w.id),
                },
                None => "no worker to slow".into(),
            },
            FaultKind::Congestion => congestion(&cluster, &gates, &mut rng).await,
            FaultKind::KillOrchestrator => {
                // Killed with whatever requests are in flight: they fail, outcome unknown.
                cluster
                    .restart_orchestrator()
                    .await
                    .map_err(|e| format!("orchestrator restart: {e}"))?;
                current.replace(cluster.orchestrator());
                "orchestrator killed and restarted".into()
            }
            // Lossy and duplicating links last while the next faults come.
            FaultKind::DropMessages => {
                let during = Duration::from_millis(rng.gen_range(200..2000));
                cluster.broker.set_drop_rate(0.05);
                let broker = cluster.broker.clone();
                undo_after(during, move || broker.set_drop_rate(0.0));
                format!("dropping 5% of messages for {} ms", during.as_millis())
            }
            FaultKind::DuplicateMessages => {
                let during = Duration::from_millis(rng.gen_range(200..2000));
                cluster.broker.set_duplicate_rate(0.2);
                let broker = cluster.broker.clone();
                undo_after(during, move || broker.set_duplicate_rate(0.0));
                format!(
                    "delivering 20% of messages twice for {} ms",
                    during.as_millis()
                )
            }
            FaultKind::DelayAndReorder => {
                let delay = Duration::from_millis(rng.gen_range(5..100));
                let jitter = Duration::from_millis(rng.gen_range(5..100));
                let append = Duration::from_millis(rng.gen_range(0..50));
                cluster.broker.set_delay(delay);
                cluster.broker.set_jitter(jitter);
                log.set_append_delay(append);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
                cluster.broker.set_delay(Duration::ZERO);
                cluster.broker.set_jitter(Duration::ZERO);
                log.set_append_delay(Duration::ZERO);
                format!(
                    "messages delayed {} ms and reordered within {} ms, appends delayed {} ms, for a while",
                    delay.as_millis(),
                    jitter.as_millis(),
                    append.as_millis()
                )
            }
            FaultKind::LogOutage => {
                let down = Duration::from_millis(rng.gen_range(100..2000));
                log.set_unavailable(true);
                tokio::time::sleep(down).await;
                log.set_unavailable(false);
                format!("log unavailable for {} ms", down.as_millis())
            }
            FaultKind::CoordinatorOutage => {
                let down = Duration::from_millis(rng.gen_range(100..2000));
                cluster.coordinator.set_unavailable(true);
                tokio::time::sleep(down).await;
                cluster.coordinator.set_unavailable(false);
                format!("coordinator unavailable for {} ms", down.as_millis())
            }
            FaultKind::ExpireSession => {
                let sessions = cluster.coordinator.sessions();
                if sessions.is_empty() {
                    "no session".into()
                } else {
                    let s = sessions[rng.gen_range(0..sessions.len())];
                    cluster.coordinator.expire(s);
                    format!("expired session {s}")
                }
            }
            FaultKind::LateAppend => {
                late_append_of_a_deposed_master(&cluster, &archive, &mut rng, seed).await
            }
            FaultKind::CorruptSnapshot => corrupt_newest_snapshot(snapshots.as_ref(), &mut rng),
            FaultKind::KillInstallingReplacement => {
                // A slave is replaced, and its replacement dies while it installs a snapshot.
                let crashed = o.crash_slave().await.map_err(|e| e.to_string());
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..200))).await;
                let workers = cluster.runtime.list().await.unwrap_or_default();
                match workers.iter().max_by_key(|w| w.pid) {
                    Some(newest) => {
                        let _ = cluster.runtime.kill(&newest.id).await;
                        format!(
                            "crash slave {crashed:?}, then its replacement {} at start",
                            newest.pid
                        )
                    }
                    None => format!("crash slave {crashed:?}; no replacement yet"),
                }
            }
        };
        history.lock().unwrap().faults.push(what);
    }
    while clients.join_next().await.is_some() {}

    // Quiet: let elections, replacements and the scaling windows settle; then the clients
    // again, which must now get what they ask for (the progress floor).
    tokio::time::sleep(Duration::from_secs(15)).await;
    if !wait_for_master(&cluster, Duration::from_secs(10)).await {
        return Err("no master once quiet".into());
    }
    let quiet_from = ms(origin);
    let mut clients = start_clients(
        seed,
        "quiet",
        QUIET_OPS_PER_CLIENT,
        10..100,
        &current,
        &history,
        origin,
    );
    while clients.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(3)).await;
    watching.abort();
    let history = std::mem::take(&mut *history.lock().unwrap());
    let quiet: Vec<&Event> = history
        .events
        .iter()
        .filter(|e| e.invoked_ms >= quiet_from)
        .collect();
    let quiet_ok = quiet
        .iter()
        .filter(|e| {
            matches!(
                e.completion,
                Completion::Written { .. } | Completion::Read { .. }
            )
        })
        .count();
    if (quiet_ok as f64) < PROGRESS_FLOOR * quiet.len() as f64 {
        let failures: Vec<_> = quiet
            .iter()
            .filter(|e| {
                !matches!(
                    e.completion,
                    Completion::Written { .. } | Completion::Read { .. }
                )
            })
            .take(3)
            .map(|e| format!("{:?}", e.completion))
            .collect();
        return Err(format!(
            "progress floor: {quiet_ok} of {} operations succeeded once the faults were over (floor {PROGRESS_FLOOR}); e.g. {failures:?}",
            quiet.len()
        ));
    }

    let first = cluster.log.first().await.unwrap_or(1);
    let installs = cluster
        .orchestrator()
        .members()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|m| m.record.snapshots.is_some_and(|s| s.installed.is_some()))
        .count();

    // The history, the log and the replicas, by the one history checker: every replica that
    // answers a checksum read once quiet (at the log's end), and every digest published.
    let replicas = quiet_replica_states(&cluster).await?;
    let seen = published.states();
    let mut reference = replay(
        &*cluster.log,
        &archive,
        seen.iter().map(|s| s.applied_index),
    )
    .await;
    let verdict = check_all(&history.events, &mut reference, &replicas, &seen)
        .map_err(|e| format!("checker: {e}"))?;
    if !verdict.passed() {
        return Err(format!("checker: {verdict:?}"));
    }
    if verdict.replicas_checked == 0 || seen.is_empty() {
        return Err(format!("no replica checked: {verdict:?}"));
    }
    // One acknowledging master per epoch.
    let mut per_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (epoch, worker) in &history.acked_by {
        per_epoch.entry(*epoch).or_default().insert(worker.clone());
    }
    if let Some((epoch, workers)) = per_epoch.iter().find(|(_, w)| w.len() > 1) {
        return Err(format!("epoch {epoch} acknowledged by {workers:?}"));
    }
    let o = Arc::clone(cluster.orchestrator());
    let workers = cluster.runtime.list().await.unwrap_or_default().len() as u64;
    let want_workers = 1 + o.target_slaves();
    if workers != want_workers {
        return Err(format!(
            "{workers} workers once quiet; the policy says {want_workers} (1 master + {} slaves)",
            o.target_slaves()
        ));
    }
    cluster.shutdown();
    GROUP_RECORDS.fetch_add(
        reference.group_records,
        std::sync::atomic::Ordering::Relaxed,
    );
    GROUP_WRITES.fetch_add(reference.group_writes, std::sync::atomic::Ordering::Relaxed);
    Ok(format!(
        "ops {} (ok {}, failed {}, unknown {}; once quiet {quiet_ok} of {} ok), log {} entries (first kept {first}, {} of several writes), installed from a snapshot {installs}, epochs {}, deposed writes fenced {}, replicas checked {} ({} alive once quiet, {} digests published), faults {:?}",
        history.events.len(),
        verdict.ops_ok,
        verdict.ops_failed,
        verdict.ops_unknown,
        quiet.len(),
        reference.end,
        reference.group_records,
        reference.epochs,
        verdict.fenced_entries,
        verdict.replicas_checked,
        replicas.len(),
        seen.len(),
        history.faults
    ))
}

fn ms(origin: tokio::time::Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

/// Reads the checksum a dozen times once quiet (the orchestrator spreads reads over the
/// replicas) and keeps each replica's last answer.
async fn quiet_replica_states(cluster: &EmbeddedCluster) -> Result<Vec<ReplicaState>, String> {
    let o = Arc::clone(cluster.orchestrator());
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        let answer = o
            .read(ReadOp::Checksum, Freshness::STRONG)
            .await
            .map_err(|e| format!("checksum read once quiet: {e}"))?;
        let ReadOutcome::Checksum {
            checksum,
            applied_index,
        } = answer.outcome
        else {
            return Err("checksum read answered something else".into());
        };
        seen.insert(answer.worker.clone(), (applied_index, checksum));
    }
    Ok(seen
        .into_iter()
        .map(|(worker, (applied_index, checksum))| ReplicaState {
            worker,
            applied_index,
            checksum,
        })
        .collect())
}

/// A deposed master's append that lands late: a write entry of an older epoch after the newest
/// marker, either a new request or a copy of an entry an older master wrote. Fencing must
/// leave every one of them without effect.
async fn late_append_of_a_deposed_master(
    cluster: &EmbeddedCluster,
    archive: &Archive,
    rng: &mut SmallRng,
    seed: u64,
) -> String {
    let end = cluster.log.end().await.unwrap_or(0);
    let mut newest = 0;
    let mut older_writes = Vec::new();
    for record in archive.up_to(end).await {
        let Ok(entry) = decode_versioned::<LogEntry>(&record.data) else {
            continue;
        };
        match entry.body {
            EntryBody::EpochMarker { .. } => newest = newest.max(entry.epoch),
            EntryBody::Write { .. } | EntryBody::Writes { .. } => {
                older_writes.push((entry.epoch, record.data))
            }
        }
    }
    if newest < 2 {
        return "no deposed master yet".into();
    }
    older_writes.retain(|(epoch, _)| *epoch < newest);
    let data = if !older_writes.is_empty() && rng.gen_bool(0.5) {
        older_writes
            .swap_remove(rng.gen_range(0..older_writes.len()))
            .1
    } else {
        let entry = LogEntry {
            v: VERSION,
            epoch: rng.gen_range(1..newest),
            body: EntryBody::Write {
                request_id: RequestId(format!("s{seed}-zombie-{}", rng.gen::<u32>())),
                op: random_write(rng),
            },
        };
        Bytes::from(encode(&entry).to_vec())
    };
    match cluster.log.append(data).await {
        Ok(()) => format!("late append of a deposed master's write after epoch {newest}"),
        Err(e) => format!("late append failed: {e}"),
    }
}

thread_local! {
    /// The snapshot data files this seed corrupted (each seed runs on its own thread's runtime).
    static CORRUPTED: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Flips bytes in the newest snapshot's data: whoever installs it next must find out, and
/// fall back to an older one (or the log).
fn corrupt_newest_snapshot(snapshots: Option<&SnapshotDir>, rng: &mut SmallRng) -> String {
    let Some(dir) = snapshots else {
        return "no snapshots".into();
    };
    let newest = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "data")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("snapshot-"))
        })
        .max();
    let Some(path) = newest else {
        return "no snapshot to corrupt".into();
    };
    // One bad snapshot at a time (a disk's single fault): with every kept one corrupt and
    // the log truncated behind them, only a live replica could bring a new worker up.
    let unverified = dir.list().map_or(0, |kept| kept.len());
    if unverified < 2 || CORRUPTED.with(|c| c.borrow().iter().any(|p| p.exists())) {
        return "snapshot left whole (one corrupt at a time, never the only one)".into();
    }
    CORRUPTED.with(|c| c.borrow_mut().push(path.clone()));
    let Ok(mut bytes) = std::fs::read(&path) else {
        return "snapshot vanished".into();
    };
    if bytes.is_empty() {
        return "empty snapshot".into();
    }
    let at = rng.gen_range(0..bytes.len());
    bytes[at] ^= 0x5a;
    let _ = std::fs::write(&path, bytes);
    format!("corrupted {} at byte {at}", path.display())
}

/// Records of several writes (the master's group commit) over every seed, and their writes.
static GROUP_RECORDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static GROUP_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run_seed(seed: u64) -> Result<String, String> {
    CORRUPTED.with(|c| c.borrow_mut().clear());
    // `SIM_LOG=info` (an env filter) prints the cluster's log lines, for one seed.
    if let Ok(filter) = std::env::var("SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        match tokio::time::timeout(Duration::from_secs(600), simulate(seed)).await {
            Ok(result) => result,
            Err(_) => Err("simulation did not finish within 600 virtual seconds".into()),
        }
    })
}

#[test]
fn simulated_cluster_keeps_every_guarantee_under_faults() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (0..n).collect()
        }
    };
    let started = std::time::Instant::now();
    // Seeds are independent (each its own runtime on its own thread): one thread per core,
    // `SIM_THREADS` to choose.
    let threads = std::env::var("SIM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { return };
                match run_seed(seed) {
                    Ok(summary) => {
                        if seeds.len() == 1 {
                            println!("seed {seed}: {summary}");
                        }
                    }
                    Err(e) => {
                        println!(
                            "seed {seed} FAILED: {e}\n  replay: SIM_SEED={seed} cargo test -p rideshare-dbaas --test simulation -- --nocapture"
                        );
                        failures.lock().unwrap().push(seed);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_unstable();
    let group_records = GROUP_RECORDS.load(std::sync::atomic::Ordering::Relaxed);
    let group_writes = GROUP_WRITES.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "simulation: {} seeds in {:.1}s, {} failed; {group_records} log records of several writes ({group_writes} writes)",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // The guarantees must hold with group commit at work, not only beside it.
    assert!(
        seeds.len() < 20 || group_records > 0,
        "no log record of several writes in {} seeds: group commit was never exercised",
        seeds.len()
    );
}
