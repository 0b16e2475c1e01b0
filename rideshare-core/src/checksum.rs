//! The state checksum: what replicas publish and the history checker compares against a replay.
//!
//! It is a wrapping sum of one hash per row (each user; each ride; each rider of a ride, with
//! its place in the join order; the next ride id), so it does not depend on the order rows are
//! visited in and can be kept up to date as mutations apply: add a row's hash when it appears,
//! subtract it when it goes, both when it changes. [`StateChecksum::of`] recomputes it from a
//! whole [`Dump`]; [`StateChecksum::after`] moves it over one commit's mutations. The mutations
//! a replica applies most (a new user, a new ride, a join) carry every field their rows hash, so
//! they cost no read; deletions read the rows they remove. The two agree on equal state (a
//! property test holds them to it on both stores).
//!
//! Users' creation order is not part of it (a sum has no order); riders' join order is, through
//! each rider's place. Request memory and the applied index are not data and are left out.

use crate::domain::{RideId, Username};
use crate::error::StoreError;
use crate::machine::{Dump, Mutation, Ride, Store};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over fields, each closed by a separator byte: stable across processes and versions,
/// unlike std's hasher, since replicas in different processes must agree.
struct RowHash(u64);

impl RowHash {
    fn new(tag: &[u8]) -> Self {
        let mut hash = RowHash(FNV_OFFSET);
        hash.feed(tag);
        hash
    }

    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(FNV_PRIME);
    }

    /// A final mix (splitmix64's): FNV's low bits are weak, and a sum of rows needs every bit.
    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn user_row(username: &Username, password_hash: &str) -> u64 {
    let mut hash = RowHash::new(b"user");
    hash.feed(username.as_str().as_bytes());
    hash.feed(password_hash.as_bytes());
    hash.finish()
}

fn ride_row(ride: &Ride) -> u64 {
    let mut hash = RowHash::new(b"ride");
    hash.feed(&ride.id.0.to_le_bytes());
    hash.feed(ride.created_by.as_str().as_bytes());
    hash.feed(&ride.timestamp.to_seconds().to_le_bytes());
    hash.feed(&ride.source.number().to_le_bytes());
    hash.feed(&ride.destination.number().to_le_bytes());
    hash.finish()
}

/// A rider of `ride_id`, `place` riders having joined before.
fn rider_row(ride_id: RideId, place: u64, rider: &Username) -> u64 {
    let mut hash = RowHash::new(b"rider");
    hash.feed(&ride_id.0.to_le_bytes());
    hash.feed(&place.to_le_bytes());
    hash.feed(rider.as_str().as_bytes());
    hash.finish()
}

/// A ride's row and its riders' rows, together.
fn ride_rows(ride: &Ride, riders: &[Username]) -> u64 {
    riders
        .iter()
        .zip(0..)
        .fold(ride_row(ride), |sum, (rider, place)| {
            sum.wrapping_add(rider_row(ride.id, place, rider))
        })
}

fn next_ride_id_row(next_ride_id: u64) -> u64 {
    let mut hash = RowHash::new(b"next_ride_id");
    hash.feed(&next_ride_id.to_le_bytes());
    hash.finish()
}

/// The checksum's parts, kept apart so that clearing a table is setting its part to zero.
/// Snapshots carry them (serialized as they are), so a store installed from one continues the
/// running checksum without reading every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateChecksum {
    users: u64,
    rides: u64,
    next_ride_id: u64,
}

impl StateChecksum {
    /// The full recomputation, from every row.
    pub fn of(dump: &Dump) -> Self {
        StateChecksum {
            users: dump
                .users
                .iter()
                .fold(0, |sum, (u, h)| sum.wrapping_add(user_row(u, h))),
            rides: dump
                .rides
                .iter()
                .fold(0, |sum, (r, riders)| sum.wrapping_add(ride_rows(r, riders))),
            next_ride_id: dump.next_ride_id,
        }
    }

    /// The full recomputation from a store's current state (reads every row).
    pub fn full<S: Store + ?Sized>(store: &mut S) -> Result<Self, StoreError> {
        Ok(Self::of(&store.dump()?))
    }

    /// The published value.
    pub fn value(&self) -> u64 {
        self.users
            .wrapping_add(self.rides)
            .wrapping_add(next_ride_id_row(self.next_ride_id))
    }

    /// The checksum once `mutations` are committed, read from `store` before they are. Every
    /// mutation is judged against the state before the commit, so one commit's mutations must
    /// touch different rows, as `decide`'s do (a ride and the next id; all rides and all users).
    /// Each case mirrors what both stores do with the mutation.
    pub fn after<S: Store + ?Sized>(
        mut self,
        store: &mut S,
        mutations: &[Mutation],
    ) -> Result<Self, StoreError> {
        for mutation in mutations {
            match mutation {
                Mutation::InsertUser {
                    username,
                    password_hash,
                } => self.users = self.users.wrapping_add(user_row(username, password_hash)),
                Mutation::DeleteUserCascade { username } => {
                    self.delete_user(store, username)?;
                }
                Mutation::InsertRide(ride) => {
                    self.rides = self.rides.wrapping_add(ride_row(ride));
                }
                Mutation::AddRider {
                    ride_id,
                    username,
                    place,
                } => {
                    self.rides = self
                        .rides
                        .wrapping_add(rider_row(*ride_id, *place, username));
                }
                Mutation::DeleteRide { ride_id } => {
                    if let Some(ride) = store.ride(*ride_id)? {
                        let riders = store.riders(*ride_id)?;
                        self.rides = self.rides.wrapping_sub(ride_rows(&ride, &riders));
                    }
                }
                Mutation::SetNextRideId(next) => self.next_ride_id = *next,
                Mutation::DeleteAllRides => self.rides = 0,
                Mutation::DeleteAllUsers => self.users = 0,
            }
        }
        Ok(self)
    }

    /// The user's row goes, with the rides the user created; the user leaves the rides joined.
    fn delete_user<S: Store + ?Sized>(
        &mut self,
        store: &mut S,
        username: &Username,
    ) -> Result<(), StoreError> {
        if let Some(password_hash) = store.password_hash(username)? {
            self.users = self.users.wrapping_sub(user_row(username, &password_hash));
        }
        for ride_id in store.rides_of(username)? {
            let Some(ride) = store.ride(ride_id)? else {
                continue;
            };
            let mut riders = store.riders(ride_id)?;
            self.rides = self.rides.wrapping_sub(ride_rows(&ride, &riders));
            if ride.created_by != *username {
                // The riders after the user move up one place.
                riders.retain(|r| r != username);
                self.rides = self.rides.wrapping_add(ride_rows(&ride, &riders));
            }
        }
        Ok(())
    }
}
