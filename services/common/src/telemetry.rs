//! Logging set-up: one JSON object per line on stdout.
//!
//! Each line carries `timestamp` (RFC 3339, UTC), `level`, `target`, the
//! fields of the spans the event happened in (outermost first, inner ones
//! win), then the event's own fields. A field an event declares but leaves
//! without a value (a `None` passed for an `Option`) is written as `null`, so
//! a consumer of the log always finds the same keys: a delivery attempt that
//! failed before any HTTP status has `"status": null`, not a missing key.
//!
//! `RUST_LOG` filters as usual (default `info`).

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `RUST_LOG` holds a filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("RUST_LOG is not a valid log filter: {0}")]
pub struct TelemetryError(String);

/// Installs the JSON-lines logger for a service binary.
pub fn init() -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec).map_err(|e| TelemetryError(e.to_string()))?,
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .with_writer(std::io::stdout)
        .try_init()
        .map_err(|e| TelemetryError(e.to_string()))
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
