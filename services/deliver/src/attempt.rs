//! One delivery attempt of one postback, and its log line.
//!
//! The URL is the template with every `{key}` filled from the data
//! (percent-encoded); GET and DELETE send no body, POST/PUT/PATCH send the
//! data object as JSON. Every request carries `X-Postback-Id`, so a receiver
//! can drop the duplicates that at-least-once delivery allows.

use std::time::{Instant, SystemTime};

use postback_common::{Postback, template};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tracing::{Level, instrument};

/// The header that carries the postback id.
pub const POSTBACK_ID_HEADER: &str = "x-postback-id";

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered 2xx.
    Delivered,
    /// The target answered something else, or could not be reached.
    Failed {
        /// Why, for the log.
        reason: String,
    },
}

impl Outcome {
    /// The `outcome` field of the log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// What one attempt did.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The expanded URL (empty when the template could not be expanded).
    pub url: String,
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
    /// How it ended.
    pub outcome: Outcome,
}

/// What an attempt needs besides the postback.
pub struct AttemptContext<'a> {
    /// The shared HTTP client.
    pub http: &'a reqwest::Client,
    /// Replacement for unmatched `{key}`s.
    pub unmatched_default: &'a str,
    /// Body bytes kept for the log.
    pub log_body_bytes: usize,
}

/// Sends `postback` once and logs the attempt as one JSON line.
#[instrument(name = "attempt", skip_all, fields(postback_id = %postback.id, attempt = number, entry_id = %entry_id))]
pub async fn run(ctx: &AttemptContext<'_>, postback: &Postback, number: u32, entry_id: &str) -> Attempt {
    let attempt = send(ctx, postback).await;
    log(postback, number, &attempt);
    attempt
}

async fn send(ctx: &AttemptContext<'_>, postback: &Postback) -> Attempt {
    let delivered_at = SystemTime::now();
    let failed = |url: String, reason: String| Attempt {
        url,
        delivered_at,
        status: None,
        response_time_ms: 0,
        response_body: String::new(),
        body_truncated: false,
        outcome: Outcome::Failed { reason },
    };
    let url = match template::expand(&postback.url, &postback.data, ctx.unmatched_default) {
        Ok(url) => url,
        Err(e) => return failed(String::new(), format!("URL template: {e}")),
    };
    let method = reqwest::Method::from_bytes(postback.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = ctx.http.request(method, url.as_str());
    match HeaderValue::from_str(&postback.id.to_string()) {
        Ok(id) => request = request.header(POSTBACK_ID_HEADER, id),
        Err(e) => return failed(url, format!("postback id header: {e}")),
    }
    if postback.method.has_body() {
        match serde_json::to_vec(&postback.data) {
            Ok(body) => request = request.header(CONTENT_TYPE, "application/json").body(body),
            Err(e) => return failed(url, format!("JSON body: {e}")),
        }
    }
    let started = Instant::now();
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let mut attempt = failed(url, transport_reason(&e));
            attempt.response_time_ms = started.elapsed().as_millis() as u64;
            return attempt;
        }
    };
    let status = response.status();
    let (body, body_truncated) = crate::http::read_capped(response, ctx.log_body_bytes).await;
    let outcome = if status.is_success() {
        Outcome::Delivered
    } else {
        Outcome::Failed { reason: format!("HTTP {}", status.as_u16()) }
    };
    Attempt {
        url,
        delivered_at,
        status: Some(status.as_u16()),
        response_time_ms: started.elapsed().as_millis() as u64,
        response_body: String::from_utf8_lossy(&body).into_owned(),
        body_truncated,
        outcome,
    }
}

/// A short reason for a request that got no response: the error and its
/// causes, e.g. "timed out" or "connection refused".
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

fn log(postback: &Postback, number: u32, attempt: &Attempt) {
    let error = match &attempt.outcome {
        Outcome::Delivered => None,
        Outcome::Failed { reason } => Some(reason.as_str()),
    };
    let delivered_at = postback_common::time::rfc3339_ms(attempt.delivered_at);
    let queued_ms = attempt
        .delivered_at
        .duration_since(postback_common::time::from_ms(postback.accepted_at_ms))
        .map_or(0, |d| d.as_millis() as u64);
    macro_rules! attempt_event {
        ($level:expr) => {
            tracing::event!(
                target: "postback::attempt",
                $level,
                postback_id = %postback.id,
                attempt = number,
                method = postback.method.as_str(),
                url = attempt.url.as_str(),
                delivered_at = delivered_at.as_str(),
                status = attempt.status,
                response_time_ms = attempt.response_time_ms,
                response_body = attempt.response_body.as_str(),
                response_body_truncated = attempt.body_truncated,
                queued_ms,
                outcome = attempt.outcome.as_str(),
                error = error,
                "delivery attempt"
            )
        };
    }
    match attempt.outcome {
        Outcome::Delivered => attempt_event!(Level::INFO),
        Outcome::Failed { .. } => attempt_event!(Level::WARN),
    }
}
