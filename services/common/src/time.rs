//! Wall-clock helpers: milliseconds since the epoch and RFC 3339 text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 text in UTC with millisecond precision, e.g. `2026-11-28T00:05:42.123Z`.
pub fn rfc3339_ms(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The `SystemTime` of a millisecond timestamp.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
