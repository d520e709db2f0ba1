//! `entry ID`, and the decoding that `dead show` shares: a stream entry's
//! value as JSON, with the endpoint record of a version 3 entry (a
//! request's postbacks in one entry) looked up.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::{ENTRY_FIELD, Keys};
use postback_common::{Postback, entries, records::postback as wire, records::request as request_entry};
use serde_json::{Map, Value as Json, json};

use crate::dead::DeadError;

/// One postback as JSON (with `delivery`, the request's policy, when it
/// gave one).
pub fn postback_json(p: &Postback) -> Json {
    let mut json = json!({
        "id": p.id.to_string(),
        "accepted_at": postback_common::time::rfc3339_ms(postback_common::time::from_ms(p.accepted_at_ms)),
        "method": p.method.as_str(),
        "url": p.url,
        "data": p.data,
    });
    if let Some(d) = p.delivery {
        json["delivery"] = json!({"max_attempts": d.max_attempts, "delay_ms": d.delay_ms, "timeout_ms": d.timeout_ms});
    }
    json
}

/// The host (and port, if given) a URL template sends to: what is between
/// `scheme://` and the path (placeholders never are, ingest refuses them
/// there).
pub fn target_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// A `p` value as JSON fields (with `target`, the host it goes to):
/// `postback` for one postback, `postbacks` for several, `undecodable`
/// (and the bytes as text) when it cannot be read; a version 5 value (a
/// retry of postbacks of a request) also gives their `attempts` so far and
/// `first_attempt_at`.
pub async fn payload_json(redis: &Client, keys: &Keys, payload: &[u8]) -> Result<Map<String, Json>, Error> {
    let mut out = Map::new();
    if let Ok(wire::Decoded::Retried(retried)) = wire::decode_entry(payload) {
        out.insert("attempts".into(), retried.attempts.into());
        if let Some(ms) = retried.first_attempt_ms {
            let at = postback_common::time::rfc3339_ms(postback_common::time::from_ms(ms));
            out.insert("first_attempt_at".into(), at.into());
        }
    }
    match entries::resolve(redis, keys, payload).await? {
        Ok(postbacks) if postbacks.len() == 1 && request_entry::postbacks_in(payload) == 1 => {
            out.insert("target".into(), target_of(&postbacks[0].url).into());
            out.insert("postback".into(), postback_json(&postbacks[0]));
        }
        Ok(postbacks) => {
            if let Some(first) = postbacks.first() {
                out.insert("target".into(), target_of(&first.url).into());
            }
            out.insert("postbacks".into(), postbacks.iter().map(postback_json).collect());
        }
        Err(why) => {
            out.insert("undecodable".into(), why.into());
            out.insert("bytes".into(), String::from_utf8_lossy(payload).into_owned().into());
        }
    }
    Ok(out)
}

/// An entry's fields as JSON: `p` decoded, the others as text.
pub async fn fields_json(redis: &Client, keys: &Keys, id: String, fields: Vec<(String, Bytes)>) -> Result<Json, Error> {
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    for (key, value) in fields {
        if key == ENTRY_FIELD {
            out.extend(payload_json(redis, keys, &value).await?);
        } else {
            let value = text_field(&key, &value);
            out.insert(key, value);
        }
    }
    Ok(Json::Object(out))
}

/// Fields that hold whole numbers, in dead letters and in the delivery
/// log: shown as JSON numbers, so both say `"attempts": 3` alike.
const NUMBER_FIELDS: [&str; 5] = ["attempt", "attempts", "status", "last_status", "response_time_ms"];

/// A text field of a stream entry as JSON: a number for the
/// [`NUMBER_FIELDS`], else a string.
pub fn text_field(key: &str, value: &[u8]) -> Json {
    let text = String::from_utf8_lossy(value);
    if NUMBER_FIELDS.contains(&key)
        && let Ok(n) = text.parse::<u64>()
    {
        return n.into();
    }
    text.into_owned().into()
}

/// One entry of the stream, its postbacks decoded; for an entry of several
/// postbacks also `finished`, the positions (from 0) already delivered,
/// scheduled again or dead-lettered.
pub async fn show(redis: &Client, keys: &Keys, id: &str) -> Result<Json, DeadError> {
    let mut entries: Vec<(String, Vec<(String, Bytes)>)> = redis.xrange(&keys.stream, id, id, Some(1)).await?;
    let Some((id, fields)) = entries.pop() else {
        return Err(DeadError::NotFound(format!("no entry {id} in {}", keys.stream)));
    };
    let count = fields.iter().find(|(k, _)| k == ENTRY_FIELD).map_or(1, |(_, p)| request_entry::postbacks_in(p));
    let bits: Option<Bytes> = if count > 1 { redis.hget(&keys.finished, &id).await? } else { None };
    let mut shown = fields_json(redis, keys, id, fields).await?;
    if count > 1
        && let Json::Object(map) = &mut shown
    {
        let done =
            postback_common::records::finished::FinishedPositions::from_bytes(&bits.unwrap_or_default()).flags(count);
        let finished: Vec<usize> = (0..count).filter(|p| done[*p]).collect();
        map.insert("finished".into(), finished.into());
    }
    Ok(shown)
}
