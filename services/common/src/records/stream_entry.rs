//! A stream entry's fields: what ingest appends (`XADD <stream> * p …`),
//! what the retry scheduler appends again from a level of the schedule,
//! and what deliver reads back.
//!
//! * `p`: the postbacks, a MessagePack array whose first element is the
//!   wire format version ([`super::postback`], [`super::request`],
//!   [`super::retried`]).
//! * `a` and `f`, only on a single postback (versions 1, 2, 4) that is
//!   attempted again: attempts made so far, and when the first was made
//!   (ms since the Unix epoch), as decimal text. A version 5 value carries
//!   its tally itself; a fresh postback has neither (0 attempts).
//!
//! Mirrored by `lua/promote.lua` (which copies a level entry's fields as
//! they are) and `lua_redrive.lua` (which appends `p` alone).

use bytes::Bytes;

/// The field holding the postbacks. One short name keeps every entry
/// small: Redis stores field names per entry unless they repeat exactly.
pub const PAYLOAD: &str = "p";

/// Attempts made so far (a single postback attempted again).
pub const ATTEMPTS: &str = "a";

/// When the first attempt was made, ms since the epoch.
pub const FIRST_ATTEMPT: &str = "f";

/// One entry's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEntry {
    /// `p`, when there is one.
    pub payload: Option<Bytes>,
    /// `a`, 0 when absent.
    pub attempts: u32,
    /// `f`, when present and above 0.
    pub first_attempt_ms: Option<u64>,
    /// Whether the entry had any field at all (an entry deleted while
    /// pending is handed out without fields).
    pub has_fields: bool,
}

impl StreamEntry {
    /// A fresh entry of `payload`.
    pub fn fresh(payload: impl Into<Bytes>) -> Self {
        Self { payload: Some(payload.into()), has_fields: true, ..Self::default() }
    }

    /// A single postback attempted `attempts` times, the first at
    /// `first_attempt_ms`.
    pub fn again(payload: impl Into<Bytes>, attempts: u32, first_attempt_ms: Option<u64>) -> Self {
        Self { payload: Some(payload.into()), attempts, first_attempt_ms, has_fields: true }
    }

    /// The fields to append, in order.
    pub fn fields(&self) -> Vec<(&'static str, Bytes)> {
        let mut out = Vec::with_capacity(3);
        if let Some(payload) = &self.payload {
            out.push((PAYLOAD, payload.clone()));
        }
        if self.attempts > 0 || self.first_attempt_ms.is_some() {
            out.push((ATTEMPTS, Bytes::from(self.attempts.to_string())));
            out.push((FIRST_ATTEMPT, Bytes::from(self.first_attempt_ms.unwrap_or(0).to_string())));
        }
        out
    }

    /// An entry read back from its fields (others are ignored).
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut entry = Self::default();
        let number = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<u64>().ok();
        for (name, value) in fields {
            entry.has_fields = true;
            match name {
                PAYLOAD => entry.payload = Some(Bytes::copy_from_slice(value)),
                ATTEMPTS => entry.attempts = number(value).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                FIRST_ATTEMPT => entry.first_attempt_ms = number(value).filter(|ms| *ms > 0),
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
    fn fields_round_trip() {
        for entry in
            [StreamEntry::fresh(&b"\x95\x03"[..]), StreamEntry::again(&b"\x96\x01"[..], 3, Some(1_764_288_000_000))]
        {
            let fields = entry.fields();
            assert_eq!(StreamEntry::from_fields(fields.iter().map(|(k, v)| (*k, v.as_ref()))), entry);
        }
        assert_eq!(StreamEntry::fresh(&b"x"[..]).fields().len(), 1, "a fresh entry has p alone");
        let deleted = StreamEntry::from_fields(std::iter::empty());
        assert!(!deleted.has_fields && deleted.payload.is_none());
    }
}
