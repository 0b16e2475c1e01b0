//! RideShare's domain and HTTP services.
//!
//! - [`area`], [`domain`]: parsed newtypes (areas, usernames, password digests, timestamps).
//! - [`ops`]: the typed database operations, the only language spoken to any database.
//! - [`machine`]: the deterministic state machine and the [`machine::Store`] trait; [`store`] has
//!   the in-memory and SQLite stores.
//! - [`checksum`]: the state checksum, a sum of row hashes kept up to date as mutations apply.
//! - [`db`]: the [`db::Db`] client trait the services talk through, and [`db::LocalDb`].
//! - [`api`]: the users, rides and gateway services as axum `Router`s generic over a `Db`.
//!
//! This crate opens no sockets to brokers or coordinators; time comes in through [`clock::Clock`].

pub mod api;
pub mod area;
pub mod checksum;
pub mod clock;
pub mod db;
pub mod domain;
pub mod error;
pub mod machine;
pub mod ops;
pub mod store;

pub use area::Area;
pub use domain::{PasswordDigest, RideId, Timestamp, Username};
pub use error::{StoreError, ValidationError};
