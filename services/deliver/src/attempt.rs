//! One HTTP delivery attempt of one postback, and its log line.
//!
//! GET and DELETE send no body, POST/PUT/PATCH send the data object as JSON.
//! Every request carries `X-Postback-Id`, so a receiver can drop the
//! duplicates that at-least-once delivery allows; the id is the same on every
//! attempt of a postback.
//!
//! Each attempt is an OpenTelemetry client span ([`span`]) whose parent is
//! ingest's span for the postback, carried in the postback itself: every
//! attempt, retried or claimed by another worker, joins the same trace.

use std::time::{Instant, SystemTime};

use postback_common::Postback;
use postback_common::trace_context::TARGET;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tracing::{Level, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::retry::{Decision, Verdict, parse_retry_after};

/// The header that carries the postback id.
pub const POSTBACK_ID_HEADER: &str = "x-postback-id";

/// What one attempt did.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the request was sent.
    pub delivered_at: SystemTime,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// From sending the request to the end of the (capped) body.
    pub response_time_ms: u64,
    /// The start of the response body, lossily decoded as UTF-8.
    pub response_body: String,
    /// Whether the body was longer than what was kept.
    pub body_truncated: bool,
    /// How it went.
    pub verdict: Verdict,
}

impl Attempt {
    /// When the request was sent, in ms since the epoch.
    pub fn delivered_at_ms(&self) -> u64 {
        self.delivered_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// What an attempt needs besides the postback.
pub struct AttemptContext<'a> {
    /// The shared HTTP client.
    pub http: &'a reqwest::Client,
    /// Body bytes kept for the log.
    pub log_body_bytes: usize,
}

/// Sends `postback` once to `url` (its expanded template).
pub async fn send(ctx: &AttemptContext<'_>, postback: &Postback, url: &str) -> Attempt {
    let delivered_at = SystemTime::now();
    let failed = |verdict: Verdict| Attempt {
        delivered_at,
        status: None,
        response_time_ms: 0,
        response_body: String::new(),
        body_truncated: false,
        verdict,
    };
    let method = reqwest::Method::from_bytes(postback.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = ctx.http.request(method, url);
    match HeaderValue::from_str(&postback.id.to_string()) {
        Ok(id) => request = request.header(POSTBACK_ID_HEADER, id),
        Err(e) => return failed(Verdict::Final { reason: format!("postback id header: {e}") }),
    }
    if postback.method.has_body() {
        match serde_json::to_vec(&postback.data) {
            Ok(body) => request = request.header(CONTENT_TYPE, "application/json").body(body),
            Err(e) => return failed(Verdict::Final { reason: format!("JSON body: {e}") }),
        }
    }
    let started = Instant::now();
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let verdict = if let Some(refused) = crate::guard::refused_in(&e) {
                Verdict::Refused { reason: refused.to_string() }
            } else if e.is_builder() || e.is_redirect() {
                Verdict::Final { reason: transport_reason(&e) }
            } else {
                Verdict::Retryable { reason: transport_reason(&e), retry_after: None }
            };
            let mut attempt = failed(verdict);
            attempt.response_time_ms = started.elapsed().as_millis() as u64;
            return attempt;
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let (body, body_truncated) = crate::http::read_capped(response, ctx.log_body_bytes).await;
    Attempt {
        delivered_at,
        status: Some(status),
        response_time_ms: started.elapsed().as_millis() as u64,
        response_body: String::from_utf8_lossy(&body).into_owned(),
        body_truncated,
        verdict: Verdict::of_status(status, retry_after),
    }
}

/// The client span of attempt number `number` of `postback` to `url`
/// (disabled, and free, when traces are not exported).
pub fn span(postback: &Postback, number: u32, url: &url::Url) -> Span {
    if !tracing::enabled!(target: TARGET, Level::INFO) {
        return Span::none();
    }
    let method = postback.method.as_str();
    let span = tracing::info_span!(
        target: TARGET,
        "attempt",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = field::Empty,
        http.request.method = method,
        url.full = url.as_str(),
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default(),
        http.response.status_code = field::Empty,
        error.type = field::Empty,
        postback.id = %postback.id,
        postback.attempt = number,
    );
    if let Some(trace) = &postback.trace {
        let _ = span.set_parent(trace.as_parent());
    }
    span
}

/// Records how the attempt went on its span.
pub fn record(span: &Span, attempt: &Attempt) {
    if span.is_disabled() {
        return;
    }
    if let Some(status) = attempt.status {
        span.record("http.response.status_code", status);
    }
    let error_type = match (&attempt.verdict, attempt.status) {
        (Verdict::Delivered, _) => None,
        (_, Some(status)) => Some(status.to_string()),
        (Verdict::Refused { .. }, None) => Some("refused".to_owned()),
        (verdict, None) => verdict.reason().and_then(|r| r.split(':').next()).map(str::to_owned),
    };
    if let Some(error_type) = error_type {
        span.record("error.type", error_type);
        span.record("otel.status_code", "ERROR");
    }
}

/// A short reason for a request that got no response: the error and its
/// causes, e.g. "timeout: …" or "connect: … Connection refused".
fn transport_reason(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_redirect() {
        "redirect"
    } else {
        "transport"
    };
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs an attempt as one JSON line: INFO when delivered, WARN when it will
/// be retried, ERROR when the postback is given up.
pub fn log(postback: &Postback, number: u32, entry_id: &str, url: &str, attempt: &Attempt, decision: &Decision) {
    let delivered_at = postback_common::time::rfc3339_ms(attempt.delivered_at);
    let queued_ms = attempt
        .delivered_at
        .duration_since(postback_common::time::from_ms(postback.accepted_at_ms))
        .map_or(0, |d| d.as_millis() as u64);
    let next_attempt_in_ms = match decision {
        Decision::Retry { after } => Some(after.as_millis() as u64),
        _ => None,
    };
    let error = match decision {
        Decision::Dead { reason } => Some(reason.as_str()),
        _ => attempt.verdict.reason(),
    };
    let trace_id = postback.trace.as_ref().map(|t| t.trace_id_hex());
    let trace_id = trace_id.as_deref();
    macro_rules! attempt_event {
        ($level:expr) => {
            tracing::event!(
                target: "postback::attempt",
                $level,
                postback_id = %postback.id,
                entry_id,
                attempt = number,
                method = postback.method.as_str(),
                url,
                delivered_at = delivered_at.as_str(),
                status = attempt.status,
                response_time_ms = attempt.response_time_ms,
                response_body = attempt.response_body.as_str(),
                response_body_truncated = attempt.body_truncated,
                queued_ms,
                outcome = decision.as_str(),
                next_attempt_in_ms,
                error,
                trace_id,
                "delivery attempt"
            )
        };
    }
    match decision {
        Decision::Delivered => attempt_event!(Level::INFO),
        Decision::Retry { .. } => attempt_event!(Level::WARN),
        Decision::Dead { .. } => attempt_event!(Level::ERROR),
    }
}
