//! Following the partition record: load it at start (waiting for Redis),
//! then look at it every [`POLL`] and publish each new epoch.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Layout;
use super::store::{self, StoreError};

/// How often a process looks at the record: the "within seconds" of every
/// change, and the wait a grow adds before ingest writes to new partitions.
pub const POLL: Duration = Duration::from_secs(1);

/// The record as this process last read it.
#[derive(Clone)]
pub struct Follower {
    current: watch::Receiver<Arc<Layout>>,
    refresh: Arc<Notify>,
    /// The sender of a fixed follower, kept so that it never closes.
    _fixed: Option<Arc<watch::Sender<Arc<Layout>>>>,
}

impl Follower {
    /// A follower that never changes (tests, tools).
    pub fn fixed(layout: Layout) -> Self {
        let (tx, current) = watch::channel(Arc::new(layout));
        Self { current, refresh: Arc::default(), _fixed: Some(Arc::new(tx)) }
    }

    /// The latest record.
    pub fn now(&self) -> Arc<Layout> {
        self.current.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn changes(&self) -> watch::Receiver<Arc<Layout>> {
        self.current.clone()
    }

    /// Asks for a read now (a partition said this process's layout is
    /// old), and waits until the record has been read again or `patience`
    /// is over.
    pub async fn refresh(&self, patience: Duration) {
        let mut changes = self.current.clone();
        changes.mark_unchanged();
        self.refresh.notify_one();
        let _ = tokio::time::timeout(patience, changes.changed()).await;
    }
}

/// Loads the record (seeding it if there is none), retrying while Redis
/// cannot be reached; `Ok(None)` if `shutdown` comes first. Fails at once
/// on a record that cannot be used or disagrees with `configured`.
pub async fn wait_for(
    redis: &Client,
    stream: &str,
    configured: Option<u32>,
    cluster: bool,
    shutdown: &CancellationToken,
) -> Result<Option<Layout>, StoreError> {
    let mut wait = Duration::from_millis(100);
    loop {
        match store::load(redis, stream, configured, cluster).await {
            Ok(layout) => return Ok(Some(layout)),
            Err(StoreError::Redis(e)) => {
                tracing::warn!(error = %e, "cannot read the partition record yet; retrying");
            }
            Err(fatal) => return Err(fatal),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Follows the record from `initial` until `stop`.
pub fn spawn(redis: Client, stream: String, initial: Layout, stop: CancellationToken) -> Follower {
    let (tx, current) = watch::channel(Arc::new(initial));
    let refresh = Arc::new(Notify::new());
    let wake = refresh.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
                _ = wake.notified() => {}
            }
            let known = tx.borrow().clone();
            match store::read(&redis, &stream).await {
                Ok(Some(layout)) if layout.epoch != known.epoch => {
                    tracing::info!(
                        epoch = layout.epoch,
                        active = layout.active_count(),
                        listed = layout.partitions.len(),
                        "the partition record changed; following it"
                    );
                    tx.send_replace(Arc::new(layout));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // Redis lost its data: put the record back as known.
                    tracing::warn!("the partition record is gone (Redis restarted empty?); writing it back");
                    let _ = store::cas(&redis, &stream, None, &known).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the partition record; keeping the last one"),
            }
        }
    });
    Follower { current, refresh, _fixed: None }
}
