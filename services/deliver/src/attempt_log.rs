//! The delivery log: a capped Redis stream (`<stream>:log`) with one entry
//! per attempt, so on-call can see a postback's recent attempts with
//! `postbackctl attempts ID` without access to the workers' log files.
//!
//! It is a log, not data: it is capped (`POSTBACK_ATTEMPT_LOG_MAXLEN`,
//! approximate trimming, so the oldest entries go first) and written in
//! batches by one task per worker, off the delivery path: the first entry
//! of a batch waits [`LINGER`] for others, and a batch is one script call
//! (`lua/log.lua`), so a worker delivering a few postbacks a second sends
//! Redis a few log writes a second, not one per attempt. If Redis is away
//! or refuses them the entries of that moment are dropped (counted and
//! summarised by [`crate::degraded`]), never retried at the cost of
//! delivery. It is also the first thing shed when Redis fills up: at
//! `POSTBACK_REDIS_MEMORY_LIMIT_PERCENT` less 10 points of maxmemory,
//! nothing is written to it until memory falls back below that.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use postback_common::redis_memory::MemoryWatch;
use postback_common::script::Script;
use tokio::sync::mpsc;

use crate::degraded::Degraded;

/// Entries written per round trip, at most.
const BATCH: usize = 512;

/// How long the first entry of a batch waits for others.
const LINGER: Duration = Duration::from_millis(250);

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

    /// Starts the writer task for stream `key`, capped at `maxlen` entries
    /// and shedding as `shed` says.
    pub(crate) fn spawn(
        redis: Client,
        key: String,
        maxlen: u64,
        shed: Shedding,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8 * BATCH);
        (Self(Some(tx)), tokio::spawn(write(redis, key, maxlen, shed, rx)))
    }

    /// Queues an attempt; dropped if the writer is too far behind.
    pub(crate) fn record(&self, attempt: LoggedAttempt) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(attempt);
        }
    }
}

/// When the log gives way to postbacks.
pub(crate) struct Shedding {
    /// Redis's memory use.
    pub(crate) memory: Arc<MemoryWatch>,
    /// The share of maxmemory, in percent, from which nothing is written.
    pub(crate) at_percent: u8,
    /// Where dropped entries are counted.
    pub(crate) degraded: Arc<Degraded>,
}

async fn write(redis: Client, key: String, maxlen: u64, shed: Shedding, mut rx: mpsc::Receiver<LoggedAttempt>) {
    let script = Script::new(include_str!("lua/log.lua"));
    let mut batch = Vec::with_capacity(BATCH);
    let mut shedding = false;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                () = &mut linger => break,
                got = rx.recv_many(&mut batch, room) => if got == 0 { break },
            }
        }
        if shed.memory.at_or_over(shed.at_percent) != shedding {
            shedding = !shedding;
            let percent = shed.at_percent;
            if shedding {
                tracing::warn!(percent, "Redis memory is high: the delivery log is not written until it falls back");
            } else {
                tracing::info!(percent, "Redis memory is below the mark again: writing the delivery log");
            }
        }
        let n = batch.len() as u64;
        if shedding {
            shed.degraded.skipped_log(n);
            batch.clear();
            continue;
        }
        let mut args: Vec<Value> = Vec::with_capacity(1 + batch.len() * 17);
        args.push(maxlen.to_string().into());
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
            args.push((fields.len() as i64).into());
            for (name, value) in fields {
                args.push(name.into());
                args.push(value.into());
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), script.call::<_, Value>(&redis, &[&key], args)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => shed.degraded.refused("attempt_log", n, &e),
            Err(_) => shed.degraded.refused("attempt_log", n, &"no answer within 5 s"),
        }
    }
}
