//! `postback-ingest`: accepts postback requests over HTTP and appends one
//! MessagePack postback per data item to a Redis stream.
//!
//! # Layout
//! - [`config`]: settings (`POSTBACK_*`).
//! - [`startup`]: binding, running and stopping.
//! - [`serve`]: the HTTP server and its bounds (slow clients, connections).
//! - [`routes`]: the HTTP routes.
//! - [`json`]: parsing the body (simd-json) into an order-keeping tree.
//! - [`request`]: validating a request and building its postbacks.
//! - [`gate`]: whether the backlog and Redis's memory leave room, decided
//!   in memory between samples.
//! - [`partitions`]: the partition record as ingest follows it.
//! - [`enqueue`]: the XADDs of a request, atomically, in one Lua script.
//! - [`batch`]: the requests waiting at one moment, in one script call.
//! - [`nodes`]: on a Redis Cluster, a client of each primary for the
//!   enqueue path, so that one failing stalls only its own partitions.
//! - [`idempotency`]: `Idempotency-Key`: the same request answered once.
//! - [`auth`]: optional bearer tokens.
//! - [`rate`]: per-caller rate limits, shared through Redis.
//! - [`error`]: problem+json responses.
//! - [`metrics`]: Prometheus metrics and `GET /metrics`.
//! - [`trace`]: the request and per-postback spans of the trace.
//! - [`state`]: what the handlers share.

mod auth;
mod batch;
mod config;
pub mod enqueue;
mod error;
pub mod gate;
pub mod idempotency;
pub mod json;
mod metrics;
pub mod nodes;
pub mod partitions;
pub mod rate;
pub mod request;
mod routes;
pub mod serve;
mod startup;
pub mod state;
mod trace;

pub use config::Config;
pub use startup::Application;
