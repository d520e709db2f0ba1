//! Building and running the ingest service.
//!
//! [`Application::build`] binds the listener (port 0 works, for tests) and
//! starts connecting to Redis in the background: the service serves even
//! while Redis is down (requests that arrive before the first connection
//! wait for it, up to `POSTBACK_REDIS_TIMEOUT_MS`; later outages answer
//! 503 at once until Redis is back).
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
        Ok(Self { listener, state: AppState::with_tokens(redis, config, tokens) })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.addr)
    }

    /// Serves until `shutdown` is cancelled and in-flight requests are done.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, stream = %self.state.keys.stream, "ingest listening");
        let redis = self.state.redis.clone();
        let limits = self.state.config.serve_limits();
        crate::serve::serve(self.listener, router(self.state), limits, shutdown).await;
        postback_common::redis::close(&redis).await;
        tracing::info!("ingest stopped");
        Ok(())
    }
}
