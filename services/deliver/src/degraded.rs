//! Writes Redis refuses (out of memory, read-only after a failover,
//! unreachable), and how deliver waits them out without spinning or
//! flooding its log.
//!
//! - Every refused finishing step and retry move, and every delivery-log
//!   entry not written, is counted in
//!   `postback_redis_degraded_writes_total{write}`.
//! - The log gets one line when refusals start, a summary at most every
//!   [`SUMMARY_EVERY`] while they go on, and one line when a write lands
//!   again: never one line per refusal.
//! - While Redis refuses finishing steps, each partition's recorder tries
//!   its batch again with growing delays (the shared backoff, up to 2 s),
//!   the steps that arrive meanwhile waiting in its channel
//!   ([`crate::recorder`]): a refusing Redis costs a worker one script call
//!   per delay, however many postbacks it holds, and no new attempt starts
//!   until a call lands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::DeliverMetrics;

/// Longest silence in the log while Redis keeps refusing writes.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Refused writes, counted and summarised.
pub(crate) struct Degraded {
    metrics: Arc<DeliverMetrics>,
    failing: AtomicBool,
    summary: Mutex<Summary>,
}

/// Refusals since the last line logged.
#[derive(Default)]
struct Summary {
    logged_at: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
    total: u64,
    last_error: String,
    /// What the last error was, in a log line's words.
    cause: &'static str,
}

impl Degraded {
    /// Counting into `metrics`.
    pub(crate) fn new(metrics: Arc<DeliverMetrics>) -> Self {
        Self { metrics, failing: AtomicBool::new(false), summary: Mutex::new(Summary::default()) }
    }

    /// Counts `n` writes of kind `write` refused (or skipped) for `error`,
    /// and logs a summary if one is due, naming what went wrong
    /// ([`postback_common::redis::cause`]).
    pub(crate) fn refused(&self, write: &'static str, n: u64, error: &fred::error::Error) {
        self.metrics.degraded_writes(write, n);
        if write != "attempt_log" {
            self.failing.store(true, Ordering::Relaxed);
        }
        let mut summary = self.summary.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *summary.counts.entry(write).or_default() += n;
        summary.total += n;
        summary.last_error = error.to_string();
        summary.cause = postback_common::redis::cause(error);
        if summary.logged_at.is_none_or(|at| at.elapsed() >= SUMMARY_EVERY) {
            tracing::warn!(
                refused = summary.total,
                by_write = %format!("{:?}", summary.counts),
                cause = summary.cause,
                error = %summary.last_error,
                "Redis did not take writes ({}); waiting with growing delays, one line every {} s while it lasts \
                 (runbooks/redis-restart.md; OOM: runbooks/redis-memory-high.md)",
                summary.cause,
                SUMMARY_EVERY.as_secs()
            );
            summary.logged_at = Some(Instant::now());
            summary.counts.clear();
            summary.total = 0;
        }
    }

    /// Counts `n` delivery-log entries left out under memory pressure (the
    /// log writer says when shedding starts and stops).
    pub(crate) fn skipped_log(&self, n: u64) {
        self.metrics.degraded_writes("attempt_log", n);
    }

    /// A finishing step or a retry move landed: Redis takes writes.
    pub(crate) fn landed(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            let mut summary = self.summary.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tracing::info!(refused_since_last_line = summary.total, "Redis accepts writes again");
            *summary = Summary::default();
        }
    }
}
