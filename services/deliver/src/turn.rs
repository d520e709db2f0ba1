//! One postback's turn: expand its URL, check it, wait for its host to have
//! room, attempt it once, and decide what comes next. The attempt is logged
//! (a JSON line, the delivery-log stream, metrics); what the turn decided
//! is returned, for [`crate::finish`] to carry out.

use std::time::Duration;

use postback_common::{Postback, template};
use tracing::Instrument;

use crate::attempt;
use crate::attempt_log::LoggedAttempt;
use crate::hosts::host_key;
use crate::outcome::{DeadReason, Ending, Outcome, RetryReason, Tally};
use crate::shared::Shared;

/// How long a postback whose host is at its limit waits for a slot in the
/// worker before it goes back to the schedule.
pub(crate) const HOST_PATIENCE: Duration = Duration::from_millis(100);

/// How long a postback whose host stayed at its limit waits in the
/// schedule before it is read again (plus up to four times as much of
/// jitter, which spreads a hanging host's backlog out). It keeps its
/// attempt count.
const HOST_BUSY_DELAY: Duration = Duration::from_millis(250);

/// Takes `postback`'s turn; `so_far` is its tally before this turn and
/// `entry_id` the stream entry it came in (for the log line).
pub(crate) async fn take(shared: &Shared, postback: &Postback, so_far: Tally, entry_id: &str) -> Ending {
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
    let host = host_key(&parsed);
    let Some(_host_slot) = shared.hosts.acquire_within(&host, HOST_PATIENCE).await else {
        tracing::debug!(postback_id = %postback.id, host, "host at its limit; rescheduling without an attempt");
        return busy(so_far, RetryReason::HostBusy);
    };

    let number = so_far.attempts + 1;
    let span = attempt::span(postback, number, &parsed);
    shared.metrics.in_flight(true);
    let attempt = attempt::send(&shared.egress, &shared.signing, shared.log_body_bytes, postback, &parsed)
        .instrument(span.clone())
        .await;
    shared.metrics.in_flight(false);
    attempt::record(&span, &attempt);
    drop(span);
    let outcome = shared.policy.decide(&attempt, number);
    let end_to_end = (outcome == Outcome::Delivered).then(|| {
        let accepted = postback_common::time::from_ms(postback.accepted_at_ms);
        std::time::SystemTime::now().duration_since(accepted).unwrap_or_default()
    });
    let response_time = attempt.status.map(|_| Duration::from_millis(attempt.response_time_ms));
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
    shared.attempt_log.record(LoggedAttempt {
        postback_id: postback.id.to_string(),
        attempt: number,
        at: postback_common::time::rfc3339_ms(attempt.at),
        status: attempt.status,
        outcome: outcome.as_str(),
        response_time_ms: attempt.response_time_ms,
        url,
        error: match &outcome {
            Outcome::Dead(reason) => Some(reason.to_string()),
            _ => tally.last_error.clone(),
        },
    });
    Ending { outcome, tally }
}

/// Back to the schedule without an attempt (the host, or the worker, had
/// no room), keeping the tally, after [`HOST_BUSY_DELAY`] and up to four
/// times as much of jitter.
pub(crate) fn busy(so_far: Tally, reason: RetryReason) -> Ending {
    debug_assert!(!reason.attempted());
    let jitter = Duration::from_millis(fastrand::u64(0..=4 * HOST_BUSY_DELAY.as_millis() as u64));
    Ending { outcome: Outcome::Retry { after: HOST_BUSY_DELAY + jitter, reason }, tally: so_far }
}
