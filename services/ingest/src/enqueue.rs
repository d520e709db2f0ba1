//! Appending a request's postbacks to the stream: one command, all or none.
//!
//! The postbacks are packed into version 3 entries (see
//! `postback_common::records::request`): usually one entry for the whole request, with
//! its endpoint record kept once in `<stream>:endpoints`. The XADDs and the
//! record bookkeeping of one request run inside one Lua script
//! (`enqueue.lua`, sent with EVALSHA, in a call shared with the other
//! requests waiting at that moment: [`crate::batch`]): Redis applies all of
//! them or none, so
//! a request is never half-enqueued and an entry is never without its
//! record, and the 202 is sent only once the script has returned every entry
//! id. Before it, the gate ([`crate::gate`]) decides whether the backlog
//! (`POSTBACK_MAX_BACKLOG`) and Redis's memory leave room, so a stalled
//! delivery side cannot run Redis out of memory; a refused request with an
//! `Idempotency-Key` is still looked up, and a replay answered.
//!
//! Records are content-addressed by 64 bits of SHA-256. Should two records
//! ever share an address, the script writes nothing and says so, and the
//! request is enqueued again as single postbacks, which carry their endpoint
//! themselves.
//!
//! A request with an `Idempotency-Key` is looked up and recorded by the
//! same script (see [`crate::idempotency`]).
//!
//! The command is sent "fail fast" and never re-sent: while the connection is
//! down it fails at once instead of waiting in the client's queue, because a
//! command that outlived its 503 and ran after a reconnect would enqueue
//! postbacks the caller was told were refused (and will send again). Only
//! before the very first connection is made (the service just started) does
//! a request wait for it, up to `POSTBACK_REDIS_TIMEOUT_MS`.
//!
//! With `POSTBACK_INGEST_WAIT_REPLICAS` set, a WAIT follows: the 202 then
//! also means that many replicas hold the postbacks.
//!
//! Every failure says whether the postbacks may have been queued
//! ([`EnqueueError::queued`]): a command that was sent and not answered may
//! have run, and a WAIT shortfall comes after the write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::WithOptions;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::keys::Keys;
use postback_common::records::request::{self as request_entry, Packed};
use postback_common::script::Script;
use postback_common::{Postback, records::postback as wire};
use uuid::Uuid;

use crate::batch::{Batcher, Reply, Request};
use crate::gate::{Gate, Refused};
use crate::idempotency::{Given, Idempotency};

/// Why a request did not get its 202; [`queued`](Self::queued) says
/// whether its postbacks may be in Redis all the same.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The idempotency key was used before for another request body.
    #[error("the Idempotency-Key was used before for another request")]
    Reused,
    /// The client has no live connection; not even tried.
    #[error("not connected to Redis")]
    NotConnected,
    /// The backlog is at `POSTBACK_MAX_BACKLOG`, or Redis's memory at its
    /// limit ([`crate::gate`]).
    #[error("{0}")]
    BacklogFull(Refused),
    /// The postbacks are written, but WAIT for the replicas failed.
    #[error("the replicas could not be asked to confirm the write: {cause}")]
    WaitFailed {
        /// Why.
        cause: fred::error::Error,
        /// What was queued.
        given: Given,
    },
    /// Fewer replicas than `POSTBACK_INGEST_WAIT_REPLICAS` confirmed in time.
    /// The postbacks are on the primary and will be delivered unless it
    /// fails first; the caller is told 503, because the promise asked for
    /// is not kept.
    #[error("only {got} of {want} replicas confirmed the write")]
    Replicas {
        /// Replicas that confirmed.
        got: i64,
        /// Replicas asked for.
        want: u32,
        /// What was queued (now, or before, for a repeated key).
        given: Given,
    },
    /// Redis answered with an error (OOM, read-only replica...), or did not
    /// answer (timeout, connection lost).
    #[error("Redis error: {0}")]
    Redis(#[from] fred::error::Error),
    /// Only a replay could be answered, and the key was not used before
    /// (turned into [`EnqueueError::BacklogFull`] by the caller).
    #[error("the request is not a replay")]
    Full,
    /// Another endpoint record is stored under this address (the request
    /// goes again as single postbacks).
    #[error("two endpoint records share the address {0}")]
    Collision(String),
    /// The partition was shown a newer partition record than the request
    /// was routed by; nothing was written (route it again).
    #[error("the partition record changed; the request was routed by an older one")]
    Stale,
    /// Redis answered, but not with one id per entry.
    #[error("the enqueue script returned {got} ids for {want} entries")]
    Mismatch {
        /// Ids returned.
        got: usize,
        /// Entries sent.
        want: usize,
    },
}

/// How much longer than Redis's own WAIT timeout the client waits for its
/// answer.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

/// Whether a request's postbacks may be in Redis after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing was written.
    No,
    /// Unknown: the command was sent and no answer came.
    Maybe,
    /// Written on the primary (the replicas did not confirm in time).
    Yes,
}

impl EnqueueError {
    /// Whether the postbacks may have been queued all the same.
    pub fn queued(&self) -> Queued {
        use fred::error::ErrorKind;
        match self {
            EnqueueError::Reused
            | EnqueueError::NotConnected
            | EnqueueError::BacklogFull(_)
            | EnqueueError::Full
            | EnqueueError::Stale
            | EnqueueError::Collision(_) => Queued::No,
            EnqueueError::Replicas { .. } | EnqueueError::WaitFailed { .. } => Queued::Yes,
            EnqueueError::Mismatch { .. } => Queued::Maybe,
            EnqueueError::Redis(e) => match e.kind() {
                ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled => Queued::Maybe,
                // Redis refused the script before it wrote (OOM, READONLY,
                // LOADING...).
                _ => Queued::No,
            },
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The postbacks are queued, in these entries.
    Queued(Vec<String>),
    /// The idempotency key was used before for the same body: nothing was
    /// queued; this is what was given out then.
    Replayed(Given),
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The partition it is queued in.
    pub keys: &'a Keys,
    /// The partitions its Idempotency-Key mapped to before the latest
    /// changes, newest first (looked up before `keys`).
    pub earlier: &'a [Keys],
    /// The epoch of the partition record `keys` was chosen by.
    pub epoch: u64,
}

/// Runs the enqueue script (and WAIT, when asked to).
pub struct Enqueuer {
    script: Script,
    /// One per partition and client (a cluster node's, [`crate::nodes`]),
    /// started on first use.
    batchers: Mutex<HashMap<String, Batcher>>,
    options: Options,
    gate: Arc<Gate>,
    wait_replicas: u32,
    idempotency_ttl: Duration,
    timeout: Duration,
    /// Set once Redis has been reached: from then on a request never waits
    /// for a connection.
    connected_once: AtomicBool,
}

/// The enqueuer's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest wait for Redis (`POSTBACK_REDIS_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Replicas to wait for (0: none).
    pub wait_replicas: u32,
    /// How long idempotency records are kept.
    pub idempotency_ttl: Duration,
}

impl Enqueuer {
    /// An enqueuer with these settings, admitting through `gate`.
    pub fn new(settings: Settings, gate: Arc<Gate>) -> Self {
        let Settings { timeout, wait_replicas, idempotency_ttl } = settings;
        let options = Options { fail_fast: true, max_attempts: Some(1), timeout: Some(timeout), ..Options::default() };
        Self {
            script: Script::new(include_str!("enqueue.lua")),
            batchers: Mutex::default(),
            options,
            gate,
            wait_replicas,
            idempotency_ttl,
            timeout,
            connected_once: AtomicBool::new(false),
        }
    }

    /// Appends the postbacks to the target partition's stream, recording
    /// `idempotency` with them, unless that key was used before there or in
    /// one of the target's earlier partitions (looked up first).
    pub async fn enqueue(
        &self,
        clients: &impl Clients,
        target: Target<'_>,
        postbacks: &[Postback],
        idempotency: Option<&Idempotency>,
    ) -> Result<Enqueued, EnqueueError> {
        let Target { keys, earlier, epoch } = target;
        let client = clients.of(keys).await;
        if !client.is_connected() {
            if self.connected_once.load(Ordering::Relaxed) {
                return Err(EnqueueError::NotConnected);
            }
            // The service has just started and is still making its first
            // connection: wait for it rather than refuse.
            if tokio::time::timeout(self.timeout, first_connection(&client)).await.is_err() {
                return Err(EnqueueError::NotConnected);
            }
        }
        self.connected_once.store(true, Ordering::Relaxed);
        let client = client.with_options(&self.options);
        let given = Given { first_id: postbacks.first().map_or(Uuid::nil(), |p| p.id), count: postbacks.len() };
        if let Some(idempotency) = idempotency {
            for before in earlier {
                let key = idempotency.at(before);
                let record = key.record(given);
                let client = clients.of(before).await;
                let client = client.with_options(&self.options);
                match self.append(&client, before, &[], Some((&key, &record)), true, epoch).await {
                    Err(EnqueueError::Full) => {}
                    other => return self.confirm(&client, before, other?, given).await,
                }
            }
        }
        let idempotency = idempotency.map(|key| key.at(keys));
        let key = idempotency.as_ref().map(|key| (key, key.record(given)));
        let key = key.as_ref().map(|(k, record)| (*k, record.as_str()));
        let packed = request_entry::pack(postbacks);
        let bytes = packed.iter().map(|p| p.payload.len() as u64 + crate::gate::ENTRY_OVERHEAD).sum();
        if let Err(refused) = self.gate.admit(keys.partition, postbacks.len() as u64, bytes, self.timeout).await {
            // Not new work if the key was used before: the replay is
            // answered all the same.
            return match key {
                Some(key) => match self.append(&client, keys, &[], Some(key), true, epoch).await {
                    Err(EnqueueError::Full) => Err(EnqueueError::BacklogFull(refused)),
                    other => self.confirm(&client, keys, other?, given).await,
                },
                None => Err(EnqueueError::BacklogFull(refused)),
            };
        }
        let enqueued = match self.append(&client, keys, &packed, key, false, epoch).await {
            Err(EnqueueError::Collision(address)) => {
                tracing::warn!(
                    address,
                    "two endpoint records share an address; enqueueing the request as single postbacks"
                );
                let singles: Vec<Packed> = postbacks
                    .iter()
                    .map(|p| Packed { payload: wire::encode(p), endpoint: None, postbacks: 1 })
                    .collect();
                self.append(&client, keys, &singles, key, false, epoch).await?
            }
            other => other?,
        };
        self.confirm(&client, keys, enqueued, given).await
    }

    /// With `POSTBACK_INGEST_WAIT_REPLICAS`, waits for the replicas to
    /// confirm what `enqueued` says was written (or written before, for a
    /// replay).
    async fn confirm(
        &self,
        client: &WithOptions<Client>,
        keys: &Keys,
        enqueued: Enqueued,
        given: Given,
    ) -> Result<Enqueued, EnqueueError> {
        if self.wait_replicas > 0 {
            let given = match &enqueued {
                Enqueued::Replayed(earlier) => *earlier,
                Enqueued::Queued(_) => given,
            };
            // Redis answers WAIT when its own timeout is up; the client
            // waits a little longer, so that a shortfall is told as one.
            // On a Cluster, WAIT must go to the primary that took the write.
            let slot = fred::util::redis_keyslot(keys.stream.as_bytes());
            let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), true);
            let args: Vec<Value> = vec![(self.wait_replicas as i64).into(), (self.timeout.as_millis() as i64).into()];
            let options = Options { timeout: Some(self.timeout + WAIT_MARGIN), ..self.options.clone() };
            let got: i64 = match client.with_options(&options).custom(wait, args).await {
                Ok(got) => got,
                Err(cause) => return Err(EnqueueError::WaitFailed { cause, given }),
            };
            if got < i64::from(self.wait_replicas) {
                return Err(EnqueueError::Replicas { got, want: self.wait_replicas, given });
            }
        }
        Ok(enqueued)
    }

    /// Runs the script for `entries`, with the idempotency record key and
    /// value when the request has a key; `replay_only` when the request may
    /// only be answered as a replay. The call may carry other requests too
    /// ([`crate::batch`]).
    async fn append(
        &self,
        client: &WithOptions<Client>,
        keys: &Keys,
        entries: &[Packed],
        idempotency: Option<(&Idempotency, &str)>,
        replay_only: bool,
        epoch: u64,
    ) -> Result<Enqueued, EnqueueError> {
        let mut request = Request { replay_only, epoch, ..Request::default() };
        for entry in entries {
            let number = match &entry.endpoint {
                None => 0,
                Some((reference, record)) => {
                    let address = reference.to_string();
                    match request.records.iter().position(|(a, _)| *a == address) {
                        Some(i) => i + 1,
                        None => {
                            request.records.push((address, Bytes::copy_from_slice(record)));
                            request.records.len()
                        }
                    }
                }
            };
            request.entries.push((number, entry.postbacks - 1, Bytes::from(entry.payload.clone())));
        }
        request.idempotency = idempotency.map(|(key, record)| {
            (key.record_key.clone(), record.to_owned(), self.idempotency_ttl.as_secs().max(1) as i64)
        });
        match self.batcher(client, keys).call(request).await? {
            Reply::Queued(ids) if ids.len() == entries.len() => Ok(Enqueued::Queued(ids)),
            Reply::Queued(ids) => Err(EnqueueError::Mismatch { got: ids.len(), want: entries.len() }),
            Reply::Replay(record) => {
                let given =
                    Idempotency::given(&record).ok_or(EnqueueError::Mismatch { got: 0, want: entries.len() })?;
                Ok(Enqueued::Replayed(given))
            }
            Reply::Reused => Err(EnqueueError::Reused),
            Reply::Full => Err(EnqueueError::Full),
            Reply::Collision(address) => Err(EnqueueError::Collision(address)),
            Reply::Stale => Err(EnqueueError::Stale),
        }
    }

    /// The task that runs the script for `keys`'s partition, started on
    /// first use.
    fn batcher(&self, client: &WithOptions<Client>, keys: &Keys) -> Batcher {
        let mut batchers = self.batchers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A partition's node changes with a failover: one task per node.
        batchers
            .entry(format!("{} {}", client.id(), keys.stream))
            .or_insert_with(|| {
                Batcher::spawn(client.clone(), keys.clone(), self.script.clone(), self.wait_replicas > 0)
            })
            .clone()
    }
}

/// Which client a partition's commands go through: the one client, or
/// on a Redis Cluster the client of the node serving the partition
/// ([`crate::nodes::Routed`]).
pub trait Clients {
    /// The client for `keys`'s partition.
    fn of(&self, keys: &Keys) -> impl std::future::Future<Output = Client> + Send;
}

impl Clients for Client {
    async fn of(&self, _: &Keys) -> Client {
        self.clone()
    }
}

/// Returns once the client has made a connection.
async fn first_connection(client: &Client) {
    while !client.is_connected() {
        if client.wait_for_connect().await.is_err() {
            // A failed attempt; the client tries again on its own.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
