//! The HTTP services of the contract (SPEC.md) as axum `Router`s.
//!
//! Each service is a function returning a `Router`, so tests drive it with `oneshot` and no
//! socket. Services are generic over the [`crate::db::Db`] client and never touch a store.

pub mod admin;
pub mod common;
pub mod gateway;
pub mod hashing;
pub mod observe;
pub mod openapi;
pub mod path;
pub mod rides;
pub mod upstream;
pub mod users;

pub use admin::AdminToken;
pub use common::{ApiError, RequestCounter, ServiceLimits};
pub use gateway::{gateway_router, GatewayConfig};
pub use hashing::PasswordHashing;
pub use rides::{rides_router, RidesConfig};
pub use upstream::{LocalRouter, Upstream};
pub use users::users_router;
