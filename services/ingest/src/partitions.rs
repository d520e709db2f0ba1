//! Ingest's view of the partition record ([`postback_common::layout`]):
//! which partitions take requests now, which an Idempotency-Key mapped to
//! before the latest changes, and the epoch every enqueue shows its
//! partition.
//!
//! The record is loaded once Redis answers, after the listener is up: until
//! then a request waits for it (up to `POSTBACK_REDIS_TIMEOUT_MS`) and then
//! gets a 503. A record that disagrees with `POSTBACK_PARTITIONS` stops the
//! service with the message naming both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fred::prelude::Client;
use postback_common::keys::{DEFAULT_GROUP, Keys, Partitions};
use postback_common::layout::follow::{self, Follower};
use postback_common::layout::store::StoreError;
use postback_common::layout::{self as layout, Layout};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// One epoch of the record, with its key names.
#[derive(Debug)]
pub struct View {
    /// The record.
    pub layout: Arc<Layout>,
    /// Its partitions' key names.
    pub partitions: Partitions,
    /// The active ones, in index order.
    active: Vec<Keys>,
}

impl View {
    fn new(layout: Arc<Layout>, stream: &str) -> Self {
        let partitions = Partitions::from_layout(&layout, stream, DEFAULT_GROUP, None);
        let active = partitions.active().into_iter().cloned().collect();
        Self { layout, partitions, active }
    }

    /// The epoch every enqueue shows its partition.
    pub fn epoch(&self) -> u64 {
        self.layout.epoch
    }

    /// The active partition number `turn` (modulo the count).
    pub fn nth_active(&self, turn: u32) -> &Keys {
        &self.active[turn as usize % self.active.len()]
    }

    /// How many partitions take requests now.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// The partition a scoped Idempotency-Key maps to now.
    pub fn for_key(&self, scoped: &str) -> &Keys {
        self.partitions.for_key(scoped.as_bytes())
    }

    /// The partitions the key mapped to under the active sets replaced in
    /// the last `window` (the idempotency records' lifetime), newest first:
    /// a record kept there before a change is still replayed.
    pub fn earlier_for_key(&self, scoped: &str, window: Duration, stream: &str) -> Vec<Keys> {
        let since = postback_common::time::now_ms().saturating_sub(window.as_millis() as u64);
        let current = self.for_key(scoped);
        let hash = postback_common::keys::key_hash(scoped.as_bytes());
        let current_tag = self.layout.get(current.partition).map(|p| p.tag.as_str()).unwrap_or_default();
        self.layout
            .earlier_tags(hash, since, current_tag)
            .iter()
            .map(|tag| {
                let index = self.layout.partitions.iter().find(|p| &p.tag == tag).map_or(u32::MAX, |p| p.index);
                layout::keys_for(stream, DEFAULT_GROUP, None, index, tag)
            })
            .collect()
    }
}

/// The view every handler reads, and how to ask for a fresh one.
#[derive(Clone)]
pub struct Views {
    current: watch::Receiver<Option<Arc<View>>>,
    follower: Arc<std::sync::OnceLock<Follower>>,
    /// Turns for requests without an Idempotency-Key.
    turn: Arc<AtomicU32>,
    /// The sender of fixed views, kept so that it never closes.
    _fixed: Option<Arc<watch::Sender<Option<Arc<View>>>>>,
}

/// Fills [`Views`] once the record is read.
pub struct Loader {
    tx: watch::Sender<Option<Arc<View>>>,
    follower: Arc<std::sync::OnceLock<Follower>>,
}

impl Views {
    /// Views with nothing loaded yet, and their loader.
    pub fn pending() -> (Self, Loader) {
        let (tx, current) = watch::channel(None);
        let follower = Arc::new(std::sync::OnceLock::new());
        (Self { current, follower: follower.clone(), turn: Arc::default(), _fixed: None }, Loader { tx, follower })
    }

    /// Views of one fixed record (tests).
    pub fn fixed(layout: Layout, stream: &str) -> Self {
        let (views, loader) = Self::pending();
        let view = Arc::new(View::new(Arc::new(layout.clone()), stream));
        let _ = loader.follower.set(Follower::fixed(layout));
        loader.tx.send_replace(Some(view));
        Self { _fixed: Some(Arc::new(loader.tx)), ..views }
    }

    /// The view, if the record has been read.
    pub fn now(&self) -> Option<Arc<View>> {
        self.current.borrow().clone()
    }

    /// The view, waiting up to `patience` for the first read.
    pub async fn within(&self, patience: Duration) -> Option<Arc<View>> {
        if let Some(view) = self.now() {
            return Some(view);
        }
        let mut changes = self.current.clone();
        let _ = tokio::time::timeout(patience, changes.wait_for(Option::is_some)).await;
        self.now()
    }

    /// Reads the record again now (a partition said ours is old), waiting
    /// up to `patience` for the new view.
    pub async fn refresh(&self, patience: Duration) {
        let Some(follower) = self.follower.get() else { return };
        let mut changes = self.current.clone();
        changes.mark_unchanged();
        follower.refresh(patience).await;
        let _ = tokio::time::timeout(patience, changes.changed()).await;
    }

    /// The next turn, for spreading keyless requests.
    pub fn next_turn(&self) -> u32 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver of every new view (the gate's sampler).
    pub fn changes(&self) -> watch::Receiver<Option<Arc<View>>> {
        self.current.clone()
    }
}

impl Loader {
    /// Loads the record (seeding it from `POSTBACK_PARTITIONS` if there is
    /// none), then follows it until `stop`. Fails when the record cannot
    /// be used or disagrees with the setting.
    pub async fn run(self, redis: Client, config: &Config, stop: CancellationToken) -> Result<(), StoreError> {
        let Some(first) = config.redis.layout(&redis, &stop).await? else { return Ok(()) };
        let stream = config.redis.stream.clone();
        tracing::info!(epoch = first.epoch, active = first.active_count(), "following the partition record");
        let follower = follow::spawn(redis, stream.clone(), first, stop.clone());
        let mut changes = follower.changes();
        let _ = self.follower.set(follower);
        loop {
            let layout = changes.borrow_and_update().clone();
            self.tx.send_replace(Some(Arc::new(View::new(layout, &stream))));
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                changed = changes.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
}
