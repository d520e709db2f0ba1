//! The retry scheduler: moves due retries from the schedule (a sorted set
//! scored by due time) back into the stream, where any worker reads them.
//!
//! Every worker runs one; the move is a Lua script, so several schedulers
//! never move a retry twice. It looks again when the next retry is due, at
//! once when its own worker schedules a retry, and otherwise every few
//! seconds (so an idle deployment costs one script call per pause per
//! worker, and a retry scheduled by a worker that died since is moved at
//! most that late). A Redis outage only makes it wait and try again.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Most retries moved per script call.
const BATCH: i64 = 500;

/// Longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_secs(3);

/// Moves due retries until `shutdown`.
pub(crate) async fn run(redis: Client, keys: Keys, wake: Arc<Notify>, shutdown: CancellationToken) {
    let promote = Script::new(include_str!("lua/promote.lua"));
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let keys_list = [keys.retry.as_str(), keys.stream.as_str(), keys.dead.as_str()];
        let pause = match promote.call::<_, (i64, i64)>(&redis, &keys_list, vec![BATCH.into()]).await {
            Ok((moved, wait_ms)) => {
                backoff.reset();
                if moved > 0 {
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
                tracing::warn!(error = %e, "cannot move due retries; trying again");
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
