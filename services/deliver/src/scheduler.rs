//! The retry scheduler: moves due retries from the schedule (streams by
//! delay, indexed by when each one's oldest entry is due; see
//! `postback_common::records::schedule`) back into the stream, where any
//! worker reads them.
//!
//! Every worker runs one; the move is a Lua script, so several schedulers
//! never move a retry twice. It looks again when the next retry is due, at
//! once when its own worker schedules a retry, and otherwise every few
//! seconds (so an idle deployment costs one script call per pause per
//! worker, and a retry scheduled by a worker that died since is moved at
//! most that late). A Redis outage only makes it wait and try again.
//! It also trims the dead-letter stream ([`crate::retention`]).

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::degraded::Degraded;
use crate::metrics::DeliverMetrics;
use crate::retention::{Retention, TRIM_EVERY};

/// Most retries moved per script call.
const BATCH: i64 = 500;

/// Longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_secs(3);

/// What the scheduler needs besides Redis.
pub(crate) struct Scheduler {
    pub(crate) redis: Client,
    pub(crate) keys: Keys,
    /// Woken when this worker schedules a retry.
    pub(crate) wake: Arc<Notify>,
    /// Where refused moves are counted and summarised.
    pub(crate) degraded: Arc<Degraded>,
    /// How long dead letters are kept, if not for ever.
    pub(crate) retention: Option<Retention>,
    pub(crate) metrics: Arc<DeliverMetrics>,
}

/// Moves due retries (and trims dead letters) until `shutdown`.
pub(crate) async fn run(scheduler: Scheduler, shutdown: CancellationToken) {
    let Scheduler { redis, keys, wake, degraded, retention, metrics } = scheduler;
    let promote = Script::new(include_str!("lua/promote.lua"));
    let mut backoff = Backoff::default();
    let mut next_trim = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if let Some(retention) = retention
            && tokio::time::Instant::now() >= next_trim
        {
            next_trim += TRIM_EVERY;
            match retention.trim(&redis, &keys).await {
                Ok(0) => {}
                Ok(trimmed) => {
                    metrics.dead_trimmed(trimmed);
                    tracing::info!(trimmed, ?retention, "trimmed the dead-letter stream (POSTBACK_DEAD_RETENTION)");
                }
                Err(e) => tracing::warn!(error = %e, "cannot trim the dead-letter stream; trying again in a minute"),
            }
        }
        let keys_list = [
            keys.schedule.as_str(),
            keys.stream.as_str(),
            keys.scheduled.as_str(),
            keys.batched.as_str(),
            keys.retry.as_str(),
            keys.dead.as_str(),
        ];
        let pause = match promote.call::<_, (i64, i64)>(&redis, &keys_list, vec![BATCH.into()]).await {
            Ok((moved, wait_ms)) => {
                backoff.reset();
                if moved > 0 {
                    // Only a move that wrote proves Redis takes writes.
                    degraded.landed();
                    tracing::debug!(moved, "moved due retries back into the stream");
                }
                if moved >= BATCH {
                    Duration::ZERO
                } else if wait_ms < 0 {
                    MAX_PAUSE
                } else {
                    Duration::from_millis(wait_ms as u64).min(MAX_PAUSE)
                }
            }
            Err(e) => {
                degraded.refused("promote", 1, &e);
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
