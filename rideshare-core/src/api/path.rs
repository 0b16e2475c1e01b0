//! The one rule for request paths, applied by every service before it routes.
//!
//! A path is split on its raw `/`s, each segment percent-decoded once, checked, and re-encoded
//! the one canonical way. A path that could mean something else to the next hop is refused:
//! dot segments (`.`, `..`, also encoded, in any case, and before a `;parameter`), encoded
//! slashes and backslashes, raw backslashes, empty segments (`//`, a trailing `/`), NUL and other
//! control characters, bytes that are not UTF-8 once decoded (overlong `%c0%ae` among them), and
//! segments that are still percent-encoded after one decode (double encoding). What remains has
//! one meaning for every parser on the way, so the gateway routes on the canonical path and
//! forwards exactly that path, and a backend checks it again (defence in depth).
//!
//! It must not look at the query string: query values are the handlers' to validate.

use std::fmt;

use axum::extract::Request;
use axum::http::uri::PathAndQuery;
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use super::common::ApiError;

/// Bytes re-encoded in a canonical segment: the controls, the characters RFC 3986 does not allow
/// in a segment, `%` itself and the separators that another parser could split on.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Why a path was refused; the message names the rule, never echoes the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRejection {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    EncodedSeparator,
    Backslash,
    ControlCharacter,
    NotUtf8,
    DoubleEncoded,
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRejection::NotAbsolute => "the path must begin with /",
            PathRejection::EmptySegment => "the path holds an empty segment",
            PathRejection::DotSegment => "the path holds a dot segment",
            PathRejection::EncodedSeparator => "the path holds an encoded slash",
            PathRejection::Backslash => "the path holds a backslash",
            PathRejection::ControlCharacter => "the path holds a control character",
            PathRejection::NotUtf8 => "the path is not UTF-8 once decoded",
            PathRejection::DoubleEncoded => "the path is percent-encoded twice",
        })
    }
}

/// The canonical form of `raw` (a URI path, without the query), or why it is refused.
///
/// `canonical_path(p)` is a fixed point: the canonical form of a canonical path is itself.
pub fn canonical_path(raw: &str) -> Result<String, PathRejection> {
    let rest = raw.strip_prefix('/').ok_or(PathRejection::NotAbsolute)?;
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    let mut canonical = String::with_capacity(raw.len());
    for segment in rest.split('/') {
        canonical.push('/');
        canonical.extend(utf8_percent_encode(&checked_segment(segment)?, SEGMENT));
    }
    Ok(canonical)
}

/// One raw segment, decoded once and checked against every rule.
fn checked_segment(raw: &str) -> Result<String, PathRejection> {
    if raw.is_empty() {
        return Err(PathRejection::EmptySegment);
    }
    if raw.contains('\\') {
        return Err(PathRejection::Backslash);
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathRejection::NotUtf8)?;
    if decoded.contains('/') {
        return Err(PathRejection::EncodedSeparator);
    }
    if decoded.contains('\\') {
        return Err(PathRejection::Backslash);
    }
    if decoded.chars().any(char::is_control) {
        return Err(PathRejection::ControlCharacter);
    }
    // `..;x` is `..` to servers that strip matrix parameters.
    let before_params = decoded.split(';').next().unwrap_or_default();
    if before_params == "." || before_params == ".." {
        return Err(PathRejection::DotSegment);
    }
    if still_encoded(&decoded) {
        return Err(PathRejection::DoubleEncoded);
    }
    Ok(decoded.into_owned())
}

/// A `%` followed by two hex digits: what a second decode would turn into something else.
fn still_encoded(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// The path and query a request is routed on: the canonical path and the raw query.
pub fn canonical_path_and_query(uri: &Uri) -> Result<String, PathRejection> {
    let path = canonical_path(uri.path())?;
    Ok(match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

/// Middleware: refuses a request whose path breaks the rule (400 with a JSON error) before any
/// route or handler sees it, and hands the rest on with the canonical path.
pub async fn guard_path(mut request: Request, next: Next) -> Response {
    let canonical = match canonical_path_and_query(request.uri()) {
        Ok(canonical) => canonical,
        Err(rejection) => return ApiError::bad_request(rejection.to_string()).into_response(),
    };
    if canonical
        != request
            .uri()
            .path_and_query()
            .map_or("", PathAndQuery::as_str)
    {
        let mut parts = request.uri().clone().into_parts();
        match PathAndQuery::try_from(canonical) {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_their_own_canonical_form() {
        for path in [
            "/",
            "/api/v1/users",
            "/api/v1/rides/12",
            "/api/v1/users/x%20y",
            "/api/v1/users/%C3%BC",
            "/api/v1/users/a;b",
            "/api/v1/users/...",
            "/api/v1/users/.a",
        ] {
            assert_eq!(canonical_path(path).as_deref(), Ok(path), "{path}");
        }
    }

    #[test]
    fn harmless_encodings_are_decoded_to_one_form() {
        assert_eq!(canonical_path("/api/v1/%75sers").unwrap(), "/api/v1/users");
        assert_eq!(
            canonical_path("/api/v1/users/%c3%bc").unwrap(),
            "/api/v1/users/%C3%BC"
        );
        assert_eq!(
            canonical_path("/api/v1/users/a%25").unwrap(),
            "/api/v1/users/a%25"
        );
    }

    #[test]
    fn tricks_are_refused_with_the_rule_they_break() {
        use PathRejection::*;
        for (path, why) in [
            ("/api/v1/users/../db/clear", DotSegment),
            ("/api/v1/users/./x", DotSegment),
            ("/api/v1/users/%2e%2e/db/clear", DotSegment),
            ("/api/v1/users/%2E%2e/db/clear", DotSegment),
            ("/api/v1/users/.%2E/db/clear", DotSegment),
            ("/api/v1/users/..;/db/clear", DotSegment),
            ("/api/v1/users/%2e%2e;x/db/clear", DotSegment),
            ("/api/v1/users/%252e%252e/db/clear", DoubleEncoded),
            ("/api/v1/users/%25252e/db", DoubleEncoded),
            ("/api/v1/users/..%2fdb%2fclear", EncodedSeparator),
            ("/api/v1/users/x%2F..", EncodedSeparator),
            ("/api/v1/users/..%5cdb", Backslash),
            ("/api/v1/users\\..\\db", Backslash),
            ("/api/v1/users//db/clear", EmptySegment),
            ("/api/v1/users/", EmptySegment),
            ("//api/v1/db/clear", EmptySegment),
            ("/api/v1/users/%00", ControlCharacter),
            ("/api/v1/users/a%0d%0ab", ControlCharacter),
            ("/api/v1/users/%c0%ae%c0%ae/db", NotUtf8),
            ("/api/v1/users/%ff", NotUtf8),
            ("api/v1/users", NotAbsolute),
            ("", NotAbsolute),
        ] {
            assert_eq!(canonical_path(path), Err(why), "{path}");
        }
    }

    #[test]
    fn the_canonical_form_is_a_fixed_point() {
        for path in ["/api/v1/%75sers/a%3bb", "/api/v1/users/%E2%82%AC", "/x/%7e"] {
            let once = canonical_path(path).unwrap();
            assert_eq!(canonical_path(&once).unwrap(), once, "{path}");
        }
    }
}
