//! Building and running a delivery worker with its admin listener.
//!
//! [`Deliverer::build`] binds the admin listener (port 0 works, for tests),
//! creates the Redis clients (connecting in the background: the worker
//! starts even while Redis is down) and the HTTP client. [`Deliverer::run`]
//! works until the shutdown token is cancelled, finishes what is in flight,
//! flushes the acknowledgements, and returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::redis_memory::MemoryWatch;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::attempt_log::{AttemptLog, Shedding};
use crate::config::Config;
use crate::degraded::Degraded;
use crate::endpoints::Endpoints;
use crate::finish::Finisher;
use crate::guard::Guard;
use crate::hosts::HostLimits;
use crate::http::{ClientSettings, Egress};
use crate::intake::Intake;
use crate::ledger::Ledger;
use crate::metrics::DeliverMetrics;
use crate::retry::RetryPolicy;
use crate::scheduler::Scheduler;
use crate::shared::Shared;
use crate::signing::SigningKeys;
use crate::worker::{EntrySizes, Worker};

/// Longest wait for a Redis reply to any non-blocking command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long, at shutdown, finishing steps wait for Redis.
const ACK_GRACE: Duration = Duration::from_secs(5);

/// What every partition's worker shares.
struct Common {
    egress: Arc<crate::http::Egress>,
    signing: Arc<SigningKeys>,
    hosts: Arc<HostLimits>,
    rates: Arc<crate::host_rates::HostRates>,
    breaker: Arc<crate::breaker::Breaker>,
    guard: Option<Arc<Guard>>,
    attempt_log: AttemptLog,
    policy: RetryPolicy,
    max_request_timeout: Duration,
    slot_patience: Duration,
    slots: Arc<Semaphore>,
    metrics: Arc<DeliverMetrics>,
    degraded: Arc<Degraded>,
    consumer: String,
}

/// One partition's tasks, running, and its worker loop until it starts.
struct Partition {
    worker: Option<Worker>,
    recorder: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    janitor: tokio::task::JoinHandle<()>,
}

/// A built, ready-to-run delivery worker.
pub struct Deliverer {
    config: Config,
    admin_listener: TcpListener,
    redis: Client,
    reader: Client,
    egress: Egress,
    guard: Option<Arc<Guard>>,
    signing: SigningKeys,
    host_limits: Arc<crate::host_rates::HostLimitsFile>,
}

impl Deliverer {
    /// Binds the admin address and creates the clients.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let admin_listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (POSTBACK_DELIVER_ADDR): {e}", config.addr))?;
        let redis = postback_common::redis::connect(&config.redis.redis_url, COMMAND_TIMEOUT)?;
        // A blocked XREADGROUP is answered within its BLOCK time; only a
        // Redis that went away takes longer.
        let reader = postback_common::redis::connect(&config.redis.redis_url, config.read_block() + COMMAND_TIMEOUT)?;
        let guard = (!config.allow_private_targets).then(|| Arc::new(Guard { allow: config.target_allow.clone() }));
        let egress = Egress::new(ClientSettings {
            timeout: config.http_timeout(),
            max_idle_per_host: config.concurrency as usize,
            max_redirects: config.max_redirects as usize,
            guard: guard.clone(),
            proxy: config.egress_proxy.clone(),
        })?;
        let signing = match &config.signing_keys_file {
            Some(path) => SigningKeys::load(path).map_err(|e| anyhow::anyhow!("POSTBACK_SIGNING_KEYS_FILE: {e}"))?,
            None => SigningKeys::default(),
        };
        let host_limits = match &config.host_limits_file {
            Some(path) => {
                crate::host_rates::load(path).map_err(|e| anyhow::anyhow!("POSTBACK_HOST_LIMITS_FILE: {e}"))?
            }
            None => Default::default(),
        };
        Ok(Self { config, admin_listener, redis, reader, egress, guard, signing, host_limits: Arc::new(host_limits) })
    }

    /// The admin listener's address (the real port when 0 was asked for).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().unwrap_or(self.config.addr)
    }

    /// Delivers until `shutdown` is cancelled; returns once in-flight
    /// attempts are over and their acknowledgements are flushed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let partitions = self.config.group.partitions(&self.config.redis);
        let keys = partitions.shared().clone();
        let group_ready: Vec<_> = partitions.all().iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
        let admin_stop = CancellationToken::new();
        let metrics = Arc::new(DeliverMetrics::new());
        let admin_app = admin::router(AdminState {
            redis: self.redis.clone(),
            group_ready: group_ready.clone(),
            partitions: partitions.clone(),
            metrics: metrics.clone(),
        });
        let admin_addr = self.admin_addr();
        let admin = {
            let stop = admin_stop.clone();
            tokio::spawn(async move {
                axum::serve(self.admin_listener, admin_app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };
        tracing::info!(admin = %admin_addr, partitions = partitions.count(), "admin listening");
        if self.guard.is_none() {
            tracing::warn!(
                "POSTBACK_ALLOW_PRIVATE_TARGETS=true: the SSRF guard is OFF; postbacks can reach this host and its private network"
            );
        }

        let config = &self.config;
        let memory_stop = CancellationToken::new();
        let memory = MemoryWatch::spawn(self.redis.clone(), memory_stop.clone(), || {
            tracing::warn!(
                "Redis has no maxmemory: nothing is shed before the machine's memory runs out (see ops/redis.conf)"
            );
        });
        metrics.watch_memory(memory.clone());
        let degraded = Arc::new(Degraded::new(metrics.clone()));
        let minutes_stop = CancellationToken::new();
        let minutes = {
            let (counts, redis, prefix, stop) =
                (metrics.minutes.clone(), self.redis.clone(), keys.minutes.clone(), minutes_stop.clone());
            tokio::spawn(async move { counts.run(redis, prefix, stop).await })
        };
        let consumer = config.consumer_name();
        let (attempt_log, log_writer) = if config.attempt_log_maxlen > 0 {
            let shed = Shedding { memory, at_percent: config.log_shed_percent(), degraded: degraded.clone() };
            let (log, task) = AttemptLog::spawn(self.redis.clone(), keys.log.clone(), config.attempt_log_maxlen, shed);
            (log, Some(task))
        } else {
            (AttemptLog::disabled(), None)
        };
        let policy = RetryPolicy {
            max_attempts: config.max_attempts,
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
        };
        let (shortest, longest) = policy.window();
        tracing::info!(
            max_attempts = config.max_attempts,
            shortest = %humantime::format_duration(Duration::from_secs(shortest.as_secs())),
            longest = %humantime::format_duration(Duration::from_secs(longest.as_secs())),
            "retry window: a postback that keeps failing is dead-lettered this long after its first attempt"
        );
        let breaker = Arc::new(crate::breaker::Breaker::new(
            postback_common::breaker::Breakers::new(&keys),
            self.redis.clone(),
            crate::breaker::Settings {
                failures: config.breaker_failures,
                pause: Duration::from_millis(config.breaker_pause_ms),
                probe_lease: config.http_timeout() + COMMAND_TIMEOUT,
            },
            metrics.clone(),
        ));
        let breaker_stop = CancellationToken::new();
        let breaker_task = {
            let (breaker, stop) = (breaker.clone(), breaker_stop.clone());
            tokio::spawn(async move { breaker.run(stop).await })
        };
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        // An entry of several postbacks stays pending while they wait for
        // slots; it must be finished well before POSTBACK_CLAIM_IDLE_MS, or
        // another worker would take it over and deliver the unfinished
        // ones again.
        let slot_patience =
            (config.claim_idle().saturating_sub(config.http_timeout()) / 2).max(crate::hosts::HOST_PATIENCE);
        // A request's own timeout, with the longest wait for a slot, must
        // also end well before the claim idle time.
        let max_request_timeout = config.claim_idle().saturating_sub(slot_patience) * 3 / 4;
        tracing::info!(
            max_ms = max_request_timeout.as_millis() as u64,
            "a request's delivery.timeout_ms is honoured up to this (from POSTBACK_CLAIM_IDLE_MS)"
        );
        let common = Common {
            egress: Arc::new(self.egress),
            signing: Arc::new(self.signing),
            hosts: Arc::new(HostLimits::new(config.per_host_concurrency as usize, self.host_limits.clone())),
            rates: Arc::new(crate::host_rates::HostRates::new(
                self.host_limits,
                self.redis.clone(),
                keys.host_rate.clone(),
            )),
            breaker,
            guard: self.guard,
            attempt_log,
            policy,
            max_request_timeout,
            slot_patience,
            slots,
            metrics: metrics.clone(),
            degraded,
            consumer,
        };
        let ack_stop = CancellationToken::new();
        // Every partition reads on its own connection (a blocked read
        // holds it); the first on the one made at build.
        let mut readers = vec![self.reader.clone()];
        while readers.len() < partitions.count() as usize {
            readers
                .push(postback_common::redis::connect(&config.redis.redis_url, config.read_block() + COMMAND_TIMEOUT)?);
        }
        let mut running: Vec<Partition> = partitions
            .all()
            .iter()
            .zip(group_ready)
            .zip(&readers)
            .map(|((keys, ready), reader)| {
                let redis = (reader.clone(), self.redis.clone());
                start_partition(config, &common, keys.clone(), redis, ready, (&ack_stop, &shutdown))
            })
            .collect();
        let shares_slots = running.len() > 1;
        let workers: Vec<_> = running
            .iter_mut()
            .filter_map(|partition| partition.worker.take())
            .map(|mut worker| {
                worker.shares_slots = shares_slots;
                tokio::spawn(worker.run(shutdown.clone()))
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
        // Acknowledge what finished; anything abandoned stays pending.
        ack_stop.cancel();
        for partition in running {
            let _ = partition.recorder.await;
            let _ = partition.scheduler.await;
            let _ = partition.janitor.await;
        }
        drop(common);
        if let Some(task) = log_writer {
            // Ends once the worker's handles are gone; abandoned attempts may
            // keep one alive, so do not wait long.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        breaker_stop.cancel();
        let _ = breaker_task.await;
        memory_stop.cancel();
        minutes_stop.cancel();
        let _ = minutes.await;
        admin_stop.cancel();
        let _ = admin.await;
        for reader in &readers {
            postback_common::redis::close(reader).await;
        }
        postback_common::redis::close(&self.redis).await;
        tracing::info!("deliver stopped");
        Ok(())
    }
}

/// Starts one partition's recorder, scheduler and janitor, and builds its
/// worker loop; `(reader, redis)` are its reading and command clients.
fn start_partition(
    config: &Config,
    common: &Common,
    keys: Keys,
    (reader, redis): (Client, Client),
    group_ready: Arc<AtomicBool>,
    (ack_stop, shutdown): (&CancellationToken, &CancellationToken),
) -> Partition {
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
    let scheduler = tokio::spawn(crate::scheduler::run(
        Scheduler {
            redis: redis.clone(),
            keys: keys.clone(),
            wake: finisher.scheduled.clone(),
            degraded: common.degraded.clone(),
            retention: config.dead_retention,
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    let janitor = tokio::spawn(crate::janitor::run(
        redis.clone(),
        keys.clone(),
        common.consumer.clone(),
        Duration::from_millis(config.consumer_gone_ms),
        metrics.clone(),
        shutdown.clone(),
    ));
    let intake = Intake::new(
        (reader, redis.clone()),
        keys.clone(),
        common.consumer.clone(),
        config.read_block(),
        config.claim_idle(),
        metrics.clone(),
    );
    let worker = Worker {
        intake,
        redis: redis.clone(),
        keys: keys.clone(),
        consumer: common.consumer.clone(),
        read_count: config.read_count as usize,
        read_block: config.read_block(),
        slots: common.slots.clone(),
        group_ready,
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
            attempt_log: common.attempt_log.clone(),
            max_url_bytes: config.max_url_bytes as usize,
            max_request_timeout: common.max_request_timeout,
            metrics: metrics.clone(),
            finisher,
            redis: redis.clone(),
            keys,
            endpoints: Endpoints::default(),
            slots: common.slots.clone(),
            slot_patience: common.slot_patience,
        }),
        sizes: EntrySizes::default(),
        shares_slots: false,
    };
    Partition { worker: Some(worker), recorder: recorder_task, scheduler, janitor }
}
