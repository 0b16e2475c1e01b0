//! The deterministic state machine and the `Store` trait it runs on.
//!
//! `decide` looks at the state and an operation and hands back an outcome plus the mutations to
//! make; it does no IO of its own. `StateMachine::apply` then has the store commit the mutations,
//! the request id and the log index in one transaction. Any two stores that apply the same log
//! in the same order therefore hold the same state and gave the same answers.
//!
//! To ensure correctness a `Store` must:
//! - make `commit` atomic: after a crash either all of a commit is visible or none of it;
//! - return users in creation order and joined users in join order;
//! - keep `next_ride_id` across `ClearAll`/`ClearRides` (ids are never reused);
//! - remember applied request ids at least as long as `REQUEST_MEMORY` commits.

use std::path::Path;

use crate::area::Area;
use crate::checksum::StateChecksum;
use crate::domain::{RideId, Timestamp, Username};
use crate::error::StoreError;
use crate::ops::{
    ReadOp, ReadOutcome, RequestId, RideDetail, RideList, RideSummary, WriteOp, WriteOutcome,
};

/// How many recent request ids a store remembers for deduplication. A redelivery older than
/// this many later writes is not expected: the queues redeliver within seconds.
pub const REQUEST_MEMORY: u64 = 100_000;

/// A ride as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ride {
    pub id: RideId,
    pub created_by: Username,
    pub timestamp: Timestamp,
    pub source: Area,
    pub destination: Area,
}

/// One change to the state. The store applies them in order inside one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    InsertUser {
        username: Username,
        password_hash: String,
    },
    /// Deletes the user, the user's rides (with their riders) and the user's joins.
    DeleteUserCascade {
        username: Username,
    },
    InsertRide(Ride),
    /// Adds a rider at the end of the ride's join order.
    AddRider {
        ride_id: RideId,
        username: Username,
        /// How many riders joined before: the stores keep join order by their own means, and
        /// the state checksum hashes the place without reading the ride's riders.
        place: u64,
    },
    DeleteRide {
        ride_id: RideId,
    },
    SetNextRideId(u64),
    DeleteAllRides,
    DeleteAllUsers,
}

/// What one log entry leaves behind, committed atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The log index of the entry; the store's applied index becomes this.
    pub index: u64,
    /// The request and its outcome, remembered for deduplication (none for markers).
    pub request: Option<(RequestId, WriteOutcome)>,
    pub mutations: Vec<Mutation>,
}

/// A second way into a store's data, for reads beside the thread that applies the log (another
/// SQLite connection to the same file: WAL lets readers run while a writer commits).
pub trait SnapshotReader: Send {
    /// Answers `ops` from one consistent state (one read transaction), with the applied index
    /// of that state.
    fn read_snapshot(&mut self, ops: &[ReadOp]) -> Result<SnapshotReads, StoreError>;
    /// Writes a copy of one committed state (data, request memory, applied index) to the new
    /// file `to`, from one read transaction, without holding back the thread that applies the
    /// log; returns the applied index of that state. See [`Store::export`].
    fn export(&mut self, to: &Path) -> Result<u64, StoreError>;
}

/// What [`SnapshotReader::read_snapshot`] found: each op's outcome, all at `applied_index`.
pub struct SnapshotReads {
    pub applied_index: u64,
    pub outcomes: Vec<Result<ReadOutcome, StoreError>>,
}

/// A replica's storage. Queries take `&mut self` because SQLite connections need it.
pub trait Store: Send {
    /// A reader of the same data for another thread, where the store has one (a database file);
    /// `None` where it has not (an in-memory store): then every read goes through this one.
    fn reader(&self) -> Result<Option<Box<dyn SnapshotReader>>, StoreError> {
        Ok(None)
    }
    fn user_exists(&mut self, username: &Username) -> Result<bool, StoreError>;
    /// Usernames in creation order.
    fn list_users(&mut self) -> Result<Vec<Username>, StoreError>;
    fn ride(&mut self, id: RideId) -> Result<Option<Ride>, StoreError>;
    /// The user's password hash, if the user exists.
    fn password_hash(&mut self, username: &Username) -> Result<Option<String>, StoreError>;
    /// The rides the user created or joined, in id order.
    fn rides_of(&mut self, username: &Username) -> Result<Vec<RideId>, StoreError>;
    /// Joined users of a ride in join order.
    fn riders(&mut self, id: RideId) -> Result<Vec<Username>, StoreError>;
    /// Rides between two areas strictly after `after`, ordered by time then id, as listed.
    fn upcoming(
        &mut self,
        source: Area,
        destination: Area,
        after: Timestamp,
    ) -> Result<Vec<RideSummary>, StoreError>;
    fn ride_count(&mut self) -> Result<u64, StoreError>;
    /// The id the next ride gets; starts at 1.
    fn next_ride_id(&mut self) -> Result<u64, StoreError>;
    /// The outcome a request got when it was applied, if it was.
    fn applied_request(&mut self, id: &RequestId) -> Result<Option<WriteOutcome>, StoreError>;
    /// The log index of the last commit; 0 for a new store.
    fn applied_index(&mut self) -> Result<u64, StoreError>;
    /// Applies a commit atomically.
    fn commit(&mut self, commit: Commit) -> Result<(), StoreError>;
    /// Opens a group: the commits until `end_group` become durable together, in one
    /// transaction, which is much cheaper than one each. A store whose commits cost nothing
    /// keeps the default, which does nothing. Groups do not nest.
    fn begin_group(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Closes the open group: keeps its commits, or drops them all. Without an open group it
    /// does nothing.
    fn end_group(&mut self, keep: bool) -> Result<(), StoreError> {
        let _ = keep;
        Ok(())
    }
    /// Every user with password hash, every ride with riders, and the next ride id, in a
    /// canonical order: what `checksum` digests and what snapshots carry.
    fn dump(&mut self) -> Result<Dump, StoreError>;
    /// Writes a copy of the committed state (data, request memory, applied index) to the new
    /// file `to`, in this store's own format (a snapshot); must not be called inside a group.
    /// The same kind of store opened on a copy of that file holds the same state
    /// (`SqliteStore::open`, `MemStore::import`).
    fn export(&mut self, to: &Path) -> Result<(), StoreError>;
}

/// A canonical copy of the state (request memory excluded).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dump {
    pub users: Vec<(Username, String)>,
    pub rides: Vec<(Ride, Vec<Username>)>,
    pub next_ride_id: u64,
}

impl Dump {
    /// The state checksum, recomputed from every row (see [`StateChecksum`]).
    pub fn checksum(&self) -> u64 {
        StateChecksum::of(self).value()
    }
}

/// Decides an operation against the current state: the outcome and the mutations that make it
/// true. Pure apart from reading the store.
pub fn decide<S: Store + ?Sized>(
    store: &mut S,
    op: &WriteOp,
) -> Result<(WriteOutcome, Vec<Mutation>), StoreError> {
    Ok(match op {
        WriteOp::AddUser {
            username,
            password_hash,
        } => {
            if store.user_exists(username)? {
                (WriteOutcome::UserExists, vec![])
            } else {
                (
                    WriteOutcome::Done,
                    vec![Mutation::InsertUser {
                        username: username.clone(),
                        password_hash: password_hash.clone(),
                    }],
                )
            }
        }
        WriteOp::DeleteUser { username } => {
            if store.user_exists(username)? {
                (
                    WriteOutcome::Done,
                    vec![Mutation::DeleteUserCascade {
                        username: username.clone(),
                    }],
                )
            } else {
                (WriteOutcome::NoSuchUser, vec![])
            }
        }
        WriteOp::CreateRide {
            created_by,
            timestamp,
            source,
            destination,
        } => {
            if !store.user_exists(created_by)? {
                (WriteOutcome::NoSuchUser, vec![])
            } else {
                let id = store.next_ride_id()?;
                let ride = Ride {
                    id: RideId(id),
                    created_by: created_by.clone(),
                    timestamp: *timestamp,
                    source: *source,
                    destination: *destination,
                };
                (
                    WriteOutcome::RideCreated {
                        ride_id: RideId(id),
                    },
                    vec![Mutation::InsertRide(ride), Mutation::SetNextRideId(id + 1)],
                )
            }
        }
        WriteOp::JoinRide { ride_id, username } => match store.ride(*ride_id)? {
            None => (WriteOutcome::NoSuchRide, vec![]),
            Some(ride) => {
                if !store.user_exists(username)? {
                    (WriteOutcome::NoSuchUser, vec![])
                } else if ride.created_by == *username {
                    (WriteOutcome::CreatorCannotJoin, vec![])
                } else {
                    let riders = store.riders(*ride_id)?;
                    if riders.contains(username) {
                        (WriteOutcome::AlreadyJoined, vec![])
                    } else {
                        (
                            WriteOutcome::Done,
                            vec![Mutation::AddRider {
                                ride_id: *ride_id,
                                username: username.clone(),
                                place: riders.len() as u64,
                            }],
                        )
                    }
                }
            }
        },
        WriteOp::DeleteRide { ride_id } => {
            if store.ride(*ride_id)?.is_some() {
                (
                    WriteOutcome::Done,
                    vec![Mutation::DeleteRide { ride_id: *ride_id }],
                )
            } else {
                (WriteOutcome::NoSuchRide, vec![])
            }
        }
        WriteOp::ClearRides => (WriteOutcome::Done, vec![Mutation::DeleteAllRides]),
        WriteOp::ClearUsers | WriteOp::ClearAll => (
            WriteOutcome::Done,
            vec![Mutation::DeleteAllRides, Mutation::DeleteAllUsers],
        ),
    })
}

/// Answers a query from the current state.
pub fn query<S: Store + ?Sized>(store: &mut S, op: &ReadOp) -> Result<ReadOutcome, StoreError> {
    Ok(match op {
        ReadOp::UserExists { username } => ReadOutcome::Exists {
            exists: store.user_exists(username)?,
        },
        ReadOp::ListUsers => ReadOutcome::Users {
            users: store.list_users()?,
        },
        ReadOp::UpcomingRides {
            source,
            destination,
            after,
        } => ReadOutcome::Rides {
            rides: RideList::new(&store.upcoming(*source, *destination, *after)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        },
        ReadOp::GetRide { ride_id } => ReadOutcome::Ride {
            ride: match store.ride(*ride_id)? {
                None => None,
                Some(ride) => Some(RideDetail {
                    ride_id: ride.id,
                    users: store.riders(ride.id)?,
                    created_by: ride.created_by,
                    timestamp: ride.timestamp,
                    source: ride.source,
                    destination: ride.destination,
                }),
            },
        },
        ReadOp::CountRides => ReadOutcome::Count {
            count: store.ride_count()?,
        },
        ReadOp::Checksum => ReadOutcome::Checksum {
            checksum: store.dump()?.checksum(),
            applied_index: store.applied_index()?,
        },
    })
}

/// What applying one log entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied now, with this outcome.
    Fresh(WriteOutcome),
    /// The request id was applied before (a redelivery): the first outcome, nothing changed.
    Duplicate(WriteOutcome),
    /// The index is at or below the applied index: already in the store.
    AlreadyApplied,
}

/// A store driven by log entries: the replica's whole database logic.
///
/// It is the one place mutations reach a store, so it keeps the state checksum up to date there
/// (for every store alike) instead of reading the whole store for each digest: computed in full
/// once, on first need, then moved by each commit's mutations.
pub struct StateMachine<S> {
    store: S,
    /// The checksum of the store's committed state; `None` until first needed, and again after
    /// anything that may have changed the store behind its back.
    checksum: Option<StateChecksum>,
}

impl<S: Store> StateMachine<S> {
    pub fn new(store: S) -> Self {
        StateMachine {
            store,
            checksum: None,
        }
    }

    /// A machine on a store whose state checksum is already known (a verified snapshot's), so
    /// the first digest does not read every row.
    pub fn with_checksum(store: S, checksum: StateChecksum) -> Self {
        StateMachine {
            store,
            checksum: Some(checksum),
        }
    }

    /// Writes a snapshot of the committed state to `to` (see [`Store::export`]).
    pub fn export(&mut self, to: &Path) -> Result<(), StoreError> {
        self.store.export(to)
    }

    /// The store itself. Whoever holds it may change it, so the running checksum is forgotten
    /// (and recomputed in full when next needed).
    pub fn store(&mut self) -> &mut S {
        self.checksum = None;
        &mut self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    pub fn applied_index(&mut self) -> Result<u64, StoreError> {
        self.store.applied_index()
    }

    /// The state checksum, kept up to date as mutations apply.
    pub fn checksum(&mut self) -> Result<u64, StoreError> {
        Ok(self.running_checksum()?.value())
    }

    /// The running checksum's parts (what a snapshot carries).
    pub fn checksum_parts(&mut self) -> Result<StateChecksum, StoreError> {
        self.running_checksum()
    }

    /// The state checksum recomputed from every row, leaving the running one as it is: what
    /// the running one must always equal.
    pub fn full_checksum(&mut self) -> Result<u64, StoreError> {
        Ok(StateChecksum::full(&mut self.store)?.value())
    }

    fn running_checksum(&mut self) -> Result<StateChecksum, StoreError> {
        match self.checksum {
            Some(checksum) => Ok(checksum),
            None => {
                let checksum = StateChecksum::full(&mut self.store)?;
                self.checksum = Some(checksum);
                Ok(checksum)
            }
        }
    }

    /// Commits, and moves the running checksum over the commit's mutations once it holds.
    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        let after = if commit.mutations.is_empty() {
            None
        } else {
            let before = self.running_checksum()?;
            Some(before.after(&mut self.store, &commit.mutations)?)
        };
        self.store.commit(commit)?;
        if after.is_some() {
            self.checksum = after;
        }
        Ok(())
    }

    /// Applies the write at log `index`, at most once per index and per request id.
    pub fn apply(
        &mut self,
        index: u64,
        request: &RequestId,
        op: &WriteOp,
    ) -> Result<Applied, StoreError> {
        if index <= self.store.applied_index()? {
            return Ok(Applied::AlreadyApplied);
        }
        self.apply_one(index, request, op)
    }

    /// Applies the writes of one log record (a commit group of the master's), in order, all at
    /// `index`: each at most once per request id (a later write of the group sees the earlier
    /// ones), and the record at most once. Whoever needs the record applied whole or not at all
    /// across a crash runs this inside [`StateMachine::grouped`], as the worker does.
    pub fn apply_record<'a>(
        &mut self,
        index: u64,
        writes: impl IntoIterator<Item = (&'a RequestId, &'a WriteOp)>,
    ) -> Result<Vec<Applied>, StoreError> {
        let writes = writes.into_iter();
        if index <= self.store.applied_index()? {
            return Ok(writes.map(|_| Applied::AlreadyApplied).collect());
        }
        let mut applied = Vec::with_capacity(writes.size_hint().0);
        for (request, op) in writes {
            applied.push(self.apply_one(index, request, op)?);
        }
        if applied.is_empty() {
            self.skip(index)?;
        }
        Ok(applied)
    }

    /// One write at `index`, which is above the applied index or equal to it (an earlier write
    /// of the same record).
    fn apply_one(
        &mut self,
        index: u64,
        request: &RequestId,
        op: &WriteOp,
    ) -> Result<Applied, StoreError> {
        if let Some(first) = self.store.applied_request(request)? {
            self.commit(Commit {
                index,
                request: None,
                mutations: vec![],
            })?;
            return Ok(Applied::Duplicate(first));
        }
        let (outcome, mutations) = decide(&mut self.store, op)?;
        self.commit(Commit {
            index,
            request: Some((request.clone(), outcome.clone())),
            mutations,
        })?;
        Ok(Applied::Fresh(outcome))
    }

    /// Advances the applied index over a log entry that changes no data (an epoch marker, or an
    /// entry of a deposed master).
    pub fn skip(&mut self, index: u64) -> Result<(), StoreError> {
        if index > self.store.applied_index()? {
            self.commit(Commit {
                index,
                request: None,
                mutations: vec![],
            })?;
        }
        Ok(())
    }

    /// Answers a query; a checksum from the running value, not by reading every row.
    pub fn read(&mut self, op: &ReadOp) -> Result<ReadOutcome, StoreError> {
        match op {
            ReadOp::Checksum => Ok(ReadOutcome::Checksum {
                checksum: self.checksum()?,
                applied_index: self.store.applied_index()?,
            }),
            _ => query(&mut self.store, op),
        }
    }

    /// Runs `f`, which applies several entries, as one group of commits: durable together
    /// when `f` succeeds, dropped together when it fails. Whoever answers for an entry applied
    /// in `f` must wait until this returns.
    pub fn grouped<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.store.begin_group()?;
        let result = f(self);
        let ended = self.store.end_group(result.is_ok());
        if result.is_err() || ended.is_err() {
            // What stayed of the group depends on the store (a memory store keeps it all):
            // recompute the checksum when next needed rather than guess.
            self.checksum = None;
        }
        match (result, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(e.into()),
            // The error that ended the group is the one to report.
            (Err(e), _) => Err(e),
        }
    }
}

/// A boxed store is a store, so replicas can choose theirs at run time.
impl<S: Store + ?Sized> Store for Box<S> {
    fn reader(&self) -> Result<Option<Box<dyn SnapshotReader>>, StoreError> {
        (**self).reader()
    }
    fn user_exists(&mut self, username: &Username) -> Result<bool, StoreError> {
        (**self).user_exists(username)
    }
    fn list_users(&mut self) -> Result<Vec<Username>, StoreError> {
        (**self).list_users()
    }
    fn ride(&mut self, id: RideId) -> Result<Option<Ride>, StoreError> {
        (**self).ride(id)
    }
    fn password_hash(&mut self, username: &Username) -> Result<Option<String>, StoreError> {
        (**self).password_hash(username)
    }
    fn rides_of(&mut self, username: &Username) -> Result<Vec<RideId>, StoreError> {
        (**self).rides_of(username)
    }
    fn riders(&mut self, id: RideId) -> Result<Vec<Username>, StoreError> {
        (**self).riders(id)
    }
    fn upcoming(
        &mut self,
        source: Area,
        destination: Area,
        after: Timestamp,
    ) -> Result<Vec<RideSummary>, StoreError> {
        (**self).upcoming(source, destination, after)
    }
    fn ride_count(&mut self) -> Result<u64, StoreError> {
        (**self).ride_count()
    }
    fn next_ride_id(&mut self) -> Result<u64, StoreError> {
        (**self).next_ride_id()
    }
    fn applied_request(&mut self, id: &RequestId) -> Result<Option<WriteOutcome>, StoreError> {
        (**self).applied_request(id)
    }
    fn applied_index(&mut self) -> Result<u64, StoreError> {
        (**self).applied_index()
    }
    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        (**self).commit(commit)
    }
    fn begin_group(&mut self) -> Result<(), StoreError> {
        (**self).begin_group()
    }
    fn end_group(&mut self, keep: bool) -> Result<(), StoreError> {
        (**self).end_group(keep)
    }
    fn dump(&mut self) -> Result<Dump, StoreError> {
        (**self).dump()
    }
    fn export(&mut self, to: &Path) -> Result<(), StoreError> {
        (**self).export(to)
    }
}
