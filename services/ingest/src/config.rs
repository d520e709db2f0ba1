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

    /// Replicas that must confirm a write (Redis WAIT) before the 202; 0
    /// answers as soon as the primary has it.
    #[arg(long, env = "POSTBACK_INGEST_WAIT_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub wait_replicas: u32,
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

    /// Defaults, as if started with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        Self::parse_from(["postback-ingest"])
    }
}
