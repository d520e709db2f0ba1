//! One HTTP delivery attempt of one postback, and its log line.
//!
//! GET and DELETE send no body, POST/PUT/PATCH send the data object as JSON.
//! The only headers sent are fixed ones (`X-Postback-Id`, `Content-Type`,
//! `User-Agent`): no part of a caller's data ever becomes a header.
//! Targets listed in `POSTBACK_SIGNING_KEYS_FILE` also get the Standard
//! Webhooks headers ([`crate::signing`]), over the exact body sent.
//! Every request carries `X-Postback-Id`, so a receiver can drop the
//! duplicates that at-least-once delivery allows; the id is the same on every
//! attempt of a postback.
//!
//! Each attempt is an OpenTelemetry client span ([`span`]) whose parent is
//! ingest's span for the postback, carried in the postback itself: every
//! attempt, retried or claimed by another worker, joins the same trace.

use std::time::{Duration, Instant, SystemTime};

use postback_common::Postback;
use postback_common::trace_context::TARGET;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tracing::{Level, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::http::{Egress, Outgoing, SendError};
use crate::outcome::Outcome;
use crate::retry::parse_retry_after;
use crate::signing::SigningKeys;

/// The header that carries the postback id.
pub(crate) const POSTBACK_ID_HEADER: &str = "x-postback-id";

/// What one attempt did: the facts, before anything is decided.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// When the request was sent.
    pub(crate) at: SystemTime,
    /// The HTTP status, if a response arrived.
    pub(crate) status: Option<u16>,
    /// The target's `Retry-After`, if it sent one.
    pub(crate) retry_after: Option<Duration>,
    /// From sending the request to the end of the (capped) body.
    pub(crate) response_time_ms: u64,
    /// The start of the response body, lossily decoded as UTF-8.
    pub(crate) response_body: String,
    /// Whether the body was longer than what was kept.
    pub(crate) body_truncated: bool,
    /// Why no response came, when none did.
    pub(crate) failure: Option<Failure>,
}

/// Why an attempt got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection failed or timed out: another attempt may succeed.
    Transport(String),
    /// The request could not be built, or its redirects not followed.
    Unsendable(String),
    /// The SSRF guard refused a redirect hop (or the target itself).
    Refused(String),
}

impl Attempt {
    /// An attempt that got no response.
    pub(crate) fn failed(at: SystemTime, failure: Failure) -> Self {
        Self {
            at,
            status: None,
            retry_after: None,
            response_time_ms: 0,
            response_body: String::new(),
            body_truncated: false,
            failure: Some(failure),
        }
    }

    /// When the request was sent, in ms since the epoch.
    pub(crate) fn at_ms(&self) -> u64 {
        self.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// What went wrong, if anything: the failure, or a status other than
    /// 2xx (`HTTP 503`).
    pub(crate) fn error(&self) -> Option<String> {
        match (&self.failure, self.status) {
            (Some(Failure::Transport(why) | Failure::Unsendable(why) | Failure::Refused(why)), _) => Some(why.clone()),
            (None, Some(200..=299)) => None,
            (None, Some(status)) => Some(format!("HTTP {status}")),
            (None, None) => None,
        }
    }
}

/// Sends `postback` once to `url` (its expanded template) through
/// `egress`, keeping at most `log_body_bytes` of the response body, within
/// `timeout` when given (else the client's).
pub(crate) async fn send(
    egress: &Egress,
    signing: &SigningKeys,
    log_body_bytes: usize,
    postback: &Postback,
    url: &url::Url,
    timeout: Option<Duration>,
) -> Attempt {
    let at = SystemTime::now();
    let method = reqwest::Method::from_bytes(postback.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut headers = HeaderMap::new();
    match HeaderValue::from_str(&postback.id.to_string()) {
        Ok(id) => headers.insert(POSTBACK_ID_HEADER, id),
        Err(e) => return Attempt::failed(at, Failure::Unsendable(format!("postback id header: {e}"))),
    };
    let mut body = None;
    if postback.method.has_body() {
        match serde_json::to_vec(&postback.data) {
            Ok(json) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                body = Some(json.into());
            }
            Err(e) => return Attempt::failed(at, Failure::Unsendable(format!("JSON body: {e}"))),
        }
    }
    if let Some(keys) = signing.keys_for(url) {
        let timestamp = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = postback.id.to_string();
        crate::signing::sign(&mut headers, keys, &id, timestamp, body.as_deref().unwrap_or_default());
    }
    let started = Instant::now();
    let response = match egress.send(Outgoing { method, url: url.clone(), headers, body, timeout }).await {
        Ok(response) => response,
        Err(e) => {
            let failure = match e {
                SendError::Refused(refused) => Failure::Refused(refused.to_string()),
                SendError::Unresolvable(why) => Failure::Transport(format!("dns: {why}")),
                SendError::Redirect(why) => Failure::Unsendable(format!("redirect: {why}")),
                SendError::TimedOut(after) => {
                    Failure::Transport(format!("timeout: the attempt's {} ms ran out", after.as_millis()))
                }
                SendError::Client(e) => {
                    if let Some(refused) = crate::guard::refused_in(&e) {
                        Failure::Refused(refused.to_string())
                    } else if e.is_builder() || e.is_redirect() {
                        Failure::Unsendable(transport_reason(&e))
                    } else {
                        Failure::Transport(transport_reason(&e))
                    }
                }
            };
            return Attempt { response_time_ms: started.elapsed().as_millis() as u64, ..Attempt::failed(at, failure) };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let (body, body_truncated) = crate::http::read_capped(response, log_body_bytes).await;
    Attempt {
        at,
        status: Some(status),
        retry_after,
        response_time_ms: started.elapsed().as_millis() as u64,
        response_body: String::from_utf8_lossy(&body).into_owned(),
        body_truncated,
        failure: None,
    }
}

/// The client span of attempt number `number` of `postback` to `url`
/// (disabled, and free, when traces are not exported).
pub(crate) fn span(postback: &Postback, number: u32, url: &url::Url) -> Span {
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
pub(crate) fn record(span: &Span, attempt: &Attempt) {
    if span.is_disabled() {
        return;
    }
    if let Some(status) = attempt.status {
        span.record("http.response.status_code", status);
    }
    let error_type = match (&attempt.failure, attempt.status) {
        (None, Some(200..=299)) => None,
        (None, Some(status)) => Some(status.to_string()),
        (Some(Failure::Refused(_)), _) => Some("refused".to_owned()),
        (Some(Failure::Transport(why) | Failure::Unsendable(why)), _) => why.split(':').next().map(str::to_owned),
        (None, None) => None,
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
pub(crate) fn log(postback: &Postback, number: u32, entry_id: &str, url: &str, attempt: &Attempt, outcome: &Outcome) {
    let attempted_at = postback_common::time::rfc3339_ms(attempt.at);
    let delivered_at = (*outcome == Outcome::Delivered).then_some(attempted_at.as_str());
    let queued_ms = attempt
        .at
        .duration_since(postback_common::time::from_ms(postback.accepted_at_ms))
        .map_or(0, |d| d.as_millis() as u64);
    let next_attempt_in_ms = match outcome {
        Outcome::Retry { after, .. } => Some(after.as_millis() as u64),
        _ => None,
    };
    let error = match outcome {
        Outcome::Dead(reason) => Some(reason.to_string()),
        _ => attempt.error(),
    };
    let error = error.as_deref();
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
                attempted_at = attempted_at.as_str(),
                delivered_at,
                status = attempt.status,
                response_time_ms = attempt.response_time_ms,
                response_body = attempt.response_body.as_str(),
                response_body_truncated = attempt.body_truncated,
                queued_ms,
                outcome = outcome.as_str(),
                next_attempt_in_ms,
                error,
                trace_id,
                "delivery attempt"
            )
        };
    }
    match outcome {
        Outcome::Delivered => attempt_event!(Level::INFO),
        Outcome::Retry { .. } => attempt_event!(Level::WARN),
        Outcome::Dead(_) => attempt_event!(Level::ERROR),
    }
}
