//! The delivery-log entry: one attempt, in the capped stream
//! `<stream>:log` that deliver writes (in batches, `lua/log.lua`) and
//! `postbackctl attempts ID` reads. It is a log, not data: capped, and
//! not written while Redis's memory is high.
//!
//! Fields, as text: `postback_id`, `attempt`, `at` (RFC 3339), `status`
//! (absent without a response), `outcome` (`delivered`, `retry`, `dead`),
//! `response_time_ms`, `url`, `error` (absent when delivered).

use bytes::Bytes;

/// The field names, as stored.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The postback's id.
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
    pub error: Option<String>,
}

impl LogEntry {
    /// The fields to append, in order.
    pub fn fields(&self) -> Vec<(&'static str, Bytes)> {
        let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut out = vec![
            (field::POSTBACK_ID, text(&self.postback_id)),
            (field::ATTEMPT, Bytes::from(self.attempt.to_string())),
            (field::AT, text(&self.at)),
            (field::OUTCOME, text(&self.outcome)),
            (field::RESPONSE_TIME_MS, Bytes::from(self.response_time_ms.to_string())),
            (field::URL, text(&self.url)),
        ];
        if let Some(status) = self.status {
            out.push((field::STATUS, Bytes::from(status.to_string())));
        }
        if let Some(error) = &self.error {
            out.push((field::ERROR, text(error)));
        }
        out
    }

    /// An entry read back from its fields (unknown ones ignored).
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
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
            match name {
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

    #[test]
    fn an_attempt_round_trips_through_its_fields() {
        let entry = LogEntry {
            postback_id: "019ac7c2-7000-7000-8000-000000000001".into(),
            attempt: 2,
            at: "2026-11-28T00:00:00.123Z".into(),
            status: Some(503),
            outcome: "retry".into(),
            response_time_ms: 12,
            url: "http://h.example/x?a=1".into(),
            error: Some("HTTP 503".into()),
        };
        let fields = entry.fields();
        assert_eq!(LogEntry::from_fields(fields.iter().map(|(k, v)| (*k, v.as_ref()))), entry);
        let delivered = LogEntry { status: Some(200), outcome: "delivered".into(), error: None, ..entry };
        assert!(!delivered.fields().iter().any(|(k, _)| *k == "error"));
    }
}
