//! Redis key names, group names and the stream entry layout, in one place.
//!
//! Every Redis name the services agree on lives here, so that ingest, deliver,
//! the ops CLI and the tests cannot drift apart. Operators depend on these
//! names (`redis-cli XPENDING postbacks deliver`), so they are a contract.
//!
//! # Partitions
//! The queue is split into the partitions the partition record lists
//! ([`crate::layout`]), each with its own keys under one hash tag
//! ([`Partitions`]); the names are listed in the README's "Scaling out"
//! section.

use crate::layout::{Layout, State};

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
    /// Prefix of deliver's per-host circuit breakers (`{<stream>:breaker}:`,
    /// then `host:port` for a host's record, or `open` for the set of hosts
    /// not closed; [`crate::breaker`]).
    pub breaker: String,
    /// The highest epoch of the partition record this partition has been
    /// shown (`<stream>:layout`, a string): ingest's enqueue script refuses
    /// callers with an older one ([`crate::layout`]).
    pub layout: String,
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
            breaker: format!("{{{stream}:breaker}}:"),
            minutes: format!("{stream}:minutes:"),
            layout: format!("{stream}:layout"),
            group: group.into(),
            partition: 0,
            stream,
        }
    }

    /// Keys of partition `partition` of `stream` with hash tag `tag`, every
    /// one of its own names carrying `{<tag>}`; the names shared by all
    /// partitions as the module doc describes.
    pub(crate) fn tagged(stream: &str, group: &str, dead: Option<&str>, partition: u32, tag: &str) -> Self {
        let tag = format!("{{{tag}}}");
        let plain = Self::new(stream, group);
        Self {
            schedule: format!("{tag}:schedule"),
            scheduled: format!("{tag}:scheduled"),
            retry: format!("{tag}:retry"),
            dead: format!("{tag}:{}", dead.unwrap_or("dead")),
            log: format!("{tag}:log"),
            endpoints: format!("{tag}:endpoints"),
            endpoint_refs: format!("{tag}:endpoints:refs"),
            batched: format!("{tag}:batched"),
            finished: format!("{tag}:finished"),
            idempotency: format!("{tag}:idempotency:"),
            layout: format!("{tag}:layout"),
            breaker: format!("{{{stream}:breaker}}:"),
            partition,
            stream: tag,
            ..plain
        }
    }

    /// The partition's own keys beside its stream and epoch: what a drained
    /// partition no longer needs when it is retired (the schedule's levels
    /// go with their last entry).
    pub fn retired(&self) -> [&str; 9] {
        [
            &self.schedule,
            &self.scheduled,
            &self.retry,
            &self.dead,
            &self.endpoints,
            &self.endpoint_refs,
            &self.batched,
            &self.finished,
            &self.log,
        ]
    }

    /// The same keys with another dead-letter stream.
    pub fn with_dead(mut self, dead: impl Into<String>) -> Self {
        self.dead = dead.into();
        self
    }
}

/// The partition record's key (`<stream>:partitions`).
pub fn layout_record(stream: &str) -> String {
    format!("{stream}:partitions")
}

/// The hash in which delivery processes say which epoch of the record they
/// read (`<stream>:partitions:readers`).
pub fn layout_readers(stream: &str) -> String {
    format!("{stream}:partitions:readers")
}

/// The partitions of one queue as one epoch of the record lists them: the
/// keys and state of each, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    keys: Vec<Keys>,
    states: Vec<State>,
    epoch: u64,
}

impl Partitions {
    /// The partitions `layout` lists, read by `group`, with their dead
    /// letters in `dead` (for tagged partitions the name after the tag).
    pub fn from_layout(layout: &Layout, stream: &str, group: &str, dead: Option<&str>) -> Self {
        let (keys, states) = layout
            .partitions
            .iter()
            .map(|p| (crate::layout::keys_for(stream, group, dead, p.index, &p.tag), p.state))
            .unzip();
        Self { keys, states, epoch: layout.epoch }
    }

    /// `count` partitions of a new deployment ([`Layout::seed`]).
    pub fn new(stream: &str, group: &str, dead: Option<&str>, count: u32, cluster: bool) -> Self {
        Self::from_layout(&Layout::seed(stream, count, cluster), stream, group, dead)
    }

    /// One active partition.
    pub fn single(keys: Keys) -> Self {
        Self { keys: vec![keys], states: vec![State::Active], epoch: 0 }
    }

    /// Every partition listed, in index order.
    pub fn all(&self) -> &[Keys] {
        &self.keys
    }

    /// Every partition listed, with its state.
    pub fn with_states(&self) -> impl Iterator<Item = (&Keys, State)> {
        self.keys.iter().zip(self.states.iter().copied())
    }

    /// The partitions that take new requests, in index order.
    pub fn active(&self) -> Vec<&Keys> {
        self.with_states().filter(|(_, s)| *s == State::Active).map(|(k, _)| k).collect()
    }

    /// The epoch of the record these come from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Partition number `p`, if listed.
    pub fn get(&self, p: u32) -> Option<&Keys> {
        self.keys.iter().find(|k| k.partition == p)
    }

    /// How many partitions are listed.
    pub fn count(&self) -> u32 {
        self.keys.len() as u32
    }

    /// The first partition, whose names shared by all partitions (rate
    /// budgets, breakers, per-minute counts) are everyone's.
    pub fn shared(&self) -> &Keys {
        &self.keys[0]
    }

    /// The active partition that `key` maps to: Redis's own CRC16 of the
    /// key ([`key_hash`]) modulo the active count.
    pub fn for_key(&self, key: &[u8]) -> &Keys {
        let active = self.active();
        match active.get(key_hash(key) as usize % active.len().max(1)) {
            Some(keys) => keys,
            None => self.shared(),
        }
    }
}

/// The hash an Idempotency-Key (scope and key) maps to a partition by.
pub fn key_hash(key: &[u8]) -> u16 {
    fred::util::redis_keyslot(key)
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
        let tag = crate::layout::placement::tag_for_slot("postbacks", 3, crate::layout::placement::seed_slot(3, 4));
        assert_eq!(third.stream, format!("{{{tag}}}"));
        assert_eq!(third.retry, format!("{{{tag}}}:retry"));
        assert_eq!(third.dead, format!("{{{tag}}}:dead"));
        assert_eq!(third.idempotency, format!("{{{tag}}}:idempotency:"));
        assert_eq!(third.log, format!("{{{tag}}}:log"));
        assert_eq!(third.layout, format!("{{{tag}}}:layout"));
        assert_eq!(third.breaker, "{postbacks:breaker}:");
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        for keys in partitions.all() {
            let level = crate::records::schedule::level_key(&keys.schedule, 1_024);
            let mut own = keys.retired().to_vec();
            own.extend([level.as_str(), &keys.layout]);
            assert!(own.iter().all(|key| slot(key) == slot(&keys.stream)), "{keys:?}");
            assert_eq!(slot(&format!("{}scope:key", keys.idempotency)), slot(&keys.stream));
        }
        assert_eq!(slot(&format!("{}open", third.breaker)), slot(&format!("{}h:443", third.breaker)));
        let cluster = Partitions::new("postbacks", "deliver", Some("graveyard"), 1, true);
        assert!(cluster.shared().stream.starts_with("{postbacks:0:"), "{}", cluster.shared().stream);
        assert!(cluster.shared().dead.ends_with("}:graveyard"));
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
