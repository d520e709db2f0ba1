//! Deliver's Prometheus metrics, served on the admin listener's
//! `GET /metrics`.
//!
//! Counted as work happens:
//! - `postback_delivery_attempts_total{outcome, status_class}`: attempts,
//!   by what was decided (`delivered`, `retry`, `dead`) and the response's
//!   status class (`2xx` … `5xx`, `none` when no response came).
//! - `postback_retries_scheduled_total{reason}`: postbacks put in the retry
//!   schedule, after a failed attempt (`failed_attempt`), or without an
//!   attempt because their host was at its concurrency limit
//!   (`host_busy`), over its rate (`host_rate_limited`), paused by its
//!   circuit breaker (`host_paused`), held back by their request's delay
//!   (`delayed`), or the worker had no slot for them in time
//!   (`worker_busy`).
//! - `postback_dead_lettered_total{reason}`: postbacks moved to the
//!   dead-letter stream: `rejected` (a final status, or a URL that cannot be
//!   built), `refused` (the SSRF guard refused the target), `exhausted`
//!   (`POSTBACK_MAX_ATTEMPTS` reached), `poison` (undecodable, or it kept
//!   failing its workers).
//! - `postback_claimed_total`: entries taken over from another worker.
//! - `postback_stale_finishes_total{reason}`: finishing steps that changed
//!   nothing because the entry was no longer this worker's: `taken_over`
//!   (another worker claimed it while its attempt ran) or `gone` (no longer
//!   pending at all: finished already, or deleted).
//! - `postback_consumers_removed_total`: consumers removed as gone.
//! - `postback_delivery_response_seconds`: third-party response time (to
//!   the end of the capped body), for attempts that got a response.
//! - `postback_end_to_end_seconds`: accepted by ingest → delivered.
//! - `postback_deliveries_in_flight`: attempts under way in this worker.
//! - `postback_redis_degraded_writes_total{write}`: writes Redis refused
//!   (`finish`: a finishing step, retried; `promote`: a move of due
//!   retries, retried) or that were left out under memory pressure
//!   (`attempt_log`: delivery-log entries, dropped); see
//!   [`crate::degraded`].
//! - `postback_host_failures_total{host}`: failed attempts per target
//!   host:port (no response, or a status other than 2xx), for the hosts
//!   first seen up to [`MAX_HOST_LABELS`]; later ones count as `other`.
//! - `postback_breaker_transitions_total{state}`: hosts' circuit breakers
//!   moved to `open`, `half_open` (a probe sent), `closed` or `paused` (by
//!   hand), as seen by this worker ([`crate::breaker`]).
//! - `postback_breaker_hosts_not_closed`: hosts open, half-open or paused,
//!   at this worker's last look (every second).
//! - `postback_dead_trimmed_total`: dead letters removed by
//!   `POSTBACK_DEAD_RETENTION`.
//! - `postback_redis_memory_ratio`: Redis's used_memory / maxmemory at the
//!   worker's last sample (every 500 ms).
//!
//! Sampled from Redis at each scrape (the same snapshot as
//! `postbackctl status`; every worker reports the same values, so alert on
//! `max` over them):
//! `postback_stream_length`, `postback_stream_postbacks`, `postback_group_lag`,
//! `postback_group_pending`,
//! `postback_oldest_pending_age_seconds`, `postback_scheduled_retries`,
//! `postback_retry_overdue_seconds` (how long the most overdue scheduled
//! retry has waited past its time),
//! `postback_dead_letters`, `postback_group_consumers`, and
//! `postback_redis_up` (0 when the sample failed; the others then keep
//! their last values).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::prelude::Client;
use postback_common::keys::Partitions;
use postback_common::metrics::{MemoryRatio, latency_histogram, render, status_class};
use postback_common::redis_memory::MemoryWatch;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ledger::Recorded;
use crate::minutes::MinuteCounts;
use crate::outcome::RetryReason;

/// Distinct `host` labels kept; more hosts than this share `other`, so
/// many partners cannot blow up the metric's cardinality.
pub(crate) const MAX_HOST_LABELS: usize = 500;

/// How long a scrape waits for its Redis sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    write: &'static str,
}

/// The gauges sampled from Redis.
#[derive(Default)]
struct QueueGauges {
    stream_length: Gauge,
    stream_postbacks: Gauge,
    group_lag: Gauge,
    group_pending: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    scheduled_retries: Gauge,
    retry_overdue: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
    consumers: Gauge,
    redis_up: Gauge,
}

/// Every metric deliver keeps, and the registry that renders them.
pub(crate) struct DeliverMetrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    dead: Family<ReasonLabels, Counter>,
    claimed: Counter,
    stale: Family<ReasonLabels, Counter>,
    consumers_removed: Counter,
    response: Histogram,
    end_to_end: Histogram,
    in_flight: Gauge,
    host_failures: Family<HostLabels, Counter>,
    host_labels: std::sync::Mutex<std::collections::HashSet<String>>,
    degraded: Family<WriteLabels, Counter>,
    dead_trimmed: Counter,
    breaker_moves: Family<StateLabels, Counter>,
    not_closed: Gauge,
    memory: MemoryRatio,
    memory_watch: OnceLock<Arc<MemoryWatch>>,
    /// The same events, per minute, for the built-in dashboard.
    pub(crate) minutes: Arc<MinuteCounts>,
    queue: QueueGauges,
}

impl Default for DeliverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliverMetrics {
    /// Registers every metric at zero.
    pub(crate) fn new() -> Self {
        let mut r = Registry::with_prefix("postback");
        let attempts = Family::<AttemptLabels, Counter>::default();
        r.register("delivery_attempts", "Delivery attempts, by outcome and status class", attempts.clone());
        let retries = Family::<ReasonLabels, Counter>::default();
        r.register("retries_scheduled", "Postbacks put in the retry schedule, by reason", retries.clone());
        let dead = Family::<ReasonLabels, Counter>::default();
        r.register("dead_lettered", "Postbacks moved to the dead-letter stream, by reason", dead.clone());
        let claimed = Counter::default();
        r.register("claimed", "Entries taken over from another worker", claimed.clone());
        let stale = Family::<ReasonLabels, Counter>::default();
        r.register(
            "stale_finishes",
            "Finishing steps that changed nothing: the entry was taken over or is gone",
            stale.clone(),
        );
        let consumers_removed = Counter::default();
        r.register("consumers_removed", "Consumers removed from the group as gone", consumers_removed.clone());
        let response = latency_histogram();
        r.register("delivery_response_seconds", "Third-party response time", response.clone());
        let end_to_end = latency_histogram();
        r.register("end_to_end_seconds", "From accepted by ingest to delivered", end_to_end.clone());
        let in_flight = Gauge::default();
        r.register("deliveries_in_flight", "Attempts under way in this worker", in_flight.clone());
        let host_failures = Family::<HostLabels, Counter>::default();
        r.register("host_failures", "Failed attempts per target host:port", host_failures.clone());
        let degraded = Family::<WriteLabels, Counter>::default();
        r.register(
            "redis_degraded_writes",
            "Writes Redis refused (retried) or left out under memory pressure, by write",
            degraded.clone(),
        );
        let dead_trimmed = Counter::default();
        r.register("dead_trimmed", "Dead letters removed by POSTBACK_DEAD_RETENTION", dead_trimmed.clone());
        let breaker_moves = Family::<StateLabels, Counter>::default();
        r.register(
            "breaker_transitions",
            "Hosts' circuit breakers moved to a state, as seen by this worker",
            breaker_moves.clone(),
        );
        let not_closed = Gauge::default();
        r.register(
            "breaker_hosts_not_closed",
            "Hosts whose circuit breaker is open, half-open or paused by hand",
            not_closed.clone(),
        );
        let memory = MemoryRatio::register(&mut r);
        let queue = QueueGauges::default();
        r.register("stream_length", "Entries in the stream", queue.stream_length.clone());
        r.register("stream_postbacks", "Postbacks in the stream's entries", queue.stream_postbacks.clone());
        r.register("group_lag", "Entries no worker has read yet", queue.group_lag.clone());
        r.register("group_pending", "Entries read by a worker and not yet finished", queue.group_pending.clone());
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest pending entry, from its id",
            queue.oldest_pending_age.clone(),
        );
        r.register("scheduled_retries", "Postbacks waiting in the retry schedule", queue.scheduled_retries.clone());
        r.register(
            "retry_overdue_seconds",
            "How long the most overdue scheduled retry has waited past its time",
            queue.retry_overdue.clone(),
        );
        r.register("dead_letters", "Entries in the dead-letter stream", queue.dead_letters.clone());
        r.register("group_consumers", "Consumers in the group", queue.consumers.clone());
        r.register("redis_up", "1 when the Redis sample of this scrape succeeded, else 0", queue.redis_up.clone());
        Self {
            registry: r,
            attempts,
            retries,
            dead,
            claimed,
            stale,
            consumers_removed,
            response,
            end_to_end,
            in_flight,
            host_failures,
            host_labels: std::sync::Mutex::default(),
            degraded,
            dead_trimmed,
            breaker_moves,
            not_closed,
            memory,
            memory_watch: OnceLock::new(),
            minutes: Arc::default(),
            queue,
        }
    }

    /// Counts one finished attempt. `response_time` only when a response
    /// arrived; `end_to_end` only when delivered.
    pub(crate) fn attempted(
        &self,
        outcome: &'static str,
        status: Option<u16>,
        response_time: Option<Duration>,
        end_to_end: Option<Duration>,
    ) {
        self.attempts.get_or_create(&AttemptLabels { outcome, status_class: status_class(status) }).inc();
        self.minutes.add(if outcome == "delivered" { "delivered" } else { "failed" }, 1);
        if let Some(took) = response_time {
            self.response.observe(took.as_secs_f64());
        }
        if let Some(took) = end_to_end {
            self.end_to_end.observe(took.as_secs_f64());
        }
    }

    /// An attempt starts (`true`) or ends (`false`).
    pub(crate) fn in_flight(&self, started: bool) {
        if started {
            self.in_flight.inc()
        } else {
            self.in_flight.dec()
        };
    }

    /// Counts a postback put in the retry schedule.
    pub(crate) fn rescheduled(&self, reason: RetryReason) {
        self.retries.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
    }

    /// Counts `n` dead-lettered postbacks of a reason's `category`.
    pub(crate) fn dead_lettered(&self, category: crate::outcome::Category, n: u64) {
        let category = category.as_str();
        self.dead.get_or_create(&ReasonLabels { reason: category }).inc_by(n);
        self.minutes.add(format!("dead:{category}"), n as i64);
    }

    /// Counts the entries a finishing step found no longer this worker's.
    pub(crate) fn stale_finishes(&self, recorded: &Recorded) {
        for (reason, n) in [("taken_over", recorded.taken.len()), ("gone", recorded.gone.len())] {
            if n > 0 {
                self.stale.get_or_create(&ReasonLabels { reason }).inc_by(n as u64);
            }
        }
    }

    /// Counts an attempt to `host` (host:port) for `postbackctl hosts`:
    /// in the per-minute counts, the attempt and its response time's bucket.
    pub(crate) fn host_attempted(&self, host: &str, response_time: Option<Duration>) {
        self.minutes.add(format!("sent:{host}"), 1);
        if let Some(time) = response_time {
            let ms = time.as_millis() as u64;
            let le = crate::minutes::RESPONSE_BUCKETS_MS.iter().find(|le| ms <= **le);
            let le = le.map_or_else(|| "inf".to_owned(), u64::to_string);
            self.minutes.add(format!("rt:{host}:{le}"), 1);
        }
    }

    /// Counts a failed attempt to `host` (host:port).
    pub(crate) fn host_failed(&self, host: &str) {
        self.minutes.add(format!("host:{host}"), 1);
        let host = {
            let mut seen = self.host_labels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.contains(host) || seen.len() < MAX_HOST_LABELS && seen.insert(host.to_owned()) {
                host.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.host_failures.get_or_create(&HostLabels { host }).inc();
    }

    /// Counts a breaker moved to `state`.
    pub(crate) fn breaker_moved(&self, state: postback_common::breaker::State) {
        self.breaker_moves.get_or_create(&StateLabels { state: state.as_str() }).inc();
    }

    /// Sets the number of hosts not closed.
    pub(crate) fn hosts_not_closed(&self, n: usize) {
        self.not_closed.set(n as i64);
    }

    /// Counts `n` writes of kind `write` refused or left out.
    pub(crate) fn degraded_writes(&self, write: &'static str, n: u64) {
        self.degraded.get_or_create(&WriteLabels { write }).inc_by(n);
    }

    /// Counts dead letters trimmed.
    pub(crate) fn dead_trimmed(&self, n: u64) {
        self.dead_trimmed.inc_by(n);
    }

    /// The memory sample `postback_redis_memory_ratio` reports.
    pub(crate) fn watch_memory(&self, watch: Arc<MemoryWatch>) {
        let _ = self.memory_watch.set(watch);
    }

    /// Counts entries taken over from other workers.
    pub(crate) fn claimed(&self, n: usize) {
        self.claimed.inc_by(n as u64);
    }

    /// Counts consumers removed as gone.
    pub(crate) fn consumers_removed(&self, n: usize) {
        self.consumers_removed.inc_by(n as u64);
    }

    /// Samples the queue from Redis, then renders every metric.
    pub(crate) async fn scrape(&self, redis: &Client, partitions: Option<&Partitions>) -> String {
        let sample = match partitions {
            Some(partitions) => {
                tokio::time::timeout(SAMPLE_TIMEOUT, postback_common::queue_status::status_of_all(redis, partitions))
                    .await
            }
            None => Ok(Err(fred::error::Error::new(fred::error::ErrorKind::Unknown, "no partition record yet"))),
        };
        let q = &self.queue;
        match sample {
            Ok(Ok(status)) => {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                q.stream_length.set(n(status.length));
                q.stream_postbacks.set(n(status.postbacks));
                q.group_lag.set(n(status.lag.unwrap_or(0)));
                q.group_pending.set(n(status.pending));
                q.oldest_pending_age.set(status.oldest_pending_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
                q.scheduled_retries.set(n(status.scheduled_retries));
                q.retry_overdue.set(status.oldest_overdue_retry_ms as f64 / 1000.0);
                q.dead_letters.set(n(status.dead_letters));
                q.consumers.set(n(status.consumers.len() as u64));
                q.redis_up.set(1);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot sample the queue for /metrics");
                q.redis_up.set(0);
            }
            Err(_) => {
                tracing::debug!("no queue sample for /metrics within {SAMPLE_TIMEOUT:?}");
                q.redis_up.set(0);
            }
        }
        if let Some(watch) = self.memory_watch.get() {
            self.memory.set(watch);
        }
        render(&self.registry)
    }
}
