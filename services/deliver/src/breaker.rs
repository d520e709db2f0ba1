//! The circuit breaker in front of each host: a host that keeps failing is
//! paused for all workers, and its postbacks wait without spending
//! attempts.
//!
//! * After `POSTBACK_BREAKER_FAILURES` consecutive failed attempts (no
//!   response, 408, 429, 5xx) a host is **open**: paused for
//!   `POSTBACK_BREAKER_PAUSE_MS`. Any other answer is not a failure and
//!   closes the count. The state is in Redis ([`postback_common::breaker`]),
//!   so one worker's count and pause hold for all.
//! * While it is open its postbacks go back to the schedule without an
//!   attempt (`host_paused`), to come back when the pause ends (plus up to
//!   a tenth of the time left, so they do not all come back at once).
//! * When the pause is over, one worker gets to send one **probe**
//!   (`half_open`; the others keep waiting). A probe that is answered
//!   closes the breaker; one that fails opens it again for twice as long,
//!   up to an hour.
//! * `postbackctl hosts pause HOST` pauses a host by hand until
//!   `postbackctl hosts resume HOST`; its postbacks look again every five
//!   to ten minutes, so a resume takes effect within ten.
//!
//! Each worker reads the hosts not closed once a second, so asking costs
//! Redis nothing per attempt; a failure costs one script call, and so does
//! the first answer after failures. The worker whose failures open a host
//! stops at once: when its own attempts to a host fail
//! `POSTBACK_BREAKER_FAILURES` times in a row, or Redis answers that the
//! host is open, it pauses the host in its own view, and only an answer
//! from the host, or Redis's view a couple of reads later, lifts that
//! ([`Breaker::answered`]); so an older answer that still said "closed"
//! cannot reopen the host in between. Every turn asks again just before
//! its attempt ([`Breaker::paused_now`]), so what goes out once a host
//! opens is at most the attempts already in flight, plus one probe per
//! pause. The other workers stop within a second, at their next read.
//!
//! A pause is never shorter than the `Retry-After` the host sent (capped
//! by `POSTBACK_RETRY_MAX_MS`): the script takes the longer of the two,
//! for the first pause, a pause after a failed probe, and a pause already
//! running. Pause ends are written with Redis's clock, and every read
//! brings Redis's time too, so each worker compares them with that clock,
//! not its own. The read also forgets hosts whose record has expired, and
//! each worker forgets hosts it saw fail but has not tried for
//! [`FORGET_FAILING`]. If Redis cannot be asked, attempts go on: the
//! breaker spares a failing partner, it does not hold postbacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use fred::prelude::Client;
use postback_common::breaker::{Breakers, State, Status};
use tokio_util::sync::CancellationToken;

use crate::metrics::DeliverMetrics;

/// How often a worker reads which hosts are not closed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The longest a failing host is paused.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(3_600);

/// A host this worker saw fail, and has not tried since for this long, is
/// forgotten (its count in a row starts again).
pub(crate) const FORGET_FAILING: Duration = Duration::from_secs(600);

/// How long a pause in this worker's own view holds against a Redis view
/// that does not show it (two reads).
const OWN_VIEW_HOLDS: Duration = Duration::from_secs(2);

/// How long a postback of a host paused by hand waits before it looks
/// again (plus as much again of jitter).
const HAND_PAUSE_WAIT: Duration = Duration::from_secs(300);

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Consecutive failures that open it; 0 turns the breaker off.
    pub(crate) failures: u32,
    /// The first pause.
    pub(crate) pause: Duration,
    /// How long a probe may take before another worker may probe.
    pub(crate) probe_lease: Duration,
}

/// Whether an attempt may go to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Yes; `probe` when it is the probe of a host whose pause is over.
    Go {
        /// Whether this attempt decides if the host reopens.
        probe: bool,
    },
    /// No: back to the schedule for this long.
    Wait(Duration),
}

/// This worker's view of the breakers.
pub(crate) struct Breaker {
    breakers: Breakers,
    redis: Client,
    settings: Settings,
    metrics: Arc<DeliverMetrics>,
    /// The hosts not closed at the last look: the end of their pause (ms
    /// since the epoch, Redis's clock), `None` when paused by hand.
    not_closed: Mutex<HashMap<String, Option<i64>>>,
    /// Hosts paused in this worker's own view (its own failures, or
    /// Redis's answer to them): the end of the pause (Redis's clock) and
    /// when it was set.
    own: Mutex<HashMap<String, (i64, Instant)>>,
    /// Hosts this worker saw fail since their last answer, with how many
    /// of its own attempts failed in a row and when the last one did.
    failing: Mutex<HashMap<String, (u32, Instant)>>,
    /// Redis's clock less this worker's, in ms, at the last read.
    offset_ms: AtomicI64,
}

impl Breaker {
    /// The breakers of `breakers`' stream in `redis`.
    pub(crate) fn new(breakers: Breakers, redis: Client, settings: Settings, metrics: Arc<DeliverMetrics>) -> Self {
        Self {
            breakers,
            redis,
            settings,
            metrics,
            not_closed: Mutex::default(),
            own: Mutex::default(),
            failing: Mutex::default(),
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Now on Redis's clock, as far as the last read tells.
    fn now(&self) -> i64 {
        postback_common::time::now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed)
    }

    /// What this worker's view says of `host`: `None` when closed,
    /// `Some(None)` when paused by hand, else the end of its pause.
    fn seen(&self, host: &str) -> Option<Option<i64>> {
        let redis = lock(&self.not_closed).get(host).copied();
        let own = lock(&self.own).get(host).map(|(until, _)| *until);
        match (redis, own) {
            (Some(None), _) => Some(None),
            (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
            (Some(Some(a)), None) => Some(Some(a)),
            (None, Some(b)) => Some(Some(b)),
            (None, None) => None,
        }
    }

    /// How long `host` is still paused in this worker's view, asking
    /// nobody: the last look before an attempt goes out.
    pub(crate) fn paused_now(&self, host: &str) -> Option<Duration> {
        if self.settings.failures == 0 {
            return None;
        }
        match self.seen(host)? {
            None => Some(hand_paused()),
            Some(until) => {
                let now = self.now();
                (until > now).then(|| until_then(until, now))
            }
        }
    }

    /// Pauses `host` in this worker's view until `until` (Redis's clock),
    /// or longer if it already is.
    fn pause_here(&self, host: &str, until: i64) {
        let mut own = lock(&self.own);
        let entry = own.entry(host.to_owned()).or_insert((until, Instant::now()));
        *entry = (entry.0.max(until), Instant::now());
    }

    /// Whether an attempt may go to `host` now.
    pub(crate) async fn pass(&self, host: &str) -> Pass {
        if self.settings.failures == 0 {
            return Pass::Go { probe: false };
        }
        let seen = self.seen(host);
        let now = self.now();
        match seen {
            None => Pass::Go { probe: false },
            Some(None) => Pass::Wait(hand_paused()),
            Some(Some(until)) if until > now => Pass::Wait(until_then(until, now)),
            Some(Some(_)) => match self.breakers.probe(&self.redis, host, self.settings.probe_lease).await {
                Ok(status) if status.probe => {
                    if status.changed {
                        self.metrics.breaker_moved(State::HalfOpen);
                    }
                    tracing::info!(host, failures = status.failures, "circuit half-open: sending one probe");
                    Pass::Go { probe: true }
                }
                Ok(status) => {
                    self.saw(host, &status);
                    match status.state {
                        State::Closed => Pass::Go { probe: false },
                        State::Paused => Pass::Wait(hand_paused()),
                        State::Open | State::HalfOpen => Pass::Wait(until_then(status.until_ms, now)),
                    }
                }
                Err(e) => {
                    tracing::warn!(host, error = %e, "cannot ask the host's circuit breaker; attempting");
                    Pass::Go { probe: false }
                }
            },
        }
    }

    /// Notes how an attempt to `host` went: `failed` when it is a failure
    /// for the breaker, `probe` when it was the host's probe, `least` the
    /// host's Retry-After (capped), if it sent one.
    pub(crate) async fn answered(&self, host: &str, failed: bool, probe: bool, least: Option<Duration>) {
        if self.settings.failures == 0 {
            return;
        }
        let least = least.unwrap_or_default();
        let result = if failed {
            let in_a_row = {
                let mut failing = lock(&self.failing);
                let n = failing.entry(host.to_owned()).or_insert((0, Instant::now()));
                *n = (n.0 + 1, Instant::now());
                n.0
            };
            if in_a_row >= self.settings.failures || probe {
                // Paused in this worker's view at once, before Redis has
                // answered: its other postbacks for the host stop here.
                let pause = self.settings.pause.max(least);
                self.pause_here(host, self.now() + pause.as_millis() as i64);
            }
            let Settings { failures, pause, .. } = self.settings;
            self.breakers.failed(&self.redis, host, (failures, pause, MAX_PAUSE), least).await
        } else if probe
            || lock(&self.failing).remove(host).is_some()
            || lock(&self.not_closed).contains_key(host)
            || lock(&self.own).contains_key(host)
        {
            lock(&self.own).remove(host);
            self.breakers.succeeded(&self.redis, host).await
        } else {
            return;
        };
        match result {
            Ok(status) => {
                self.saw(host, &status);
                if status.changed {
                    self.metrics.breaker_moved(status.state);
                    let pause_ms = (status.until_ms - self.now()).max(0);
                    match (status.state, probe) {
                        (State::Open, true) => tracing::warn!(
                            host,
                            failures = status.failures,
                            pause_ms,
                            "circuit open again: the probe failed; pausing the host twice as long (at least its \
                             Retry-After)"
                        ),
                        (State::Open, false) => tracing::warn!(
                            host,
                            failures = status.failures,
                            pause_ms,
                            "circuit open: pausing the host after consecutive failed attempts"
                        ),
                        (State::Closed, _) => tracing::info!(host, "circuit closed: the host answers again"),
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::warn!(host, error = %e, "cannot update the host's circuit breaker"),
        }
    }

    /// Keeps this worker's view in step with what Redis answered. An
    /// answer that says closed lifts nothing of this worker's own pause:
    /// it may be older than the failures that set it.
    fn saw(&self, host: &str, status: &Status) {
        match status.state {
            State::Closed => {
                lock(&self.not_closed).remove(host);
            }
            State::Paused => {
                lock(&self.not_closed).insert(host.to_owned(), None);
            }
            State::Open | State::HalfOpen => {
                lock(&self.not_closed).insert(host.to_owned(), Some(status.until_ms));
                if status.state == State::Open {
                    self.pause_here(host, status.until_ms);
                }
            }
        }
    }

    /// Reads the hosts not closed, and Redis's clock, every
    /// [`REFRESH_EVERY`] until `stop`.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        if self.settings.failures == 0 {
            return;
        }
        loop {
            let asked = postback_common::time::now_ms() as i64;
            match self.breakers.look(&self.redis).await {
                Ok((redis_now, hosts)) => {
                    let answered = postback_common::time::now_ms() as i64;
                    self.offset_ms.store(redis_now - (asked + answered) / 2, Ordering::Relaxed);
                    self.metrics.hosts_not_closed(hosts.len());
                    let hosts: HashMap<String, Option<i64>> = hosts.into_iter().collect();
                    lock(&self.own).retain(|host, (_, set)| set.elapsed() < OWN_VIEW_HOLDS || hosts.contains_key(host));
                    *lock(&self.not_closed) = hosts;
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the hosts' circuit breakers; keeping the last view"),
            }
            lock(&self.failing).retain(|_, (_, last)| last.elapsed() < FORGET_FAILING);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wait until `until` (ms since the epoch), plus up to a tenth of it of
/// jitter, and at least a second.
fn until_then(until: i64, now: i64) -> Duration {
    let left = (until - now).max(1_000) as u64;
    Duration::from_millis(left + fastrand::u64(0..=left / 10))
}

/// The wait of a postback whose host is paused by hand.
fn hand_paused() -> Duration {
    HAND_PAUSE_WAIT + Duration::from_millis(fastrand::u64(0..=HAND_PAUSE_WAIT.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_after_the_pause_and_spread_out() {
        for _ in 0..100 {
            let wait = until_then(60_000, 0);
            assert!(wait >= Duration::from_secs(60) && wait <= Duration::from_secs(66), "{wait:?}");
        }
        assert!(until_then(0, 5_000) >= Duration::from_secs(1), "a pause just over still waits a moment");
        let hand = hand_paused();
        assert!(hand >= HAND_PAUSE_WAIT && hand <= 2 * HAND_PAUSE_WAIT);
    }
}
