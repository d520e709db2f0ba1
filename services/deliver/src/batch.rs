//! A version 3 entry: several postbacks of one request, delivered side by
//! side and finished each on its own.
//!
//! The entry's endpoint record is looked up first (see [`crate::endpoints`]);
//! an entry whose record is missing or damaged cannot be delivered and is
//! dead-lettered whole, bytes as they are, as poison. Otherwise every
//! postback takes a worker slot (the first takes the one the entry was read
//! with), waiting at most `slot_patience` before it goes back to the
//! schedule without an attempt, and then takes the same path as a single
//! postback. One that is not delivered is scheduled or dead-lettered alone,
//! as a single postback (version 1 or 2, its endpoint inlined), while the
//! entry stays pending. Once all of them are finished the entry is
//! acknowledged, and its record let go of; if any step could not reach
//! Redis the entry stays pending and is handled again, whole, later.

use std::sync::Arc;

use bytes::Bytes;
use postback_common::request_entry::RequestEntry;
use postback_common::{Postback, wire};
use tokio::sync::OwnedSemaphorePermit;

use crate::endpoints::Lookup;
use crate::entry::Entry;
use crate::finish::{DeadLetter, Scope};
use crate::handle::{Outcome, Shared, bury_entry, busy, deliver, finish};
use crate::metrics::RescheduleReason;

/// Handles a version 3 entry; `poisoned` is set when the entry has been
/// handed to workers too often, and its postbacks are dead-lettered.
pub async fn handle(
    shared: &Arc<Shared>,
    entry: &Entry,
    batch: RequestEntry,
    poisoned: Option<String>,
    slot: OwnedSemaphorePermit,
) {
    let endpoint = match shared.endpoints.resolve(&shared.redis, &shared.endpoints_key, batch.endpoint).await {
        Ok(Lookup::Found(endpoint)) => endpoint,
        Ok(Lookup::Missing) => {
            let reason = format!("poison: endpoint record {} is not in {}", batch.endpoint, shared.endpoints_key);
            tracing::error!(reason, "dead-lettering an entry whose endpoint is gone");
            return bury_entry(shared, entry, reason, Some(batch.first_id.to_string())).await;
        }
        Ok(Lookup::Corrupt(why)) => {
            let reason = format!("poison: endpoint record {}: {why}", batch.endpoint);
            tracing::error!(reason, "dead-lettering an entry whose endpoint record is damaged");
            return bury_entry(shared, entry, reason, Some(batch.first_id.to_string())).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the endpoint record; the entry stays pending and will be attempted again");
            return;
        }
    };
    let postbacks = match batch.postbacks(&endpoint) {
        Ok(postbacks) => postbacks,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that does not match its endpoint record");
            return bury_entry(shared, entry, format!("poison: undecodable: {e}"), Some(batch.first_id.to_string()))
                .await;
        }
    };
    let finished = match poisoned {
        Some(reason) => {
            tracing::error!(
                reason,
                postbacks = postbacks.len(),
                "dead-lettering an entry that keeps failing its workers"
            );
            drop(slot);
            let mut all = true;
            for postback in &postbacks {
                let letter = DeadLetter {
                    reason: reason.clone(),
                    postback_id: Some(postback.id.to_string()),
                    attempts: entry.attempts,
                    ..DeadLetter::default()
                };
                all &= shared.finisher.bury(Scope::PostbackOf(entry), &letter, Some(&single(postback))).await;
            }
            all
        }
        None if postbacks.len() == 1 => one(shared, entry, &postbacks[0], Some(slot)).await,
        None => {
            let mut first = Some(slot);
            let turns = postbacks.iter().map(|postback| one(shared, entry, postback, first.take()));
            futures::future::join_all(turns).await.into_iter().all(|landed| landed)
        }
    };
    if finished {
        shared.finisher.ack_batch(entry, batch.endpoint, batch.count);
    }
}

/// One postback of the entry: a slot, its turn, and its own finish.
async fn one(shared: &Shared, entry: &Entry, postback: &Postback, slot: Option<OwnedSemaphorePermit>) -> bool {
    let slot = match slot {
        Some(slot) => Some(slot),
        None => tokio::time::timeout(shared.slot_patience, shared.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let outcome = match slot {
        Some(slot) => {
            // Boxed: a postback waiting for its slot holds a small future,
            // not the space of a whole attempt.
            let outcome = Box::pin(deliver(shared, postback, entry)).await;
            drop(slot);
            outcome
        }
        None => {
            tracing::debug!(postback_id = %postback.id, "worker at its limit; rescheduling without an attempt");
            busy(entry, RescheduleReason::WorkerBusy)
        }
    };
    let payload = match outcome {
        Outcome::Delivered => Bytes::new(),
        _ => single(postback),
    };
    finish(shared, Scope::PostbackOf(entry), payload, outcome).await
}

/// The postback on its own, as the schedule and the dead-letter stream keep it.
fn single(postback: &Postback) -> Bytes {
    Bytes::from(wire::encode(postback))
}
