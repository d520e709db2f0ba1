//! One postback's turn: expand its URL, check it, wait for its host to have
//! room and then for a worker slot, attempt it once, and decide what comes
//! next. The attempt is logged (a JSON line, the delivery-log stream,
//! metrics); what the turn decided is returned, for [`crate::finish`] to
//! carry out.
//!
//! The host is asked first, in three steps, each of which can send the
//! postback back to the schedule without an attempt: its circuit breaker
//! ([`crate::breaker`]), its concurrency ([`crate::hosts`]) and its rate
//! ([`crate::host_rates`]). A postback turned away by its host never holds
//! a worker slot.

use std::time::Duration;

use postback_common::{Postback, template};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::attempt;
use crate::breaker::Pass;
use crate::hosts::{Entry, host_key};
use crate::outcome::{DeadReason, Ending, Outcome, RetryReason, Tally};
use crate::shared::Shared;

/// How long a postback that found no worker slot waits in the schedule
/// before it is read again (plus up to four times as much of jitter). It
/// keeps its attempt count.
const WORKER_BUSY_DELAY: Duration = Duration::from_millis(250);

/// Takes `postback`'s turn; `so_far` is its tally before this turn,
/// `entry_id` the stream entry it came in (for the log line) with the
/// reconnects counted when it was taken ([`crate::ownership`]), `slot` the
/// worker slot it was read with, if it has one (else it waits for one for
/// at most `POSTBACK_CLAIM_IDLE_MS`-derived patience, see [`Shared`]), and
/// `jitter` (in `[0, 1)`, drawn once per entry) picks its retry's delay.
pub(crate) async fn take(
    shared: &Shared,
    postback: &Postback,
    so_far: Tally,
    (entry_id, since): (&str, u64),
    slot: Option<OwnedSemaphorePermit>,
    jitter: f64,
) -> Ending {
    let give_up = |reason: DeadReason| {
        tracing::error!(postback_id = %postback.id, reason = %reason, "dead-lettering a postback that cannot be sent");
        Ending { outcome: Outcome::Dead(reason), tally: so_far.clone() }
    };
    let url =
        match template::expand_within(&postback.url, &postback.data, &shared.unmatched_default, shared.max_url_bytes) {
            Ok(url) => url,
            Err(template::TemplateError::TooLong(max)) => {
                return give_up(DeadReason::Rejected(format!("URL would be over POSTBACK_MAX_URL_BYTES ({max})")));
            }
            Err(e) => return give_up(DeadReason::Rejected(format!("URL template: {e}"))),
        };
    let parsed = match url::Url::parse(&url) {
        Ok(parsed) => parsed,
        Err(e) => return give_up(DeadReason::Rejected(format!("invalid URL: {e}"))),
    };
    if let Some(Err(refused)) = shared.guard.as_ref().map(|g| g.check_url(&parsed)) {
        return give_up(DeadReason::Refused(refused.to_string()));
    }
    let policy = postback.delivery.unwrap_or_default();
    if let Some(after) = policy.delay_ms.and_then(|delay| {
        let due = postback.accepted_at_ms + u64::from(delay);
        let left = due.saturating_sub(postback_common::time::now_ms());
        (left > 0).then(|| Duration::from_millis(left))
    }) {
        tracing::debug!(postback_id = %postback.id, after_ms = after.as_millis() as u64, "delivery delayed by the request's policy");
        return Ending { outcome: Outcome::Retry { after, reason: RetryReason::Delayed }, tally: so_far };
    }
    let host = host_key(&parsed);
    let probe = match shared.breaker.pass(&host).await {
        Pass::Go { probe } => probe,
        Pass::Wait(after) => {
            tracing::debug!(postback_id = %postback.id, host, after_ms = after.as_millis() as u64, "host paused by its circuit breaker; rescheduling without an attempt");
            return Ending { outcome: Outcome::Retry { after, reason: RetryReason::HostPaused }, tally: so_far };
        }
    };
    let host_slot = match shared.hosts.enter(&parsed).await {
        Entry::Slot(slot) => slot,
        Entry::Full(after) => {
            tracing::debug!(postback_id = %postback.id, host, after_ms = after.as_millis() as u64, "host full; rescheduling without an attempt");
            return Ending { outcome: Outcome::Retry { after, reason: RetryReason::HostBusy }, tally: so_far };
        }
    };
    // The host may have been paused while this postback waited for its slot
    // (its own worker's attempts just failed): asked again, from this
    // worker's view, which its own failures update at once.
    if !probe && let Pass::Wait(after) = shared.breaker.pass(&host).await {
        tracing::debug!(postback_id = %postback.id, host, after_ms = after.as_millis() as u64, "host paused while waiting for a slot; rescheduling without an attempt");
        return Ending { outcome: Outcome::Retry { after, reason: RetryReason::HostPaused }, tally: so_far };
    }
    if let Err(after) = shared.rates.admit(&parsed).await {
        tracing::debug!(postback_id = %postback.id, host, after_ms = after.as_millis() as u64, "host over its rate; rescheduling without an attempt");
        return Ending { outcome: Outcome::Retry { after, reason: RetryReason::HostRateLimited }, tally: so_far };
    }
    let slot = match slot {
        Some(slot) => Some(slot),
        None => tokio::time::timeout(shared.slot_patience, shared.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let Some(_slot) = slot else {
        tracing::debug!(postback_id = %postback.id, "worker at its limit; rescheduling without an attempt");
        return busy(so_far, RetryReason::WorkerBusy);
    };

    // Nothing is sent that could not be recorded: while Redis refuses this
    // partition's finishing steps, attempts wait.
    shared.finisher.wait_recording().await;
    // Redis may have been replaced meanwhile by a replica that lost the
    // entry or its read.
    if !shared.ownership.still_ours(entry_id, since).await {
        return Ending {
            outcome: Outcome::Retry { after: Duration::ZERO, reason: RetryReason::NotHeld },
            tally: so_far,
        };
    }
    // The last look before it goes: the host may have opened while this
    // postback waited for its slot or its record.
    if !probe && let Some(after) = shared.breaker.paused_now(&host) {
        tracing::debug!(postback_id = %postback.id, host, after_ms = after.as_millis() as u64, "host paused just before the attempt; rescheduling without an attempt");
        return Ending { outcome: Outcome::Retry { after, reason: RetryReason::HostPaused }, tally: so_far };
    }
    let number = so_far.attempts + 1;
    let span = attempt::span(postback, number, &parsed);
    shared.metrics.in_flight(true);
    let started = tokio::time::Instant::now();
    let timeout = policy.timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)).min(shared.max_request_timeout));
    let attempt = attempt::send(&shared.egress, &shared.signing, shared.log_body_bytes, postback, &parsed, timeout)
        .instrument(span.clone())
        .await;
    host_slot.took(started.elapsed());
    let response_time = attempt.status.map(|_| Duration::from_millis(attempt.response_time_ms));
    if let Some(failed) = crate::retry::host_failed(&attempt) {
        shared.metrics.host_attempted(&host, response_time);
        // Before the host's slot is free again: a failure that opens the
        // breaker stops the postback waiting for that slot.
        let least = attempt.retry_after.map(|after| after.min(shared.policy.max));
        shared.breaker.answered(&host, failed, probe, least).await;
    }
    drop(host_slot);
    shared.metrics.in_flight(false);
    attempt::record(&span, &attempt);
    drop(span);
    let outcome = shared.policy.with_max_attempts(policy.max_attempts).decide(&attempt, number, jitter);
    let end_to_end = (outcome == Outcome::Delivered).then(|| {
        let accepted = postback_common::time::from_ms(postback.accepted_at_ms);
        std::time::SystemTime::now().duration_since(accepted).unwrap_or_default()
    });
    shared.metrics.attempted(outcome.as_str(), attempt.status, response_time, end_to_end);
    if outcome != Outcome::Delivered && !matches!(attempt.failure, Some(crate::attempt::Failure::Refused(_))) {
        shared.metrics.host_failed(&host);
    }
    attempt::log(postback, number, entry_id, &url, &attempt, &outcome);
    let tally = Tally {
        attempts: number,
        first_ms: so_far.first_ms.or(Some(attempt.at_ms())),
        last_ms: Some(attempt.at_ms()),
        last_status: attempt.status,
        last_error: attempt.error(),
    };
    shared.attempt_log.record(postback_common::records::log_entry::LogEntry {
        postback_id: postback.id.to_string(),
        attempt: number,
        at: postback_common::time::rfc3339_ms(attempt.at),
        status: attempt.status,
        outcome: outcome.as_str().to_owned(),
        response_time_ms: attempt.response_time_ms,
        url,
        error: match &outcome {
            Outcome::Dead(reason) => Some(reason.to_string()),
            _ => tally.last_error.clone(),
        },
    });
    Ending { outcome, tally }
}

/// Back to the schedule without an attempt (the worker had no room),
/// keeping the tally, after [`WORKER_BUSY_DELAY`] and up to four times as
/// much of jitter.
fn busy(so_far: Tally, reason: RetryReason) -> Ending {
    debug_assert!(!reason.attempted());
    let jitter = Duration::from_millis(fastrand::u64(0..=4 * WORKER_BUSY_DELAY.as_millis() as u64));
    Ending { outcome: Outcome::Retry { after: WORKER_BUSY_DELAY + jitter, reason }, tally: so_far }
}
