//! The live dashboard at `GET /` on the orchestrator: one page of plain HTML with a small inline
//! script over `GET /api/v1/status`, the event stream `GET /api/v1/events` and the crash and
//! switchover calls. Embedded in the binary; it fetches nothing from anywhere else.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page, as built into the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/",
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                PAGE,
            )
                .into_response()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_outside() {
        for outside in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!PAGE.contains(outside), "the dashboard refers to {outside}");
        }
        for endpoint in ["/api/v1/events", "/api/v1/status", "/api/v1/crash/master"] {
            assert!(
                PAGE.contains(endpoint),
                "the dashboard does not use {endpoint}"
            );
        }
    }
}
