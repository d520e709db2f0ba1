//! The W3C trace context a postback carries from ingest to deliver.
//!
//! Ingest opens a span per postback and stores that span's context (trace
//! id, span id, flags) inside the postback's MessagePack (wire version 2),
//! so every delivery attempt, by whichever worker and however late, is a
//! child of it in the same trace. Stored as 25 raw bytes: a third of the
//! 55-character `traceparent` header that says the same.
//!
//! The spans meant for export use [`TARGET`], so the JSON log and the
//! trace exporter can be filtered apart (see [`crate::telemetry`]).

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of the spans exported as OpenTelemetry traces.
pub const TARGET: &str = "postback::trace";

/// One span's W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace the span belongs to (never all zeros).
    pub trace_id: [u8; 16],
    /// The span (never all zeros).
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Its size on the wire.
    pub const WIRE_LEN: usize = 25;

    /// The 25 bytes stored in a postback: trace id, span id, flags.
    pub fn to_bytes(&self) -> [u8; Self::WIRE_LEN] {
        let mut out = [0; Self::WIRE_LEN];
        out[..16].copy_from_slice(&self.trace_id);
        out[16..24].copy_from_slice(&self.span_id);
        out[24] = self.flags;
        out
    }

    /// Reads [`to_bytes`](Self::to_bytes)' output; `None` for a wrong length
    /// or an all-zero id, which W3C defines as invalid.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::WIRE_LEN] = bytes.try_into().ok()?;
        let context =
            Self { trace_id: bytes[..16].try_into().ok()?, span_id: bytes[16..24].try_into().ok()?, flags: bytes[24] };
        (context.trace_id != [0; 16] && context.span_id != [0; 8]).then_some(context)
    }

    /// The trace id as 32 lowercase hex digits, as Jaeger shows it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", u128::from_be_bytes(self.trace_id))
    }

    /// The `traceparent` header value for this context.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{:016x}-{:02x}", self.trace_id_hex(), u64::from_be_bytes(self.span_id), self.flags)
    }

    /// The context of `span` when it is being traced (an OpenTelemetry
    /// exporter is installed and the span is enabled), else `None`.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        Self::of_span_context(span.context().span().span_context())
    }

    fn of_span_context(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        })
    }

    /// An OpenTelemetry context whose (remote) parent is this span: what a
    /// delivery attempt's span is given with `set_parent`.
    pub fn as_parent(&self) -> Context {
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(remote)
    }
}

/// The parent context a caller sent in its `traceparent` header (an empty
/// context when it sent none, or an invalid one).
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TraceContext {
        TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128.to_be_bytes(),
            span_id: 0x00f0_67aa_0ba9_02b7u64.to_be_bytes(),
            flags: 1,
        }
    }

    #[test]
    fn round_trips_its_25_bytes() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len(), 25);
        assert_eq!(TraceContext::from_bytes(&bytes), Some(sample()));
        assert_eq!(TraceContext::from_bytes(&bytes[..24]), None);
        assert_eq!(TraceContext::from_bytes(&[0; 25]), None, "all-zero ids are invalid");
    }

    #[test]
    fn formats_the_w3c_example() {
        // The example of the W3C Trace Context recommendation.
        assert_eq!(sample().traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(sample().trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn reads_a_callers_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", sample().traceparent().parse().expect("header"));
        let context = from_headers(&headers);
        let span = context.span();
        assert_eq!(TraceContext::of_span_context(span.span_context()), Some(sample()));
        assert!(!from_headers(&http::HeaderMap::new()).has_active_span());
    }

    #[test]
    fn becomes_a_remote_parent() {
        let parent = sample().as_parent();
        let span = parent.span();
        let context = span.span_context();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(TraceContext::of_span_context(context), Some(sample()));
    }
}
