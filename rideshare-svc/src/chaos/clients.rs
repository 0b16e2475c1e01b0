//! The load: concurrent clients writing and reading through the orchestrator, each operation
//! recorded in the history as invoked and then ok, failed or unknown (checker `Event`s).

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use rideshare_core::{Area, RideId, Timestamp, Username};
use rideshare_dbaas::checker::{Completion, Event, Operation};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::api::Api;

type History = Arc<Mutex<Vec<Event>>>;

/// The running clients and the history they record.
pub struct Load {
    history: History,
    stop: watch::Sender<bool>,
    clients: JoinSet<()>,
}

/// Where operations made outside the clients (the mid-burst kill's writes) are recorded.
#[derive(Clone, Default)]
pub struct Recorder(History);

impl Recorder {
    pub fn push(&self, event: Event) {
        self.0.lock().push(event);
    }
}

/// How the operations recorded so far ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl Load {
    /// Starts `clients` clients; client `id` draws its operations from `seed` and its id.
    pub fn start(api: &Api, clients: u64, seed: u64) -> Self {
        let history = History::default();
        let (stop, stopped) = watch::channel(false);
        let mut set = JoinSet::new();
        for id in 0..clients {
            let client = Client {
                api: api.clone(),
                id,
                rng: SmallRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(id)),
                history: Arc::clone(&history),
            };
            set.spawn(client.run(stopped.clone()));
        }
        Load {
            history,
            stop,
            clients: set,
        }
    }

    pub fn recorder(&self) -> Recorder {
        Recorder(Arc::clone(&self.history))
    }

    pub fn counts(&self) -> Counts {
        counts(&self.history.lock())
    }

    /// Stops the clients (each finishes the operation it is in) and hands over the history.
    pub async fn stop(mut self) -> Vec<Event> {
        let _ = self.stop.send(true);
        while self.clients.join_next().await.is_some() {}
        std::mem::take(&mut *self.history.lock())
    }
}

pub fn succeeded(completion: &Completion) -> bool {
    matches!(
        completion,
        Completion::Written { .. } | Completion::Read { .. }
    )
}

fn counts(events: &[Event]) -> Counts {
    let ok = events.iter().filter(|e| succeeded(&e.completion)).count();
    let unknown = events
        .iter()
        .filter(|e| matches!(e.completion, Completion::Unknown { .. }))
        .count();
    Counts {
        ok,
        failed: events.len() - ok - unknown,
        unknown,
    }
}

struct Client {
    api: Api,
    id: u64,
    rng: SmallRng,
    history: History,
}

impl Client {
    async fn run(mut self, stop: watch::Receiver<bool>) {
        let mut n = 0u64;
        while !*stop.borrow() {
            n += 1;
            let invoked_ms = self.api.ms();
            let (operation, completion) = self.one(n).await;
            let failed = !succeeded(&completion);
            self.history.lock().push(Event {
                client: usize::try_from(self.id).unwrap_or(0),
                operation,
                invoked_ms,
                completed_ms: self.api.ms(),
                completion,
            });
            // Bounded pace: back off a little while the system is failing over.
            let pause = if failed {
                200
            } else {
                self.rng.gen_range(5..40)
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// One operation, half writes and half reads.
    async fn one(&mut self, n: u64) -> (Operation, Completion) {
        if self.rng.gen_bool(0.5) {
            let request_id = RequestId(format!("c{}-{n}-{:08x}", self.id, self.rng.gen::<u32>()));
            let op = random_write(&mut self.rng, self.id, n);
            let completion = self.api.write(&request_id, &op).await;
            (Operation::Write { request_id, op }, completion)
        } else {
            let op = random_read(&mut self.rng);
            let completion = match self.api.read(&op).await {
                Ok(applied_index) => Completion::Read { applied_index },
                Err(reason) => Completion::Failed { reason },
            };
            (Operation::Read { op }, completion)
        }
    }
}

/// A write on a small set of names and rides, so that writes collide (users that exist, rides
/// joined twice or deleted) and every outcome shows up in the history.
fn random_write(rng: &mut SmallRng, client: u64, n: u64) -> WriteOp {
    let user = |rng: &mut SmallRng| {
        Username::parse(&format!("u{}-{}", rng.gen_range(0..4), rng.gen_range(0..8)))
            .unwrap_or_else(|_| unreachable!())
    };
    match rng.gen_range(0..10) {
        0..=3 => WriteOp::AddUser {
            username: Username::parse(&format!("u{client}-{}", n % 8))
                .unwrap_or_else(|_| unreachable!()),
            password_hash: "$argon2id$chaos".into(),
        },
        4..=6 => WriteOp::CreateRide {
            created_by: user(rng),
            timestamp: Timestamp::from_seconds(4_102_444_800 + rng.gen_range(0..86_400))
                .unwrap_or_else(|| unreachable!()),
            source: Area::new(rng.gen_range(1..5)).unwrap_or_else(|_| unreachable!()),
            destination: Area::new(rng.gen_range(1..5)).unwrap_or_else(|_| unreachable!()),
        },
        7..=8 => WriteOp::JoinRide {
            ride_id: RideId(rng.gen_range(1..200)),
            username: user(rng),
        },
        _ => WriteOp::DeleteRide {
            ride_id: RideId(rng.gen_range(1..200)),
        },
    }
}

fn random_read(rng: &mut SmallRng) -> ReadOp {
    match rng.gen_range(0..3) {
        0 => ReadOp::ListUsers,
        1 => ReadOp::CountRides,
        _ => ReadOp::GetRide {
            ride_id: RideId(rng.gen_range(1..200)),
        },
    }
}

/// A write that only the run itself makes: it tells whether the cluster accepts writes.
pub fn probe(n: u64) -> WriteOp {
    WriteOp::AddUser {
        username: Username::parse(&format!("probe-{n}")).unwrap_or_else(|_| unreachable!()),
        password_hash: "$argon2id$chaos".into(),
    }
}

#[cfg(test)]
mod tests {
    use rideshare_core::ops::WriteOutcome;

    use super::*;

    fn event(completion: Completion) -> Event {
        Event {
            client: 0,
            operation: Operation::Read {
                op: ReadOp::CountRides,
            },
            invoked_ms: 0,
            completed_ms: 1,
            completion,
        }
    }

    #[test]
    fn counts_split_ok_failed_and_unknown() {
        let events = [
            event(Completion::Written {
                index: 1,
                outcome: WriteOutcome::Done,
            }),
            event(Completion::Read { applied_index: 1 }),
            event(Completion::Failed {
                reason: "503".into(),
            }),
            event(Completion::Unknown {
                reason: "timeout".into(),
            }),
            event(Completion::Unknown {
                reason: "reset".into(),
            }),
        ];
        assert_eq!(
            counts(&events),
            Counts {
                ok: 2,
                failed: 1,
                unknown: 2
            }
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_operations() {
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..50)
                .map(|n| format!("{:?}", random_write(&mut rng, 1, n)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
