//! Settings of `postback-deliver`: flags with `POSTBACK_*` environment
//! fallbacks, checked once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use postback_common::config::{ConfigError, RedisArgs};

/// Reads postbacks from the Redis consumer group and delivers them over HTTP.
#[derive(Debug, Clone, Parser)]
#[command(name = "postback-deliver", version, about)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    /// Address of the admin listener (/healthz, /readyz).
    #[arg(long = "addr", env = "POSTBACK_DELIVER_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,

    /// Deliveries in flight at once, across all targets.
    #[arg(long, env = "POSTBACK_DELIVER_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: u32,

    /// Text that replaces a {key} with no matching data key (or a null value).
    #[arg(long, env = "POSTBACK_UNMATCHED_DEFAULT", default_value = "", hide_default_value = true)]
    pub unmatched_default: String,

    /// Timeout of one HTTP delivery attempt, connection to last body byte.
    #[arg(long, env = "POSTBACK_HTTP_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub http_timeout_ms: u64,

    /// Bytes of a response body kept for the log; the rest is not read.
    #[arg(long, env = "POSTBACK_LOG_BODY_BYTES", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub log_body_bytes: u64,

    /// This worker's name in the consumer group [default: HOSTNAME-PID].
    #[arg(long, env = "POSTBACK_CONSUMER")]
    pub consumer: Option<String>,

    /// Most entries read from the stream per XREADGROUP.
    #[arg(long, env = "POSTBACK_READ_COUNT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub read_count: u32,

    /// How long an idle XREADGROUP blocks waiting for entries; also the
    /// longest a shutdown waits for the read in flight.
    #[arg(long, env = "POSTBACK_READ_BLOCK_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub read_block_ms: u64,
}

impl Config {
    /// Defaults, as if started with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        Self::parse_from(["postback-deliver"])
    }

    /// Checks what clap cannot check field by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.consumer
            && (name.is_empty() || name.chars().any(char::is_control))
        {
            return Err(ConfigError::new("POSTBACK_CONSUMER", "must be a non-empty name without control characters"));
        }
        Ok(())
    }

    /// The consumer name: configured, or `HOSTNAME-PID`.
    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("{}-{}", gethostname::gethostname().to_string_lossy(), std::process::id()))
    }

    /// Per-attempt HTTP timeout.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
    }

    /// How long one XREADGROUP may block.
    pub fn read_block(&self) -> Duration {
        Duration::from_millis(self.read_block_ms)
    }
}
