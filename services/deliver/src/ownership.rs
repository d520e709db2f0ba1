//! Whether an entry taken before a reconnect is still this worker's, asked
//! just before its postbacks are attempted.
//!
//! A failover to a replica that had not received the latest writes takes
//! Redis back to an earlier state: an entry this worker read, or a retry
//! moved into the stream, may not exist there, or may be unread and about
//! to go to another worker. Entries waiting in the worker's hands (for a
//! slot, or for Redis to take records again) when the connection was made
//! again are therefore checked once more before an attempt: still pending
//! with this consumer, or not attempted at all (README "What a failover
//! can lose"). Without a reconnect since the entry was taken nothing is
//! asked: the check costs nothing in normal running.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fred::prelude::*;
use postback_common::keys::Keys;
use tokio::sync::broadcast::{self, error::TryRecvError};

/// Reconnects of a partition's command client, counted, and the question.
pub(crate) struct Ownership {
    redis: Client,
    keys: Keys,
    consumer: String,
    reconnects: Mutex<broadcast::Receiver<fred::types::config::Server>>,
    generation: AtomicU64,
}

impl Ownership {
    /// For `consumer`'s entries of `keys`'s partition, asked through `redis`.
    pub(crate) fn new(redis: Client, keys: Keys, consumer: String) -> Self {
        let reconnects = Mutex::new(redis.reconnect_rx());
        Self { redis, keys, consumer, reconnects, generation: AtomicU64::new(0) }
    }

    /// How many reconnects there have been so far.
    pub(crate) fn generation(&self) -> u64 {
        let mut rx = self.reconnects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether entry `id`, taken at generation `since`, is still pending
    /// with this consumer: true without asking when there was no reconnect
    /// since, and when Redis cannot say. While the client is not connected
    /// (a primary just died, its replica not yet promoted) it first waits
    /// for the connection: what Redis holds then is not known yet.
    pub(crate) async fn still_ours(&self, id: &str, since: u64) -> bool {
        while !self.redis.is_connected() {
            if self.redis.wait_for_connect().await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if self.generation() == since {
            return true;
        }
        match postback_common::redis::pending_rows(&self.redis, &self.keys, (id, id), 1, Some(&self.consumer)).await {
            Ok(rows) => {
                let ours = !rows.is_empty();
                if !ours {
                    tracing::info!(
                        entry_id = id,
                        "an entry taken before a reconnect is no longer this worker's (a failover lost it or its \
                         read); not attempting it"
                    );
                }
                ours
            }
            Err(e) => {
                tracing::debug!(error = %e, entry_id = id, "cannot ask whether the entry is still this worker's");
                true
            }
        }
    }
}
