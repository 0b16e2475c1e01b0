//! `MemBroker`: the in-memory [`Broker`] used by `rideshare up` and by tests, with fault controls.
//!
//! It models what the protocol relies on from RabbitMQ: durable named queues, competing consumers
//! served round robin, manual ack/nack, a prefetch bound per consumer, and requeueing (at the front,
//! marked redelivered) of whatever a consumer held unacked when it goes away. Everything lives in
//! one `BTreeMap` behind a std mutex that is never held across an `.await`, so a run with the same
//! seed and the same calls makes the same deliveries.
//!
//! Like the AMQP default exchange, a publish to a queue nobody declared is confirmed and the
//! message is dropped: the publisher cannot tell, and the protocol must not depend on it.
//!
//! Fault controls: [`MemBroker::set_drop_rate`], [`MemBroker::set_duplicate_rate`],
//! [`MemBroker::set_delay`], [`MemBroker::set_jitter`], [`MemBroker::set_unavailable`], [`MemBroker::delete_queue`]; and for assertions
//! [`MemBroker::queue_len`] and [`MemBroker::unacked`].
//!
//! It must not open sockets or read the clock except through tokio's (pausable) timer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use super::{Acker, Broker, Consumer, Delivery, Message};
use crate::error::{Error, Result};

/// An in-memory broker. Cloning gives another handle on the same queues.
#[derive(Clone, Debug)]
pub struct MemBroker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    queues: BTreeMap<String, Queue>,
    /// Consumer ids and delivery tags are unique across the broker's life, so a handle to a
    /// deleted queue's consumer never finds a newer consumer of a queue of the same name.
    next_consumer: u64,
    next_tag: u64,
    drop_rate: f64,
    /// The chance that a published message is queued twice (a duplicate delivery).
    duplicate_rate: f64,
    delay: Duration,
    /// Each publish waits a further random time below this: messages overtake each other.
    jitter: Duration,
    unavailable: bool,
    rng: SmallRng,
}

#[derive(Debug, Default)]
struct Queue {
    /// Messages waiting for a consumer with room, in delivery order.
    ready: VecDeque<Pending>,
    consumers: BTreeMap<u64, ConsumerState>,
    /// The consumer served last, so the next message goes to the one after it.
    last_served: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    message: Message,
    redelivered: bool,
}

#[derive(Debug)]
struct ConsumerState {
    /// 0 means unbounded, as in AMQP's `basic.qos`.
    prefetch: u16,
    /// Consumers of higher priority with room are served first (RabbitMQ's `x-priority`).
    priority: i32,
    /// Everything dispatched to this consumer and not settled yet, by delivery tag. Messages sent
    /// but not yet taken by `next()` count too: RabbitMQ counts them against prefetch as well.
    unacked: BTreeMap<u64, Pending>,
    /// Tags dispatched but not yet handed out by `next()`, in order.
    inbox: VecDeque<u64>,
    notify: Arc<Notify>,
}

impl ConsumerState {
    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.unacked.len() < usize::from(self.prefetch)
    }
}

impl Queue {
    /// Hands ready messages to consumers with room, round robin, until one side runs out.
    fn dispatch(&mut self, next_tag: &mut u64) {
        while !self.ready.is_empty() {
            let Some(id) = self.next_consumer_with_room() else {
                break;
            };
            let (Some(consumer), Some(pending)) =
                (self.consumers.get_mut(&id), self.ready.pop_front())
            else {
                break;
            };
            let tag = *next_tag;
            *next_tag += 1;
            consumer.unacked.insert(tag, pending);
            consumer.inbox.push_back(tag);
            // A stored permit covers a consumer that is not waiting in `next()` right now.
            consumer.notify.notify_one();
            self.last_served = id;
        }
    }

    fn next_consumer_with_room(&self) -> Option<u64> {
        let top = self
            .consumers
            .values()
            .filter(|c| c.has_room())
            .map(|c| c.priority)
            .max()?;
        let with_room =
            |(id, c): (&u64, &ConsumerState)| (c.has_room() && c.priority == top).then_some(*id);
        self.consumers
            .range(self.last_served + 1..)
            .find_map(with_room)
            .or_else(|| {
                self.consumers
                    .range(..=self.last_served)
                    .find_map(with_room)
            })
    }

    /// Removes a consumer and puts what it held back at the front of the queue, in the order it
    /// was delivered, marked redelivered: its holder may have processed any of it.
    fn remove_consumer(&mut self, id: u64, next_tag: &mut u64) {
        if let Some(consumer) = self.consumers.remove(&id) {
            for (_, mut pending) in consumer.unacked.into_iter().rev() {
                pending.redelivered = true;
                self.ready.push_front(pending);
            }
            // Wake its `next()` (if anyone still polls it) so it sees it is closed.
            consumer.notify.notify_one();
            self.dispatch(next_tag);
        }
    }

    fn close_all_consumers(&mut self, next_tag: &mut u64) {
        let ids: Vec<u64> = self.consumers.keys().copied().collect();
        for id in ids {
            self.remove_consumer(id, next_tag);
        }
    }
}

impl Default for MemBroker {
    fn default() -> Self {
        MemBroker::new()
    }
}

impl MemBroker {
    /// A broker with no queues and its fault rng seeded with 0.
    pub fn new() -> Self {
        MemBroker::with_seed(0)
    }

    /// A broker whose fault decisions (drops) follow `seed`.
    pub fn with_seed(seed: u64) -> Self {
        MemBroker {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queues: BTreeMap::new(),
                    next_consumer: 1,
                    next_tag: 1,
                    drop_rate: 0.0,
                    duplicate_rate: 0.0,
                    delay: Duration::ZERO,
                    jitter: Duration::ZERO,
                    unavailable: false,
                    rng: SmallRng::seed_from_u64(seed),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Makes each publish, with probability `rate` (clamped to 0..=1), confirm and then lose its
    /// message. It models a request or reply lost where the publisher cannot see it, so that the
    /// layers above (RPC timeouts, retries with request ids) are exercised; it breaks the
    /// publisher-confirm guarantee on purpose, so conformance suites run with a rate of 0.
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
    }

    /// Makes every publish take `delay` before the broker takes the message (a slow link): the
    /// message is delivered, and the publish confirmed, that much later.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Makes every publish take a further random time below `jitter` (drawn from the broker's
    /// seeded rng): messages published close together reach their queue out of order.
    pub fn set_jitter(&self, jitter: Duration) {
        self.lock().jitter = jitter;
    }

    /// Makes each publish, with probability `rate` (clamped to 0..=1), queue its message twice:
    /// the duplicate delivery at-least-once brokers allow (a publisher's retry of a message
    /// whose confirm was lost). Like drops, it is for the layers above, not for conformance.
    pub fn set_duplicate_rate(&self, rate: f64) {
        self.lock().duplicate_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
    }

    /// While unavailable, `declare`, `consume` and `publish` fail with
    /// [`Error::BrokerUnavailable`]. Turning it on also drops every connection: each consumer's
    /// `next()` returns `None` and what it held unacked is requeued, as when RabbitMQ restarts.
    /// Queues and their messages survive (they are durable).
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut state = self.lock();
        state.unavailable = unavailable;
        if unavailable {
            let State {
                queues, next_tag, ..
            } = &mut *state;
            for queue in queues.values_mut() {
                queue.close_all_consumers(next_tag);
            }
        }
    }

    /// Deletes a queue and its messages; its consumers' `next()` returns `None`. Returns whether
    /// the queue existed.
    pub fn delete_queue(&self, name: &str) -> bool {
        let mut state = self.lock();
        match state.queues.remove(name) {
            Some(queue) => {
                for consumer in queue.consumers.values() {
                    consumer.notify.notify_one();
                }
                true
            }
            None => false,
        }
    }

    /// Messages waiting in `name` for a consumer (not counting unacked ones); 0 if absent.
    pub fn queue_len(&self, name: &str) -> usize {
        self.lock().queues.get(name).map_or(0, |q| q.ready.len())
    }

    /// Messages of `name` delivered to consumers and not yet settled; 0 if absent.
    pub fn unacked(&self, name: &str) -> usize {
        self.lock()
            .queues
            .get(name)
            .map_or(0, |q| q.consumers.values().map(|c| c.unacked.len()).sum())
    }

    /// Consumers currently subscribed to `name`; 0 if absent.
    pub fn consumer_count(&self, name: &str) -> usize {
        self.lock()
            .queues
            .get(name)
            .map_or(0, |q| q.consumers.len())
    }

    /// Declared queue names, sorted.
    pub fn queues(&self) -> Vec<String> {
        self.lock().queues.keys().cloned().collect()
    }

    fn check_available(state: &State) -> Result<()> {
        if state.unavailable {
            Err(Error::BrokerUnavailable(
                "in-memory broker set unavailable".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // parking_lot does not poison: a panic while holding the lock leaves the maps consistent
        // (every mutation is a single step on them), so later callers carry on.
        self.state.lock()
    }
}

#[async_trait]
impl Broker for MemBroker {
    async fn declare(&self, queue: &str) -> Result<()> {
        let mut state = self.lock();
        MemBroker::check_available(&state)?;
        state.queues.entry(queue.to_owned()).or_default();
        Ok(())
    }

    /// Same as [`declare`](Broker::declare): an in-process broker has no connection to outlive.
    /// [`MemBroker::delete_queue`] removes it.
    async fn declare_exclusive(&self, queue: &str) -> Result<()> {
        self.declare(queue).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<()> {
        let delay = {
            let mut state = self.lock();
            MemBroker::check_available(&state)?;
            let jitter = state.jitter;
            state.delay
                + if jitter.is_zero() {
                    Duration::ZERO
                } else {
                    jitter.mul_f64(state.rng.gen::<f64>())
                }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        // The broker may have gone away while the message was on the wire.
        MemBroker::check_available(&state)?;
        if state.drop_rate > 0.0 {
            let roll: f64 = state.rng.gen();
            if roll < state.drop_rate {
                tracing::debug!(queue, "mem broker dropped a published message (fault)");
                return Ok(());
            }
        }
        let twice = state.duplicate_rate > 0.0 && state.rng.gen::<f64>() < state.duplicate_rate;
        let State {
            queues, next_tag, ..
        } = &mut *state;
        match queues.get_mut(queue) {
            Some(q) => {
                if twice {
                    tracing::debug!(queue, "mem broker queued a message twice (fault)");
                    q.ready.push_back(Pending {
                        message: message.clone(),
                        redelivered: true,
                    });
                }
                q.ready.push_back(Pending {
                    message,
                    redelivered: false,
                });
                q.dispatch(next_tag);
            }
            None => {
                tracing::debug!(queue, "publish to an undeclared queue dropped");
            }
        }
        Ok(())
    }

    async fn consume_prioritized(
        &self,
        queue: &str,
        prefetch: u16,
        priority: i32,
    ) -> Result<Box<dyn Consumer>> {
        let mut state = self.lock();
        MemBroker::check_available(&state)?;
        let id = state.next_consumer;
        let State {
            queues, next_tag, ..
        } = &mut *state;
        let q = queues
            .get_mut(queue)
            .ok_or_else(|| Error::QueueClosed(queue.to_owned()))?;
        let notify = Arc::new(Notify::new());
        q.consumers.insert(
            id,
            ConsumerState {
                prefetch,
                priority,
                unacked: BTreeMap::new(),
                inbox: VecDeque::new(),
                notify: Arc::clone(&notify),
            },
        );
        q.dispatch(next_tag);
        state.next_consumer += 1;
        Ok(Box::new(MemConsumer {
            shared: Arc::clone(&self.shared),
            queue: queue.to_owned(),
            id,
            notify,
        }))
    }
}

/// A subscription to one queue of a [`MemBroker`]. Dropping it requeues what it holds.
#[derive(Debug)]
pub struct MemConsumer {
    shared: Arc<Shared>,
    queue: String,
    id: u64,
    notify: Arc<Notify>,
}

impl MemConsumer {
    /// Takes the next dispatched delivery; `Err(())` once this consumer is closed.
    fn try_take(&self) -> Result<Option<Delivery>, ()> {
        let mut state = self.shared.lock();
        let consumer = state
            .queues
            .get_mut(&self.queue)
            .and_then(|q| q.consumers.get_mut(&self.id))
            .ok_or(())?;
        let Some(tag) = consumer.inbox.pop_front() else {
            return Ok(None);
        };
        let Some(pending) = consumer.unacked.get(&tag) else {
            // Settled before it was handed out cannot happen (only a delivery can settle it);
            // skip it rather than hand out a message twice.
            return Ok(None);
        };
        Ok(Some(Delivery {
            message: pending.message.clone(),
            redelivered: pending.redelivered,
            acker: Box::new(MemAcker {
                shared: Arc::clone(&self.shared),
                queue: self.queue.clone(),
                consumer: self.id,
                tag,
            }),
        }))
    }
}

#[async_trait]
impl Consumer for MemConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            match self.try_take() {
                Ok(Some(delivery)) => return Some(Ok(delivery)),
                Ok(None) => {}
                Err(()) => return None,
            }
            // `notify_one` stores a permit when nobody waits, so a dispatch between the check
            // above and this wait is not missed.
            self.notify.notified().await;
        }
    }
}

impl Drop for MemConsumer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let State {
            queues, next_tag, ..
        } = &mut *state;
        if let Some(q) = queues.get_mut(&self.queue) {
            q.remove_consumer(self.id, next_tag);
        }
    }
}

/// Settles one delivery of a [`MemConsumer`].
#[derive(Debug)]
struct MemAcker {
    shared: Arc<Shared>,
    queue: String,
    consumer: u64,
    tag: u64,
}

impl MemAcker {
    /// Removes the delivery from its consumer's unacked set. Fails when it was settled already or
    /// its consumer is gone (then it was requeued), as acking on a closed AMQP channel does.
    fn settle(&self, requeue: bool) -> Result<()> {
        let mut state = self.shared.lock();
        let unavailable = state.unavailable;
        let State {
            queues, next_tag, ..
        } = &mut *state;
        let closed = || {
            if unavailable {
                Error::BrokerUnavailable("in-memory broker set unavailable".into())
            } else {
                Error::QueueClosed(self.queue.clone())
            }
        };
        let Some(q) = queues.get_mut(&self.queue) else {
            return Err(closed());
        };
        let Some(mut message) = q
            .consumers
            .get_mut(&self.consumer)
            .and_then(|c| c.unacked.remove(&self.tag))
        else {
            return Err(closed());
        };
        if requeue {
            // RabbitMQ puts a requeued message back near its original position: the head.
            message.redelivered = true;
            q.ready.push_front(message);
        }
        q.dispatch(next_tag);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(&self) -> Result<()> {
        self.settle(false)
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(requeue)
    }
}
