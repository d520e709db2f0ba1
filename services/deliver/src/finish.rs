//! Finishing an entry, whichever way its attempt went: acknowledge it
//! (delivered), schedule it again (retry), or move it to the dead-letter
//! stream (given up). Each is one atomic step in Redis (see `lua/`), so an
//! entry is never lost and never in two places.
//!
//! A version 3 entry holds several postbacks. Each one that is not
//! delivered is scheduled or dead-lettered on its own, as a single postback
//! that carries its endpoint (version 1 or 2), while the entry stays
//! pending; the entry is acknowledged once all of them are finished. A
//! worker that dies in between leaves the entry pending, and whoever takes
//! it over handles all of its postbacks again (at-least-once).
//!
//! When Redis does not answer, a step is retried with backoff for a while;
//! if it still fails the entry stays pending and is attempted again later,
//! by this worker after a restart or by another after POSTBACK_CLAIM_IDLE_MS
//! (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio::sync::Notify;

use crate::acker::{Ack, AckSender};
use crate::entry::Entry;
use crate::metrics::{DeliverMetrics, RescheduleReason};
use postback_common::request_entry::EndpointRef;

/// How long a reschedule or a dead-lettering keeps trying to reach Redis.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// What the dead-letter entry records besides the original payload.
#[derive(Debug, Clone, Default)]
pub struct DeadLetter {
    /// Why the postback will not be delivered.
    pub reason: String,
    /// Its id, when it could be decoded.
    pub postback_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When the first and the last attempt were made (ms since the epoch).
    pub first_attempt_ms: Option<u64>,
    /// When the last attempt was made.
    pub last_attempt_ms: Option<u64>,
    /// The last HTTP status, if any.
    pub last_status: Option<u16>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// Finishes entries.
pub struct Finisher {
    redis: Client,
    keys: Keys,
    acks: AckSender,
    reschedule: Script,
    bury: Script,
    metrics: Arc<DeliverMetrics>,
    /// Woken when a retry is scheduled, so the scheduler can move it back in
    /// time even when it is due sooner than the scheduler's next look.
    pub scheduled: Arc<Notify>,
}

impl Finisher {
    /// A finisher on the command client.
    pub fn new(redis: Client, keys: Keys, acks: AckSender, metrics: Arc<DeliverMetrics>) -> Self {
        Self {
            redis,
            keys,
            acks,
            reschedule: Script::new(include_str!("lua/reschedule.lua")),
            bury: Script::new(include_str!("lua/bury.lua")),
            metrics,
            scheduled: Arc::new(Notify::new()),
        }
    }

    /// Delivered: XACK + XDEL, batched by the acker.
    pub fn ack(&self, entry: &Entry) {
        self.acks.ack(Ack { entry_id: entry.id.clone(), batch: None });
    }

    /// Every postback of a version 3 entry is finished: XACK + XDEL, and
    /// let go of its endpoint record.
    pub fn ack_batch(&self, entry: &Entry, endpoint: EndpointRef, postbacks: usize) {
        self.acks.ack(Ack { entry_id: entry.id.clone(), batch: Some((endpoint, postbacks)) });
    }

    /// Schedules a postback (`payload`, a single postback) again after
    /// `delay`, recording `attempts` made so far and when the first was
    /// made. Whether it landed: when it did not, the entry must stay pending.
    pub async fn reschedule(
        &self,
        scope: Scope<'_>,
        payload: &Bytes,
        (attempts, first_attempt_ms): (u32, u64),
        delay: Duration,
        reason: RescheduleReason,
    ) -> bool {
        let entry = scope.entry();
        let mut member = format!("{attempts}:{first_attempt_ms}:").into_bytes();
        member.extend_from_slice(payload);
        let member = Bytes::from(member);
        let keys = [self.keys.stream.as_str(), self.keys.retry.as_str()];
        let done = persist("schedule a retry", &entry.id, || async {
            let args: Vec<Value> = vec![
                self.keys.group.as_str().into(),
                scope.finished_entry_id().into(),
                (delay.as_millis() as i64).into(),
                Value::Bytes(member.clone()),
            ];
            self.reschedule.call::<_, i64>(&self.redis, &keys, args).await.map(drop)
        })
        .await;
        if done {
            self.metrics.rescheduled(reason);
            self.scheduled.notify_one();
        }
        done
    }

    /// Moves a postback to the dead-letter stream with `letter`; `payload`
    /// is kept in the letter (the entry's own bytes, or a single postback
    /// of a version 3 entry). Whether it landed.
    pub async fn bury(&self, scope: Scope<'_>, letter: &DeadLetter, payload: Option<&Bytes>) -> bool {
        let keys = [self.keys.stream.as_str(), self.keys.dead.as_str()];
        let done = persist("dead-letter", &scope.entry().id, || async {
            let args = dead_letter_args(&self.keys.group, scope, letter, payload);
            self.bury.call::<_, String>(&self.redis, &keys, args).await.map(drop)
        })
        .await;
        if done {
            self.metrics.dead_lettered(&letter.reason);
        }
        done
    }
}

/// What a finishing step finishes besides the postback itself.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The whole entry, acknowledged and deleted in the same step.
    Entry(&'a Entry),
    /// One postback of a version 3 entry, which stays pending.
    PostbackOf(&'a Entry),
}

impl<'a> Scope<'a> {
    /// The stream entry concerned.
    pub fn entry(self) -> &'a Entry {
        match self {
            Scope::Entry(entry) | Scope::PostbackOf(entry) => entry,
        }
    }

    /// The id the script acknowledges, or `""` for none.
    fn finished_entry_id(self) -> &'a str {
        match self {
            Scope::Entry(entry) => &entry.id,
            Scope::PostbackOf(_) => "",
        }
    }
}

/// The bury script's arguments: group, the entry id to finish (or `""`),
/// then the dead-letter entry's fields. Times are RFC 3339 text, so
/// `redis-cli XRANGE` reads well.
fn dead_letter_args(group: &str, scope: Scope<'_>, letter: &DeadLetter, payload: Option<&Bytes>) -> Vec<Value> {
    let time = |ms: Option<u64>| ms.map(|ms| postback_common::time::rfc3339_ms(postback_common::time::from_ms(ms)));
    let entry = scope.entry();
    let mut args: Vec<Value> = vec![group.into(), scope.finished_entry_id().into()];
    let mut field = |name: &'static str, value: Value| {
        args.push(name.into());
        args.push(value);
    };
    field("reason", letter.reason.as_str().into());
    if let Some(id) = &letter.postback_id {
        field("postback_id", id.as_str().into());
    }
    field("attempts", i64::from(letter.attempts).into());
    if let Some(at) = time(letter.first_attempt_ms) {
        field("first_attempt_at", at.into());
    }
    if let Some(at) = time(letter.last_attempt_ms) {
        field("last_attempt_at", at.into());
    }
    if let Some(status) = letter.last_status {
        field("last_status", i64::from(status).into());
    }
    if let Some(error) = &letter.last_error {
        field("last_error", error.as_str().into());
    }
    field("entry_id", entry.id.as_str().into());
    if let Some(payload) = payload {
        field("p", Value::Bytes(payload.clone()));
    }
    args
}

/// Runs `step` until it succeeds, backing off, for up to [`GIVE_UP_AFTER`].
async fn persist<F, Fut>(what: &str, entry_id: &str, step: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match step().await {
            Ok(()) => return true,
            Err(e) if started.elapsed() < GIVE_UP_AFTER => {
                tracing::warn!(entry_id, error = %e, "cannot {what} yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(entry_id, error = %e, "cannot {what}; the entry stays pending and will be attempted again");
                return false;
            }
        }
    }
}
