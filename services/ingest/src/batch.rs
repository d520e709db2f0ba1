//! Requests that wait for Redis at the same moment go in one script call.
//!
//! A script call costs Redis a fixed amount of work whatever it does (the
//! call, its arguments, its reply: about 10 µs here, against about 1 µs for
//! the XADD inside it), and each request was one call. Now each partition
//! has one task that runs the enqueue script ([`crate::enqueue`]) for
//! every request waiting when it starts, up to [`MAX_REQUESTS`] or
//! [`MAX_BYTES`], and hands each its own reply; while that call runs, the
//! next requests gather. Nobody waits for a batch to fill: an idle service
//! sends each request at once, a busy one sends fewer, larger calls, and
//! each request is still all or nothing (the script decides each request on
//! its own). A failed call fails every request in it, as it would have
//! failed each of them.
//!
//! The task starts with a partition's first request and ends when the
//! service drops its enqueuer.

use bytes::Bytes;
use fred::clients::WithOptions;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio::sync::{mpsc, oneshot};

/// Requests in one call, at most.
pub(crate) const MAX_REQUESTS: usize = 64;

/// Bytes of entries in one call, at most (one larger request goes alone).
pub(crate) const MAX_BYTES: usize = 1 << 20;

/// One request's part of a call.
#[derive(Debug, Default)]
pub(crate) struct Request {
    /// Its idempotency record's key and value, and how long to keep it.
    pub(crate) idempotency: Option<(String, String, i64)>,
    /// Only a replay may be answered.
    pub(crate) replay_only: bool,
    /// The endpoint records its entries refer to: address, record.
    pub(crate) records: Vec<(String, Bytes)>,
    /// Its entries: record number (1-based, 0 for none), postbacks beyond
    /// the first, the value of `p`.
    pub(crate) entries: Vec<(usize, usize, Bytes)>,
    /// The epoch of the partition record the partition was chosen by.
    pub(crate) epoch: u64,
}

impl Request {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, _, p)| p.len()).sum::<usize>()
            + self.records.iter().map(|(a, r)| a.len() + r.len()).sum::<usize>()
    }
}

/// What the script said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Queued, in these entries.
    Queued(Vec<String>),
    /// Its key was used before for the same body: this record.
    Replay(String),
    /// Its key was used before for another body.
    Reused,
    /// Replay only, and not a replay.
    Full,
    /// Another record is stored under this address.
    Collision(String),
    /// The partition has been shown a newer partition record than the
    /// request was routed by: nothing was written.
    Stale,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Reply, Error>>,
}

/// Sends one partition's requests to its task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher(mpsc::Sender<Job>);

impl Batcher {
    /// Starts the task for the partition `keys`, calling `script` on
    /// `client`; `wait` when a WAIT follows every write.
    pub(crate) fn spawn(client: WithOptions<Client>, keys: Keys, script: Script, wait: bool) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_REQUESTS);
        tokio::spawn(run(client, keys, script, wait, rx));
        Self(tx)
    }

    /// Runs `request` in the next call.
    pub(crate) async fn call(&self, request: Request) -> Result<Reply, Error> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::new(ErrorKind::Canceled, "the enqueue task has stopped");
        self.0.send(Job { request, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(client: WithOptions<Client>, keys: Keys, script: Script, wait: bool, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_REQUESTS);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.request.bytes();
        jobs.push(first);
        while jobs.len() < MAX_REQUESTS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.request.bytes();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let requests: Vec<&Request> = jobs.iter().map(|j| &j.request).collect();
        match call(&client, &keys, &script, wait, &requests).await {
            Ok(replies) => {
                for (job, reply) in jobs.drain(..).zip(replies) {
                    let _ = job.reply.send(Ok(reply));
                }
            }
            Err(error) => {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One script call for `requests`; one reply each, or the call's error.
async fn call(
    client: &WithOptions<Client>,
    keys: &Keys,
    script: &Script,
    wait: bool,
    requests: &[&Request],
) -> Result<Vec<Reply>, Error> {
    let mut script_keys: Vec<&str> =
        vec![&keys.stream, &keys.endpoints, &keys.endpoint_refs, &keys.batched, &keys.layout];
    // The call's records, each once; each request's numbers into them.
    let mut records: Vec<&(String, Bytes)> = Vec::new();
    let mut numbers: Vec<Vec<usize>> = Vec::with_capacity(requests.len());
    for request in requests {
        let mut own = Vec::with_capacity(request.records.len());
        for record in &request.records {
            let i = match records.iter().position(|r| r.0 == record.0) {
                Some(i) => i,
                None => {
                    records.push(record);
                    records.len() - 1
                }
            };
            own.push(i + 1);
        }
        numbers.push(own);
    }
    let size: usize = requests.iter().map(|r| 5 + 3 * r.entries.len()).sum();
    let mut args: Vec<Value> = Vec::with_capacity(2 + 2 * records.len() + size);
    args.push(if wait { "1" } else { "0" }.into());
    // The oldest layout of the call decides: a call is stale if any of its
    // requests is.
    let epoch = requests.iter().map(|r| r.epoch).min().unwrap_or(0);
    args.push((epoch as i64).into());
    args.push((records.len() as i64).into());
    for (address, record) in &records {
        args.push(address.as_str().into());
        args.push(Value::Bytes(record.clone()));
    }
    for (request, own) in requests.iter().zip(&numbers) {
        args.push((request.entries.len() as i64).into());
        match &request.idempotency {
            Some((key, record, ttl)) => {
                script_keys.push(key);
                args.push((script_keys.len() as i64).into());
                args.push((*ttl).into());
                args.push(record.as_str().into());
                args.push(if request.replay_only { "1" } else { "0" }.into());
            }
            None => args.push(0.into()),
        }
        for (number, extra, payload) in &request.entries {
            let number = if *number == 0 { 0 } else { own[*number - 1] };
            args.push((number as i64).into());
            args.push((*extra as i64).into());
            args.push(Value::Bytes(payload.clone()));
        }
    }
    let parts: Vec<String> = script.call(client, &script_keys, args).await?;
    if parts.len() == 1 && parts[0] == "STALE" {
        return Ok(requests.iter().map(|_| Reply::Stale).collect());
    }
    let mut parts = parts.into_iter();
    let replies = requests.iter().map(|request| reply(&mut parts, request.entries.len())).collect();
    if parts.next().is_some() {
        return Err(unexpected(format!("more than the replies of {} requests", requests.len())));
    }
    replies
}

/// The reply of a request of `entries` entries, from the flat array.
fn reply(parts: &mut impl Iterator<Item = String>, entries: usize) -> Result<Reply, Error> {
    let tag = parts.next().ok_or_else(|| unexpected("fewer replies than requests".into()))?;
    let mut one = || parts.next().ok_or_else(|| unexpected(format!("{tag} without its value")));
    Ok(match tag.as_str() {
        "OK" => Reply::Queued((0..entries).map(|_| one()).collect::<Result<_, _>>()?),
        "REPLAY" => Reply::Replay(one()?),
        "REUSED" => Reply::Reused,
        "FULL" => Reply::Full,
        "COLLISION" => Reply::Collision(one()?),
        other => return Err(unexpected(format!("unknown reply {other:?}"))),
    })
}

fn unexpected(what: String) -> Error {
    Error::new(ErrorKind::Parse, format!("the enqueue script answered {what}"))
}
