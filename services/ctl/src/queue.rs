//! `status` and `pending`: the state of the stream and its consumer group.

use fred::prelude::*;
use postback_common::keys::Partitions;

use crate::output;

pub use postback_common::queue_status::{Status, status_of_all};

/// Prints the status as a table.
pub fn print_status(status: &Status) {
    let na = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    output::table(
        &[
            "stream",
            "group",
            "entries",
            "postbacks",
            "lag",
            "pending",
            "oldest pending",
            "scheduled retries",
            "dead letters",
        ],
        &[vec![
            status.stream.clone(),
            status.group.clone(),
            status.length.to_string(),
            status.postbacks.to_string(),
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

/// The oldest `count` pending entries of the partitions.
pub async fn pending(redis: &Client, partitions: &Partitions, count: u64) -> Result<Vec<Pending>, Error> {
    let mut rows = Vec::new();
    for keys in partitions.all() {
        rows.extend(postback_common::redis::pending_rows(redis, keys, ("-", "+"), count, None).await?);
    }
    rows.sort_by_key(|row| postback_common::redis::id_order(&row.id));
    rows.truncate(count as usize);
    Ok(rows)
}

/// Prints pending entries as a table.
pub fn print_pending(rows: &[Pending]) {
    let rows: Vec<_> = rows
        .iter()
        .map(|p| vec![p.id.clone(), p.consumer.clone(), output::age(p.idle_ms), p.deliveries.to_string()])
        .collect();
    output::table(&["entry", "consumer", "idle", "deliveries"], &rows);
}
