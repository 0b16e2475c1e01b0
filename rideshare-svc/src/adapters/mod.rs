//! The real engines behind the DBaaS traits: RabbitMQ (`Broker`, `Log` as a stream),
//! ZooKeeper (`Coordinator`), Docker and OS processes (`Runtime`), SQLite through diesel lives
//! in rideshare-core. Only this module opens sockets to those engines.

pub mod docker;
pub mod process;
pub mod rabbit;
pub mod zk;
