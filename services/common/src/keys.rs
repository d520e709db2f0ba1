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

/// Names of the Redis keys one deployment uses, derived from the stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The stream that ingest appends to and deliver reads from.
    pub stream: String,
    /// The consumer group of the delivery workers.
    pub group: String,
}

impl Keys {
    /// Keys for the given stream and group names.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        Self { stream: stream.into(), group: group.into() }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM, DEFAULT_GROUP)
    }
}
