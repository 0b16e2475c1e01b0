//! The `rideshare` binary's library: command-line configuration, process wiring and (as the
//! distributed mode grows) the adapters to the real engines. `main.rs` only parses and calls in.

pub mod adapters;
pub mod args;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod engines;
pub mod logging;
pub mod observe;
pub mod roles;
pub mod serve;
pub mod status;
pub mod up;
