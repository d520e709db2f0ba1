//! One stream entry in the worker's hands, until the last of its postbacks
//! is finished.
//!
//! 1. Decode it: a single postback (versions 1, 2 and 4), or the postbacks
//!    of a version 3 or 5 entry with its endpoint record looked up (a
//!    version 5 entry also carries its postbacks' attempts so far). An
//!    entry that is not a postback, or whose record is missing or damaged,
//!    cannot be delivered: it is dead-lettered whole, bytes as they are, as
//!    undecodable.
//! 2. If it was handed out before (re-read after a restart, or claimed from
//!    another worker), skip the postbacks whose outcome its entry already
//!    records (see [`crate::ledger`]).
//! 3. If it was handed out more than `POSTBACK_MAX_DELIVERIES` times, it is
//!    what keeps killing workers: its postbacks left are dead-lettered as
//!    poison, each alone.
//! 4. Otherwise each postback left takes its turn ([`crate::turn`]; the
//!    first with the worker slot the entry was read with, the others wait
//!    for one) and is finished on its own ([`crate::finish`]). The jitter
//!    of their retries is drawn once for the entry, and a retry waits a
//!    moment for the others of its entry, so those that fail together are
//!    scheduled together, as one entry of the schedule.
//!
//! Nothing here can stop the worker: whatever goes wrong with one entry
//! ends in a dead letter, or leaves the entry pending to be handled again.

use std::sync::Arc;

use bytes::Bytes;
use postback_common::Postback;
use postback_common::records::postback::{self as wire, Decoded};
use postback_common::records::request as request_entry;
use tokio::sync::OwnedSemaphorePermit;
use tracing::instrument;

use crate::endpoints::Lookup;
use crate::finish::{Finishing, Kept};
use crate::intake::Taken;
use crate::ledger::{Held, Position};
use crate::outcome::{DeadReason, Ending, Outcome, Tally};
use crate::reply::Entry;
use crate::shared::Shared;

/// An entry's postbacks, decoded.
struct Unpacked {
    held: Arc<Held>,
    /// Each with its position.
    postbacks: Vec<(usize, Arc<Postback>)>,
    /// The entry's bytes.
    payload: Bytes,
    /// A single postback keeps the entry's own bytes when it is retried or
    /// dead-lettered; those of a version 3 or 5 entry keep referring to
    /// their record.
    single: bool,
    /// The attempts its postbacks have made so far.
    tally: Tally,
}

impl Unpacked {
    /// What a retry or a dead letter of `postback` keeps.
    fn kept(&self, postback: &Arc<Postback>) -> Kept {
        if self.single { Kept::Own(self.payload.clone()) } else { Kept::Row(postback.clone()) }
    }
}

/// Handles one entry taken by the worker; `slot` is the worker slot it was
/// read with, given back when its first postback's turn is over; `since`
/// the reconnects counted when it was taken ([`crate::ownership`]).
#[instrument(name = "entry", skip_all, fields(entry_id = %taken.entry.id, deliveries = taken.deliveries))]
pub(crate) async fn handle(shared: Arc<Shared>, taken: Taken, slot: OwnedSemaphorePermit, since: u64) {
    let Taken { entry, deliveries } = taken;
    if !shared.ownership.still_ours(&entry.id, since).await {
        return;
    }
    let tally =
        Tally { attempts: entry.attempts, first_ms: entry.first_attempt_ms.filter(|ms| *ms > 0), ..Tally::default() };
    let poisoned = (deliveries > shared.max_deliveries)
        .then(|| DeadReason::Poison(format!("handed to workers {deliveries} times without being finished")));
    let Some(mut unpacked) = unpack(&shared, &entry, tally, poisoned.as_ref()).await else { return };
    let tally = unpacked.tally.clone();
    if deliveries > 1 && unpacked.held.postbacks > 1 && !skip_finished(&shared, &mut unpacked, &tally).await {
        return;
    }
    match poisoned {
        Some(reason) => {
            tracing::error!(%reason, postbacks = unpacked.postbacks.len(), "dead-lettering an entry that keeps failing its workers");
            let letters = unpacked
                .postbacks
                .iter()
                .map(|(i, p)| (Position::At(*i), p.id.to_string(), unpacked.kept(p)))
                .collect();
            shared.finisher.bury(&unpacked.held, &reason, &tally, letters).await;
        }
        None => fan_out(&shared, &unpacked, tally, slot, since).await,
    }
}

/// Step 1: the entry's postbacks; `None` when there is nothing to deliver
/// (the entry was finished whole: deleted while pending, or dead-lettered as
/// undeliverable, with `poisoned` as the reason when given) or when it must
/// stay pending (Redis could not be asked for its endpoint record).
async fn unpack(shared: &Shared, entry: &Entry, tally: Tally, poisoned: Option<&DeadReason>) -> Option<Unpacked> {
    let whole = |postbacks: usize| Arc::new(Held { id: entry.id.clone(), postbacks, endpoint: None, first_id: None });
    if !entry.has_fields {
        // Deleted while it was pending: nothing left to deliver.
        let ending = Ending { outcome: Outcome::Delivered, tally };
        let finishing =
            Finishing { position: Position::Whole, postback_id: None, kept: Kept::Whole(Bytes::new()), ending };
        shared.finisher.finish(&whole(1), finishing).await;
        return None;
    }
    let Some(payload) = entry.payload.clone() else {
        tracing::error!("dead-lettering an entry without a postback field");
        let reason = DeadReason::Undecodable("entry has no \"p\" field".into());
        bury_whole(shared, whole(1), reason, None, Bytes::new(), tally).await;
        return None;
    };
    match decode(shared, &entry.id, &payload).await {
        Ok(Ok(Contents { held, postbacks, single, so_far })) => {
            let tally = so_far.unwrap_or(tally);
            let postbacks = postbacks.into_iter().map(|(i, p)| (i, Arc::new(p))).collect();
            Some(Unpacked { held, postbacks, payload, single, tally })
        }
        Ok(Err((held, reason, first_id))) => {
            let reason = poisoned.cloned().unwrap_or(reason);
            bury_whole(shared, held, reason, first_id, payload, tally).await;
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
        let finishing =
            Finishing { position: Position::Whole, postback_id: None, kept: Kept::Whole(Bytes::new()), ending };
        shared.finisher.finish(held, finishing).await;
        return false;
    }
    true
}

/// How long a postback's retry waits for other postbacks of its entry to
/// fail too before it is recorded: those that fail together (their answers
/// a few ms apart) are then recorded in one batch and scheduled as one
/// value. Deliveries are recorded at once (their record closes the window
/// in which a crash repeats them); this is the window for a failed
/// attempt, well inside the recording window README "Guarantees" states.
const GATHER_RETRIES: std::time::Duration = std::time::Duration::from_millis(25);

/// Step 4: every postback left takes its turn and is finished on its own;
/// retries after [`GATHER_RETRIES`], with those of the entry that ended
/// meanwhile.
async fn fan_out(shared: &Shared, unpacked: &Unpacked, tally: Tally, slot: OwnedSemaphorePermit, since: u64) {
    let mut first = Some(slot);
    // One draw for the entry: its postbacks that fail together are
    // scheduled together.
    let jitter = fastrand::f64();
    let gathered = std::sync::Mutex::new(Vec::new());
    let turns = unpacked.postbacks.iter().map(|(i, postback)| {
        let slot = first.take();
        let tally = tally.clone();
        let gathered = &gathered;
        async move {
            // Boxed: a postback waiting for its slot holds a small future,
            // not the space of a whole attempt, and spawning the entry's
            // task copies little.
            let turn = crate::turn::take(shared, postback, tally, (&unpacked.held.id, since), slot, jitter);
            let ending = Box::pin(turn).await;
            let finishing = Finishing {
                position: Position::At(*i),
                postback_id: Some(postback.id.to_string()),
                kept: unpacked.kept(postback),
                ending,
            };
            if !matches!(finishing.ending.outcome, Outcome::Retry { .. }) {
                shared.finisher.finish(&unpacked.held, finishing).await;
                return;
            }
            let lock = || gathered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            lock().push(finishing);
            tokio::time::sleep(GATHER_RETRIES).await;
            // The first to wake records what gathered; the others find
            // their retries recorded already.
            let batch = std::mem::take(&mut *lock());
            futures::future::join_all(batch.into_iter().map(|f| shared.finisher.finish(&unpacked.held, f))).await;
        }
    });
    futures::future::join_all(turns).await;
}

/// An entry's postbacks with their positions, whether it is a single
/// postback, and (version 5) the attempts they made so far.
struct Contents {
    held: Arc<Held>,
    postbacks: Vec<(usize, Postback)>,
    single: bool,
    so_far: Option<Tally>,
}

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
    let held =
        |postbacks: usize, endpoint, first_id| Arc::new(Held { id: id.to_owned(), postbacks, endpoint, first_id });
    let decoded = match wire::decode_entry(payload) {
        Ok(Decoded::Single(postback)) => {
            let held = held(1, None, None);
            return Ok(Ok(Contents { held, postbacks: vec![(0, postback)], single: true, so_far: None }));
        }
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering an entry that is not a postback");
            // Not written by ingest, so not counted as holding several.
            return Ok(Err((held(1, None, None), DeadReason::Undecodable(e.to_string()), None)));
        }
    };
    let (address, first, so_far) = match &decoded {
        Decoded::Request(request) => (request.endpoint, request.first_id, None),
        Decoded::Retried(retried) => {
            let so_far = Tally { attempts: retried.attempts, first_ms: retried.first_attempt_ms, ..Tally::default() };
            (retried.endpoint, retried.first_id, Some(so_far))
        }
        Decoded::Single(_) => unreachable!("handled above"),
    };
    let whole = held(decoded.count(), Some(address), Some(first));
    let first_id = Some(match &decoded {
        Decoded::Retried(retried) => request_entry::nth_id(first, usize::from(retried.offsets[0])).to_string(),
        _ => first.to_string(),
    });
    let key = &shared.keys.endpoints;
    let endpoint = match shared.endpoints.resolve(&shared.redis, key, address).await? {
        Lookup::Found(endpoint) => endpoint,
        Lookup::Missing => {
            let reason = DeadReason::Undecodable(format!("endpoint record {address} is not in {key}"));
            tracing::error!(%reason, "dead-lettering an entry whose endpoint is gone");
            return Ok(Err((whole, reason, first_id)));
        }
        Lookup::Corrupt(why) => {
            let reason = DeadReason::Undecodable(format!("endpoint record {address}: {why}"));
            tracing::error!(%reason, "dead-lettering an entry whose endpoint record is damaged");
            return Ok(Err((whole, reason, first_id)));
        }
    };
    match decoded.postbacks(&endpoint) {
        Ok(postbacks) => {
            let postbacks = postbacks.into_iter().enumerate().collect();
            Ok(Ok(Contents { held: whole, postbacks, single: false, so_far }))
        }
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
    let finishing = Finishing { position: Position::Whole, postback_id, kept: Kept::Whole(payload), ending };
    shared.finisher.finish(&held, finishing).await;
}
