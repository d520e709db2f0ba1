//! Ingest's Prometheus metrics and `GET /metrics`.
//!
//! - `postback_ingest_requests_total{route, outcome}`: requests to the POST
//!   routes, by outcome: `accepted`, `replayed` (an Idempotency-Key seen
//!   before: the first answer again) or the rejection (`invalid`,
//!   `malformed_json`, `unreadable_body`, `too_large`, `unauthorized`,
//!   `idempotency_key_reused`, `rate_limited`, `body_timeout`,
//!   `backlog_full`, `unavailable`,
//!   `outcome_unknown`, `not_replicated`).
//! - `postback_ingest_postbacks_total{outcome}`: postbacks of valid
//!   requests: `accepted`, `replayed` (not queued again), or with their
//!   request's rejection.
//! - `postback_ingest_request_duration_seconds{route}`: from the request's
//!   arrival to its answer, whatever the outcome.
//! - `postback_ingest_enqueue_duration_seconds`: the enqueue script's round
//!   trip to Redis (WAIT included when asked for).
//! - `postback_ingest_rate_checks_total{outcome}`: rate checks of requests
//!   that have a rate (see [`crate::rate`]): `allowed`, `limited`, or
//!   `error` (Redis could not be asked; the request went on).
//! - `postback_redis_up`: 1 when Redis answered a PING during this scrape.
//! - `postback_redis_memory_ratio`: Redis's used_memory / maxmemory at the
//!   last sample (absent while unknown or without a maxmemory).
//! - `postback_ingest_gate_sample_age_seconds`: how old the admission
//!   gate's last good sample is ([`crate::gate::UNSAMPLED_AFTER`]).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use postback_common::metrics::{CONTENT_TYPE, latency_histogram, render};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// How long a scrape waits for Redis's PING.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A request's `outcome` label when it is not plainly `accepted`: why it
/// was refused (put on its response by
/// [`IntoResponse`](crate::error::IngestError)), or `replayed`; for
/// [`track`] to count.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome(pub &'static str);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Every metric ingest keeps, and the registry that renders them.
pub struct IngestMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    postbacks: Family<OutcomeLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    enqueue: Histogram,
    rate_checks: Family<OutcomeLabels, Counter>,
    redis_up: Gauge,
    memory: postback_common::metrics::MemoryRatio,
    sample_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestMetrics {
    /// Registers every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postback");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("ingest_requests", "Requests to the POST routes, by route and outcome", requests.clone());
        let postbacks = Family::<OutcomeLabels, Counter>::default();
        registry.register("ingest_postbacks", "Postbacks of valid requests, by outcome", postbacks.clone());
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "ingest_request_duration_seconds",
            "Time from a request's arrival to its answer",
            duration.clone(),
        );
        let enqueue = latency_histogram();
        registry.register(
            "ingest_enqueue_duration_seconds",
            "Round trip of the enqueue script to Redis",
            enqueue.clone(),
        );
        let rate_checks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ingest_rate_checks",
            "Rate checks of requests that have a rate, by outcome",
            rate_checks.clone(),
        );
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 when Redis answered a PING during this scrape, else 0", redis_up.clone());
        let memory = postback_common::metrics::MemoryRatio::register(&mut registry);
        let sample_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "ingest_gate_sample_age_seconds",
            "Age of the admission gate's last good sample of Redis's memory and backlog (requests are refused once \
             it reaches 30 while a limit is set)",
            sample_age.clone(),
        );
        Self { registry, requests, postbacks, duration, enqueue, rate_checks, redis_up, memory, sample_age }
    }

    /// Counts `n` postbacks of a valid request with `outcome`.
    pub fn postbacks(&self, outcome: &'static str, n: usize) {
        self.postbacks.get_or_create(&OutcomeLabels { outcome }).inc_by(n as u64);
    }

    /// Counts one rate check.
    pub fn rate_checked(&self, outcome: &'static str) {
        self.rate_checks.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records one enqueue round trip.
    pub fn enqueued_in(&self, took: Duration) {
        self.enqueue.observe(took.as_secs_f64());
    }
}

/// Middleware on the POST routes: times each request and counts it by
/// outcome.
pub async fn track(State(state): State<AppState>, path: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let route = path.as_ref().map_or("unmatched", |p| p.as_str()).to_owned();
    let outcome = match response.extensions().get::<RequestOutcome>() {
        Some(RequestOutcome(reason)) => reason,
        None if response.status().is_success() => "accepted",
        None => "other",
    };
    let metrics = &state.metrics;
    metrics.duration.get_or_create(&RouteLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RequestLabels { route, outcome }).inc();
    response
}

/// `GET /metrics`: checks Redis, then renders every metric.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let up = postback_common::redis::ping(&state.redis, PING_TIMEOUT).await.is_ok();
    state.metrics.redis_up.set(i64::from(up));
    state.metrics.memory.set(&state.memory);
    state.metrics.sample_age.set(state.gate.sample_age().map_or(0.0, |age| age.as_secs_f64()));
    let mut response = render(&state.metrics.registry).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
