//! Admin authentication: the bearer token that guards the admin calls (`db/*`, `crash/*`,
//! `worker/list`, the services' `db/clear` and `DELETE _count`).
//!
//! Without a token every call is open, as the course contract has it; the binary then allows
//! only loopback listeners. The token is never printed: its `Debug` is redacted, and it is
//! compared in constant time so an attacker cannot learn it byte by byte from response times.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::common::ApiError;

/// The admin token, or none (admin calls open).
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<str>>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("AdminToken(<redacted>)"),
            None => f.write_str("AdminToken(none)"),
        }
    }
}

impl AdminToken {
    /// No token: admin calls are open.
    pub fn none() -> Self {
        AdminToken(None)
    }

    /// A token; an empty string counts as none, so `RIDESHARE_ADMIN_TOKEN=` turns it off.
    pub fn new(token: impl AsRef<str>) -> Self {
        let token = token.as_ref();
        if token.is_empty() {
            AdminToken(None)
        } else {
            AdminToken(Some(token.into()))
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The `Authorization` value a client sends, when a token is set.
    pub fn authorization(&self) -> Option<HeaderValue> {
        let token = self.0.as_ref()?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Whether an `Authorization` header value carries this token (always true without one).
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(presented) = authorization
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
        else {
            return false;
        };
        presented.ct_eq(expected.as_bytes()).into()
    }
}

/// Route layer for admin routes: 401 with a JSON error unless the request carries the token.
pub async fn require_admin(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "this admin call needs Authorization: Bearer <admin token>".into(),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn without_a_token_everything_is_admitted() {
        assert!(AdminToken::none().admits(None));
        assert!(AdminToken::new("").admits(None));
    }

    #[test]
    fn with_a_token_only_the_exact_bearer_is_admitted() {
        let token = AdminToken::new("s3cret");
        assert!(token.admits(Some(&bearer("Bearer s3cret"))));
        assert!(!token.admits(None));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!token.admits(Some(&bearer(wrong))), "{wrong}");
        }
        assert_eq!(token.authorization().unwrap(), "Bearer s3cret");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", AdminToken::new("s3cret")).contains("s3cret"));
    }
}
