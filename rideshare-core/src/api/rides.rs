//! The rides service: `POST/GET /api/v1/rides`, `GET/POST/DELETE /api/v1/rides/{rideId}`,
//! `GET /api/v1/rides/count`, `POST /api/v1/db/clear`, `GET/DELETE /api/v1/_count`.
//!
//! It checks that a user exists the way the contract says: `GET /api/v1/users` through the
//! gateway, with an `Origin` header naming its own public address. It never reads users itself.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::common::{
    clear_with, empty, field, health_route, json_object, not_found, ride_list_or_no_content,
    string_field, unexpected_read, with_counter, ApiError, RequestCounter, ServiceLimits,
};
use super::openapi::{openapi_route, EdgeResponses, Empty, ErrorBody, JoinRide, NewRide};
use super::upstream::Upstream;
use super::users::unexpected;
use crate::area::Area;
use crate::clock::Clock;
use crate::db::Db;
use crate::domain::{RideId, Timestamp, Username};
use crate::ops::{ReadOp, ReadOutcome, RideDetail, RideSummary, WriteOp, WriteOutcome};

/// Where the rides service finds users, and who it says it is.
#[derive(Clone, Debug)]
pub struct RidesConfig {
    /// The gateway (load balancer): over HTTP (`Upstream::http`, each call bounded), or in
    /// this process.
    pub gateway: Upstream,
    /// This service's own public address, sent as `Origin` on the user check.
    pub origin: String,
}

/// Most bytes of the users list a user check reads: about 300,000 usernames.
const USERS_LIST_BYTES: usize = 16 * 1024 * 1024;

/// The rides service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "RideShare rides service", description = "SPEC.md, rides service"),
    paths(create_ride, list_rides, get_ride, join_ride, delete_ride, count_rides, clear, super::common::count, super::common::reset_count, super::common::health),
    modifiers(&EdgeResponses)
)]
pub struct RidesApi;

struct RidesState<D> {
    db: D,
    clock: Arc<dyn Clock>,
    config: RidesConfig,
}

/// The rides service.
pub fn rides_router<D: Db>(
    db: D,
    clock: Arc<dyn Clock>,
    config: RidesConfig,
    limits: ServiceLimits,
) -> Router {
    let state = Arc::new(RidesState { db, clock, config });
    let counted = Router::new()
        .route("/api/v1/rides", post(create_ride::<D>).get(list_rides::<D>))
        .route("/api/v1/rides/count", get(count_rides::<D>))
        .route(
            "/api/v1/rides/{ride_id}",
            get(get_ride::<D>)
                .post(join_ride::<D>)
                .delete(delete_ride::<D>),
        );
    let uncounted = Router::new()
        .route("/api/v1/db/clear", limits.admin_only(post(clear::<D>)))
        .merge(health_route())
        .merge(openapi_route(&<RidesApi as utoipa::OpenApi>::openapi()))
        .fallback(not_found);
    let service = with_counter(counted, Arc::new(RequestCounter::default()), &limits)
        .merge(limits.apply(uncounted))
        .with_state(state);
    limits.edge(service)
}

impl<D: Db> RidesState<D> {
    /// Asks the users service, through the gateway, whether `user` exists.
    async fn user_exists(&self, user: &Username) -> Result<bool, ApiError> {
        let answer = self
            .config
            .gateway
            .get(
                "/api/v1/users",
                &[(header::ORIGIN, &self.config.origin)],
                USERS_LIST_BYTES,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "user check: users service unreachable");
                ApiError::unavailable("the users service is unavailable; try again shortly")
            })?;
        match answer {
            (StatusCode::NO_CONTENT, _) => Ok(false),
            (StatusCode::OK, body) => {
                let users: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
                    tracing::warn!(error = %e, "user check: users service sent a bad list");
                    ApiError::unavailable("the users service sent a bad answer")
                })?;
                Ok(users.iter().any(|u| u == user.as_str()))
            }
            (other, _) => Err(ApiError::unavailable(format!(
                "users service answered {other} to the user check"
            ))),
        }
    }

    async fn require_user(&self, user: &Username) -> Result<(), ApiError> {
        if self.user_exists(user).await? {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!("no such user {user:?}")))
        }
    }
}

fn ride_id(text: &str) -> Result<RideId, ApiError> {
    Ok(RideId::parse(text)?)
}

#[utoipa::path(post, path = "/api/v1/rides", tag = "rides",
    request_body(content = NewRide, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Empty),
        (status = 400, description = "Unknown user, bad timestamp, bad area, missing field, malformed JSON", body = ErrorBody),
    ))]
async fn create_ride<D: Db>(
    State(state): State<Arc<RidesState<D>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let created_by = Username::parse(string_field(&body, "created_by")?)
        .map_err(|_| ApiError::bad_request("no such user"))?;
    let timestamp = Timestamp::parse(string_field(&body, "timestamp")?)?;
    let source = Area::from_json(field(&body, "source")?)?;
    let destination = Area::from_json(field(&body, "destination")?)?;
    state.require_user(&created_by).await?;
    match state
        .db
        .write(WriteOp::CreateRide {
            created_by: created_by.clone(),
            timestamp,
            source,
            destination,
        })
        .await?
    {
        WriteOutcome::RideCreated { .. } => Ok(empty(StatusCode::CREATED)),
        WriteOutcome::NoSuchUser => Err(ApiError::bad_request(format!(
            "no such user {created_by:?}"
        ))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/api/v1/rides", tag = "rides",
    params(
        ("source" = Area, Query, description = "Area number 1..198"),
        ("destination" = Area, Query, description = "Area number 1..198"),
    ),
    responses(
        (status = 200, description = "Upcoming rides, by time", body = [RideSummary]),
        (status = 204, description = "None upcoming"),
        (status = 400, description = "A missing or invalid parameter", body = ErrorBody),
    ))]
async fn list_rides<D: Db>(
    State(state): State<Arc<RidesState<D>>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let param = |name: &str| {
        params
            .get(name)
            .ok_or_else(|| ApiError::bad_request(format!("query parameter {name:?} is missing")))
    };
    let source = Area::parse(param("source")?)?;
    let destination = Area::parse(param("destination")?)?;
    let op = ReadOp::UpcomingRides {
        source,
        destination,
        after: state.clock.now(),
    };
    match state.db.read(op).await? {
        ReadOutcome::Rides { rides } => Ok(ride_list_or_no_content(rides)),
        other => Err(unexpected_read(other)),
    }
}

#[utoipa::path(get, path = "/api/v1/rides/{rideId}", tag = "rides",
    params(("rideId" = RideId, Path, description = "The ride's id")),
    responses(
        (status = 200, description = "The ride", body = RideDetail),
        (status = 204, description = "No such ride"),
        (status = 400, description = "Not a ride id", body = ErrorBody),
    ))]
async fn get_ride<D: Db>(
    State(state): State<Arc<RidesState<D>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ride_id = ride_id(&id)?;
    match state.db.read(ReadOp::GetRide { ride_id }).await? {
        ReadOutcome::Ride { ride: Some(ride) } => Ok(Json(ride).into_response()),
        ReadOutcome::Ride { ride: None } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected_read(other)),
    }
}

#[utoipa::path(post, path = "/api/v1/rides/{rideId}", tag = "rides",
    params(("rideId" = RideId, Path, description = "The ride's id")),
    request_body(content = JoinRide, content_type = "application/json"),
    responses(
        (status = 200, description = "Joined", body = Empty),
        (status = 400, description = "Unknown ride or user, the creator, or already joined", body = ErrorBody),
    ))]
async fn join_ride<D: Db>(
    State(state): State<Arc<RidesState<D>>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ride_id = ride_id(&id)?;
    let body = json_object(&body)?;
    let username = Username::parse(string_field(&body, "username")?)
        .map_err(|_| ApiError::bad_request("no such user"))?;
    state.require_user(&username).await?;
    match state
        .db
        .write(WriteOp::JoinRide {
            ride_id,
            username: username.clone(),
        })
        .await?
    {
        WriteOutcome::Done => Ok(empty(StatusCode::OK)),
        WriteOutcome::NoSuchRide => Err(ApiError::bad_request(format!("no such ride {ride_id}"))),
        WriteOutcome::NoSuchUser => {
            Err(ApiError::bad_request(format!("no such user {username:?}")))
        }
        WriteOutcome::CreatorCannotJoin => Err(ApiError::bad_request(
            "the creator of a ride cannot join it",
        )),
        WriteOutcome::AlreadyJoined => Err(ApiError::bad_request(format!(
            "{username:?} has already joined ride {ride_id}"
        ))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(delete, path = "/api/v1/rides/{rideId}", tag = "rides",
    params(("rideId" = RideId, Path, description = "The ride's id")),
    responses(
        (status = 200, description = "Deleted", body = Empty),
        (status = 400, description = "No such ride", body = ErrorBody),
    ))]
async fn delete_ride<D: Db>(
    State(state): State<Arc<RidesState<D>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ride_id = ride_id(&id)?;
    match state.db.write(WriteOp::DeleteRide { ride_id }).await? {
        WriteOutcome::Done => Ok(empty(StatusCode::OK)),
        WriteOutcome::NoSuchRide => Err(ApiError::bad_request(format!("no such ride {ride_id}"))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/api/v1/rides/count", tag = "rides",
    responses((status = 200, description = "[n]: rides stored", body = [u64])))]
async fn count_rides<D: Db>(State(state): State<Arc<RidesState<D>>>) -> Result<Response, ApiError> {
    match state.db.read(ReadOp::CountRides).await? {
        ReadOutcome::Count { count } => Ok(Json([count]).into_response()),
        other => Err(unexpected_read(other)),
    }
}

#[utoipa::path(post, path = "/api/v1/db/clear", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every ride deleted; users stay", body = Empty),
        (status = 400, description = "The database could not be cleared", body = ErrorBody),
    ))]
async fn clear<D: Db>(State(state): State<Arc<RidesState<D>>>) -> Result<Response, ApiError> {
    clear_with(&state.db, WriteOp::ClearRides).await
}
