//! Per-host limits: at most `POSTBACK_PER_HOST_CONCURRENCY` attempts in
//! flight to one host:port, on top of the worker's global limit.
//!
//! A slow or dead target would otherwise fill every slot of the worker with
//! attempts waiting for their timeout, and postbacks to healthy targets would
//! queue behind them. A postback whose host is at its limit is not held: it
//! goes back to the retry schedule for a moment without using up an attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Above this many tracked hosts, idle ones are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// The in-flight counters of every host seen lately.
pub struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    /// Limits of `per_host` attempts per host.
    pub fn new(per_host: usize) -> Self {
        Self { per_host, hosts: Mutex::default() }
    }

    /// A slot for one attempt to `host`, or `None` when it is at its limit.
    pub fn try_acquire(&self, host: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if hosts.len() > PRUNE_ABOVE {
                hosts.retain(|_, s| s.available_permits() < self.per_host);
            }
            hosts.entry(host.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// The host:port a URL's attempt counts against.
pub fn host_key(url: &url::Url) -> String {
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

    #[test]
    fn host_keys_include_the_port() {
        let key = |u: &str| host_key(&url::Url::parse(u).expect("url"));
        assert_eq!(key("http://Example.com/x"), "example.com:80");
        assert_eq!(key("https://example.com/x"), "example.com:443");
        assert_eq!(key("http://127.0.0.1:8080/"), "127.0.0.1:8080");
    }
}
