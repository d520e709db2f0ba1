//! Delivered postbacks, recorded in batches.
//!
//! A delivered postback is recorded in its entry by the finish script (see
//! [`crate::ledger`]); an entry whose last postback that was is
//! acknowledged and deleted in the same call. Delivery tasks send delivered
//! postbacks down a channel; this task waits [`LINGER`] after the first of
//! a batch, then records whatever has gathered in one call, so a busy
//! worker pays one round trip per batch, not per postback (a run at 2,000
//! postbacks a second made seven times fewer calls than with no wait). A
//! postback therefore waits about `LINGER` plus one round trip between its
//! 2xx and its record: the window in which a crash makes it delivered
//! again (see the README's guarantees).
//!
//! When Redis is down the batch is kept and retried with backoff; at
//! shutdown for at most `give_up_after`. Whatever is not recorded stays
//! pending and is delivered again later: at-least-once, never at-most-once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::ledger::{Held, Ledger, Position, Step};
use crate::metrics::DeliverMetrics;

/// Most delivered postbacks recorded in one round trip.
const MAX_BATCH: usize = 1_024;

/// How long a batch waits for more after its first postback: a busy worker
/// then pays one round trip for several postbacks instead of one each.
/// It is part of the window in which a crash makes a delivered postback
/// delivered again.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

/// One delivered postback.
#[derive(Debug, Clone)]
struct Delivered {
    entry: Arc<Held>,
    position: Position,
}

/// Handle for delivery tasks to report delivered postbacks.
#[derive(Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<Delivered>);

impl AckSender {
    /// Queues the postback at `position` of `entry` as delivered.
    pub(crate) fn delivered(&self, entry: Arc<Held>, position: Position) {
        // The acker outlives every sender, so this only fails after it has
        // stopped, when the entry simply stays pending.
        let _ = self.0.send(Delivered { entry, position });
    }
}

/// Starts the acker task. It ends once every [`AckSender`] is dropped, or
/// `stop` is cancelled (postbacks delivered after that stay pending), and
/// everything sent before has been recorded (or Redis stayed away for
/// `give_up_after` at the end).
pub(crate) fn spawn(
    ledger: Arc<Ledger>,
    metrics: Arc<DeliverMetrics>,
    give_up_after: Duration,
    stop: CancellationToken,
) -> (AckSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(ledger, metrics, rx, give_up_after, stop));
    (AckSender(tx), task)
}

async fn run(
    ledger: Arc<Ledger>,
    metrics: Arc<DeliverMetrics>,
    mut rx: mpsc::UnboundedReceiver<Delivered>,
    give_up_after: Duration,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = stop.cancelled(), if !rx.is_closed() => {
                // Refuse later acks; drain what was sent before.
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
                    Ok(delivered) => batch.push(delivered),
                    Err(_) => break,
                }
            }
        }
        let by_entry = group(&batch);
        let mut backoff = Backoff::default();
        let mut closing_since = None;
        loop {
            let steps = by_entry.iter().map(|(entry, positions)| {
                (&**entry, positions.iter().map(|p| (*p, Step::Delivered)).collect::<Vec<_>>())
            });
            match ledger.record(steps).await {
                Ok(recorded) => {
                    metrics.stale_finishes(&recorded);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, postbacks = batch.len(), "cannot record delivered postbacks yet; retrying");
                    // Once the channel is closed the worker is shutting down:
                    // don't hold it up for ever, the entries stay pending.
                    if rx.is_closed() {
                        let since = *closing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= give_up_after {
                            tracing::error!(
                                postbacks = batch.len(),
                                "giving up recording delivered postbacks at shutdown; their entries stay pending and \
                                 they will be delivered again"
                            );
                            break;
                        }
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        batch.clear();
    }
}

/// The batch's postbacks by entry, entries in the order first seen.
fn group(batch: &[Delivered]) -> Vec<(Arc<Held>, Vec<Position>)> {
    let mut out: Vec<(Arc<Held>, Vec<Position>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    for delivered in batch {
        match index.get(delivered.entry.id.as_str()) {
            Some(&i) => out[i].1.push(delivered.position),
            None => {
                index.insert(&delivered.entry.id, out.len());
                out.push((delivered.entry.clone(), vec![delivered.position]));
            }
        }
    }
    out
}
