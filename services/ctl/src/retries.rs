//! `retries`: the retry schedule, soonest first: each postback waiting for
//! its next attempt, when it is due (or how late it is), how many attempts
//! it has had and where it goes. Postbacks of one request scheduled
//! together (one entry of the schedule) are listed one by one, with the
//! same due time. The schedule's layout: `postback_common::records::schedule`.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use postback_common::records::schedule::{self, OldMember};
use postback_common::records::stream_entry::StreamEntry;
use serde_json::{Map, Value as Json};

use crate::{entry, output};

/// One scheduled entry, before it is shown.
struct Due<'a> {
    keys: &'a Keys,
    due_ms: u64,
    entry: StreamEntry,
}

/// The `count` scheduled postbacks due soonest, over the partitions.
pub async fn list(redis: &Client, partitions: &Partitions, count: u64) -> Result<Vec<Json>, Error> {
    let mut found: Vec<Due> = Vec::new();
    for keys in partitions.all() {
        found.extend(soonest(redis, keys, count).await?);
    }
    found.sort_by_key(|due| due.due_ms);
    found.truncate(count as usize);
    let now = postback_common::time::now_ms();
    let mut out = Vec::with_capacity(found.len());
    for due in found {
        let mut row = Map::new();
        let at = |ms: u64| postback_common::time::rfc3339_ms(postback_common::time::from_ms(ms));
        row.insert("due_at".into(), at(due.due_ms).into());
        row.insert("due_in_ms".into(), (due.due_ms as i64 - now as i64).into());
        let payload = due.entry.payload.clone().unwrap_or_default();
        let fields = entry::payload_json(redis, due.keys, &payload).await?;
        let (attempts, first) = match fields.get("attempts").and_then(Json::as_u64) {
            Some(attempts) => (attempts, fields.get("first_attempt_at").cloned()),
            None => (u64::from(due.entry.attempts), due.entry.first_attempt_ms.map(|ms| at(ms).into())),
        };
        row.insert("attempts".into(), attempts.into());
        if let Some(first) = first {
            row.insert("first_attempt_at".into(), first);
        }
        let mut fields = fields;
        let postbacks = match fields.remove("postbacks") {
            Some(Json::Array(many)) => many,
            _ => fields.remove("postback").into_iter().collect(),
        };
        row.extend(fields);
        if postbacks.is_empty() {
            out.push(Json::Object(row));
            continue;
        }
        for postback in postbacks {
            let mut row = row.clone();
            if let Some(id) = postback["id"].as_str() {
                row.insert("postback_id".into(), id.into());
            }
            row.insert("postback".into(), postback);
            out.push(Json::Object(row));
        }
    }
    out.truncate(count as usize);
    Ok(out)
}

/// The `count` entries of one partition's schedule due soonest: from its
/// levels, read in the order their oldest entries are due until no level
/// left can hold an earlier one, and from the schedule as it was before
/// levels.
async fn soonest<'a>(redis: &Client, keys: &'a Keys, count: u64) -> Result<Vec<Due<'a>>, Error> {
    let mut found: Vec<Due> = Vec::new();
    let levels: Vec<(Bytes, f64)> = redis.zrange(&keys.schedule, 0, -1, None, false, None, true).await?;
    for (member, head_due) in levels {
        let Some(delay) = schedule::parse_member(&member) else { continue };
        if found.len() as u64 >= count && found.iter().all(|d| d.due_ms <= head_due as u64) {
            break;
        }
        let key = schedule::level_key(&keys.schedule, delay);
        let entries: Vec<(String, Vec<(String, Bytes)>)> = redis.xrange(&key, "-", "+", Some(count)).await?;
        for (id, fields) in entries {
            let entry = StreamEntry::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
            let due_ms = schedule::due_ms(&id, delay).unwrap_or(0);
            found.push(Due { keys, due_ms, entry });
        }
        found.sort_by_key(|due| due.due_ms);
        found.truncate(count as usize);
    }
    let stop = count.saturating_sub(1) as i64;
    let old: Vec<(Bytes, f64)> = redis.zrange(&keys.retry, 0, stop, None, false, None, true).await?;
    for (member, due) in old {
        let entry = match OldMember::parse(&member) {
            Some(old) => StreamEntry::again(old.payload, old.attempts, Some(old.first_attempt_ms).filter(|ms| *ms > 0)),
            None => StreamEntry::fresh(member),
        };
        found.push(Due { keys, due_ms: due.max(0.0) as u64, entry });
    }
    Ok(found)
}

/// Prints scheduled retries as a table.
pub fn print(rows: &[Json]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let due_in = r["due_in_ms"].as_i64().unwrap_or(0);
            let when = if due_in >= 0 {
                format!("in {}", output::age(due_in as u64))
            } else {
                format!("{} late", output::age(due_in.unsigned_abs()))
            };
            let text = |key: &str| match &r[key] {
                Json::String(s) => s.clone(),
                Json::Null => "-".to_owned(),
                other => other.to_string(),
            };
            vec![text("postback_id"), text("target"), text("attempts"), text("due_at"), when]
        })
        .collect();
    output::table(&["postback", "target", "attempts", "due", "when"], &rows);
}
