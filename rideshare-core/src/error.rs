//! Errors of the domain layer: what was wrong with an input, and what went wrong in a store.

use thiserror::Error;

/// Why an input was refused. Every variant becomes a 400 at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error(
        "unknown area {0:?}: areas are numbers 1..=198, as a JSON integer or a decimal string"
    )]
    UnknownArea(String),
    #[error("bad timestamp {0:?}: expected a real date as DD-MM-YYYY:SS-MM-HH")]
    BadTimestamp(String),
    #[error("bad username: {0}")]
    BadUsername(&'static str),
    #[error("bad password: must be exactly 40 hexadecimal digits (a SHA-1 digest)")]
    BadPassword,
    #[error("bad ride id {0:?}: expected an unsigned integer")]
    BadRideId(String),
}

/// A store failed to read or write. Not a domain outcome: those are result values.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite store failed")]
    Sqlite(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}
