//! End-to-end tests of delivery: real redis-server, ingest and deliver on
//! port 0 in-process, the real `postback-deliver` binary where process
//! behaviour matters, and a real HTTP sink on 127.0.0.1.

#![allow(clippy::expect_used, missing_docs)]

mod binary;
mod breaker;
mod chaos;
mod cluster_failover;
mod dashboard_page;
mod dashboards;
mod delivery;
mod egress;
mod failover;
mod faults;
mod guard;
mod helpers;
mod hosts;
mod memory;
mod metrics;
mod partitions;
mod policy;
mod queue;
mod records;
mod request_entries;
mod reread;
mod resize;
mod retries;
mod runbooks;
mod scale;
mod signing;
mod trace;
