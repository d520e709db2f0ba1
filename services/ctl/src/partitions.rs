//! `partitions`: the partition record with where each partition lives and
//! what it holds; `partitions resize N`, the online change of the count
//! (runbooks/partitions.md has the protocol).

use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use postback_common::layout::placement::{self, Primary};
use postback_common::layout::store::{self, Reader};
use postback_common::layout::{Layout, Partition, State};
use serde::Serialize;

use crate::dead::DeadError;
use crate::output;

/// A reader that said nothing for this long is taken to be gone (three
/// times deliver's heartbeat).
const READER_FRESH: Duration = Duration::from_secs(30);

/// Readers silent this long are forgotten.
const READER_FORGOTTEN: Duration = Duration::from_secs(3600);

/// One partition as `partitions` shows it.
#[derive(Debug, Serialize)]
pub struct Row {
    index: u32,
    state: &'static str,
    since_epoch: u64,
    stream: String,
    slot: u16,
    primary: String,
    entries: u64,
    pending: u64,
    scheduled_retries: u64,
    dead_letters: u64,
}

/// What `partitions` prints.
#[derive(Debug, Serialize)]
pub struct Shown {
    record: String,
    epoch: u64,
    active: u32,
    partitions: Vec<Row>,
    readers: Vec<ReaderRow>,
}

/// A delivery process and the epoch it reads.
#[derive(Debug, Serialize)]
pub struct ReaderRow {
    consumer: String,
    epoch: u64,
    seen_ms_ago: u64,
}

/// The record, each partition's slot, primary and contents, and the
/// delivery processes following it.
pub async fn show(redis: &Client, layout: &Layout, partitions: &Partitions, stream: &str) -> Result<Shown, DeadError> {
    let primaries = slot_map(redis);
    let mut rows = Vec::new();
    for (keys, p) in partitions.all().iter().zip(&layout.partitions) {
        let status = postback_common::queue_status::status(redis, keys).await?;
        let slot = fred::util::redis_keyslot(keys.stream.as_bytes());
        rows.push(Row {
            index: p.index,
            state: p.state.name(),
            since_epoch: p.since,
            stream: keys.stream.clone(),
            slot,
            primary: primary_of(&primaries, slot),
            entries: status.length,
            pending: status.pending,
            scheduled_retries: status.scheduled_retries,
            dead_letters: status.dead_letters,
        });
    }
    let now = postback_common::time::now_ms();
    let readers = store::readers(redis, stream)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|r| ReaderRow { consumer: r.consumer, epoch: r.epoch, seen_ms_ago: now.saturating_sub(r.at_ms) })
        .collect();
    Ok(Shown {
        record: postback_common::keys::layout_record(stream),
        epoch: layout.epoch,
        active: layout.active_count(),
        partitions: rows,
        readers,
    })
}

/// Prints what [`show`] found.
pub fn print(shown: &Shown) {
    println!("{}: epoch {}, {} active", shown.record, shown.epoch, shown.active);
    println!();
    let rows: Vec<Vec<String>> = shown
        .partitions
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                r.state.to_owned(),
                r.stream.clone(),
                r.slot.to_string(),
                r.primary.clone(),
                r.entries.to_string(),
                r.pending.to_string(),
                r.scheduled_retries.to_string(),
                r.dead_letters.to_string(),
            ]
        })
        .collect();
    output::table(
        &["partition", "state", "stream", "slot", "primary", "entries", "pending", "scheduled", "dead"],
        &rows,
    );
    println!();
    let readers: Vec<Vec<String>> = shown
        .readers
        .iter()
        .map(|r| vec![r.consumer.clone(), r.epoch.to_string(), output::age(r.seen_ms_ago)])
        .collect();
    output::table(&["reader", "epoch", "last seen"], &readers);
}

/// The cluster's primaries and their slots, or the whole slot space on one
/// "primary" for a plain Redis.
fn slot_map(redis: &Client) -> Vec<Primary> {
    let Some(routing) = redis.cached_cluster_state() else { return placement::whole("redis") };
    let mut primaries: Vec<Primary> = Vec::new();
    for range in routing.slots() {
        let name = format!("{}:{}", range.primary.host, range.primary.port);
        match primaries.iter_mut().find(|p| p.name == name) {
            Some(p) => p.ranges.push((range.start, range.end)),
            None => primaries.push(Primary { name, ranges: vec![(range.start, range.end)] }),
        }
    }
    if primaries.is_empty() { placement::whole("redis") } else { primaries }
}

fn primary_of(primaries: &[Primary], slot: u16) -> String {
    primaries
        .iter()
        .find(|p| p.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map_or_else(|| "-".to_owned(), |p| p.name.clone())
}

fn store_error(e: store::StoreError) -> DeadError {
    match e {
        store::StoreError::Redis(e) => DeadError::Redis(e),
        other => DeadError::Partitions(other.to_string()),
    }
}

/// Names a resize needs.
pub struct Names<'a> {
    /// `POSTBACK_STREAM`.
    pub stream: &'a str,
    /// `POSTBACK_GROUP`.
    pub group: &'a str,
    /// `POSTBACK_DEAD_STREAM`.
    pub dead: Option<&'a str>,
}

/// Changes the count of active partitions to `target` online: a grow adds
/// partitions as `opening`, waits up to `patience` for every live delivery
/// process to read them, then makes them active; a shrink marks the
/// partitions to go as `draining` (deliver retires each once empty).
/// Returns the record as left.
pub async fn resize(redis: &Client, names: &Names<'_>, target: u32, patience: Duration) -> Result<Layout, DeadError> {
    let layout = read(redis, names.stream).await?;
    let active = layout.active_count();
    let opening: Vec<&Partition> = layout.partitions.iter().filter(|p| p.state == State::Opening).collect();
    if !opening.is_empty() && target != active + opening.len() as u32 {
        return Err(DeadError::Partitions(format!(
            "a grow to {} partitions is unfinished (partitions opening); run `partitions resize {}` first",
            active + opening.len() as u32,
            active + opening.len() as u32
        )));
    }
    if target > active {
        let layout = if opening.is_empty() { open(redis, names, layout, target - active).await? } else { layout };
        wait_for_readers(redis, names.stream, layout.epoch, patience).await?;
        return change(redis, names, |next| {
            for p in next.partitions.iter_mut().filter(|p| p.state == State::Opening) {
                p.state = State::Active;
                p.since = next.epoch;
            }
        })
        .await;
    }
    if target < active {
        return change(redis, names, |next| {
            let legacy = |p: &Partition| p.tag == format!("{}:{}", names.stream, p.index);
            let mut going: Vec<&mut Partition> =
                next.partitions.iter_mut().filter(|p| p.state == State::Active).collect();
            // Names from before the record first, then the newest.
            going.sort_by_key(|p| (std::cmp::Reverse(legacy(p)), std::cmp::Reverse(p.index)));
            let epoch = next.epoch;
            for p in going.into_iter().take((active - target) as usize) {
                p.state = State::Draining;
                p.since = epoch;
            }
        })
        .await;
    }
    Ok(layout)
}

/// The record; there must be one.
async fn read(redis: &Client, stream: &str) -> Result<Layout, DeadError> {
    store::read(redis, stream).await.map_err(store_error)?.ok_or_else(|| {
        DeadError::Partitions(format!(
            "there is no partition record ({})",
            postback_common::keys::layout_record(stream)
        ))
    })
}

/// Adds `more` partitions as `opening`, each placed on the primary with the
/// fewest, with their consumer groups made first (from id 0).
async fn open(redis: &Client, names: &Names<'_>, mut layout: Layout, more: u32) -> Result<Layout, DeadError> {
    loop {
        let primaries = slot_map(redis);
        let mut next = layout.clone();
        next.epoch += 1;
        let mut added = Vec::new();
        for _ in 0..more {
            let taken: Vec<u16> = next
                .partitions
                .iter()
                .filter(|p| p.state != State::Draining)
                .map(|p| if p.tag.is_empty() { 0 } else { placement::slot_of(&p.tag) })
                .collect();
            let index = next.free_index();
            let tag = placement::tag_for_slot(names.stream, index, placement::place(&primaries, &taken));
            next.partitions.push(Partition { index, tag: tag.clone(), state: State::Opening, since: next.epoch });
            next.partitions.sort_by_key(|p| p.index);
            added.push(postback_common::layout::keys_for(names.stream, names.group, names.dead, index, &tag));
        }
        for keys in &added {
            create_group(redis, keys).await?;
        }
        if store::cas(redis, names.stream, Some(layout.epoch), &next).await.map_err(store_error)? {
            return Ok(next);
        }
        layout = read(redis, names.stream).await?;
    }
}

/// Creates a new partition's stream and group at id 0.
async fn create_group(redis: &Client, keys: &Keys) -> Result<(), DeadError> {
    match redis.xgroup_create::<(), _, _, _>(&keys.stream, &keys.group, "0", true).await {
        Err(e) if !e.details().starts_with("BUSYGROUP") => Err(e.into()),
        _ => Ok(()),
    }
}

/// Waits until every delivery process heard from in the last
/// [`READER_FRESH`] reads epoch `epoch`.
async fn wait_for_readers(redis: &Client, stream: &str, epoch: u64, patience: Duration) -> Result<(), DeadError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let now = postback_common::time::now_ms();
        let readers = store::readers(redis, stream).await.map_err(store_error)?;
        let (live, gone): (Vec<Reader>, Vec<Reader>) =
            readers.into_iter().partition(|r| now.saturating_sub(r.at_ms) < READER_FRESH.as_millis() as u64);
        let forgotten: Vec<Reader> =
            gone.into_iter().filter(|r| now.saturating_sub(r.at_ms) > READER_FORGOTTEN.as_millis() as u64).collect();
        store::forget_readers(redis, stream, &forgotten).await.map_err(store_error)?;
        let behind: Vec<&str> = live.iter().filter(|r| r.epoch < epoch).map(|r| r.consumer.as_str()).collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DeadError::Partitions(format!(
                "{} delivery processes do not read the new partitions yet ({}); nothing was made active. Run the \
                 same resize again to finish",
                behind.len(),
                behind.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies `edit` to the record at the next epoch, noting the change of
/// active partitions for Idempotency-Key lookups, and then shows every
/// partition the new epoch (so that no ingest can write by the old record).
async fn change(redis: &Client, names: &Names<'_>, edit: impl Fn(&mut Layout)) -> Result<Layout, DeadError> {
    loop {
        let layout = read(redis, names.stream).await?;
        let mut next = layout.clone();
        next.epoch += 1;
        next.note_change(next.epoch, postback_common::time::now_ms());
        edit(&mut next);
        if store::cas(redis, names.stream, Some(layout.epoch), &next).await.map_err(store_error)? {
            let partitions = Partitions::from_layout(&next, names.stream, names.group, names.dead);
            for keys in partitions.all() {
                store::bump(redis, keys, next.epoch).await.map_err(store_error)?;
            }
            return Ok(next);
        }
    }
}
