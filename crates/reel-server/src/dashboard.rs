//! The dashboard at `/`: one HTML page with its script and styles inline, embedded in the binary
//! (no CDN). It talks to the same API as everyone else, with the token kept in the browser.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../assets/dashboard.html");

/// Serves the page.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}
