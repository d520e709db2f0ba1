//! The delivery log: a capped Redis stream (`<stream>:log`) of every
//! attempt, so on-call can see a postback's recent attempts with
//! `postbackctl attempts ID` without access to the workers' log files.
//! The entries' layout: `postback_common::records::log_entry`.
//!
//! It is a log, not data: capped at about `POSTBACK_ATTEMPT_LOG_MAXLEN`
//! attempts, and written in batches by one task per worker, off the
//! delivery path: the first attempt of a batch waits [`LINGER`] for others,
//! and a batch is one stream entry, one `XADD`, whatever its size: an
//! attempt costs Redis a field and a value, not an entry and a command.
//! The stream is trimmed (approximately, by whole nodes) to the cap divided
//! by this worker's recent batch size, so it holds about the cap in
//! attempts. If Redis is away or refuses them the attempts of that moment
//! are dropped (counted and summarised by [`crate::degraded`]), never
//! retried at the cost of delivery. It is also the first thing shed when
//! Redis fills up: at `POSTBACK_REDIS_MEMORY_LIMIT_PERCENT` less 10 points
//! of maxmemory, nothing is written to it until memory falls back below
//! that.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::records::log_entry::LogEntry;
use postback_common::redis_memory::MemoryWatch;
use tokio::sync::mpsc;

use crate::degraded::Degraded;

/// Attempts written per entry, at most.
const BATCH: usize = 512;

/// How long the first attempt of a batch waits for others.
const LINGER: Duration = Duration::from_millis(250);

/// Handle for attempts to be logged; cheap to clone.
#[derive(Clone)]
pub(crate) struct AttemptLog(Option<mpsc::Sender<LogEntry>>);

impl AttemptLog {
    /// A log that writes nothing (`POSTBACK_ATTEMPT_LOG_MAXLEN=0`).
    pub(crate) fn disabled() -> Self {
        Self(None)
    }

    /// Starts the writer task for stream `key`, capped at about `maxlen`
    /// attempts and shedding as `shed` says.
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
    pub(crate) fn record(&self, attempt: LogEntry) {
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

async fn write(redis: Client, key: String, maxlen: u64, shed: Shedding, mut rx: mpsc::Receiver<LogEntry>) {
    let xadd = CustomCommand::new_static("XADD", ClusterHash::FirstKey, false);
    let mut batch = Vec::with_capacity(BATCH);
    let mut shedding = false;
    // Attempts per entry lately, in sixteenths (one at first), for the cap
    // in entries.
    let mut per_entry = 16u64;
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
        per_entry = (per_entry * 7 + 16 * n).div_ceil(8);
        let entries = (maxlen * 16).div_ceil(per_entry.max(16)).max(1);
        let mut args: Vec<Value> = Vec::with_capacity(5 + 2 * batch.len());
        args.extend([key.as_str().into(), "MAXLEN".into(), "~".into(), (entries as i64).into(), "*".into()]);
        for attempt in batch.drain(..) {
            let (name, value) = attempt.field();
            args.push(Value::Bytes(name));
            args.push(Value::Bytes(value));
        }
        match tokio::time::timeout(Duration::from_secs(5), redis.custom::<Value, _>(xadd.clone(), args)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => shed.degraded.refused("attempt_log", n, &e),
            Err(_) => {
                let timeout = fred::error::Error::new(fred::error::ErrorKind::Timeout, "no answer within 5 s");
                shed.degraded.refused("attempt_log", n, &timeout)
            }
        }
    }
}
