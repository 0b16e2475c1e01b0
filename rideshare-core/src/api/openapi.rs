//! The OpenAPI 3.1 documents of the users, rides and gateway services, generated from the
//! handlers' `#[utoipa::path]` attributes, and the route that serves each at
//! `GET /api/v1/openapi.json`.
//!
//! What every operation can also answer (400 for a refused path, 401 for an admin call without
//! the token, 413 for a too large body, 503 when overloaded or the database is down, 504 past the
//! request timeout) is added in one place, [`EdgeResponses`], so the documents cannot forget the
//! edge rules. The documents describe; they never drive routing.

use std::borrow::Cow;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::area::Area;
use crate::domain::{RideId, Timestamp, Username};

/// Where every service serves its document.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Name of the bearer security scheme admin operations carry.
pub const ADMIN_SCHEME: &str = "admin_token";

/// An error answer: `{"error": message}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The contract's empty success body, `{}`.
#[derive(Serialize, ToSchema)]
pub struct Empty {}

/// `PUT /api/v1/users`.
#[derive(Serialize, ToSchema)]
pub struct NewUser {
    #[schema(min_length = 1, max_length = 128)]
    pub username: String,
    /// The client's SHA-1 digest: exactly 40 hex digits, either case.
    #[schema(pattern = "^[0-9a-fA-F]{40}$")]
    pub password: String,
}

/// An area as a request may send it: its number, or the number as a decimal string.
#[derive(Serialize)]
pub struct AreaInput;

impl PartialSchema for AreaInput {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Area::schema())
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+$")),
            )
            .into()
    }
}
impl ToSchema for AreaInput {}

/// `POST /api/v1/rides`.
#[derive(Serialize, ToSchema)]
pub struct NewRide {
    pub created_by: Username,
    pub timestamp: Timestamp,
    pub source: AreaInput,
    pub destination: AreaInput,
}

/// `POST /api/v1/rides/{rideId}`: join a ride.
#[derive(Serialize, ToSchema)]
pub struct JoinRide {
    pub username: Username,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

impl PartialSchema for Username {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .description(Some(
                "A username: 1 to 128 characters, no control characters",
            ))
            .into()
    }
}
impl ToSchema for Username {}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                "^[0-9]{2}-[0-9]{2}-[0-9]{4}:[0-9]{2}-[0-9]{2}-[0-9]{2}$",
            ))
            .description(Some("DD-MM-YYYY:SS-MM-HH in the service's zone"))
            .into()
    }
}
impl ToSchema for Timestamp {}

impl PartialSchema for Area {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(198))
            .description(Some("A Bangalore area number (AreaNameEnum.csv)"))
            .into()
    }
}
impl ToSchema for Area {}

impl PartialSchema for RideId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into()
    }
}
impl ToSchema for RideId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RideId")
    }
}

/// Adds what every operation may answer at the edge, and the admin bearer scheme.
pub struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .schemas
            .insert("ErrorBody".into(), ErrorBody::schema());
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_edge_responses(operation);
            }
        }
    }
}

fn add_edge_responses(operation: &mut Operation) {
    let mut edge = vec![
        ("400", "Bad input, or a path the path rule refuses"),
        (
            "503",
            "Overloaded or the database is unavailable; retry after Retry-After",
        ),
        ("504", "Not answered within the request timeout"),
    ];
    if operation.request_body.is_some() {
        edge.push(("413", "The body is larger than the configured bound"));
    }
    if operation.security.is_some() {
        edge.push(("401", "An admin call without the admin token"));
    }
    for (status, description) in edge {
        operation
            .responses
            .responses
            .entry(status.into())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
        .into()
}

/// The gateway's document: what it routes, as the services it routes to document it. Paths
/// beginning `/api/v1/users` are the users service's, every other the rides service's.
pub fn gateway_openapi() -> OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = super::rides::RidesApi::openapi();
    let users = super::users::UsersApi::openapi();
    for (path, item) in users.paths.paths {
        if super::gateway::routes_to_users(&path) {
            doc.paths.paths.insert(path, item);
        }
    }
    if let Some(users_components) = users.components {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, schema) in users_components.schemas {
            components.schemas.entry(name).or_insert(schema);
        }
    }
    doc.info.title = "RideShare gateway".into();
    doc.info.description =
        Some("The public API: /api/v1/users* to the users service, all else to rides".into());
    doc
}

/// Serves `doc` as JSON at [`OPENAPI_PATH`]; the text is made once.
pub fn openapi_route<S: Clone + Send + Sync + 'static>(doc: &OpenApi) -> Router<S> {
    let text = doc.to_json().unwrap_or_else(|_| "{}".into());
    Router::new().route(
        OPENAPI_PATH,
        get(move || {
            let text = text.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], text).into_response() }
        }),
    )
}
