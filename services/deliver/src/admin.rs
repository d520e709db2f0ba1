//! The admin listener: `/healthz` (alive) and `/readyz` (Redis answers and
//! the consumer group is in place).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::*;
use serde_json::json;

/// A PING slower than this means "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin routes look at.
#[derive(Clone)]
pub struct AdminState {
    /// The command client (not the blocking reader).
    pub redis: Client,
    /// Set once the consumer group exists.
    pub group_ready: Arc<AtomicBool>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<serde_json::Value>) {
    let not_ready =
        |reason: String| (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": reason})));
    if !state.group_ready.load(Ordering::Acquire) {
        return not_ready("consumer group not set up yet".into());
    }
    match postback_common::redis::ping(&state.redis, READY_TIMEOUT).await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => not_ready(reason),
    }
}
