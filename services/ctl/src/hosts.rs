//! `hosts`: each target host's circuit breaker and its attempts over the
//! last minutes, from the per-minute counts every worker keeps in Redis
//! (fields described in `services/deliver/src/minutes.rs`) and the
//! breakers ([`postback_common::breaker`]); `hosts pause|resume HOST`.

use std::collections::HashMap;

use fred::prelude::*;
use postback_common::breaker::{Breakers, State, Status};
use postback_common::keys::Keys;
use serde_json::{Value as Json, json};

use crate::output;

/// One host's figures.
#[derive(Debug, Default)]
struct Figures {
    attempts: u64,
    failed: u64,
    /// Attempts answered within each bucket's bound (ms; `u64::MAX` for
    /// the last, unbounded one).
    buckets: Vec<(u64, u64)>,
}

impl Figures {
    /// The bucket bound (ms) under which `share` of the answered attempts
    /// fall; `None` without answers, `Some(u64::MAX)` above the last bound.
    fn quantile(&self, share: f64) -> Option<u64> {
        let mut buckets = self.buckets.clone();
        buckets.sort_unstable();
        let total: u64 = buckets.iter().map(|(_, n)| n).sum();
        let wanted = (share * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        buckets
            .into_iter()
            .find(|(_, n)| {
                seen += n;
                seen >= wanted
            })
            .map(|(le, _)| le)
            .filter(|_| total > 0)
    }
}

/// A `host:port`, lower case; the form deliver's breakers and counts use.
pub fn parse_host(text: &str) -> Result<String, String> {
    let (host, port) =
        text.rsplit_once(':').ok_or_else(|| format!("{text:?}: give HOST:PORT, e.g. partner.example:443"))?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(format!("{text:?}: give HOST:PORT, e.g. partner.example:443"));
    }
    Ok(text.to_ascii_lowercase())
}

/// Every host with attempts in the last `minutes` minutes or a breaker not
/// closed: state, consecutive failures, attempts, failed attempts, p50 and
/// p99 response time. Hosts not closed come first, then the most failed.
pub async fn list(redis: &Client, keys: &Keys, minutes: u64) -> Result<Vec<Json>, Error> {
    let now_minute = postback_common::time::now_ms() / 60_000;
    let mut hosts: HashMap<String, Figures> = HashMap::new();
    for minute in now_minute.saturating_sub(minutes.saturating_sub(1))..=now_minute {
        // `Keys::minutes` then the minute since the Unix epoch.
        let counts: HashMap<String, u64> = redis.hgetall(format!("{}{minute}", keys.minutes)).await?;
        for (field, n) in counts {
            if let Some(host) = field.strip_prefix("sent:") {
                hosts.entry(host.to_owned()).or_default().attempts += n;
            } else if let Some(host) = field.strip_prefix("host:") {
                hosts.entry(host.to_owned()).or_default().failed += n;
            } else if let Some((host, le)) = field.strip_prefix("rt:").and_then(|f| f.rsplit_once(':')) {
                let le = if le == "inf" { u64::MAX } else { le.parse().unwrap_or(u64::MAX) };
                let figures = hosts.entry(host.to_owned()).or_default();
                match figures.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some((_, count)) => *count += n,
                    None => figures.buckets.push((le, n)),
                }
            }
        }
    }
    let breakers = Breakers::new(keys);
    let not_closed: HashMap<String, Option<i64>> = breakers.not_closed(redis).await?.into_iter().collect();
    for host in not_closed.keys() {
        hosts.entry(host.clone()).or_default();
    }
    let mut rows = Vec::with_capacity(hosts.len());
    for (host, figures) in hosts {
        let (state, failures) = breakers.record(redis, &host).await?;
        let until = not_closed.get(&host).copied().flatten().filter(|ms| *ms > 0);
        let ms = |q: Option<u64>| match q {
            Some(u64::MAX) => json!("slower than 30000"),
            Some(le) => json!(le),
            None => Json::Null,
        };
        rows.push(json!({
            "host": host,
            "state": state.as_str(),
            "paused_until": until.map(|ms| postback_common::time::rfc3339_ms(postback_common::time::from_ms(ms as u64))),
            "consecutive_failures": failures,
            "attempts": figures.attempts,
            "failed": figures.failed,
            "p50_ms": ms(figures.quantile(0.5)),
            "p99_ms": ms(figures.quantile(0.99)),
        }));
    }
    rows.sort_by_key(|r| {
        let closed = r["state"] == State::Closed.as_str();
        (closed, std::cmp::Reverse(r["failed"].as_u64()), std::cmp::Reverse(r["attempts"].as_u64()))
    });
    Ok(rows)
}

/// Prints hosts as a table.
pub fn print(rows: &[Json], minutes: u64) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let text = |key: &str| match &r[key] {
                Json::String(s) => s.clone(),
                Json::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let state = match r["paused_until"].as_str() {
                Some(until) => format!("{} until {until}", text("state")),
                None => text("state"),
            };
            vec![
                text("host"),
                state,
                text("consecutive_failures"),
                text("attempts"),
                text("failed"),
                text("p50_ms"),
                text("p99_ms"),
            ]
        })
        .collect();
    output::table(&["host", "state", "failing", "attempts", "failed", "p50 ms", "p99 ms"], &rows);
    eprintln!("attempts, failures and response times over the last {minutes} minutes, all workers");
}

/// Pauses (`pause`) or resumes a host by hand; what its breaker says now.
pub async fn set(redis: &Client, keys: &Keys, host: &str, pause: bool) -> Result<Status, Error> {
    let breakers = Breakers::new(keys);
    if pause { breakers.pause(redis, host).await } else { breakers.resume(redis, host).await }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let figures = Figures { buckets: vec![(100, 98), (10, 1), (u64::MAX, 1)], ..Figures::default() };
        assert_eq!(figures.quantile(0.5), Some(100));
        assert_eq!(figures.quantile(0.99), Some(100));
        assert_eq!(figures.quantile(1.0), Some(u64::MAX));
        assert_eq!(Figures::default().quantile(0.5), None);
    }

    #[test]
    fn hosts_are_given_with_their_port() {
        assert_eq!(parse_host("Partner.example:443"), Ok("partner.example:443".into()));
        for bad in ["partner.example", ":443", "partner.example:https", "http://partner.example:80"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
