//! Acknowledging finished entries, in batches.
//!
//! Each finished entry is XACKed (it leaves the group's pending list) and
//! XDELed (it leaves the stream, which therefore holds only what is not yet
//! delivered and never needs a length cap). A version 3 entry also lets go
//! of its endpoint record (see `lua/ack.lua`). Delivery tasks send finished
//! entries down a channel; this task finishes whatever has gathered in one
//! script call, so a busy worker pays one round trip per batch, not per
//! postback.
//!
//! When Redis is down the batch is kept and retried with backoff. If the
//! worker dies before an ack lands, the entry stays pending and is delivered
//! again later: delivery is at-least-once, never at-most-once.

use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::request_entry::EndpointRef;
use postback_common::script::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest number of entries acknowledged in one round trip.
pub const MAX_BATCH: usize = 1_024;

/// One finished entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Its stream entry id.
    pub entry_id: String,
    /// For a version 3 entry: the record it refers to, and its postbacks.
    pub batch: Option<(EndpointRef, usize)>,
}

/// Handle for delivery tasks to report finished entries.
#[derive(Clone)]
pub struct AckSender(mpsc::UnboundedSender<Ack>);

impl AckSender {
    /// Queues an entry for XACK + XDEL.
    pub fn ack(&self, ack: Ack) {
        // The acker outlives every sender, so this only fails after it has
        // stopped, when the entry simply stays pending.
        let _ = self.0.send(ack);
    }
}

/// Starts the acker task. It ends once every [`AckSender`] is dropped, or
/// `stop` is cancelled (entries finished after that stay pending), and
/// everything sent before has been acknowledged (or Redis stayed away for
/// `give_up_after` at the end).
pub fn spawn(
    client: Client,
    keys: Keys,
    give_up_after: Duration,
    stop: CancellationToken,
) -> (AckSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(client, keys, rx, give_up_after, stop));
    (AckSender(tx), task)
}

async fn run(
    client: Client,
    keys: Keys,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    give_up_after: Duration,
    stop: CancellationToken,
) {
    let script = Script::new(include_str!("lua/ack.lua"));
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
        let mut delay = Duration::from_millis(50);
        let mut closing_since = None;
        loop {
            match ack(&client, &keys, &script, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.len(), "acknowledge failed; retrying");
                    // Once the channel is closed the worker is shutting down:
                    // don't hold it up for ever, the entries stay pending.
                    if rx.is_closed() {
                        let since = *closing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= give_up_after {
                            tracing::error!(
                                entries = batch.len(),
                                "giving up acknowledging at shutdown; entries stay pending and will be delivered again"
                            );
                            break;
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        batch.clear();
    }
}

async fn ack(client: &Client, keys: &Keys, script: &Script, acks: &[Ack]) -> Result<(), Error> {
    let mut args: Vec<Value> = Vec::with_capacity(1 + 3 * acks.len());
    args.push(keys.group.as_str().into());
    for ack in acks {
        args.push(ack.entry_id.as_str().into());
        match ack.batch {
            Some((endpoint, postbacks)) => {
                args.push(endpoint.to_string().into());
                args.push((postbacks.saturating_sub(1) as i64).into());
            }
            None => {
                args.push("".into());
                args.push(0.into());
            }
        }
    }
    let script_keys = [&*keys.stream, &keys.endpoints, &keys.endpoint_refs, &keys.batched];
    let _: i64 = script.call(client, &script_keys, args).await?;
    Ok(())
}
