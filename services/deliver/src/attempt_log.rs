//! The delivery log: a capped Redis stream (`<stream>:log`) with one entry
//! per attempt, so on-call can see a postback's recent attempts with
//! `postbackctl attempts ID` without access to the workers' log files.
//!
//! It is a log, not data: it is capped (`POSTBACK_ATTEMPT_LOG_MAXLEN`,
//! approximate trimming, so the oldest entries go first) and written in
//! batches by one task per worker, off the delivery path. If Redis is away
//! the entries of that moment are dropped (after a warning), never retried
//! at the cost of delivery.

use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::{XCapKind, XCapTrim};
use tokio::sync::mpsc;

/// Entries written per round trip, at most.
const BATCH: usize = 512;

/// One attempt, as written to the log.
#[derive(Debug, Clone)]
pub(crate) struct LoggedAttempt {
    /// The postback's id.
    pub(crate) postback_id: String,
    /// Attempt number.
    pub(crate) attempt: u32,
    /// RFC 3339 time of the attempt.
    pub(crate) at: String,
    /// HTTP status, if any.
    pub(crate) status: Option<u16>,
    /// delivered, retry or dead.
    pub(crate) outcome: &'static str,
    /// Milliseconds to the response.
    pub(crate) response_time_ms: u64,
    /// The URL sent to.
    pub(crate) url: String,
    /// Why it failed, if it did.
    pub(crate) error: Option<String>,
}

/// Handle for attempts to be logged; cheap to clone.
#[derive(Clone)]
pub(crate) struct AttemptLog(Option<mpsc::Sender<LoggedAttempt>>);

impl AttemptLog {
    /// A log that writes nothing (`POSTBACK_ATTEMPT_LOG_MAXLEN=0`).
    pub(crate) fn disabled() -> Self {
        Self(None)
    }

    /// Starts the writer task for stream `key`, capped at `maxlen` entries.
    pub(crate) fn spawn(redis: Client, key: String, maxlen: u64) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8 * BATCH);
        (Self(Some(tx)), tokio::spawn(write(redis, key, maxlen, rx)))
    }

    /// Queues an attempt; dropped if the writer is too far behind.
    pub(crate) fn record(&self, attempt: LoggedAttempt) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(attempt);
        }
    }
}

async fn write(redis: Client, key: String, maxlen: u64, mut rx: mpsc::Receiver<LoggedAttempt>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let pipeline = redis.pipeline();
        for a in batch.drain(..) {
            let mut fields: Vec<(&str, String)> = vec![
                ("postback_id", a.postback_id),
                ("attempt", a.attempt.to_string()),
                ("at", a.at),
                ("outcome", a.outcome.to_owned()),
                ("response_time_ms", a.response_time_ms.to_string()),
                ("url", a.url),
            ];
            if let Some(status) = a.status {
                fields.push(("status", status.to_string()));
            }
            if let Some(error) = a.error {
                fields.push(("error", error));
            }
            let cap = (XCapKind::MaxLen, XCapTrim::AlmostExact, maxlen as i64, None::<i64>);
            let _: Result<(), _> = pipeline.xadd(&key, false, cap, "*", fields).await;
        }
        let sent = tokio::time::timeout(Duration::from_secs(5), pipeline.all::<Vec<Value>>()).await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!("could not write the delivery log to Redis; those entries are dropped");
        }
    }
}
