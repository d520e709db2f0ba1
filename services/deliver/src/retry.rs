//! What happens after an attempt: delivered, tried again later, or given up.
//!
//! * 2xx: delivered.
//! * No response (connection error, timeout), 408, 425, 429 and 5xx: worth
//!   another attempt, after an exponential delay with equal jitter
//!   (`POSTBACK_RETRY_BASE_MS` doubling up to `POSTBACK_RETRY_MAX_MS`, the
//!   actual delay one of the retry schedule's levels between half of that
//!   and all of it, so the retry window can never collapse), or after the
//!   target's `Retry-After` (capped by the maximum delay).
//!   [`RetryPolicy::window`] says how long a failing postback is retried;
//!   with the defaults, 12 to 24 hours.
//! * Any other status (other 4xx, a 3xx left after following redirects),
//!   or a postback that cannot even be sent: final.
//! * After `POSTBACK_MAX_ATTEMPTS` attempts in all: given up.
//!
//! Given-up postbacks go to the dead-letter stream with the reason.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::attempt::{Attempt, Failure};
use crate::outcome::{DeadReason, Outcome, RetryReason};

/// Whether a response with this status is worth another attempt.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// How an attempt counts for its host's circuit breaker: `Some(true)` when
/// the host failed it (no response, or a status worth retrying), `Some(false)`
/// when the host answered, `None` when it was never sent to the host (the
/// guard refused it, or it could not be built).
pub(crate) fn host_failed(attempt: &Attempt) -> Option<bool> {
    match (&attempt.failure, attempt.status) {
        (Some(Failure::Refused(_) | Failure::Unsendable(_)), _) => None,
        (Some(Failure::Transport(_)), _) | (None, None) => Some(true),
        (None, Some(status)) => Some(retryable_status(status)),
    }
}

/// The retry settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first included.
    pub(crate) max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub(crate) base: Duration,
    /// Longest delay.
    pub(crate) max: Duration,
}

impl RetryPolicy {
    /// The same with a request's own number of attempts, if it gave one.
    pub(crate) fn with_max_attempts(self, max_attempts: Option<u32>) -> Self {
        Self { max_attempts: max_attempts.unwrap_or(self.max_attempts), ..self }
    }

    /// The outcome of attempt number `number` (1 for the first); `jitter`
    /// (in `[0, 1)`) picks the delay of a retry.
    pub(crate) fn decide(&self, attempt: &Attempt, number: u32, jitter: f64) -> Outcome {
        let again = |reason: String, retry_after: Option<Duration>| {
            if number >= self.max_attempts {
                return Outcome::Dead(DeadReason::Exhausted { attempts: number, last: reason });
            }
            let after = match retry_after {
                Some(wait) => wait.min(self.max),
                None => self.jittered(number, jitter),
            };
            Outcome::Retry { after, reason: RetryReason::FailedAttempt }
        };
        match (&attempt.failure, attempt.status) {
            (Some(Failure::Refused(why)), _) => Outcome::Dead(DeadReason::Refused(why.clone())),
            (Some(Failure::Unsendable(why)), _) => Outcome::Dead(DeadReason::Rejected(why.clone())),
            (Some(Failure::Transport(why)), _) => again(why.clone(), None),
            (None, Some(200..=299)) => Outcome::Delivered,
            (None, Some(status)) if retryable_status(status) => again(format!("HTTP {status}"), attempt.retry_after),
            (None, Some(status)) => Outcome::Dead(DeadReason::Rejected(format!("HTTP {status}"))),
            (None, None) => again("transport: no response".into(), None),
        }
    }

    /// The capped exponential delay after `failed` failed attempts, before
    /// jitter: base, 2·base, 4·base, … up to max.
    pub(crate) fn ceiling(&self, failed: u32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let ceiling = delays.nth(failed.saturating_sub(1) as usize).unwrap_or(self.max).min(self.max);
        // Whole milliseconds: backon's float arithmetic leaves dust.
        Duration::from_millis(ceiling.as_millis() as u64)
    }

    /// Equal jitter: one of the retry schedule's levels between half the
    /// ceiling and the ceiling, picked by `u` in `[0, 1)`, so that
    /// entries that failed together do not come back together, and every
    /// wait is at least half its step and at most all of it.
    pub(crate) fn jittered(&self, failed: u32, u: f64) -> Duration {
        let ceiling = self.ceiling(failed).as_millis() as u64;
        Duration::from_millis(postback_common::records::schedule::jittered(ceiling, u))
    }

    /// From the first attempt to the dead letter of a postback that keeps
    /// failing (without `Retry-After`): the shortest and the longest it can
    /// take, the sum of the waits' lower and upper bounds.
    pub(crate) fn window(&self) -> (Duration, Duration) {
        let (mut low, mut high) = (Duration::ZERO, Duration::ZERO);
        for failed in 1..self.max_attempts {
            low += self.jittered(failed, 0.0);
            high += self.jittered(failed, 0.999_999);
        }
        (low, high)
    }
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy =
        RetryPolicy { max_attempts: 4, base: Duration::from_millis(100), max: Duration::from_millis(1_000) };

    fn answered(status: u16, retry_after: Option<Duration>) -> Attempt {
        let unanswered = Attempt::failed(SystemTime::now(), Failure::Transport(String::new()));
        Attempt { status: Some(status), retry_after, failure: None, ..unanswered }
    }

    #[test]
    fn classifies_statuses() {
        for delivered in [200, 201, 204, 299] {
            assert_eq!(POLICY.decide(&answered(delivered, None), 1, 0.5), Outcome::Delivered, "{delivered}");
        }
        for retryable in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(POLICY.decide(&answered(retryable, None), 1, 0.5), Outcome::Retry { .. }), "{retryable}");
        }
        for last in [301, 304, 400, 401, 403, 404, 409, 410, 422] {
            let outcome = POLICY.decide(&answered(last, None), 1, 0.5);
            assert_eq!(outcome, Outcome::Dead(DeadReason::Rejected(format!("HTTP {last}"))));
        }
    }

    #[test]
    fn retries_until_the_last_attempt() {
        let fail = answered(500, None);
        for number in 1..4 {
            let outcome = POLICY.decide(&fail, number, 0.5);
            assert!(matches!(outcome, Outcome::Retry { reason: RetryReason::FailedAttempt, .. }), "{number}");
        }
        let Outcome::Dead(reason) = POLICY.decide(&fail, 4, 0.5) else { panic!("4th attempt is the last") };
        assert_eq!(reason.to_string(), "gave up after 4 attempts; last: HTTP 500");
        let timeout = Attempt::failed(SystemTime::now(), Failure::Transport("timeout: slow".into()));
        assert!(matches!(POLICY.decide(&timeout, 1, 0.5), Outcome::Retry { .. }));
        let refused = Attempt::failed(SystemTime::now(), Failure::Refused("10.0.0.1 is private".into()));
        assert_eq!(POLICY.decide(&refused, 1, 0.5).as_str(), "dead");
    }

    #[test]
    fn delays_double_up_to_the_max_with_equal_jitter() {
        let ceilings: Vec<_> = (1..=6).map(|n| POLICY.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        for n in 1..=6 {
            for i in 0..50 {
                let wait = POLICY.jittered(n, f64::from(i) / 50.0);
                let ceiling = POLICY.ceiling(n);
                assert!(wait <= ceiling && wait >= ceiling / 2, "{wait:?} for {n}, ceiling {ceiling:?}");
                let level = wait.as_millis() as u64;
                assert_eq!(postback_common::records::schedule::round_up(level), level, "a level of the schedule");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|i| POLICY.jittered(3, f64::from(i) / 50.0)).collect();
        assert!(spread.len() >= 4, "jitter varies the delay: {spread:?}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_max() {
        let slow = answered(429, Some(Duration::from_millis(700)));
        let after = |outcome| match outcome {
            Outcome::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(POLICY.decide(&slow, 1, 0.5)), Duration::from_millis(700));
        let slower = answered(429, Some(Duration::from_secs(60)));
        assert_eq!(after(POLICY.decide(&slower, 1, 0.5)), POLICY.max);
    }

    #[test]
    fn parses_both_forms_of_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
