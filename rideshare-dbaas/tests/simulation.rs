//! The seeded simulation: the whole DBaaS on the in-memory engines under a paused tokio clock,
//! random client operations, and random faults (master and slave crashes, workers dying on
//! their own, orchestrator crashes, dropped messages, expired sessions, and late appends of a
//! deposed master: write entries of an older epoch landing after a newer marker, new ones and
//! copies of old ones). After every run the history is checked by the one history checker,
//! `rideshare_dbaas::checker` (lost, doubled, stale reads, a deposed master's write applied,
//! replicas against the replay), and the simulation adds what only it can see: at most one
//! worker acknowledges writes per epoch, and once quiet the cluster has one master and the
//! number of slaves the scaling policy says.
//!
//! Three seeds in four also take snapshots every few entries (a shared directory per seed),
//! install them in every new worker and truncate the log behind them, with two more faults: a
//! corrupted snapshot, and a new worker killed while it installs one. The log's whole history
//! is kept by an archive that follows it from the first entry, for the checker.
//!
//! `SIM_SEEDS=N` runs seeds 0..N (default 200); `SIM_SEED=S` replays one seed (`SIM_LOG=info`
//! prints its log lines).

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
use rideshare_dbaas::checker::{check, Completion, Event, Operation, Replay, ReplicaState};
use rideshare_dbaas::cluster::{EmbeddedCluster, EmbeddedConfig, WorkerStores};
use rideshare_dbaas::log::mem::MemLog;
use rideshare_dbaas::log::{Log, Record};
use rideshare_dbaas::orchestrator::OrchestratorConfig;
use rideshare_dbaas::policy::ScalePolicy;
use rideshare_dbaas::protocol::{decode_versioned, encode, EntryBody, LogEntry, VERSION};
use rideshare_dbaas::runtime::Runtime;
use rideshare_dbaas::snapshot::{SnapshotDir, StoreKind};
use rideshare_dbaas::worker::{SnapshotSettings, WorkerConfig};

const CLIENTS: usize = 8;
const OPS_PER_CLIENT: usize = 40;
const FAULT_PHASE: Duration = Duration::from_secs(20);

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

fn config(seed: u64, snapshots: Option<SnapshotDir>) -> EmbeddedConfig {
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
            // Batches of every size up to 8, some collected for a while: writes and reads of
            // one message face the same faults as lone ones.
            batching: Batching {
                max: 1 + (seed % 8) as usize,
                wait: Duration::from_micros(seed % 3 * 700),
            },
            snapshots,
        },
        worker,
        first_pid: 100,
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
            while let Some(Ok(record)) = reader.next().await {
                records.lock().unwrap().push(record);
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

/// Replays the log through the replica core, as the history checker does: the reference.
async fn replay(log: &dyn Log, archive: &Archive) -> Replay<MemStore> {
    let end = log.end().await.unwrap();
    let mut replay = Replay::new(MemStore::new());
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

async fn simulate(seed: u64) -> Result<String, String> {
    let log = MemLog::new();
    let archive = Archive::follow(Arc::new(log.clone())).await;
    let snapshot_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let snapshots = snapshots(seed, snapshot_dir.path());
    let mut cluster =
        EmbeddedCluster::start(Arc::new(log.clone()), config(seed, snapshots.clone()))
            .await
            .map_err(|e| format!("start: {e}"))?;
    if !wait_for_master(&cluster, Duration::from_secs(10)).await {
        return Err("no master elected at start".into());
    }
    let history = Arc::new(Mutex::new(History::default()));
    let cluster_slot = Arc::new(tokio::sync::RwLock::new(()));
    let orchestrator = Arc::new(Mutex::new(Arc::clone(cluster.orchestrator())));
    let origin = tokio::time::Instant::now();

    // Clients: sequential operations each, against whichever orchestrator is current.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let history = Arc::clone(&history);
        let orchestrator = Arc::clone(&orchestrator);
        let gate = Arc::clone(&cluster_slot);
        clients.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed * 1000 + c as u64);
            for n in 0..OPS_PER_CLIENT {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..300))).await;
                let _held = gate.read().await;
                let o = Arc::clone(&orchestrator.lock().unwrap());
                let invoked_ms = ms(origin);
                let (operation, completion) = if rng.gen_bool(0.6) {
                    let request_id = RequestId(format!("s{seed}-c{c}-{n}"));
                    let op = random_write(&mut rng);
                    let completion = match o.write(request_id.clone(), op.clone()).await {
                        Ok(ack) => {
                            let by = (ack.epoch, ack.worker);
                            history.lock().unwrap().acked_by.push(by);
                            Completion::Written {
                                index: ack.index,
                                outcome: ack.outcome,
                            }
                        }
                        // The orchestrator may have sent it before failing: unknown.
                        Err(e) => Completion::Unknown {
                            reason: e.to_string(),
                        },
                    };
                    (Operation::Write { request_id, op }, completion)
                } else {
                    let op = random_read(&mut rng);
                    o.count_read();
                    let completion = match o.read(op.clone(), false).await {
                        Ok(answer) => Completion::Read {
                            applied_index: answer.applied_index,
                        },
                        Err(e) => Completion::Failed {
                            reason: e.to_string(),
                        },
                    };
                    (Operation::Read { op }, completion)
                };
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

    // Faults, on a seeded schedule.
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let start = tokio::time::Instant::now();
    while start.elapsed() < FAULT_PHASE {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let fault = rng.gen_range(0..if snapshots.is_some() { 9 } else { 7 });
        let o = Arc::clone(cluster.orchestrator());
        let what = match fault {
            0 => format!(
                "crash master: {:?}",
                o.crash_master().await.map_err(|e| e.to_string())
            ),
            1 => format!(
                "crash slave: {:?}",
                o.crash_slave().await.map_err(|e| e.to_string())
            ),
            2 => {
                // A worker dies on its own: nobody deletes its nodes for it.
                let workers = cluster.runtime.list().await.unwrap_or_default();
                if workers.is_empty() {
                    "no worker to kill".into()
                } else {
                    let w = &workers[rng.gen_range(0..workers.len())];
                    let _ = cluster.runtime.kill(&w.id).await;
                    format!("worker {} died", w.pid)
                }
            }
            3 => {
                let _exclusive = cluster_slot.write().await;
                cluster
                    .restart_orchestrator()
                    .await
                    .map_err(|e| format!("orchestrator restart: {e}"))?;
                *orchestrator.lock().unwrap() = Arc::clone(cluster.orchestrator());
                "orchestrator restarted".into()
            }
            4 => {
                cluster.broker.set_drop_rate(0.05);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
                cluster.broker.set_drop_rate(0.0);
                "dropped 5% of messages for a while".into()
            }
            5 => {
                let sessions = cluster.coordinator.sessions();
                if sessions.is_empty() {
                    "no session".into()
                } else {
                    let s = sessions[rng.gen_range(0..sessions.len())];
                    cluster.coordinator.expire(s);
                    format!("expired session {s}")
                }
            }
            6 => late_append_of_a_deposed_master(&cluster, &archive, &mut rng, seed).await,
            7 => corrupt_newest_snapshot(snapshots.as_ref(), &mut rng),
            _ => {
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

    // Quiet: let elections, replacements and the scaling windows settle.
    tokio::time::sleep(Duration::from_secs(15)).await;
    if !wait_for_master(&cluster, Duration::from_secs(10)).await {
        return Err("no master once quiet".into());
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let mut reference = replay(&*cluster.log, &archive).await;
    let first = cluster.log.first().await.unwrap_or(1);
    let installs = cluster
        .orchestrator()
        .members()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|m| m.record.snapshots.is_some_and(|s| s.installed.is_some()))
        .count();

    // The history, the log and the replicas, by the one history checker. Every replica that
    // answers a checksum read once quiet is compared, and must have caught up with the log.
    let replicas = quiet_replica_states(&cluster).await?;
    let verdict =
        check(&history.events, &mut reference, &replicas).map_err(|e| format!("checker: {e}"))?;
    if !verdict.passed() {
        return Err(format!("checker: {verdict:?}"));
    }
    if verdict.ops_ok == 0 {
        return Err(format!("no operation succeeded: {verdict:?}"));
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
    Ok(format!(
        "ops {} (ok {}, failed {}, unknown {}), log {} entries (first kept {first}), installed from a snapshot {installs}, epochs {}, deposed writes fenced {}, replicas checked {}, faults {:?}",
        history.events.len(),
        verdict.ops_ok,
        verdict.ops_failed,
        verdict.ops_unknown,
        reference.end,
        reference.epochs,
        verdict.fenced_entries,
        replicas.len(),
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
            .read(ReadOp::Checksum, false)
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
            EntryBody::Write { .. } => older_writes.push((entry.epoch, record.data)),
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
    let mut failures = Vec::new();
    for &seed in &seeds {
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
                failures.push(seed);
            }
        }
    }
    println!(
        "simulation: {} seeds in {:.1}s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
