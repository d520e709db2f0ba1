//! What both services' `GET /metrics` share: the Prometheus text encoding,
//! the buckets of latency histograms, and the status classes used as labels.
//!
//! Each service owns its own [`Registry`] (no global one), so two instances
//! in one test process never mix their counts. Every metric is listed, with
//! its labels and meaning, in the README's "Metrics" section.

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of a `/metrics` answer (Prometheus text, 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Renders every metric of `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, registry);
    out
}

/// A latency histogram in seconds with buckets from 0.25 ms to about 16 s,
/// doubling: fine enough for a sub-millisecond ingest and wide enough for
/// a third party near its timeout.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// A duration in seconds, as Prometheus wants it.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The `status_class` label of an HTTP status: `2xx` … `5xx`, or `none`
/// when no response arrived.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(99)), "other");
        assert_eq!(status_class(None), "none");
    }

    #[test]
    fn renders_prometheus_text() {
        let mut registry = Registry::with_prefix("postback");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things seen", counter.clone());
        let histogram = latency_histogram();
        registry.register("wait_seconds", "Time waited", histogram.clone());
        counter.inc();
        histogram.observe(0.003);
        let text = render(&registry);
        assert!(text.contains("# TYPE postback_things_total counter\npostback_things_total 1\n"), "{text}");
        assert!(text.contains("postback_wait_seconds_bucket{le=\"0.004\"} 1\n"), "{text}");
        assert!(text.contains("postback_wait_seconds_bucket{le=\"0.002\"} 0\n"), "{text}");
        assert!(text.contains("postback_wait_seconds_count 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "the Prometheus text format has no EOF marker: {text}");
    }
}

/// `postback_redis_memory_ratio`: Redis's used_memory / maxmemory at the
/// last sample of a [`MemoryWatch`](crate::redis_memory::MemoryWatch),
/// set at scrape time; NaN while unknown or when Redis has no maxmemory.
#[derive(Debug, Clone, Default)]
pub struct MemoryRatio(Gauge<f64, AtomicU64>);

impl MemoryRatio {
    /// Registers the gauge in a registry prefixed `postback`.
    pub fn register(registry: &mut Registry) -> Self {
        let gauge = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "redis_memory_ratio",
            "Redis used_memory / maxmemory at the last sample (NaN: unknown, or no maxmemory)",
            gauge.clone(),
        );
        Self(gauge)
    }

    /// Copies the latest sample.
    pub fn set(&self, watch: &crate::redis_memory::MemoryWatch) {
        self.0.set(watch.ratio().unwrap_or(f64::NAN));
    }
}
