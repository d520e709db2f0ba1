//! The HTTP routes of ingest.
//!
//! - `POST /ingest.php` and `POST /v1/postbacks`: accept a request (same handler;
//!   the first is the drop-in path of the original PHP service).
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: Redis answers, so requests can be accepted.
//! - `GET /metrics`: Prometheus metrics (see [`crate::metrics`]).
//!
//! Any other path is a 404 and any other method a 405, both as problem+json.
//! With `POSTBACK_INGEST_TOKENS_FILE` set, the POST routes need a bearer
//! token (401 otherwise); the health and metrics routes never do.

mod health;
mod postbacks;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::IngestError;
use crate::state::AppState;

/// The ingest router with every route and its fallbacks.
pub fn router(state: AppState) -> Router {
    let accept = post(postbacks::accept)
        .fallback(|| method_not_allowed("POST"))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_token))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .route_layer(axum::middleware::from_fn(crate::trace::request_span));
    Router::new()
        .route("/ingest.php", accept.clone())
        .route("/v1/postbacks", accept)
        .route("/healthz", get(health::healthz).fallback(|| method_not_allowed("GET, HEAD")))
        .route("/readyz", get(health::readyz).fallback(|| method_not_allowed("GET, HEAD")))
        .route("/metrics", get(crate::metrics::scrape).fallback(|| method_not_allowed("GET, HEAD")))
        .fallback(|| async { IngestError::NotFound })
        .with_state(state)
}

async fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = IngestError::MethodNotAllowed.into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
