//! The end of a postback's turn: its [`Outcome`] becomes one step of the
//! finish script, recorded in a batch by the partition's recorder
//! ([`crate::recorder`]).
//!
//! * Delivered: recorded as such.
//! * Retry: into the retry schedule, at the level of its delay (rounded up
//!   to the ladder of `postback_common::records::schedule`), keeping its
//!   tally of attempts: a postback of a version 3 or 5 entry as a row of a
//!   version 5 value that still refers to its endpoint record, a single
//!   postback as its own bytes.
//! * Dead: into the dead-letter stream with its reason and tally: a
//!   postback of a version 3 or 5 entry as a version 3 entry of one that
//!   refers to the record, a single postback as its own bytes.
//!
//! The script records each postback as finished in its entry and removes
//! the entry with its last postback, only while this worker still holds the
//! entry. One that another worker took over meanwhile is left to that
//! worker: the step changes nothing in Redis and is counted
//! (`postback_stale_finishes_total`). A step Redis does not take is tried
//! again by the recorder until it lands or the worker shuts down; then the
//! entry stays pending and is handled again later (at-least-once).

use std::sync::Arc;

use bytes::Bytes;
use postback_common::Postback;
use postback_common::records::dead_letter::DeadLetter;
use postback_common::records::request;
use postback_common::records::schedule;
use tokio::sync::Notify;

use crate::ledger::{Held, Position};
use crate::metrics::DeliverMetrics;
use crate::outcome::{DeadReason, Ending, Outcome, Tally};
use crate::recorder::{End, Keep, Recorder};

/// Finishes postbacks.
pub(crate) struct Finisher {
    recorder: Recorder,
    metrics: Arc<DeliverMetrics>,
    /// Woken when a retry is scheduled, so the scheduler can move it back in
    /// time even when it is due sooner than the scheduler's next look.
    pub(crate) scheduled: Arc<Notify>,
}

/// What a retry or a dead letter keeps of a postback.
#[derive(Debug, Clone)]
pub(crate) enum Kept {
    /// A single postback's entry: its own bytes.
    Own(Bytes),
    /// A postback of a version 3 or 5 entry (whose record the entry names).
    Row(Arc<Postback>),
    /// Nothing: an entry let go of, or dead-lettered whole with these
    /// bytes (none when it had no `p`).
    Whole(Bytes),
}

/// One postback (or a whole entry) to finish.
pub(crate) struct Finishing {
    /// Its place in the entry.
    pub(crate) position: Position,
    /// Its id, when it could be decoded.
    pub(crate) postback_id: Option<String>,
    /// What a retry or a dead letter keeps.
    pub(crate) kept: Kept,
    /// How its turn ended.
    pub(crate) ending: Ending,
}

impl Finisher {
    /// A finisher recording through `recorder`.
    pub(crate) fn new(recorder: Recorder, metrics: Arc<DeliverMetrics>) -> Self {
        Self { recorder, metrics, scheduled: Arc::new(Notify::new()) }
    }

    /// Returns once this partition's steps land in Redis again (at once
    /// while they do): an attempt is not started unless its outcome can be
    /// recorded.
    pub(crate) async fn wait_recording(&self) {
        if !self.recorder.healthy() {
            tracing::debug!("waiting for Redis to take finishing steps again before the next attempt");
        }
        self.recorder.wait_healthy().await;
    }

    /// Finishes one postback of `entry` (or the entry, for
    /// [`Position::Whole`]); whether the step landed.
    pub(crate) async fn finish(&self, entry: &Arc<Held>, finishing: Finishing) -> bool {
        let Finishing { position, postback_id, kept, ending: Ending { outcome, tally } } = finishing;
        match outcome {
            Outcome::Delivered => self.recorder.record(entry.clone(), position, End::Delivered).await,
            Outcome::Retry { after, reason } => {
                let keep = match kept {
                    Kept::Own(bytes) | Kept::Whole(bytes) => Keep::Own(bytes),
                    Kept::Row(postback) => Keep::Row(postback),
                };
                let wait_ms = after.as_millis() as u64;
                // A turn under its host's rate is kept exactly (see
                // crate::recorder); other waits go to the level at or above.
                let (delay_ms, later_ms) = if reason == crate::outcome::RetryReason::HostRateLimited {
                    let level = schedule::round_down(wait_ms);
                    (level, wait_ms - level)
                } else {
                    (schedule::round_up(wait_ms), 0)
                };
                let end = End::Retry { delay_ms, later_ms, attempts: tally.attempts, first_ms: tally.first_ms, keep };
                let landed = self.recorder.record(entry.clone(), position, end).await;
                if landed {
                    self.metrics.rescheduled(reason);
                    self.scheduled.notify_one();
                }
                landed
            }
            Outcome::Dead(reason) => {
                let end = dead_end(entry, &reason, postback_id.as_deref(), &tally, kept);
                let landed = self.recorder.record(entry.clone(), position, end).await;
                if landed {
                    self.metrics.dead_lettered(reason.category(), 1);
                }
                landed
            }
        }
    }

    /// Dead-letters several postbacks of `entry` for `reason` (an entry
    /// that keeps failing its workers), each on its own, all with `tally`.
    pub(crate) async fn bury(
        &self,
        entry: &Arc<Held>,
        reason: &DeadReason,
        tally: &Tally,
        letters: Vec<(Position, String, Kept)>,
    ) {
        let steps = letters.into_iter().map(|(position, id, kept)| {
            let end = dead_end(entry, reason, Some(&id), tally, kept);
            self.recorder.record(entry.clone(), position, end)
        });
        let landed = futures::future::join_all(steps).await.into_iter().filter(|landed| *landed).count();
        self.metrics.dead_lettered(reason.category(), landed as u64);
    }
}

/// The letter of a postback (or a whole entry) given up for `reason`, and
/// the record it refers to on its own account.
fn dead_end(entry: &Held, reason: &DeadReason, postback_id: Option<&str>, tally: &Tally, kept: Kept) -> End {
    let (payload, endpoint) = match kept {
        Kept::Own(bytes) | Kept::Whole(bytes) => (bytes, None),
        Kept::Row(postback) => match entry.endpoint {
            Some(endpoint) => (Bytes::from(request::alone(&postback, endpoint)), Some(endpoint)),
            None => (Bytes::from(postback_common::records::postback::encode(&postback)), None),
        },
    };
    let letter = DeadLetter {
        category: reason.category(),
        reason: reason.to_string(),
        postback_id: postback_id.map(str::to_owned),
        attempts: tally.attempts,
        first_attempt_ms: tally.first_ms,
        last_attempt_ms: tally.last_ms,
        last_status: tally.last_status,
        last_error: tally.last_error.clone(),
        entry_id: entry.id.clone(),
        payload: Some(payload).filter(|p| !p.is_empty()),
    };
    End::Dead { letter, endpoint }
}
