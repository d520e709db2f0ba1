//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
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
    let ping = async {
        if !state.redis.is_connected() {
            return Err("not connected".to_owned());
        }
        match tokio::time::timeout(READY_TIMEOUT, state.redis.ping::<String>(None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no PING reply within {READY_TIMEOUT:?}")),
        }
    };
    match ping.await {
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
