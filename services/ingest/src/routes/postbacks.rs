//! `POST /ingest.php` and `POST /v1/postbacks`: accept a postback request.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Json};
use serde::Serialize;
use tracing::{Span, field, instrument};

use crate::enqueue::EnqueueError;
use crate::error::IngestError;
use crate::state::AppState;
use crate::trace::{self, RequestSpan};
use crate::{json, request};

/// The 202 body: how many postbacks were queued and their ids, in the order
/// of the request's `data` items.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// Number of postbacks queued (one per data item).
    pub accepted: usize,
    /// Their ids, as sent to the target in `X-Postback-Id`.
    pub ids: Vec<String>,
}

/// Validates the whole body, enqueues one postback per data item in one
/// round trip, and answers 202 once Redis holds them all.
#[instrument(name = "ingest", skip_all, fields(bytes = field::Empty, postbacks = field::Empty))]
pub async fn accept(
    State(state): State<AppState>,
    request_span: Option<Extension<RequestSpan>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), IngestError> {
    let limit = state.config.max_body();
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut buf = read_body(body, limit).await?;
    Span::current().record("bytes", buf.len());
    let parsed = json::parse(&mut buf)?;
    let mut postbacks =
        request::postbacks(&parsed, postback_common::time::now_ms(), &state.limits).map_err(IngestError::Invalid)?;
    Span::current().record("postbacks", postbacks.len());
    let producer = match &request_span {
        Some(Extension(RequestSpan(span))) => trace::producer_span(span, &mut postbacks, &state.keys.stream),
        None => None,
    };
    let started = std::time::Instant::now();
    let enqueued = state.enqueuer.enqueue(&state.redis, &state.keys, &postbacks).await;
    state.metrics.enqueued_in(started.elapsed());
    if let Err(e) = enqueued {
        trace::failed(producer.as_ref());
        let error = match e {
            EnqueueError::BacklogFull { .. } => IngestError::BacklogFull(e.to_string()),
            other => IngestError::Unavailable(other.to_string()),
        };
        state.metrics.postbacks(error.reason(), postbacks.len());
        return Err(error);
    }
    state.metrics.postbacks("accepted", postbacks.len());
    let ids = postbacks.iter().map(|p| p.id.to_string()).collect();
    tracing::debug!(count = postbacks.len(), "accepted");
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: postbacks.len(), ids })))
}

/// Reads at most `limit` bytes of body; more is a 413 whatever the headers
/// claimed (chunked bodies have no Content-Length).
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, IngestError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.into()),
        Err(error) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large { Err(IngestError::TooLarge { limit }) } else { Err(IngestError::BodyRead(error.to_string())) }
        }
    }
}
