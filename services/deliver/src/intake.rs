//! Taking entries into the worker's hands, each with how many times Redis
//! has handed it to a worker (its delivery count, which XPENDING shows):
//!
//! 1. At start, this consumer's own pending entries (`XREADGROUP … 0`):
//!    what it held when it last stopped, under the same name (the systemd
//!    units use stable names). Reading them again counts as a delivery.
//! 2. Then, every claim interval, entries idle longer than
//!    `POSTBACK_CLAIM_IDLE_MS` with any consumer (XAUTOCLAIM): workers that
//!    died. That idle time must be longer than any live attempt (the HTTP
//!    timeout; checked at start-up), or entries still being delivered would
//!    be taken over and sent twice. Each claim counts as a delivery.
//! 3. Otherwise new entries (`XREADGROUP … >`), blocking while there are
//!    none; those have been handed out once.
//!
//! A read of new entries that fails may still have handed entries to this
//! consumer: Redis can have answered on a connection that then dropped (a
//! failover on a Cluster resets the client's connections, and the client
//! re-sends what was in flight). So after a failed read the own pending
//! entries newer than the last one read as new are read again (step 1),
//! leaving out any this worker is handling ([`InFlight`]; claimed entries
//! can be newer); otherwise they would wait for `POSTBACK_CLAIM_IDLE_MS`.
//! Older ones are not re-read: this worker may have finished them with
//! their acknowledgement not yet recorded.
//!
//! Claiming waits until the own pending entries are re-read: claimed
//! entries join this consumer's pending list, and the re-read would hand
//! them out a second time. Whatever way an entry came, the same delivery
//! count decides whether it is poison ([`crate::entry`]).

use std::collections::HashSet;

/// New entries a waiting read takes at most: the first to arrive, and one
/// more that says whether others follow (the worker then reads on without
/// waiting; [`crate::worker`]).
pub(crate) const WAITED_FOR: usize = 2;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;
use postback_common::redis::id_order;
use tokio::time::Instant;

use crate::metrics::DeliverMetrics;
use crate::reply::{self, Entry};

/// An entry taken into the worker's hands.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The entry.
    pub(crate) entry: Entry,
    /// How many times Redis has handed it to a worker, this time included.
    pub(crate) deliveries: u64,
}

/// Ids of the entries this worker is handling now.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    /// Notes `id` as handled until the guard is dropped.
    pub(crate) fn hold(&self, id: &str) -> InFlightGuard {
        self.lock().insert(id.to_owned());
        InFlightGuard { set: self.clone(), id: id.to_owned() }
    }

    fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps an entry in [`InFlight`] while it lives.
pub(crate) struct InFlightGuard {
    set: InFlight,
    id: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// Where the next read starts.
enum Cursor {
    /// This consumer's own pending entries with ids after this one.
    Pending(String),
    /// New entries (`>`).
    New,
}

/// Reads, re-reads and claims for one consumer.
pub(crate) struct Intake {
    /// Used only for XREADGROUP, which blocks its connection.
    reader: Client,
    /// Used for XAUTOCLAIM and XPENDING.
    redis: Client,
    keys: Keys,
    consumer: String,
    read_block: Duration,
    cursor: Cursor,
    claim_cursor: String,
    claim_idle: Duration,
    next_claim: Instant,
    metrics: Arc<DeliverMetrics>,
    in_flight: InFlight,
    /// The newest entry read as new, where a re-read after a failed read
    /// starts.
    last_new: String,
}

impl Intake {
    /// Intake for `consumer`, starting with its own pending entries.
    pub(crate) fn new(
        (reader, redis): (Client, Client),
        keys: Keys,
        consumer: String,
        read_block: Duration,
        claim_idle: Duration,
        metrics: Arc<DeliverMetrics>,
    ) -> Self {
        Self {
            reader,
            redis,
            keys,
            consumer,
            read_block,
            cursor: Cursor::Pending("0".into()),
            claim_cursor: "0-0".into(),
            claim_idle,
            next_claim: Instant::now(),
            metrics,
            in_flight: InFlight::default(),
            last_new: "0".into(),
        }
    }

    /// The entries this intake's worker is handling.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// How often to look for entries to claim.
    fn claim_interval(&self) -> Duration {
        (self.claim_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Takes up to `count` entries: own pending ones first, then claimed
    /// ones when a claim is due, else new ones: at once, or with `wait` at
    /// most [`WAITED_FOR`], waiting up to the read block for them to arrive.
    pub(crate) async fn take(&mut self, count: usize, wait: bool) -> Result<Vec<Taken>, Error> {
        if let Cursor::Pending(after) = &self.cursor {
            let mut entries = self.read(after.clone(), count, false).await?;
            match entries.last() {
                Some(last) => {
                    self.cursor = Cursor::Pending(last.id.clone());
                    entries.retain(|entry| !self.in_flight.contains(&entry.id));
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "re-reading entries this worker holds but is not handling (after a restart or a failed read)"
                        );
                    }
                    return self.counted(entries).await;
                }
                None => {
                    tracing::debug!("own pending entries done; reading new entries");
                    self.cursor = Cursor::New;
                }
            }
        }
        if Instant::now() >= self.next_claim {
            self.next_claim = Instant::now() + self.claim_interval();
            let claimed = self.claim(count).await?;
            if !claimed.is_empty() {
                tracing::info!(count = claimed.len(), "took over entries left by another worker");
                self.metrics.claimed(claimed.len());
                return self.counted(claimed).await;
            }
        }
        let entries = match self.read(">".into(), if wait { count.min(WAITED_FOR) } else { count }, wait).await {
            Ok(entries) => entries,
            Err(e) => {
                // It may have handed entries over all the same.
                self.cursor = Cursor::Pending(self.last_new.clone());
                return Err(e);
            }
        };
        if let Some(last) = entries.last() {
            self.last_new.clone_from(&last.id);
        }
        Ok(entries.into_iter().map(|entry| Taken { entry, deliveries: 1 }).collect())
    }

    /// XREADGROUP from `id`: `>` for new entries (blocking when `wait`), an
    /// id for this consumer's own pending entries after it.
    async fn read(&self, id: String, count: usize, wait: bool) -> Result<Vec<Entry>, Error> {
        let block = wait.then_some(self.read_block.as_millis() as u64);
        let reply: Value = self
            .reader
            .xreadgroup(&self.keys.group, &self.consumer, Some(count as u64), block, false, &self.keys.stream, id)
            .await?;
        Ok(reply::from_reply(reply))
    }

    /// Takes over up to `count` entries idle longer than the claim idle time.
    async fn claim(&mut self, count: usize) -> Result<Vec<Entry>, Error> {
        let args: Vec<Value> = vec![
            self.keys.stream.as_str().into(),
            self.keys.group.as_str().into(),
            self.consumer.as_str().into(),
            (self.claim_idle.as_millis() as i64).into(),
            self.claim_cursor.as_str().into(),
            "COUNT".into(),
            (count as i64).into(),
        ];
        let reply: Value =
            self.redis.custom(CustomCommand::new_static("XAUTOCLAIM", ClusterHash::FirstKey, false), args).await?;
        let (cursor, entries) = reply::from_autoclaim(reply);
        self.claim_cursor = cursor;
        Ok(entries)
    }

    /// The entries with their delivery counts, read from this consumer's
    /// pending list (page by page: it may hold other entries between them).
    async fn counted(&self, entries: Vec<Entry>) -> Result<Vec<Taken>, Error> {
        let order = |entry: &&Entry| id_order(&entry.id);
        let (Some(low), Some(high)) = (entries.iter().min_by_key(order), entries.iter().max_by_key(order)) else {
            return Ok(Vec::new());
        };
        let (mut start, high) = (low.id.clone(), high.id.clone());
        let page = 2 * entries.len() as u64 + 64;
        let mut counts = std::collections::HashMap::with_capacity(entries.len());
        loop {
            let rows = postback_common::redis::pending_rows(
                &self.redis,
                &self.keys,
                (&start, &high),
                page,
                Some(&self.consumer),
            )
            .await?;
            let full = rows.len() as u64 == page;
            let next = rows.last().map(|row| format!("({}", row.id));
            counts.extend(rows.into_iter().map(|row| (row.id, row.deliveries)));
            match next {
                Some(next) if full => start = next,
                _ => break,
            }
        }
        Ok(entries
            .into_iter()
            .map(|entry| {
                // Not pending with this consumer any more (acknowledged by a
                // slow worker meanwhile): its finish will find it gone.
                let deliveries = counts.get(&entry.id).copied().unwrap_or(1);
                Taken { entry, deliveries }
            })
            .collect())
    }
}
