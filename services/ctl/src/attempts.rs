//! `attempts ID`: one postback's recent attempts, from the capped delivery
//! log stream (`<stream>:log`) that deliver writes, newest first.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use serde_json::{Map, Value as Json};

use crate::dead::DeadError;
use crate::{entry, output};

/// The attempts of postback `id` among the newest `scan` log entries.
pub async fn find(redis: &Client, keys: &Keys, id: &str, scan: u64) -> Result<Vec<Json>, DeadError> {
    let entries: Vec<(String, Vec<(String, Bytes)>)> = redis.xrevrange(&keys.log, "+", "-", Some(scan)).await?;
    let found: Vec<Json> = entries
        .into_iter()
        .filter(|(_, fields)| fields.iter().any(|(k, v)| k == "postback_id" && v.as_ref() == id.as_bytes()))
        .map(|(_, fields)| {
            let object: Map<String, Json> = fields
                .into_iter()
                .map(|(k, v)| {
                    let value = entry::text_field(&k, &v);
                    (k, value)
                })
                .collect();
            Json::Object(object)
        })
        .collect();
    if found.is_empty() {
        return Err(DeadError::NotFound(format!(
            "no attempts of {id} in the newest {scan} entries of {} (not attempted yet, or logged longer ago)",
            keys.log
        )));
    }
    Ok(found)
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
