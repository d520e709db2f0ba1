//! Logging and tracing set-up: one JSON object per line on stdout, and
//! OpenTelemetry traces over OTLP/HTTP when the standard `OTEL_*` variables
//! ask for them.
//!
//! Each line carries `timestamp` (RFC 3339, UTC), `level`, `target`, the
//! fields of the spans the event happened in (outermost first, inner ones
//! win), then the event's own fields. A field an event declares but leaves
//! without a value (a `None` passed for an `Option`) is written as `null`, so
//! a consumer of the log always finds the same keys: a delivery attempt that
//! failed before any HTTP status has `"status": null`, not a missing key.
//!
//! `RUST_LOG` filters the log as usual (default `info`).
//!
//! # Traces
//!
//! Spans with the target [`TARGET`] are exported (and never logged):
//! ingest's request and per-postback spans, deliver's per-attempt spans.
//! Exporting is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER`
//! is `otlp`; `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn
//! it off. With none of them set nothing is exported and nothing is said.
//! The SDK reads the rest (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, ...); the service name
//! defaults to the binary's. Only `http/protobuf` is built in: another
//! `OTEL_EXPORTER_OTLP_PROTOCOL` is refused at start-up, naming it.
//!
//! Spans are handed to a batch processor on its own thread with a bounded
//! queue: a slow or absent collector costs dropped spans, never a slower
//! delivery.

use std::fmt;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use crate::trace_context::TARGET;

/// How long, at exit, the last spans may take to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A logging or tracing setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TelemetryError(String);

/// What must outlive the service: the trace exporter, flushed by
/// [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued, waiting at most two seconds.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
}

/// Installs the JSON-lines logger and, when asked for, the OTLP trace
/// exporter, for the binary `service`. Must run outside the async runtime
/// (the exporter's HTTP client is a blocking one on its own thread).
pub fn init(service: &str) -> Result<Telemetry, TelemetryError> {
    let lookup = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let filter = match lookup("RUST_LOG") {
        Some(spec) => {
            EnvFilter::try_new(&spec).map_err(|e| TelemetryError(format!("RUST_LOG is not a valid log filter: {e}")))?
        }
        None => EnvFilter::new("info"),
    };
    // Trace spans are for the exporter; the log has its own fields.
    let filter = filter.add_directive(format!("{TARGET}=off").parse().map_err(|e| TelemetryError(format!("{e}")))?);
    let provider = if exporter_wanted(lookup)? { Some(provider(service, lookup)?) } else { None };
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .with_writer(std::io::stdout)
        .with_filter(filter);
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_owned()))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| meta.target() == TARGET))
    });
    Registry::default().with(fmt).with(otel).try_init().map_err(|e| TelemetryError(e.to_string()))?;
    if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// Whether the `OTEL_*` variables ask for an exporter; an error names a
/// variable whose value this build cannot honour.
fn exporter_wanted(lookup: impl Fn(&str) -> Option<String>) -> Result<bool, TelemetryError> {
    if lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let wanted = match lookup("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("none") => return Ok(false),
        Some("otlp") => true,
        Some(other) => {
            return Err(TelemetryError(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported: use otlp, or none to turn traces off"
            )));
        }
        None => {
            lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || lookup("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        }
    };
    if wanted {
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = lookup(name)
                && protocol.trim() != "http/protobuf"
            {
                return Err(TelemetryError(format!(
                    "{name}={protocol} is not supported: this build exports traces over http/protobuf only"
                )));
            }
        }
    }
    Ok(wanted)
}

/// The tracer provider: OTLP/HTTP exporter behind a batch processor,
/// sampler and limits from the environment.
fn provider(service: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(format!("cannot build the OTLP trace exporter (OTEL_EXPORTER_OTLP_*): {e}")))?;
    let named = lookup("OTEL_SERVICE_NAME").is_some()
        || lookup("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| attrs.contains("service.name="));
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// Installs the same logger for in-process tests, but only when `TEST_LOG`
/// is set: test output stays quiet by default. Safe to call many times.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_test_writer()
            .try_init();
    }
}

/// The event formatter described in the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        map.insert("timestamp".into(), humantime::format_rfc3339_micros(SystemTime::now()).to_string().into());
        map.insert("level".into(), meta.level().as_str().into());
        map.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    map.extend(fields);
                }
            }
        }
        for field in meta.fields() {
            map.insert(field.name().into(), Value::Null);
        }
        event.record(&mut JsonVisitor(&mut map));
        // Records from crates that use `log` (fred does) arrive with their
        // origin in `log.*` fields: keep the target, drop the source location.
        map.retain(|k, _| !k.starts_with("log.") || k == "log.target");
        if let Some(target) = map.remove("log.target") {
            map.insert("target".into(), target);
        }
        writeln!(writer, "{}", Value::Object(map))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.0.insert(field.name().into(), text.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(vars: &[(&str, &str)]) -> Result<bool, String> {
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        exporter_wanted(lookup).map_err(|e| e.to_string())
    }

    #[test]
    fn exports_only_when_the_otel_variables_ask_for_it() {
        assert_eq!(wanted(&[]), Ok(false), "nothing set: nothing exported");
        assert_eq!(wanted(&[("OTEL_SERVICE_NAME", "x")]), Ok(false));
        assert_eq!(wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]), Ok(true));
        assert_eq!(wanted(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")]), Ok(true));
        assert_eq!(wanted(&[("OTEL_TRACES_EXPORTER", "otlp")]), Ok(true), "the default endpoint");
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]), Ok(false));
        assert_eq!(wanted(&[endpoint, ("OTEL_SDK_DISABLED", "true")]), Ok(false));
        assert_eq!(wanted(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]), Ok(true));
    }

    #[test]
    fn settings_it_cannot_honour_are_named() {
        let error = wanted(&[("OTEL_TRACES_EXPORTER", "zipkin")]).expect_err("refused");
        assert!(error.contains("OTEL_TRACES_EXPORTER=zipkin"), "{error}");
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let error = wanted(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect_err("refused");
        assert!(error.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{error}");
        // Without an exporter the protocol does not matter.
        assert_eq!(wanted(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), Ok(false));
    }
}
