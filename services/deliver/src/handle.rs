//! One entry, from the moment a worker holds it to the moment it is
//! finished: decode, expand the URL, respect the target's per-host limit,
//! attempt, decide, and finish (acknowledge, schedule again, or
//! dead-letter), logging the attempt. A version 3 entry's postbacks each
//! take that path (see [`crate::batch`]).
//!
//! Nothing here can stop the worker: an entry that cannot be decoded, or
//! that keeps killing workers, is dead-lettered as poison and the worker
//! moves on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Client;
use postback_common::wire::Decoded;
use postback_common::{Postback, template, wire};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, instrument};

use crate::attempt::{self, AttemptContext};
use crate::attempt_log::{AttemptLog, LoggedAttempt};
use crate::endpoints::Endpoints;
use crate::entry::Entry;
use crate::finish::{DeadLetter, Finisher, Scope};
use crate::guard::Guard;
use crate::hosts::{HostLimits, host_key};
use crate::metrics::{DeliverMetrics, RescheduleReason};
use crate::retry::{Decision, RetryPolicy};

/// How long a postback whose host is at its limit waits for a slot in the
/// worker before it goes back to the schedule.
pub const HOST_PATIENCE: Duration = Duration::from_millis(100);

/// How long a postback whose host stayed at its limit waits in the
/// schedule before it is read again (plus up to four times as much of
/// jitter, which spreads a hanging host's backlog out). It keeps its
/// attempt count.
pub const HOST_BUSY_DELAY: Duration = Duration::from_millis(250);

/// What every entry's handling shares.
pub struct Shared {
    /// The outbound HTTP client.
    pub http: reqwest::Client,
    /// Replacement for unmatched `{key}`s.
    pub unmatched_default: String,
    /// Body bytes kept for the log.
    pub log_body_bytes: usize,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Per-host in-flight limits.
    pub hosts: HostLimits,
    /// Hand-overs after which a claimed entry is poison.
    pub max_deliveries: u64,
    /// The SSRF guard, unless private targets are allowed.
    pub guard: Option<Arc<Guard>>,
    /// Longest URL sent.
    pub max_url_bytes: usize,
    /// Acknowledges, reschedules, dead-letters.
    pub finisher: Finisher,
    /// The delivery log stream.
    pub attempt_log: AttemptLog,
    /// Prometheus metrics.
    pub metrics: Arc<DeliverMetrics>,
    /// The command client, for endpoint records.
    pub redis: Client,
    /// The endpoint record hash.
    pub endpoints_key: String,
    /// The endpoint records read so far.
    pub endpoints: Endpoints,
    /// The worker's slots, one per postback in hand (the read loop's too).
    pub slots: Arc<Semaphore>,
    /// How long a postback of a version 3 entry waits for a slot before it
    /// goes back to the schedule without an attempt.
    pub slot_patience: Duration,
}

/// How a postback's turn ended, before it is finished in Redis.
#[derive(Debug)]
pub enum Outcome {
    /// The target took it.
    Delivered,
    /// To be attempted again.
    Again {
        /// Attempts made so far and when the first was made (ms).
        so_far: (u32, u64),
        /// How long from now.
        after: Duration,
        /// Why, for the metrics.
        reason: RescheduleReason,
    },
    /// Given up.
    Dead(DeadLetter),
}

/// Handles one entry. `deliveries` is Redis's hand-over count when the entry
/// was claimed from another worker; `slot` is the worker slot it was read
/// with, given back when its postbacks are done.
#[instrument(name = "entry", skip_all, fields(entry_id = %entry.id, attempt = entry.attempts + 1))]
pub async fn handle(shared: Arc<Shared>, entry: Entry, deliveries: Option<u64>, slot: OwnedSemaphorePermit) {
    let finisher = &shared.finisher;
    if !entry.has_fields {
        // Deleted while it was pending: nothing left to deliver.
        finisher.ack(&entry);
        return;
    }
    let poisoned = deliveries
        .filter(|n| *n > shared.max_deliveries)
        .map(|n| format!("poison: handed to workers {n} times without being finished"));
    let Some(payload) = entry.payload.clone() else {
        tracing::error!("dead-lettering an entry without a postback field");
        return bury_entry(&shared, &entry, "poison: entry has no \"p\" field".into(), None).await;
    };
    let decoded = match wire::decode_entry(&payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that is not a postback");
            let reason = poisoned.unwrap_or_else(|| format!("poison: undecodable: {e}"));
            return bury_entry(&shared, &entry, reason, None).await;
        }
    };
    let postback = match decoded {
        Decoded::Single(postback) => postback,
        // Boxed, as is the attempt below: the task's own future stays
        // small, so spawning it copies little.
        Decoded::Request(batch) => return Box::pin(crate::batch::handle(&shared, &entry, batch, poisoned, slot)).await,
    };
    if let Some(reason) = poisoned {
        tracing::error!(reason, "dead-lettering an entry that keeps failing its workers");
        return bury_entry(&shared, &entry, reason, Some(postback.id.to_string())).await;
    }
    let outcome = Box::pin(deliver(&shared, &postback, &entry)).await;
    drop(slot);
    finish(&shared, Scope::Entry(&entry), payload, outcome).await;
}

/// Dead-letters a whole entry as it is (its bytes kept as they are).
pub async fn bury_entry(shared: &Shared, entry: &Entry, reason: String, postback_id: Option<String>) {
    let letter = DeadLetter { reason, postback_id, ..dead_basics(entry) };
    shared.finisher.bury(Scope::Entry(entry), &letter, entry.payload.as_ref()).await;
}

/// Finishes one postback in Redis after its turn; `payload` is what a retry
/// or a dead letter keeps. Whether that landed (a delivered postback of a
/// version 3 entry has nothing to land: the entry's ack comes later).
pub async fn finish(shared: &Shared, scope: Scope<'_>, payload: Bytes, outcome: Outcome) -> bool {
    let finisher = &shared.finisher;
    match outcome {
        Outcome::Delivered => {
            if let Scope::Entry(entry) = scope {
                finisher.ack(entry);
            }
            true
        }
        Outcome::Again { so_far, after, reason } => finisher.reschedule(scope, &payload, so_far, after, reason).await,
        Outcome::Dead(letter) => finisher.bury(scope, &letter, Some(&payload)).await,
    }
}

/// A postback's turn: expand the URL, respect the target's per-host limit,
/// attempt, decide, and log the attempt. `entry` says how many attempts
/// came before and when the first was.
pub async fn deliver(shared: &Shared, postback: &Postback, entry: &Entry) -> Outcome {
    let give_up = |reason: String| {
        Outcome::Dead(DeadLetter { reason, postback_id: Some(postback.id.to_string()), ..dead_basics(entry) })
    };
    let url = match template::expand(&postback.url, &postback.data, &shared.unmatched_default) {
        Ok(url) => url,
        Err(e) => {
            tracing::error!(postback_id = %postback.id, error = %e, "dead-lettering a postback whose URL cannot be built");
            return give_up(format!("rejected: URL template: {e}"));
        }
    };
    if url.len() > shared.max_url_bytes {
        let reason =
            format!("rejected: URL is {} bytes, over POSTBACK_MAX_URL_BYTES ({})", url.len(), shared.max_url_bytes);
        tracing::error!(postback_id = %postback.id, reason, "dead-lettering a postback");
        return give_up(reason);
    }
    let parsed = match url::Url::parse(&url) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::error!(postback_id = %postback.id, %url, error = %e, "dead-lettering a postback with an invalid URL");
            return give_up(format!("rejected: invalid URL: {e}"));
        }
    };
    if let Some(Err(refused)) = shared.guard.as_ref().map(|g| g.check_url(&parsed)) {
        tracing::error!(postback_id = %postback.id, %url, error = %refused, "dead-lettering a postback to a refused target");
        return give_up(format!("refused: {refused}"));
    }
    let host = host_key(&parsed);
    let Some(_host_slot) = shared.hosts.acquire_within(&host, HOST_PATIENCE).await else {
        tracing::debug!(postback_id = %postback.id, host, "host at its limit; rescheduling without an attempt");
        return busy(entry, RescheduleReason::HostBusy);
    };

    let number = entry.attempts + 1;
    let ctx = AttemptContext { http: &shared.http, log_body_bytes: shared.log_body_bytes };
    let span = attempt::span(postback, number, &parsed);
    shared.metrics.in_flight(true);
    let attempt = attempt::send(&ctx, postback, &url).instrument(span.clone()).await;
    shared.metrics.in_flight(false);
    attempt::record(&span, &attempt);
    drop(span);
    let decision = shared.policy.decide(&attempt.verdict, number);
    let end_to_end = (decision == Decision::Delivered).then(|| {
        let accepted = postback_common::time::from_ms(postback.accepted_at_ms);
        std::time::SystemTime::now().duration_since(accepted).unwrap_or_default()
    });
    let response_time = attempt.status.map(|_| Duration::from_millis(attempt.response_time_ms));
    shared.metrics.attempted(decision.as_str(), attempt.status, response_time, end_to_end);
    attempt::log(postback, number, &entry.id, &url, &attempt, &decision);
    shared.attempt_log.record(LoggedAttempt {
        postback_id: postback.id.to_string(),
        attempt: number,
        at: postback_common::time::rfc3339_ms(attempt.delivered_at),
        status: attempt.status,
        outcome: decision.as_str(),
        response_time_ms: attempt.response_time_ms,
        url,
        error: match &decision {
            Decision::Dead { reason } => Some(reason.clone()),
            _ => attempt.verdict.reason().map(str::to_owned),
        },
    });
    let first_attempt_ms = entry.first_attempt_ms.filter(|ms| *ms > 0).unwrap_or_else(|| attempt.delivered_at_ms());
    match decision {
        Decision::Delivered => Outcome::Delivered,
        Decision::Retry { after } => {
            Outcome::Again { so_far: (number, first_attempt_ms), after, reason: RescheduleReason::FailedAttempt }
        }
        Decision::Dead { reason } => Outcome::Dead(DeadLetter {
            reason,
            postback_id: Some(postback.id.to_string()),
            attempts: number,
            first_attempt_ms: Some(first_attempt_ms),
            last_attempt_ms: Some(attempt.delivered_at_ms()),
            last_status: attempt.status,
            last_error: attempt.verdict.reason().map(str::to_owned),
        }),
    }
}

/// Back to the schedule without an attempt (the host, or the worker, had
/// no room), keeping the attempt count, after [`HOST_BUSY_DELAY`] and up to
/// four times as much of jitter.
pub fn busy(entry: &Entry, reason: RescheduleReason) -> Outcome {
    let jitter = Duration::from_millis(fastrand::u64(0..=4 * HOST_BUSY_DELAY.as_millis() as u64));
    let so_far = (entry.attempts, entry.first_attempt_ms.unwrap_or(0));
    Outcome::Again { so_far, after: HOST_BUSY_DELAY + jitter, reason }
}

/// A dead letter with what the entry itself records.
fn dead_basics(entry: &Entry) -> DeadLetter {
    DeadLetter {
        attempts: entry.attempts,
        first_attempt_ms: entry.first_attempt_ms.filter(|ms| *ms > 0),
        ..DeadLetter::default()
    }
}
