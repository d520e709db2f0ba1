//! Admission: whether a request's postbacks may be queued, decided in
//! memory, without a round trip: `POSTBACK_MAX_BACKLOG` (postbacks waiting
//! in the request's partition) and `POSTBACK_REDIS_MEMORY_LIMIT_PERCENT`
//! (what Redis would hold once every queued postback waits in the retry
//! schedule).
//!
//! A sampler reads Redis every [`SAMPLE_EVERY`]: each primary's
//! `used_memory` and `maxmemory`, and per partition its backlog (`XLEN` of
//! the stream, its batched and scheduled counts, the old schedule's
//! members) and its stream's memory (`MEMORY USAGE`, sampled). Between
//! samples this ingest counts what it admits itself, so a burst cannot
//! overrun either limit however fast it comes: a request is refused once
//!
//! * the partition's backlog at the last sample plus the postbacks admitted
//!   since reach `POSTBACK_MAX_BACKLOG`, or
//! * on the partition's primary, `used_memory + stream bytes +
//!   2 × bytes admitted since` reaches the limit's share of `maxmemory`.
//!
//! The memory rule is the retry footprint: a postback scheduled again
//! costs Redis at most twice what it took in its entry (`postback-bench
//! bytes` measures it, and its test holds it), so a stream that drains into
//! the schedule at most adds its own size again; what was admitted since
//! the last sample is counted at twice its size for the same reason. The
//! headroom above the limit is for deliver (dead letters, the delivery log,
//! a level's own few KiB); README, "Sizing Redis", has the rule.
//!
//! The counts are this process's: several ingest processes each admit up
//! to the headroom between two samples (half a second). A sample that
//! fails keeps the last one and the counts growing, so admission stops at
//! the last known headroom instead of going on blind. Once no sample has
//! succeeded for [`UNSAMPLED_AFTER`] (30 s; since start if none ever did,
//! as when INFO is refused by an ACL or renamed), every request is refused
//! while a limit is set: the gate does not admit what it cannot measure.
//! `postback_ingest_gate_sample_age_seconds` shows how old the sample is,
//! and runbooks/ingest-unavailable.md says what to look at.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use postback_common::config::MAX_PARTITIONS as MAX_INDEX;
use postback_common::keys::Partitions;
use postback_common::redis_memory::{Memory, MemoryWatch};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::partitions::View;

/// Partition indexes the counts have room for.
const MAX_PARTITIONS: usize = MAX_INDEX as usize;

/// How often Redis is read.
pub const SAMPLE_EVERY: Duration = postback_common::redis_memory::SAMPLE_EVERY;

/// What a postback queued now may cost Redis once it waits in the retry
/// schedule, as a multiple of what it costs in its entry.
pub const RETRY_FOOTPRINT: u64 = 2;

/// Bytes Redis spends on a stream entry besides its value (the entry's
/// id, field and listpack bookkeeping), counted for what is admitted
/// between samples.
pub const ENTRY_OVERHEAD: u64 = 40;

/// How long admission goes on without a successful sample before it
/// refuses everything (while a limit is set).
pub const UNSAMPLED_AFTER: Duration = Duration::from_secs(30);

/// Sampled streams: listpack nodes read to estimate a stream's memory.
const MEMORY_SAMPLES: i64 = 5;

/// The limits, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `POSTBACK_MAX_BACKLOG` (0: none).
    pub max_backlog: u64,
    /// `POSTBACK_REDIS_MEMORY_LIMIT_PERCENT` (0: none).
    pub memory_percent: u8,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The partition's backlog is at `POSTBACK_MAX_BACKLOG`.
    Backlog {
        /// Postbacks waiting (at the last sample, and admitted since).
        backlog: u64,
        /// The limit.
        max: u64,
    },
    /// Redis would pass the memory limit.
    Memory {
        /// What it would reach, in percent of `maxmemory`.
        percent: f64,
        /// The limit.
        limit: u8,
    },
    /// No sample has succeeded for [`UNSAMPLED_AFTER`] or longer.
    Unsampled {
        /// How long, in seconds.
        secs: u64,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Backlog { backlog, max } => {
                write!(f, "backlog full: {backlog} postbacks waiting (POSTBACK_MAX_BACKLOG {max})")
            }
            Refused::Memory { percent, limit } => write!(
                f,
                "Redis memory would reach {percent:.0}% of maxmemory once the queued postbacks wait for retries, \
                 at or over POSTBACK_REDIS_MEMORY_LIMIT_PERCENT ({limit}%)"
            ),
            Refused::Unsampled { secs } => write!(
                f,
                "Redis's memory and backlog could not be read for {secs} s (INFO memory, XLEN); nothing is admitted \
                 that cannot be measured"
            ),
        }
    }
}

/// One read of Redis.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Per partition index: postbacks waiting, and the primary it is on
    /// (`None` for indexes not listed).
    partitions: Vec<Option<(u64, usize)>>,
    /// Per primary: its memory, and the bytes of the streams on it.
    nodes: Vec<(Memory, u64)>,
}

/// What the sampler and the handlers share.
pub struct Gate {
    limits: Limits,
    sample: RwLock<Option<Sample>>,
    /// Set once the first sample was tried: requests before it wait for it.
    sampled: tokio::sync::watch::Sender<bool>,
    /// Postbacks admitted since the last sample, per partition index.
    admitted: Vec<AtomicU64>,
    /// Bytes admitted since the last sample, per partition index.
    admitted_bytes: Vec<AtomicU64>,
    /// When the last sample succeeded, or sampling started if none did
    /// yet; `None` before sampling starts.
    last_good: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Gate {
    /// A gate that lets everything through until [`spawn`](Self::spawn)
    /// starts sampling; from then on, requests wait for the first sample,
    /// and are let through if it fails (Redis is not up yet; the enqueue
    /// answers then).
    pub fn new(limits: Limits) -> Self {
        let slots = || (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect();
        let (sampled, _) = tokio::sync::watch::channel(true);
        Self {
            limits,
            sample: RwLock::new(None),
            sampled,
            admitted: slots(),
            admitted_bytes: slots(),
            last_good: std::sync::Mutex::new(None),
        }
    }

    /// How old the last good sample is (since sampling started, if none
    /// succeeded yet); `None` before sampling starts.
    pub fn sample_age(&self) -> Option<Duration> {
        let last = *self.last_good.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.map(|at| at.elapsed())
    }

    fn sampled_now(&self) {
        *self.last_good.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
    }

    /// Starts sampling `redis` until `stop`, keeping `memory` (the
    /// `postback_redis_memory_ratio` gauge) at the fullest primary's share;
    /// the first time Redis turns out to have no `maxmemory`,
    /// `on_unlimited` is called.
    pub fn spawn(
        self: &Arc<Self>,
        redis: Client,
        views: watch::Receiver<Option<Arc<View>>>,
        memory: Arc<MemoryWatch>,
        stop: CancellationToken,
        on_unlimited: impl FnOnce() + Send + 'static,
    ) {
        let gate = self.clone();
        gate.sampled.send_replace(false);
        gate.sampled_now();
        tokio::spawn(async move {
            let mut on_unlimited = Some(on_unlimited);
            let mut views = views;
            // Nothing to sample before the partition record is read.
            tokio::select! {
                () = stop.cancelled() => return,
                _ = views.wait_for(Option::is_some) => {}
            }
            loop {
                let taken = gate.take_counts();
                let view = views.borrow().clone();
                let sampled = match &view {
                    Some(view) => read(&redis, &view.partitions).await,
                    None => Err(Error::new(ErrorKind::Unknown, "the partition record is not read yet")),
                };
                match sampled {
                    Ok(sample) => {
                        if let Some(fullest) = fullest(&sample) {
                            memory.set(fullest);
                            if fullest.max == 0
                                && let Some(say) = on_unlimited.take()
                            {
                                say();
                            }
                        }
                        *gate.sample.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sample);
                        gate.sampled_now();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot sample Redis's backlog and memory; keeping the last sample");
                        // Not sampled: what was admitted since still counts.
                        gate.give_back(&taken);
                    }
                }
                gate.sampled.send_replace(true);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        });
    }

    /// Admits `postbacks` postbacks of `bytes` bytes (their entries'
    /// values) into partition `partition`, or says why not; before the
    /// first sample, waits for it up to `patience`.
    pub async fn admit(&self, partition: u32, postbacks: u64, bytes: u64, patience: Duration) -> Result<(), Refused> {
        if !*self.sampled.borrow() {
            let mut sampled = self.sampled.subscribe();
            let _ = tokio::time::timeout(patience, sampled.wait_for(|done| *done)).await;
        }
        self.admit_now(partition, postbacks, bytes)
    }

    /// [`admit`](Self::admit), with the sample there is.
    fn admit_now(&self, partition: u32, postbacks: u64, bytes: u64) -> Result<(), Refused> {
        let limited = self.limits.max_backlog > 0 || self.limits.memory_percent > 0;
        if let Some(age) = self.sample_age().filter(|age| limited && *age >= UNSAMPLED_AFTER) {
            return Err(Refused::Unsampled { secs: age.as_secs() });
        }
        let guard = self.sample.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(sample) = guard.as_ref() else { return Ok(()) };
        let p = partition as usize;
        let Some(&Some((backlog, node))) = sample.partitions.get(p) else { return Ok(()) };
        let admitted = self.admitted[p].fetch_add(postbacks, Ordering::Relaxed) + postbacks;
        let max = self.limits.max_backlog;
        if max > 0 && backlog + admitted > max {
            self.admitted[p].fetch_sub(postbacks, Ordering::Relaxed);
            return Err(Refused::Backlog { backlog: backlog + admitted - postbacks, max });
        }
        let (memory, streams) = sample.nodes[node];
        self.admitted_bytes[p].fetch_add(bytes, Ordering::Relaxed);
        let limit = self.limits.memory_percent;
        if limit > 0 && memory.max > 0 {
            // Everything admitted since the sample into partitions on the
            // same primary.
            let on_node: u64 = sample
                .partitions
                .iter()
                .zip(&self.admitted_bytes)
                .filter(|(sampled, _)| sampled.is_some_and(|(_, n)| n == node))
                .map(|(_, admitted)| admitted.load(Ordering::Relaxed))
                .sum();
            let projected = memory.used + streams + RETRY_FOOTPRINT * on_node;
            if projected as f64 * 100.0 >= f64::from(limit) * memory.max as f64 {
                self.admitted[p].fetch_sub(postbacks, Ordering::Relaxed);
                self.admitted_bytes[p].fetch_sub(bytes, Ordering::Relaxed);
                let percent = projected as f64 * 100.0 / memory.max as f64;
                return Err(Refused::Memory { percent, limit });
            }
        }
        Ok(())
    }

    /// Takes the counts so far, before a sample that includes them is read.
    fn take_counts(&self) -> (Vec<u64>, Vec<u64>) {
        let take = |counts: &[AtomicU64]| counts.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect();
        (take(&self.admitted), take(&self.admitted_bytes))
    }

    /// Puts counts taken back (the sample that was to include them failed).
    fn give_back(&self, (postbacks, bytes): &(Vec<u64>, Vec<u64>)) {
        for (count, n) in self.admitted.iter().zip(postbacks) {
            count.fetch_add(*n, Ordering::Relaxed);
        }
        for (count, n) in self.admitted_bytes.iter().zip(bytes) {
            count.fetch_add(*n, Ordering::Relaxed);
        }
    }
}

/// The fullest primary's memory (by share of its `maxmemory`, then bytes).
fn fullest(sample: &Sample) -> Option<Memory> {
    sample.nodes.iter().map(|(memory, _)| *memory).max_by(|a, b| {
        let key = |m: &Memory| (m.ratio().unwrap_or(0.0), m.used);
        key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// Reads every primary's memory and every partition's backlog and stream
/// memory.
async fn read(redis: &Client, partitions: &Partitions) -> Result<Sample, Error> {
    let info = CustomCommand::new_static("INFO", ClusterHash::Random, false);
    let parse = |text: String| {
        Memory::parse(&text).ok_or_else(|| Error::new(ErrorKind::Parse, "INFO memory without used_memory or maxmemory"))
    };
    let routing = redis.cached_cluster_state();
    let primaries = routing.as_ref().map(|state| state.unique_primary_nodes()).unwrap_or_default();
    let mut nodes: Vec<(Memory, u64)> = Vec::new();
    let mut index: HashMap<fred::types::config::Server, usize> = HashMap::new();
    if primaries.is_empty() {
        nodes.push((parse(redis.custom(info, vec!["memory"]).await?)?, 0));
    } else {
        for primary in primaries {
            let memory = parse(redis.with_cluster_node(&primary).custom(info.clone(), vec!["memory"]).await?)?;
            index.insert(primary, nodes.len());
            nodes.push((memory, 0));
        }
    }
    let pipeline = redis.pipeline();
    for keys in partitions.all() {
        let slot = fred::util::redis_keyslot(keys.stream.as_bytes());
        let usage = CustomCommand::new_static("MEMORY", ClusterHash::Custom(slot), false);
        let _: () = pipeline.xlen(&keys.stream).await?;
        let _: () = pipeline.get(&keys.batched).await?;
        let _: () = pipeline.get(&keys.scheduled).await?;
        let _: () = pipeline.zcard(&keys.retry).await?;
        let _: () = pipeline
            .custom(
                usage,
                vec![Value::from("USAGE"), keys.stream.as_str().into(), "SAMPLES".into(), MEMORY_SAMPLES.into()],
            )
            .await?;
    }
    let replies: Vec<Value> = pipeline.all().await?;
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let size = partitions.all().iter().map(|k| k.partition as usize + 1).max().unwrap_or(0).min(MAX_PARTITIONS);
    let mut out = vec![None; size];
    for (keys, reply) in partitions.all().iter().zip(replies.chunks(5)) {
        let [length, batched, scheduled, old, bytes] = reply else {
            return Err(Error::new(ErrorKind::Unknown, "a short reply to the backlog sample"));
        };
        let length = number(length);
        let backlog = length + if length == 0 { 0 } else { number(batched) } + number(scheduled) + number(old);
        let node = routing
            .as_ref()
            .and_then(|state| state.get_server(fred::util::redis_keyslot(keys.stream.as_bytes())))
            .and_then(|server| index.get(server).copied())
            .unwrap_or(0);
        nodes[node].1 += number(bytes);
        if let Some(slot) = out.get_mut(keys.partition as usize) {
            *slot = Some((backlog, node));
        }
    }
    Ok(Sample { partitions: out, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(max_backlog: u64, memory_percent: u8, sample: Sample) -> Gate {
        let gate = Gate::new(Limits { max_backlog, memory_percent });
        *gate.sample.write().expect("lock") = Some(sample);
        gate
    }

    #[test]
    fn lets_everything_through_until_the_first_sample() {
        let gate = Gate::new(Limits { max_backlog: 1, memory_percent: 1 });
        assert_eq!(gate.admit_now(0, 1_000, 1 << 30), Ok(()));
    }

    #[test]
    fn counts_what_it_admits_between_samples() {
        let gate =
            sampled(100, 0, Sample { partitions: vec![Some((90, 0))], nodes: vec![(Memory { used: 0, max: 0 }, 0)] });
        assert_eq!(gate.admit_now(0, 10, 0), Ok(()));
        assert_eq!(gate.admit_now(0, 1, 0), Err(Refused::Backlog { backlog: 100, max: 100 }));
        gate.take_counts();
        assert_eq!(gate.admit_now(0, 10, 0), Ok(()), "a new sample starts the count again");
    }

    #[test]
    fn memory_counts_the_stream_and_what_is_admitted_at_their_retry_footprint() {
        // 60 % used, streams 10 %: 70 % projected; admitted bytes count twice.
        let memory = Memory { used: 600, max: 1_000 };
        let gate = sampled(0, 80, Sample { partitions: vec![Some((0, 0))], nodes: vec![(memory, 100)] });
        assert_eq!(gate.admit_now(0, 1, 40), Ok(()), "70 % + 2 × 4 % = 78 %");
        let refused = gate.admit_now(0, 1, 10).expect_err("80 %");
        assert!(matches!(refused, Refused::Memory { limit: 80, .. }), "{refused:?}");
        assert!(refused.to_string().contains("POSTBACK_REDIS_MEMORY_LIMIT_PERCENT (80%)"), "{refused}");
        let unlimited =
            sampled(0, 80, Sample { partitions: vec![Some((0, 0))], nodes: vec![(Memory { used: 5, max: 0 }, 5)] });
        assert_eq!(unlimited.admit_now(0, 1, 1 << 40), Ok(()), "no maxmemory, nothing to keep");
    }

    #[test]
    fn a_failed_sample_keeps_the_counts() {
        let gate =
            sampled(10, 0, Sample { partitions: vec![Some((0, 0))], nodes: vec![(Memory { used: 0, max: 0 }, 0)] });
        assert_eq!(gate.admit_now(0, 10, 0), Ok(()));
        let taken = gate.take_counts();
        gate.give_back(&taken);
        assert!(gate.admit_now(0, 1, 0).is_err(), "still counted");
    }
}
