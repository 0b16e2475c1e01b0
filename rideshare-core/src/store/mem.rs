//! An in-memory `Store`: the reference the SQLite store is checked against.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::area::Area;
use crate::domain::{RideId, Timestamp, Username};
use crate::error::StoreError;
use crate::machine::{Commit, Dump, Mutation, Ride, Store, REQUEST_MEMORY};
use crate::ops::{RequestId, RideSummary, WriteOutcome};

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    /// seq → (username, password hash); seq gives creation order.
    users: BTreeMap<u64, (Username, String)>,
    user_seq: HashMap<Username, u64>,
    next_user_seq: u64,
    rides: BTreeMap<RideId, (Ride, Vec<Username>)>,
    next_ride_id: u64,
    applied_index: u64,
    requests: HashMap<RequestId, WriteOutcome>,
    request_order: VecDeque<(u64, RequestId)>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore {
            next_ride_id: 1,
            ..MemStore::default()
        }
    }

    fn apply(&mut self, mutation: Mutation) {
        match mutation {
            Mutation::InsertUser {
                username,
                password_hash,
            } => {
                self.next_user_seq += 1;
                self.user_seq.insert(username.clone(), self.next_user_seq);
                self.users
                    .insert(self.next_user_seq, (username, password_hash));
            }
            Mutation::DeleteUserCascade { username } => {
                if let Some(seq) = self.user_seq.remove(&username) {
                    self.users.remove(&seq);
                }
                self.rides
                    .retain(|_, (ride, _)| ride.created_by != username);
                for (_, riders) in self.rides.values_mut() {
                    riders.retain(|r| *r != username);
                }
            }
            Mutation::InsertRide(ride) => {
                self.rides.insert(ride.id, (ride, Vec::new()));
            }
            Mutation::AddRider {
                ride_id, username, ..
            } => {
                if let Some((_, riders)) = self.rides.get_mut(&ride_id) {
                    if !riders.contains(&username) {
                        riders.push(username);
                    }
                }
            }
            Mutation::DeleteRide { ride_id } => {
                self.rides.remove(&ride_id);
            }
            Mutation::SetNextRideId(next) => self.next_ride_id = next,
            Mutation::DeleteAllRides => self.rides.clear(),
            Mutation::DeleteAllUsers => {
                self.users.clear();
                self.user_seq.clear();
            }
        }
    }
}

impl Store for MemStore {
    fn user_exists(&mut self, username: &Username) -> Result<bool, StoreError> {
        Ok(self.user_seq.contains_key(username))
    }

    fn list_users(&mut self) -> Result<Vec<Username>, StoreError> {
        Ok(self.users.values().map(|(u, _)| u.clone()).collect())
    }

    fn ride(&mut self, id: RideId) -> Result<Option<Ride>, StoreError> {
        Ok(self.rides.get(&id).map(|(r, _)| r.clone()))
    }

    fn password_hash(&mut self, username: &Username) -> Result<Option<String>, StoreError> {
        Ok(self
            .user_seq
            .get(username)
            .and_then(|seq| self.users.get(seq))
            .map(|(_, hash)| hash.clone()))
    }

    fn rides_of(&mut self, username: &Username) -> Result<Vec<RideId>, StoreError> {
        Ok(self
            .rides
            .values()
            .filter(|(ride, riders)| ride.created_by == *username || riders.contains(username))
            .map(|(ride, _)| ride.id)
            .collect())
    }

    fn riders(&mut self, id: RideId) -> Result<Vec<Username>, StoreError> {
        Ok(self
            .rides
            .get(&id)
            .map(|(_, riders)| riders.clone())
            .unwrap_or_default())
    }

    fn upcoming(
        &mut self,
        source: Area,
        destination: Area,
        after: Timestamp,
    ) -> Result<Vec<RideSummary>, StoreError> {
        let mut rides: Vec<RideSummary> = self
            .rides
            .values()
            .map(|(r, _)| r)
            .filter(|r| r.source == source && r.destination == destination && r.timestamp > after)
            .map(|r| RideSummary {
                ride_id: r.id,
                username: r.created_by.clone(),
                timestamp: r.timestamp,
            })
            .collect();
        rides.sort_by_key(|r| (r.timestamp, r.ride_id));
        Ok(rides)
    }

    fn ride_count(&mut self) -> Result<u64, StoreError> {
        Ok(self.rides.len() as u64)
    }

    fn next_ride_id(&mut self) -> Result<u64, StoreError> {
        Ok(self.next_ride_id)
    }

    fn applied_request(&mut self, id: &RequestId) -> Result<Option<WriteOutcome>, StoreError> {
        Ok(self.requests.get(id).cloned())
    }

    fn applied_index(&mut self) -> Result<u64, StoreError> {
        Ok(self.applied_index)
    }

    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        for mutation in commit.mutations {
            self.apply(mutation);
        }
        if let Some((id, outcome)) = commit.request {
            self.requests.insert(id.clone(), outcome);
            self.request_order.push_back((commit.index, id));
        }
        self.applied_index = commit.index;
        let horizon = commit.index.saturating_sub(REQUEST_MEMORY);
        while let Some((index, _)) = self.request_order.front() {
            if *index > horizon {
                break;
            }
            if let Some((_, id)) = self.request_order.pop_front() {
                self.requests.remove(&id);
            }
        }
        Ok(())
    }

    fn dump(&mut self) -> Result<Dump, StoreError> {
        Ok(Dump {
            users: self.users.values().cloned().collect(),
            rides: self.rides.values().cloned().collect(),
            next_ride_id: self.next_ride_id,
        })
    }

    fn export(&mut self, to: &Path) -> Result<(), StoreError> {
        let image = Image::of(self);
        let bytes = serde_json::to_vec(&image).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        std::fs::write(to, bytes)
            .map_err(|e| StoreError::Corrupt(format!("writing {}: {e}", to.display())))
    }
}

/// A memory store's snapshot file: its whole state as JSON (tests and simulations only hold
/// small states; a SQLite store's snapshot is a database file).
#[derive(Serialize, Deserialize)]
struct Image {
    /// (seq, username, password hash), in seq order.
    users: Vec<(u64, Username, String)>,
    next_user_seq: u64,
    /// (id, created_by, seconds, source, destination, riders in join order).
    rides: Vec<(u64, Username, i64, u16, u16, Vec<Username>)>,
    next_ride_id: u64,
    applied_index: u64,
    /// (log index, request id, outcome), oldest first.
    requests: Vec<(u64, RequestId, WriteOutcome)>,
}

impl Image {
    fn of(store: &MemStore) -> Image {
        Image {
            users: store
                .users
                .iter()
                .map(|(seq, (u, h))| (*seq, u.clone(), h.clone()))
                .collect(),
            next_user_seq: store.next_user_seq,
            rides: store
                .rides
                .values()
                .map(|(r, riders)| {
                    (
                        r.id.0,
                        r.created_by.clone(),
                        r.timestamp.to_seconds(),
                        r.source.number(),
                        r.destination.number(),
                        riders.clone(),
                    )
                })
                .collect(),
            next_ride_id: store.next_ride_id,
            applied_index: store.applied_index,
            requests: store
                .request_order
                .iter()
                .filter_map(|(index, id)| {
                    store
                        .requests
                        .get(id)
                        .map(|outcome| (*index, id.clone(), outcome.clone()))
                })
                .collect(),
        }
    }

    fn into_store(self) -> Result<MemStore, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("memory snapshot: {what}"));
        let mut store = MemStore {
            next_user_seq: self.next_user_seq,
            next_ride_id: self.next_ride_id,
            applied_index: self.applied_index,
            ..MemStore::default()
        };
        for (seq, username, hash) in self.users {
            store.user_seq.insert(username.clone(), seq);
            store.users.insert(seq, (username, hash));
        }
        for (id, created_by, seconds, source, destination, riders) in self.rides {
            let area = |n: u16| Area::new(n).map_err(|e| corrupt(e.to_string()));
            let ride = Ride {
                id: RideId(id),
                created_by,
                timestamp: Timestamp::from_seconds(seconds)
                    .ok_or_else(|| corrupt(format!("bad time {seconds}")))?,
                source: area(source)?,
                destination: area(destination)?,
            };
            store.rides.insert(ride.id, (ride, riders));
        }
        for (index, id, outcome) in self.requests {
            store.requests.insert(id.clone(), outcome);
            store.request_order.push_back((index, id));
        }
        Ok(store)
    }
}

impl MemStore {
    /// A store holding the state a snapshot file written by [`Store::export`] holds.
    pub fn import(from: &Path) -> Result<MemStore, StoreError> {
        let bytes = std::fs::read(from)
            .map_err(|e| StoreError::Corrupt(format!("reading {}: {e}", from.display())))?;
        let image: Image = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("memory snapshot: {e}")))?;
        image.into_store()
    }
}
