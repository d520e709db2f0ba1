//! A snapshot of the queue: the stream, its consumer group, the retry
//! schedule and the dead-letter stream.
//!
//! `postbackctl status` prints it and deliver's `/metrics` turns it into
//! gauges, so on-call and the dashboards read the same numbers. With
//! partitions, both add up the partitions ([`status_of_all`]).

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde::Serialize;

use crate::keys::{Keys, Partitions};
use crate::redis::pairs;

/// What [`status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The stream.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// Entries in the stream (a request's postbacks share one entry).
    pub length: u64,
    /// Postbacks in those entries: waiting for an attempt.
    pub postbacks: u64,
    /// Entries no worker has read yet (null when the group does not exist,
    /// or Redis is older than 7.0); never more than the entries in the
    /// stream that no worker holds.
    pub lag: Option<u64>,
    /// Entries read by a worker and not yet finished.
    pub pending: u64,
    /// Age of the oldest pending entry, from its id.
    pub oldest_pending_age_ms: Option<u64>,
    /// Postbacks waiting in the retry schedule.
    pub scheduled_retries: u64,
    /// How long the most overdue scheduled retry has been due without
    /// being moved back into the stream (0 when none is due): the retry
    /// schedulers are behind or stopped when this grows.
    pub oldest_overdue_retry_ms: u64,
    /// Postbacks in the dead-letter stream.
    pub dead_letters: u64,
    /// The group's consumers.
    pub consumers: Vec<Consumer>,
}

/// One consumer of the group.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    /// Its name (HOST-PID or POSTBACK_CONSUMER).
    pub name: String,
    /// Entries it holds.
    pub pending: u64,
    /// Since it last read, in ms.
    pub idle_ms: u64,
}

/// The status of every partition, added up: counts summed, ages the
/// oldest, consumers merged by name (a worker consumes every partition).
pub async fn status_of_all(redis: &Client, partitions: &Partitions) -> Result<Status, Error> {
    let mut total: Option<Status> = None;
    for keys in partitions.all() {
        let one = status(redis, keys).await?;
        total = Some(match total {
            None => one,
            Some(sum) => sum.add(one),
        });
    }
    let mut total = total.unwrap_or_else(|| unreachable!("a queue has at least one partition"));
    if partitions.count() > 1 {
        let last = &partitions.all()[partitions.count() as usize - 1].stream;
        total.stream = format!("{} … {last}", partitions.shared().stream);
    }
    Ok(total)
}

impl Status {
    /// This status and another partition's, added up.
    fn add(mut self, other: Status) -> Status {
        self.length += other.length;
        self.postbacks += other.postbacks;
        self.lag = match (self.lag, other.lag) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.pending += other.pending;
        self.oldest_pending_age_ms = self.oldest_pending_age_ms.max(other.oldest_pending_age_ms);
        self.scheduled_retries += other.scheduled_retries;
        self.oldest_overdue_retry_ms = self.oldest_overdue_retry_ms.max(other.oldest_overdue_retry_ms);
        self.dead_letters += other.dead_letters;
        for consumer in other.consumers {
            match self.consumers.iter_mut().find(|c| c.name == consumer.name) {
                Some(known) => {
                    known.pending += consumer.pending;
                    known.idle_ms = known.idle_ms.min(consumer.idle_ms);
                }
                None => self.consumers.push(consumer),
            }
        }
        self
    }
}

/// Gathers the status of one partition (a handful of read-only commands).
pub async fn status(redis: &Client, keys: &Keys) -> Result<Status, Error> {
    let length: u64 = redis.xlen(&keys.stream).await?;
    let scheduled: Option<u64> = redis.get(&keys.scheduled).await?;
    let old_schedule: u64 = redis.zcard(&keys.retry).await?;
    let dead_letters: u64 = redis.xlen(&keys.dead).await?;
    let batched: Option<u64> = redis.get(&keys.batched).await?;
    let mut first_due = None;
    for index in [&keys.schedule, &keys.retry] {
        let first: Vec<(Value, f64)> = redis.zrange(index, 0, 0, None, false, None, true).await?;
        if let Some((_, due)) = first.first() {
            first_due = Some(first_due.map_or(*due, |d: f64| d.min(*due)));
        }
    }
    let oldest_overdue_retry_ms = first_due.map_or(0, |due| crate::time::now_ms().saturating_sub(due.max(0.0) as u64));
    let scheduled_retries = scheduled.unwrap_or(0) + old_schedule;
    let mut status = Status {
        stream: keys.stream.clone(),
        group: keys.group.clone(),
        length,
        postbacks: if length == 0 { 0 } else { length + batched.unwrap_or(0) },
        lag: None,
        pending: 0,
        oldest_pending_age_ms: None,
        scheduled_retries,
        oldest_overdue_retry_ms,
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
    status.pending = field_u64(&group, "pending").unwrap_or(0);
    // Redis works the lag out from the group's read counter, which a
    // replica promoted after its primary died can hold wrong (it then
    // reports thousands for an empty stream, for ever). Entries no worker
    // has read are entries in the stream that none holds, so no more than
    // that is reported, and 0 when nothing waits.
    status.lag = field_u64(&group, "lag").map(|lag| lag.min(length.saturating_sub(status.pending)));
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

fn field_str(fields: &[(String, Value)], key: &str) -> Option<String> {
    fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_string())
}

fn field_u64(fields: &[(String, Value)], key: &str) -> Option<u64> {
    fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64())
}

/// How long ago an entry id (`<ms>-<seq>`) was created.
fn id_age_ms(id: &str) -> Option<u64> {
    let ms: u64 = id.split('-').next()?.parse().ok()?;
    Some(crate::time::now_ms().saturating_sub(ms))
}
