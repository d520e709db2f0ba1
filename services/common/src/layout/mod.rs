//! The partition record: how many partitions the queue has, what each is
//! called and what state it is in, kept in Redis for every process to
//! follow.
//!
//! One small JSON record, the string `<stream>:partitions` (its own fixed
//! slot on a Cluster), holds an epoch, every partition's index, hash tag
//! and state, and the recent changes of which partitions take new requests
//! ([`Layout`]). Ingest, deliver and postbackctl read it at start
//! ([`store::load`]) and follow it ([`follow`]); `POSTBACK_PARTITIONS`
//! only seeds it for a new deployment ([`Layout::seed`]), and a process
//! whose setting disagrees with it refuses to start. `postbackctl
//! partitions resize` changes it online. The protocol (who moves first,
//! how a partition drains and retires, how Idempotency-Keys replay across a
//! change) is in runbooks/partitions.md; the names in the README's
//! "Scaling out" section.
//!
//! # States
//! - `opening`: workers read it; ingest does not write to it yet (a grow
//!   waits until every live worker reads it).
//! - `active`: ingest writes to it; workers read it.
//! - `draining`: ingest no longer writes to it; workers read it, its
//!   retries included, until it is empty (stream, pending entries,
//!   schedule and dead letters); then a worker retires it, and it leaves
//!   the record.
//!
//! # Epochs
//! Every change raises the epoch. Each partition also keeps the highest
//! epoch any writer has shown it (`{tag}:layout`): ingest's enqueue script
//! refuses a caller whose layout is older (`STALE`), so that once a change
//! has reached a partition no process can write to it by an outdated
//! layout ([`crate::keys::Keys::layout`]).

pub mod follow;
pub mod placement;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::keys::Keys;

/// The record's format version.
pub const VERSION: u32 = 1;

/// Most changes kept for Idempotency-Key lookups.
pub const HISTORY: usize = 16;

/// A partition's state ([module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Read by workers, not yet written by ingest.
    Opening,
    /// Written and read.
    Active,
    /// Read until empty, then retired.
    Draining,
}

impl State {
    /// The name shown by postbackctl and kept in the record.
    pub fn name(self) -> &'static str {
        match self {
            State::Opening => "opening",
            State::Active => "active",
            State::Draining => "draining",
        }
    }
}

/// One partition in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Its number (`postbackctl --partition P`); unique among those listed.
    pub index: u32,
    /// The hash tag its keys carry (`{tag}`), or empty for the plain names
    /// of one partition on a plain Redis (`postbacks`, `postbacks:dead`…).
    pub tag: String,
    /// What it is doing.
    pub state: State,
    /// The epoch at which it entered its state.
    pub since: u64,
}

/// A change of the partitions that take new requests: the ones that did
/// before it, by tag, in order (the mapping of Idempotency-Keys until then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The epoch the change made.
    pub epoch: u64,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// The tags of the partitions active before it, in index order.
    pub before: Vec<String>,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// [`VERSION`].
    pub version: u32,
    /// Raised by every change.
    pub epoch: u64,
    /// Every partition not yet retired, in index order.
    pub partitions: Vec<Partition>,
    /// The latest changes of the active set, oldest first (at most
    /// [`HISTORY`]).
    #[serde(default)]
    pub history: Vec<Change>,
}

/// Why a record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Not JSON of the record's shape.
    #[error("the partition record is not readable: {0}")]
    Unreadable(#[from] serde_json::Error),
    /// Written by a newer version.
    #[error("the partition record has version {0}; this build reads version {VERSION}")]
    Version(u32),
    /// Holds no active partition, or lists an index twice.
    #[error("the partition record is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl Layout {
    /// The record for a new deployment of `count` partitions: one on a
    /// plain Redis keeps the plain names; otherwise each is placed in the
    /// slot [`placement::seed_slot`] gives.
    pub fn seed(stream: &str, count: u32, cluster: bool) -> Self {
        let count = count.max(1);
        let tags = if count == 1 && !cluster {
            vec![String::new()]
        } else {
            (0..count).map(|p| placement::tag_for_slot(stream, p, placement::seed_slot(p, count))).collect()
        };
        Self::with_tags(tags)
    }

    /// The record of a deployment made before the record existed, with
    /// `count` partitions named `{<stream>:<p>}`.
    pub fn legacy(stream: &str, count: u32) -> Self {
        Self::with_tags((0..count.max(1)).map(|p| format!("{stream}:{p}")).collect())
    }

    fn with_tags(tags: Vec<String>) -> Self {
        let partitions = tags
            .into_iter()
            .enumerate()
            .map(|(p, tag)| Partition { index: p as u32, tag, state: State::Active, since: 1 })
            .collect();
        Self { version: VERSION, epoch: 1, partitions, history: Vec::new() }
    }

    /// Parses a stored record and checks it.
    pub fn parse(text: &str) -> Result<Self, LayoutError> {
        let layout: Layout = serde_json::from_str(text)?;
        if layout.version > VERSION {
            return Err(LayoutError::Version(layout.version));
        }
        if layout.active().next().is_none() {
            return Err(LayoutError::Inconsistent("no partition is active"));
        }
        let mut seen = std::collections::HashSet::new();
        if !layout.partitions.iter().all(|p| seen.insert(p.index)) {
            return Err(LayoutError::Inconsistent("an index is listed twice"));
        }
        Ok(layout)
    }

    /// The record as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("a layout always serializes"))
    }

    /// The partitions that take new requests, in index order.
    pub fn active(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().filter(|p| p.state == State::Active)
    }

    /// How many partitions take new requests (what `POSTBACK_PARTITIONS`
    /// must match).
    pub fn active_count(&self) -> u32 {
        self.active().count() as u32
    }

    /// Partition `index`, if listed.
    pub fn get(&self, index: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.index == index)
    }

    /// The lowest index no listed partition has.
    pub fn free_index(&self) -> u32 {
        (0..).find(|i| self.get(*i).is_none()).unwrap_or_else(|| unreachable!("indexes are finite"))
    }

    /// Records that the active set is about to change at `epoch`: keeps
    /// the current one for Idempotency-Key lookups.
    pub fn note_change(&mut self, epoch: u64, at_ms: u64) {
        let before = self.active().map(|p| p.tag.clone()).collect();
        self.history.push(Change { epoch, at_ms, before });
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }

    /// The tags an Idempotency-Key hashed to `hash` mapped to under the
    /// active sets replaced since `since_ms`, newest first, without
    /// repeats and without `current`.
    pub fn earlier_tags(&self, hash: u16, since_ms: u64, current: &str) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for change in self.history.iter().rev().filter(|c| c.at_ms >= since_ms) {
            if change.before.is_empty() {
                continue;
            }
            let tag = &change.before[hash as usize % change.before.len()];
            if tag != current && !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        tags
    }
}

/// The key names of partition `index` with hash tag `tag` (empty: the
/// plain names).
pub fn keys_for(stream: &str, group: &str, dead: Option<&str>, index: u32, tag: &str) -> Keys {
    if tag.is_empty() {
        let keys = Keys::new(stream, group);
        let keys = match dead {
            Some(dead) => keys.with_dead(dead),
            None => keys,
        };
        return Keys { partition: index, ..keys };
    }
    Keys::tagged(stream, group, dead, index, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_round_trips_and_counts_its_active_partitions() {
        let layout = Layout::seed("postbacks", 3, true);
        assert_eq!(layout.active_count(), 3);
        assert_eq!(Layout::parse(&layout.to_json()).expect("parses"), layout);
        let plain = Layout::seed("postbacks", 1, false);
        assert_eq!(plain.partitions[0].tag, "");
        assert_eq!(Layout::legacy("postbacks", 2).partitions[1].tag, "postbacks:1");
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let mut layout = Layout::seed("postbacks", 2, true);
        layout.partitions[1].index = 0;
        assert!(matches!(Layout::parse(&layout.to_json()), Err(LayoutError::Inconsistent(_))));
        layout.partitions.iter_mut().for_each(|p| p.state = State::Draining);
        assert!(Layout::parse(&layout.to_json()).is_err());
        layout.version = VERSION + 1;
        assert!(matches!(Layout::parse(&layout.to_json()), Err(LayoutError::Version(_))));
        assert!(matches!(Layout::parse("{"), Err(LayoutError::Unreadable(_))));
    }

    #[test]
    fn earlier_mappings_are_listed_newest_first_once_each() {
        let mut layout = Layout::legacy("s", 2);
        layout.note_change(2, 1_000);
        layout.partitions.push(Partition { index: 2, tag: "s:2".into(), state: State::Active, since: 2 });
        layout.note_change(3, 2_000);
        // hash 1: before the first change s:1, before the second s:1 too.
        assert_eq!(layout.earlier_tags(1, 0, "s:0"), ["s:1"]);
        assert_eq!(layout.earlier_tags(2, 0, "s:2"), ["s:0"]);
        assert!(layout.earlier_tags(1, 5_000, "s:0").is_empty(), "changes older than the window are ignored");
        assert_eq!(layout.free_index(), 3);
    }
}
