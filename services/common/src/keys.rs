//! Redis key names, group names and the stream entry layout, in one place.
//!
//! Every Redis name the services agree on lives here, so that ingest, deliver,
//! the ops CLI and the tests cannot drift apart. Operators depend on these
//! names (`redis-cli XPENDING postbacks deliver`), so they are a contract.

/// Default name of the stream that holds postbacks waiting for delivery.
pub const DEFAULT_STREAM: &str = "postbacks";

/// Default name of the consumer group that the delivery workers share.
pub const DEFAULT_GROUP: &str = "deliver";

/// The single field of a stream entry; its value is the MessagePack postback
/// (see `schemas/wire-format.md`). One short field name keeps every entry
/// small: Redis stores field names per entry unless they repeat exactly.
pub const ENTRY_FIELD: &str = "p";

/// Stream entry field of a retried postback: the number of attempts made so
/// far (absent on a fresh postback: none yet).
pub const ATTEMPTS_FIELD: &str = "a";

/// Stream entry field of a retried postback: when its first attempt was
/// made, in ms since the Unix epoch.
pub const FIRST_ATTEMPT_FIELD: &str = "f";

/// Names of the Redis keys one deployment uses, derived from the stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The stream that ingest appends to and deliver reads from.
    pub stream: String,
    /// The consumer group of the delivery workers.
    pub group: String,
    /// Sorted set of scheduled retries (`<stream>:retry`), scored by the
    /// time they are due, in ms since the Unix epoch on Redis's clock.
    pub retry: String,
    /// Stream of postbacks that will not be delivered (`<stream>:dead`
    /// unless `POSTBACK_DEAD_STREAM` says otherwise).
    pub dead: String,
    /// Capped stream with one entry per delivery attempt (`<stream>:log`),
    /// read by `postbackctl attempts`.
    pub log: String,
    /// Hash of endpoint records that version 3 entries refer to
    /// (`<stream>:endpoints`): 16 hex digits of content address → record.
    pub endpoints: String,
    /// Hash counting, per endpoint record, the version 3 entries that refer
    /// to it (`<stream>:endpoints:refs`); a record goes when its count does.
    pub endpoint_refs: String,
    /// Postbacks waiting in the stream beyond one per entry
    /// (`<stream>:batched`): the stream's length plus this is the number of
    /// postbacks waiting for an attempt there.
    pub batched: String,
    /// Hash of the postbacks already finished in entries that hold several
    /// (`<stream>:finished`): entry id → bitmap of positions (see
    /// `schemas/wire-format.md`). A field goes with its entry.
    pub finished: String,
    /// Prefix of the idempotency records ingest keeps
    /// (`<stream>:idempotency:`, then the caller's scope, `:` and the key).
    pub idempotency: String,
    /// Prefix of ingest's rate budgets (`<stream>:rate:`, then the caller's
    /// scope, or `all` for `POSTBACK_INGEST_RATE`): one string each, the
    /// budget's theoretical arrival time, expiring once the budget is whole.
    pub rate: String,
    /// Prefix of deliver's per-host rate budgets (`<stream>:hostrate:`,
    /// then the target as `POSTBACK_HOST_LIMITS_FILE` lists it), like
    /// ingest's.
    pub host_rate: String,
    /// Prefix of deliver's per-host circuit breakers (`<stream>:breaker:`,
    /// then `host:port` for a host's record, or `open` for the set of hosts
    /// not closed; [`crate::breaker`]).
    pub breaker: String,
    /// Prefix of deliver's per-minute counts (`<stream>:minutes:`, then the
    /// minute since the Unix epoch): hashes kept two hours, read by the
    /// built-in dashboard.
    pub minutes: String,
}

impl Keys {
    /// Keys for the given stream and group names, with the default
    /// dead-letter stream.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        let stream = stream.into();
        Self {
            retry: format!("{stream}:retry"),
            dead: format!("{stream}:dead"),
            log: format!("{stream}:log"),
            endpoints: format!("{stream}:endpoints"),
            endpoint_refs: format!("{stream}:endpoints:refs"),
            batched: format!("{stream}:batched"),
            finished: format!("{stream}:finished"),
            idempotency: format!("{stream}:idempotency:"),
            rate: format!("{stream}:rate:"),
            host_rate: format!("{stream}:hostrate:"),
            breaker: format!("{stream}:breaker:"),
            minutes: format!("{stream}:minutes:"),
            group: group.into(),
            stream,
        }
    }

    /// The same keys with another dead-letter stream.
    pub fn with_dead(mut self, dead: impl Into<String>) -> Self {
        self.dead = dead.into();
        self
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM, DEFAULT_GROUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        let keys = Keys::default();
        assert_eq!(keys.retry, "postbacks:retry");
        assert_eq!(keys.dead, "postbacks:dead");
        assert_eq!(keys.log, "postbacks:log");
        assert_eq!(keys.endpoints, "postbacks:endpoints");
        assert_eq!(keys.endpoint_refs, "postbacks:endpoints:refs");
        assert_eq!(keys.batched, "postbacks:batched");
        assert_eq!(keys.finished, "postbacks:finished");
        assert_eq!(keys.idempotency, "postbacks:idempotency:");
        assert_eq!(keys.with_dead("graveyard").dead, "graveyard");
    }
}
