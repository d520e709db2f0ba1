//! Checks of a partition's queue keys, for the end of a test: nothing
//! left to deliver, and every count and record kept beside the queue
//! exactly what the queue holds. Keyed by [`Keys`], so they work for any
//! partition, on one Redis or a Cluster.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;

/// Waits until `keys`' stream, its group's pending
/// list and its retry schedule are all empty: nothing is left to
/// deliver, and nothing is held. Panics after `timeout`, saying what is
/// left.
pub async fn wait_nothing_to_deliver(client: &Client, keys: &Keys, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let len: u64 = client.xlen(&keys.stream).await.expect("XLEN");
        let levels: u64 = client.zcard(&keys.schedule).await.expect("ZCARD");
        let old: u64 = client.zcard(&keys.retry).await.expect("ZCARD");
        let scheduled = levels + old;
        let pending = pending_count(client, keys).await;
        if len == 0 && scheduled == 0 && pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{len} entries ({pending} pending) and {scheduled} levels of retries left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that nothing waits in the stream and that no endpoint
/// record, reference count, batched count or finished positions are
/// left but what the retry schedule and the dead letters still refer
/// to: every entry that left the stream let go of its record exactly
/// once, and of its record of finished postbacks.
pub async fn assert_no_records_left(client: &Client, keys: &Keys) {
    let waiting = assert_counts_exact(client, keys).await;
    assert_eq!(waiting, 0, "postbacks still wait in the stream");
    for key in [&keys.batched, &keys.finished] {
        let exists: u32 = client.exists(key.as_str()).await.expect("EXISTS");
        assert_eq!(exists, 0, "{key} is left behind");
    }
    let records: Vec<String> = client.hkeys(&keys.endpoints).await.expect("HKEYS");
    let refs: Vec<String> = client.hkeys(&keys.endpoint_refs).await.expect("HKEYS");
    let (mut records, mut refs) = (records, refs);
    records.sort();
    refs.sort();
    assert_eq!(records, refs, "endpoint records kept are exactly those referred to");
}

/// Recounts what `keys`' stream, the retry schedule and the
/// dead-letter stream hold and asserts that the counts kept beside them
/// agree exactly: `XLEN + postbacks:batched` is the postbacks of the
/// stream's entries not yet finished; `postbacks:finished` has fields
/// only for entries in the stream; `postbacks:scheduled` is the
/// postbacks in the schedule's levels, and the index names exactly the
/// levels that hold entries, each scored by its oldest entry's due
/// time; every endpoint reference count is what refers to the record
/// (entries of the stream and of the schedule, letters), which is
/// there. Returns the postbacks waiting in the stream.
pub async fn assert_counts_exact(client: &Client, keys: &Keys) -> u64 {
    use postback_common::records::finished::FinishedPositions;
    use postback_common::records::postback::decode_entry;
    use postback_common::records::schedule;
    use std::collections::HashMap;
    type Entries = Vec<(String, HashMap<String, Bytes>)>;
    let entries: Entries = client.xrange(&keys.stream, "-", "+", None).await.expect("XRANGE");
    let finished: HashMap<String, Bytes> = client.hgetall(&keys.finished).await.expect("HGETALL");
    let mut refs: HashMap<String, i64> = HashMap::new();
    let mut refer = |payload: Option<&Bytes>| -> usize {
        let Some(Ok(decoded)) = payload.map(|p| decode_entry(p)) else { return 1 };
        if let Some(address) = decoded.endpoint() {
            *refs.entry(address.to_string()).or_default() += 1;
        }
        decoded.count()
    };
    let mut waiting = 0u64;
    for (id, fields) in &entries {
        let count = refer(fields.get("p"));
        let bits = finished.get(id).map_or(0, |b| FinishedPositions::from_bytes(b).positions(count).len());
        assert!(bits < count, "entry {id} is still in the stream with all {count} postbacks finished");
        waiting += (count - bits) as u64;
    }
    for id in finished.keys() {
        assert!(entries.iter().any(|(e, _)| e == id), "finished positions of {id} outlived their entry");
    }
    let index: Vec<(String, f64)> =
        client.zrange(&keys.schedule, 0, -1, None, false, None, true).await.expect("ZRANGE");
    let mut in_levels = 0u64;
    for (member, due) in &index {
        let delay = schedule::parse_member(member.as_bytes()).unwrap_or_else(|| panic!("index member {member}"));
        let level: Entries =
            client.xrange(schedule::level_key(&keys.schedule, delay), "-", "+", None).await.expect("XRANGE");
        assert!(!level.is_empty(), "level {member} is indexed but empty");
        let head = schedule::due_ms(&level[0].0, delay).expect("an entry id");
        assert_eq!(*due as u64, head, "level {member} is indexed at its oldest entry's due time");
        for (_, fields) in &level {
            in_levels += refer(fields.get("p")) as u64;
        }
    }
    let scheduled: Option<u64> = client.get(&keys.scheduled).await.expect("GET");
    assert_eq!(scheduled.unwrap_or(0), in_levels, "postbacks:scheduled against the levels");
    let dead: Entries = client.xrange(&keys.dead, "-", "+", None).await.expect("XRANGE dead");
    for (_, fields) in &dead {
        if fields.contains_key("p") {
            refer(fields.get("p"));
        }
    }
    let len: u64 = client.xlen(&keys.stream).await.expect("XLEN");
    let batched: Option<i64> = client.get(&keys.batched).await.expect("GET");
    assert_eq!(
        len as i64 + batched.unwrap_or(0),
        waiting as i64,
        "XLEN {len} + postbacks:batched {batched:?} is not the {waiting} postbacks waiting"
    );
    let stored: HashMap<String, i64> = client.hgetall(&keys.endpoint_refs).await.expect("HGETALL refs");
    assert_eq!(stored, refs, "endpoint reference counts");
    let records: HashMap<String, Bytes> = client.hgetall(&keys.endpoints).await.expect("HGETALL");
    for address in refs.keys() {
        assert!(records.contains_key(address), "record {address} is referred to but gone");
    }
    waiting
}

async fn pending_count(client: &Client, keys: &Keys) -> u64 {
    let summary: Result<Value, _> = client.xpending(&keys.stream, &keys.group, ()).await;
    match summary {
        Ok(Value::Array(parts)) => parts.first().and_then(|v| v.as_u64()).unwrap_or(0),
        _ => 0,
    }
}

/// The keys of every partition in `stream`'s record (the default stream
/// when the record is missing).
pub async fn partition_keys(client: &Client, stream: &str) -> Vec<Keys> {
    match postback_common::layout::store::read(client, stream).await.expect("read the partition record") {
        Some(layout) => postback_common::keys::Partitions::from_layout(&layout, stream, "deliver", None).all().to_vec(),
        None => vec![Keys::default()],
    }
}

/// [`wait_nothing_to_deliver`] and [`assert_no_records_left`] for every
/// partition of `stream`.
pub async fn assert_all_partitions_empty(client: &Client, stream: &str, timeout: Duration) {
    for keys in partition_keys(client, stream).await {
        wait_nothing_to_deliver(client, &keys, timeout).await;
        assert_no_records_left(client, &keys).await;
    }
}
