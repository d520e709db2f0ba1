//! `status` and `pending`: the state of the stream and its consumer group.

use fred::prelude::*;
use postback_common::keys::Keys;

use crate::output;

pub use postback_common::queue_status::{Status, status};

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
