//! The users service: `PUT/GET /api/v1/users`, `DELETE /api/v1/users/{username}`,
//! `POST /api/v1/db/clear`, `GET/DELETE /api/v1/_count`.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post, put};
use axum::Router;

use super::common::{
    clear_with, empty, health_route, json_object, list_or_no_content, not_found, string_field,
    unexpected_read, with_counter, ApiError, RequestCounter, ServiceLimits,
};
use crate::db::Db;
use crate::domain::{PasswordDigest, Username};
use crate::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};

/// How the client's SHA-1 digest is hashed again before it reaches the database (argon2id).
#[derive(Clone, Copy, Debug)]
pub struct PasswordHashing {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
}

impl Default for PasswordHashing {
    /// OWASP's argon2id minimum: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordHashing {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
        }
    }
}

impl PasswordHashing {
    /// The cheapest real argon2id: for tests only.
    pub fn fast_for_tests() -> Self {
        PasswordHashing {
            m_cost_kib: 8,
            t_cost: 1,
        }
    }

    /// A PHC string (`$argon2id$v=19$...`) with a random salt.
    pub fn hash(&self, digest: &PasswordDigest) -> Result<String, ApiError> {
        let params = Params::new(self.m_cost_kib, self.t_cost, 1, None)
            .map_err(|e| ApiError::unavailable(format!("password hashing misconfigured: {e}")))?;
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(digest.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::unavailable(format!("password hashing failed: {e}")))
    }
}

struct UsersState<D> {
    db: D,
    hashing: PasswordHashing,
}

/// The users service.
pub fn users_router<D: Db>(db: D, hashing: PasswordHashing, limits: ServiceLimits) -> Router {
    let state = Arc::new(UsersState { db, hashing });
    let counted = Router::new()
        .route("/api/v1/users", put(add_user::<D>).get(list_users::<D>))
        .route("/api/v1/users/{username}", delete(delete_user::<D>));
    let uncounted = Router::new()
        .route("/api/v1/db/clear", post(clear::<D>))
        .merge(health_route())
        .fallback(not_found);
    with_counter(counted, Arc::new(RequestCounter::default()), &limits)
        .merge(limits.apply(uncounted))
        .with_state(state)
}

async fn add_user<D: Db>(
    State(state): State<Arc<UsersState<D>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let username = Username::parse(string_field(&body, "username")?)?;
    let digest = PasswordDigest::parse(string_field(&body, "password")?)?;
    let hashing = state.hashing;
    let _queued =
        super::observe::InFlight::new(metrics::gauge!("rideshare_password_hashes_in_flight"));
    let password_hash = tokio::task::spawn_blocking(move || hashing.hash(&digest))
        .await
        .map_err(|e| ApiError::unavailable(format!("password hashing task failed: {e}")))??;
    match state
        .db
        .write(WriteOp::AddUser {
            username: username.clone(),
            password_hash,
        })
        .await?
    {
        WriteOutcome::Done => Ok(empty(StatusCode::CREATED)),
        WriteOutcome::UserExists => Err(ApiError::bad_request(format!(
            "user {username:?} already exists"
        ))),
        other => Err(unexpected(other)),
    }
}

async fn list_users<D: Db>(State(state): State<Arc<UsersState<D>>>) -> Result<Response, ApiError> {
    match state.db.read(ReadOp::ListUsers).await? {
        ReadOutcome::Users { users } => Ok(list_or_no_content(users)),
        other => Err(unexpected_read(other)),
    }
}

async fn delete_user<D: Db>(
    State(state): State<Arc<UsersState<D>>>,
    Path(username): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(username) = Username::parse(&username) else {
        return Err(ApiError::bad_request("no such user"));
    };
    match state
        .db
        .write(WriteOp::DeleteUser {
            username: username.clone(),
        })
        .await?
    {
        WriteOutcome::Done => Ok(empty(StatusCode::OK)),
        WriteOutcome::NoSuchUser => {
            Err(ApiError::bad_request(format!("no such user {username:?}")))
        }
        other => Err(unexpected(other)),
    }
}

async fn clear<D: Db>(State(state): State<Arc<UsersState<D>>>) -> Result<Response, ApiError> {
    clear_with(&state.db, WriteOp::ClearUsers).await
}

pub(crate) fn unexpected(outcome: WriteOutcome) -> ApiError {
    ApiError::unavailable(format!("unexpected write outcome {outcome:?}"))
}
