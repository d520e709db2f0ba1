//! Shared pieces of postback delivery, used by ingest, deliver and the tools.
//!
//! # Layout
//! - [`keys`]: Redis key names and the stream entry layout (a contract).
//! - [`method`], [`scalar`], [`data`]: the parts of one postback.
//! - [`delivery`]: a request's delivery policy (attempts, delay, timeout).
//! - [`records`]: every record kept in Redis that more than one process
//!   reads or writes (wire versions, endpoint records, retries, dead
//!   letters, …), each with its owning type.
//! - [`layout`]: the partition record in Redis, followed by every process.
//! - [`entries`]: stream entries read back as postbacks, records resolved.
//! - [`template`]: `{key}` URL templates and their percent-encoding.
//! - [`config`]: settings both services share, and config error reporting.
//! - [`redis`]: Redis clients that reconnect on their own.
//! - [`queue_status`]: a snapshot of the stream, group, schedule and dead letters.
//! - [`script`]: Lua scripts run by SHA1, loaded on demand.
//! - [`gcra`]: rate budgets in Redis, shared by every process charging them.
//! - [`breaker`]: per-host circuit breakers in Redis.
//! - [`telemetry`]: JSON-lines logging and the OpenTelemetry trace exporter.
//! - [`trace_context`]: the W3C trace context a postback carries.
//! - [`metrics`]: the Prometheus text encoding and shared histogram buckets.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`runtime`]: the Tokio runtime of a binary, with a bounded exit.
//! - [`time`]: wall-clock helpers.

pub mod breaker;
pub mod config;
pub mod data;
pub mod delivery;
pub mod entries;
pub mod gcra;
pub mod keys;
pub mod layout;
pub mod method;
pub mod metrics;
pub mod queue_status;
pub mod records;
pub mod redis;
pub mod redis_memory;
pub mod runtime;
pub mod scalar;
pub mod script;
pub mod shutdown;
pub mod telemetry;
pub mod template;
pub mod time;
pub mod trace_context;

pub use data::Data;
pub use method::Method;
pub use records::postback::Postback;
pub use scalar::Scalar;
