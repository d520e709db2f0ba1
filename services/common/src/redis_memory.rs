//! How full Redis is: `used_memory` as a share of `maxmemory`, sampled.
//!
//! Both services run a [`MemoryWatch`]: one `INFO memory` every
//! [`SAMPLE_EVERY`], never one per request. Ingest refuses new postbacks
//! past `POSTBACK_REDIS_MEMORY_LIMIT_PERCENT`; deliver stops writing its
//! delivery log [`LOG_SHED_POINTS`] points before that; both export the
//! share as `postback_redis_memory_ratio`. The order and its reasons are
//! in `runbooks/redis-memory-high.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio_util::sync::CancellationToken;

/// How often Redis's memory use is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How many percentage points below the ingest limit deliver stops writing
/// its delivery log: the log goes first, postbacks after.
pub const LOG_SHED_POINTS: u8 = 10;

/// Redis's memory figures from `INFO memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `used_memory`, bytes.
    pub used: u64,
    /// `maxmemory`, bytes; 0 when Redis has no limit.
    pub max: u64,
}

impl Memory {
    /// `used / max`, or `None` without a limit.
    pub fn ratio(&self) -> Option<f64> {
        (self.max > 0).then(|| self.used as f64 / self.max as f64)
    }

    /// Reads the two fields out of `INFO memory` text.
    pub fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
        };
        Some(Self { used: field("used_memory")?, max: field("maxmemory")? })
    }
}

/// Reads Redis's memory figures once; on a Cluster, those of the fullest
/// primary (a partition fills the primary that holds it, whatever the
/// others have free).
pub async fn read(redis: &Client) -> Result<Memory, Error> {
    let info = CustomCommand::new_static("INFO", ClusterHash::Random, false);
    let parse = |text: String| {
        Memory::parse(&text).ok_or_else(|| Error::new(ErrorKind::Parse, "INFO memory without used_memory or maxmemory"))
    };
    let primaries = redis.cached_cluster_state().map(|state| state.unique_primary_nodes()).unwrap_or_default();
    if primaries.is_empty() {
        return parse(redis.custom(info, vec!["memory"]).await?);
    }
    let mut fullest: Option<Memory> = None;
    for primary in primaries {
        let memory = parse(redis.with_cluster_node(primary).custom(info.clone(), vec!["memory"]).await?)?;
        let fuller = |m: &Memory| (m.ratio().unwrap_or(0.0), m.used);
        if fullest.is_none_or(|f| fuller(&memory) > fuller(&f)) {
            fullest = Some(memory);
        }
    }
    fullest.ok_or_else(|| Error::new(ErrorKind::Unknown, "a cluster without primaries"))
}

/// The latest sample, shared by a service's tasks.
#[derive(Debug)]
pub struct MemoryWatch {
    /// The ratio's bits; NaN while unknown (no sample yet, no limit, or the
    /// last read failed).
    ratio: AtomicU64,
}

impl Default for MemoryWatch {
    fn default() -> Self {
        Self { ratio: AtomicU64::new(f64::NAN.to_bits()) }
    }
}

impl MemoryWatch {
    /// Starts sampling `redis` until `stop`; the first time Redis turns out
    /// to have no `maxmemory`, `on_unlimited` is called (to say so).
    pub fn spawn(redis: Client, stop: CancellationToken, on_unlimited: impl FnOnce() + Send + 'static) -> Arc<Self> {
        let watch = Arc::new(Self::default());
        let sampled = watch.clone();
        tokio::spawn(async move {
            let mut on_unlimited = Some(on_unlimited);
            loop {
                match read(&redis).await {
                    Ok(memory) => {
                        sampled.set(memory);
                        if memory.max == 0
                            && let Some(say) = on_unlimited.take()
                        {
                            say();
                        }
                    }
                    Err(_) => sampled.ratio.store(f64::NAN.to_bits(), Ordering::Relaxed),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        });
        watch
    }

    /// Records a sample.
    pub fn set(&self, memory: Memory) {
        self.ratio.store(memory.ratio().unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }

    /// `used_memory / maxmemory` at the last sample, if known.
    pub fn ratio(&self) -> Option<f64> {
        Some(f64::from_bits(self.ratio.load(Ordering::Relaxed))).filter(|r| !r.is_nan())
    }

    /// Whether the last sample is at or past `percent` of `maxmemory`
    /// (never when `percent` is 0 or the share is unknown).
    pub fn at_or_over(&self, percent: u8) -> bool {
        percent > 0 && self.ratio().is_some_and(|r| r * 100.0 >= f64::from(percent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_two_fields_of_info_memory() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\nmaxmemory_human:4.00M\r\n";
        let memory = Memory::parse(info).expect("parsed");
        assert_eq!(memory, Memory { used: 1_048_576, max: 4_194_304 });
        assert_eq!(memory.ratio(), Some(0.25));
        assert_eq!(Memory::parse("used_memory:5\r\nmaxmemory:0\r\n").and_then(|m| m.ratio()), None);
        assert_eq!(Memory::parse("used_memory_rss:5\r\n"), None);
    }

    #[test]
    fn the_watch_compares_with_a_percentage() {
        let watch = MemoryWatch::default();
        assert!(!watch.at_or_over(80), "unknown is not over");
        watch.set(Memory { used: 80, max: 100 });
        assert!(watch.at_or_over(80));
        assert!(!watch.at_or_over(81));
        assert!(!watch.at_or_over(0), "0 turns the check off");
        watch.set(Memory { used: 80, max: 0 });
        assert_eq!(watch.ratio(), None);
        assert!(!watch.at_or_over(1));
    }
}
