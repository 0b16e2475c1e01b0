//! The users service: `PUT/GET /api/v1/users`, `DELETE /api/v1/users/{username}`,
//! `POST /api/v1/db/clear`, `GET/DELETE /api/v1/_count`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::Router;

use super::common::{
    clear_with, empty, health_route, json_object, list_or_no_content, not_found, string_field,
    unexpected_read, with_counter, ApiError, RequestCounter, ServiceLimits,
};
use super::hashing::{HashError, Hasher, PasswordHashing};
use super::openapi::{openapi_route, EdgeResponses, Empty, ErrorBody, NewUser};
use crate::db::Db;
use crate::domain::{PasswordDigest, Username};
use crate::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};

/// The users service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "RideShare users service", description = "SPEC.md, users service"),
    paths(add_user, list_users, delete_user, clear, super::common::count, super::common::reset_count, super::common::health),
    modifiers(&EdgeResponses)
)]
pub struct UsersApi;

struct UsersState<D> {
    db: D,
    /// The pool, or why it could not start (bad cost flags): sign-ups then answer 503.
    hasher: Result<Hasher, String>,
}

/// The users service.
pub fn users_router<D: Db>(db: D, hashing: PasswordHashing, limits: ServiceLimits) -> Router {
    let hasher = Hasher::start(hashing).map_err(|e| {
        tracing::error!(error = %e, "password hashing cannot start; sign-ups will answer 503");
        e.to_string()
    });
    let state = Arc::new(UsersState { db, hasher });
    let counted = Router::new()
        .route("/api/v1/users", put(add_user::<D>).get(list_users::<D>))
        .route("/api/v1/users/{username}", delete(delete_user::<D>));
    let uncounted = Router::new()
        .route("/api/v1/db/clear", limits.admin_only(post(clear::<D>)))
        .merge(health_route())
        .merge(openapi_route(&<UsersApi as utoipa::OpenApi>::openapi()))
        .fallback(not_found);
    let service = with_counter(counted, Arc::new(RequestCounter::default()), &limits)
        .merge(limits.apply(uncounted))
        .with_state(state);
    limits.edge(service)
}

#[utoipa::path(put, path = "/api/v1/users", tag = "users",
    request_body(content = NewUser, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Empty),
        (status = 400, description = "User exists, a field missing or not a string, password not 40 hex digits, malformed JSON", body = ErrorBody),
    ))]
async fn add_user<D: Db>(
    State(state): State<Arc<UsersState<D>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let username = Username::parse(string_field(&body, "username")?)?;
    let digest = PasswordDigest::parse(string_field(&body, "password")?)?;
    // The cheap check first: a taken name costs no hash. The write still decides, so two
    // sign-ups racing for one name get one 201 and one 400.
    if user_exists(&state.db, &username).await? {
        return Err(user_exists_error(&username));
    }
    let hasher = state
        .hasher
        .as_ref()
        .map_err(|e| ApiError::unavailable(e.clone()))?;
    let _hashing =
        super::observe::InFlight::new(metrics::gauge!("rideshare_password_hashes_in_flight"));
    let password_hash = match hasher.hash(digest).await {
        Ok(hash) => hash,
        Err(HashError::Busy) => return Ok(busy()),
        Err(e) => {
            tracing::error!(error = %e, "password hashing failed");
            return Err(ApiError::unavailable("password hashing failed"));
        }
    };
    match state
        .db
        .write(WriteOp::AddUser {
            username: username.clone(),
            password_hash,
        })
        .await?
    {
        WriteOutcome::Done => Ok(empty(StatusCode::CREATED)),
        WriteOutcome::UserExists => Err(user_exists_error(&username)),
        other => Err(unexpected(other)),
    }
}

async fn user_exists<D: Db>(db: &D, username: &Username) -> Result<bool, ApiError> {
    match db
        .read(ReadOp::UserExists {
            username: username.clone(),
        })
        .await?
    {
        ReadOutcome::Exists { exists } => Ok(exists),
        other => Err(unexpected_read(other)),
    }
}

fn user_exists_error(username: &Username) -> ApiError {
    ApiError::bad_request(format!("user {username:?} already exists"))
}

/// 503 with `Retry-After`: every hasher is busy and the queue is full.
fn busy() -> Response {
    let mut response =
        ApiError::unavailable("too many sign-ups at once; try again shortly").into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses(
        (status = 200, description = "Usernames in creation order", body = [String]),
        (status = 204, description = "No users"),
    ))]
async fn list_users<D: Db>(State(state): State<Arc<UsersState<D>>>) -> Result<Response, ApiError> {
    match state.db.read(ReadOp::ListUsers).await? {
        ReadOutcome::Users { users } => Ok(list_or_no_content(users)),
        other => Err(unexpected_read(other)),
    }
}

#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "The username, percent-encoded")),
    responses(
        (status = 200, description = "Deleted, with the rides the user created", body = Empty),
        (status = 400, description = "No such user", body = ErrorBody),
    ))]
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

#[utoipa::path(post, path = "/api/v1/db/clear", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every user (and so every ride) deleted", body = Empty),
        (status = 400, description = "The database could not be cleared", body = ErrorBody),
    ))]
async fn clear<D: Db>(State(state): State<Arc<UsersState<D>>>) -> Result<Response, ApiError> {
    clear_with(&state.db, WriteOp::ClearUsers).await
}

pub(crate) fn unexpected(outcome: WriteOutcome) -> ApiError {
    ApiError::unavailable(format!("unexpected write outcome {outcome:?}"))
}
