//! The worker loop: wait for free slots, take entries into them, hand each
//! to its own task; and the queue design, which everything else follows.
//!
//! # Queue design
//! Ingest XADDs postbacks to one stream (a request's postbacks share one
//! entry; `schemas/wire-format.md`). All delivery workers share one
//! consumer group: every entry goes to one worker ([`crate::intake`]) and
//! stays in the group's pending list (PEL) until all of its postbacks are
//! finished. Each postback is finished on its own, exactly once, by the
//! finish script ([`crate::ledger`], called in batches by the recorder,
//! [`crate::recorder`]): delivered, moved to the retry schedule (streams by
//! delay, `postback_common::records::schedule`), or moved to the
//! dead-letter stream. The entry is acknowledged and deleted with its last
//! postback. Every worker's scheduler moves due retries back into the
//! stream ([`crate::scheduler`]).
//!
//! A worker that dies leaves its entries pending. A restarted worker of the
//! same name re-reads them first, and every worker takes over entries idle
//! longer than `POSTBACK_CLAIM_IDLE_MS`; either way the postbacks already
//! finished are skipped and the delivery count decides whether the entry is
//! poison ([`crate::entry`]). A worker that is not dead but only slow loses
//! its entries the same way, and its own finishing steps then change
//! nothing. Delivery is therefore at-least-once, repeats limited to the
//! attempts in flight at a crash and the delivered postbacks not yet
//! recorded (the README's guarantees).
//!
//! Reads use their own Redis connection: XREADGROUP BLOCK holds a connection
//! until it returns, and other commands must not queue up behind it. An idle
//! worker costs Redis one read per `POSTBACK_READ_BLOCK_MS`, one scheduler
//! look every few seconds and one XAUTOCLAIM per claim interval.
//!
//! At most `POSTBACK_DELIVER_CONCURRENCY` postbacks are in hand at once:
//! each takes a slot, and the loop takes only as many entries as its free
//! slots are likely to hold ([`EntrySizes`]). A read that holds slots never
//! blocks: when it finds nothing, the slots go back and the loop waits for
//! the next entries with a blocked read that holds none and takes at most
//! two ([`crate::intake::WAITED_FOR`]), taking a slot for each only once it
//! has arrived. One entry means the stream is quiet again, so the loop
//! waits again (one read per entry, as before); two mean more may follow,
//! and the loop reads on with free slots, without waiting. So an idle
//! partition holds no slot, a busy one can use them all, and a partition
//! never holds more than one entry beyond its slots.
//!
//! With several partitions, the worker runs one such loop per partition
//! ([`crate::partitions`]), each with its own reading connection, intake,
//! recorder, scheduler, janitor and delivery log; the slots, the HTTP
//! client, the per-host limits and breakers are shared by all of them.
//!
//! If the group disappears (Redis restarted without its data, or the stream
//! was deleted), the next command answers NOGROUP and the group is created
//! again at id `0` ([`crate::group`]), so nothing queued since is skipped.
//!
//! Shutdown: the loop stops taking entries (the read in flight, at most one
//! BLOCK long, is finished and its entries handled, so none are stranded as
//! pending), then waits up to `POSTBACK_SHUTDOWN_GRACE_MS` for the entries
//! in flight; whatever is still running then is abandoned and stays pending
//! for another worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::records::request::{self as request_entry, MAX_POSTBACKS};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::intake::{Intake, Taken};
use crate::shared::Shared;

/// One delivery worker (one consumer of the group).
pub(crate) struct Worker {
    /// Takes entries into the worker's hands.
    pub(crate) intake: Intake,
    /// The command client, for setting up the group.
    pub(crate) redis: Client,
    /// Stream and group names.
    pub(crate) keys: Keys,
    /// This worker's consumer name.
    pub(crate) consumer: String,
    /// Entries per read, at most.
    pub(crate) read_count: usize,
    /// How long an idle read blocks.
    pub(crate) read_block: Duration,
    /// Bounds the postbacks held at once.
    pub(crate) slots: Arc<Semaphore>,
    /// Set while the consumer group is known to exist.
    pub(crate) group_ready: Arc<AtomicBool>,
    /// How long shutdown waits for entries in flight.
    pub(crate) shutdown_grace: Duration,
    /// Shared with each entry's task.
    pub(crate) shared: Arc<Shared>,
    /// Postbacks per entry lately, to size reads.
    pub(crate) sizes: EntrySizes,
}

/// Postbacks per entry lately, in sixteenths. Every postback in hand takes
/// a slot, so a read asks for as many entries as the free slots are likely
/// to hold, rather than one per slot: a read of entries of 100 postbacks
/// each then takes one entry, not one per slot. It starts at the largest
/// entry and follows a larger entry at once, a smaller one slowly, so a
/// worker never reads far more postbacks than it has slots for (at
/// start-up, say, with a backlog of large entries waiting).
#[derive(Debug)]
pub(crate) struct EntrySizes(AtomicUsize);

impl Default for EntrySizes {
    fn default() -> Self {
        Self(AtomicUsize::new(16 * MAX_POSTBACKS))
    }
}

impl EntrySizes {
    /// Notes an entry just taken.
    fn saw(&self, taken: &Taken) {
        let postbacks = taken.entry.payload.as_deref().map_or(1, request_entry::postbacks_in).clamp(1, 1 << 16);
        let (old, new) = (self.0.load(Ordering::Relaxed), postbacks * 16);
        self.0.store(if new >= old { new } else { (old * 7 + new).div_ceil(8) }, Ordering::Relaxed);
    }

    /// Entries to take for `free` slots: at least one.
    fn entries_for(&self, free: usize) -> usize {
        (free * 16).div_ceil(self.0.load(Ordering::Relaxed).max(16)).max(1)
    }
}

impl Worker {
    /// Runs until `shutdown` is cancelled, then waits (within the grace
    /// period) for the entries in flight.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut backoff = Backoff::default();
        let mut idle = false;
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
            // Idle: wait for the next entry holding no slot.
            let permits = if idle {
                Vec::new()
            } else {
                let Some(mut permits) = self.free_slots(&shutdown).await else { break };
                // Slots not needed for the entries taken this time go back.
                permits.truncate(self.sizes.entries_for(permits.len()));
                permits
            };
            let count =
                if idle { self.sizes.entries_for(self.slots.available_permits().max(1)) } else { permits.len() };

            // What is taken is handled even after shutdown, so that entries
            // Redis hands over are not stranded as pending; but a Redis
            // that went away gets only one BLOCK more.
            let take = self.intake.take(count, idle);
            let stranded = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.read_block + Duration::from_secs(1)).await;
            };
            let taken = match tokio::select! { r = take => r, _ = stranded => break } {
                Ok(taken) => taken,
                Err(e) => {
                    if postback_common::redis::is_nogroup(&e) {
                        tracing::warn!(
                            "consumer group is gone (Redis restarted empty or the stream was deleted); re-creating it"
                        );
                        self.group_ready.store(false, Ordering::Release);
                    } else {
                        tracing::warn!(error = %e, "cannot take entries from the stream; retrying");
                        backoff.wait(&shutdown).await;
                    }
                    continue;
                }
            };
            backoff.reset();
            let was_idle = idle;
            idle = if idle { taken.len() < count.min(crate::intake::WAITED_FOR) } else { taken.is_empty() };
            debug_assert!(was_idle || taken.len() <= permits.len(), "every entry taken has a slot");
            let mut permits = permits.into_iter();
            let since = self.shared.ownership.generation();
            for taken in taken {
                self.sizes.saw(&taken);
                // Taken while idle: its slot is waited for now that it is here.
                let permit = match permits.next() {
                    Some(permit) => permit,
                    None => match self.slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let held = self.intake.in_flight().hold(&taken.entry.id);
                let handled = crate::entry::handle(self.shared.clone(), taken, permit, since);
                tracker.spawn(async move {
                    handled.await;
                    drop(held);
                });
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
}
