//! Taking entries into the worker's hands, each with how many times Redis
//! has handed it to a worker (its delivery count, which XPENDING shows):
//!
//! 1. **Own pending entries**, taken again: at start (what this consumer
//!    held when it last stopped, under the same name; the systemd units use
//!    stable names), and whenever entries may have been handed to it
//!    without reaching its hands (below). They are listed with XPENDING,
//!    those this worker is handling are left out ([`InFlight`]), and the
//!    rest are taken with one script (`lua/retake.lua`) that takes only
//!    those still this consumer's and counts a delivery for each.
//! 2. **Claims**, every claim interval: entries idle longer than
//!    `POSTBACK_CLAIM_IDLE_MS` with any consumer, workers that died. XAUTOCLAIM
//!    moves them to this consumer by id only (JUSTID, which counts no
//!    delivery), and they are then taken as in step 1, so an entry this
//!    worker is itself still handling is never handed to it twice. The
//!    idle time is longer than any turn of a live worker (checked at
//!    start-up, [`crate::config::Patience`]).
//! 3. Otherwise **new entries** (`XREADGROUP … >`), blocking while there
//!    are none; those have been handed out once.
//!
//! Entries can be handed to this consumer without reaching its hands: a
//! read whose answer was lost with its connection (fred reconnects and may
//! send the read again, quietly), a claim whose answer was lost, a read
//! whose delivery counts could not be taken. All of these end the same
//! way, in step 1: after any reconnect of either connection, after a
//! failed read and after a claim, the own pending entries are taken again,
//! skipping those being handled. An entry is in [`InFlight`] from the
//! moment it is taken until the last task handling it ends, which is after
//! every one of its postbacks is recorded (or the worker stops), so
//! nothing answered but not yet recorded is sent again. A new-entry read
//! that hands over an entry this worker is handling (Redis forgot the
//! first read: a failover to a replica that had not received it) leaves
//! it to the handling under way, so one entry never has two handlings,
//! and its postbacks never two paths (its entry and the retry schedule).
//! Such an entry, and every entry handled across a reconnect, is looked
//! for again among the own pending entries once its handling ends: a
//! failover's new primary may have lost some of its records, leaving it
//! this consumer's with postbacks unfinished.
//! So a live worker repeats nothing; only a dead worker's entries are
//! attempted again, and what a failover lost.
//!
//! Whatever way an entry came, the same delivery count decides whether it
//! is poison ([`crate::entry`]).

use std::collections::HashMap;

/// New entries a waiting read takes at most: the first to arrive, and one
/// more that says whether others follow (the worker then reads on without
/// waiting; [`crate::worker`]).
pub(crate) const WAITED_FOR: usize = 2;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio::sync::broadcast::{self, error::TryRecvError};
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

/// The entries this worker is handling now, each with the number of
/// tasks holding it.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<String, usize>>>);

impl InFlight {
    /// Notes `id` as handled until the guard is dropped (and every other
    /// guard of the same id).
    pub(crate) fn hold(&self, id: &str) -> InFlightGuard {
        *self.lock().entry(id.to_owned()).or_default() += 1;
        InFlightGuard { set: self.clone(), id: id.to_owned() }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The ids handled now.
    fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
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
        let mut held = self.set.lock();
        if let Some(n) = held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

/// Where the next read starts.
enum Cursor {
    /// This consumer's own pending entries with ids after this one (`-`
    /// for all).
    Pending(String),
    /// New entries (`>`).
    New,
}

/// Reads, re-reads and claims for one consumer.
pub(crate) struct Intake {
    /// Used only for XREADGROUP, which blocks its connection.
    reader: Client,
    /// Used for XAUTOCLAIM, XPENDING and the retake script.
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
    retake: Script,
    /// Reconnects of either connection, after which the own pending
    /// entries are taken again.
    reconnects: [broadcast::Receiver<fred::types::config::Server>; 2],
    /// Entries that may be left this consumer's and unfinished when their
    /// handling ends: handed over again by a read while handled (the
    /// handling may have ended before the read), or handled across a
    /// reconnect (after a failover, some of their records may be lost
    /// while the last landed). Once each handling is over, the own pending
    /// entries are looked at again.
    recheck: Vec<String>,
    /// Whether this consumer is known to the group: a blocked read does not
    /// make it so, so it is created at start, and XINFO CONSUMERS shows a
    /// worker from its start.
    known: bool,
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
        let reconnects = [reader.reconnect_rx(), redis.reconnect_rx()];
        Self {
            reader,
            redis,
            keys,
            consumer,
            read_block,
            cursor: Cursor::Pending("-".into()),
            claim_cursor: "0-0".into(),
            claim_idle,
            next_claim: Instant::now(),
            metrics,
            in_flight: InFlight::default(),
            retake: Script::new(include_str!("lua/retake.lua")),
            reconnects,
            recheck: Vec::new(),
            known: false,
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

    /// Whether either connection was made again since the last look.
    fn reconnected(&mut self) -> bool {
        let mut again = false;
        for rx in &mut self.reconnects {
            while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {
                again = true;
            }
        }
        again
    }

    /// Takes up to `count` entries: own pending ones first, then claimed
    /// ones when a claim is due, else new ones: at once, or with `wait` at
    /// most [`WAITED_FOR`], waiting up to the read block for them to arrive.
    pub(crate) async fn take(&mut self, count: usize, wait: bool) -> Result<Vec<Taken>, Error> {
        if !self.known {
            let _: i64 = self.redis.xgroup_createconsumer(&self.keys.stream, &self.keys.group, &self.consumer).await?;
            self.known = true;
        }
        if self.reconnected() {
            tracing::info!("reconnected to Redis: taking again own pending entries this worker is not handling");
            self.cursor = Cursor::Pending("-".into());
            // Those being handled may end part finished on a Redis that
            // lost some of their records (a failover's new primary).
            self.recheck.extend(self.in_flight.ids());
        }
        let before = self.recheck.len();
        self.recheck.retain(|id| self.in_flight.contains(id));
        if self.recheck.len() < before {
            self.cursor = Cursor::Pending("-".into());
        }
        if let Some(taken) = self.own_pending(count).await? {
            return Ok(taken);
        }
        if Instant::now() >= self.next_claim {
            self.next_claim = Instant::now() + self.claim_interval();
            let claimed = self.claim(count).await?;
            if claimed > 0 {
                tracing::info!(count = claimed, "took over entries left by another worker");
                self.metrics.claimed(claimed);
                self.cursor = Cursor::Pending("-".into());
                if let Some(taken) = self.own_pending(count).await? {
                    return Ok(taken);
                }
            }
        }
        let mut entries = match self.read(if wait { count.min(WAITED_FOR) } else { count }, wait).await {
            Ok(entries) => entries,
            Err(e) => {
                // It may have handed entries over all the same.
                self.cursor = Cursor::Pending("-".into());
                return Err(e);
            }
        };
        entries.retain(|entry| {
            if !self.in_flight.contains(&entry.id) {
                return true;
            }
            tracing::warn!(
                entry_id = %entry.id,
                "Redis handed over as new an entry this worker is handling (it lost the first read, as a failover \
                 to a replica that had not received it does); the handling under way goes on alone"
            );
            self.recheck.push(entry.id.clone());
            false
        });
        Ok(entries.into_iter().map(|entry| Taken { entry, deliveries: 1 }).collect())
    }

    /// Step 1: up to `count` own pending entries this worker is not
    /// handling, taken again; `None` once there are none left (and new
    /// entries are read from then on). On an error the cursor stays, and
    /// the next call tries again.
    async fn own_pending(&mut self, count: usize) -> Result<Option<Vec<Taken>>, Error> {
        let page = count.max(16) as u64;
        while let Cursor::Pending(after) = &self.cursor {
            let rows =
                postback_common::redis::pending_rows(&self.redis, &self.keys, (after, "+"), page, Some(&self.consumer))
                    .await?;
            let Some(last) = rows.last() else {
                tracing::debug!("own pending entries done; reading new entries");
                self.cursor = Cursor::New;
                break;
            };
            let mut next =
                if rows.len() as u64 == page { Cursor::Pending(format!("({}", last.id)) } else { Cursor::New };
            // At most `count`, each with a slot waiting for it; the rest on
            // the next call.
            let mut fresh = rows.into_iter().filter(|row| !self.in_flight.contains(&row.id));
            let deliveries: HashMap<String, u64> =
                fresh.by_ref().take(count).map(|row| (row.id, row.deliveries + 1)).collect();
            if fresh.next().is_some()
                && let Some(last) = deliveries.keys().max_by_key(|id| postback_common::redis::id_order(id))
            {
                next = Cursor::Pending(format!("({last}"));
            }
            if deliveries.is_empty() {
                self.cursor = next;
                continue;
            }
            let mut args: Vec<Value> = vec![self.keys.group.as_str().into(), self.consumer.as_str().into()];
            args.extend(deliveries.keys().map(|id| Value::from(id.as_str())));
            let reply: Value = self.retake.call(&self.redis, &[&self.keys.stream], args).await?;
            self.cursor = next;
            let taken: Vec<Taken> = reply::from_entries(reply)
                .into_iter()
                .map(|entry| {
                    let deliveries = deliveries.get(&entry.id).copied().unwrap_or(1);
                    Taken { entry, deliveries }
                })
                .collect();
            if taken.is_empty() {
                continue;
            }
            tracing::info!(
                count = taken.len(),
                "taking again entries this worker holds but is not handling (after a start, a reconnect, a failed \
                 read or a claim)"
            );
            return Ok(Some(taken));
        }
        Ok(None)
    }

    /// XREADGROUP of new entries, blocking when `wait`.
    async fn read(&self, count: usize, wait: bool) -> Result<Vec<Entry>, Error> {
        let block = wait.then_some(self.read_block.as_millis() as u64);
        let reply: Value = self
            .reader
            .xreadgroup(&self.keys.group, &self.consumer, Some(count as u64), block, false, &self.keys.stream, ">")
            .await?;
        Ok(reply::from_reply(reply))
    }

    /// Moves up to `count` entries idle longer than the claim idle time to
    /// this consumer, by id only; how many of them this worker is not
    /// handling already (those are then taken as own pending entries).
    async fn claim(&mut self, count: usize) -> Result<usize, Error> {
        let args: Vec<Value> = vec![
            self.keys.stream.as_str().into(),
            self.keys.group.as_str().into(),
            self.consumer.as_str().into(),
            (self.claim_idle.as_millis() as i64).into(),
            self.claim_cursor.as_str().into(),
            "COUNT".into(),
            (count as i64).into(),
            "JUSTID".into(),
        ];
        let reply: Value =
            self.redis.custom(CustomCommand::new_static("XAUTOCLAIM", ClusterHash::FirstKey, false), args).await?;
        let (cursor, ids) = reply::from_autoclaim_ids(reply);
        self.claim_cursor = cursor;
        Ok(ids.iter().filter(|id| !self.in_flight.contains(id)).count())
    }
}
