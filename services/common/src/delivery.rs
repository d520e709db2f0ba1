//! A request's delivery policy: the optional `"delivery"` object of the
//! request body, `{"max_attempts": 1..50, "delay_ms": 0..3600000,
//! "timeout_ms": 100..60000}` (each field optional), what attribution
//! platforms expose per partner as retry attempts and delivery delay.
//!
//! Ingest checks it and stores it once per request: in the endpoint record
//! of a version 3 entry, or in a single postback as version 4
//! (`schemas/wire-format.md`). Deliver applies it to every postback of the
//! request: `max_attempts` in place of `POSTBACK_MAX_ATTEMPTS`, no attempt
//! before `delay_ms` after acceptance, and `timeout_ms` as the attempt's
//! HTTP timeout in place of `POSTBACK_HTTP_TIMEOUT_MS`, up to what
//! `POSTBACK_CLAIM_IDLE_MS` allows (34.825 s with the defaults; deliver
//! logs the figure at start), so that an attempt is never taken over while
//! it runs.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Allowed `max_attempts`.
pub const MAX_ATTEMPTS: RangeInclusive<u64> = 1..=50;
/// Allowed `delay_ms`.
pub const DELAY_MS: RangeInclusive<u64> = 0..=3_600_000;
/// Allowed `timeout_ms`.
pub const TIMEOUT_MS: RangeInclusive<u64> = 100..=60_000;

/// The policy; stored as a MessagePack array of three elements, each an
/// unsigned integer or nil.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Delivery {
    /// Attempts in all, in place of `POSTBACK_MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
    /// No attempt before this long after acceptance.
    pub delay_ms: Option<u32>,
    /// Each attempt's HTTP timeout.
    pub timeout_ms: Option<u32>,
}

impl Delivery {
    /// Whether every field is within its range (what ingest checks; deliver
    /// reads only what ingest wrote, and treats anything else as damaged).
    pub fn is_valid(&self) -> bool {
        let within = |v: Option<u32>, range: &RangeInclusive<u64>| v.is_none_or(|v| range.contains(&u64::from(v)));
        within(self.max_attempts, &MAX_ATTEMPTS)
            && within(self.delay_ms, &DELAY_MS)
            && within(self.timeout_ms, &TIMEOUT_MS)
    }
}
