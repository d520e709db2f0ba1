//! One stream entry in the worker's hands, until the last of its postbacks
//! is finished.
//!
//! 1. Decode it: a single postback (versions 1 and 2), or the postbacks of
//!    a version 3 entry with its endpoint record looked up. An entry that
//!    is not a postback, or whose record is missing or damaged, cannot be
//!    delivered: it is dead-lettered whole, bytes as they are, as poison.
//! 2. If it was handed out before (re-read after a restart, or claimed from
//!    another worker), skip the postbacks whose outcome its entry already
//!    records (see [`crate::ledger`]).
//! 3. If it was handed out more than `POSTBACK_MAX_DELIVERIES` times, it is
//!    what keeps killing workers: its postbacks left are dead-lettered as
//!    poison, each alone.
//! 4. Otherwise each postback left takes its turn ([`crate::turn`]; the
//!    first with the worker slot the entry was read with, the others wait
//!    for one) and is finished on its own ([`crate::finish`]).
//!
//! Nothing here can stop the worker: whatever goes wrong with one entry
//! ends in a dead letter, or leaves the entry pending to be handled again.

use std::sync::Arc;

use bytes::Bytes;
use postback_common::Postback;
use postback_common::records::postback::{self as wire, Decoded};
use tokio::sync::OwnedSemaphorePermit;
use tracing::instrument;

use crate::endpoints::Lookup;
use crate::finish::Finishing;
use crate::intake::Taken;
use crate::ledger::{Held, Position};
use crate::outcome::{DeadReason, Ending, Outcome, Tally};
use crate::reply::Entry;
use crate::shared::Shared;

/// An entry's postbacks, decoded.
struct Unpacked {
    held: Arc<Held>,
    /// Each with its position.
    postbacks: Vec<(usize, Postback)>,
    /// The entry's bytes.
    payload: Bytes,
    /// A single postback keeps the entry's own bytes when it is retried or
    /// dead-lettered; those of a version 3 entry are written alone.
    single: bool,
}

impl Unpacked {
    /// What a retry or a dead letter of `postback` keeps.
    fn bytes_of(&self, postback: &Postback) -> Bytes {
        if self.single { self.payload.clone() } else { Bytes::from(wire::encode(postback)) }
    }
}

/// Handles one entry taken by the worker; `slot` is the worker slot it was
/// read with, given back when its first postback's turn is over.
#[instrument(name = "entry", skip_all, fields(entry_id = %taken.entry.id, deliveries = taken.deliveries))]
pub(crate) async fn handle(shared: Arc<Shared>, taken: Taken, slot: OwnedSemaphorePermit) {
    let Taken { entry, deliveries } = taken;
    let tally =
        Tally { attempts: entry.attempts, first_ms: entry.first_attempt_ms.filter(|ms| *ms > 0), ..Tally::default() };
    let poisoned = (deliveries > shared.max_deliveries)
        .then(|| DeadReason::Poison(format!("handed to workers {deliveries} times without being finished")));
    let Some(mut unpacked) = unpack(&shared, &entry, &tally, poisoned.as_ref()).await else { return };
    if deliveries > 1 && unpacked.held.postbacks > 1 && !skip_finished(&shared, &mut unpacked, &tally).await {
        return;
    }
    match poisoned {
        Some(reason) => {
            tracing::error!(%reason, postbacks = unpacked.postbacks.len(), "dead-lettering an entry that keeps failing its workers");
            let letters = unpacked
                .postbacks
                .iter()
                .map(|(i, p)| (Position::At(*i), p.id.to_string(), unpacked.bytes_of(p)))
                .collect();
            shared.finisher.bury(&unpacked.held, &reason, &tally, letters).await;
        }
        None => fan_out(&shared, &unpacked, tally, slot).await,
    }
}

/// Step 1: the entry's postbacks; `None` when there is nothing to deliver
/// (the entry was finished whole: deleted while pending, or dead-lettered as
/// undeliverable, with `poisoned` as the reason when given) or when it must
/// stay pending (Redis could not be asked for its endpoint record).
async fn unpack(shared: &Shared, entry: &Entry, tally: &Tally, poisoned: Option<&DeadReason>) -> Option<Unpacked> {
    let whole = |postbacks: usize, endpoint| Arc::new(Held { id: entry.id.clone(), postbacks, endpoint });
    if !entry.has_fields {
        // Deleted while it was pending: nothing left to deliver.
        let ending = Ending { outcome: Outcome::Delivered, tally: tally.clone() };
        let finishing = Finishing { position: Position::Whole, postback_id: None, payload: Bytes::new(), ending };
        shared.finisher.finish(&whole(1, None), finishing).await;
        return None;
    }
    let Some(payload) = entry.payload.clone() else {
        tracing::error!("dead-lettering an entry without a postback field");
        let reason = DeadReason::Undecodable("entry has no \"p\" field".into());
        bury_whole(shared, whole(1, None), reason, None, Bytes::new(), tally.clone()).await;
        return None;
    };
    match decode(shared, &entry.id, &payload).await {
        Ok(Ok((held, postbacks, single))) => Some(Unpacked { held, postbacks, payload, single }),
        Ok(Err((held, reason, first_id))) => {
            let reason = poisoned.cloned().unwrap_or(reason);
            bury_whole(shared, held, reason, first_id, payload, tally.clone()).await;
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the entry's endpoint record; it stays pending and will be handled again");
            None
        }
    }
}

/// Step 2, for an entry handed out before: leaves out the postbacks whose
/// outcome the entry records. False when the entry is done with (nothing
/// was left; it is let go of) or must stay pending (Redis could not say).
async fn skip_finished(shared: &Shared, unpacked: &mut Unpacked, tally: &Tally) -> bool {
    let held = &unpacked.held;
    let bits: Result<Option<Bytes>, _> =
        fred::prelude::HashesInterface::hget(&shared.redis, &shared.keys.finished, &held.id).await;
    let done = match bits {
        Ok(bits) => {
            postback_common::records::finished::FinishedPositions::from_bytes(bits.as_deref().unwrap_or_default())
                .flags(held.postbacks)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which postbacks are finished; the entry stays pending and will be handled again");
            return false;
        }
    };
    unpacked.postbacks.retain(|(i, _)| !done[*i]);
    tracing::debug!(left = unpacked.postbacks.len(), of = held.postbacks, "handling the postbacks not finished before");
    if unpacked.postbacks.is_empty() {
        // Every outcome recorded, yet the entry is still there (a count
        // someone changed by hand): nothing left but to let it go.
        let ending = Ending { outcome: Outcome::Delivered, tally: tally.clone() };
        let finishing = Finishing { position: Position::Whole, postback_id: None, payload: Bytes::new(), ending };
        shared.finisher.finish(held, finishing).await;
        return false;
    }
    true
}

/// Step 4: every postback left takes its turn and is finished on its own.
async fn fan_out(shared: &Shared, unpacked: &Unpacked, tally: Tally, slot: OwnedSemaphorePermit) {
    let mut first = Some(slot);
    let turns = unpacked.postbacks.iter().map(|(i, postback)| {
        let slot = first.take();
        let tally = tally.clone();
        async move {
            // Boxed: a postback waiting for its slot holds a small future,
            // not the space of a whole attempt, and spawning the entry's
            // task copies little.
            let ending = Box::pin(crate::turn::take(shared, postback, tally, &unpacked.held.id, slot)).await;
            let payload = if ending.outcome == Outcome::Delivered { Bytes::new() } else { unpacked.bytes_of(postback) };
            let finishing =
                Finishing { position: Position::At(*i), postback_id: Some(postback.id.to_string()), payload, ending };
            shared.finisher.finish(&unpacked.held, finishing).await;
        }
    });
    futures::future::join_all(turns).await;
}

/// An entry's postbacks with their positions, and whether it is a single
/// postback.
type Contents = (Arc<Held>, Vec<(usize, Postback)>, bool);

/// Why an entry cannot be delivered: its whole self, the reason, and the
/// first postback's id when known.
type Undeliverable = (Arc<Held>, DeadReason, Option<String>);

/// The entry's postbacks, or why it cannot be delivered; a Redis error when
/// its endpoint record could not be read.
async fn decode(
    shared: &Shared,
    id: &str,
    payload: &Bytes,
) -> Result<Result<Contents, Undeliverable>, fred::error::Error> {
    let held = |postbacks: usize, endpoint| Arc::new(Held { id: id.to_owned(), postbacks, endpoint });
    let request = match wire::decode_entry(payload) {
        Ok(Decoded::Single(postback)) => {
            return Ok(Ok((held(1, None), vec![(0, postback)], true)));
        }
        Ok(Decoded::Request(request)) => request,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that is not a postback");
            // Not written by ingest, so not counted as holding several.
            return Ok(Err((held(1, None), DeadReason::Undecodable(e.to_string()), None)));
        }
    };
    let whole = held(request.count, Some(request.endpoint));
    let first_id = Some(request.first_id.to_string());
    let key = &shared.keys.endpoints;
    let endpoint = match shared.endpoints.resolve(&shared.redis, key, request.endpoint).await? {
        Lookup::Found(endpoint) => endpoint,
        Lookup::Missing => {
            let reason = DeadReason::Undecodable(format!("endpoint record {} is not in {key}", request.endpoint));
            tracing::error!(%reason, "dead-lettering an entry whose endpoint is gone");
            return Ok(Err((whole, reason, first_id)));
        }
        Lookup::Corrupt(why) => {
            let reason = DeadReason::Undecodable(format!("endpoint record {}: {why}", request.endpoint));
            tracing::error!(%reason, "dead-lettering an entry whose endpoint record is damaged");
            return Ok(Err((whole, reason, first_id)));
        }
    };
    match request.postbacks(&endpoint) {
        Ok(postbacks) => Ok(Ok((whole, postbacks.into_iter().enumerate().collect(), false))),
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that does not match its endpoint record");
            Ok(Err((whole, DeadReason::Undecodable(e.to_string()), first_id)))
        }
    }
}

/// Dead-letters a whole entry, its bytes as they are.
async fn bury_whole(
    shared: &Shared,
    held: Arc<Held>,
    reason: DeadReason,
    postback_id: Option<String>,
    payload: Bytes,
    tally: Tally,
) {
    let ending = Ending { outcome: Outcome::Dead(reason), tally };
    shared.finisher.finish(&held, Finishing { position: Position::Whole, postback_id, payload, ending }).await;
}
