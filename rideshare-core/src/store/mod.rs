//! The two `Store` implementations: in-memory (tests, simulations) and SQLite (every replica
//! that must survive a restart). Both pass the same equivalence property test.

pub mod mem;
pub mod sqlite;

pub use mem::MemStore;
pub use sqlite::SqliteStore;
