//! `dead list`, `dead show` and `dead redrive`: the dead-letter stream.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use serde::Serialize;
use serde_json::Value as Json;

use crate::{entry, output};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// No dead letter has that id (exit code 3).
    #[error("{0}")]
    NotFound(String),
    /// Redis failed (exit code 1).
    #[error("Redis: {0}")]
    Redis(#[from] Error),
}

type Entry = (String, Vec<(String, Bytes)>);

/// The newest `count` dead letters, newest first, their postbacks decoded.
pub async fn list(redis: &Client, keys: &Keys, count: u64) -> Result<Vec<Json>, DeadError> {
    let entries: Vec<Entry> = redis.xrevrange(&keys.dead, "+", "-", Some(count)).await?;
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        out.push(entry::fields_json(redis, keys, id, fields).await?);
    }
    Ok(out)
}

/// Prints dead letters as a table.
pub fn print_list(letters: &[Json]) {
    output::object_table(
        letters,
        &[
            ("dead letter", "id"),
            ("postback", "postback_id"),
            ("attempts", "attempts"),
            ("status", "last_status"),
            ("last attempt", "last_attempt_at"),
            ("reason", "reason"),
        ],
    );
}

/// One dead letter.
pub async fn show(redis: &Client, keys: &Keys, id: &str) -> Result<Json, DeadError> {
    let mut entries: Vec<Entry> = redis.xrange(&keys.dead, id, id, Some(1)).await?;
    let Some((id, fields)) = entries.pop() else {
        return Err(DeadError::NotFound(format!("no dead letter {id} in {}", keys.dead)));
    };
    Ok(entry::fields_json(redis, keys, id, fields).await?)
}

/// What one redrive did.
#[derive(Debug, Serialize)]
pub struct Redriven {
    /// The dead letter's id.
    pub dead_id: String,
    /// The new stream entry.
    pub entry_id: String,
}

/// Puts dead letters back into the stream, each exactly once.
pub async fn redrive(redis: &Client, keys: &Keys, ids: &[String], all: bool) -> Result<Vec<Redriven>, DeadError> {
    let ids: Vec<String> = if all {
        let entries: Vec<Entry> = redis.xrange(&keys.dead, "-", "+", None).await?;
        entries.into_iter().map(|(id, _)| id).collect()
    } else {
        ids.to_vec()
    };
    let script = Script::new(include_str!("lua_redrive.lua"));
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        match script.call::<_, String>(redis, &[&keys.dead, &keys.stream], vec![id.as_str().into()]).await {
            Ok(entry_id) => done.push(Redriven { dead_id: id, entry_id }),
            Err(e) if e.details().starts_with("NOTFOUND") || e.details().starts_with("NOPAYLOAD") => {
                let what = e.details().split_once(' ').map_or(e.details(), |(_, rest)| rest).to_owned();
                return Err(DeadError::NotFound(format!("{what} (redriven so far: {})", done.len())));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
