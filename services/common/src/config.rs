//! Settings shared by the services, and turning bad settings into messages
//! that name the `POSTBACK_*` variable to fix.
//!
//! Each service has one clap-derived config struct: flags, environment
//! variables and `--help` all come from one definition. The Redis settings
//! below are flattened into both.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser};

use crate::keys::{DEFAULT_GROUP, DEFAULT_STREAM, Partitions};
use crate::layout::Layout;

/// Where the queue lives: what every binary needs.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis server URL: redis://[user:password@]host:port[/db], rediss://
    /// for TLS, or behind Sentinel:
    /// redis-sentinel://HOST:PORT[/db]?sentinelServiceName=NAME&node=HOST2:PORT2…
    /// (rediss-sentinel:// for TLS), or a Redis Cluster:
    /// redis-cluster://HOST:PORT?node=HOST2:PORT2… (rediss-cluster:// for TLS).
    #[arg(long, env = "POSTBACK_REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url)]
    pub redis_url: String,

    /// Name of the Redis stream that holds postbacks awaiting delivery
    /// (no braces: partitions put their own hash tags around it).
    #[arg(long, env = "POSTBACK_STREAM", default_value = DEFAULT_STREAM, value_parser = parse_stream_name)]
    pub stream: String,

    /// How many partitions a new deployment's queue is split into [default:
    /// 1]. The count then lives in Redis (the partition record): a process
    /// whose setting disagrees with it refuses to start; unset, it follows
    /// the record (runbooks/partitions.md).
    #[arg(long, env = "POSTBACK_PARTITIONS",
          value_parser = clap::value_parser!(u32).range(1..=MAX_PARTITIONS as i64))]
    pub partitions: Option<u32>,
}

/// Most partitions a queue may have: each costs every delivery worker a
/// reading connection.
pub const MAX_PARTITIONS: u32 = 256;

impl RedisArgs {
    /// Whether the URL names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        is_cluster_url(&self.redis_url)
    }

    /// The Redis key names of the partitions `layout` lists, with the
    /// default group and dead-letter stream (for ingest, which uses
    /// neither).
    pub fn partitions(&self, layout: &Layout) -> Partitions {
        Partitions::from_layout(layout, &self.stream, DEFAULT_GROUP, None)
    }

    /// The partition record, seeded from these settings if there is none,
    /// waiting for Redis; `None` on shutdown first ([`crate::layout::follow::wait_for`]).
    pub async fn layout(
        &self,
        redis: &fred::prelude::Client,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Layout>, crate::layout::store::StoreError> {
        crate::layout::follow::wait_for(redis, &self.stream, self.partitions, self.is_cluster(), shutdown).await
    }
}

/// Whether `url` names a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// Who reads the queue and where given-up postbacks go: for deliver and
/// postbackctl, not ingest.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Name of the consumer group the delivery workers share.
    #[arg(long, env = "POSTBACK_GROUP", default_value = DEFAULT_GROUP, value_parser = parse_key_name)]
    pub group: String,

    /// Stream of postbacks that will not be delivered [default: <stream>:dead].
    #[arg(long, env = "POSTBACK_DEAD_STREAM", value_parser = parse_key_name)]
    pub dead_stream: Option<String>,
}

impl GroupArgs {
    /// The Redis key names of the partitions `layout` lists, with these
    /// settings' group and dead letters.
    pub fn partitions(&self, redis: &RedisArgs, layout: &Layout) -> Partitions {
        Partitions::from_layout(layout, &redis.stream, &self.group, self.dead_stream.as_deref())
    }
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    const SCHEMES: [&str; 6] =
        ["redis://", "rediss://", "redis-sentinel://", "rediss-sentinel://", "redis-cluster://", "rediss-cluster://"];
    if !SCHEMES.iter().any(|scheme| value.starts_with(scheme)) {
        return Err("must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, \
                    redis-cluster:// or rediss-cluster://"
            .into());
    }
    fred::types::config::Config::from_url(value).map_err(|e| e.details().to_string())?;
    Ok(value.to_owned())
}

fn parse_stream_name(value: &str) -> Result<String, String> {
    if value.contains(['{', '}']) {
        return Err("must not contain { or }: partitions add their own hash tags".into());
    }
    parse_key_name(value)
}

fn parse_key_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(value.to_owned())
    }
}

/// A setting whose value is unusable, or two settings that disagree; found
/// after parsing, by a service's own validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The environment variable to fix, e.g. `POSTBACK_HTTP_TIMEOUT_MS`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A new error about `setting`.
    pub fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self { setting, message: message.into() }
    }
}

/// Parses the command line and environment into `T`.
///
/// On a bad value, prints which environment variable (and flag) holds it and
/// returns the exit code to leave with; `--help` and `--version` print and
/// return success.
pub fn parse<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|error| {
        match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            _ => {}
        }
        if let Some(setting) = setting_of(&T::command(), &error) {
            eprintln!("error: invalid setting {setting}");
        }
        let _ = error.print();
        ExitCode::from(2)
    })
}

/// Names the environment variable and flag behind a clap value error.
fn setting_of(command: &clap::Command, error: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    // clap renders the argument as `--long <VALUE>`.
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let found = command.get_arguments().find(|a| a.get_long() == Some(long))?;
    let env = found.get_env()?.to_string_lossy().into_owned();
    Some(format!("{env} (--{long})"))
}

/// Prints a validation error the way [`parse`] prints a parse error.
pub fn report(error: &ConfigError) -> ExitCode {
    eprintln!("error: invalid setting {error}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use clap::CommandFactory;

    #[derive(Debug, Parser)]
    struct Demo {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        group: GroupArgs,
        /// A number.
        #[arg(long, env = "POSTBACK_DEMO_MS", default_value_t = 5)]
        demo_ms: u64,
    }

    #[test]
    fn a_bad_value_is_traced_to_its_variable() {
        let error = Demo::try_parse_from(["demo", "--demo-ms", "soon"]).expect_err("must fail");
        assert_eq!(setting_of(&Demo::command(), &error).as_deref(), Some("POSTBACK_DEMO_MS (--demo-ms)"));
    }

    #[test]
    fn redis_settings_are_checked() {
        let error = Demo::try_parse_from(["demo", "--redis-url", "http://x"]).expect_err("must fail");
        assert_eq!(setting_of(&Demo::command(), &error).as_deref(), Some("POSTBACK_REDIS_URL (--redis-url)"));
        let error = Demo::try_parse_from(["demo", "--stream", ""]).expect_err("must fail");
        assert_eq!(setting_of(&Demo::command(), &error).as_deref(), Some("POSTBACK_STREAM (--stream)"));
    }

    #[test]
    fn sentinel_urls_are_accepted_with_their_service_name() {
        let url = "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=postbacks&node=127.0.0.1:26380";
        assert_eq!(Demo::try_parse_from(["demo", "--redis-url", url]).expect("sentinel").redis.redis_url, url);
        let tls = "rediss-sentinel://s.example:26379?sentinelServiceName=postbacks";
        assert!(Demo::try_parse_from(["demo", "--redis-url", tls]).is_ok());
        let nameless = Demo::try_parse_from(["demo", "--redis-url", "redis-sentinel://127.0.0.1:26379"]);
        assert!(nameless.is_err(), "a sentinel URL names its service");
    }

    #[test]
    fn defaults_match_the_documented_names() {
        let demo = Demo::try_parse_from(["demo"]).expect("defaults parse");
        let plain = Layout::seed("postbacks", 1, false);
        assert_eq!(demo.redis.partitions(&plain).all(), [Keys::new("postbacks", "deliver")]);
        assert_eq!(demo.group.partitions(&demo.redis, &plain).all(), [Keys::new("postbacks", "deliver")]);
        assert_eq!(demo.redis.partitions, None, "unset: follow the record");
        let demo = Demo::try_parse_from(["demo", "--group", "g", "--dead-stream", "gone"]).expect("parse");
        assert_eq!(demo.group.partitions(&demo.redis, &plain).all(), [Keys::new("postbacks", "g").with_dead("gone")]);
        assert_eq!(demo.redis.redis_url, "redis://127.0.0.1:6379");
    }

    #[test]
    fn cluster_urls_and_partition_counts_parse() {
        let url = "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002";
        let demo = Demo::try_parse_from(["demo", "--redis-url", url]).expect("cluster URL");
        assert!(demo.redis.is_cluster());
        let demo = Demo::try_parse_from(["demo", "--partitions", "4"]).expect("partitions");
        assert_eq!(demo.redis.partitions, Some(4));
        for bad in [["demo", "--partitions", "0"], ["demo", "--partitions", "257"], ["demo", "--stream", "a{b}"]] {
            assert!(Demo::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
