//! A `Store` on SQLite through diesel, with the schema as embedded migrations.
//!
//! One connection per store; the replica owning it is its only user. WAL with
//! `synchronous=NORMAL`: a commit survives a process crash (the replicated log, not this file,
//! is what makes a write durable across machines).

use std::path::Path;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::area::Area;
use crate::domain::{RideId, Timestamp, Username};
use crate::error::StoreError;
use crate::machine::{
    query, Commit, Dump, Mutation, Ride, SnapshotReader, SnapshotReads, Store, REQUEST_MEMORY,
};
use crate::ops::{ReadOp, RequestId, RideSummary, WriteOutcome};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

mod schema {
    diesel::table! {
        users (seq) {
            seq -> BigInt,
            username -> Text,
            password_hash -> Text,
        }
    }
    diesel::table! {
        rides (id) {
            id -> BigInt,
            created_by -> Text,
            at -> BigInt,
            source -> Integer,
            destination -> Integer,
        }
    }
    diesel::table! {
        riders (seq) {
            seq -> BigInt,
            ride_id -> BigInt,
            username -> Text,
        }
    }
    diesel::table! {
        meta (key) {
            key -> Text,
            value -> BigInt,
        }
    }
    diesel::table! {
        requests (request_id) {
            request_id -> Text,
            log_index -> BigInt,
            outcome -> Text,
        }
    }
}

use schema::{meta, requests, riders, rides, users};

fn db_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Sqlite(Box::new(e))
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} does not fit i64")))
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative value {value}")))
}

/// Page cache of the connection that applies the log, in KiB. SQLite's default (2 MiB) holds
/// too few of a large store's index pages: every write to the random-keyed indexes (request
/// ids, the listing index) then reads pages back from the OS, and catching up after a snapshot
/// of a million rides ran at 4,500 entries/s.
pub const APPLY_CACHE_KIB: u32 = 64 * 1024;
/// WAL pages after which a commit checkpoints (SQLite's default is 1,000, 4 MiB): each
/// checkpoint writes the pages back and fsyncs the file, and with writes spread over large
/// random-keyed indexes that was a checkpoint every few hundred entries. 16,384 pages (64 MiB)
/// took a catch-up on a million-ride copy from 5,550 to 9,270 entries/s (a SQLite test of the
/// same statements, eighth session).
pub const APPLY_CHECKPOINT_PAGES: u32 = 16_384;

pub struct SqliteStore {
    conn: SqliteConnection,
    /// The database file, for readers on other connections; `None` in memory.
    path: Option<String>,
    /// A group (`begin_group`) holds the transaction open: commits then run inside it, and
    /// the bookkeeping rows wait in `pending` until it ends.
    grouped: bool,
    pending: Pending,
}

/// The bookkeeping a group's commits changed, written once when the group ends (`flush`)
/// rather than by every commit: the applied index and the next ride id (one `meta` row each)
/// and the pruning of old request ids. Each was written by every write of a commit group; a
/// commit group of creates now writes them once. Nothing outside the open transaction can see
/// the difference, and the store's own reads (`applied_index`, `next_ride_id`) answer from here.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    applied_index: Option<i64>,
    next_ride_id: Option<i64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and runs pending migrations. The
    /// connection that applies the log keeps up to [`APPLY_CACHE_KIB`] of pages in memory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut store = Self::open_file(path)?;
        store
            .conn
            .batch_execute(&format!(
                "PRAGMA cache_size = -{APPLY_CACHE_KIB}; PRAGMA wal_autocheckpoint = {APPLY_CHECKPOINT_PAGES};"
            ))
            .map_err(db_err)?;
        Ok(store)
    }

    /// Another connection to the file at `path`, with SQLite's default page cache (readers).
    fn open_reader(path: &Path) -> Result<Self, StoreError> {
        Self::open_file(path)
    }

    fn open_file(path: &Path) -> Result<Self, StoreError> {
        let url = path
            .to_str()
            .ok_or_else(|| StoreError::Corrupt(format!("path {path:?} is not UTF-8")))?;
        let mut store = Self::connect(url)?;
        store.path = Some(url.to_owned());
        Ok(store)
    }

    /// A private in-memory database (for tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::connect(":memory:")
    }

    fn connect(url: &str) -> Result<Self, StoreError> {
        let mut conn = SqliteConnection::establish(url).map_err(db_err)?;
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db_err)?;
        conn.run_pending_migrations(MIGRATIONS)
            .map_err(StoreError::Sqlite)?;
        Ok(SqliteStore {
            conn,
            path: None,
            grouped: false,
            pending: Pending::default(),
        })
    }

    fn meta_value(&mut self, key: &str) -> Result<u64, StoreError> {
        let value: i64 = meta::table
            .filter(meta::key.eq(key))
            .select(meta::value)
            .first(&mut self.conn)
            .map_err(db_err)?;
        to_u64(value)
    }
}

fn row_to_ride(row: (i64, String, i64, i32, i32)) -> Result<Ride, StoreError> {
    let (id, created_by, at, source, destination) = row;
    let area = |n: i32| {
        u16::try_from(n)
            .ok()
            .and_then(|n| Area::new(n).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("bad area {n}")))
    };
    Ok(Ride {
        id: RideId(to_u64(id)?),
        created_by: parse_user(created_by)?,
        timestamp: timestamp(at)?,
        source: area(source)?,
        destination: area(destination)?,
    })
}

fn timestamp(at: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_seconds(at).ok_or_else(|| StoreError::Corrupt(format!("bad time {at}")))
}

fn parse_user(name: String) -> Result<Username, StoreError> {
    Username::try_from(name).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn apply_mutation(conn: &mut SqliteConnection, mutation: Mutation) -> QueryResult<()> {
    match mutation {
        Mutation::InsertUser {
            username,
            password_hash,
        } => {
            diesel::insert_into(users::table)
                .values((
                    users::username.eq(username.as_str()),
                    users::password_hash.eq(password_hash),
                ))
                .execute(conn)?;
        }
        Mutation::DeleteUserCascade { username } => {
            let name = username.as_str();
            let own_rides: Vec<i64> = rides::table
                .filter(rides::created_by.eq(name))
                .select(rides::id)
                .load(conn)?;
            diesel::delete(riders::table.filter(riders::ride_id.eq_any(own_rides)))
                .execute(conn)?;
            diesel::delete(rides::table.filter(rides::created_by.eq(name))).execute(conn)?;
            diesel::delete(riders::table.filter(riders::username.eq(name))).execute(conn)?;
            diesel::delete(users::table.filter(users::username.eq(name))).execute(conn)?;
        }
        Mutation::InsertRide(ride) => {
            diesel::insert_into(rides::table)
                .values((
                    rides::id.eq(i64::try_from(ride.id.0).unwrap_or(i64::MAX)),
                    rides::created_by.eq(ride.created_by.as_str()),
                    rides::at.eq(ride.timestamp.to_seconds()),
                    rides::source.eq(i32::from(ride.source.number())),
                    rides::destination.eq(i32::from(ride.destination.number())),
                ))
                .execute(conn)?;
        }
        Mutation::AddRider {
            ride_id, username, ..
        } => {
            diesel::insert_or_ignore_into(riders::table)
                .values((
                    riders::ride_id.eq(i64::try_from(ride_id.0).unwrap_or(i64::MAX)),
                    riders::username.eq(username.as_str()),
                ))
                .execute(conn)?;
        }
        Mutation::DeleteRide { ride_id } => {
            let id = i64::try_from(ride_id.0).unwrap_or(i64::MAX);
            diesel::delete(riders::table.filter(riders::ride_id.eq(id))).execute(conn)?;
            diesel::delete(rides::table.filter(rides::id.eq(id))).execute(conn)?;
        }
        Mutation::SetNextRideId(next) => set_meta(conn, "next_ride_id", db_int(next))?,
        Mutation::DeleteAllRides => {
            diesel::delete(riders::table).execute(conn)?;
            diesel::delete(rides::table).execute(conn)?;
        }
        Mutation::DeleteAllUsers => {
            diesel::delete(users::table).execute(conn)?;
        }
    }
    Ok(())
}

/// An id or index as stored (SQLite's integers are signed; no id reaches `i64::MAX`).
fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn set_meta(conn: &mut SqliteConnection, key: &str, value: i64) -> QueryResult<()> {
    diesel::update(meta::table.filter(meta::key.eq(key)))
        .set(meta::value.eq(value))
        .execute(conn)?;
    Ok(())
}

/// Remembers a write's request id and outcome (for deduplication), at its log index.
fn insert_request(
    conn: &mut SqliteConnection,
    request: Option<(String, String)>,
    index: i64,
) -> QueryResult<()> {
    if let Some((id, outcome)) = request {
        diesel::insert_or_ignore_into(requests::table)
            .values((
                requests::request_id.eq(id),
                requests::log_index.eq(index),
                requests::outcome.eq(outcome),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Writes the bookkeeping of the commits since the last flush: the next ride id, the applied
/// index, and the request ids now older than `REQUEST_MEMORY` entries pruned.
fn flush(conn: &mut SqliteConnection, pending: Pending) -> QueryResult<()> {
    if let Some(next) = pending.next_ride_id {
        set_meta(conn, "next_ride_id", next)?;
    }
    if let Some(index) = pending.applied_index {
        let horizon = index.saturating_sub(db_int(REQUEST_MEMORY));
        diesel::delete(requests::table.filter(requests::log_index.le(horizon))).execute(conn)?;
        set_meta(conn, "applied_index", index)?;
    }
    Ok(())
}

/// A reader is another connection to the file; each batch of reads is one read transaction, so
/// every answer and the applied index come from the same committed state.
impl SnapshotReader for SqliteStore {
    fn read_snapshot(&mut self, ops: &[ReadOp]) -> Result<SnapshotReads, StoreError> {
        AnsiTransactionManager::begin_transaction_sql(&mut self.conn, "BEGIN").map_err(db_err)?;
        let read = self.applied_index().map(|applied_index| SnapshotReads {
            applied_index,
            outcomes: ops.iter().map(|op| query(self, op)).collect(),
        });
        // The transaction only read: ending it either way changes nothing.
        AnsiTransactionManager::commit_transaction(&mut self.conn).map_err(db_err)?;
        read
    }

    fn export(&mut self, to: &Path) -> Result<u64, StoreError> {
        vacuum_into(&mut self.conn, to)?;
        // The copy's own applied index: the state VACUUM INTO read, whatever was committed
        // since on this file.
        SqliteStore::open(to)?.applied_index()
    }
}

/// `VACUUM INTO`: SQLite's own consistent copy of a database (one read transaction, pages
/// written compactly into a new file), which readers on other connections do not block.
fn vacuum_into(conn: &mut SqliteConnection, to: &Path) -> Result<(), StoreError> {
    let to = to
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("path {to:?} is not UTF-8")))?;
    diesel::sql_query("VACUUM INTO ?")
        .bind::<diesel::sql_types::Text, _>(to)
        .execute(conn)
        .map_err(db_err)?;
    Ok(())
}

impl Store for SqliteStore {
    fn reader(&self) -> Result<Option<Box<dyn SnapshotReader>>, StoreError> {
        match &self.path {
            Some(path) => Ok(Some(Box::new(SqliteStore::open_reader(Path::new(path))?))),
            None => Ok(None),
        }
    }

    fn user_exists(&mut self, username: &Username) -> Result<bool, StoreError> {
        let found: Option<i64> = users::table
            .filter(users::username.eq(username.as_str()))
            .select(users::seq)
            .first(&mut self.conn)
            .optional()
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    fn list_users(&mut self) -> Result<Vec<Username>, StoreError> {
        let names: Vec<String> = users::table
            .order(users::seq.asc())
            .select(users::username)
            .load(&mut self.conn)
            .map_err(db_err)?;
        names.into_iter().map(parse_user).collect()
    }

    fn ride(&mut self, id: RideId) -> Result<Option<Ride>, StoreError> {
        let Ok(id) = i64::try_from(id.0) else {
            return Ok(None);
        };
        let row: Option<(i64, String, i64, i32, i32)> = rides::table
            .filter(rides::id.eq(id))
            .first(&mut self.conn)
            .optional()
            .map_err(db_err)?;
        row.map(row_to_ride).transpose()
    }

    fn password_hash(&mut self, username: &Username) -> Result<Option<String>, StoreError> {
        users::table
            .filter(users::username.eq(username.as_str()))
            .select(users::password_hash)
            .first(&mut self.conn)
            .optional()
            .map_err(db_err)
    }

    fn rides_of(&mut self, username: &Username) -> Result<Vec<RideId>, StoreError> {
        let name = username.as_str();
        let mut ids: Vec<i64> = rides::table
            .filter(rides::created_by.eq(name))
            .select(rides::id)
            .load(&mut self.conn)
            .map_err(db_err)?;
        let joined: Vec<i64> = riders::table
            .filter(riders::username.eq(name))
            .select(riders::ride_id)
            .load(&mut self.conn)
            .map_err(db_err)?;
        ids.extend(joined);
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|id| Ok(RideId(to_u64(id)?))).collect()
    }

    fn riders(&mut self, id: RideId) -> Result<Vec<Username>, StoreError> {
        let Ok(id) = i64::try_from(id.0) else {
            return Ok(vec![]);
        };
        let names: Vec<String> = riders::table
            .filter(riders::ride_id.eq(id))
            .order(riders::seq.asc())
            .select(riders::username)
            .load(&mut self.conn)
            .map_err(db_err)?;
        names.into_iter().map(parse_user).collect()
    }

    fn upcoming(
        &mut self,
        source: Area,
        destination: Area,
        after: Timestamp,
    ) -> Result<Vec<RideSummary>, StoreError> {
        // Only the listed columns, all in the index `rides_listing`: no table lookup per ride.
        let rows: Vec<(i64, String, i64)> = rides::table
            .filter(rides::source.eq(i32::from(source.number())))
            .filter(rides::destination.eq(i32::from(destination.number())))
            .filter(rides::at.gt(after.to_seconds()))
            .order((rides::at.asc(), rides::id.asc()))
            .select((rides::id, rides::created_by, rides::at))
            .load(&mut self.conn)
            .map_err(db_err)?;
        rows.into_iter()
            .map(|(id, created_by, at)| {
                Ok(RideSummary {
                    ride_id: RideId(to_u64(id)?),
                    username: parse_user(created_by)?,
                    timestamp: timestamp(at)?,
                })
            })
            .collect()
    }

    fn ride_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = rides::table
            .count()
            .get_result(&mut self.conn)
            .map_err(db_err)?;
        to_u64(n)
    }

    fn next_ride_id(&mut self) -> Result<u64, StoreError> {
        match self.pending.next_ride_id {
            Some(next) => to_u64(next),
            None => self.meta_value("next_ride_id"),
        }
    }

    fn applied_request(&mut self, id: &RequestId) -> Result<Option<WriteOutcome>, StoreError> {
        let text: Option<String> = requests::table
            .filter(requests::request_id.eq(&id.0))
            .select(requests::outcome)
            .first(&mut self.conn)
            .optional()
            .map_err(db_err)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    fn applied_index(&mut self) -> Result<u64, StoreError> {
        match self.pending.applied_index {
            Some(index) => to_u64(index),
            None => self.meta_value("applied_index"),
        }
    }

    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        let index = to_i64(commit.index)?;
        let request = match commit.request {
            Some((id, outcome)) => Some((
                id.0,
                serde_json::to_string(&outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )),
            None => None,
        };
        if !self.grouped {
            return self
                .conn
                .immediate_transaction(|conn| {
                    for mutation in commit.mutations {
                        apply_mutation(conn, mutation)?;
                    }
                    insert_request(conn, request, index)?;
                    flush(
                        conn,
                        Pending {
                            applied_index: Some(index),
                            next_ride_id: None,
                        },
                    )
                })
                .map_err(db_err);
        }
        // Inside the group's transaction: a failure here fails the group, which the caller then
        // drops whole (`end_group(false)`, which forgets `pending` too).
        let mut pending = self.pending;
        let write = |conn: &mut SqliteConnection| {
            for mutation in commit.mutations {
                match mutation {
                    Mutation::SetNextRideId(next) => pending.next_ride_id = Some(db_int(next)),
                    mutation => apply_mutation(conn, mutation)?,
                }
            }
            insert_request(conn, request, index)
        };
        write(&mut self.conn).map_err(db_err)?;
        pending.applied_index = Some(index);
        self.pending = pending;
        Ok(())
    }

    fn begin_group(&mut self) -> Result<(), StoreError> {
        if self.grouped {
            return Err(StoreError::Corrupt("commit groups do not nest".into()));
        }
        AnsiTransactionManager::begin_transaction_sql(&mut self.conn, "BEGIN IMMEDIATE")
            .map_err(db_err)?;
        self.grouped = true;
        Ok(())
    }

    fn end_group(&mut self, keep: bool) -> Result<(), StoreError> {
        if !std::mem::replace(&mut self.grouped, false) {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        if keep {
            if let Err(e) = flush(&mut self.conn, pending) {
                let _ = AnsiTransactionManager::rollback_transaction(&mut self.conn);
                return Err(db_err(e));
            }
            AnsiTransactionManager::commit_transaction(&mut self.conn).map_err(db_err)
        } else {
            AnsiTransactionManager::rollback_transaction(&mut self.conn).map_err(db_err)
        }
    }

    fn dump(&mut self) -> Result<Dump, StoreError> {
        let user_rows: Vec<(String, String)> = users::table
            .order(users::seq.asc())
            .select((users::username, users::password_hash))
            .load(&mut self.conn)
            .map_err(db_err)?;
        let users = user_rows
            .into_iter()
            .map(|(u, h)| Ok((parse_user(u)?, h)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let ride_rows: Vec<(i64, String, i64, i32, i32)> = rides::table
            .order(rides::id.asc())
            .load(&mut self.conn)
            .map_err(db_err)?;
        let mut rides_out = Vec::with_capacity(ride_rows.len());
        for row in ride_rows {
            let ride = row_to_ride(row)?;
            let joined = self.riders(ride.id)?;
            rides_out.push((ride, joined));
        }
        Ok(Dump {
            users,
            rides: rides_out,
            next_ride_id: self.next_ride_id()?,
        })
    }

    fn export(&mut self, to: &Path) -> Result<(), StoreError> {
        if self.grouped {
            return Err(StoreError::Corrupt(
                "cannot export inside a commit group".into(),
            ));
        }
        vacuum_into(&mut self.conn, to)
    }
}
