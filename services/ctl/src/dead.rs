//! `dead list`, `dead show`, `dead export` and `dead redrive`: the
//! dead-letter stream.

use std::io::Write;
use std::time::SystemTime;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};
use postback_common::records::dead_letter::{DeadLetter, field};
use postback_common::redis::id_order;
use postback_common::script::Script;
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::LetterFilter;
use crate::{entry, output};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// No dead letter has that id (exit code 3).
    #[error("{0}")]
    NotFound(String),
    /// Redis failed (exit code 1).
    #[error("Redis: {0}")]
    Redis(#[from] Error),
    /// The output could not be written (exit code 1).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    /// Some dead letters could not be redriven (exit code 4).
    #[error("{0}")]
    Skipped(String),
    /// The partition record cannot be used, or a change of partitions
    /// could not finish (exit code 5).
    #[error("{0}")]
    Partitions(String),
}

type Entry = (String, Vec<(String, Bytes)>);

/// The newest `count` dead letters that match `filter`, newest first,
/// their postbacks decoded, over the partitions.
pub async fn list(
    redis: &Client,
    partitions: &Partitions,
    count: u64,
    filter: &LetterFilter,
) -> Result<Vec<Json>, DeadError> {
    select_all(redis, partitions, filter, count, true).await
}

/// [`select`] over every partition, merged in id order.
async fn select_all(
    redis: &Client,
    partitions: &Partitions,
    filter: &LetterFilter,
    limit: u64,
    newest_first: bool,
) -> Result<Vec<Json>, DeadError> {
    let mut letters = Vec::new();
    for keys in partitions.all() {
        letters.extend(select(redis, keys, filter, limit, newest_first).await?);
    }
    if partitions.count() > 1 {
        letters.sort_by_key(|letter| id_order(letter["id"].as_str().unwrap_or_default()));
        if newest_first {
            letters.reverse();
        }
        letters.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    Ok(letters)
}

/// Whether `letter` (as [`entry::fields_json`] shows it) passes `filter`'s
/// host and reason (its times are applied by the range read).
fn matches(filter: &LetterFilter, letter: &Json) -> bool {
    let host_ok = filter.host.as_deref().is_none_or(|want| {
        let target = letter["target"].as_str().unwrap_or_default();
        target.eq_ignore_ascii_case(want)
            || target.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case(want))
    });
    let reason_ok = filter.reason.is_none_or(|want| letter["category"].as_str() == Some(want.as_str()));
    host_ok && reason_ok
}

/// Up to `limit` letters that match `filter`, read a page at a time,
/// newest first or oldest first.
async fn select(
    redis: &Client,
    keys: &Keys,
    filter: &LetterFilter,
    limit: u64,
    newest_first: bool,
) -> Result<Vec<Json>, DeadError> {
    let ms = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis().to_string();
    let (mut low, mut high) = (filter.since.map_or("-".to_owned(), ms), filter.until.map_or("+".to_owned(), ms));
    let mut out = Vec::new();
    while (out.len() as u64) < limit {
        let page: Vec<Entry> = if newest_first {
            redis.xrevrange(&keys.dead, high.as_str(), low.as_str(), Some(EXPORT_PAGE)).await?
        } else {
            redis.xrange(&keys.dead, low.as_str(), high.as_str(), Some(EXPORT_PAGE)).await?
        };
        let full = page.len() as u64 == EXPORT_PAGE;
        let Some(last) = page.last().map(|(id, _)| id.clone()) else { break };
        for (id, fields) in page {
            let letter = letter_json(redis, keys, id, fields).await?;
            if matches(filter, &letter) && (out.len() as u64) < limit {
                out.push(letter);
            }
        }
        if !full {
            break;
        }
        if newest_first {
            high = format!("({last}");
        } else {
            low = format!("({last}");
        }
    }
    Ok(out)
}

/// Prints dead letters as a table.
pub fn print_list(letters: &[Json]) {
    output::object_table(
        letters,
        &[
            ("dead letter", "id"),
            ("postback", "postback_id"),
            ("target", "target"),
            ("attempts", "attempts"),
            ("status", "last_status"),
            ("last attempt", "last_attempt_at"),
            ("category", "category"),
            ("reason", "reason"),
        ],
    );
}

/// One dead letter.
pub async fn show(redis: &Client, keys: &Keys, id: &str) -> Result<Json, DeadError> {
    let mut entries: Vec<Entry> = redis.xrange(&keys.dead, id, id, Some(1)).await?;
    let Some((id, fields)) = entries.pop() else {
        return Err(DeadError::NotFound(format!("no dead letter {id} in {}", keys.dead)));
    };
    Ok(letter_json(redis, keys, id, fields).await?)
}

/// A dead letter as JSON: its fields, `p` decoded, and its `category`
/// (from its reason, for a letter written before the field existed).
async fn letter_json(redis: &Client, keys: &Keys, id: String, fields: Vec<(String, Bytes)>) -> Result<Json, Error> {
    let letter = DeadLetter::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
    let mut json = entry::fields_json(redis, keys, id, fields).await?;
    if let Json::Object(map) = &mut json {
        map.insert(field::CATEGORY.into(), letter.category.as_str().into());
    }
    Ok(json)
}

/// A progress line on stderr every this many letters of a long redrive.
const PROGRESS_EVERY: usize = 500;

/// The ids of the letters `redrive --all` and its filters select, oldest
/// first, at most `limit`.
pub async fn selected_ids(
    redis: &Client,
    partitions: &Partitions,
    filter: &LetterFilter,
    limit: Option<u64>,
) -> Result<Vec<Json>, DeadError> {
    select_all(redis, partitions, filter, limit.unwrap_or(u64::MAX), false).await
}

/// Letters read per round trip by [`export`].
const EXPORT_PAGE: u64 = 1_000;

/// Writes the dead letters that pass `filter`, written from its `since`
/// (default: the oldest) to its `until` (default: now; inclusive: letters'
/// ids are the time they were written) to `out`, one JSON object per line,
/// oldest first, a page at a time; how many.
pub async fn export(
    redis: &Client,
    keys: &Keys,
    filter: &LetterFilter,
    out: &mut impl Write,
) -> Result<u64, DeadError> {
    let ms = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    let end = format!("{}", ms(filter.until.unwrap_or_else(SystemTime::now)));
    let mut start = format!("{}", ms(filter.since.unwrap_or(SystemTime::UNIX_EPOCH)));
    let mut written = 0;
    loop {
        let page: Vec<Entry> = redis.xrange(&keys.dead, start.as_str(), end.as_str(), Some(EXPORT_PAGE)).await?;
        let full = page.len() as u64 == EXPORT_PAGE;
        let Some(last) = page.last().map(|(id, _)| id.clone()) else { break };
        for (id, fields) in page {
            let letter = letter_json(redis, keys, id, fields).await?;
            if !matches(filter, &letter) {
                continue;
            }
            serde_json::to_writer(&mut *out, &letter).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        if !full {
            break;
        }
        start = format!("({last}");
    }
    out.flush()?;
    Ok(written)
}

/// What one redrive did.
#[derive(Debug, Serialize)]
pub struct Redriven {
    /// The dead letter's id.
    pub dead_id: String,
    /// The stream it went back to (its partition's).
    pub stream: String,
    /// The new stream entry.
    pub entry_id: String,
}

/// A dead letter that was not redriven, and why.
#[derive(Debug)]
pub struct Skipped {
    /// The dead letter's id.
    pub dead_id: String,
    /// Why not.
    pub why: String,
    /// Whether there is no such letter (as opposed to one that cannot go
    /// back: no postback in it, or its endpoint record gone).
    pub missing: bool,
}

/// Puts dead letters back into the stream, each exactly once; those that
/// cannot be are skipped and returned with the reason, the others still
/// redriven.
pub async fn redrive(redis: &Client, keys: &Keys, ids: &[String]) -> Result<(Vec<Redriven>, Vec<Skipped>), DeadError> {
    let script = Script::new(include_str!("lua_redrive.lua"));
    let script_keys = [keys.dead.as_str(), &keys.stream, &keys.endpoints, &keys.batched];
    let (mut done, mut skipped) = (Vec::with_capacity(ids.len()), Vec::new());
    for (n, id) in ids.iter().cloned().enumerate() {
        if n > 0 && n % PROGRESS_EVERY == 0 {
            eprintln!("redriving: {n} of {} done", ids.len());
        }
        match script.call::<_, String>(redis, &script_keys, vec![id.as_str().into()]).await {
            Ok(entry_id) => done.push(Redriven { dead_id: id, stream: keys.stream.clone(), entry_id }),
            Err(e) => match e.details().split_once(' ') {
                Some((code @ ("NOTFOUND" | "NOPAYLOAD" | "NORECORD"), why)) => {
                    skipped.push(Skipped { dead_id: id, why: why.to_owned(), missing: code == "NOTFOUND" })
                }
                _ => return Err(e.into()),
            },
        }
    }
    Ok((done, skipped))
}

/// [`redrive`] over the partitions: each letter goes back to the stream of
/// the partition whose dead letters hold it; a letter no partition holds
/// is skipped as missing.
pub async fn redrive_in_any(
    redis: &Client,
    partitions: &Partitions,
    mut ids: Vec<String>,
) -> Result<(Vec<Redriven>, Vec<Skipped>), DeadError> {
    let (mut done, mut skipped) = (Vec::with_capacity(ids.len()), Vec::new());
    for (n, keys) in partitions.all().iter().enumerate() {
        let (redriven, not) = redrive(redis, keys, &ids).await?;
        done.extend(redriven);
        let last = n + 1 == partitions.count() as usize;
        let (missing, refused): (Vec<_>, Vec<_>) = not.into_iter().partition(|s| s.missing && !last);
        skipped.extend(refused);
        ids = missing.into_iter().map(|s| s.dead_id).collect();
    }
    Ok((done, skipped))
}
