//! The dead letter: one entry of the dead-letter stream (`<stream>:dead`),
//! a postback (or a whole entry) given up, with why and its attempts.
//!
//! Written by deliver's finish script (`lua/finish.lua` appends the fields
//! [`DeadLetter::fields`] gives) and by the retry scheduler
//! (`lua/promote.lua`, for a schedule member it cannot read); read and
//! redriven by `postbackctl` (`lua_redrive.lua` reads `p`). Fields are text
//! but for `p`, so that `redis-cli XRANGE` reads them:
//!
//! | field | meaning |
//! | --- | --- |
//! | `category` | [`Category`]: what kind of reason, for filters, metrics and the dashboard |
//! | `reason` | the reason as operators read it (`gave up after 25 attempts; last: HTTP 503`) |
//! | `postback_id` | the postback's id, when it could be decoded |
//! | `attempts` | attempts made |
//! | `first_attempt_at`, `last_attempt_at` | RFC 3339, UTC, when known |
//! | `last_status` | the last HTTP status, when a response came |
//! | `last_error` | the last error (`HTTP 500`, `timeout: …`) |
//! | `entry_id` | the stream entry it came from |
//! | `p` | the postback's bytes (see `schemas/wire-format.md`), absent when there were none |
//!
//! Letters written before `category` existed are classified from their
//! `reason` ([`Category::of_reason`]).

use bytes::Bytes;

use crate::time::{from_ms, rfc3339_ms};

/// What kind of reason a postback was given up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `POSTBACK_MAX_ATTEMPTS` (or the request's `max_attempts`) attempts
    /// failed.
    Exhausted,
    /// A final answer (a 4xx other than 408, 425, 429; a 3xx left after
    /// redirects), or a URL that cannot be built.
    Rejected,
    /// The SSRF guard refused the target or a redirect hop.
    Refused,
    /// Not a postback, or one whose endpoint record is missing or damaged.
    Undecodable,
    /// Handed to workers more than `POSTBACK_MAX_DELIVERIES` times without
    /// being finished: it keeps killing them.
    Poison,
    /// A letter whose reason names none of the above (written by hand, or
    /// by a version this one does not know).
    Other,
}

impl Category {
    /// Every category, in the order tables list them.
    pub const ALL: [Category; 6] = [
        Category::Exhausted,
        Category::Rejected,
        Category::Refused,
        Category::Undecodable,
        Category::Poison,
        Category::Other,
    ];

    /// The name in the `category` field, metrics labels and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Exhausted => "exhausted",
            Category::Rejected => "rejected",
            Category::Refused => "refused",
            Category::Undecodable => "undecodable",
            Category::Poison => "poison",
            Category::Other => "other",
        }
    }

    /// The category called `name` (any case).
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|c| c.as_str()).collect();
            format!("{name:?} is not a dead-letter category: one of {}", names.join(", "))
        })
    }

    /// The category of a letter written before the `category` field, from
    /// its `reason` text as deliver wrote it then.
    pub fn of_reason(reason: &str) -> Self {
        let reason = reason.trim_start();
        if reason.starts_with("gave up after ") {
            Category::Exhausted
        } else if reason.starts_with("rejected:") {
            Category::Rejected
        } else if reason.starts_with("refused:") {
            Category::Refused
        } else if reason.starts_with("undecodable:")
            || reason.starts_with("poison: undecodable")
            || reason.starts_with("poison: endpoint record")
            || reason.starts_with("poison: entry has no")
            || reason.starts_with("malformed retry schedule member")
        {
            Category::Undecodable
        } else if reason.starts_with("poison:") {
            Category::Poison
        } else {
            Category::Other
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The field names, as stored.
pub mod field {
    /// [`super::Category`].
    pub const CATEGORY: &str = "category";
    /// The reason as text.
    pub const REASON: &str = "reason";
    /// The postback's id.
    pub const POSTBACK_ID: &str = "postback_id";
    /// Attempts made.
    pub const ATTEMPTS: &str = "attempts";
    /// When the first attempt was made (RFC 3339).
    pub const FIRST_ATTEMPT_AT: &str = "first_attempt_at";
    /// When the last attempt was made (RFC 3339).
    pub const LAST_ATTEMPT_AT: &str = "last_attempt_at";
    /// The last HTTP status.
    pub const LAST_STATUS: &str = "last_status";
    /// The last error.
    pub const LAST_ERROR: &str = "last_error";
    /// The stream entry it came from.
    pub const ENTRY_ID: &str = "entry_id";
    /// The postback's bytes.
    pub const PAYLOAD: &str = "p";
    /// A retry schedule member that could not be read, as it was.
    pub const RAW: &str = "raw";
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// What kind of reason.
    pub category: Category,
    /// The reason as operators read it.
    pub reason: String,
    /// The postback's id, when known.
    pub postback_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt was made, ms since the epoch.
    pub first_attempt_ms: Option<u64>,
    /// When the last attempt was made, ms since the epoch.
    pub last_attempt_ms: Option<u64>,
    /// The last HTTP status, when a response came.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: Option<String>,
    /// The stream entry it came from.
    pub entry_id: String,
    /// The postback's bytes (a whole entry's, for a letter of a whole entry).
    pub payload: Option<Bytes>,
}

impl DeadLetter {
    /// The fields to append, in order (text but for `p`).
    pub fn fields(&self) -> Vec<(&'static str, Bytes)> {
        let text = |s: String| Bytes::from(s.into_bytes());
        let time = |ms: u64| text(rfc3339_ms(from_ms(ms)));
        let mut out = vec![
            (field::CATEGORY, Bytes::from_static(self.category.as_str().as_bytes())),
            (field::REASON, text(self.reason.clone())),
        ];
        if let Some(id) = &self.postback_id {
            out.push((field::POSTBACK_ID, text(id.clone())));
        }
        out.push((field::ATTEMPTS, text(self.attempts.to_string())));
        if let Some(ms) = self.first_attempt_ms {
            out.push((field::FIRST_ATTEMPT_AT, time(ms)));
        }
        if let Some(ms) = self.last_attempt_ms {
            out.push((field::LAST_ATTEMPT_AT, time(ms)));
        }
        if let Some(status) = self.last_status {
            out.push((field::LAST_STATUS, text(status.to_string())));
        }
        if let Some(error) = &self.last_error {
            out.push((field::LAST_ERROR, text(error.clone())));
        }
        out.push((field::ENTRY_ID, text(self.entry_id.clone())));
        if let Some(payload) = self.payload.as_ref().filter(|p| !p.is_empty()) {
            out.push((field::PAYLOAD, payload.clone()));
        }
        out
    }

    /// A letter read back from its fields (unknown ones ignored; a field
    /// that does not parse is taken as absent); letters without a
    /// `category` are classified from their reason.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut letter = DeadLetter {
            category: Category::Other,
            reason: String::new(),
            postback_id: None,
            attempts: 0,
            first_attempt_ms: None,
            last_attempt_ms: None,
            last_status: None,
            last_error: None,
            entry_id: String::new(),
            payload: None,
        };
        let mut category = None;
        let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
        let time = |value: &[u8]| {
            humantime::parse_rfc3339(&text(value))
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        for (name, value) in fields {
            match name {
                field::CATEGORY => category = Category::parse(&text(value)).ok(),
                field::REASON => letter.reason = text(value),
                field::POSTBACK_ID => letter.postback_id = Some(text(value)),
                field::ATTEMPTS => letter.attempts = text(value).parse().unwrap_or(0),
                field::FIRST_ATTEMPT_AT => letter.first_attempt_ms = time(value),
                field::LAST_ATTEMPT_AT => letter.last_attempt_ms = time(value),
                field::LAST_STATUS => letter.last_status = text(value).parse().ok(),
                field::LAST_ERROR => letter.last_error = Some(text(value)),
                field::ENTRY_ID => letter.entry_id = text(value),
                field::PAYLOAD => letter.payload = Some(Bytes::copy_from_slice(value)),
                _ => {}
            }
        }
        letter.category = category.unwrap_or_else(|| Category::of_reason(&letter.reason));
        letter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter {
            category: Category::Exhausted,
            reason: "gave up after 3 attempts; last: HTTP 503".into(),
            postback_id: Some("019ac7c2-7000-7000-8000-000000000001".into()),
            attempts: 3,
            first_attempt_ms: Some(1_764_288_000_123),
            last_attempt_ms: Some(1_764_288_004_567),
            last_status: Some(503),
            last_error: Some("HTTP 503".into()),
            entry_id: "1764288000000-0".into(),
            payload: Some(Bytes::from_static(b"\x95\x03")),
        }
    }

    fn round_trip(letter: &DeadLetter) -> DeadLetter {
        let fields = letter.fields();
        DeadLetter::from_fields(fields.iter().map(|(k, v)| (*k, v.as_ref())))
    }

    #[test]
    fn a_letter_round_trips_through_its_fields() {
        let letter = letter();
        let fields = letter.fields();
        assert_eq!(fields[0], ("category", Bytes::from_static(b"exhausted")));
        assert!(fields.iter().any(|(k, v)| *k == "first_attempt_at" && v.as_ref() == b"2025-11-28T00:00:00.123Z"));
        assert_eq!(round_trip(&letter), letter);
        let bare = DeadLetter {
            postback_id: None,
            first_attempt_ms: None,
            last_attempt_ms: None,
            last_status: None,
            last_error: None,
            payload: None,
            ..letter
        };
        assert_eq!(round_trip(&bare), bare);
    }

    #[test]
    fn letters_without_a_category_are_classified_by_their_reason() {
        let cases = [
            ("gave up after 25 attempts; last: HTTP 503", Category::Exhausted),
            ("rejected: HTTP 404", Category::Rejected),
            ("rejected: URL template: unclosed {", Category::Rejected),
            ("refused: 10.0.0.1 is private", Category::Refused),
            ("poison: undecodable: not a postback", Category::Undecodable),
            ("poison: endpoint record 3e71e1dd270a7700 is not in postbacks:endpoints", Category::Undecodable),
            ("poison: entry has no \"p\" field", Category::Undecodable),
            ("malformed retry schedule member", Category::Undecodable),
            ("poison: handed to workers 6 times without being finished", Category::Poison),
            ("written by hand", Category::Other),
        ];
        for (reason, category) in cases {
            let fields = [("reason", reason.as_bytes()), ("attempts", b"1".as_slice())];
            assert_eq!(DeadLetter::from_fields(fields).category, category, "{reason}");
        }
        assert_eq!(Category::parse("Exhausted"), Ok(Category::Exhausted));
        assert!(Category::parse("gone").expect_err("unknown").contains("exhausted, rejected"));
    }
}
