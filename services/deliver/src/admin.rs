//! The admin listener: `/healthz` (alive), `/readyz` (Redis answers and
//! the consumer group is in place), `/metrics` (Prometheus; see
//! [`crate::metrics`]) and `/dashboard` (a page for people; see
//! [`crate::dashboard`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::*;
use postback_common::metrics::CONTENT_TYPE;
use serde_json::json;

use crate::metrics::DeliverMetrics;
use crate::partitions::Live;

/// A PING slower than this means "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin routes look at.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The command client (not the blocking reader).
    pub(crate) redis: Client,
    /// The partitions read, and whether their groups are in place.
    pub(crate) live: Arc<Live>,
    /// Prefix of the per-minute counts (`<stream>:minutes:`).
    pub(crate) minutes: String,
    /// What `/metrics` renders.
    pub(crate) metrics: Arc<DeliverMetrics>,
}

/// The admin router.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(crate::dashboard::page))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = state.metrics.scrape(&state.redis, state.live.partitions().as_ref()).await;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<serde_json::Value>) {
    let not_ready =
        |reason: String| (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": reason})));
    if let Some(reason) = state.live.not_ready() {
        return not_ready(reason.into());
    }
    match postback_common::redis::ping(&state.redis, READY_TIMEOUT).await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => not_ready(reason),
    }
}
