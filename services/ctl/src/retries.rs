//! `retries`: the retry schedule, soonest first: each postback waiting
//! for its next attempt, when it is due (or how late it is), how many
//! attempts it has had and where it goes.

use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use serde_json::{Map, Value as Json};

use crate::{entry, output};

/// The `count` scheduled retries due soonest, over the partitions.
pub async fn list(redis: &Client, partitions: &Partitions, count: u64) -> Result<Vec<Json>, Error> {
    let stop = count.saturating_sub(1) as i64;
    let mut members: Vec<(&Keys, bytes::Bytes, f64)> = Vec::new();
    for keys in partitions.all() {
        let own: Vec<(bytes::Bytes, f64)> = redis.zrange(&keys.retry, 0, stop, None, false, None, true).await?;
        members.extend(own.into_iter().map(|(member, due)| (keys, member, due)));
    }
    members.sort_by(|a, b| a.2.total_cmp(&b.2));
    members.truncate(count as usize);
    let now = postback_common::time::now_ms();
    let mut out = Vec::with_capacity(members.len());
    for (keys, member, due) in members {
        let due = due.max(0.0) as u64;
        let mut row = Map::new();
        row.insert("due_at".into(), postback_common::time::rfc3339_ms(postback_common::time::from_ms(due)).into());
        row.insert("due_in_ms".into(), (due as i64 - now as i64).into());
        // `<attempts>:<first attempt ms>:<postback bytes>`.
        let mut parts = member.splitn(3, |b| *b == b':');
        let (attempts, first, payload) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
        let number = |part: Option<&[u8]>| part.and_then(|p| std::str::from_utf8(p).ok()?.parse::<u64>().ok());
        row.insert("attempts".into(), number(attempts).into());
        if let Some(first) = number(first).filter(|ms| *ms > 0) {
            let at = postback_common::time::rfc3339_ms(postback_common::time::from_ms(first));
            row.insert("first_attempt_at".into(), at.into());
        }
        row.extend(entry::payload_json(redis, keys, payload).await?);
        if let Some(id) = row.get("postback").and_then(|p| p["id"].as_str()).map(str::to_owned) {
            row.insert("postback_id".into(), id.into());
        }
        out.push(Json::Object(row));
    }
    Ok(out)
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
