//! Pausing one task worker, as SIGSTOP pauses a process (or slowing its reading of the log, or
//! its messages to the broker): every call it makes to the broker, the log and the coordinator
//! waits while its gate is closed, and goes on when it opens. Its coordinator session stays
//! live (a paused process sends no heartbeats, but ZooKeeper only notices after the session
//! timeout): the simulation expires it late, or not at all, on its own schedule. An append it
//! was about to make lands when it resumes, after whatever the cluster did meanwhile (a deposed
//! master's late append).
//!
//! Written here rather than in the engines: the pause belongs to the simulation's fault model,
//! and the wrappers only forward.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rideshare_dbaas::broker::{Broker, Consumer, Delivery, Message};
use rideshare_dbaas::coord::{Coordinator, CreateMode, Session, Watch};
use rideshare_dbaas::error::Result;
use rideshare_dbaas::log::{Appended, Log, LogReader, Record};
use rideshare_dbaas::runtime::WorkerHandle;
use rideshare_dbaas::worker::WorkerDeps;
use tokio::sync::watch;

/// One worker's gate: open, or closed (the worker is paused); and the coordinator sessions the
/// worker opened, which the simulation expires when it decides the timeout has passed.
#[derive(Clone)]
pub struct Gate {
    paused: watch::Sender<bool>,
    sessions: Arc<Mutex<Vec<u64>>>,
    /// Each log entry reaches the worker this much later than the one before: a slow replica.
    lag: Arc<Mutex<Duration>>,
    /// Each message the worker publishes reaches the broker this much later: a slow link.
    send_delay: Arc<Mutex<Duration>>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            paused: watch::channel(false).0,
            sessions: Arc::default(),
            lag: Arc::default(),
            send_delay: Arc::default(),
        }
    }

    /// Makes the worker read the log `lag` per entry (zero: at full speed again).
    pub fn set_lag(&self, lag: Duration) {
        *self.lag.lock().unwrap() = lag;
    }

    /// Makes every message the worker publishes (its replies) reach the broker `delay` late
    /// (zero: at once again).
    pub fn set_send_delay(&self, delay: Duration) {
        *self.send_delay.lock().unwrap() = delay;
    }

    /// Returns once the gate is open.
    async fn pass(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// The ids of the sessions the worker opened.
    pub fn sessions(&self) -> Vec<u64> {
        self.sessions.lock().unwrap().clone()
    }
}

/// Every worker's gate, by worker id.
#[derive(Clone, Default)]
pub struct Gates(Arc<Mutex<BTreeMap<String, Gate>>>);

impl Gates {
    /// Wraps a worker's engines in a gate of its own.
    pub fn wrap(&self, handle: &WorkerHandle, deps: WorkerDeps) -> WorkerDeps {
        let gate = Gate::new();
        self.0
            .lock()
            .unwrap()
            .insert(handle.id.clone(), gate.clone());
        WorkerDeps {
            broker: Arc::new(Gated {
                gate: gate.clone(),
                inner: deps.broker,
            }),
            log: Arc::new(Gated {
                gate: gate.clone(),
                inner: deps.log,
            }),
            coordinator: Arc::new(Gated {
                gate,
                inner: deps.coordinator,
            }),
        }
    }

    pub fn get(&self, id: &str) -> Option<Gate> {
        self.0.lock().unwrap().get(id).cloned()
    }
}

struct Gated<T: ?Sized> {
    gate: Gate,
    inner: Arc<T>,
}

#[async_trait]
impl Broker for Gated<dyn Broker> {
    async fn declare(&self, queue: &str) -> Result<()> {
        self.gate.pass().await;
        self.inner.declare(queue).await
    }

    async fn declare_exclusive(&self, queue: &str) -> Result<()> {
        self.gate.pass().await;
        self.inner.declare_exclusive(queue).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<()> {
        let delay = *self.gate.send_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.gate.pass().await;
        self.inner.publish(queue, message).await
    }

    async fn consume_prioritized(
        &self,
        queue: &str,
        prefetch: u16,
        priority: i32,
    ) -> Result<Box<dyn Consumer>> {
        self.gate.pass().await;
        let inner = self
            .inner
            .consume_prioritized(queue, prefetch, priority)
            .await?;
        Ok(Box::new(GatedConsumer {
            gate: self.gate.clone(),
            inner,
        }))
    }
}

struct GatedConsumer {
    gate: Gate,
    inner: Box<dyn Consumer>,
}

#[async_trait]
impl Consumer for GatedConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        self.gate.pass().await;
        let delivery = self.inner.next().await;
        // Taken by the broker's side while paused: handled once the worker runs again.
        self.gate.pass().await;
        delivery
    }

    async fn close(self: Box<Self>) {
        self.inner.close().await
    }
}

#[async_trait]
impl Log for Gated<dyn Log> {
    fn append(&self, data: Bytes) -> Appended {
        let gate = self.gate.clone();
        let log = Arc::clone(&self.inner);
        Appended::pending(async move {
            gate.pass().await;
            log.append(data).await
        })
    }

    async fn read_from(&self, from: u64) -> Result<Box<dyn LogReader>> {
        self.gate.pass().await;
        let inner = self.inner.read_from(from).await?;
        Ok(Box::new(GatedReader {
            gate: self.gate.clone(),
            inner,
        }))
    }

    async fn end(&self) -> Result<u64> {
        self.gate.pass().await;
        self.inner.end().await
    }

    async fn truncate_before(&self, index: u64) -> Result<u64> {
        self.gate.pass().await;
        self.inner.truncate_before(index).await
    }

    async fn first(&self) -> Result<u64> {
        self.gate.pass().await;
        self.inner.first().await
    }
}

struct GatedReader {
    gate: Gate,
    inner: Box<dyn LogReader>,
}

#[async_trait]
impl LogReader for GatedReader {
    /// Cancel-safe like the reader it wraps: an entry is only taken once the gate is open, and
    /// handed out at once.
    async fn next(&mut self) -> Option<Result<Record>> {
        // Before taking the entry, so that a dropped call loses nothing.
        let lag = *self.gate.lag.lock().unwrap();
        if !lag.is_zero() {
            tokio::time::sleep(lag).await;
        }
        self.gate.pass().await;
        self.inner.next().await
    }
}

#[async_trait]
impl Coordinator for Gated<dyn Coordinator> {
    async fn connect(&self) -> Result<Box<dyn Session>> {
        self.gate.pass().await;
        let inner = self.inner.connect().await?;
        self.gate.sessions.lock().unwrap().push(inner.id());
        Ok(Box::new(GatedSession {
            gate: self.gate.clone(),
            inner,
        }))
    }
}

struct GatedSession {
    gate: Gate,
    inner: Box<dyn Session>,
}

#[async_trait]
impl Session for GatedSession {
    fn id(&self) -> u64 {
        self.inner.id()
    }

    async fn create(&self, path: &str, data: Bytes, mode: CreateMode) -> Result<String> {
        self.gate.pass().await;
        self.inner.create(path, data, mode).await
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, i32)>> {
        self.gate.pass().await;
        self.inner.get(path).await
    }

    async fn get_watch(&self, path: &str) -> Result<(Option<(Bytes, i32)>, Watch)> {
        self.gate.pass().await;
        self.inner.get_watch(path).await
    }

    async fn set(&self, path: &str, data: Bytes, version: Option<i32>) -> Result<()> {
        self.gate.pass().await;
        self.inner.set(path, data, version).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.gate.pass().await;
        self.inner.delete(path).await
    }

    async fn delete_at(&self, path: &str, version: i32) -> Result<()> {
        self.gate.pass().await;
        self.inner.delete_at(path, version).await
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        self.gate.pass().await;
        self.inner.children(path).await
    }

    async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        self.gate.pass().await;
        self.inner.children_watch(path).await
    }

    /// A paused worker learns of its session's end only once it runs again.
    fn lost(&self) -> Watch {
        let gate = self.gate.clone();
        let lost = self.inner.lost();
        Box::pin(async move {
            lost.await;
            gate.pass().await;
        })
    }
}
