//! `postback-deliver`: reads postbacks from a Redis Streams consumer group
//! and delivers each to its third-party endpoint.
//!
//! # Layout
//! A postback's path, top down (each module calls only those below it):
//! - [`startup`]: building, running, graceful shutdown; starts the tasks.
//! - [`worker`]: the loop, and the queue design (start here).
//! - [`partitions`]: the partitions read, following the partition record.
//! - [`intake`]: reading, re-reading and claiming entries, with their
//!   delivery counts ([`reply`] parses what Redis answers).
//! - [`entry`]: one entry: decode, skip what is finished, poison, fan out.
//! - [`turn`]: one postback's turn: URL, guard, host slot, attempt, decide.
//! - [`attempt`]: one HTTP attempt, its span and its log line.
//! - [`retry`]: what is retried, when, and when given up.
//! - [`outcome`]: how a turn ends: delivered, retry or dead, and why.
//! - [`ownership`]: whether an entry taken before a reconnect is still
//!   this worker's, asked before its attempts.
//! - [`finish`]: an outcome made one step in Redis.
//! - [`recorder`]: every postback's step recorded in batches.
//! - [`ledger`]: the finish script: ownership, outcomes recorded once.
//!
//! Beside it:
//! - [`scheduler`]: moving due retries back into the stream.
//! - [`janitor`]: removing consumers that are gone.
//! - [`group`]: creating the consumer group.
//! - [`endpoints`]: endpoint records of version 3 and 5 entries, cached.
//! - [`breaker`]: per-host circuit breakers.
//! - [`hosts`]: per-host in-flight limits and pacing.
//! - [`host_rates`]: per-host rate budgets (`POSTBACK_HOST_LIMITS_FILE`).
//! - [`target_file`]: the `HOST[:PORT] …` files (limits, signing keys).
//! - [`guard`]: the SSRF guard (address ranges, resolver, redirects).
//! - [`http`]: the outbound HTTP client and capped body reads.
//! - [`attempt_log`]: the capped delivery-log stream in Redis.
//! - [`backoff`]: the one backoff between failed Redis calls.
//! - [`shared`]: what every entry's handling shares.
//! - [`config`]: settings (`POSTBACK_*`).
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: Prometheus counters, histograms and sampled queue gauges.

mod admin;
mod attempt;
mod attempt_log;
mod backoff;
mod breaker;
mod config;
mod dashboard;
mod degraded;
mod endpoints;
mod entry;
mod finish;
mod group;
mod guard;
mod host_rates;
mod hosts;
mod http;
mod intake;
mod janitor;
mod ledger;
mod metrics;
mod minutes;
mod outcome;
mod ownership;
mod partitions;
mod recorder;
mod reply;
mod retention;
mod retry;
mod scheduler;
mod shared;
mod signing;
mod startup;
mod target_file;
mod turn;
mod worker;

pub use config::Config;
pub use guard::AllowList;
pub use retention::Retention;
pub use signing::SigningKeys;
pub use startup::Deliverer;
