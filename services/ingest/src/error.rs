//! Everything that can go wrong with an ingest request, and how each is told
//! to the caller: an RFC 9457 `application/problem+json` body.
//!
//! Client mistakes (4xx) say precisely what to fix; a Redis outage is a 503
//! with `Retry-After`, so a well-behaved caller simply tries again. Nothing
//! internal leaks into a response: causes are logged, not returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::json::JsonError;
use crate::request::{Invalid, Violation};

/// Seconds a caller is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Seconds a caller is asked to wait when the backlog is full: delivery is
/// behind, and it takes longer than a reconnect to catch up.
pub const BACKLOG_RETRY_AFTER_SECS: u32 = 5;

/// Why an ingest request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is JSON but not an acceptable request.
    #[error("invalid request: {}", first_detail(.0))]
    Invalid(Invalid),
    /// The body is not JSON this service can read.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The body is larger than `POSTBACK_MAX_BODY_BYTES`.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body could not be read (the client went away, bad chunking...).
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// The body did not arrive within `POSTBACK_BODY_TIMEOUT_MS`.
    #[error("the request body did not arrive within {0} ms (POSTBACK_BODY_TIMEOUT_MS); nothing was queued")]
    BodyTimeout(u64),
    /// Redis did not take the postbacks; nothing was queued.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// Redis did not answer in time: the postbacks may have been queued,
    /// with these ids.
    #[error("queue did not answer: {cause}")]
    OutcomeUnknown {
        /// What happened.
        cause: String,
        /// Whether the request carried an Idempotency-Key.
        keyed: bool,
        /// The ids the postbacks have if this request queued them.
        ids: Vec<String>,
    },
    /// The postbacks are queued on the primary, with these ids, but fewer
    /// replicas than `POSTBACK_INGEST_WAIT_REPLICAS` confirmed them in time.
    #[error("{cause}")]
    NotReplicated {
        /// How many confirmed.
        cause: String,
        /// Whether the request carried an Idempotency-Key.
        keyed: bool,
        /// The queued postbacks' ids.
        ids: Vec<String>,
    },
    /// Over the caller's rate; nothing was queued.
    #[error(
        "over the rate of {} postbacks per second; this request's postbacks fit in {} s; nothing was queued",
        .0.rate.per_second(),
        .0.retry_after_secs()
    )]
    RateLimited(crate::rate::Verdict),
    /// The Idempotency-Key was used before for another request body.
    #[error("this Idempotency-Key was used before, within POSTBACK_IDEMPOTENCY_TTL_S, for a different request body")]
    IdempotencyKeyReused,
    /// Too many postbacks wait for delivery (`POSTBACK_MAX_BACKLOG`).
    #[error("{0}")]
    BacklogFull(String),
    /// No accepted bearer token (`POSTBACK_INGEST_TOKENS_FILE` is set).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No such route.
    #[error("not found")]
    NotFound,
}

/// What a caller should do after a 503 that may have queued its postbacks.
fn retry_advice(keyed: bool) -> &'static str {
    if keyed {
        "Send the request again with the same Idempotency-Key: if they were queued you get their ids, and \
         nothing is queued twice"
    } else {
        "Sending the request again may deliver them twice; send an Idempotency-Key header to make such retries safe"
    }
}

fn first_detail(invalid: &Invalid) -> String {
    invalid.0.first().map(|v| format!("{}: {}", v.field, v.detail)).unwrap_or_default()
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// A URI reference naming the kind of problem; see `schemas/openapi.yaml`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short summary of the kind.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What happened to this request.
    pub detail: String,
    /// For an invalid request: the first offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For an invalid request: every offending field (capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Violation>>,
    /// When the postbacks are, or may be, queued after all: their ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        Self { kind, title, status: status.as_u16(), detail, field: None, errors: None, ids: None }
    }
}

impl IngestError {
    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        let detail = self.to_string();
        match self {
            IngestError::Invalid(invalid) => Problem {
                field: invalid.0.first().map(|v| v.field.clone()),
                errors: Some(invalid.0.clone()),
                ..Problem::new(S::BAD_REQUEST, "/problems/invalid-request", "Invalid request", detail)
            },
            IngestError::Json(JsonError::TooDeep) => {
                Problem::new(S::BAD_REQUEST, "/problems/invalid-request", "Invalid request", detail)
            }
            IngestError::Json(JsonError::Malformed(_)) => {
                Problem::new(S::BAD_REQUEST, "/problems/malformed-json", "Malformed JSON", detail)
            }
            IngestError::BodyRead(_) => {
                Problem::new(S::BAD_REQUEST, "/problems/unreadable-body", "Unreadable body", detail)
            }
            IngestError::BodyTimeout(_) => {
                Problem::new(S::REQUEST_TIMEOUT, "/problems/body-timeout", "Request body timeout", detail)
            }
            IngestError::TooLarge { .. } => {
                Problem::new(S::PAYLOAD_TOO_LARGE, "/problems/payload-too-large", "Payload too large", detail)
            }
            IngestError::Unavailable(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Service unavailable",
                "the delivery queue is unavailable; nothing was queued, send the request again later".into(),
            ),
            IngestError::OutcomeUnknown { keyed, ids, .. } => Problem {
                ids: Some(ids.clone()),
                ..Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "/problems/outcome-unknown",
                    "Outcome unknown",
                    format!(
                        "the delivery queue did not answer in time: the postbacks may have been queued (then with \
                         the ids given here). {}",
                        retry_advice(*keyed)
                    ),
                )
            },
            IngestError::NotReplicated { cause, keyed, ids } => Problem {
                ids: Some(ids.clone()),
                ..Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "/problems/not-replicated",
                    "Not replicated",
                    format!(
                        "the postbacks were queued (with the ids given here), but {cause} \
                         (POSTBACK_INGEST_WAIT_REPLICAS): they will be delivered unless the primary fails first. {}",
                        retry_advice(*keyed)
                    ),
                )
            },
            IngestError::IdempotencyKeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency key reused",
                format!("{detail}; nothing was queued. Use a new key for a new request"),
            ),
            IngestError::BacklogFull(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "/problems/backlog-full",
                "Backlog full",
                "delivery is behind and the queue is full; nothing was queued, send the request again later".into(),
            ),
            IngestError::RateLimited(_) => {
                Problem::new(S::TOO_MANY_REQUESTS, "/problems/rate-limited", "Rate limited", detail)
            }
            IngestError::Unauthorized => {
                Problem::new(S::UNAUTHORIZED, "/problems/unauthorized", "Unauthorized", detail)
            }
            IngestError::MethodNotAllowed => {
                Problem::new(S::METHOD_NOT_ALLOWED, "/problems/method-not-allowed", "Method not allowed", detail)
            }
            IngestError::NotFound => Problem::new(S::NOT_FOUND, "/problems/not-found", "Not found", detail),
        }
    }
}

impl IngestError {
    /// The `outcome` label of a request refused with this error.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Invalid(_) | IngestError::Json(JsonError::TooDeep) => "invalid",
            IngestError::Json(JsonError::Malformed(_)) => "malformed_json",
            IngestError::BodyRead(_) => "unreadable_body",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::Unavailable(_) => "unavailable",
            IngestError::OutcomeUnknown { .. } => "outcome_unknown",
            IngestError::NotReplicated { .. } => "not_replicated",
            IngestError::IdempotencyKeyReused => "idempotency_key_reused",
            IngestError::BacklogFull(_) => "backlog_full",
            IngestError::RateLimited(_) => "rate_limited",
            IngestError::Unauthorized => "unauthorized",
            IngestError::MethodNotAllowed => "method_not_allowed",
            IngestError::NotFound => "not_found",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            IngestError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "refused a request: queue unavailable");
                Some(RETRY_AFTER_SECS)
            }
            IngestError::OutcomeUnknown { cause, .. } => {
                tracing::warn!(error = %cause, "answered 503: the queue did not answer; the postbacks may be queued");
                Some(RETRY_AFTER_SECS)
            }
            IngestError::NotReplicated { cause, .. } => {
                tracing::warn!(error = %cause, "answered 503: the postbacks are queued but not replicated");
                Some(RETRY_AFTER_SECS)
            }
            IngestError::BacklogFull(cause) => {
                tracing::warn!(error = %cause, "refused a request: backlog full");
                Some(BACKLOG_RETRY_AFTER_SECS)
            }
            _ => None,
        };
        let mut response = problem_response(&self.problem());
        response.extensions_mut().insert(crate::metrics::RequestOutcome(self.reason()));
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let IngestError::RateLimited(verdict) = &self {
            verdict.add_headers(response.headers_mut());
        }
        if matches!(self, IngestError::BodyTimeout(_)) {
            // The rest of the body may still arrive; the connection cannot
            // carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Renders a problem document with its status and content type.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}
