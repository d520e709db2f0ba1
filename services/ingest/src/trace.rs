//! Ingest's part of the OpenTelemetry trace: a server span per request
//! (continuing the caller's `traceparent` when it sent one) and a producer
//! span for its postbacks, whose context travels inside them to deliver.
//!
//! All of it costs nothing when traces are not exported: the spans are
//! disabled and no postback carries a context.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use postback_common::Postback;
use postback_common::trace_context::{self, TARGET, TraceContext};
use tracing::{Instrument, Level, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request's server span, handed to the handler in the request's
/// extensions (the handler's own span is a log span, not exported).
#[derive(Debug, Clone)]
pub struct RequestSpan(pub Span);

/// Middleware on the POST routes: the request's server span.
pub async fn request_span(path: Option<MatchedPath>, mut request: Request, next: Next) -> Response {
    if !tracing::enabled!(target: TARGET, Level::INFO) {
        return next.run(request).await;
    }
    let route = path.as_ref().map_or("unmatched", |p| p.as_str());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = field::Empty,
        postback.count = field::Empty,
    );
    // A caller that is itself traced gets our spans inside its trace.
    let _ = span.set_parent(trace_context::from_headers(request.headers()));
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Opens the request's producer span, as a child of the request span, and
/// stores its context in every postback (one context per request keeps a
/// request's postbacks in one version 3 entry). Returns the span, to be
/// dropped (ended) once the postbacks are in Redis; none when not tracing.
pub fn producer_span(request: &Span, postbacks: &mut [Postback], stream: &str) -> Option<Span> {
    if request.is_disabled() {
        return None;
    }
    request.record("postback.count", postbacks.len());
    let span = tracing::info_span!(
        target: TARGET,
        parent: request,
        "postbacks",
        otel.name = format!("send {stream}"),
        otel.kind = "producer",
        otel.status_code = field::Empty,
        messaging.system = "redis",
        messaging.operation.type = "send",
        messaging.destination.name = stream,
        messaging.batch.message_count = postbacks.len(),
        postback.id = postbacks.first().map(|p| p.id.to_string()),
    );
    let context = TraceContext::of_span(&span);
    postbacks.iter_mut().for_each(|postback| postback.trace = context);
    Some(span)
}

/// Marks the producer span as failed: nothing was enqueued.
pub fn failed(span: Option<&Span>) {
    if let Some(span) = span {
        span.record("otel.status_code", "ERROR");
    }
}
