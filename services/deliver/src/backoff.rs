//! The one backoff between failed Redis calls, for every loop of the worker
//! that must ride out a Redis outage: the read loop, the scheduler, the
//! consumer clean-up, the acknowledgements and the finishing steps.
//!
//! backon supplies the sequence: 50 ms doubling to 2 s, each delay
//! stretched by up to as much again at random, so that workers that lost
//! Redis together do not all come back in the same millisecond.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The first delay.
const FIRST: Duration = Duration::from_millis(50);

/// The longest delay (before jitter).
const LONGEST: Duration = Duration::from_secs(2);

/// Delays between failed attempts at one Redis call; [`reset`](Self::reset)
/// after a success.
pub(crate) struct Backoff(ExponentialBackoff);

impl Default for Backoff {
    fn default() -> Self {
        Self(builder().build())
    }
}

fn builder() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST)
        .with_max_delay(LONGEST)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

impl Backoff {
    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(LONGEST)
    }

    /// Back to the first delay.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps for the next delay; false if `shutdown` came first.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_starts_over_on_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= FIRST && delays[0] <= 2 * FIRST, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 2 * LONGEST), "{delays:?}");
        assert!(delays[9] >= LONGEST, "reaches the cap: {delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= 2 * FIRST);
    }
}
