//! The worker: one program that is a slave or the master, with its own copy of the database.
//!
//! Every worker follows the log (the tailer) and applies it in order to its store. A slave serves
//! reads from the read queue, waiting (bounded) until it has applied the index a read asks for.
//! When the master's node disappears, the worker the election picks takes the `/rideshare/master`
//! node, draws a new epoch from the coordinator, appends its epoch marker and, once its tailer
//! has applied the marker (so it holds everything before it), consumes the write queue: it
//! appends each write stamped with its epoch and answers only after its tailer applied it.
//!
//! Fencing: entries of an older epoch after a newer marker are skipped by every replica, and a
//! master that sees a newer marker (or loses its session) stops and never acknowledges again.
//! A worker must not serve reads before it has caught up with the log as it was at its start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rideshare_core::machine::{StateMachine, Store};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOutcome};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::broker::{Broker, Delivery, Message};
use crate::coord::{Coordinator, CreateMode, Session};
use crate::error::{Error, Result};
use crate::log::{Log, Record};
use crate::policy::{elect, Member};
use crate::protocol::{
    decode, decode_versioned, encode, CatchUp, EntryBody, LogEntry, MasterRecord, MemberRecord,
    Progress, ReadRequest, Refusal, Reply, Role, StateDigest, WriteRequest, EPOCHS, MASTER,
    READ_QUEUE, VERSION, WORKERS, WRITE_QUEUE,
};
use crate::replica::{Effect, ReplicaCore, Skip, Step};

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
    /// Log entries applied in one commit group at most: those already waiting when one arrives
    /// (catch-up, bursts of writes), so a replica that fell behind pays one transaction per
    /// group, not per entry, and holds its store for a bounded time. 1 turns grouping off.
    pub apply_group: usize,
    /// Turned on once the worker has caught up with the log and serves (its `/ready`).
    pub ready: Arc<AtomicBool>,
    /// Where this worker serves `/health`, `/ready` and `/metrics`, published in its member
    /// record; `None` when it serves none.
    pub http: Option<String>,
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
            apply_group: 256,
            ready: Arc::default(),
            http: None,
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

type Waiter = oneshot::Sender<std::result::Result<(u64, WriteOutcome), Refusal>>;

/// State shared by a worker's tasks.
struct Shared {
    config: WorkerConfig,
    machine: Mutex<StateMachine<Box<dyn Store>>>,
    /// The last applied log index.
    applied: watch::Sender<u64>,
    /// The newest epoch marker seen in the log.
    epoch: AtomicU64,
    /// This worker's epoch while it is master; 0 otherwise.
    my_epoch: AtomicU64,
    /// Writes this master appended and waits to see applied, by request id.
    pending: Mutex<HashMap<RequestId, Vec<Waiter>>>,
    /// Set when a newer epoch marker shows this worker is no longer master.
    deposed: watch::Sender<bool>,
    /// This worker's member record as last written to its node; every change goes through
    /// this lock, so concurrent updates (role, state) do not undo each other.
    member: tokio::sync::Mutex<MemberRecord>,
}

impl Shared {
    fn resolve(&self, id: &RequestId, result: std::result::Result<(u64, WriteOutcome), Refusal>) {
        let waiters = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(result.clone());
        }
    }

    fn fail_all_pending(&self) {
        let all: Vec<Waiter> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, w)| w)
            .collect();
        for waiter in all {
            let _ = waiter.send(Err(Refusal::NotMaster));
        }
    }

    /// Applies log records in order, in one commit group: the replica's only way to change its
    /// state. Nobody hears of an entry (waiters, the applied index, a deposition) before the
    /// group is durable.
    fn apply_records(&self, records: Vec<Record>) -> Result<()> {
        let Some(last) = records.last().map(|r| r.index) else {
            return Ok(());
        };
        let mut effects = Vec::new();
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grouped(|machine| {
                for record in records {
                    self.apply_record(machine, record, &mut effects)?;
                }
                Ok::<_, Error>(())
            })?;
        for effect in effects {
            match effect {
                Effect::Answer(request_id, result) => self.resolve(&request_id, result),
                Effect::Deposed { .. } => {
                    self.deposed.send_replace(true);
                    self.fail_all_pending();
                }
            }
        }
        self.applied.send_replace(last);
        // Labelled by worker: in `rideshare up` every worker shares the process's registry.
        let worker = self.config.id.clone();
        metrics::gauge!("rideshare_worker_applied_index", "worker" => worker.clone())
            .set(last as f64);
        metrics::gauge!("rideshare_worker_log_epoch", "worker" => worker)
            .set(self.epoch.load(Ordering::SeqCst) as f64);
        Ok(())
    }

    /// One record, by the replica core's rule (`replica.rs`); the effects wait for the group.
    fn apply_record(
        &self,
        machine: &mut StateMachine<Box<dyn Store>>,
        record: Record,
        effects: &mut Vec<Effect>,
    ) -> Result<()> {
        // Read per record: a promotion between two records of a group counts from the next.
        let mut core = ReplicaCore::at(
            self.epoch.load(Ordering::SeqCst),
            self.my_epoch.load(Ordering::SeqCst),
        );
        let (step, marker_effect) = core.step(&record);
        // Later entries of this group are judged by a newer marker already.
        self.epoch.fetch_max(core.epoch(), Ordering::SeqCst);
        let applied = match &step {
            Step::Apply {
                index,
                request_id,
                op,
                ..
            } => Some(machine.apply(*index, request_id, op)?),
            Step::Skip { index, why } => {
                if let Skip::Undecodable(error) = why {
                    tracing::warn!(index, %error, "skipping undecodable log entry");
                }
                machine.skip(*index)?;
                None
            }
        };
        if let Some(Effect::Deposed {
            my_epoch,
            new_epoch,
        }) = &marker_effect
        {
            tracing::warn!(my_epoch, new_epoch, "deposed by a newer master");
        }
        effects.extend(marker_effect);
        effects.extend(step.answer(applied.as_ref()));
        Ok(())
    }

    /// Changes this worker's member record and writes it to its node.
    async fn update_member(
        &self,
        session: &dyn Session,
        path: &str,
        change: impl FnOnce(&mut MemberRecord),
    ) -> Result<()> {
        let mut member = self.member.lock().await;
        change(&mut member);
        session.set(path, encode(&*member), None).await
    }

    /// The applied index and the checksum of the data there, read together.
    fn digest(&self) -> Result<StateDigest> {
        let outcome = self
            .machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(&ReadOp::Checksum)?;
        match outcome {
            ReadOutcome::Checksum {
                checksum,
                applied_index,
            } => Ok(StateDigest {
                applied_index,
                checksum,
            }),
            other => Err(Error::Protocol(format!(
                "a checksum read answered {other:?}"
            ))),
        }
    }

    async fn wait_applied(&self, index: u64, bound: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(bound, rx.wait_for(|applied| *applied >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
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
    let mut machine = StateMachine::new(store);
    let start_index = machine.applied_index()?;
    let (applied, _) = watch::channel(start_index);
    let (deposed, mut deposed_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config: config.clone(),
        machine: Mutex::new(machine),
        applied,
        epoch: AtomicU64::new(0),
        my_epoch: AtomicU64::new(0),
        pending: Mutex::default(),
        deposed,
        member: tokio::sync::Mutex::new(MemberRecord {
            id: config.id.clone(),
            pid: config.pid,
            role: Role::Slave,
            catch_up: None,
            state: None,
            progress: None,
            http: config.http.clone(),
        }),
    });
    let session: Arc<dyn Session> = Arc::from(deps.coordinator.connect().await?);
    deps.broker.declare(READ_QUEUE).await?;
    deps.broker.declare(WRITE_QUEUE).await?;

    let mut tasks = JoinSet::new();
    tasks.spawn(tail(
        Arc::clone(&shared),
        Arc::clone(&deps.log),
        start_index,
    ));

    let registered = encode(&*shared.member.lock().await);
    let member_path = session
        .create(
            &format!("{WORKERS}/w-"),
            registered,
            CreateMode::EphemeralSequential,
        )
        .await?;
    tracing::info!(id = %config.id, pid = config.pid, path = %member_path, "worker registered");
    tasks.spawn(publish_progress(
        Arc::clone(&shared),
        Arc::clone(&session),
        member_path.clone(),
    ));

    let catch_up_started = std::time::Instant::now();
    let end = deps.log.end().await?;
    let lost = session.lost();
    tokio::select! {
        caught_up = shared.wait_applied(end, config.catch_up_wait) => {
            if !caught_up {
                return Err(Error::Timeout("catch-up", duration_ms(config.catch_up_wait)));
            }
        }
        _ = lost => return Err(Error::SessionExpired),
    }
    let catch_up = CatchUp {
        entries: end.saturating_sub(start_index),
        ms: duration_ms(catch_up_started.elapsed()),
    };
    tracing::info!(
        id = %config.id,
        index = end,
        entries = catch_up.entries,
        ms = catch_up.ms,
        "caught up with the log"
    );
    shared
        .update_member(session.as_ref(), &member_path, |m| {
            m.catch_up = Some(catch_up);
        })
        .await?;
    config.ready.store(true, Ordering::SeqCst);
    metrics::gauge!("rideshare_worker_caught_up", "worker" => config.id.clone()).set(1.0);
    tasks.spawn(publish_state(
        Arc::clone(&shared),
        Arc::clone(&session),
        member_path.clone(),
    ));

    let roles = serve_roles(
        Arc::clone(&shared),
        deps.clone(),
        Arc::clone(&session),
        member_path,
    );
    tokio::select! {
        result = roles => result,
        _ = session.lost() => Err(Error::SessionExpired),
        _ = deposed_rx.wait_for(|d| *d) => Err(Error::NotMaster),
        ended = tasks.join_next() => match ended {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(Error::LogUnavailable("log reader ended".into())),
        },
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Follows the log from after `start_index` and applies every entry, grouping those that are
/// already there (`LogReader::next` is cancel-safe, so asking without waiting loses nothing).
async fn tail(shared: Arc<Shared>, log: Arc<dyn Log>, start_index: u64) -> Result<()> {
    let mut reader = log.read_from(start_index + 1).await?;
    while let Some(first) = reader.next().await {
        let mut group = vec![first?];
        let mut failed = None;
        while group.len() < shared.config.apply_group {
            match reader.next().now_or_never() {
                Some(Some(Ok(record))) => group.push(record),
                Some(Some(Err(e))) => {
                    failed = Some(e);
                    break;
                }
                // Nothing more yet, or the log closed (the next wait says so).
                Some(None) | None => break,
            }
        }
        shared.apply_records(group)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Err(Error::LogUnavailable("log closed".into()))
}

/// How long the log must be quiet before a replica publishes its state digest.
const STATE_QUIET: Duration = Duration::from_secs(1);
/// Publications at most this often: a digest reads the whole store.
const STATE_EVERY: Duration = Duration::from_secs(5);

/// Publishes the replica's state digest in its member node now, then after every change to it
/// once the log has been quiet for `STATE_QUIET`, at most every `STATE_EVERY`. A failed
/// publication is retried at the next one; losing the session ends the worker elsewhere.
async fn publish_state(
    shared: Arc<Shared>,
    session: Arc<dyn Session>,
    member_path: String,
) -> Result<()> {
    let mut applied = shared.applied.subscribe();
    let mut published: Option<u64> = None;
    loop {
        let digest = shared.digest()?;
        if published != Some(digest.applied_index) {
            match shared
                .update_member(session.as_ref(), &member_path, |m| m.state = Some(digest))
                .await
            {
                Ok(()) => published = Some(digest.applied_index),
                Err(e) => tracing::warn!(error = %e, "could not publish the state digest"),
            }
        }
        tokio::time::sleep(STATE_EVERY).await;
        // Something new applied since, then quiet.
        if *applied.borrow_and_update() == digest.applied_index && applied.changed().await.is_err()
        {
            return Ok(());
        }
        while let Ok(changed) = tokio::time::timeout(STATE_QUIET, applied.changed()).await {
            if changed.is_err() {
                return Ok(());
            }
        }
    }
}

/// A replica's progress (applied index, epoch) is written to its member node once the log has
/// been quiet this long, so a pause in writes (a switchover holding them) shows at once...
const PROGRESS_QUIET: Duration = Duration::from_millis(50);
/// ...or after this long at the latest while entries keep coming (catch-up, steady load).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// At least this long between two writes to the node: at most a few per second.
const PROGRESS_GAP: Duration = Duration::from_millis(200);

/// Publishes the replica's applied index and epoch in its member node whenever they moved,
/// from registration on: operators see catch-up progress and lag without asking the replica,
/// and a switchover sees its successor caught up. An idle replica writes nothing. A failed
/// publication is retried; it never ends the worker.
async fn publish_progress(
    shared: Arc<Shared>,
    session: Arc<dyn Session>,
    member_path: String,
) -> Result<()> {
    let mut applied = shared.applied.subscribe();
    let mut published: Option<Progress> = None;
    loop {
        let progress = Progress {
            applied_index: *applied.borrow_and_update(),
            epoch: shared.epoch.load(Ordering::SeqCst),
        };
        if published != Some(progress) {
            match shared
                .update_member(session.as_ref(), &member_path, |m| {
                    m.progress = Some(progress)
                })
                .await
            {
                Ok(()) => published = Some(progress),
                Err(e) => tracing::debug!(error = %e, "could not publish progress"),
            }
            tokio::time::sleep(PROGRESS_GAP).await;
            if published != Some(progress) {
                continue;
            }
        }
        if applied.changed().await.is_err() {
            return Ok(());
        }
        // Let a burst settle: quiet for PROGRESS_QUIET, or PROGRESS_EVERY at the latest.
        let latest = tokio::time::Instant::now() + PROGRESS_EVERY;
        loop {
            let until = (tokio::time::Instant::now() + PROGRESS_QUIET).min(latest);
            match tokio::time::timeout_at(until, applied.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Ok(()),
                Err(_) => break,
            }
        }
    }
}

/// The span a worker serves one request in: carries the HTTP request id, so the worker's lines
/// can be found with the gateway's, the service's and the orchestrator's.
fn request_span(config: &WorkerConfig, trace: Option<&str>) -> tracing::Span {
    tracing::info_span!(
        "db",
        request_id = trace.unwrap_or_default(),
        worker = %config.id,
    )
}

/// Serves as a slave until elected, then as master until something ends it.
async fn serve_roles(
    shared: Arc<Shared>,
    deps: WorkerDeps,
    session: Arc<dyn Session>,
    member_path: String,
) -> Result<()> {
    let mut reads = tokio::spawn(serve_reads(Arc::clone(&shared), Arc::clone(&deps.broker)));
    let _abort_reads = AbortOnDrop(reads.abort_handle());
    let election = async {
        loop {
            let (master, master_changed) = session.get_watch(MASTER).await?;
            if master.is_some() {
                master_changed.await;
                continue;
            }
            let (children, members_changed) = session.children_watch(WORKERS).await?;
            let members = read_members(session.as_ref(), &children).await;
            let me = &shared.config.id;
            if elect(&members, None).map(|m| &m.id) == Some(me)
                && try_promote(&shared, &deps, session.as_ref()).await?
            {
                return Ok::<(), Error>(());
            }
            tokio::select! {
                _ = master_changed => {}
                _ = members_changed => {}
            }
        }
    };
    tokio::select! {
        elected = election => elected?,
        // A slave whose read consumer is gone (broker restarted) is of no use: stop, and be
        // replaced by a fresh worker that subscribes again.
        served = &mut reads => {
            return match served {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::QueueClosed(READ_QUEUE.into())),
            };
        }
    }
    reads.abort();
    shared
        .update_member(session.as_ref(), &member_path, |m| m.role = Role::Master)
        .await?;
    metrics::gauge!("rideshare_worker_is_master", "worker" => shared.config.id.clone()).set(1.0);
    serve_writes(shared, deps, session).await
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The live members from the coordinator; nodes that vanish meanwhile are left out.
pub async fn read_members(session: &dyn Session, children: &[String]) -> Vec<Member> {
    let mut members = Vec::with_capacity(children.len());
    for child in children {
        if let Ok(Some((data, _))) = session.get(&format!("{WORKERS}/{child}")).await {
            if let Ok(record) = decode::<MemberRecord>(&data) {
                members.push(Member {
                    id: record.id,
                    pid: record.pid,
                });
            }
        }
    }
    members
}

/// Takes the master node, draws an epoch, appends the marker and waits until it is applied.
/// `Ok(false)`: another worker took the master node first.
async fn try_promote(shared: &Shared, deps: &WorkerDeps, session: &dyn Session) -> Result<bool> {
    let id = shared.config.id.clone();
    let pid = shared.config.pid;
    let record = MasterRecord {
        id: id.clone(),
        pid,
        epoch: 0,
        ready: false,
    };
    match session
        .create(MASTER, encode(&record), CreateMode::Ephemeral)
        .await
    {
        Ok(_) => {}
        Err(Error::NodeExists(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    let epoch_path = session
        .create(
            &format!("{EPOCHS}/e-"),
            Bytes::new(),
            CreateMode::PersistentSequential,
        )
        .await?;
    let epoch = epoch_path
        .rsplit('-')
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|seq| seq + 1)
        .ok_or_else(|| Error::Protocol(format!("bad epoch node {epoch_path}")))?
        // Above every epoch already in the log, even if the coordinator lost its data.
        .max(shared.epoch.load(Ordering::SeqCst) + 1);
    session
        .set(
            MASTER,
            encode(&MasterRecord {
                id: id.clone(),
                pid,
                epoch,
                ready: false,
            }),
            None,
        )
        .await?;
    shared.my_epoch.store(epoch, Ordering::SeqCst);
    let marker = LogEntry {
        v: VERSION,
        epoch,
        body: EntryBody::EpochMarker { master: id.clone() },
    };
    deps.log.append(encode(&marker)).await?;
    // Applying our own marker means every earlier entry is applied: we hold all acked writes.
    let mut applied = shared.applied.subscribe();
    let seen = tokio::time::timeout(
        shared.config.catch_up_wait,
        applied.wait_for(|_| shared.epoch.load(Ordering::SeqCst) >= epoch),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !seen {
        return Err(Error::Timeout(
            "epoch marker",
            duration_ms(shared.config.catch_up_wait),
        ));
    }
    if shared.epoch.load(Ordering::SeqCst) > epoch {
        return Err(Error::NotMaster);
    }
    // Older epoch nodes only served to draw numbers; the sequence never reuses one.
    if let Ok(children) = session.children(EPOCHS).await {
        let mine = epoch_path.rsplit('/').next().unwrap_or_default().to_owned();
        for child in children.into_iter().filter(|c| *c < mine) {
            let _ = session.delete(&format!("{EPOCHS}/{child}")).await;
        }
    }
    tracing::info!(%id, pid, epoch, "became master");
    Ok(true)
}

async fn reply(broker: &dyn Broker, delivery: &Delivery, reply: &Reply) {
    let Some(reply_to) = delivery.message.reply_to.as_deref() else {
        return;
    };
    let message = Message {
        body: encode(reply),
        correlation_id: delivery.message.correlation_id.clone(),
        reply_to: None,
    };
    if let Err(e) = broker.publish(reply_to, message).await {
        tracing::warn!(error = %e, "could not publish a reply");
    }
}

/// A slave's read server: answers reads once it has applied their `min_index`.
async fn serve_reads(shared: Arc<Shared>, broker: Arc<dyn Broker>) -> Result<()> {
    let mut consumer = broker
        .consume(READ_QUEUE, shared.config.read_prefetch)
        .await?;
    let mut handlers = JoinSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        while handlers.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        let broker = Arc::clone(&broker);
        handlers.spawn(async move {
            let answer = match decode_versioned::<ReadRequest>(&delivery.message.body) {
                Err(e) => Reply::refused(Refusal::BadRequest, e.to_string()),
                Ok(request) => {
                    let span = request_span(&shared.config, request.trace.as_deref());
                    let answer = answer_read(&shared, request).instrument(span.clone()).await;
                    span.in_scope(|| tracing::debug!(reply = reply_kind(&answer), "read answered"));
                    answer
                }
            };
            reply(broker.as_ref(), &delivery, &answer).await;
            let _ = delivery.ack().await;
        });
    }
    Err(Error::QueueClosed(READ_QUEUE.into()))
}

/// What a reply was, for log lines.
fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Written { .. } => "written",
        Reply::Read { .. } => "read",
        Reply::Refused { refusal, .. } => match refusal {
            Refusal::NotMaster => "not_master",
            Refusal::Behind => "behind",
            Refusal::Unavailable => "unavailable",
            Refusal::BadRequest => "bad_request",
        },
    }
}

/// Answers one read once the replica has applied its `min_index` (bounded).
async fn answer_read(shared: &Shared, request: ReadRequest) -> Reply {
    if !shared
        .wait_applied(request.min_index, shared.config.read_wait)
        .await
    {
        Reply::refused(
            Refusal::Behind,
            format!("index {} not applied in time", request.min_index),
        )
    } else {
        let mut machine = shared.machine.lock().unwrap_or_else(|e| e.into_inner());
        let applied_index = machine.applied_index().unwrap_or_default();
        match machine.read(&request.op) {
            Ok(outcome) => Reply::Read {
                v: VERSION,
                applied_index,
                worker: shared.config.id.clone(),
                outcome,
            },
            Err(e) => Reply::refused(Refusal::Unavailable, e.to_string()),
        }
    }
}

/// The master's write server: append, wait until applied, answer, ack.
async fn serve_writes(
    shared: Arc<Shared>,
    deps: WorkerDeps,
    session: Arc<dyn Session>,
) -> Result<()> {
    // Newer epochs consume at higher priority: a frozen older master's subscription gets no
    // new writes while this one has room.
    let priority = i32::try_from(shared.my_epoch.load(Ordering::SeqCst)).unwrap_or(i32::MAX);
    let mut consumer = deps
        .broker
        .consume_prioritized(WRITE_QUEUE, shared.config.write_prefetch, priority)
        .await?;
    let ready = MasterRecord {
        id: shared.config.id.clone(),
        pid: shared.config.pid,
        epoch: shared.my_epoch.load(Ordering::SeqCst),
        ready: true,
    };
    session.set(MASTER, encode(&ready), None).await?;
    let mut handlers = JoinSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        while handlers.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        let deps = deps.clone();
        handlers.spawn(async move {
            let answer = handle_write(&shared, deps.log.as_ref(), &delivery.message.body).await;
            reply(deps.broker.as_ref(), &delivery, &answer).await;
            // Acked after the reply: a crash in between redelivers, and the request id
            // makes the second application a no-op with the first outcome.
            let _ = delivery.ack().await;
        });
    }
    Err(Error::QueueClosed(WRITE_QUEUE.into()))
}

async fn handle_write(shared: &Shared, log: &dyn Log, body: &[u8]) -> Reply {
    let request = match decode_versioned::<WriteRequest>(body) {
        Ok(r) => r,
        Err(e) => return Reply::refused(Refusal::BadRequest, e.to_string()),
    };
    let span = request_span(&shared.config, request.trace.as_deref());
    let answer = append_and_wait(shared, log, request)
        .instrument(span.clone())
        .await;
    span.in_scope(|| tracing::debug!(reply = reply_kind(&answer), "write answered"));
    answer
}

/// Appends one write stamped with this master's epoch and waits (bounded) until it is applied.
async fn append_and_wait(shared: &Shared, log: &dyn Log, request: WriteRequest) -> Reply {
    let epoch = shared.my_epoch.load(Ordering::SeqCst);
    if epoch == 0 || *shared.deposed.borrow() {
        return Reply::refused(Refusal::NotMaster, "not master");
    }
    let (tx, rx) = oneshot::channel();
    shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(request.request_id.clone())
        .or_default()
        .push(tx);
    let entry = LogEntry {
        v: VERSION,
        epoch,
        body: EntryBody::Write {
            request_id: request.request_id.clone(),
            op: request.op,
        },
    };
    if let Err(e) = log.append(encode(&entry)).await {
        shared.resolve(&request.request_id, Err(Refusal::Unavailable));
        return Reply::refused(Refusal::Unavailable, e.to_string());
    }
    match tokio::time::timeout(shared.config.write_wait, rx).await {
        Ok(Ok(Ok((index, outcome)))) => Reply::Written {
            v: VERSION,
            index,
            epoch,
            worker: shared.config.id.clone(),
            outcome,
        },
        Ok(Ok(Err(refusal))) => Reply::refused(refusal, "write not acknowledged"),
        Ok(Err(_)) | Err(_) => Reply::refused(
            Refusal::Unavailable,
            "write appended but not seen applied in time",
        ),
    }
}
