//! The HTTP services of the contract (SPEC.md) as axum `Router`s.
//!
//! Each service is a function returning a `Router`, so tests drive it with `oneshot` and no
//! socket. Services are generic over the [`crate::db::Db`] client and never touch a store.

pub mod common;
pub mod gateway;
pub mod observe;
pub mod rides;
pub mod users;

pub use common::{ApiError, RequestCounter, ServiceLimits};
pub use gateway::{gateway_router, GatewayConfig};
pub use rides::{rides_router, RidesConfig};
pub use users::{users_router, PasswordHashing};
