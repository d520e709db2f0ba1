//! How long dead letters are kept: `POSTBACK_DEAD_RETENTION`, an age
//! (`30d`, `12h`) or a count (`100000`); unset keeps every letter.
//!
//! Every worker's scheduler trims the dead-letter stream once a minute
//! ([`TRIM_EVERY`]): by age with `XTRIM MINID` (dead-letter ids are the
//! time they were written), by count with `XTRIM MAXLEN`. Both trim
//! approximately (`~`): whole stream nodes go, so up to about a hundred
//! letters past the limit may stay until the next node fills. Trimmed
//! letters are counted in `postback_dead_trimmed_total`; export them first
//! with `postbackctl dead export --since … --until …`.

use std::time::{Duration, SystemTime};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

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
            return Ok(Self::Count(count));
        }
        match humantime::parse_duration(text) {
            Ok(age) if !age.is_zero() => Ok(Self::Age(age)),
            _ => Err(format!("{text:?} is neither an age (30d, 12h) nor a number of letters")),
        }
    }

    /// Trims `stream` to what is kept; how many letters went.
    pub(crate) async fn trim(&self, redis: &Client, stream: &str) -> Result<u64, Error> {
        let xtrim = CustomCommand::new_static("XTRIM", ClusterHash::FirstKey, false);
        let args: Vec<Value> = match *self {
            Self::Age(age) => {
                let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
                let ms = cutoff.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
                vec![stream.into(), "MINID".into(), "~".into(), ms.into()]
            }
            Self::Count(count) => vec![stream.into(), "MAXLEN".into(), "~".into(), (count as i64).into()],
        };
        redis.custom(xtrim, args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_or_a_count() {
        assert_eq!(Retention::parse("30d"), Ok(Retention::Age(Duration::from_secs(30 * 86_400))));
        assert_eq!(Retention::parse("12h"), Ok(Retention::Age(Duration::from_secs(12 * 3_600))));
        assert_eq!(Retention::parse("100000"), Ok(Retention::Count(100_000)));
        assert_eq!(Retention::parse("0"), Ok(Retention::Count(0)));
        for bad in ["", "0s", "forever", "-5", "30 days ago"] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
