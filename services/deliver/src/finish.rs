//! The end of a postback's turn: its [`Outcome`] becomes one step in Redis.
//!
//! * Delivered: recorded by the acker, in a batch ([`crate::acker`]).
//! * Retry: into the retry schedule, keeping its tally of attempts.
//! * Dead: into the dead-letter stream, with its reason and tally.
//!
//! Each is a call of the finish script ([`crate::ledger`]), which records
//! the postback as finished in its entry and removes the entry with its
//! last postback, only while this worker still holds the entry. One that
//! another worker took over meanwhile is left to that worker: the step
//! changes nothing in Redis and is counted
//! (`postback_stale_finishes_total`).
//!
//! When Redis does not answer or refuses the write, a step is retried with
//! backoff, behind the worker's probe ([`crate::degraded`]), until it lands,
//! the entry is found taken over, or the worker shuts down; then the entry
//! stays pending and is handled again later (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postback_common::records::dead_letter::DeadLetter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::acker::AckSender;
use crate::backoff::Backoff;
use crate::degraded::Degraded;
use crate::ledger::{Held, Ledger, Position, Step};
use crate::metrics::DeliverMetrics;
use crate::outcome::{DeadReason, Ending, Outcome, Tally};

/// How long a step keeps trying once the worker is shutting down.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// Finishes postbacks.
pub(crate) struct Finisher {
    ledger: Arc<Ledger>,
    acks: AckSender,
    metrics: Arc<DeliverMetrics>,
    degraded: Arc<Degraded>,
    stop: CancellationToken,
    /// Woken when a retry is scheduled, so the scheduler can move it back in
    /// time even when it is due sooner than the scheduler's next look.
    pub(crate) scheduled: Arc<Notify>,
}

/// One postback to finish: where it is, what a retry or a dead letter
/// keeps of it (the postback alone, or the entry's own bytes), and how its
/// turn ended.
pub(crate) struct Finishing {
    /// Its place in the entry.
    pub(crate) position: Position,
    /// Its id, when it could be decoded.
    pub(crate) postback_id: Option<String>,
    /// What a retry or a dead letter keeps (unused when delivered).
    pub(crate) payload: Bytes,
    /// How its turn ended.
    pub(crate) ending: Ending,
}

impl Finisher {
    /// A finisher writing through `ledger`; steps stop retrying soon after
    /// `stop` is cancelled.
    pub(crate) fn new(
        ledger: Arc<Ledger>,
        acks: AckSender,
        metrics: Arc<DeliverMetrics>,
        degraded: Arc<Degraded>,
        stop: CancellationToken,
    ) -> Self {
        Self { ledger, acks, metrics, degraded, stop, scheduled: Arc::new(Notify::new()) }
    }

    /// Finishes one postback of `entry`.
    pub(crate) async fn finish(&self, entry: &Arc<Held>, finishing: Finishing) {
        let Finishing { position, postback_id, payload, ending: Ending { outcome, tally } } = finishing;
        match outcome {
            Outcome::Delivered => self.acks.delivered(entry.clone(), position),
            Outcome::Retry { after, reason } => {
                let mut member = format!("{}:{}:", tally.attempts, tally.first_ms.unwrap_or(0)).into_bytes();
                member.extend_from_slice(&payload);
                if self.persist(entry, vec![(position, Step::Retry { delay: after, member: member.into() })]).await {
                    self.metrics.rescheduled(reason);
                    self.scheduled.notify_one();
                }
            }
            Outcome::Dead(reason) => {
                let letter = dead_letter(&reason, postback_id.as_deref(), &tally, &entry.id, &payload);
                if self.persist(entry, vec![(position, Step::Dead(letter))]).await {
                    self.metrics.dead_lettered(reason.category(), 1);
                }
            }
        }
    }

    /// Dead-letters several postbacks of `entry` in one step, for `reason`
    /// (an entry that keeps killing its workers), each with its id and
    /// bytes, all with `tally`.
    pub(crate) async fn bury(
        &self,
        entry: &Arc<Held>,
        reason: &DeadReason,
        tally: &Tally,
        letters: Vec<(Position, String, Bytes)>,
    ) {
        let n = letters.len() as u64;
        let steps = letters
            .into_iter()
            .map(|(position, id, payload)| {
                (position, Step::Dead(dead_letter(reason, Some(&id), tally, &entry.id, &payload)))
            })
            .collect();
        if self.persist(entry, steps).await {
            self.metrics.dead_lettered(reason.category(), n);
        }
    }

    /// Runs the steps until they land; whether they did (false: the entry
    /// was taken over or is gone, or Redis stayed away until shutdown).
    async fn persist(&self, entry: &Held, steps: Vec<(Position, Step)>) -> bool {
        let mut backoff = Backoff::default();
        let mut tries = 0u32;
        let mut stopping_since = None;
        // Once this step is the probe, it stays the probe until it lands.
        let mut probe = None;
        loop {
            tries += 1;
            if probe.is_none() {
                probe = self.degraded.turn(self.stop.is_cancelled()).await;
            }
            match self.ledger.record([(entry, steps.clone())]).await {
                Ok(recorded) => {
                    self.degraded.landed();
                    self.metrics.stale_finishes(&recorded);
                    if tries > 1 {
                        tracing::debug!(entry_id = %entry.id, tries, "finished once Redis took the write");
                    }
                    if !recorded.taken.is_empty() {
                        tracing::warn!(
                            entry_id = %entry.id,
                            "another worker took this entry over while it was being delivered; leaving it to that worker \
                             (is POSTBACK_CLAIM_IDLE_MS too short?)"
                        );
                    }
                    return recorded.taken.is_empty() && recorded.gone.is_empty();
                }
                Err(e) => {
                    self.degraded.refused("finish", 1, &e);
                    if self.stop.is_cancelled() {
                        let since = *stopping_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= SHUTDOWN_PATIENCE {
                            tracing::error!(
                                entry_id = %entry.id,
                                error = %e,
                                "cannot finish a postback before shutdown; its entry stays pending and it will be \
                                 attempted again"
                            );
                            return false;
                        }
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// The dead letter of a postback given up for `reason` (its id, when it
/// could be decoded, and what a letter keeps of it).
fn dead_letter(
    reason: &DeadReason,
    postback_id: Option<&str>,
    tally: &Tally,
    entry_id: &str,
    payload: &Bytes,
) -> DeadLetter {
    DeadLetter {
        category: reason.category(),
        reason: reason.to_string(),
        postback_id: postback_id.map(str::to_owned),
        attempts: tally.attempts,
        first_attempt_ms: tally.first_ms,
        last_attempt_ms: tally.last_ms,
        last_status: tally.last_status,
        last_error: tally.last_error.clone(),
        entry_id: entry_id.to_owned(),
        payload: Some(payload.clone()).filter(|p| !p.is_empty()),
    }
}
