//! RideShare's database service (DBaaS): the machinery behind the users and rides services.
//!
//! - Side effects behind one trait each, with an in-memory implementation beside it:
//!   [`broker::Broker`], [`log::Log`], [`coord::Coordinator`], [`runtime::Runtime`].
//! - [`protocol`]: the messages on the queues and in the log.
//! - [`policy`]: election and scaling as pure functions.
//! - [`registry`]: the coordinator's nodes, typed; [`retry`]: the one retry policy.
//! - [`worker`]: the one worker program (master or slave); [`orchestrator`]: the HTTP front.
//! - [`conformance`]: the suites every implementation of a trait must pass.
//!
//! Nothing here opens a socket to RabbitMQ, ZooKeeper or Docker: `rideshare-svc` brings those.

pub mod batch;
pub mod broker;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod conformance;
pub mod coord;
pub mod error;
pub mod log;
pub mod orchestrator;
pub mod policy;
pub mod protocol;
pub mod registry;
pub mod replica;
pub mod retry;
pub mod rpc;
pub mod runtime;
pub mod snapshot;
pub mod worker;

pub use error::{Error, Result};
