//! An in-memory `Store`: the reference the SQLite store is checked against.

use std::collections::{BTreeMap, HashMap, VecDeque};

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
}
