//! Per-caller rate limits, shared by every ingest instance.
//!
//! A rate is in postbacks per second, with a burst of one second's worth
//! (at least one postback). It comes from the caller's line in
//! `POSTBACK_INGEST_TOKENS_FILE` (`HASH RATE`), or, for requests without a
//! rate of their own (all of them when no tokens are configured), from
//! `POSTBACK_INGEST_RATE`, one budget for them all. A request costs its
//! number of postbacks. The budget is kept in Redis
//! (`<stream>:rate:<scope>`, [`postback_common::gcra`]), so two instances
//! behind a load balancer give a caller the rate once, not twice. The
//! check runs before the enqueue script, so a replayed request (a repeated
//! `Idempotency-Key`) is charged too.
//!
//! Over the rate the answer is 429 `/problems/rate-limited` with
//! `Retry-After` and nothing is queued. Every answer to a limited caller
//! carries the IETF draft's headers: `RateLimit-Policy` (`LIMIT;w=1`),
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds
//! until the budget is whole). If Redis cannot be asked, the request goes
//! on (its enqueue will meet the same Redis) and the check is counted as
//! an `error`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use fred::prelude::*;
use postback_common::gcra::Gcra;

/// A caller's rate; its burst is one second's worth, and at least one
/// postback.
pub use postback_common::gcra::Rate;

/// The burst of a caller's `rate`.
fn burst(rate: Rate) -> f64 {
    rate.per_second().max(1.0)
}

/// What the budget said about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The rate applied.
    pub rate: Rate,
    /// Whether the request may go on.
    pub allowed: bool,
    /// When it would be allowed, if it is not.
    pub retry_after: Duration,
    /// Postbacks left in the burst.
    pub remaining: u64,
    /// Until the burst is whole again.
    pub reset: Duration,
}

impl Verdict {
    /// Seconds to put in `Retry-After`: rounded up, at least one.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Adds the `RateLimit-*` headers.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        let limit = burst(self.rate).floor() as u64;
        let reset = self.reset.as_secs_f64().ceil() as u64;
        let pairs = [
            ("ratelimit-policy", format!("{limit};w=1")),
            ("ratelimit-limit", limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", reset.to_string()),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        if !self.allowed {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        }
    }
}

/// Charges callers' budgets.
#[derive(Debug)]
pub struct Limiter {
    gcra: Gcra,
    options: Options,
}

impl Limiter {
    /// A limiter whose Redis calls give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let options = Options { fail_fast: true, max_attempts: Some(1), timeout: Some(timeout), ..Options::default() };
        Self { gcra: Gcra::default(), options }
    }

    /// Charges `cost` postbacks to the budget under `key`.
    pub async fn check(&self, client: &Client, key: &str, rate: Rate, cost: usize) -> Result<Verdict, Error> {
        let charge = self.gcra.charge(&client.with_options(&self.options), key, rate, burst(rate), cost).await?;
        Ok(Verdict {
            rate,
            allowed: charge.allowed,
            retry_after: charge.wait,
            remaining: charge.remaining,
            reset: charge.reset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_burst_is_one_seconds_worth_and_at_least_one() {
        let burst_of = |text| Rate::parse(text).map(burst);
        assert_eq!(burst_of("0.5"), Ok(1.0));
        assert_eq!(burst_of("2.5"), Ok(2.5));
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let verdict = Verdict {
            rate: Rate::parse("20").expect("rate"),
            allowed: false,
            retry_after: Duration::from_millis(1_200),
            remaining: 3,
            reset: Duration::from_millis(800),
        };
        let mut headers = HeaderMap::new();
        verdict.add_headers(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "20;w=1");
        assert_eq!(headers["ratelimit-limit"], "20");
        assert_eq!(headers["ratelimit-remaining"], "3");
        assert_eq!(headers["ratelimit-reset"], "1");
        assert_eq!(headers["retry-after"], "2");
    }
}
