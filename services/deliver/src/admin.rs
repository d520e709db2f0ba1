//! The admin listener: `/healthz` (alive), `/readyz` (Redis answers and
//! the consumer group is in place), `/metrics` (Prometheus; see
//! [`crate::metrics`]) and `/dashboard` (a page for people; see
//! [`crate::dashboard`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::*;
use postback_common::keys::Partitions;
use postback_common::metrics::CONTENT_TYPE;
use serde_json::json;

use crate::metrics::DeliverMetrics;

/// A PING slower than this means "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin routes look at.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The command client (not the blocking reader).
    pub(crate) redis: Client,
    /// Set once the consumer group exists, one per partition.
    pub(crate) group_ready: Vec<Arc<AtomicBool>>,
    /// The partitions' key names, for the queue sample.
    pub(crate) partitions: Partitions,
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
    let text = state.metrics.scrape(&state.redis, &state.partitions).await;
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
    if !state.group_ready.iter().all(|ready| ready.load(Ordering::Acquire)) {
        return not_ready("consumer group not set up yet".into());
    }
    match postback_common::redis::ping(&state.redis, READY_TIMEOUT).await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => not_ready(reason),
    }
}
