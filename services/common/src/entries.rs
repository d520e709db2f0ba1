//! Reading stream entries back as postbacks, with the endpoint records of
//! version 3 and 5 entries looked up: for `postbackctl`, the benchmarks and the
//! tests (deliver has its own, cached, path).

use bytes::Bytes;
use fred::prelude::*;

use crate::Postback;
use crate::keys::{ENTRY_FIELD, Keys};
use crate::records::endpoint::Endpoint;
use crate::records::postback::{self as wire, Decoded};

/// The postbacks an entry's `p` value holds, or why they cannot be read.
pub async fn resolve(redis: &Client, keys: &Keys, payload: &[u8]) -> Result<Result<Vec<Postback>, String>, Error> {
    let decoded = match wire::decode_entry(payload) {
        Ok(Decoded::Single(postback)) => return Ok(Ok(vec![postback])),
        Ok(decoded) => decoded,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some(address) = decoded.endpoint() else { return Ok(Err("no endpoint record address".into())) };
    let record: Option<Bytes> = redis.hget(&keys.endpoints, address.to_string()).await?;
    let Some(record) = record else {
        return Ok(Err(format!("endpoint record {address} is not in {}", keys.endpoints)));
    };
    let endpoint = match Endpoint::verify(address, &record) {
        Ok(endpoint) => endpoint,
        Err(why) => return Ok(Err(format!("{why} (in {})", keys.endpoints))),
    };
    Ok(decoded.postbacks(&endpoint).map_err(|e| e.to_string()))
}

/// Entries of the stream from `start` (an id, or `-`), at most `count`:
/// each id with its postbacks, or why they cannot be read.
pub async fn read(
    redis: &Client,
    keys: &Keys,
    start: &str,
    count: Option<u64>,
) -> Result<Vec<(String, Result<Vec<Postback>, String>)>, Error> {
    let entries: Vec<(String, Vec<(String, Bytes)>)> = redis.xrange(&keys.stream, start, "+", count).await?;
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let postbacks = match fields.iter().find(|(k, _)| k == ENTRY_FIELD) {
            Some((_, payload)) => resolve(redis, keys, payload).await?,
            None => Err(format!("no \"{ENTRY_FIELD}\" field")),
        };
        out.push((id, postbacks));
    }
    Ok(out)
}

/// Every postback in the stream, in order; an entry that cannot be read is
/// an error naming it.
pub async fn queued(redis: &Client, keys: &Keys) -> anyhow::Result<Vec<Postback>> {
    let mut out = Vec::new();
    for (id, postbacks) in read(redis, keys, "-", None).await? {
        out.extend(postbacks.map_err(|why| anyhow::anyhow!("entry {id}: {why}"))?);
    }
    Ok(out)
}
