//! The partition record in Redis: reading it, seeding it, changing it
//! only if nobody else did meanwhile, and showing partitions an epoch.

use fred::prelude::*;

use super::{Layout, LayoutError};
use crate::keys::{self, Keys};
use crate::script::Script;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or refused.
    #[error("Redis error reading the partition record: {0}")]
    Redis(#[from] fred::error::Error),
    /// The record is there but cannot be used.
    #[error("{record}: {source}")]
    Layout {
        /// Its key.
        record: String,
        /// What is wrong with it.
        source: LayoutError,
    },
    /// `POSTBACK_PARTITIONS` says another count.
    #[error(
        "POSTBACK_PARTITIONS is {configured}, but the partition record {record} in Redis has {recorded} \
         active partitions; set POSTBACK_PARTITIONS={recorded}, or leave it unset to follow the record \
         (runbooks/partitions.md)"
    )]
    Mismatch {
        /// The setting.
        configured: u32,
        /// The record's active count.
        recorded: u32,
        /// Its key.
        record: String,
    },
}

/// The record, if there is one.
pub async fn read(redis: &Client, stream: &str) -> Result<Option<Layout>, StoreError> {
    let record = keys::layout_record(stream);
    let text: Option<String> = redis.get(&record).await?;
    text.map(|text| Layout::parse(&text).map_err(|source| StoreError::Layout { record, source })).transpose()
}

/// The record, seeding it when there is none: from the partitions a
/// deployment made before the record has (`{<stream>:0}`, `{<stream>:1}`…),
/// or else `configured` (`POSTBACK_PARTITIONS`, 1 when unset) placed
/// anew. Fails when `configured` disagrees with the record.
pub async fn load(redis: &Client, stream: &str, configured: Option<u32>, cluster: bool) -> Result<Layout, StoreError> {
    let layout = loop {
        if let Some(layout) = read(redis, stream).await? {
            break layout;
        }
        let seed = match legacy_count(redis, stream).await? {
            0 => Layout::seed(stream, configured.unwrap_or(1), cluster),
            found => Layout::legacy(stream, found),
        };
        if cas(redis, stream, None, &seed).await? {
            tracing::info!(
                record = %keys::layout_record(stream),
                partitions = seed.active_count(),
                "seeded the partition record"
            );
            break seed;
        }
        // Another process seeded it first: read theirs.
    };
    check(&layout, stream, configured)?;
    Ok(layout)
}

/// The record, or, when there is none, what [`load`] would seed, without
/// writing it (for tools that only look).
pub async fn peek(redis: &Client, stream: &str, configured: Option<u32>, cluster: bool) -> Result<Layout, StoreError> {
    let layout = match read(redis, stream).await? {
        Some(layout) => layout,
        None => match legacy_count(redis, stream).await? {
            0 => Layout::seed(stream, configured.unwrap_or(1), cluster),
            found => Layout::legacy(stream, found),
        },
    };
    check(&layout, stream, configured)?;
    Ok(layout)
}

/// Whether `configured` agrees with the record (unset always does).
pub fn check(layout: &Layout, stream: &str, configured: Option<u32>) -> Result<(), StoreError> {
    match configured {
        Some(configured) if configured != layout.active_count() => Err(StoreError::Mismatch {
            configured,
            recorded: layout.active_count(),
            record: keys::layout_record(stream),
        }),
        _ => Ok(()),
    }
}

/// How many partitions under the names used before the record
/// (`{<stream>:p}`) hold a stream, counted from 0 until one is missing.
async fn legacy_count(redis: &Client, stream: &str) -> Result<u32, StoreError> {
    let mut found = 0;
    while found < crate::config::MAX_PARTITIONS {
        let exists: u32 = redis.exists(format!("{{{stream}:{found}}}")).await?;
        if exists == 0 {
            break;
        }
        found += 1;
    }
    Ok(found)
}

/// Writes `layout` if the record still has epoch `expected` (`None`: if
/// there is no record); false when it changed meanwhile.
pub async fn cas(redis: &Client, stream: &str, expected: Option<u64>, layout: &Layout) -> Result<bool, StoreError> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(include_str!("cas.lua")));
    let record = keys::layout_record(stream);
    let expected = expected.map(|e| e.to_string()).unwrap_or_default();
    let written: i64 = SCRIPT.call(redis, &[&record], vec![expected.into(), layout.to_json().into()]).await?;
    Ok(written == 1)
}

/// Shows partition `keys` the epoch `epoch`; returns the highest it has
/// been shown.
pub async fn bump(redis: &Client, keys: &Keys, epoch: u64) -> Result<u64, StoreError> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(include_str!("bump.lua")));
    let have: i64 = SCRIPT.call(redis, &[&keys.layout], vec![(epoch as i64).into()]).await?;
    Ok(have as u64)
}

/// A delivery process that reads partitions, as it last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// Its consumer name.
    pub consumer: String,
    /// The epoch whose partitions it reads.
    pub epoch: u64,
    /// When it said so, in Unix milliseconds.
    pub at_ms: u64,
}

/// Says that `consumer` reads every partition of `epoch`.
pub async fn heartbeat(redis: &Client, stream: &str, consumer: &str, epoch: u64) -> Result<(), StoreError> {
    let value = format!("{epoch} {}", crate::time::now_ms());
    let _: () = redis.hset(keys::layout_readers(stream), (consumer, value)).await?;
    Ok(())
}

/// Every reader that has said anything, oldest word first.
pub async fn readers(redis: &Client, stream: &str) -> Result<Vec<Reader>, StoreError> {
    let all: std::collections::HashMap<String, String> = redis.hgetall(keys::layout_readers(stream)).await?;
    let mut readers: Vec<Reader> = all
        .into_iter()
        .filter_map(|(consumer, value)| {
            let (epoch, at) = value.split_once(' ')?;
            Some(Reader { consumer, epoch: epoch.parse().ok()?, at_ms: at.parse().ok()? })
        })
        .collect();
    readers.sort_by_key(|r| r.at_ms);
    Ok(readers)
}

/// Forgets readers that are gone.
pub async fn forget_readers(redis: &Client, stream: &str, gone: &[Reader]) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = gone.iter().map(|r| r.consumer.as_str()).collect();
    let _: () = redis.hdel(keys::layout_readers(stream), names).await?;
    Ok(())
}
