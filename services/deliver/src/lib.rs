//! `postback-deliver`: reads postbacks from a Redis Streams consumer group
//! and delivers each to its third-party endpoint.
//!
//! # Layout
//! - [`config`]: settings (`POSTBACK_*`).
//! - [`startup`]: building, running, graceful shutdown.
//! - [`worker`]: the read loop and the queue design (start here).
//! - [`group`]: creating the consumer group.
//! - [`entry`]: stream entries out of XREADGROUP replies.
//! - [`attempt`]: one HTTP delivery attempt and its log line.
//! - [`http`]: the outbound HTTP client and capped body reads.
//! - [`acker`]: batched XACK + XDEL.
//! - [`admin`]: `/healthz` and `/readyz`.

pub mod acker;
pub mod admin;
pub mod attempt;
pub mod config;
pub mod entry;
pub mod group;
pub mod http;
pub mod startup;
pub mod worker;

pub use config::Config;
pub use startup::Deliverer;
