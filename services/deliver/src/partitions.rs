//! The partitions this process reads, started and stopped as the partition
//! record changes ([`postback_common::layout`]).
//!
//! Every listed partition (opening, active or draining) gets its own worker
//! loop, reading connection, recorder, scheduler, janitor and delivery log
//! ([`Reading`]). Once all of an epoch's partitions are started, the
//! process says so in `<stream>:partitions:readers` (at once, and again
//! every [`HEARTBEAT`]): a grow waits for every live reader before ingest
//! writes to the new partitions. A partition that leaves the record is
//! stopped like a shutdown: its loop stops reading, the entries in hand are
//! finished (within the shutdown grace) and recorded.
//!
//! Draining partitions are looked at every [`DRAIN_CHECK`]: once one is
//! empty (`lua/drained.lua`) it is retired, by whichever process sees it
//! first: it leaves the record, and its emptied keys are deleted but for
//! its stream (empty, with the group: a worker still reading it must not
//! re-create it) and its epoch (`{tag}:layout`, which keeps refusing
//! writers with an outdated record).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use postback_common::layout::follow::{self, Follower};
use postback_common::layout::{Layout, State, store};
use postback_common::script::Script;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::attempt_log::{AttemptLog, Shedding};
use crate::config::Config;
use crate::endpoints::Endpoints;
use crate::finish::Finisher;
use crate::intake::Intake;
use crate::ledger::Ledger;
use crate::scheduler::Scheduler;
use crate::shared::Shared;
use crate::startup::{ACK_GRACE, COMMAND_TIMEOUT, Common};
use crate::worker::{EntrySizes, Worker};

/// How often a reader says again which epoch it reads (postbackctl takes
/// one silent for three times this to be gone).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);

/// How often draining partitions are checked for being empty.
pub(crate) const DRAIN_CHECK: Duration = Duration::from_secs(5);

/// What the admin routes see of the partitions.
#[derive(Default)]
pub(crate) struct Live {
    inner: RwLock<Option<(Partitions, Vec<Arc<AtomicBool>>)>>,
}

impl Live {
    /// The partitions read now, once the record has been read.
    pub(crate) fn partitions(&self) -> Option<Partitions> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|(p, _)| p.clone())
    }

    /// Why the process is not ready, if it is not: the record not read
    /// yet, or a partition's group not yet in place.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        match &*self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner) {
            None => Some("partition record not read yet"),
            Some((_, ready)) if !ready.iter().all(|r| r.load(Ordering::Acquire)) => {
                Some("consumer group not set up yet")
            }
            Some(_) => None,
        }
    }

    fn set(&self, partitions: Partitions, ready: Vec<Arc<AtomicBool>>) {
        *self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((partitions, ready));
    }
}

/// One partition being read.
struct Reading {
    keys: Keys,
    ready: Arc<AtomicBool>,
    reader: Client,
    stop: CancellationToken,
    ack_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    worker: JoinHandle<()>,
    log_writer: Option<JoinHandle<()>>,
}

impl Reading {
    /// Stops reading and waits for the entries in hand and their records.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.worker.await;
        self.ack_stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(task) = self.log_writer {
            // Ends once the worker's handles are gone; abandoned attempts
            // may keep one alive, so do not wait long.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        postback_common::redis::close(&self.reader).await;
    }
}

/// Reads every partition the record lists until `shutdown`, then stops
/// them all.
pub(crate) async fn run(
    config: &Config,
    common: &Common,
    redis: Client,
    first: Layout,
    live: Arc<Live>,
    shutdown: CancellationToken,
) {
    let stream = config.redis.stream.clone();
    let follow_stop = CancellationToken::new();
    let follower = follow::spawn(redis.clone(), stream.clone(), first, follow_stop.clone());
    let mut changes = follower.changes();
    let mut reading: HashMap<(u32, String), Reading> = HashMap::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let drained = Script::new(include_str!("lua/drained.lua"));
    let mut next_drain_check = tokio::time::Instant::now() + DRAIN_CHECK;
    let (mut said, mut next_heartbeat) = (None, tokio::time::Instant::now());
    loop {
        let layout = changes.borrow_and_update().clone();
        let partitions = config.group.partitions(&config.redis, &layout);
        let listed: Vec<(u32, String)> = layout.partitions.iter().map(|p| (p.index, p.tag.clone())).collect();
        for gone in reading.keys().filter(|k| !listed.contains(k)).cloned().collect::<Vec<_>>() {
            if let Some(partition) = reading.remove(&gone) {
                tracing::info!(partition = gone.0, stream = %partition.keys.stream, "no longer listed; stopping its reader");
                stopping.push(tokio::spawn(partition.stop()));
            }
        }
        for keys in partitions.all() {
            let id = (keys.partition, tag_of(&layout, keys.partition));
            if let std::collections::hash_map::Entry::Vacant(slot) = reading.entry(id) {
                match start(config, common, keys.clone(), redis.clone(), &shutdown) {
                    Ok(partition) => {
                        slot.insert(partition);
                    }
                    Err(e) => tracing::error!(error = %e, stream = %keys.stream, "cannot start reading a partition"),
                }
            }
        }
        let ready = partitions
            .all()
            .iter()
            .filter_map(|k| reading.get(&(k.partition, tag_of(&layout, k.partition))))
            .map(|r| r.ready.clone())
            .collect();
        live.set(partitions.clone(), ready);
        if said != Some(layout.epoch) || tokio::time::Instant::now() >= next_heartbeat {
            match store::heartbeat(&redis, &stream, &common.consumer, layout.epoch).await {
                Ok(()) => {
                    said = Some(layout.epoch);
                    next_heartbeat = tokio::time::Instant::now() + HEARTBEAT;
                }
                Err(e) => tracing::debug!(error = %e, "cannot say which partitions this process reads"),
            }
        }
        if tokio::time::Instant::now() >= next_drain_check {
            next_drain_check = tokio::time::Instant::now() + DRAIN_CHECK;
            for (keys, state) in partitions.with_states() {
                if state == State::Draining {
                    retire_if_drained(&redis, &drained, &stream, &layout, keys, &follower).await;
                }
            }
        }
        stopping.retain(|task| !task.is_finished());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(follow::POLL) => {}
        }
    }
    follow_stop.cancel();
    let all: Vec<_> = reading.into_values().map(|partition| tokio::spawn(partition.stop())).collect();
    for task in all.into_iter().chain(stopping) {
        let _ = task.await;
    }
}

fn tag_of(layout: &Layout, index: u32) -> String {
    layout.get(index).map(|p| p.tag.clone()).unwrap_or_default()
}

/// Retires draining partition `keys` if it is empty.
async fn retire_if_drained(
    redis: &Client,
    drained: &Script,
    stream: &str,
    layout: &Layout,
    keys: &Keys,
    follower: &Follower,
) {
    let names = [&keys.layout, &keys.stream, &keys.schedule, &keys.scheduled, &keys.retry, &keys.dead];
    let args = vec![(layout.epoch as i64).into(), keys.group.as_str().into()];
    let counts: Vec<i64> = match drained.call(redis, &names.map(String::as_str), args).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, stream = %keys.stream, "cannot look at a draining partition");
            return;
        }
    };
    if counts.iter().any(|n| *n > 0) {
        tracing::debug!(stream = %keys.stream, ?counts, "draining partition not empty yet");
        return;
    }
    // Remove it from the record, unless the record changed meanwhile (the
    // next check tries again with the new one).
    let mut next = layout.clone();
    next.partitions.retain(|p| p.index != keys.partition);
    next.epoch += 1;
    match store::cas(redis, stream, Some(layout.epoch), &next).await {
        Ok(true) => {
            tracing::info!(partition = keys.partition, stream = %keys.stream, "drained partition retired");
            for key in keys.retired() {
                let _: Result<(), _> = redis.del(key).await;
            }
            follower.refresh(Duration::ZERO).await;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, stream = %keys.stream, "cannot retire a drained partition"),
    }
}

/// Starts reading partition `keys`: its recorder, scheduler, janitor,
/// delivery log and worker loop, on a reading connection of its own.
fn start(
    config: &Config,
    common: &Common,
    keys: Keys,
    redis: Client,
    shutdown: &CancellationToken,
) -> Result<Reading, fred::error::Error> {
    let reader = postback_common::redis::connect(&config.redis.redis_url, config.read_block() + COMMAND_TIMEOUT)?;
    let stop = shutdown.child_token();
    let ack_stop = CancellationToken::new();
    let metrics = &common.metrics;
    let ledger = Arc::new(Ledger::new(redis.clone(), keys.clone(), common.consumer.clone()));
    let settings = crate::recorder::Settings {
        ledger,
        metrics: metrics.clone(),
        degraded: common.degraded.clone(),
        give_up_after: ACK_GRACE,
    };
    let (recorder, recorder_task) = crate::recorder::spawn(settings, ack_stop.clone());
    let finisher = Finisher::new(recorder, metrics.clone());
    let mut tasks = vec![recorder_task];
    tasks.push(tokio::spawn(crate::scheduler::run(
        Scheduler {
            redis: redis.clone(),
            keys: keys.clone(),
            wake: finisher.scheduled.clone(),
            degraded: common.degraded.clone(),
            retention: config.dead_retention,
            metrics: metrics.clone(),
        },
        stop.clone(),
    )));
    tasks.push(tokio::spawn(crate::janitor::run(
        redis.clone(),
        keys.clone(),
        common.consumer.clone(),
        Duration::from_millis(config.consumer_gone_ms),
        metrics.clone(),
        stop.clone(),
    )));
    let (attempt_log, log_writer) = if config.attempt_log_maxlen > 0 {
        let shed = Shedding {
            memory: common.memory.clone(),
            at_percent: config.log_shed_percent(),
            degraded: common.degraded.clone(),
        };
        let (log, task) = AttemptLog::spawn(redis.clone(), keys.log.clone(), config.attempt_log_maxlen, shed);
        (log, Some(task))
    } else {
        (AttemptLog::disabled(), None)
    };
    let intake = Intake::new(
        (reader.clone(), redis.clone()),
        keys.clone(),
        common.consumer.clone(),
        config.read_block(),
        config.claim_idle(),
        metrics.clone(),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        intake,
        redis: redis.clone(),
        keys: keys.clone(),
        consumer: common.consumer.clone(),
        read_count: config.read_count as usize,
        read_block: config.read_block(),
        slots: common.slots.clone(),
        group_ready: ready.clone(),
        shutdown_grace: config.shutdown_grace(),
        shared: Arc::new(Shared {
            egress: common.egress.clone(),
            signing: common.signing.clone(),
            unmatched_default: config.unmatched_default.clone(),
            log_body_bytes: config.log_body_bytes as usize,
            policy: common.policy,
            breaker: common.breaker.clone(),
            hosts: common.hosts.clone(),
            rates: common.rates.clone(),
            max_deliveries: config.max_deliveries,
            guard: common.guard.clone(),
            attempt_log,
            max_url_bytes: config.max_url_bytes as usize,
            max_request_timeout: common.max_request_timeout,
            metrics: metrics.clone(),
            finisher,
            redis: redis.clone(),
            keys: keys.clone(),
            endpoints: Endpoints::default(),
            slots: common.slots.clone(),
            slot_patience: common.slot_patience,
            ownership: crate::ownership::Ownership::new(redis.clone(), keys.clone(), common.consumer.clone()),
        }),
        sizes: EntrySizes::default(),
    };
    let worker = tokio::spawn(worker.run(stop.clone()));
    Ok(Reading { keys, ready, reader, stop, ack_stop, tasks, worker, log_writer })
}
