//! The worker loop: read entries from the consumer group, deliver each one
//! concurrently, acknowledge it when its attempt is finished.
//!
//! # Queue design
//! Ingest XADDs postbacks to one stream. All delivery workers share one
//! consumer group and each reads with `XREADGROUP … >`, so every entry goes
//! to exactly one worker and stays in the group's pending list (PEL) until
//! that worker acknowledges it. Entries are acknowledged only after their
//! attempt is over, so a worker that dies mid-delivery leaves them pending
//! for a restarted worker of the same name (which starts by re-reading its
//! own pending entries, from id `0`) — delivery is at-least-once.
//!
//! Reads use their own Redis connection: XREADGROUP BLOCK holds a connection
//! until it returns, and acks must not queue up behind it. An idle worker
//! costs Redis one command per `POSTBACK_READ_BLOCK_MS`.
//!
//! At most `POSTBACK_DELIVER_CONCURRENCY` attempts run at once: the loop
//! only reads as many entries as it has free slots.
//!
//! Shutdown: the loop stops reading (the read in flight, at most one BLOCK
//! long, is finished and its entries delivered, so none are stranded as
//! pending), waits for every attempt in flight, then returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::wire;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acker::AckSender;
use crate::attempt::{self, AttemptContext};
use crate::entry::{self, Entry};

/// What every delivery task shares.
pub struct Shared {
    /// The outbound HTTP client.
    pub http: reqwest::Client,
    /// Replacement for unmatched `{key}`s.
    pub unmatched_default: String,
    /// Body bytes kept for the log.
    pub log_body_bytes: usize,
    /// Where finished entries are reported.
    pub acks: AckSender,
}

/// One delivery worker (one consumer of the group).
pub struct Worker {
    /// Used only for XREADGROUP.
    pub reader: Client,
    /// Used for everything else.
    pub redis: Client,
    /// Stream and group.
    pub keys: Keys,
    /// This worker's consumer name.
    pub consumer: String,
    /// Entries per read, at most.
    pub read_count: usize,
    /// How long an idle read blocks.
    pub read_block: Duration,
    /// Bounds concurrent attempts.
    pub slots: Arc<Semaphore>,
    /// Set while the consumer group is known to exist.
    pub group_ready: Arc<AtomicBool>,
    /// Shared with each delivery task.
    pub shared: Arc<Shared>,
}

/// Where a read starts.
enum Cursor {
    /// This consumer's own pending entries with ids after this one.
    Pending(String),
    /// New entries (`>`).
    New,
}

impl Worker {
    /// Runs until `shutdown` is cancelled, then waits for in-flight attempts.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut cursor = Cursor::Pending("0".into());
        let mut backoff = Backoff::default();
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
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while permits.len() < self.read_count {
                match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // The read in flight is finished even after shutdown, so that
            // entries Redis hands over are delivered rather than stranded as
            // pending; but a Redis that went away gets only one BLOCK more.
            let read = self.read(&cursor, permits.len());
            let stranded = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.read_block + Duration::from_secs(1)).await;
            };
            let entries = match tokio::select! { r = read => r, _ = stranded => break } {
                Ok(entries) => entries,
                Err(e) => {
                    if postback_common::redis::is_nogroup(&e) {
                        tracing::warn!(
                            "consumer group is gone (Redis restarted empty or the stream was deleted); re-creating it"
                        );
                        self.group_ready.store(false, Ordering::Release);
                    } else {
                        tracing::warn!(error = %e, "XREADGROUP failed; retrying");
                        backoff.wait(&shutdown).await;
                    }
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
                let shared = self.shared.clone();
                tracker.spawn(deliver(shared, entry, permit));
            }
        }
        tracker.close();
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for deliveries in flight");
        }
        tracker.wait().await;
        tracing::info!(consumer = %self.consumer, "worker stopped");
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

/// Delivers one entry and reports it finished.
async fn deliver(shared: Arc<Shared>, entry: Entry, _slot: OwnedSemaphorePermit) {
    match entry.payload.as_deref().map(wire::decode) {
        None => {
            tracing::warn!(entry_id = %entry.id, "entry has no postback (deleted while pending?); acknowledging it")
        }
        Some(Err(e)) => {
            tracing::error!(entry_id = %entry.id, error = %e, "entry is not a postback; acknowledging it without delivery")
        }
        Some(Ok(postback)) => {
            let ctx = AttemptContext {
                http: &shared.http,
                unmatched_default: &shared.unmatched_default,
                log_body_bytes: shared.log_body_bytes,
            };
            attempt::run(&ctx, &postback, 1, &entry.id).await;
        }
    }
    shared.acks.ack(entry.id);
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
