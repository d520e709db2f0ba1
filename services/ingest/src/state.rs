//! What every request handler shares.

use std::sync::Arc;

use fred::prelude::Client;

use crate::partitions::Views;

use crate::config::Config;
use crate::enqueue::Enqueuer;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// Commands to Redis (never a blocking one).
    pub redis: Client,
    /// On a Redis Cluster, a client of each primary for the enqueue path.
    pub nodes: Option<Arc<crate::nodes::Nodes>>,
    /// Partitions that just failed an enqueue without running it.
    pub(crate) failing: crate::nodes::Failing,
    /// The queue's partitions, as the partition record lists them.
    pub views: Views,
    /// Prefix of the callers' rate budgets (`<stream>:rate:`).
    pub(crate) rate_prefix: String,
    /// Accepted bearer tokens, if authentication is on.
    pub(crate) tokens: Option<crate::auth::Tokens>,
    /// Request limits.
    pub(crate) limits: crate::request::Limits,
    /// Runs the enqueue script.
    pub enqueuer: Enqueuer,
    /// Runs the rate script.
    pub(crate) limiter: crate::rate::Limiter,
    /// The service's settings.
    pub(crate) config: Config,
    /// Prometheus metrics.
    pub(crate) metrics: crate::metrics::IngestMetrics,
    /// Redis's memory use, sampled (the fullest primary's share, for the
    /// metrics).
    pub(crate) memory: Arc<postback_common::redis_memory::MemoryWatch>,
    /// Whether a request may be queued ([`crate::gate`]).
    pub(crate) gate: Arc<crate::gate::Gate>,
}

impl AppState {
    /// Wraps the shared parts (no authentication), with the partitions
    /// `views` show.
    pub fn new(redis: Client, config: Config, views: Views) -> Self {
        Self::with_tokens(redis, config, None, views)
    }

    /// Wraps the shared parts, requiring one of `tokens` when given; the
    /// gate samples nothing until [`Inner::start_sampling`] (everything is
    /// let through without a sample).
    pub(crate) fn with_tokens(
        redis: Client,
        config: Config,
        tokens: Option<crate::auth::Tokens>,
        views: Views,
    ) -> Self {
        let gate = Arc::new(crate::gate::Gate::new(config.gate()));
        // The URL was parsed at start-up already; a cluster URL that fails
        // here leaves the cluster client to do everything.
        let nodes = crate::nodes::Nodes::for_url(&config.redis.redis_url, config.redis_timeout()).ok().flatten();
        Self(Arc::new(Inner {
            redis,
            nodes,
            failing: crate::nodes::Failing::default(),
            tokens,
            views,
            rate_prefix: postback_common::keys::Keys::new(&config.redis.stream, "").rate,
            limits: config.limits(),
            enqueuer: Enqueuer::new(config.enqueue(), gate.clone()),
            gate,
            limiter: crate::rate::Limiter::new(config.redis_timeout()),
            config,
            metrics: crate::metrics::IngestMetrics::new(),
            memory: Arc::default(),
        }))
    }
}

impl Inner {
    /// Starts the gate's sampler until `stop`; `on_unlimited` is called
    /// the first time Redis turns out to have no `maxmemory`.
    pub(crate) fn start_sampling(
        &self,
        stop: tokio_util::sync::CancellationToken,
        on_unlimited: impl FnOnce() + Send + 'static,
    ) {
        self.gate.spawn(self.redis.clone(), self.views.changes(), self.memory.clone(), stop, on_unlimited);
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
