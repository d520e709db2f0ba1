//! A real OTLP/HTTP trace receiver on 127.0.0.1: what a service's exporter
//! sends to `OTEL_EXPORTER_OTLP_ENDPOINT`, decoded with opentelemetry-proto.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::sync::Notify;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// OTLP span kind: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    /// Attributes, every value as text.
    pub attributes: HashMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl ExportedSpan {
    /// An attribute's value as text, panicking with the span when missing.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).unwrap_or_else(|| panic!("no attribute {key} on {self:#?}"))
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ExportedSpan>>,
    notify: Notify,
}

/// The receiver.
pub struct Collector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().route("/v1/traces", post(receive)).with_state(shared.clone());
        let (addr, task) = crate::serve("127.0.0.1", app).await;
        Self { addr, shared, task }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.shared.spans.lock().expect("collector lock").clone()
    }

    /// Waits until `done` holds for the spans received, then returns them.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[ExportedSpan]) -> bool) -> Vec<ExportedSpan> {
        let wait = async {
            loop {
                let notified = self.shared.notify.notified();
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(spans) => spans,
            Err(_) => panic!("the spans never matched; received: {:#?}", self.spans()),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ExportedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
                attributes: attributes(span.attributes),
                status: span.status.map_or(0, |s| s.code),
            });
        }
    }
    shared.spans.lock().expect("collector lock").extend(received);
    shared.notify.notify_waiters();
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
}

fn attributes(pairs: Vec<KeyValue>) -> HashMap<String, String> {
    pairs.into_iter().map(|kv| (kv.key, kv.value.map(text).unwrap_or_default())).collect()
}

fn text(value: AnyValue) -> String {
    match value.value {
        Some(Any::StringValue(s)) => s,
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
