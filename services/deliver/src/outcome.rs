//! How a postback's turn ends, and what it leaves behind.
//!
//! Every turn ends in one [`Outcome`]: delivered, to be retried after a
//! delay (with the reason, for the metrics), or dead (with a typed reason).
//! [`crate::finish`] turns it into one step in Redis. A [`DeadReason`]
//! prints as the text operators see in `reason` of a dead letter and grep
//! for in the runbooks; metrics use its [`category`](DeadReason::category).

use std::fmt;
use std::time::Duration;

pub(crate) use postback_common::records::dead_letter::Category;

/// How a postback's turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The target took it (2xx).
    Delivered,
    /// To be attempted again.
    Retry {
        /// How long from now.
        after: Duration,
        /// Why.
        reason: RetryReason,
    },
    /// Given up.
    Dead(DeadReason),
}

impl Outcome {
    /// The `outcome` of an attempt's log line and metrics.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead(_) => "dead",
        }
    }
}

/// Why a postback goes back to the retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// Its attempt failed and another is due.
    FailedAttempt,
    /// Its host was at its concurrency; no attempt was made.
    HostBusy,
    /// Its host was over its rate (`POSTBACK_HOST_LIMITS_FILE`); no
    /// attempt was made.
    HostRateLimited,
    /// Its host's circuit breaker was open (or paused by hand); no attempt
    /// was made.
    HostPaused,
    /// The request asked for a delivery delay (`delivery.delay_ms`) that
    /// is not over yet; no attempt was made.
    Delayed,
    /// The worker had no free slot for it in time (a postback of an entry
    /// that holds several); no attempt was made.
    WorkerBusy,
    /// Its entry was no longer this worker's after a reconnect (a failover
    /// lost it or its read: [`crate::ownership`]); no attempt was made, and
    /// the step is recorded only if the finish script still takes it.
    NotHeld,
}

impl RetryReason {
    /// The `reason` label of `postback_retries_scheduled_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RetryReason::FailedAttempt => "failed_attempt",
            RetryReason::HostBusy => "host_busy",
            RetryReason::HostRateLimited => "host_rate_limited",
            RetryReason::HostPaused => "host_paused",
            RetryReason::Delayed => "delayed",
            RetryReason::WorkerBusy => "worker_busy",
            RetryReason::NotHeld => "not_held",
        }
    }

    /// Whether an attempt was made (and counts towards
    /// `POSTBACK_MAX_ATTEMPTS`).
    pub(crate) fn attempted(self) -> bool {
        self == RetryReason::FailedAttempt
    }
}

/// Why a postback was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// A final answer (a 4xx other than 408, 425, 429; a 3xx left after
    /// redirects), or a postback that cannot be sent at all (its URL).
    Rejected(String),
    /// The SSRF guard refused the target or a redirect hop.
    Refused(String),
    /// `POSTBACK_MAX_ATTEMPTS` attempts failed.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// What the last one ran into.
        last: String,
    },
    /// Not a postback, or one whose endpoint record is missing or damaged.
    Undecodable(String),
    /// Handed to workers too often without being finished: it keeps
    /// killing them.
    Poison(String),
}

impl DeadReason {
    /// Its category: the letter's `category` field and the `reason` label
    /// of `postback_dead_lettered_total`.
    pub(crate) fn category(&self) -> Category {
        match self {
            DeadReason::Rejected(_) => Category::Rejected,
            DeadReason::Refused(_) => Category::Refused,
            DeadReason::Exhausted { .. } => Category::Exhausted,
            DeadReason::Undecodable(_) => Category::Undecodable,
            DeadReason::Poison(_) => Category::Poison,
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadReason::Rejected(why) => write!(f, "rejected: {why}"),
            DeadReason::Refused(why) => write!(f, "refused: {why}"),
            DeadReason::Exhausted { attempts, last } => write!(f, "gave up after {attempts} attempts; last: {last}"),
            DeadReason::Undecodable(why) => write!(f, "undecodable: {why}"),
            DeadReason::Poison(why) => write!(f, "poison: {why}"),
        }
    }
}

/// The attempts made on a postback so far: what a retry carries to its next
/// turn (`attempts`, `first_ms`) and what a dead letter records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Attempts made.
    pub(crate) attempts: u32,
    /// When the first was made, ms since the epoch.
    pub(crate) first_ms: Option<u64>,
    /// When the last was made.
    pub(crate) last_ms: Option<u64>,
    /// The last HTTP status, when a response came.
    pub(crate) last_status: Option<u16>,
    /// What the last attempt ran into, when it failed.
    pub(crate) last_error: Option<String>,
}

/// A turn's outcome and the tally it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The attempts so far, this turn's included.
    pub(crate) tally: Tally,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_reasons_print_as_operators_know_them_and_fall_into_categories() {
        let cases = [
            (DeadReason::Rejected("HTTP 404".into()), "rejected: HTTP 404", "rejected"),
            (DeadReason::Refused("10.0.0.1 is private".into()), "refused: 10.0.0.1 is private", "refused"),
            (
                DeadReason::Exhausted { attempts: 3, last: "HTTP 503".into() },
                "gave up after 3 attempts; last: HTTP 503",
                "exhausted",
            ),
            (DeadReason::Undecodable("not a postback".into()), "undecodable: not a postback", "undecodable"),
            (DeadReason::Poison("handed to workers 6 times".into()), "poison: handed to workers 6 times", "poison"),
        ];
        for (reason, text, category) in cases {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.category().as_str(), category);
            assert_eq!(Category::of_reason(text), reason.category(), "old letters read the same");
        }
    }
}
