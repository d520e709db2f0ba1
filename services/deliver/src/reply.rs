//! Stream entries out of XREADGROUP, XAUTOCLAIM and XCLAIM replies.

use bytes::Bytes;
use fred::prelude::Value;
use postback_common::keys::{ATTEMPTS_FIELD, ENTRY_FIELD, FIRST_ATTEMPT_FIELD};

/// One stream entry handed to this worker.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The stream entry id, e.g. `1764288000000-0`.
    pub(crate) id: String,
    /// The `p` field, or `None` when the entry has no such field (or was
    /// deleted while pending, which XREADGROUP shows as an entry without
    /// fields).
    pub(crate) payload: Option<Bytes>,
    /// Whether the entry had any fields at all (false: deleted while pending).
    pub(crate) has_fields: bool,
    /// Attempts already made (field `a`; 0 for a fresh postback).
    pub(crate) attempts: u32,
    /// When the first attempt was made (field `f`), ms since the epoch.
    pub(crate) first_attempt_ms: Option<u64>,
}

/// Reads the next cursor and the ids out of an `XAUTOCLAIM … JUSTID` reply
/// (`[cursor, ids, deleted ids]`); ids of entries that no longer exist are
/// dropped from the pending list by Redis itself.
pub(crate) fn from_autoclaim_ids(reply: Value) -> (String, Vec<String>) {
    let Value::Array(parts) = reply else { return ("0-0".into(), Vec::new()) };
    let mut parts = parts.into_iter();
    let cursor = parts.next().and_then(|v| v.as_string()).unwrap_or_else(|| "0-0".into());
    let ids = match parts.next() {
        Some(Value::Array(ids)) => ids.into_iter().filter_map(|id| id.as_string()).collect(),
        _ => Vec::new(),
    };
    (cursor, ids)
}

/// Reads a list of entries as XRANGE and XCLAIM give them.
pub(crate) fn from_entries(reply: Value) -> Vec<Entry> {
    let Value::Array(entries) = reply else { return Vec::new() };
    entries.into_iter().filter_map(entry).collect()
}

/// Reads the entries out of an XREADGROUP reply for a single stream. A nil
/// reply (the BLOCK timed out) is no entries.
pub(crate) fn from_reply(reply: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        // RESP3 answers with a map of stream name to entries.
        Value::Map(map) => map.inner().into_values().collect(),
        _ => return out,
    };
    for stream in streams {
        let entries = match stream {
            // RESP2: [name, entries]
            Value::Array(mut pair) if pair.len() == 2 => pair.pop().unwrap_or(Value::Null),
            other => other,
        };
        let Value::Array(entries) = entries else { continue };
        out.extend(entries.into_iter().filter_map(entry));
    }
    out
}

fn entry(value: Value) -> Option<Entry> {
    let Value::Array(mut parts) = value else { return None };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = parts.pop()?.as_string()?;
    let mut out = Entry { id, payload: None, has_fields: false, attempts: 0, first_attempt_ms: None };
    if let Value::Array(fields) = fields {
        out.has_fields = !fields.is_empty();
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match k.as_str().as_deref() {
                Some(ENTRY_FIELD) => {
                    out.payload = match v {
                        Value::Bytes(b) => Some(b),
                        Value::String(s) => Some(s.into_inner()),
                        _ => None,
                    }
                }
                Some(ATTEMPTS_FIELD) => out.attempts = v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                Some(FIRST_ATTEMPT_FIELD) => out.first_attempt_ms = v.as_u64(),
                _ => {}
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn reads_a_resp2_reply() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("postbacks"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("p"), Value::Bytes(Bytes::from_static(b"\x96\x01"))])]),
                // Deleted while pending: the entry comes back without fields.
                Value::Array(vec![s("2-0"), Value::Null]),
                Value::Array(vec![s("3-0"), Value::Array(vec![s("other"), s("x")])]),
                Value::Array(vec![s("4-0"), Value::Array(vec![s("p"), s("x"), s("a"), s("2"), s("f"), s("1700")])]),
            ]),
        ])]);
        let entries = from_reply(reply);
        let ids: Vec<_> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "2-0", "3-0", "4-0"]);
        assert_eq!(entries[0].payload.as_deref(), Some(&b"\x96\x01"[..]));
        assert_eq!((entries[0].attempts, entries[0].first_attempt_ms), (0, None));
        assert!(entries[1].payload.is_none() && !entries[1].has_fields);
        assert!(entries[2].payload.is_none() && entries[2].has_fields);
        assert_eq!((entries[3].attempts, entries[3].first_attempt_ms), (2, Some(1700)));
    }

    #[test]
    fn reads_an_autoclaim_reply_of_ids() {
        let reply = Value::Array(vec![s("5-0"), Value::Array(vec![s("1-0"), s("3-0")]), Value::Array(vec![s("0-1")])]);
        assert_eq!(from_autoclaim_ids(reply), ("5-0".to_owned(), vec!["1-0".to_owned(), "3-0".to_owned()]));
    }

    #[test]
    fn reads_a_list_of_entries() {
        let reply = Value::Array(vec![
            Value::Array(vec![s("1-0"), Value::Array(vec![s("p"), s("x")])]),
            Value::Array(vec![s("2-0"), Value::Array(vec![])]),
        ]);
        let entries = from_entries(reply);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].has_fields && !entries[1].has_fields);
    }

    #[test]
    fn a_timed_out_read_is_no_entries() {
        assert!(from_reply(Value::Null).is_empty());
    }
}
