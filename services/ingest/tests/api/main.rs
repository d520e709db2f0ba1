//! Integration tests of ingest: the real app on port 0 against a real
//! redis-server of the test's own, and the real binary for start-up and
//! shutdown behaviour.

#![allow(clippy::expect_used, missing_docs)]

mod accept;
mod backpressure;
mod batch;
mod binary;
mod guard;
mod helpers;
mod hostile;
mod idempotency;
mod metrics;
mod rate_limits;
mod redis_outage;
mod reject;
mod request_entry;
