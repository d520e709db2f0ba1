//! How long dead letters are kept: `POSTBACK_DEAD_RETENTION`, an age
//! (`30d`, `12h`) or a count (`100000`); unset keeps every letter. `0`
//! (and `0s`) is refused at start-up: as a count it would delete every
//! letter within a minute, which is never what keeping letters means.
//!
//! Every worker's scheduler trims the dead-letter stream once a minute
//! ([`TRIM_EVERY`]): by age (dead-letter ids are the time they were
//! written) or by count, exactly, oldest first, [`PAGE`] letters per call
//! of a script (`lua/trim_dead.lua`) that also gives back the endpoint
//! record references of the letters it removes (a letter of a postback of
//! a request refers to its record). Trimmed letters are counted in
//! `postback_dead_trimmed_total`; export them first with `postbackctl dead
//! export --since … --until …`.

use std::time::{Duration, SystemTime};

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;

/// How often the dead-letter stream is trimmed.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(60);

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Letters younger than this.
    Age(Duration),
    /// The newest this many letters.
    Count(u64),
}

impl Retention {
    /// Parses `30d`, `12h`, `90m` (an age) or `100000` (a count).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(count) = text.parse::<u64>() {
            if count == 0 {
                return Err(
                    "0 would delete every dead letter within a minute; leave it unset to keep every letter".into()
                );
            }
            return Ok(Self::Count(count));
        }
        match humantime::parse_duration(text) {
            Ok(age) if !age.is_zero() => Ok(Self::Age(age)),
            _ => Err(format!("{text:?} is neither an age (30d, 12h) nor a number of letters")),
        }
    }

    /// Trims the dead-letter stream of `keys` to what is kept; how many
    /// letters went.
    pub(crate) async fn trim(&self, redis: &Client, keys: &Keys) -> Result<u64, Error> {
        let script = Script::new(include_str!("lua/trim_dead.lua"));
        let (mode, limit) = match *self {
            Self::Age(age) => {
                let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
                ("age", cutoff.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64)
            }
            Self::Count(count) => ("count", count as i64),
        };
        let script_keys = [keys.dead.as_str(), &keys.endpoints, &keys.endpoint_refs];
        let mut trimmed = 0;
        loop {
            let args: Vec<Value> = vec![mode.into(), limit.into(), (PAGE as i64).into()];
            let removed: u64 = script.call(redis, &script_keys, args).await?;
            trimmed += removed;
            if removed < PAGE {
                return Ok(trimmed);
            }
        }
    }
}

/// Letters removed per script call.
const PAGE: u64 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_or_a_count() {
        assert_eq!(Retention::parse("30d"), Ok(Retention::Age(Duration::from_secs(30 * 86_400))));
        assert_eq!(Retention::parse("12h"), Ok(Retention::Age(Duration::from_secs(12 * 3_600))));
        assert_eq!(Retention::parse("100000"), Ok(Retention::Count(100_000)));
        for bad in ["", "0", "0s", "forever", "-5", "30 days ago"] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
