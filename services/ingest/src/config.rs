//! Settings of `postback-ingest`: flags with `POSTBACK_*` environment
//! fallbacks, checked once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use postback_common::config::RedisArgs;

/// Accepts postback requests over HTTP and queues them in Redis for delivery.
#[derive(Debug, Clone, Parser)]
#[command(name = "postback-ingest", version, about)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    /// Address to listen on for HTTP.
    #[arg(long = "addr", env = "POSTBACK_INGEST_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "POSTBACK_MAX_BODY_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_body_bytes: u64,

    /// How long to wait for Redis to confirm an enqueue before answering 503.
    #[arg(long, env = "POSTBACK_REDIS_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,

    /// Refuse new postbacks (503) while this many wait for delivery (queued
    /// plus scheduled retries); 0 means no limit.
    #[arg(long, env = "POSTBACK_MAX_BACKLOG", default_value_t = 1_000_000)]
    pub max_backlog: u64,

    /// Refuse new postbacks (503) once Redis's used_memory passes this
    /// share of its maxmemory, leaving the rest for retries, dead letters
    /// and acknowledgements; 0 turns the check off.
    #[arg(long, env = "POSTBACK_REDIS_MEMORY_LIMIT_PERCENT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub redis_memory_limit_percent: u8,

    /// Replicas that must confirm a write (Redis WAIT) before the 202; 0
    /// answers as soon as the primary has it.
    #[arg(long, env = "POSTBACK_INGEST_WAIT_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub wait_replicas: u32,

    /// How long an Idempotency-Key is remembered, in seconds: the same key
    /// and body within it get the first answer again, nothing queued twice.
    #[arg(long, env = "POSTBACK_IDEMPOTENCY_TTL_S", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub idempotency_ttl_s: u64,

    /// Most data items (postbacks) in one request.
    #[arg(long, env = "POSTBACK_MAX_ITEMS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_items: u64,

    /// Most keys in one data item.
    #[arg(long, env = "POSTBACK_MAX_KEYS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_keys: u64,

    /// Longest key or string value in a data item, in bytes.
    #[arg(long, env = "POSTBACK_MAX_VALUE_BYTES", default_value_t = 4_096,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_value_bytes: u64,

    /// Longest URL, as a template and after expansion (missing keys empty).
    #[arg(long, env = "POSTBACK_MAX_URL_BYTES", default_value_t = 8_192,
          value_parser = clap::value_parser!(u64).range(64..=1 << 20))]
    pub max_url_bytes: u64,

    /// Time a client has to send a request's headers (and that a kept-alive
    /// connection may sit idle); the connection is closed after it.
    #[arg(long, env = "POSTBACK_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,

    /// Time a client has to send a request's body once its headers are in;
    /// after it the request gets 408 and the connection is closed.
    #[arg(long, env = "POSTBACK_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub body_timeout_ms: u64,

    /// Connections open at once; more wait in the listen backlog until one
    /// closes.
    #[arg(long, env = "POSTBACK_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// How long shutdown waits for requests in progress before closing
    /// their connections.
    #[arg(long, env = "POSTBACK_SHUTDOWN_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,

    /// Postbacks per second accepted from all requests that have no rate of
    /// their own (all requests when no tokens are configured), across every
    /// ingest instance; over it, 429. Unset: no limit.
    #[arg(long, env = "POSTBACK_INGEST_RATE", value_parser = crate::rate::Rate::parse)]
    pub ingest_rate: Option<crate::rate::Rate>,

    /// File of accepted bearer tokens, one SHA-256 (hex) per line, each
    /// optionally followed by its rate in postbacks per second; when set,
    /// ingest routes answer 401 without one of them.
    #[arg(long, env = "POSTBACK_INGEST_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
}

impl Config {
    /// The body limit as a `usize`.
    pub fn max_body(&self) -> usize {
        usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX)
    }

    /// The enqueue timeout.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Checks what clap cannot: that the tokens file, if any, is usable.
    pub fn validate(&self) -> Result<(), postback_common::config::ConfigError> {
        if let Some(path) = &self.tokens_file {
            crate::auth::Tokens::load(path)
                .map_err(|e| postback_common::config::ConfigError::new("POSTBACK_INGEST_TOKENS_FILE", e.detail()))?;
        }
        Ok(())
    }

    /// The admission limits ([`crate::gate`]).
    pub fn gate(&self) -> crate::gate::Limits {
        crate::gate::Limits { max_backlog: self.max_backlog, memory_percent: self.redis_memory_limit_percent }
    }

    /// The enqueue settings.
    pub fn enqueue(&self) -> crate::enqueue::Settings {
        crate::enqueue::Settings {
            timeout: self.redis_timeout(),
            wait_replicas: self.wait_replicas,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_s),
        }
    }

    /// What the HTTP server bounds.
    pub fn serve_limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }

    /// The time allowed for a request body.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// The request limits.
    pub fn limits(&self) -> crate::request::Limits {
        crate::request::Limits {
            max_items: self.max_items as usize,
            max_keys: self.max_keys as usize,
            max_value_bytes: self.max_value_bytes as usize,
            max_url_bytes: self.max_url_bytes as usize,
        }
    }

    /// Defaults, as if started with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        Self::parse_from(["postback-ingest"])
    }
}
