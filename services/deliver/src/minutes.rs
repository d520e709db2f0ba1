//! Per-minute counts shared by every worker, for the built-in dashboard
//! (`GET /dashboard`, [`crate::dashboard`]).
//!
//! Each worker counts in memory what happened in each minute (attempts
//! delivered and failed, failures per host, dead letters per reason) and
//! adds its counts to Redis every [`FLUSH_EVERY`] with one pipelined round
//! trip: `HINCRBY <stream>:minutes:<unix minute> <field> <n>` per field,
//! and an expiry of [`KEEP`] on each minute's hash. Any worker's page then
//! shows the whole system, and `postbackctl hosts` the per-host figures.
//! Fields: `delivered`, `failed`, `dead:<reason>`; per target host:port,
//! `sent:<host:port>` (attempts), `host:<host:port>` (failed attempts) and
//! `rt:<host:port>:<le>` (attempts answered within `le` ms, one of
//! [`RESPONSE_BUCKETS_MS`], or `inf`; not cumulative). What one flush fails to write is
//! dropped (the dashboard is a view, not data; `/metrics` keeps the exact
//! counts).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

/// How often a worker adds its counts to Redis.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// How long a minute's counts are kept.
pub(crate) const KEEP: Duration = Duration::from_secs(2 * 3_600);

/// Upper bounds (ms) of the per-host response-time buckets.
pub(crate) const RESPONSE_BUCKETS_MS: [u64; 11] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];

/// The Redis key of minute `minute` (minutes since the Unix epoch) under
/// `prefix` (`Keys::minutes`).
pub(crate) fn key(prefix: &str, minute: u64) -> String {
    format!("{prefix}{minute}")
}

/// The current minute since the Unix epoch.
pub(crate) fn now_minute() -> u64 {
    postback_common::time::now_ms() / 60_000
}

/// Counts not yet in Redis.
#[derive(Debug, Default)]
pub(crate) struct MinuteCounts {
    pending: Mutex<HashMap<(u64, Cow<'static, str>), i64>>,
}

impl MinuteCounts {
    /// Adds `n` to `field` of the current minute (a fixed name such as
    /// `delivered` costs no allocation).
    pub(crate) fn add(&self, field: impl Into<Cow<'static, str>>, n: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *pending.entry((now_minute(), field.into())).or_default() += n;
    }

    /// Writes and forgets the counts so far.
    async fn flush(&self, redis: &Client, prefix: &str) {
        let counts: Vec<((u64, Cow<'static, str>), i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.drain().collect()
        };
        if counts.is_empty() {
            return;
        }
        let pipeline = redis.pipeline();
        let mut minutes = Vec::new();
        for ((minute, field), n) in counts {
            let key = key(prefix, minute);
            let _: Result<(), _> = pipeline.hincrby(&key, field.as_ref(), n).await;
            if !minutes.contains(&minute) {
                minutes.push(minute);
            }
        }
        for minute in minutes {
            let _: Result<(), _> = pipeline.expire(key(prefix, minute), KEEP.as_secs() as i64, None).await;
        }
        if let Err(e) = pipeline.all::<Vec<Value>>().await {
            tracing::debug!(error = %e, "could not add this worker's per-minute counts to Redis; dropped");
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more.
    pub(crate) async fn run(&self, redis: Client, prefix: String, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(FLUSH_EVERY) => self.flush(&redis, &prefix).await,
            }
        }
        self.flush(&redis, &prefix).await;
    }
}
