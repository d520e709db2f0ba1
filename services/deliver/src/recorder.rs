//! Finishing steps, recorded in batches: every postback's end (delivered,
//! scheduled again, dead-lettered) goes down one channel per partition,
//! and this task records whatever has gathered in one call of the finish
//! script ([`crate::ledger`]).
//!
//! * A batch waits [`LINGER`] after its first step for others, so a busy
//!   worker pays one round trip for many postbacks of many entries, and
//!   counters and reference counts change once per batch. A delivered
//!   postback therefore waits about `LINGER` plus one round trip between
//!   its 2xx and its record: the window in which a crash makes it
//!   delivered again (see the README's guarantees).
//! * Retries of one entry with the same attempt count and the same delay
//!   become one version 5 value (`postback_common::records::retried`):
//!   one entry of the schedule, still referring to their endpoint record.
//!   Their jitter is drawn once per entry ([`crate::entry`]), so the
//!   postbacks of an entry that fail together come back together, as they
//!   came in. Not so postbacks held back by their host's rate: each has
//!   its own wait (its turn), kept to the millisecond (`later_ms`), and
//!   they come back one by one, each its own entry for whichever worker
//!   reads it. Rounded to their levels and together, they came back to
//!   one worker at once, which gave them turns behind its own queue while
//!   the other workers had nothing to send: the host got about a tenth
//!   less than its rate.
//! * Each step's sender learns whether it landed (false: the entry was
//!   taken over or is gone, or Redis stayed away until shutdown).
//! * When a call fails (Redis down, or refusing writes), the same batch is
//!   tried again with backoff (up to 2 s), one call per delay however many
//!   postbacks wait, and at once when the client reconnects; meanwhile
//!   [`Recorder::healthy`] says no, and turns wait before their attempts
//!   ([`crate::turn`]): nothing is attempted that could not be recorded.
//!   The answers it holds are kept, not sought again: the entries stay in
//!   this worker's hands ([`crate::intake::InFlight`]) until they land,
//!   within about 2 s of Redis taking writes again (after a failover, on
//!   the promoted replica, even one that lost the entries' read: the
//!   finish script's header). At shutdown a failing batch gets
//!   `give_up_after` more, then its entries stay pending and are handled
//!   again later (at-least-once, never at-most-once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postback_common::Postback;
use postback_common::records::dead_letter::DeadLetter;
use postback_common::records::request::EndpointRef;
use postback_common::records::retried::RetriedEntry;
use postback_common::records::stream_entry::StreamEntry;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::degraded::Degraded;
use crate::ledger::{Held, Ledger, Op, Position, Recorded, Step};
use crate::metrics::DeliverMetrics;

/// Most steps recorded in one round trip.
const MAX_BATCH: usize = 1_024;

/// How long a batch waits for more after its first step: a busy worker
/// then pays one round trip for several postbacks instead of one each.
/// It is part of the window in which a crash makes a delivered postback
/// delivered again.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

/// How a postback's turn ended, as the finish script records it.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// Delivered (or, for [`Position::Whole`], an entry let go of).
    Delivered,
    /// Back to the schedule.
    Retry {
        /// The level of the schedule (a delay of the ladder, in ms).
        delay_ms: u64,
        /// Attempts made so far, this turn's included.
        attempts: u32,
        /// When the first was made, ms since the epoch.
        first_ms: Option<u64>,
        /// What the schedule keeps of it.
        keep: Keep,
        /// How much longer than its level it waits, in ms: a postback held
        /// back by its host's rate keeps its exact turn; 0 for all others,
        /// which may wait in one value with other postbacks of their entry.
        later_ms: u64,
    },
    /// Given up.
    Dead {
        /// The letter.
        letter: DeadLetter,
        /// The record the letter's payload refers to on its own account.
        endpoint: Option<EndpointRef>,
    },
}

/// What the schedule keeps of a postback.
#[derive(Debug, Clone)]
pub(crate) enum Keep {
    /// The entry's own bytes (a single postback, wire version 1, 2 or 4).
    Own(Bytes),
    /// A postback of a version 3 or 5 entry: its row in a version 5 value.
    Row(Arc<Postback>),
}

/// One postback's end, and who waits to hear whether it landed.
struct Finish {
    entry: Arc<Held>,
    position: Position,
    end: End,
    landed: Option<oneshot::Sender<bool>>,
}

/// Handle for delivery tasks to record their postbacks' ends.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Finish>,
    healthy: watch::Receiver<bool>,
}

impl Recorder {
    /// Records `end` for the postback at `position` of `entry`; whether it
    /// landed (false: the entry is no longer this worker's, or the worker
    /// stopped before Redis took it).
    pub(crate) async fn record(&self, entry: Arc<Held>, position: Position, end: End) -> bool {
        let (landed, heard) = oneshot::channel();
        if self.tx.send(Finish { entry, position, end, landed: Some(landed) }).is_err() {
            // Stopped: the entry stays pending.
            return false;
        }
        heard.await.unwrap_or(false)
    }

    /// Whether the last call landed (or none failed yet).
    pub(crate) fn healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// Returns once calls land again (at once while they do).
    pub(crate) async fn wait_healthy(&self) {
        let mut healthy = self.healthy.clone();
        let _ = healthy.wait_for(|h| *h).await;
    }
}

/// What the recorder needs besides its channel.
pub(crate) struct Settings {
    /// Runs the finish script.
    pub(crate) ledger: Arc<Ledger>,
    /// Counts stale finishes.
    pub(crate) metrics: Arc<DeliverMetrics>,
    /// Counts and summarises refused calls.
    pub(crate) degraded: Arc<Degraded>,
    /// How long a failing batch is tried once stopping.
    pub(crate) give_up_after: Duration,
}

/// Starts the recorder. It ends once every [`Recorder`] is dropped, or
/// `stop` is cancelled (steps sent after that are refused), and everything
/// sent before has been recorded (or Redis stayed away for
/// `give_up_after` at the end).
pub(crate) fn spawn(settings: Settings, stop: CancellationToken) -> (Recorder, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (healthy_tx, healthy) = watch::channel(true);
    let task = tokio::spawn(run(settings, rx, healthy_tx, stop));
    (Recorder { tx, healthy }, task)
}

async fn run(
    settings: Settings,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    healthy: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let Settings { ledger, metrics, degraded, give_up_after } = settings;
    let mut reconnects = ledger.reconnects();
    let mut batch: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = stop.cancelled(), if !rx.is_closed() => {
                // Refuse later steps; record what was sent before.
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        if batch.len() < MAX_BATCH && !rx.is_closed() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(finish) => batch.push(finish),
                    Err(_) => break,
                }
            }
        }
        let by_entry = ops(&batch);
        let mut backoff = Backoff::default();
        let mut closing_since = None;
        let mut tries = 0u32;
        let recorded = loop {
            tries += 1;
            match ledger.record(by_entry.iter().map(|(entry, ops)| (&**entry, ops.clone()))).await {
                Ok(recorded) => {
                    degraded.landed();
                    healthy.send_if_modified(|h| !std::mem::replace(h, true));
                    if tries > 1 {
                        tracing::debug!(steps = batch.len(), tries, "recorded once Redis took the write");
                    }
                    break Some(recorded);
                }
                Err(e) => {
                    degraded.refused("finish", batch.len() as u64, &e);
                    healthy.send_if_modified(|h| std::mem::replace(h, false));
                    // Once the channel is closed the worker is shutting
                    // down: don't hold it up for ever, the entries stay
                    // pending.
                    if rx.is_closed() || stop.is_cancelled() {
                        let since = *closing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= give_up_after {
                            tracing::error!(
                                steps = batch.len(),
                                error = %e,
                                "cannot record finished postbacks before shutdown; their entries stay pending and \
                                 they will be handled again"
                            );
                            break None;
                        }
                    }
                    // A reconnect (a failover's new primary found) ends
                    // the wait: what this worker holds is recorded before
                    // another worker can read it afresh.
                    let reconnected = async {
                        if let Err(broadcast::error::RecvError::Closed) = reconnects.recv().await {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = reconnected => {}
                    }
                }
            }
        };
        if let Some(recorded) = &recorded {
            metrics.stale_finishes(recorded);
            if !recorded.forgotten.is_empty() {
                tracing::info!(
                    entries = recorded.forgotten.len(),
                    "recorded the outcomes of entries whose read Redis had lost (a failover): their postbacks are \
                     not sent again"
                );
            }
            for entry_id in &recorded.taken {
                tracing::warn!(
                    entry_id,
                    "another worker took this entry over while it was being delivered; leaving it to that worker \
                     (is POSTBACK_CLAIM_IDLE_MS too short?)"
                );
            }
        }
        for finish in batch.drain(..) {
            let landed = recorded.as_ref().is_some_and(|r| landed(r, &finish.entry.id));
            if let Some(tx) = finish.landed {
                let _ = tx.send(landed);
            }
        }
    }
}

/// Whether a step of entry `id` landed in a call that `recorded`.
fn landed(recorded: &Recorded, id: &str) -> bool {
    !recorded.taken.iter().chain(&recorded.gone).any(|other| other == id)
}

/// The batch as the finish script takes it: per entry, in the order first
/// seen, its delivered positions as one operation, its retries of the same
/// attempts and delay as one level entry, each letter as one.
fn ops(batch: &[Finish]) -> Vec<(Arc<Held>, Vec<Op>)> {
    let mut out: Vec<(Arc<Held>, Vec<Op>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut per_entry: Vec<Vec<&Finish>> = Vec::new();
    for finish in batch {
        match index.get(finish.entry.id.as_str()) {
            Some(&i) => per_entry[i].push(finish),
            None => {
                index.insert(&finish.entry.id, per_entry.len());
                per_entry.push(vec![finish]);
            }
        }
    }
    for finishes in per_entry {
        let entry = finishes[0].entry.clone();
        let mut ops = Vec::new();
        let delivered: Vec<Position> =
            finishes.iter().filter(|f| matches!(f.end, End::Delivered)).map(|f| f.position).collect();
        if !delivered.is_empty() {
            ops.push(Op { positions: delivered, step: Step::Delivered });
        }
        // Rows of a version 5 value, by level, attempts and exact wait (and
        // position, for a postback that waits alone).
        let mut groups: Vec<(GroupKey, Vec<Row>)> = Vec::new();
        for finish in &finishes {
            match &finish.end {
                End::Delivered => {}
                End::Retry { delay_ms, attempts, first_ms, keep: Keep::Own(bytes), later_ms } => ops.push(Op::one(
                    finish.position,
                    Step::Scheduled {
                        delay_ms: *delay_ms,
                        later_ms: *later_ms,
                        entry: StreamEntry::again(bytes.clone(), *attempts, *first_ms),
                        postbacks: 1,
                        endpoint: None,
                    },
                )),
                End::Retry { delay_ms, attempts, first_ms, keep: Keep::Row(postback), later_ms } => {
                    let alone = (*later_ms > 0).then_some(finish.position);
                    let key = (*delay_ms, *attempts, *later_ms, alone);
                    let row = (finish.position, *first_ms, postback);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, rows)) => rows.push(row),
                        None => groups.push((key, vec![row])),
                    }
                }
                End::Dead { letter, endpoint } => {
                    ops.push(Op::one(finish.position, Step::Dead { letter: letter.clone(), endpoint: *endpoint }))
                }
            }
        }
        for ((delay_ms, attempts, later_ms, _), mut rows) in groups {
            rows.sort_by_key(|(_, _, p)| p.id);
            rows.dedup_by_key(|(_, _, p)| p.id);
            ops.extend(scheduled_rows(&entry, (delay_ms, later_ms), attempts, &rows));
        }
        out.push((entry, ops));
    }
    out
}

/// Rows that go in one version 5 value share these: level, attempts,
/// `later_ms`, and the position of a row that waits alone.
type GroupKey = (u64, u32, u64, Option<Position>);

/// A postback scheduled again as a row: its position, its first attempt.
type Row<'a> = (Position, Option<u64>, &'a Arc<Postback>);

/// The operations for rows of `entry` scheduled together: one version 5
/// value, or (should the entry not say where its ids start) each row
/// alone as a single postback.
/// `(delay_ms, later_ms)` as in [`End::Retry`].
fn scheduled_rows(entry: &Held, (delay_ms, later_ms): (u64, u64), attempts: u32, rows: &[Row]) -> Vec<Op> {
    let first_ms = rows.iter().filter_map(|(_, ms, _)| *ms).min();
    if let (Some(first_id), Some(endpoint)) = (entry.first_id, entry.endpoint) {
        let postbacks: Vec<&Postback> = rows.iter().map(|(_, _, p)| &***p).collect();
        if let Ok(value) = RetriedEntry::encode(first_id, endpoint, attempts, first_ms, &postbacks) {
            return vec![Op {
                positions: rows.iter().map(|(position, _, _)| *position).collect(),
                step: Step::Scheduled {
                    delay_ms,
                    later_ms,
                    entry: StreamEntry::fresh(value),
                    postbacks: rows.len(),
                    endpoint: Some(endpoint),
                },
            }];
        }
    }
    rows.iter()
        .map(|(position, first_ms, postback)| {
            let bytes = postback_common::records::postback::encode(postback);
            Op::one(
                *position,
                Step::Scheduled {
                    delay_ms,
                    later_ms,
                    entry: StreamEntry::again(bytes, attempts, *first_ms),
                    postbacks: 1,
                    endpoint: None,
                },
            )
        })
        .collect()
}
