//! Per-host limits from `POSTBACK_HOST_LIMITS_FILE`: lines
//! `HOST[:PORT] RATE_PER_SECOND [CONCURRENCY]` (how targets match:
//! [`crate::target_file`]).
//!
//! * The rate is shared by every worker: each attempt to a listed target
//!   first charges the target's budget in Redis (`<stream>:hostrate:<target
//!   as listed>`, [`postback_common::gcra`], with a burst of a fifth of a
//!   second's worth and at least one). A postback over the rate goes back
//!   to the retry schedule without spending an attempt
//!   (`host_rate_limited`), for as long as the budget says plus its place
//!   in this worker's queue for the target, so that the postbacks waiting
//!   come back spread out at the rate rather than all at once.
//! * The concurrency, when given, replaces `POSTBACK_PER_HOST_CONCURRENCY`
//!   for the matching host:port, in each worker ([`crate::hosts`]).
//!
//! When Redis cannot be asked, the attempt waits (one second in the
//! schedule) rather than risk going over a partner's limit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::Client;
use postback_common::gcra::{Gcra, Rate};
use tokio::time::Instant;

use crate::target_file::TargetFile;

/// How long an attempt waits when its target's budget cannot be read.
const UNKNOWN_WAIT: Duration = Duration::from_secs(1);

/// Above this many queues, those whose turns are past are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// One line of the limits file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HostLimit {
    /// Attempts per second, across all workers.
    pub(crate) rate: Rate,
    /// Attempts in flight per worker, if not `POSTBACK_PER_HOST_CONCURRENCY`.
    pub(crate) concurrency: Option<usize>,
}

/// The limits file, by target.
pub(crate) type HostLimitsFile = TargetFile<HostLimit>;

/// Reads `POSTBACK_HOST_LIMITS_FILE`.
pub(crate) fn load(path: &Path) -> Result<HostLimitsFile, String> {
    TargetFile::load(path, limit)
}

/// Parses a limits file's text.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<HostLimitsFile, String> {
    TargetFile::parse(text, limit)
}

/// A line's rate and concurrency.
fn limit(columns: &[&str]) -> Result<HostLimit, String> {
    let (rate, concurrency) = match columns {
        [rate] => (rate, None),
        [rate, concurrency] => (rate, Some(concurrency)),
        _ => return Err("expected HOST[:PORT] RATE_PER_SECOND [CONCURRENCY]".into()),
    };
    let rate = Rate::parse(rate)?;
    let concurrency = concurrency
        .map(|c| match c.parse::<usize>() {
            Ok(n @ 1..=65_536) => Ok(n),
            _ => Err(format!("{c:?} is not a concurrency: expected a whole number from 1 to 65536")),
        })
        .transpose()?;
    Ok(HostLimit { rate, concurrency })
}

/// Charges the listed targets' budgets.
pub(crate) struct HostRates {
    file: std::sync::Arc<HostLimitsFile>,
    gcra: Gcra,
    redis: Client,
    /// `<stream>:hostrate:`.
    prefix: String,
    /// Per listed target, the next free turn of this worker's queue.
    queues: Mutex<HashMap<String, Instant>>,
}

impl HostRates {
    /// Budgets for the targets in `file`, kept under `prefix` in `redis`.
    pub(crate) fn new(file: std::sync::Arc<HostLimitsFile>, redis: Client, prefix: String) -> Self {
        Self { file, gcra: Gcra::default(), redis, prefix, queues: Mutex::default() }
    }

    /// Charges one attempt to `url`'s target; `Err` with the wait in the
    /// schedule when it is over its rate.
    pub(crate) async fn admit(&self, url: &url::Url) -> Result<(), Duration> {
        let Some((target, limit)) = self.file.get(url) else { return Ok(()) };
        let burst = (limit.rate.per_second() / 5.0).max(1.0);
        let key = format!("{}{target}", self.prefix);
        match self.gcra.charge(&self.redis, &key, limit.rate, burst, 1).await {
            Ok(charge) if charge.allowed => Ok(()),
            Ok(charge) => Err(self.queue(target, charge.wait, limit.rate.interval(), Instant::now())),
            Err(e) => {
                tracing::warn!(target, error = %e, "cannot charge the target's rate budget; the attempt waits");
                Err(UNKNOWN_WAIT)
            }
        }
    }

    /// The wait for `target`'s next turn in this worker's queue: no sooner
    /// than the budget allows, one `interval` after the turn before, with
    /// up to half an interval of jitter.
    fn queue(&self, target: &str, wait: Duration, interval: Duration, now: Instant) -> Duration {
        let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queues.len() > PRUNE_ABOVE {
            queues.retain(|_, next| *next > now);
        }
        let next = queues.entry(target.to_owned()).or_insert(now);
        let turn = (*next).max(now + wait);
        *next = turn + interval;
        let jitter = Duration::from_micros(fastrand::u64(0..=interval.as_micros() as u64 / 2));
        turn - now + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_a_rate_and_maybe_a_concurrency() {
        let file = parse("a.example 50\nb.example:8443 0.5 4\n").expect("parse");
        let at = |u: &str| *file.get(&url::Url::parse(u).expect("url")).expect("listed").1;
        assert_eq!(at("https://a.example/x").rate.per_second(), 50.0);
        assert_eq!(at("https://a.example/x").concurrency, None);
        assert_eq!(at("https://b.example:8443/x").concurrency, Some(4));
        for (text, says) in [
            ("a.example", "expected HOST[:PORT] RATE_PER_SECOND [CONCURRENCY]"),
            ("a.example fast", "\"fast\" is not a rate"),
            ("a.example 0", "\"0\" is not a rate"),
            ("a.example 5 0", "\"0\" is not a concurrency"),
            ("a.example 5 4 x", "expected HOST[:PORT]"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[tokio::test]
    async fn waiting_postbacks_get_turns_an_interval_apart() {
        let file = std::sync::Arc::new(HostLimitsFile::default());
        let rates =
            HostRates::new(file, fred::prelude::Builder::default_centralized().build().expect("client"), "x:".into());
        let now = Instant::now();
        let interval = Duration::from_millis(20);
        let waits: Vec<_> = (0..5).map(|_| rates.queue("a.example", Duration::from_millis(5), interval, now)).collect();
        for (i, wait) in waits.iter().enumerate() {
            let turn = Duration::from_millis(5 + 20 * i as u64);
            assert!(*wait >= turn && *wait <= turn + interval / 2, "{i}: {wait:?}");
        }
        let later = now + Duration::from_secs(1);
        assert!(rates.queue("a.example", Duration::ZERO, interval, later) <= interval / 2, "a past queue is empty");
    }
}
