//! Per-host limits: at most `POSTBACK_PER_HOST_CONCURRENCY` attempts in
//! flight to one host:port, on top of the worker's global limit.
//!
//! A slow or dead target would otherwise fill every slot of the worker with
//! attempts waiting for their timeout, and postbacks to healthy targets would
//! queue behind them. A postback whose host is at its limit waits a moment
//! for a slot (a busy but healthy host frees one quickly); if none frees up,
//! it goes back to the retry schedule without using up an attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Above this many tracked hosts, idle ones are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// The in-flight counters of every host seen lately.
pub(crate) struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    /// Limits of `per_host` attempts per host.
    pub(crate) fn new(per_host: usize) -> Self {
        Self { per_host, hosts: Mutex::default() }
    }

    /// A slot for one attempt to `host`, waiting at most `patience` for one
    /// to free up: a busy but healthy host frees slots within milliseconds,
    /// a hanging one does not, and its postbacks should not wait here.
    pub(crate) async fn acquire_within(
        &self,
        host: &str,
        patience: std::time::Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.semaphore(host);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(patience, semaphore.acquire_owned()).await.ok()?.ok()
    }

    /// A slot for one attempt to `host`, or `None` when it is at its limit.
    #[cfg(test)]
    fn try_acquire(&self, host: &str) -> Option<OwnedSemaphorePermit> {
        self.semaphore(host).try_acquire_owned().ok()
    }

    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if hosts.len() > PRUNE_ABOVE {
            hosts.retain(|_, s| s.available_permits() < self.per_host);
        }
        hosts.entry(host.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone()
    }
}

/// The host:port a URL's attempt counts against.
pub(crate) fn host_key(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_host_separately() {
        let limits = HostLimits::new(2);
        let a1 = limits.try_acquire("a:80");
        let a2 = limits.try_acquire("a:80");
        assert!(a1.is_some() && a2.is_some());
        assert!(limits.try_acquire("a:80").is_none(), "third slot for a");
        assert!(limits.try_acquire("b:80").is_some(), "b is not held up by a");
        drop(a1);
        assert!(limits.try_acquire("a:80").is_some(), "a slot comes back when an attempt ends");
    }

    #[tokio::test]
    async fn waits_a_little_for_a_slot() {
        let limits = Arc::new(HostLimits::new(1));
        let held = limits.try_acquire("a:80").expect("first slot");
        let patience = std::time::Duration::from_millis(50);
        assert!(limits.acquire_within("a:80", patience).await.is_none(), "nothing frees up");
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            drop(held);
        });
        assert!(limits.acquire_within("a:80", std::time::Duration::from_secs(5)).await.is_some());
        release.await.expect("join");
    }

    #[test]
    fn host_keys_include_the_port() {
        let key = |u: &str| host_key(&url::Url::parse(u).expect("url"));
        assert_eq!(key("http://Example.com/x"), "example.com:80");
        assert_eq!(key("https://example.com/x"), "example.com:443");
        assert_eq!(key("http://127.0.0.1:8080/"), "127.0.0.1:8080");
    }
}
