//! Per-host concurrency and pacing: at most `POSTBACK_PER_HOST_CONCURRENCY`
//! attempts (or the host's own concurrency in `POSTBACK_HOST_LIMITS_FILE`,
//! [`crate::host_rates`]) in flight to one host:port in this worker, and a
//! paced queue in the retry schedule for the postbacks that find it full.
//!
//! A slow or dead target would otherwise fill every slot of the worker with
//! attempts waiting for their timeout, and postbacks to healthy targets
//! would queue behind them. A postback whose host is full waits a moment
//! for a slot only when the host is fast (a slot frees within
//! milliseconds); otherwise it goes straight back to the retry schedule,
//! without using up an attempt, and holds no worker slot meanwhile.
//!
//! How long it waits there is what keeps a slow host cheap. Each host keeps
//! the mean time of its attempts lately, hence its pace (one slot frees
//! every `mean / concurrency`), and a virtual queue: each postback sent
//! back is given the next free turn at that pace, so the postbacks waiting
//! for a host come back about when it can take them, in the order they
//! were turned away, instead of all cycling through Redis every few hundred
//! milliseconds. A host answering in 8 s with 16 slots takes 2 postbacks a
//! second, and its overflow costs Redis about as many reschedules a second,
//! whatever the backlog (the delivery integration test measures it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::host_rates::HostLimitsFile;

/// Above this many tracked hosts, idle ones are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// How long a postback for a full but fast host waits for a slot in the
/// worker before it goes back to the schedule.
pub(crate) const HOST_PATIENCE: Duration = Duration::from_millis(100);

/// A host whose attempts take longer than this on average is not waited
/// for: a slot is unlikely to free within [`HOST_PATIENCE`]. A host whose
/// attempt time is not known yet is waited for.
const FAST_HOST: Duration = Duration::from_secs(1);

/// The shortest wait in the schedule for a full host; a host whose
/// attempt time is not known yet hands out turns this far apart divided by
/// its concurrency.
const MIN_DEFER: Duration = Duration::from_millis(250);

/// The longest wait in the schedule for a full host, however long its
/// virtual queue.
const MAX_DEFER: Duration = Duration::from_secs(3_600);

/// Weight of the newest attempt in a host's mean attempt time.
const MEAN_WEIGHT: f64 = 0.2;

/// The hosts seen lately, with their slots and pace.
pub(crate) struct HostLimits {
    per_host: usize,
    /// Hosts with a concurrency of their own.
    file: Arc<HostLimitsFile>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// One host's slots and pace.
struct Host {
    slots: Arc<Semaphore>,
    capacity: usize,
    pace: Mutex<Pace>,
}

#[derive(Default)]
struct Pace {
    /// Mean time of an attempt lately, once one has ended.
    mean: Option<Duration>,
    /// The next free turn of the virtual queue.
    next: Option<Instant>,
}

/// Whether a postback may go to its host now.
pub(crate) enum Entry {
    /// Yes: one of the host's slots, held until the attempt ends.
    Slot(HostSlot),
    /// No: back to the schedule for this long.
    Full(Duration),
}

/// One of a host's slots.
pub(crate) struct HostSlot {
    _permit: OwnedSemaphorePermit,
    host: Arc<Host>,
}

impl HostSlot {
    /// Notes how long the attempt made with this slot took.
    pub(crate) fn took(&self, elapsed: Duration) {
        let mut pace = self.host.pace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pace.mean = Some(match pace.mean {
            None => elapsed,
            Some(mean) => mean.mul_f64(1.0 - MEAN_WEIGHT) + elapsed.mul_f64(MEAN_WEIGHT),
        });
    }
}

impl HostLimits {
    /// Limits of `per_host` attempts per host, or as `file` says.
    pub(crate) fn new(per_host: usize, file: Arc<HostLimitsFile>) -> Self {
        Self { per_host, file, hosts: Mutex::default() }
    }

    /// A slot for one attempt to `url`'s host, or how long to wait in the
    /// schedule for one.
    pub(crate) async fn enter(&self, url: &url::Url) -> Entry {
        let capacity = self.file.get(url).and_then(|(_, limit)| limit.concurrency).unwrap_or(self.per_host);
        self.enter_host(&host_key(url), capacity).await
    }

    async fn enter_host(&self, host: &str, capacity: usize) -> Entry {
        let host = self.host(host, capacity);
        if let Ok(permit) = host.slots.clone().try_acquire_owned() {
            return Entry::Slot(HostSlot { _permit: permit, host });
        }
        let fast = host.pace().mean.is_none_or(|mean| mean <= FAST_HOST);
        if fast && let Ok(Ok(permit)) = tokio::time::timeout(HOST_PATIENCE, host.slots.clone().acquire_owned()).await {
            return Entry::Slot(HostSlot { _permit: permit, host });
        }
        Entry::Full(host.next_turn(Instant::now()))
    }

    fn host(&self, host: &str, capacity: usize) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if hosts.len() > PRUNE_ABOVE {
            let now = Instant::now();
            hosts.retain(|_, h| h.slots.available_permits() < h.capacity || h.pace().next.is_some_and(|n| n > now));
        }
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| {
                Arc::new(Host { slots: Arc::new(Semaphore::new(capacity)), capacity, pace: Mutex::default() })
            })
            .clone()
    }
}

impl Host {
    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The wait for the next free turn after `now`, which it takes: at
    /// least one pace step away, and with up to half a step of jitter so
    /// that postbacks turned away together are read back apart.
    fn next_turn(&self, now: Instant) -> Duration {
        let mut pace = self.pace();
        let step = pace.mean.unwrap_or(MIN_DEFER) / self.capacity as u32;
        let turn = pace.next.filter(|next| *next > now).unwrap_or(now).max(now + step);
        pace.next = Some((turn + step).min(now + MAX_DEFER));
        let jitter = Duration::from_millis(fastrand::u64(0..=step.as_millis() as u64 / 2));
        (turn - now + jitter).clamp(MIN_DEFER, MAX_DEFER)
    }
}

/// The host:port a URL's attempt counts against.
pub(crate) fn host_key(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(entry: Entry) -> Option<HostSlot> {
        match entry {
            Entry::Slot(slot) => Some(slot),
            Entry::Full(_) => None,
        }
    }

    fn wait(entry: Entry) -> Duration {
        match entry {
            Entry::Slot(_) => panic!("expected a full host"),
            Entry::Full(after) => after,
        }
    }

    fn limits(per_host: usize) -> HostLimits {
        HostLimits::new(per_host, Arc::default())
    }

    #[tokio::test]
    async fn limits_each_host_separately() {
        let limits = limits(2);
        let a1 = slot(limits.enter_host("a:80", limits.per_host).await);
        let a2 = slot(limits.enter_host("a:80", limits.per_host).await);
        assert!(a1.is_some() && a2.is_some());
        assert!(slot(limits.enter_host("a:80", limits.per_host).await).is_none(), "third slot for a");
        assert!(slot(limits.enter_host("b:80", limits.per_host).await).is_some(), "b is not held up by a");
        drop(a1);
        assert!(
            slot(limits.enter_host("a:80", limits.per_host).await).is_some(),
            "a slot comes back when an attempt ends"
        );
    }

    #[tokio::test]
    async fn waits_a_little_for_a_fast_host_only() {
        let limits = Arc::new(limits(1));
        for (host, mean) in [("a:80", Some(Duration::from_millis(5))), ("new:80", None)] {
            let held = slot(limits.enter_host(host, limits.per_host).await).expect("first slot");
            if let Some(mean) = mean {
                held.took(mean);
            }
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(held);
            });
            assert!(slot(limits.enter_host(host, limits.per_host).await).is_some(), "{host}'s slot is waited for");
            release.await.expect("join");
        }

        let held = slot(limits.enter_host("slow:80", limits.per_host).await).expect("first slot");
        held.took(Duration::from_secs(8));
        let started = std::time::Instant::now();
        assert!(slot(limits.enter_host("slow:80", limits.per_host).await).is_none());
        assert!(started.elapsed() < HOST_PATIENCE, "a slow host's slot is not waited for");
    }

    #[tokio::test]
    async fn full_hosts_hand_out_turns_at_their_pace() {
        let limits = limits(16);
        let held: Vec<_> =
            futures::future::join_all((0..16).map(|_| limits.enter_host("slow:80", limits.per_host))).await;
        let held: Vec<_> = held.into_iter().map(|e| slot(e).expect("slot")).collect();
        held[0].took(Duration::from_secs(8));
        // 16 slots of 8 s each: a turn every 500 ms.
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(wait(limits.enter_host("slow:80", limits.per_host).await));
        }
        for (i, w) in waits.iter().enumerate() {
            let turn = Duration::from_millis(500 * (i as u64 + 1));
            // A few milliseconds pass between the calls.
            let early = turn - Duration::from_millis(20);
            assert!(*w >= early && *w <= turn + Duration::from_millis(250), "turn {i}: {w:?}");
        }
        assert!(wait(limits.enter_host("slow:80", limits.per_host).await) > waits[9], "the queue goes on growing");
    }

    #[test]
    fn turns_stay_within_bounds() {
        let host = Host { slots: Arc::new(Semaphore::new(1)), capacity: 1, pace: Mutex::new(Pace::default()) };
        let now = Instant::now();
        assert!(host.next_turn(now) >= MIN_DEFER, "unknown pace");
        host.pace().mean = Some(Duration::from_secs(7_200));
        for _ in 0..3 {
            assert!(host.next_turn(now) <= MAX_DEFER);
        }
        assert!(host.pace().next.expect("queue") <= now + MAX_DEFER);
    }

    #[tokio::test]
    async fn a_listed_host_has_its_own_concurrency() {
        let file = crate::host_rates::parse("one.example 100 1\n").expect("file");
        let limits = HostLimits::new(4, Arc::new(file));
        let at = |u: &str| url::Url::parse(u).expect("url");
        let _held = slot(limits.enter(&at("http://one.example/")).await).expect("its one slot");
        assert!(slot(limits.enter(&at("http://one.example/")).await).is_none(), "one at a time");
        let two = at("http://two.example/");
        let others: Vec<_> = futures::future::join_all((0..4).map(|_| limits.enter(&two))).await;
        assert!(others.into_iter().all(|e| slot(e).is_some()), "others get the default");
    }

    #[test]
    fn host_keys_include_the_port() {
        let key = |u: &str| host_key(&url::Url::parse(u).expect("url"));
        assert_eq!(key("http://Example.com/x"), "example.com:80");
        assert_eq!(key("https://example.com/x"), "example.com:443");
        assert_eq!(key("http://127.0.0.1:8080/"), "127.0.0.1:8080");
    }
}
