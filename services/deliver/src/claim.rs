//! Taking over entries from workers that died, and forgetting dead workers.
//!
//! An entry stays in the group's pending list, owned by the worker that read
//! it, until that worker finishes it. A worker that crashed never will, so
//! every worker regularly runs XAUTOCLAIM for entries idle longer than
//! `POSTBACK_CLAIM_IDLE_MS` and delivers them itself. That idle time must be
//! longer than any live attempt (the HTTP timeout; checked at start-up), or
//! entries still being delivered would be taken over and sent twice.
//!
//! Each hand-over counts as a delivery in Redis (XPENDING shows the count).
//! An entry handed over more than `POSTBACK_MAX_DELIVERIES` times is taken to
//! be what kills its workers (poison) and is dead-lettered instead of tried
//! again.
//!
//! Consumers that hold nothing and have been idle for
//! `POSTBACK_CONSUMER_GONE_MS` are removed from the group, so a fleet whose
//! worker names change (HOSTNAME-PID) does not pile up dead names.

use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;

use crate::entry::{self, Entry};

/// Claims and cleans up for one worker.
pub struct Claimer {
    cursor: String,
    /// Entries idle longer than this are taken over.
    pub min_idle: Duration,
    /// Hand-overs after which an entry is poison.
    pub max_deliveries: u64,
    /// Idle time after which an empty consumer is removed.
    pub gone_after: Duration,
}

/// An entry taken over from another worker.
pub struct Claimed {
    /// The entry.
    pub entry: Entry,
    /// How many times Redis has handed it to a worker, this time included.
    pub deliveries: u64,
}

impl Claimer {
    /// A claimer starting at the beginning of the pending list.
    pub fn new(min_idle: Duration, max_deliveries: u64, gone_after: Duration) -> Self {
        Self { cursor: "0-0".into(), min_idle, max_deliveries, gone_after }
    }

    /// How often to look for entries to claim.
    pub fn interval(&self) -> Duration {
        (self.min_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Takes over up to `count` entries idle longer than `min_idle`.
    pub async fn claim(
        &mut self,
        redis: &Client,
        keys: &Keys,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Claimed>, Error> {
        let args: Vec<Value> = vec![
            keys.stream.as_str().into(),
            keys.group.as_str().into(),
            consumer.into(),
            (self.min_idle.as_millis() as i64).into(),
            self.cursor.as_str().into(),
            "COUNT".into(),
            (count as i64).into(),
        ];
        let reply: Value =
            redis.custom(CustomCommand::new_static("XAUTOCLAIM", ClusterHash::FirstKey, false), args).await?;
        let (cursor, entries) = entry::from_autoclaim(reply);
        self.cursor = cursor;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let counts = delivery_counts(redis, keys, consumer, &entries).await?;
        Ok(entries
            .into_iter()
            .map(|entry| {
                let deliveries = counts.iter().find(|(id, _)| *id == entry.id).map_or(1, |(_, n)| *n);
                Claimed { entry, deliveries }
            })
            .collect())
    }

    /// Removes consumers other than `me` that hold nothing and have been idle
    /// longer than `gone_after`. Returns how many were removed.
    pub async fn remove_gone_consumers(&self, redis: &Client, keys: &Keys, me: &str) -> Result<usize, Error> {
        let reply: Value = redis.xinfo_consumers(&keys.stream, &keys.group).await?;
        let Value::Array(consumers) = reply else { return Ok(0) };
        let mut removed = 0;
        for consumer in consumers {
            let info = postback_common::redis::pairs(consumer);
            let number = |key: &str| info.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64());
            let Some(name) = info.iter().find(|(k, _)| k == "name").and_then(|(_, v)| v.as_string()) else { continue };
            // Redis 7.2+ reports "inactive" (since the last successful read);
            // older versions only "idle".
            let idle = number("inactive").or_else(|| number("idle")).unwrap_or(0);
            if name != me && number("pending") == Some(0) && idle >= self.gone_after.as_millis() as u64 {
                let _: i64 = redis.xgroup_delconsumer(&keys.stream, &keys.group, &name).await?;
                tracing::info!(consumer = %name, idle_ms = idle, "removed a consumer that is gone");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The delivery counts of `entries`, now pending with `consumer`.
async fn delivery_counts(
    redis: &Client,
    keys: &Keys,
    consumer: &str,
    entries: &[Entry],
) -> Result<Vec<(String, u64)>, Error> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(Vec::new()) };
    let rows = postback_common::redis::pending_rows(
        redis,
        keys,
        (&first.id, &last.id),
        entries.len() as u64 * 2,
        Some(consumer),
    )
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.deliveries)).collect())
}
