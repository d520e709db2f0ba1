//! One entry, from the moment a worker holds it to the moment it is
//! finished: decode, expand the URL, respect the target's per-host limit,
//! attempt, decide, and finish (acknowledge, schedule again, or
//! dead-letter), logging the attempt.
//!
//! Nothing here can stop the worker: an entry that cannot be decoded, or
//! that keeps killing workers, is dead-lettered as poison and the worker
//! moves on.

use std::sync::Arc;
use std::time::Duration;

use postback_common::{template, wire};
use tracing::{Instrument, instrument};

use crate::attempt::{self, AttemptContext};
use crate::attempt_log::{AttemptLog, LoggedAttempt};
use crate::entry::Entry;
use crate::finish::{DeadLetter, Finisher};
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
}

/// Handles one entry. `deliveries` is Redis's hand-over count when the entry
/// was claimed from another worker.
#[instrument(name = "entry", skip_all, fields(entry_id = %entry.id, attempt = entry.attempts + 1))]
pub async fn handle(shared: Arc<Shared>, entry: Entry, deliveries: Option<u64>) {
    let finisher = &shared.finisher;
    if !entry.has_fields {
        // Deleted while it was pending: nothing left to deliver.
        finisher.ack(&entry);
        return;
    }
    if let Some(n) = deliveries.filter(|n| *n > shared.max_deliveries) {
        let reason = format!("poison: handed to workers {n} times without being finished");
        tracing::error!(reason, "dead-lettering an entry that keeps failing its workers");
        let postback_id = entry.payload.as_deref().and_then(|p| wire::decode(p).ok()).map(|p| p.id.to_string());
        let letter = DeadLetter { reason, postback_id, attempts: entry.attempts, ..dead_basics(&entry) };
        return finisher.bury(&entry, &letter).await;
    }
    let Some(payload) = entry.payload.clone() else {
        tracing::error!("dead-lettering an entry without a postback field");
        let letter = DeadLetter { reason: "poison: entry has no \"p\" field".into(), ..dead_basics(&entry) };
        return finisher.bury(&entry, &letter).await;
    };
    let postback = match wire::decode(&payload) {
        Ok(postback) => postback,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that is not a postback");
            let letter = DeadLetter { reason: format!("poison: undecodable: {e}"), ..dead_basics(&entry) };
            return finisher.bury(&entry, &letter).await;
        }
    };
    let give_up =
        |reason: String| DeadLetter { reason, postback_id: Some(postback.id.to_string()), ..dead_basics(&entry) };
    let url = match template::expand(&postback.url, &postback.data, &shared.unmatched_default) {
        Ok(url) => url,
        Err(e) => {
            tracing::error!(postback_id = %postback.id, error = %e, "dead-lettering a postback whose URL cannot be built");
            return finisher.bury(&entry, &give_up(format!("rejected: URL template: {e}"))).await;
        }
    };
    if url.len() > shared.max_url_bytes {
        let reason =
            format!("rejected: URL is {} bytes, over POSTBACK_MAX_URL_BYTES ({})", url.len(), shared.max_url_bytes);
        tracing::error!(postback_id = %postback.id, reason, "dead-lettering a postback");
        return finisher.bury(&entry, &give_up(reason)).await;
    }
    let parsed = match url::Url::parse(&url) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::error!(postback_id = %postback.id, %url, error = %e, "dead-lettering a postback with an invalid URL");
            return finisher.bury(&entry, &give_up(format!("rejected: invalid URL: {e}"))).await;
        }
    };
    if let Some(Err(refused)) = shared.guard.as_ref().map(|g| g.check_url(&parsed)) {
        tracing::error!(postback_id = %postback.id, %url, error = %refused, "dead-lettering a postback to a refused target");
        return finisher.bury(&entry, &give_up(format!("refused: {refused}"))).await;
    }
    let host = host_key(&parsed);
    let Some(_host_slot) = shared.hosts.acquire_within(&host, HOST_PATIENCE).await else {
        let jitter = Duration::from_millis(fastrand::u64(0..=4 * HOST_BUSY_DELAY.as_millis() as u64));
        tracing::debug!(postback_id = %postback.id, host, "host at its limit; rescheduling without an attempt");
        let first = entry.first_attempt_ms.unwrap_or(0);
        let delay = HOST_BUSY_DELAY + jitter;
        return finisher.reschedule(&entry, &payload, (entry.attempts, first), delay, RescheduleReason::HostBusy).await;
    };

    let number = entry.attempts + 1;
    let ctx = AttemptContext { http: &shared.http, log_body_bytes: shared.log_body_bytes };
    let span = attempt::span(&postback, number, &parsed);
    shared.metrics.in_flight(true);
    let attempt = attempt::send(&ctx, &postback, &url).instrument(span.clone()).await;
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
    attempt::log(&postback, number, &entry.id, &url, &attempt, &decision);
    shared.attempt_log.record(LoggedAttempt {
        postback_id: postback.id.to_string(),
        attempt: number,
        at: postback_common::time::rfc3339_ms(attempt.delivered_at),
        status: attempt.status,
        outcome: decision.as_str(),
        response_time_ms: attempt.response_time_ms,
        url: url.clone(),
        error: match &decision {
            Decision::Dead { reason } => Some(reason.clone()),
            _ => attempt.verdict.reason().map(str::to_owned),
        },
    });
    let first_attempt_ms = entry.first_attempt_ms.filter(|ms| *ms > 0).unwrap_or_else(|| attempt.delivered_at_ms());
    match decision {
        Decision::Delivered => finisher.ack(&entry),
        Decision::Retry { after } => {
            let so_far = (number, first_attempt_ms);
            finisher.reschedule(&entry, &payload, so_far, after, RescheduleReason::FailedAttempt).await;
        }
        Decision::Dead { reason } => {
            let letter = DeadLetter {
                reason,
                postback_id: Some(postback.id.to_string()),
                attempts: number,
                first_attempt_ms: Some(first_attempt_ms),
                last_attempt_ms: Some(attempt.delivered_at_ms()),
                last_status: attempt.status,
                last_error: attempt.verdict.reason().map(str::to_owned),
            };
            finisher.bury(&entry, &letter).await;
        }
    }
}

/// A dead letter with what the entry itself records.
fn dead_basics(entry: &Entry) -> DeadLetter {
    DeadLetter {
        attempts: entry.attempts,
        first_attempt_ms: entry.first_attempt_ms.filter(|ms| *ms > 0),
        ..DeadLetter::default()
    }
}
