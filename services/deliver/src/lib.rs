//! `postback-deliver`: reads postbacks from a Redis Streams consumer group
//! and delivers each to its third-party endpoint.
//!
//! # Layout
//! - [`config`]: settings (`POSTBACK_*`).
//! - [`startup`]: building, running, graceful shutdown.
//! - [`worker`]: the read loop and the queue design (start here).
//! - [`handle`]: one entry from read to finish.
//! - [`batch`]: a version 3 entry's postbacks, side by side.
//! - [`endpoints`]: endpoint records of version 3 entries, cached.
//! - [`attempt`]: one HTTP delivery attempt and its log line.
//! - [`attempt_log`]: the capped delivery-log stream in Redis.
//! - [`retry`]: what is retried, when, and when it is given up.
//! - [`finish`]: acknowledge, reschedule or dead-letter, atomically (`lua/`).
//! - [`scheduler`]: moving due retries back into the stream.
//! - [`claim`]: taking over entries from dead workers; poison; gone consumers.
//! - [`hosts`]: per-host in-flight limits.
//! - [`guard`]: the SSRF guard (address ranges, resolver, redirects).
//! - [`group`]: creating the consumer group.
//! - [`entry`]: stream entries out of XREADGROUP and XAUTOCLAIM replies.
//! - [`http`]: the outbound HTTP client and capped body reads.
//! - [`acker`]: batched XACK + XDEL (and endpoint records let go of).
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: Prometheus counters, histograms and sampled queue gauges.

pub mod acker;
pub mod admin;
pub mod attempt;
pub mod attempt_log;
pub mod batch;
pub mod claim;
pub mod config;
pub mod endpoints;
pub mod entry;
pub mod finish;
pub mod group;
pub mod guard;
pub mod handle;
pub mod hosts;
pub mod http;
pub mod metrics;
pub mod retry;
pub mod scheduler;
pub mod startup;
pub mod worker;

pub use config::Config;
pub use startup::Deliverer;
