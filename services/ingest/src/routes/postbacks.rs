//! `POST /ingest.php` and `POST /v1/postbacks`: accept a postback request.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use postback_common::records::request as request_entry;
use serde::Serialize;
use tracing::{Span, field, instrument};

use postback_common::keys::Keys;

use crate::enqueue::{EnqueueError, Enqueued, Queued, Target};
use crate::error::IngestError;
use crate::idempotency::{self, Caller, Given, Idempotency};
use crate::nodes::Routed;
use crate::state::AppState;
use crate::trace::{self, RequestSpan};
use crate::{json, rate, request};

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
/// round trip, and answers 202 once Redis holds them all; the same 202
/// again for a repeated `Idempotency-Key` (see [`crate::idempotency`]).
#[instrument(name = "ingest", skip_all, fields(bytes = field::Empty, postbacks = field::Empty))]
pub async fn accept(
    State(state): State<AppState>,
    request_span: Option<Extension<RequestSpan>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    let limit = state.config.max_body();
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let timeout = state.config.body_timeout();
    let buf = tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .map_err(|_| IngestError::BodyTimeout(timeout.as_millis() as u64))??;
    Span::current().record("bytes", buf.len());
    let caller = caller.map(|Extension(caller)| caller);
    let Examined { idempotency, mut postbacks } = if buf.len() <= INLINE_BODY_BYTES {
        examine(&headers, buf, &state, caller.as_ref())?
    } else {
        let (state, span) = (state.clone(), Span::current());
        let (headers, caller) = (headers.clone(), caller.clone());
        let examined =
            tokio::task::spawn_blocking(move || span.in_scope(|| examine(&headers, buf, &state, caller.as_ref())));
        examined.await.unwrap_or_else(|joined| std::panic::resume_unwind(joined.into_panic()))?
    };
    Span::current().record("postbacks", postbacks.len());
    let verdict = check_rate(&state, caller.as_ref(), postbacks.len()).await;
    if let Some(verdict) = verdict.filter(|v| !v.allowed) {
        state.metrics.postbacks("rate_limited", postbacks.len());
        return Err(IngestError::RateLimited(verdict));
    }
    let started = std::time::Instant::now();
    let (enqueued, producer) = route(&state, &mut postbacks, idempotency.as_ref(), request_span.as_ref()).await?;
    state.metrics.enqueued_in(started.elapsed());
    let keyed = idempotency.is_some();
    let (given, replayed) = match enqueued {
        Ok(Enqueued::Queued(_)) => (Given { first_id: postbacks[0].id, count: postbacks.len() }, false),
        Ok(Enqueued::Replayed(given)) => (given, true),
        Err(e) => {
            trace::failed(producer.as_ref());
            let error = match (&e, e.queued()) {
                (EnqueueError::Reused, _) => IngestError::IdempotencyKeyReused,
                (EnqueueError::BacklogFull(_), _) => IngestError::BacklogFull(e.to_string()),
                (EnqueueError::Replicas { given, .. } | EnqueueError::WaitFailed { given, .. }, _) => {
                    IngestError::NotReplicated { cause: e.to_string(), keyed, ids: ids_of(*given) }
                }
                (_, Queued::No) => IngestError::Unavailable(e.to_string()),
                (_, Queued::Maybe | Queued::Yes) => {
                    let ids = ids_of(Given { first_id: postbacks[0].id, count: postbacks.len() });
                    IngestError::OutcomeUnknown { cause: e.to_string(), keyed, ids }
                }
            };
            state.metrics.postbacks(error.reason(), postbacks.len());
            return Err(error);
        }
    };
    let outcome = if replayed { "replayed" } else { "accepted" };
    state.metrics.postbacks(outcome, given.count);
    tracing::debug!(count = given.count, replayed, "accepted");
    let accepted = Accepted { accepted: given.count, ids: ids_of(given) };
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Some(verdict) = verdict {
        verdict.add_headers(response.headers_mut());
    }
    if replayed {
        response.headers_mut().insert(idempotency::REPLAYED_HEADER, HeaderValue::from_static("true"));
        response.extensions_mut().insert(crate::metrics::RequestOutcome("replayed"));
    }
    Ok(response)
}

/// Times a request is routed again after its partition said the
/// partition record changed.
const REROUTES: usize = 3;

/// Chooses the request's partition by the partition record and enqueues
/// it there; routes it again when the partition says the record changed.
/// A request without an Idempotency-Key goes to the next partition in
/// turn that has not just failed, and to the one after when its
/// partition fails without running the enqueue (its node down, refusing
/// writes: [`crate::nodes`]); one with a key has only its own.
async fn route(
    state: &AppState,
    postbacks: &mut [postback_common::Postback],
    idempotency: Option<&Idempotency>,
    request_span: Option<&Extension<RequestSpan>>,
) -> Result<(Result<Enqueued, EnqueueError>, Option<Span>), IngestError> {
    let patience = state.config.redis_timeout();
    let stream = &state.config.redis.stream;
    let mut producer = None;
    let clients = Routed { main: &state.redis, nodes: state.nodes.as_ref() };
    let mut stale = 0;
    let mut passed: Vec<u32> = Vec::new();
    while stale < REROUTES {
        let view =
            state.views.within(patience).await.ok_or_else(|| {
                IngestError::Unavailable("the partition record has not been read from Redis yet".into())
            })?;
        let (keys, earlier) = match idempotency {
            Some(key) => (
                view.for_key(&key.scoped),
                view.earlier_for_key(
                    &key.scoped,
                    std::time::Duration::from_secs(state.config.idempotency_ttl_s),
                    stream,
                ),
            ),
            None => (keyless(state, &view, &passed), Vec::new()),
        };
        if producer.is_none() {
            producer = match request_span {
                Some(Extension(RequestSpan(span))) => trace::producer_span(span, postbacks, &keys.stream),
                None => None,
            };
        }
        let target = Target { keys, earlier: &earlier, epoch: view.epoch() };
        match state.enqueuer.enqueue(&clients, target, postbacks, idempotency).await {
            Err(EnqueueError::Stale) => {
                stale += 1;
                state.views.refresh(patience).await;
            }
            Err(e) if unavailable(&e) => {
                state.failing.failed(keys.partition);
                if let Some(nodes) = &state.nodes {
                    nodes.failed(keys);
                }
                passed.push(keys.partition);
                if idempotency.is_some() || passed.len() >= view.active_len() {
                    return Ok((Err(e), producer));
                }
                tracing::debug!(partition = keys.partition, error = %e, "partition unavailable; trying the next");
            }
            other => {
                state.failing.took(keys.partition);
                return Ok((other, producer));
            }
        }
    }
    Ok((Err(EnqueueError::Stale), producer))
}

/// The partition for a request without an Idempotency-Key: the next in
/// turn that was not tried for it and has not just failed (the next in
/// turn not tried, when all have).
fn keyless<'v>(state: &AppState, view: &'v crate::partitions::View, tried: &[u32]) -> &'v Keys {
    let first = state.views.next_turn();
    let untried = (0..view.active_len() as u32).map(|k| view.nth_active(first.wrapping_add(k)));
    let mut fallback = None;
    for keys in untried.filter(|keys| !tried.contains(&keys.partition)) {
        if !state.failing.recently(keys.partition) {
            return keys;
        }
        fallback.get_or_insert(keys);
    }
    fallback.unwrap_or_else(|| view.nth_active(first))
}

/// Whether an enqueue failed without running, for a reason of its
/// partition's own (another partition may take the request).
fn unavailable(e: &EnqueueError) -> bool {
    matches!(e, EnqueueError::NotConnected) || matches!(e, EnqueueError::Redis(_)) && e.queued() == Queued::No
}

/// Charges the request's postbacks to its caller's rate budget, if it has
/// one (see [`crate::rate`]); `None` when no rate applies or Redis could
/// not be asked.
async fn check_rate(state: &AppState, caller: Option<&Caller>, cost: usize) -> Option<rate::Verdict> {
    let (scope, rate) = match caller.and_then(|c| Some((c.scope.as_str(), c.rate?))) {
        Some(own) => own,
        None => ("all", state.config.ingest_rate?),
    };
    let key = format!("{}{scope}", state.rate_prefix);
    match state.limiter.check(&state.redis, &key, rate, cost).await {
        Ok(verdict) => {
            state.metrics.rate_checked(if verdict.allowed { "allowed" } else { "limited" });
            Some(verdict)
        }
        Err(error) => {
            state.metrics.rate_checked("error");
            tracing::warn!(%error, "cannot check the caller's rate; letting the request through");
            None
        }
    }
}

/// Bodies larger than this are parsed and validated on the blocking pool,
/// not on the runtime's threads: validation is linear in the body, but a
/// 1 MiB body still costs milliseconds of CPU, and small requests served
/// by the same threads would wait for it.
const INLINE_BODY_BYTES: usize = 64 << 10;

/// A request's body, checked.
struct Examined {
    idempotency: Option<Idempotency>,
    postbacks: Vec<postback_common::Postback>,
}

/// Reads the Idempotency-Key, parses the body and builds its postbacks:
/// all the CPU work a request costs before Redis.
fn examine(
    headers: &HeaderMap,
    mut buf: Vec<u8>,
    state: &AppState,
    caller: Option<&Caller>,
) -> Result<Examined, IngestError> {
    let idempotency = Idempotency::from_request(headers, &buf, caller).map_err(IngestError::Invalid)?;
    let parsed = json::parse(&mut buf)?;
    let postbacks =
        request::postbacks(&parsed, postback_common::time::now_ms(), &state.limits).map_err(IngestError::Invalid)?;
    Ok(Examined { idempotency, postbacks })
}

/// The ids given out: consecutive from the first.
fn ids_of(given: Given) -> Vec<String> {
    (0..given.count).map(|i| request_entry::nth_id(given.first_id, i).to_string()).collect()
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
