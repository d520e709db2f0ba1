//! `attempts ID`: one postback's recent attempts, from the capped delivery
//! log streams (`<stream>:log`, one per partition) that deliver writes,
//! newest first.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use postback_common::records::log_entry::LogEntry;
use serde_json::{Map, Value as Json};

use crate::dead::DeadError;
use crate::output;

/// Log entries read per round trip.
const PAGE: u64 = 200;

/// The attempts of postback `id` among the newest `scan` attempts logged in
/// each partition's log, newest first.
pub async fn find(redis: &Client, partitions: &Partitions, id: &str, scan: u64) -> Result<Vec<Json>, DeadError> {
    let mut found = Vec::new();
    for keys in partitions.all() {
        found.extend(find_in(redis, keys, id, scan).await?);
    }
    if found.is_empty() {
        let logs: Vec<&str> = partitions.all().iter().map(|k| k.log.as_str()).collect();
        return Err(DeadError::NotFound(format!(
            "no attempts of {id} in the newest {scan} attempts logged in {} (not attempted yet, or logged longer ago)",
            logs.join(", ")
        )));
    }
    // RFC 3339 in UTC, to the millisecond: the text sorts as the time.
    found.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
    Ok(found)
}

/// The attempts of postback `id` among the newest `scan` attempts logged in
/// one partition, newest first (an entry of the log holds a batch of
/// attempts, or, if written before batches, one).
async fn find_in(redis: &Client, keys: &Keys, id: &str, scan: u64) -> Result<Vec<Json>, DeadError> {
    let mut found = Vec::new();
    let (mut scanned, mut end) = (0u64, "+".to_owned());
    while scanned < scan {
        let entries: Vec<(String, Vec<(Bytes, Bytes)>)> =
            redis.xrevrange(&keys.log, end.as_str(), "-", Some(PAGE)).await?;
        let full = entries.len() as u64 == PAGE;
        let Some(last) = entries.last().map(|(id, _)| id.clone()) else { break };
        for (_, fields) in entries {
            let attempts = LogEntry::from_entry(fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
            scanned += attempts.len() as u64;
            // Newest first, within an entry too.
            found.extend(attempts.into_iter().rev().filter(|a| a.postback_id == id).map(row));
        }
        if !full {
            break;
        }
        end = format!("({last}");
    }
    Ok(found)
}

/// One attempt as JSON.
fn row(attempt: LogEntry) -> Json {
    let mut object = Map::new();
    object.insert("postback_id".into(), attempt.postback_id.clone().into());
    if let Json::Object(rest) = serde_json::to_value(&attempt).unwrap_or_default() {
        object.extend(rest);
    }
    Json::Object(object)
}

/// Prints attempts as a table.
pub fn print(rows: &[Json]) {
    output::object_table(
        rows,
        &[
            ("attempt", "attempt"),
            ("at", "at"),
            ("status", "status"),
            ("ms", "response_time_ms"),
            ("outcome", "outcome"),
            ("error", "error"),
        ],
    );
}
