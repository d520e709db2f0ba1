//! What happens after an attempt: delivered, tried again later, or given up.
//!
//! * 2xx: delivered.
//! * No response (connection error, timeout), 408, 425, 429 and 5xx: worth
//!   another attempt, after an exponential delay with full jitter
//!   (`POSTBACK_RETRY_BASE_MS` doubling up to `POSTBACK_RETRY_MAX_MS`, the
//!   actual delay random between 0 and that), or after the target's
//!   `Retry-After` (capped by the maximum delay).
//! * Any other status (other 4xx, a 3xx left after following redirects),
//!   or a postback that cannot even be sent: final.
//! * After `POSTBACK_MAX_ATTEMPTS` attempts in all: given up.
//!
//! Given-up postbacks go to the dead-letter stream with the reason.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// How an attempt went, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target answered 2xx.
    Delivered,
    /// Failed, but another attempt may succeed.
    Retryable {
        /// What went wrong, for the log and the dead letter.
        reason: String,
        /// The target's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Failed for good.
    Final {
        /// What went wrong.
        reason: String,
    },
    /// Not sent: the SSRF guard refused the target (or a redirect hop).
    Refused {
        /// Which address, and why.
        reason: String,
    },
}

impl Verdict {
    /// The verdict for an HTTP status with its `Retry-After` header.
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => Verdict::Delivered,
            408 | 425 | 429 | 500..=599 => Verdict::Retryable { reason: format!("HTTP {status}"), retry_after },
            _ => Verdict::Final { reason: format!("HTTP {status}") },
        }
    }

    /// Why the attempt failed, if it did.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Delivered => None,
            Verdict::Retryable { reason, .. } | Verdict::Final { reason } | Verdict::Refused { reason } => Some(reason),
        }
    }
}

/// What to do with the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge it.
    Delivered,
    /// Schedule attempt number `attempts + 1` after this delay.
    Retry {
        /// How long from now.
        after: Duration,
    },
    /// Move it to the dead-letter stream.
    Dead {
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The `outcome` field of the attempt's log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Delivered => "delivered",
            Decision::Retry { .. } => "retry",
            Decision::Dead { .. } => "dead",
        }
    }
}

/// The retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The decision after attempt number `attempt` (1 for the first) ended
    /// with `verdict`.
    pub fn decide(&self, verdict: &Verdict, attempt: u32) -> Decision {
        match verdict {
            Verdict::Delivered => Decision::Delivered,
            Verdict::Final { reason } => Decision::Dead { reason: format!("rejected: {reason}") },
            Verdict::Refused { reason } => Decision::Dead { reason: format!("refused: {reason}") },
            Verdict::Retryable { reason, .. } if attempt >= self.max_attempts => {
                Decision::Dead { reason: format!("gave up after {attempt} attempts; last: {reason}") }
            }
            Verdict::Retryable { retry_after: Some(wait), .. } => Decision::Retry { after: (*wait).min(self.max) },
            Verdict::Retryable { .. } => Decision::Retry { after: self.jittered(attempt) },
        }
    }

    /// The capped exponential delay after `failed` failed attempts, before
    /// jitter: base, 2·base, 4·base, … up to max.
    pub fn ceiling(&self, failed: u32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        delays.nth(failed.saturating_sub(1) as usize).unwrap_or(self.max).min(self.max)
    }

    /// Full jitter: uniformly random between zero and the ceiling, so that
    /// postbacks that failed together do not come back together.
    pub fn jittered(&self, failed: u32) -> Duration {
        let ceiling = self.ceiling(failed).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
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

    #[test]
    fn classifies_statuses() {
        assert_eq!(Verdict::of_status(200, None), Verdict::Delivered);
        assert_eq!(Verdict::of_status(204, None), Verdict::Delivered);
        for retryable in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(Verdict::of_status(retryable, None), Verdict::Retryable { .. }), "{retryable}");
        }
        for last in [301, 304, 400, 401, 403, 404, 409, 410, 422] {
            assert!(matches!(Verdict::of_status(last, None), Verdict::Final { .. }), "{last}");
        }
    }

    #[test]
    fn retries_until_the_last_attempt() {
        let fail = Verdict::Retryable { reason: "HTTP 500".into(), retry_after: None };
        for attempt in 1..4 {
            assert!(matches!(POLICY.decide(&fail, attempt), Decision::Retry { .. }), "{attempt}");
        }
        let Decision::Dead { reason } = POLICY.decide(&fail, 4) else { panic!("4th attempt is the last") };
        assert_eq!(reason, "gave up after 4 attempts; last: HTTP 500");
        let Decision::Dead { reason } = POLICY.decide(&Verdict::of_status(404, None), 1) else { panic!("final") };
        assert_eq!(reason, "rejected: HTTP 404");
    }

    #[test]
    fn delays_double_up_to_the_max_with_full_jitter() {
        let ceilings: Vec<_> = (1..=6).map(|n| POLICY.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        for n in 1..=6 {
            for _ in 0..50 {
                assert!(POLICY.jittered(n) <= POLICY.ceiling(n));
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| POLICY.jittered(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_max() {
        let slow = Verdict::Retryable { reason: "HTTP 429".into(), retry_after: Some(Duration::from_millis(700)) };
        assert_eq!(POLICY.decide(&slow, 1), Decision::Retry { after: Duration::from_millis(700) });
        let slower = Verdict::Retryable { reason: "HTTP 429".into(), retry_after: Some(Duration::from_secs(60)) };
        assert_eq!(POLICY.decide(&slower, 1), Decision::Retry { after: POLICY.max });
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
