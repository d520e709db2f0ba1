//! Building and running the ingest service.
//!
//! [`Application::build`] binds the listener (port 0 works, for tests) and
//! starts connecting to Redis in the background: the service serves even
//! while Redis is down (requests that arrive before the first connection
//! wait for it, up to `POSTBACK_REDIS_TIMEOUT_MS`; later outages answer
//! 503 at once until Redis is back).
//! The partition record is read once Redis answers
//! ([`crate::partitions`]); a record that disagrees with
//! `POSTBACK_PARTITIONS` stops the service with an error naming both.
//! [`Application::run`] serves (with the bounds of [`crate::serve`]) until
//! the shutdown token is cancelled, then stops accepting connections, lets
//! every in-flight request finish within the grace time (each ends in a 202
//! once its enqueue script has returned, or an error), and closes Redis.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::routes::router;
use crate::state::AppState;

/// A bound, ready-to-run ingest service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Stops the memory sampler and the partition record's follower.
    memory_stop: CancellationToken,
    /// Reads the partition record, then follows it.
    loader: crate::partitions::Loader,
}

impl Application {
    /// Binds `config.addr` and creates the Redis client.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (POSTBACK_INGEST_ADDR): {e}", config.addr))?;
        let tokens = config.tokens_file.as_deref().map(crate::auth::Tokens::load).transpose()?;
        if tokens.is_none() && !config.addr.ip().is_loopback() {
            tracing::warn!(
                addr = %config.addr,
                "ingest listens beyond this host and POSTBACK_INGEST_TOKENS_FILE is not set: ANYONE who can reach it can send postbacks through it"
            );
        }
        let redis = postback_common::redis::connect(&config.redis.redis_url, config.redis_timeout())?;
        let memory_stop = CancellationToken::new();
        let limit = config.redis_memory_limit_percent;
        let (views, loader) = crate::partitions::Views::pending();
        let state = AppState::with_tokens(redis, config, tokens, views);
        state.start_sampling(memory_stop.clone(), move || {
            if limit > 0 {
                tracing::warn!(
                    "Redis has no maxmemory: POSTBACK_REDIS_MEMORY_LIMIT_PERCENT cannot keep headroom, and a full \
                     machine will fail writes instead of ingest refusing them; set maxmemory (see ops/redis.conf)"
                );
            }
        });
        Ok(Self { listener, state, memory_stop, loader })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.addr)
    }

    /// Serves until `shutdown` is cancelled and in-flight requests are
    /// done; fails when the partition record cannot be used.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, stream = %self.state.config.redis.stream, "ingest listening");
        let redis = self.state.redis.clone();
        let limits = self.state.config.serve_limits();
        let stop = shutdown.child_token();
        let loading = {
            let (redis, config, stop, follow) =
                (redis.clone(), self.state.config.clone(), stop.clone(), self.memory_stop.clone());
            let loader = self.loader;
            tokio::spawn(async move {
                let loaded = loader.run(redis, &config, follow).await;
                if loaded.is_err() {
                    stop.cancel();
                }
                loaded
            })
        };
        crate::serve::serve(self.listener, router(self.state), limits, stop).await;
        self.memory_stop.cancel();
        if let Ok(Err(e)) = loading.await {
            postback_common::redis::close(&redis).await;
            return Err(std::io::Error::other(e.to_string()));
        }
        postback_common::redis::close(&redis).await;
        tracing::info!("ingest stopped");
        Ok(())
    }
}
