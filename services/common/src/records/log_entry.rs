//! The delivery log: the attempts of postbacks, in the capped stream
//! `<stream>:log` that deliver writes and `postbackctl attempts ID` reads.
//! It is a log, not data: capped, and not written while Redis's memory is
//! high.
//!
//! Deliver writes one stream entry per batch of attempts (`lua`-free, one
//! `XADD`): each field is a postback's id, its value the attempt as
//! compact JSON, text that `redis-cli XRANGE` reads:
//!
//! ```text
//! 019ac7c2-…-0001  {"attempt":1,"at":"2026-11-28T00:00:00.123Z","status":503,"outcome":"retry","response_time_ms":12,"url":"http://…","error":"HTTP 503"}
//! ```
//!
//! (`status` null without a response, `error` absent when delivered). One
//! entry per batch, rather than one per attempt, is what makes the log
//! cheap: an attempt costs Redis a field of an entry it appends anyway.
//! Entries written before, one per attempt with the fields `postback_id`,
//! `attempt`, `at`, `status`, `outcome`, `response_time_ms`, `url` and
//! `error` as text, are still read ([`LogEntry::from_entry`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The field names of an entry written before batches.
pub mod field {
    /// The postback's id.
    pub const POSTBACK_ID: &str = "postback_id";
    /// The attempt's number (1 for the first).
    pub const ATTEMPT: &str = "attempt";
    /// When it was sent (RFC 3339).
    pub const AT: &str = "at";
    /// The HTTP status, if a response came.
    pub const STATUS: &str = "status";
    /// `delivered`, `retry` or `dead`.
    pub const OUTCOME: &str = "outcome";
    /// Milliseconds to the response.
    pub const RESPONSE_TIME_MS: &str = "response_time_ms";
    /// The URL sent to.
    pub const URL: &str = "url";
    /// Why it failed.
    pub const ERROR: &str = "error";
}

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The postback's id (the field's name, not part of its value).
    #[serde(skip)]
    pub postback_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// RFC 3339 time of the attempt.
    pub at: String,
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// delivered, retry or dead.
    pub outcome: String,
    /// Milliseconds to the response.
    pub response_time_ms: u64,
    /// The URL sent to.
    pub url: String,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LogEntry {
    /// The field of a batch's entry: the postback's id, and the attempt as
    /// JSON.
    pub fn field(&self) -> (Bytes, Bytes) {
        #[allow(clippy::expect_used)]
        let value = serde_json::to_vec(self).expect("an attempt is plain JSON");
        (Bytes::copy_from_slice(self.postback_id.as_bytes()), Bytes::from(value))
    }

    /// The attempts an entry of the log holds, in order: every field of a
    /// batch whose value reads as an attempt, or the one attempt of an
    /// entry written before batches.
    pub fn from_entry<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<LogEntry> {
        let fields: Vec<(&[u8], &[u8])> = fields.into_iter().collect();
        if fields.iter().any(|(name, _)| *name == field::POSTBACK_ID.as_bytes()) {
            return vec![Self::from_fields(fields)];
        }
        fields
            .into_iter()
            .filter_map(|(name, value)| {
                let mut entry: LogEntry = serde_json::from_slice(value).ok()?;
                entry.postback_id = String::from_utf8_lossy(name).into_owned();
                Some(entry)
            })
            .collect()
    }

    /// An entry written before batches, from its text fields.
    fn from_fields(fields: Vec<(&[u8], &[u8])>) -> Self {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let mut entry = LogEntry {
            postback_id: String::new(),
            attempt: 0,
            at: String::new(),
            status: None,
            outcome: String::new(),
            response_time_ms: 0,
            url: String::new(),
            error: None,
        };
        for (name, value) in fields {
            match std::str::from_utf8(name).unwrap_or_default() {
                field::POSTBACK_ID => entry.postback_id = text(value),
                field::ATTEMPT => entry.attempt = text(value).parse().unwrap_or(0),
                field::AT => entry.at = text(value),
                field::STATUS => entry.status = text(value).parse().ok(),
                field::OUTCOME => entry.outcome = text(value),
                field::RESPONSE_TIME_MS => entry.response_time_ms = text(value).parse().unwrap_or(0),
                field::URL => entry.url = text(value),
                field::ERROR => entry.error = Some(text(value)),
                _ => {}
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> LogEntry {
        LogEntry {
            postback_id: "019ac7c2-7000-7000-8000-000000000001".into(),
            attempt: 2,
            at: "2026-11-28T00:00:00.123Z".into(),
            status: Some(503),
            outcome: "retry".into(),
            response_time_ms: 12,
            url: "http://h.example/x?a=1".into(),
            error: Some("HTTP 503".into()),
        }
    }

    #[test]
    fn a_batch_round_trips_through_its_fields() {
        let delivered = LogEntry { status: Some(200), outcome: "delivered".into(), error: None, ..attempt() };
        let fields = [attempt().field(), delivered.field()];
        assert!(!String::from_utf8_lossy(&fields[1].1).contains("error"), "no error when delivered");
        let back = LogEntry::from_entry(fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        assert_eq!(back, [attempt(), delivered]);
    }

    #[test]
    fn entries_written_before_batches_still_read() {
        let old: Vec<(&[u8], &[u8])> = vec![
            (b"postback_id", b"019ac7c2-7000-7000-8000-000000000001"),
            (b"attempt", b"2"),
            (b"at", b"2026-11-28T00:00:00.123Z"),
            (b"outcome", b"retry"),
            (b"response_time_ms", b"12"),
            (b"url", b"http://h.example/x?a=1"),
            (b"status", b"503"),
            (b"error", b"HTTP 503"),
        ];
        assert_eq!(LogEntry::from_entry(old), [attempt()]);
    }
}
