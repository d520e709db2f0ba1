//! `postback-bench sink`: the receiving end of a benchmark.
//!
//! Answers every request on loopback with 200 (after an optional latency,
//! or 503 for a chosen share of requests), counts deliveries (2xx answers),
//! finds duplicates by `X-Postback-Id`, and measures accepted→delivered
//! latency from the `ts` the load generator put in each postback's data
//! (microseconds since the epoch, arriving as the `ts` query parameter or
//! the `X-Bench-Ts` header). `GET /__bench/stats` returns the counts as JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::latency::{Latency, Percentiles};

/// How the sink answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkOptions {
    /// Wait this long before answering.
    pub latency: Duration,
    /// Share of requests answered 503 instead (0.0 to 1.0).
    pub fail_ratio: f64,
}

/// What the sink has seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkStats {
    /// Requests received, whatever the answer.
    pub requests: u64,
    /// Requests answered 503 on purpose.
    pub failed_on_purpose: u64,
    /// Requests answered 200: deliveries.
    pub delivered: u64,
    /// Distinct postback ids delivered.
    pub unique: u64,
    /// Deliveries of an id already delivered.
    pub duplicates: u64,
    /// Deliveries without an `X-Postback-Id`.
    pub without_id: u64,
    /// Accepted→delivered latency of first deliveries carrying a `ts`.
    pub end_to_end: Percentiles,
}

#[derive(Default)]
struct Counts {
    ids: HashMap<Box<str>, u32>,
    latency: Latency,
    last_delivery: Option<Instant>,
}

struct Shared {
    options: SinkOptions,
    requests: AtomicU64,
    failed: AtomicU64,
    without_id: AtomicU64,
    counts: Mutex<Counts>,
}

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sink {
    /// Binds `addr` (port 0: any) and serves until `stop` is cancelled.
    pub async fn start(addr: SocketAddr, options: SinkOptions, stop: CancellationToken) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            options,
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            without_id: AtomicU64::new(0),
            counts: Mutex::default(),
        });
        let app = Router::new().route("/__bench/stats", get(stats_route)).fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counts so far.
    pub fn stats(&self) -> SinkStats {
        stats(&self.shared)
    }

    /// When the last delivery arrived.
    pub fn last_delivery(&self) -> Option<Instant> {
        lock(&self.shared).last_delivery
    }

    /// Whether each of `ids` has been delivered at least once; returns the
    /// ones that have not.
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a str> {
        let counts = lock(&self.shared);
        ids.iter().filter(|id| !counts.ids.contains_key(id.as_str())).map(String::as_str).collect()
    }

    /// Forgets everything (between the phases of a run).
    pub fn reset(&self) {
        *lock(&self.shared) = Counts::default();
        for counter in [&self.shared.requests, &self.shared.failed, &self.shared.without_id] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Counts> {
    shared.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stats(shared: &Shared) -> SinkStats {
    let counts = lock(shared);
    let delivered: u64 = counts.ids.values().map(|n| u64::from(*n)).sum();
    let unique = counts.ids.len() as u64;
    let without_id = shared.without_id.load(Ordering::Relaxed);
    SinkStats {
        requests: shared.requests.load(Ordering::Relaxed),
        failed_on_purpose: shared.failed.load(Ordering::Relaxed),
        delivered: delivered + without_id,
        unique,
        duplicates: delivered - unique,
        without_id,
        end_to_end: counts.latency.percentiles(),
    }
}

async fn stats_route(State(shared): State<Arc<Shared>>) -> Json<SinkStats> {
    Json(stats(&shared))
}

async fn receive(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let options = shared.options;
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    if options.fail_ratio > 0.0 && fastrand::f64() < options.fail_ratio {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose").into_response();
    }
    let ts = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ts=")))
        .or_else(|| request.headers().get("x-bench-ts").and_then(|v| v.to_str().ok()))
        .and_then(|v| v.parse::<u64>().ok());
    let Some(id) = request.headers().get("x-postback-id").and_then(|v| v.to_str().ok()) else {
        shared.without_id.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::OK, "ok").into_response();
    };
    let mut counts = lock(&shared);
    counts.last_delivery = Some(Instant::now());
    let seen = counts.ids.entry(id.into()).or_insert(0);
    *seen += 1;
    if *seen == 1
        && let Some(ts) = ts
    {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_micros(ts);
        counts.latency.record(SystemTime::now().duration_since(sent).unwrap_or_default());
    }
    (StatusCode::OK, "ok").into_response()
}
