//! The worker loop: read entries from the consumer group, hand each to its
//! own task, and keep the group healthy.
//!
//! # Queue design
//! Ingest XADDs postbacks to one stream. All delivery workers share one
//! consumer group and each reads with `XREADGROUP … >`, so every entry goes
//! to one worker and stays in the group's pending list (PEL) until that
//! worker finishes it: acknowledged and deleted when delivered, moved to the
//! retry schedule (`<stream>:retry`, a sorted set by due time) when it is to
//! be tried again, or to the dead-letter stream when given up. Each of those
//! moves is one Lua script, so an entry is never lost between two keys.
//! Every worker's scheduler moves due retries back into the stream.
//!
//! A worker that dies leaves its entries pending: a restarted worker of the
//! same name re-reads its own pending entries first (from id `0`), and every
//! worker takes over entries idle longer than `POSTBACK_CLAIM_IDLE_MS`
//! (XAUTOCLAIM). Delivery is therefore at-least-once.
//!
//! Reads use their own Redis connection: XREADGROUP BLOCK holds a connection
//! until it returns, and other commands must not queue up behind it. An idle
//! worker costs Redis one read per `POSTBACK_READ_BLOCK_MS`, one scheduler
//! look a second and one XAUTOCLAIM per claim interval.
//!
//! At most `POSTBACK_DELIVER_CONCURRENCY` postbacks are in hand at once:
//! each takes a slot, and the loop reads (or claims) only as many entries as
//! its free slots are likely to hold. A version 3 entry holds several
//! postbacks (see [`crate::batch`]); its first uses the entry's slot and the
//! others wait for slots of their own.
//!
//! If the group disappears (Redis restarted without its data, or the stream
//! was deleted), the next command answers NOGROUP and the group is created
//! again at id `0`, so nothing queued since is skipped.
//!
//! Shutdown: the loop stops reading (the read in flight, at most one BLOCK
//! long, is finished and its entries handled, so none are stranded as
//! pending), then waits up to `POSTBACK_SHUTDOWN_GRACE_MS` for the entries
//! in flight; whatever is still running then is abandoned and stays pending
//! for another worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claim::Claimer;
use crate::entry::{self, Entry};
use crate::handle::{Shared, handle};

/// One delivery worker (one consumer of the group).
pub struct Worker {
    /// Used only for XREADGROUP.
    pub reader: Client,
    /// Used for everything else.
    pub redis: Client,
    /// Stream, group, schedule and dead-letter names.
    pub keys: Keys,
    /// This worker's consumer name.
    pub consumer: String,
    /// Entries per read, at most.
    pub read_count: usize,
    /// How long an idle read blocks.
    pub read_block: Duration,
    /// Bounds entries held at once.
    pub slots: Arc<Semaphore>,
    /// Set while the consumer group is known to exist.
    pub group_ready: Arc<AtomicBool>,
    /// Takes over entries from dead workers.
    pub claimer: Claimer,
    /// How long shutdown waits for entries in flight.
    pub shutdown_grace: Duration,
    /// Shared with each entry's task.
    pub shared: Arc<Shared>,
    /// Postbacks per entry lately, to size reads.
    pub sizes: EntrySizes,
}

/// Postbacks per entry lately, in sixteenths. Every postback in hand takes
/// a slot, so a read asks for as many entries as the free slots are likely
/// to hold, rather than one per slot: a read of version 3 entries of 100
/// postbacks each then takes one entry, not one per slot. It starts at the
/// largest entry and follows a larger entry at once, a smaller one slowly,
/// so a worker never reads far more postbacks than it has slots for (at
/// start-up, say, with a backlog of large entries waiting).
#[derive(Debug)]
pub struct EntrySizes(std::sync::atomic::AtomicUsize);

impl Default for EntrySizes {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicUsize::new(16 * postback_common::request_entry::MAX_POSTBACKS))
    }
}

impl EntrySizes {
    /// Notes an entry just read.
    fn saw(&self, entry: &Entry) {
        let postbacks =
            entry.payload.as_deref().map_or(1, postback_common::request_entry::postbacks_in).clamp(1, 1 << 16);
        let (old, new) = (self.0.load(Ordering::Relaxed), postbacks * 16);
        self.0.store(if new >= old { new } else { (old * 7 + new).div_ceil(8) }, Ordering::Relaxed);
    }

    /// Entries to read for `free` slots: at least one.
    fn entries_for(&self, free: usize) -> usize {
        (free * 16).div_ceil(self.0.load(Ordering::Relaxed).max(16)).max(1)
    }
}

/// Where a read starts.
enum Cursor {
    /// This consumer's own pending entries with ids after this one.
    Pending(String),
    /// New entries (`>`).
    New,
}

impl Worker {
    /// Runs until `shutdown` is cancelled, then waits (within the grace
    /// period) for the entries in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut cursor = Cursor::Pending("0".into());
        let mut backoff = Backoff::default();
        let mut next_claim = Instant::now();
        let cleanup_every = (self.claimer.gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut next_cleanup = Instant::now() + cleanup_every;
        tracing::info!(consumer = %self.consumer, stream = %self.keys.stream, group = %self.keys.group, "worker started");
        while !shutdown.is_cancelled() {
            if !self.group_ready.load(Ordering::Acquire) {
                match crate::group::ensure(&self.redis, &self.keys).await {
                    Ok(()) => self.group_ready.store(true, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up the consumer group; retrying");
                        backoff.wait(&shutdown).await;
                        continue;
                    }
                }
            }
            let Some(mut permits) = self.free_slots(&shutdown).await else { break };
            // Slots not needed for the entries read this time go back.
            permits.truncate(self.sizes.entries_for(permits.len()));

            // Claimed entries join this consumer's pending list, so claiming
            // waits until its own pending entries have been re-read:
            // otherwise that re-read would hand them out a second time.
            if matches!(cursor, Cursor::New) && Instant::now() >= next_claim {
                next_claim = Instant::now() + self.claimer.interval();
                match self.claimer.claim(&self.redis, &self.keys, &self.consumer, permits.len()).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            tracing::info!(count = claimed.len(), "took over entries left by another worker");
                            self.shared.metrics.claimed(claimed.len());
                        }
                        for claimed in claimed {
                            let Some(permit) = permits.pop() else { break };
                            self.spawn(&tracker, claimed.entry, Some(claimed.deliveries), permit);
                        }
                    }
                    Err(e) => self.on_error(&e, "XAUTOCLAIM", &mut backoff, &shutdown).await,
                }
                if permits.is_empty() {
                    continue;
                }
            }
            if Instant::now() >= next_cleanup {
                next_cleanup = Instant::now() + cleanup_every;
                match self.claimer.remove_gone_consumers(&self.redis, &self.keys, &self.consumer).await {
                    Ok(removed) => self.shared.metrics.consumers_removed(removed),
                    Err(e) => tracing::warn!(error = %e, "cannot look for consumers that are gone"),
                }
            }

            // The read in flight is finished even after shutdown, so that
            // entries Redis hands over are handled rather than stranded as
            // pending; but a Redis that went away gets only one BLOCK more.
            let read = self.read(&cursor, permits.len());
            let stranded = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.read_block + Duration::from_secs(1)).await;
            };
            let entries = match tokio::select! { r = read => r, _ = stranded => break } {
                Ok(entries) => entries,
                Err(e) => {
                    self.on_error(&e, "XREADGROUP", &mut backoff, &shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            if let Cursor::Pending(after) = &mut cursor {
                match entries.last() {
                    Some(last) => *after = last.id.clone(),
                    None => {
                        tracing::debug!("own pending entries done; reading new entries");
                        cursor = Cursor::New;
                    }
                }
            }
            for (entry, permit) in entries.into_iter().zip(permits) {
                self.spawn(&tracker, entry, None, permit);
            }
        }
        tracker.close();
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_ms = self.shutdown_grace.as_millis() as u64,
                "waiting for entries in flight"
            );
        }
        if tokio::time::timeout(self.shutdown_grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                abandoned = tracker.len(),
                "shutdown grace over; abandoning entries in flight (they stay pending for another worker)"
            );
        }
        tracing::info!(consumer = %self.consumer, "worker stopped");
    }

    /// Waits for at least one free slot and takes as many more as are free,
    /// up to the read count; `None` on shutdown.
    async fn free_slots(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return None,
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
        };
        let mut permits = vec![first];
        while permits.len() < self.read_count {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    fn spawn(&self, tracker: &TaskTracker, entry: Entry, deliveries: Option<u64>, permit: OwnedSemaphorePermit) {
        let shared = self.shared.clone();
        self.sizes.saw(&entry);
        tracker.spawn(handle(shared, entry, deliveries, permit));
    }

    async fn on_error(&self, error: &Error, command: &str, backoff: &mut Backoff, shutdown: &CancellationToken) {
        if postback_common::redis::is_nogroup(error) {
            tracing::warn!("consumer group is gone (Redis restarted empty or the stream was deleted); re-creating it");
            self.group_ready.store(false, Ordering::Release);
        } else {
            tracing::warn!(error = %error, "{command} failed; retrying");
            backoff.wait(shutdown).await;
        }
    }

    async fn read(&self, cursor: &Cursor, count: usize) -> Result<Vec<Entry>, Error> {
        let (id, block) = match cursor {
            // History reads never block.
            Cursor::Pending(after) => (after.as_str(), None),
            Cursor::New => (">", Some(self.read_block.as_millis() as u64)),
        };
        let reply: Value = self
            .reader
            .xreadgroup(&self.keys.group, &self.consumer, Some(count as u64), block, false, &self.keys.stream, id)
            .await?;
        Ok(entry::from_reply(reply))
    }
}

/// Exponential backoff between failed Redis calls: 100 ms doubling to 2 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.0) => {}
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}
