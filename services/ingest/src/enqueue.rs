//! Appending a request's postbacks to the stream: one command, all or none.
//!
//! The XADDs of one request run inside one Lua script (`enqueue.lua`, sent
//! with EVALSHA): Redis applies all of them or none, so a request is never
//! half-enqueued, and the 202 is sent only once the script has returned every
//! entry id.
//!
//! The command is sent "fail fast" and never re-sent: while the connection is
//! down it fails at once instead of waiting in the client's queue, because a
//! command that outlived its 503 and ran after a reconnect would enqueue
//! postbacks the caller was told were refused (and will send again).

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::{Postback, wire};

/// The script's source; its SHA1 names it for EVALSHA.
const SCRIPT: &str = include_str!("enqueue.lua");

/// Why the postbacks were not enqueued. In every case the caller gets a 503
/// and nothing was accepted (short of a reply lost after Redis applied it,
/// which no client can rule out; see the README on at-least-once).
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The client has no live connection; not even tried.
    #[error("not connected to Redis")]
    NotConnected,
    /// Redis answered with an error (OOM, read-only replica, timeout...).
    #[error("Redis error: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered, but not with one id per postback.
    #[error("the enqueue script returned {got} ids for {want} postbacks")]
    Mismatch {
        /// Ids returned.
        got: usize,
        /// Postbacks sent.
        want: usize,
    },
}

/// Runs the enqueue script; loads it first when Redis does not know it yet
/// (after a restart, for instance).
#[derive(Debug, Clone)]
pub struct Enqueuer {
    sha: String,
    options: Options,
}

impl Enqueuer {
    /// An enqueuer whose commands give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let options = Options { fail_fast: true, max_attempts: Some(1), timeout: Some(timeout), ..Options::default() };
        Self { sha: fred::util::sha1_hash(SCRIPT), options }
    }

    /// XADDs one entry per postback to `stream`; returns the entry ids.
    pub async fn enqueue(
        &self,
        client: &Client,
        stream: &str,
        postbacks: &[Postback],
    ) -> Result<Vec<String>, EnqueueError> {
        if !client.is_connected() {
            return Err(EnqueueError::NotConnected);
        }
        let mut args: Vec<Value> = Vec::with_capacity(3 + postbacks.len());
        args.push(self.sha.as_str().into());
        args.push(1.into());
        args.push(stream.into());
        args.extend(postbacks.iter().map(|p| Value::Bytes(Bytes::from(wire::encode(p)))));
        let client = client.with_options(&self.options);
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        let ids: Vec<String> = match client.custom(evalsha.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let load = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
                let _: String = client.custom(load, vec!["LOAD", SCRIPT]).await?;
                client.custom(evalsha, args).await?
            }
            other => other?,
        };
        if ids.len() != postbacks.len() {
            return Err(EnqueueError::Mismatch { got: ids.len(), want: postbacks.len() });
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_named_by_its_sha1() {
        let enqueuer = Enqueuer::new(Duration::from_secs(1));
        assert_eq!(enqueuer.sha.len(), 40);
        assert!(enqueuer.sha.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
