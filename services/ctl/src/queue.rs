//! `status` and `pending`: the state of the stream and its consumer group.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;
use postback_common::redis::pairs;
use serde::Serialize;

use crate::output;

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The stream.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// Entries in the stream: postbacks waiting for an attempt.
    pub length: u64,
    /// Entries no worker has read yet (null when the group does not exist).
    pub lag: Option<u64>,
    /// Entries read by a worker and not yet finished.
    pub pending: u64,
    /// Age of the oldest pending entry, from its id.
    pub oldest_pending_age_ms: Option<u64>,
    /// Postbacks waiting in the retry schedule.
    pub scheduled_retries: u64,
    /// Postbacks in the dead-letter stream.
    pub dead_letters: u64,
    /// The group's consumers.
    pub consumers: Vec<Consumer>,
}

/// One consumer of the group.
#[derive(Debug, Serialize)]
pub struct Consumer {
    /// Its name (HOST-PID or POSTBACK_CONSUMER).
    pub name: String,
    /// Entries it holds.
    pub pending: u64,
    /// Since it last read, in ms.
    pub idle_ms: u64,
}

/// Gathers the status.
pub async fn status(redis: &Client, keys: &Keys) -> Result<Status, Error> {
    let length: u64 = redis.xlen(&keys.stream).await?;
    let scheduled_retries: u64 = redis.zcard(&keys.retry).await?;
    let dead_letters: u64 = redis.xlen(&keys.dead).await?;
    let mut status = Status {
        stream: keys.stream.clone(),
        group: keys.group.clone(),
        length,
        lag: None,
        pending: 0,
        oldest_pending_age_ms: None,
        scheduled_retries,
        dead_letters,
        consumers: Vec::new(),
    };
    if length == 0 && !redis.exists::<bool, _>(&keys.stream).await? {
        return Ok(status);
    }
    let groups: Value = redis.xinfo_groups(&keys.stream).await?;
    let Value::Array(groups) = groups else { return Ok(status) };
    let Some(group) = groups.into_iter().map(pairs).find(|g| field_str(g, "name").as_deref() == Some(&keys.group))
    else {
        return Ok(status);
    };
    status.lag = field_u64(&group, "lag");
    status.pending = field_u64(&group, "pending").unwrap_or(0);
    let summary: Value = redis
        .custom(CustomCommand::new_static("XPENDING", ClusterHash::FirstKey, false), vec![&keys.stream, &keys.group])
        .await?;
    if let Value::Array(parts) = summary
        && let Some(oldest) = parts.get(1).and_then(|v| v.as_string())
    {
        status.oldest_pending_age_ms = id_age_ms(&oldest);
    }
    let consumers: Value = redis.xinfo_consumers(&keys.stream, &keys.group).await?;
    if let Value::Array(consumers) = consumers {
        status.consumers = consumers
            .into_iter()
            .map(pairs)
            .map(|c| Consumer {
                name: field_str(&c, "name").unwrap_or_default(),
                pending: field_u64(&c, "pending").unwrap_or(0),
                idle_ms: field_u64(&c, "inactive").or_else(|| field_u64(&c, "idle")).unwrap_or(0),
            })
            .collect();
    }
    Ok(status)
}

/// Prints the status as a table.
pub fn print_status(status: &Status) {
    let na = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    output::table(
        &["stream", "group", "length", "lag", "pending", "oldest pending", "scheduled retries", "dead letters"],
        &[vec![
            status.stream.clone(),
            status.group.clone(),
            status.length.to_string(),
            na(status.lag),
            status.pending.to_string(),
            status.oldest_pending_age_ms.map_or("-".to_owned(), output::age),
            status.scheduled_retries.to_string(),
            status.dead_letters.to_string(),
        ]],
    );
    println!();
    let rows: Vec<_> =
        status.consumers.iter().map(|c| vec![c.name.clone(), c.pending.to_string(), output::age(c.idle_ms)]).collect();
    output::table(&["consumer", "pending", "idle"], &rows);
}

/// One pending entry.
pub type Pending = postback_common::redis::PendingRow;

/// The oldest `count` pending entries.
pub async fn pending(redis: &Client, keys: &Keys, count: u64) -> Result<Vec<Pending>, Error> {
    postback_common::redis::pending_rows(redis, keys, ("-", "+"), count, None).await
}

/// Prints pending entries as a table.
pub fn print_pending(rows: &[Pending]) {
    let rows: Vec<_> = rows
        .iter()
        .map(|p| vec![p.id.clone(), p.consumer.clone(), output::age(p.idle_ms), p.deliveries.to_string()])
        .collect();
    output::table(&["entry", "consumer", "idle", "deliveries"], &rows);
}

fn field_str(fields: &[(String, Value)], key: &str) -> Option<String> {
    fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_string())
}

fn field_u64(fields: &[(String, Value)], key: &str) -> Option<u64> {
    fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64())
}

/// How long ago an entry id (`<ms>-<seq>`) was created.
fn id_age_ms(id: &str) -> Option<u64> {
    let ms: u64 = id.split('-').next()?.parse().ok()?;
    Some(postback_common::time::now_ms().saturating_sub(ms))
}
