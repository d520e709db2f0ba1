//! Stream entries as XREADGROUP returns them.

use bytes::Bytes;
use fred::prelude::Value;
use postback_common::keys::ENTRY_FIELD;

/// One stream entry handed to this worker.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream entry id, e.g. `1764288000000-0`.
    pub id: String,
    /// The `p` field, or `None` when the entry has no such field (or was
    /// deleted while pending, which XREADGROUP shows as an entry without
    /// fields).
    pub payload: Option<Bytes>,
}

/// Reads the entries out of an XREADGROUP reply for a single stream. A nil
/// reply (the BLOCK timed out) is no entries.
pub fn from_reply(reply: Value) -> Vec<Entry> {
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
    let mut payload = None;
    if let Value::Array(fields) = fields {
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if k.as_str().is_some_and(|k| k == ENTRY_FIELD) {
                payload = match v {
                    Value::Bytes(b) => Some(b),
                    Value::String(s) => Some(s.into_inner()),
                    _ => None,
                };
            }
        }
    }
    Some(Entry { id, payload })
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
            ]),
        ])]);
        let entries = from_reply(reply);
        let ids: Vec<_> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "2-0", "3-0"]);
        assert_eq!(entries[0].payload.as_deref(), Some(&b"\x96\x01"[..]));
        assert!(entries[1].payload.is_none());
        assert!(entries[2].payload.is_none());
    }

    #[test]
    fn a_timed_out_read_is_no_entries() {
        assert!(from_reply(Value::Null).is_empty());
    }
}
