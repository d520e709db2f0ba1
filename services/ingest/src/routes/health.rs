//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{IngestError, problem_response};
use crate::state::AppState;

/// A PING slower than this means "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// 200 while the process runs.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 when Redis answers a PING, else 503: a load balancer sends traffic
/// only to instances that can accept it.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ping = match state.views.now() {
        Some(_) => postback_common::redis::ping(&state.redis, READY_TIMEOUT).await,
        None => Err("the partition record has not been read from Redis yet".to_owned()),
    };
    match ping {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        // Not through IngestError's IntoResponse: a probe polling a
        // not-ready instance is not worth a warning per poll.
        Err(cause) => {
            let mut problem = IngestError::Unavailable(cause.clone()).problem();
            problem.detail = format!("not ready: {cause}");
            problem_response(&problem)
        }
    }
}
