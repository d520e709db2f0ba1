//! Appending a request's postbacks to the stream: one command, all or none.
//!
//! The postbacks are packed into version 3 entries (see
//! `postback_common::request_entry`): usually one entry for the whole request, with
//! its endpoint record kept once in `<stream>:endpoints`. The XADDs and the
//! record bookkeeping of one request run inside one Lua script
//! (`enqueue.lua`, sent with EVALSHA): Redis applies all of them or none, so
//! a request is never half-enqueued and an entry is never without its
//! record, and the 202 is sent only once the script has returned every entry
//! id. The same script refuses the request when the backlog (postbacks in
//! the stream plus scheduled retries) has reached `POSTBACK_MAX_BACKLOG`, so
//! a stalled delivery side cannot run Redis out of memory.
//!
//! Records are content-addressed by 64 bits of SHA-256. Should two records
//! ever share an address, the script writes nothing and says so, and the
//! request is enqueued again as single postbacks, which carry their endpoint
//! themselves.
//!
//! The command is sent "fail fast" and never re-sent: while the connection is
//! down it fails at once instead of waiting in the client's queue, because a
//! command that outlived its 503 and ran after a reconnect would enqueue
//! postbacks the caller was told were refused (and will send again).
//!
//! With `POSTBACK_INGEST_WAIT_REPLICAS` set, a WAIT follows: the 202 then
//! also means that many replicas hold the postbacks.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;
use postback_common::request_entry::{self, Packed};
use postback_common::script::Script;
use postback_common::{Postback, wire};

/// Why the postbacks were not enqueued. In every case the caller gets a 503
/// and nothing was accepted (short of a reply lost after Redis applied it,
/// which no client can rule out; see the README on at-least-once).
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The client has no live connection; not even tried.
    #[error("not connected to Redis")]
    NotConnected,
    /// The backlog is at `POSTBACK_MAX_BACKLOG`.
    #[error("backlog full: {backlog} postbacks waiting (POSTBACK_MAX_BACKLOG {max})")]
    BacklogFull {
        /// Postbacks waiting.
        backlog: u64,
        /// The limit.
        max: u64,
    },
    /// Fewer replicas than `POSTBACK_INGEST_WAIT_REPLICAS` confirmed in time.
    /// The postbacks are on the primary and will be delivered; the caller
    /// is told 503 all the same, because the promise asked for is not kept.
    #[error("only {got} of {want} replicas confirmed the write")]
    Replicas {
        /// Replicas that confirmed.
        got: i64,
        /// Replicas asked for.
        want: u32,
    },
    /// Redis answered with an error (OOM, read-only replica, timeout...).
    #[error("Redis error: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered, but not with one id per entry.
    #[error("the enqueue script returned {got} ids for {want} entries")]
    Mismatch {
        /// Ids returned.
        got: usize,
        /// Entries sent.
        want: usize,
    },
}

/// Runs the enqueue script (and WAIT, when asked to).
#[derive(Debug, Clone)]
pub struct Enqueuer {
    script: Script,
    options: Options,
    max_backlog: u64,
    wait_replicas: u32,
    timeout: Duration,
}

impl Enqueuer {
    /// An enqueuer whose commands give up after `timeout`, refusing work
    /// once `max_backlog` postbacks wait (0: never), and waiting for
    /// `wait_replicas` replicas (0: none).
    pub fn new(timeout: Duration, max_backlog: u64, wait_replicas: u32) -> Self {
        let options = Options { fail_fast: true, max_attempts: Some(1), timeout: Some(timeout), ..Options::default() };
        Self { script: Script::new(include_str!("enqueue.lua")), options, max_backlog, wait_replicas, timeout }
    }

    /// Appends the postbacks to the stream; returns the entry ids.
    pub async fn enqueue(
        &self,
        client: &Client,
        keys: &Keys,
        postbacks: &[Postback],
    ) -> Result<Vec<String>, EnqueueError> {
        if !client.is_connected() {
            return Err(EnqueueError::NotConnected);
        }
        let client = client.with_options(&self.options);
        let packed = request_entry::pack(postbacks);
        let ids = match self.append(&client, keys, &packed).await {
            Err(EnqueueError::Redis(e)) if e.details().starts_with("COLLISION") => {
                tracing::warn!(
                    error = e.details(),
                    "two endpoint records share an address; enqueueing the request as single postbacks"
                );
                let singles: Vec<Packed> = postbacks
                    .iter()
                    .map(|p| Packed { payload: wire::encode(p), endpoint: None, postbacks: 1 })
                    .collect();
                self.append(&client, keys, &singles).await?
            }
            other => other?,
        };
        if self.wait_replicas > 0 {
            let wait = CustomCommand::new_static("WAIT", ClusterHash::Random, true);
            let args: Vec<Value> = vec![(self.wait_replicas as i64).into(), (self.timeout.as_millis() as i64).into()];
            let got: i64 = client.custom(wait, args).await?;
            if got < i64::from(self.wait_replicas) {
                return Err(EnqueueError::Replicas { got, want: self.wait_replicas });
            }
        }
        Ok(ids)
    }

    /// Runs the script once for `entries`.
    async fn append(&self, client: &Client, keys: &Keys, entries: &[Packed]) -> Result<Vec<String>, EnqueueError> {
        let mut records: Vec<(String, &[u8])> = Vec::new();
        let mut numbers = Vec::with_capacity(entries.len());
        for entry in entries {
            numbers.push(match &entry.endpoint {
                None => 0,
                Some((reference, record)) => {
                    let address = reference.to_string();
                    match records.iter().position(|(a, _)| *a == address) {
                        Some(i) => i + 1,
                        None => {
                            records.push((address, record));
                            records.len()
                        }
                    }
                }
            });
        }
        let mut args: Vec<Value> = Vec::with_capacity(2 + 2 * records.len() + 3 * entries.len());
        args.push((self.max_backlog as i64).into());
        args.push((records.len() as i64).into());
        for (address, record) in &records {
            args.push(address.as_str().into());
            args.push(Value::Bytes(Bytes::copy_from_slice(record)));
        }
        for (entry, number) in entries.iter().zip(numbers) {
            args.push((number as i64).into());
            args.push((entry.postbacks as i64 - 1).into());
            args.push(Value::Bytes(Bytes::from(entry.payload.clone())));
        }
        let script_keys =
            [&*keys.stream, &keys.retry, &keys.endpoints, &keys.endpoint_refs, &keys.batched, &keys.finished];
        let ids: Vec<String> = match self.script.call(client, &script_keys, args).await {
            Err(e) if e.details().starts_with("BACKLOG") => {
                let backlog = e.details().split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                return Err(EnqueueError::BacklogFull { backlog, max: self.max_backlog });
            }
            other => other?,
        };
        if ids.len() != entries.len() {
            return Err(EnqueueError::Mismatch { got: ids.len(), want: entries.len() });
        }
        Ok(ids)
    }
}
