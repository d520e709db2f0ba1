//! Building and running a delivery worker with its admin listener.
//!
//! [`Deliverer::build`] binds the admin listener (port 0 works, for tests),
//! creates the Redis clients (connecting in the background: the worker
//! starts even while Redis is down) and the HTTP client. [`Deliverer::run`]
//! works until the shutdown token is cancelled, finishes what is in flight,
//! flushes the acknowledgements, and returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::redis_memory::MemoryWatch;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::degraded::Degraded;
use crate::guard::Guard;
use crate::hosts::HostLimits;
use crate::http::{ClientSettings, Egress};
use crate::metrics::DeliverMetrics;
use crate::partitions::Live;
use crate::retry::RetryPolicy;
use crate::signing::SigningKeys;

/// Longest wait for a Redis reply to any non-blocking command.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long, at shutdown, finishing steps wait for Redis.
pub(crate) const ACK_GRACE: Duration = Duration::from_secs(5);

/// What every partition's worker shares.
pub(crate) struct Common {
    pub(crate) egress: Arc<crate::http::Egress>,
    pub(crate) signing: Arc<SigningKeys>,
    pub(crate) hosts: Arc<HostLimits>,
    pub(crate) rates: Arc<crate::host_rates::HostRates>,
    pub(crate) breaker: Arc<crate::breaker::Breaker>,
    pub(crate) guard: Option<Arc<Guard>>,
    pub(crate) memory: Arc<MemoryWatch>,
    pub(crate) policy: RetryPolicy,
    pub(crate) max_request_timeout: Duration,
    pub(crate) slot_patience: Duration,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) metrics: Arc<DeliverMetrics>,
    pub(crate) degraded: Arc<Degraded>,
    pub(crate) consumer: String,
}

/// A built, ready-to-run delivery worker.
pub struct Deliverer {
    config: Config,
    admin_listener: TcpListener,
    redis: Client,
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
        Ok(Self { config, admin_listener, redis, egress, guard, signing, host_limits: Arc::new(host_limits) })
    }

    /// The admin listener's address (the real port when 0 was asked for).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().unwrap_or(self.config.addr)
    }

    /// Delivers until `shutdown` is cancelled; returns once in-flight
    /// attempts are over and their acknowledgements are flushed. Fails when
    /// the partition record cannot be used or disagrees with
    /// `POSTBACK_PARTITIONS`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Names every partition shares (rate budgets, breakers, per-minute
        // counts) do not depend on the record.
        let keys = Keys::new(&self.config.redis.stream, &self.config.group.group);
        let live = Arc::new(Live::default());
        let admin_stop = CancellationToken::new();
        let metrics = Arc::new(DeliverMetrics::new());
        let admin_app = admin::router(AdminState {
            redis: self.redis.clone(),
            live: live.clone(),
            minutes: keys.minutes.clone(),
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
        tracing::info!(admin = %admin_addr, "admin listening");
        let config = &self.config;
        let layout = match config.redis.layout(&self.redis, &shutdown).await {
            Ok(Some(layout)) => layout,
            Ok(None) => {
                admin_stop.cancel();
                let _ = admin.await;
                return Ok(());
            }
            Err(e) => {
                admin_stop.cancel();
                let _ = admin.await;
                postback_common::redis::close(&self.redis).await;
                return Err(anyhow::anyhow!("{e}"));
            }
        };
        tracing::info!(epoch = layout.epoch, partitions = layout.partitions.len(), "following the partition record");
        if self.guard.is_none() {
            tracing::warn!(
                "POSTBACK_ALLOW_PRIVATE_TARGETS=true: the SSRF guard is OFF; postbacks can reach this host and its private network"
            );
        }

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
        // Every wait of a turn is bounded so that it ends before its entry
        // could be taken over (crate::config::Patience).
        let crate::config::Patience { slot: slot_patience, max_request_timeout } = config.patience();
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
            memory,
            policy,
            max_request_timeout,
            slot_patience,
            slots,
            metrics: metrics.clone(),
            degraded,
            consumer,
        };
        crate::partitions::run(config, &common, self.redis.clone(), layout, live, shutdown).await;
        drop(common);
        breaker_stop.cancel();
        let _ = breaker_task.await;
        memory_stop.cancel();
        minutes_stop.cancel();
        let _ = minutes.await;
        admin_stop.cancel();
        let _ = admin.await;
        postback_common::redis::close(&self.redis).await;
        tracing::info!("deliver stopped");
        Ok(())
    }
}
