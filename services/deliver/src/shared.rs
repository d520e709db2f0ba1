//! What every entry's handling shares: settings, clients and the worker's
//! slots, built once at start-up.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use tokio::sync::Semaphore;

use crate::attempt_log::AttemptLog;
use crate::endpoints::Endpoints;
use crate::finish::Finisher;
use crate::guard::Guard;
use crate::hosts::HostLimits;
use crate::metrics::DeliverMetrics;
use crate::retry::RetryPolicy;

/// Shared by a partition's worker loop and every entry's task; the parts
/// behind an `Arc` are shared by all partitions.
pub(crate) struct Shared {
    /// The outbound HTTP client and the route out.
    pub(crate) egress: Arc<crate::http::Egress>,
    /// Keys of the targets whose postbacks are signed.
    pub(crate) signing: Arc<crate::signing::SigningKeys>,
    /// Replacement for unmatched `{key}`s.
    pub(crate) unmatched_default: String,
    /// Body bytes kept for the log.
    pub(crate) log_body_bytes: usize,
    /// When to retry.
    pub(crate) policy: RetryPolicy,
    /// Per-host in-flight limits.
    pub(crate) hosts: Arc<HostLimits>,
    /// Per-host circuit breakers.
    pub(crate) breaker: Arc<crate::breaker::Breaker>,
    /// Per-host rate budgets.
    pub(crate) rates: Arc<crate::host_rates::HostRates>,
    /// Hand-overs after which an entry is poison.
    pub(crate) max_deliveries: u64,
    /// The SSRF guard, unless private targets are allowed.
    pub(crate) guard: Option<Arc<Guard>>,
    /// The longest attempt a request's own `delivery.timeout_ms` may ask
    /// for ([`crate::config::Patience`]).
    pub(crate) max_request_timeout: Duration,
    /// Longest URL sent.
    pub(crate) max_url_bytes: usize,
    /// Records, reschedules, dead-letters.
    pub(crate) finisher: Finisher,
    /// The delivery log stream.
    pub(crate) attempt_log: AttemptLog,
    /// Prometheus metrics.
    pub(crate) metrics: Arc<DeliverMetrics>,
    /// The command client, for endpoint records and finished positions.
    pub(crate) redis: Client,
    /// Key names of the partition.
    pub(crate) keys: postback_common::keys::Keys,
    /// The endpoint records read so far.
    pub(crate) endpoints: Endpoints,
    /// The worker's slots, one per postback in hand (the read loop's too).
    pub(crate) slots: Arc<Semaphore>,
    /// How long a postback of an entry that holds several waits for a slot
    /// before it goes back to the schedule without an attempt.
    pub(crate) slot_patience: Duration,
    /// Whether an entry taken before a reconnect is still this worker's.
    pub(crate) ownership: crate::ownership::Ownership,
}
