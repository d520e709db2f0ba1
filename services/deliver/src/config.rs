//! Settings of `postback-deliver`: flags with `POSTBACK_*` environment
//! fallbacks, checked once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use postback_common::config::{ConfigError, GroupArgs, RedisArgs};

use crate::guard::AllowList;

/// Reads postbacks from the Redis consumer group and delivers them over HTTP.
#[derive(Debug, Clone, Parser)]
#[command(name = "postback-deliver", version, about)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub group: GroupArgs,

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

    /// Attempts per postback in all, the first included; then it is
    /// dead-lettered.
    #[arg(long, env = "POSTBACK_MAX_ATTEMPTS", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_attempts: u32,

    /// Delay before the first retry; each further retry doubles it (equal
    /// jitter: the actual delay is random between half of that and all).
    #[arg(long, env = "POSTBACK_RETRY_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub retry_base_ms: u64,

    /// Longest delay between two attempts (also caps a target's Retry-After).
    #[arg(long, env = "POSTBACK_RETRY_MAX_MS", default_value_t = 7_200_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub retry_max_ms: u64,

    /// Entries pending this long with another worker are taken over
    /// (XAUTOCLAIM): that worker is presumed dead. At least
    /// POSTBACK_HTTP_TIMEOUT_MS + 450 ms (a turn's waits and margin), or
    /// live attempts would be taken over and sent twice.
    #[arg(long, env = "POSTBACK_CLAIM_IDLE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub claim_idle_ms: u64,

    /// An entry handed to workers this many times without being finished
    /// keeps killing them: it is dead-lettered as poison.
    #[arg(long, env = "POSTBACK_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(2..=1_000))]
    pub max_deliveries: u64,

    /// At shutdown, how long attempts in flight may take to finish; the rest
    /// are abandoned and stay pending for another worker.
    #[arg(long, env = "POSTBACK_SHUTDOWN_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub shutdown_grace_ms: u64,

    /// Attempts in flight at once to one host (host:port), so that a slow
    /// target cannot take every slot; busy hosts' postbacks wait in the
    /// retry schedule without using up an attempt.
    #[arg(long, env = "POSTBACK_PER_HOST_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub per_host_concurrency: u32,

    /// Consecutive failed attempts (no response, 408, 429, 5xx) after which
    /// a host is paused for all workers; 0 turns the circuit breaker off.
    #[arg(long, env = "POSTBACK_BREAKER_FAILURES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub breaker_failures: u32,

    /// How long a failing host is first paused; doubled after each failed
    /// probe, up to an hour.
    #[arg(long, env = "POSTBACK_BREAKER_PAUSE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub breaker_pause_ms: u64,

    /// Consumers idle this long and holding nothing are removed from the group.
    #[arg(long, env = "POSTBACK_CONSUMER_GONE_MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000 * 30))]
    pub consumer_gone_ms: u64,

    /// Turn the SSRF guard off: deliver to loopback, private and other
    /// non-global addresses. For local development and tests only.
    #[arg(long, env = "POSTBACK_ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,

    /// Exceptions to the SSRF guard: comma-separated host names and IP
    /// networks (CIDR) that may be reached although not global.
    #[arg(long, env = "POSTBACK_TARGET_ALLOW", default_value = "", hide_default_value = true,
          value_parser = parse_allow_list)]
    pub target_allow: AllowList,

    /// Send every attempt through this proxy (an http://, https:// or
    /// socks5:// URL), e.g. for fixed egress addresses or an SSRF-filtering
    /// proxy. Proxy variables in the environment are always ignored.
    #[arg(long, env = "POSTBACK_EGRESS_PROXY", value_parser = parse_proxy)]
    pub egress_proxy: Option<url::Url>,

    /// File of signing keys (Standard Webhooks): lines `HOST[:PORT]
    /// whsec_BASE64 [whsec_BASE64 …]`; attempts to a listed target carry
    /// webhook-id, webhook-timestamp and webhook-signature.
    #[arg(long, env = "POSTBACK_SIGNING_KEYS_FILE")]
    pub signing_keys_file: Option<std::path::PathBuf>,

    /// File of per-host limits: lines `HOST[:PORT] RATE_PER_SECOND
    /// [CONCURRENCY]`; the rate is shared by all workers, the concurrency
    /// (per worker) replaces POSTBACK_PER_HOST_CONCURRENCY for that host.
    #[arg(long, env = "POSTBACK_HOST_LIMITS_FILE")]
    pub host_limits_file: Option<std::path::PathBuf>,

    /// Redirects followed per attempt (each hop is checked by the guard).
    #[arg(long, env = "POSTBACK_MAX_REDIRECTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_redirects: u32,

    /// Longest URL sent, after expansion; longer ones are dead-lettered.
    #[arg(long, env = "POSTBACK_MAX_URL_BYTES", default_value_t = 8_192,
          value_parser = clap::value_parser!(u64).range(64..=1 << 20))]
    pub max_url_bytes: u64,

    /// Stop writing the delivery log once Redis's used_memory reaches this
    /// share of its maxmemory less 10 points (ingest refuses new postbacks
    /// at the share itself); 0 turns shedding off. Same setting as ingest's.
    #[arg(long, env = "POSTBACK_REDIS_MEMORY_LIMIT_PERCENT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub redis_memory_limit_percent: u8,

    /// How long dead letters are kept: an age (30d, 12h) or a number of
    /// letters; unset keeps every letter. Trimmed once a minute.
    #[arg(long, env = "POSTBACK_DEAD_RETENTION", value_parser = crate::retention::Retention::parse)]
    pub dead_retention: Option<crate::retention::Retention>,

    /// Entries kept in the delivery log stream (<stream>:log, one per
    /// attempt, read by `postbackctl attempts`); 0 writes no log.
    #[arg(long, env = "POSTBACK_ATTEMPT_LOG_MAXLEN", default_value_t = 100_000)]
    pub attempt_log_maxlen: u64,
}

fn parse_allow_list(text: &str) -> Result<AllowList, String> {
    AllowList::parse(text)
}

fn parse_proxy(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err(format!("{text:?} must be an http://, https:// or socks5:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(format!("{text:?}: a proxy URL is scheme://[user:password@]host:port, nothing after"));
    }
    Ok(url)
}

impl Config {
    /// Defaults, as if started with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        Self::parse_from(["postback-deliver"])
    }

    /// Checks what clap cannot check field by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let needed = self.http_timeout() + crate::hosts::HOST_PATIENCE + MIN_SLOT_PATIENCE + CLAIM_MARGIN;
        if self.claim_idle() < needed {
            return Err(ConfigError::new(
                "POSTBACK_CLAIM_IDLE_MS",
                format!(
                    "{} ms is shorter than one turn of a postback may last, {} ms: POSTBACK_HTTP_TIMEOUT_MS ({} \
                     ms) + {} ms waiting for its host + {} ms waiting for a slot + {} ms margin; entries still being \
                     delivered would be taken over by other workers and sent twice",
                    self.claim_idle_ms,
                    needed.as_millis(),
                    self.http_timeout_ms,
                    crate::hosts::HOST_PATIENCE.as_millis(),
                    MIN_SLOT_PATIENCE.as_millis(),
                    CLAIM_MARGIN.as_millis()
                ),
            ));
        }
        if self.retry_base_ms > self.retry_max_ms {
            return Err(ConfigError::new(
                "POSTBACK_RETRY_BASE_MS",
                format!("{} ms exceeds POSTBACK_RETRY_MAX_MS ({} ms)", self.retry_base_ms, self.retry_max_ms),
            ));
        }
        if let Some(path) = &self.signing_keys_file {
            crate::signing::SigningKeys::load(path).map_err(|e| ConfigError::new("POSTBACK_SIGNING_KEYS_FILE", e))?;
        }
        if let Some(path) = &self.host_limits_file {
            crate::host_rates::load(path).map_err(|e| ConfigError::new("POSTBACK_HOST_LIMITS_FILE", e))?;
        }
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

/// What a postback's turn may spend besides its attempt and its waits for
/// its host and a slot: the Redis round trips of the breaker, the rate
/// budget and the record.
pub const CLAIM_MARGIN: Duration = Duration::from_millis(250);

/// The shortest wait for a worker slot a postback is given.
pub const MIN_SLOT_PATIENCE: Duration = Duration::from_millis(100);

/// How long a postback's turn may wait, all derived from
/// `POSTBACK_CLAIM_IDLE_MS` so that a turn always ends before its entry
/// could be taken over: host patience + slot patience + attempt + margin
/// is at most the claim idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// How long a postback without a slot waits for one (half of what the
    /// claim idle leaves after the HTTP timeout, the host wait and the
    /// margin).
    pub slot: Duration,
    /// The longest attempt a request's own `delivery.timeout_ms` may ask
    /// for: what is left once the slot wait is taken (34.825 s with the
    /// defaults).
    pub max_request_timeout: Duration,
}

impl Config {
    /// How long a turn's waits may be (see [`Patience`]).
    pub fn patience(&self) -> Patience {
        let budget = self.claim_idle().saturating_sub(crate::hosts::HOST_PATIENCE + CLAIM_MARGIN);
        let slot = (budget.saturating_sub(self.http_timeout()) / 2).max(MIN_SLOT_PATIENCE);
        Patience { slot, max_request_timeout: budget.saturating_sub(slot).max(self.http_timeout()) }
    }

    /// How long an entry may sit with another consumer before it is taken over.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// The memory share at which the delivery log stops being written, in
    /// percent (0: never).
    pub fn log_shed_percent(&self) -> u8 {
        match self.redis_memory_limit_percent {
            0 => 0,
            limit => limit.saturating_sub(postback_common::redis_memory::LOG_SHED_POINTS).max(1),
        }
    }

    /// How long shutdown waits for attempts in flight.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::defaults().validate(), Ok(()));
    }

    #[test]
    fn claim_idle_must_outlast_the_request_timeout() {
        let mut config = Config::defaults();
        config.http_timeout_ms = 5_000;
        config.claim_idle_ms = 5_449;
        let error = config.validate().expect_err("too short");
        assert_eq!(error.setting, "POSTBACK_CLAIM_IDLE_MS");
        assert!(error.to_string().contains("5450 ms"), "{error}");
        config.claim_idle_ms = 5_450;
        assert_eq!(config.validate(), Ok(()));
        let patience = config.patience();
        assert_eq!(patience.slot, MIN_SLOT_PATIENCE);
        assert_eq!(patience.max_request_timeout, Duration::from_millis(5_000));
    }

    #[test]
    fn a_turn_ends_before_its_entry_could_be_claimed() {
        let config = Config::defaults();
        let patience = config.patience();
        assert_eq!(patience.max_request_timeout, Duration::from_millis(34_825), "what the README states");
        let longest = crate::hosts::HOST_PATIENCE + patience.slot + patience.max_request_timeout + CLAIM_MARGIN;
        assert!(longest <= config.claim_idle(), "{longest:?}");
    }

    #[test]
    fn the_egress_proxy_is_one_http_or_socks_url() {
        for ok in ["http://proxy:3128", "https://user:pw@proxy.internal:443/", "socks5://127.0.0.1:1080"] {
            assert!(parse_proxy(ok).is_ok(), "{ok}");
        }
        for bad in ["proxy:3128", "ftp://proxy:21", "http://", "http://proxy:3128/path", "http://proxy?x=1", ""] {
            assert!(parse_proxy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_retry_window_outlasts_a_twelve_hour_outage() {
        let config = Config::defaults();
        let policy = crate::retry::RetryPolicy {
            max_attempts: config.max_attempts,
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
        };
        let (shortest, longest) = policy.window();
        assert!(shortest >= Duration::from_secs(12 * 3_600), "{shortest:?}");
        assert!(longest <= Duration::from_secs(25 * 3_600), "{longest:?}");
        // What the README states.
        assert_eq!((shortest.as_secs() / 60, longest.as_secs() / 60), (848, 1_427));
    }

    #[test]
    fn retry_base_must_not_exceed_the_max() {
        let mut config = Config::defaults();
        config.retry_base_ms = 10;
        config.retry_max_ms = 5;
        assert_eq!(config.validate().map_err(|e| e.setting), Err("POSTBACK_RETRY_BASE_MS"));
    }
}
