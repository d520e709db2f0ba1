//! Redis key names, group names and the stream entry layout, in one place.
//!
//! Every Redis name the services agree on lives here, so that ingest, deliver,
//! the ops CLI and the tests cannot drift apart. Operators depend on these
//! names (`redis-cli XPENDING postbacks deliver`), so they are a contract.
//!
//! # Partitions
//! `POSTBACK_PARTITIONS=N` splits the queue into N partitions, each with
//! its own keys under one hash tag ([`Partitions`]); the names are listed
//! in the README's "Scaling out" section.

/// Default name of the stream that holds postbacks waiting for delivery.
pub const DEFAULT_STREAM: &str = "postbacks";

/// Default name of the consumer group that the delivery workers share.
pub const DEFAULT_GROUP: &str = "deliver";

/// The stream entry's fields ([`crate::records::stream_entry`]).
pub use crate::records::stream_entry::{
    ATTEMPTS as ATTEMPTS_FIELD, FIRST_ATTEMPT as FIRST_ATTEMPT_FIELD, PAYLOAD as ENTRY_FIELD,
};

/// Names of the Redis keys one deployment uses, derived from the stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Which partition of the queue these keys hold (0 without partitions).
    pub partition: u32,
    /// The stream that ingest appends to and deliver reads from.
    pub stream: String,
    /// The consumer group of the delivery workers.
    pub group: String,
    /// The index of the retry schedule (`<stream>:schedule`): a sorted set
    /// of its levels, each the stream `<schedule>:@<ms>`, scored by when
    /// the level's oldest entry is due ([`crate::records::schedule`]).
    pub schedule: String,
    /// Postbacks in the retry schedule's levels (`<stream>:scheduled`).
    pub scheduled: String,
    /// The retry schedule as it was before levels (`<stream>:retry`, one
    /// sorted-set member per postback): only read, until it is empty.
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
            schedule: format!("{stream}:schedule"),
            scheduled: format!("{stream}:scheduled"),
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
            partition: 0,
            stream,
        }
    }

    /// Keys of partition `partition` of `stream`, every one of its own
    /// names carrying the hash tag `{<stream>:<partition>}`; the names
    /// shared by all partitions as the module doc describes.
    fn tagged(stream: &str, group: &str, dead: Option<&str>, partition: u32) -> Self {
        let tag = format!("{{{stream}:{partition}}}");
        let plain = Self::new(stream, group);
        Self {
            schedule: format!("{tag}:schedule"),
            scheduled: format!("{tag}:scheduled"),
            retry: format!("{tag}:retry"),
            dead: format!("{tag}:{}", dead.unwrap_or("dead")),
            endpoints: format!("{tag}:endpoints"),
            endpoint_refs: format!("{tag}:endpoints:refs"),
            batched: format!("{tag}:batched"),
            finished: format!("{tag}:finished"),
            idempotency: format!("{tag}:idempotency:"),
            breaker: format!("{{{stream}:breaker}}:"),
            partition,
            stream: tag,
            ..plain
        }
    }

    /// The same keys with another dead-letter stream.
    pub fn with_dead(mut self, dead: impl Into<String>) -> Self {
        self.dead = dead.into();
        self
    }
}

/// The partitions of one queue: the keys of each, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions(Vec<Keys>);

impl Partitions {
    /// `count` partitions (at least one) of `stream`, read by `group`, with
    /// their dead letters in `dead` (for tagged partitions the name after
    /// the tag). Untagged is only possible with one partition, on a plain
    /// Redis: its names are exactly those of [`Keys::new`].
    pub fn new(stream: &str, group: &str, dead: Option<&str>, count: u32, tagged: bool) -> Self {
        if count <= 1 && !tagged {
            let keys = Keys::new(stream, group);
            return Self(vec![match dead {
                Some(dead) => keys.with_dead(dead),
                None => keys,
            }]);
        }
        Self((0..count.max(1)).map(|p| Keys::tagged(stream, group, dead, p)).collect())
    }

    /// One partition, untagged: the names without partitions.
    pub fn single(keys: Keys) -> Self {
        Self(vec![keys])
    }

    /// Every partition, in order.
    pub fn all(&self) -> &[Keys] {
        &self.0
    }

    /// Partition `p`, if there is one.
    pub fn get(&self, p: u32) -> Option<&Keys> {
        self.0.get(p as usize)
    }

    /// How many partitions there are.
    pub fn count(&self) -> u32 {
        self.0.len() as u32
    }

    /// The first partition, whose names shared by all partitions (attempt
    /// log, rate budgets, breakers, per-minute counts) are everyone's.
    pub fn shared(&self) -> &Keys {
        &self.0[0]
    }

    /// The partition that `key` always maps to (Redis's own key hash, so
    /// the choice is stable across processes and versions).
    pub fn for_key(&self, key: &[u8]) -> &Keys {
        &self.0[fred::util::redis_keyslot(key) as usize % self.0.len()]
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
        assert_eq!(keys.schedule, "postbacks:schedule");
        assert_eq!(keys.scheduled, "postbacks:scheduled");
        assert_eq!(keys.dead, "postbacks:dead");
        assert_eq!(keys.log, "postbacks:log");
        assert_eq!(keys.endpoints, "postbacks:endpoints");
        assert_eq!(keys.endpoint_refs, "postbacks:endpoints:refs");
        assert_eq!(keys.batched, "postbacks:batched");
        assert_eq!(keys.finished, "postbacks:finished");
        assert_eq!(keys.idempotency, "postbacks:idempotency:");
        assert_eq!(keys.with_dead("graveyard").dead, "graveyard");
    }

    #[test]
    fn one_untagged_partition_keeps_the_plain_names() {
        let partitions = Partitions::new("postbacks", "deliver", None, 1, false);
        assert_eq!(partitions.all(), [Keys::default()]);
        let partitions = Partitions::new("postbacks", "deliver", Some("graveyard"), 1, false);
        assert_eq!(partitions.shared().dead, "graveyard");
    }

    #[test]
    fn each_partition_keeps_its_own_keys_in_one_slot() {
        let partitions = Partitions::new("postbacks", "deliver", None, 4, false);
        assert_eq!(partitions.count(), 4);
        let third = partitions.get(3).expect("partition 3");
        assert_eq!(third.stream, "{postbacks:3}");
        assert_eq!(third.retry, "{postbacks:3}:retry");
        assert_eq!(third.dead, "{postbacks:3}:dead");
        assert_eq!(third.idempotency, "{postbacks:3}:idempotency:");
        assert_eq!(third.log, "postbacks:log");
        assert_eq!(third.breaker, "{postbacks:breaker}:");
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        for keys in partitions.all() {
            let level = crate::records::schedule::level_key(&keys.schedule, 1_024);
            let own = [
                &keys.retry,
                &keys.schedule,
                &keys.scheduled,
                &level,
                &keys.dead,
                &keys.endpoints,
                &keys.endpoint_refs,
                &keys.batched,
                &keys.finished,
            ];
            assert!(own.iter().all(|key| slot(key) == slot(&keys.stream)), "{keys:?}");
            assert_eq!(slot(&format!("{}scope:key", keys.idempotency)), slot(&keys.stream));
        }
        assert_eq!(slot(&format!("{}open", third.breaker)), slot(&format!("{}h:443", third.breaker)));
        let cluster = Partitions::new("postbacks", "deliver", Some("graveyard"), 1, true);
        assert_eq!(cluster.shared().stream, "{postbacks:0}");
        assert_eq!(cluster.shared().dead, "{postbacks:0}:graveyard");
    }

    #[test]
    fn a_key_always_maps_to_the_same_partition() {
        let partitions = Partitions::new("postbacks", "deliver", None, 4, false);
        let chosen: std::collections::HashSet<u32> =
            (0..64).map(|i| partitions.for_key(format!("key-{i}").as_bytes()).partition).collect();
        assert_eq!(chosen.len(), 4, "keys spread over every partition");
        assert_eq!(partitions.for_key(b"abc").partition, partitions.for_key(b"abc").partition);
    }
}
