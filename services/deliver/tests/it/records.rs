//! Round trips of the records in `postback_common::records` through the
//! real scripts: ingest's code encodes and `enqueue.lua` writes, the real
//! deliver binary moves postbacks with `finish.lua` and `promote.lua`, and
//! both the Rust types and `postbackctl` read back what the scripts wrote.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::records::dead_letter::{Category, DeadLetter};
use postback_common::records::endpoint::Endpoint;
use postback_common::records::log_entry::LogEntry;
use postback_common::records::postback::{Decoded, decode_entry};
use postback_common::records::schedule;
use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::{Value, json};

use crate::helpers::{DELIVER_BIN, Running, WAIT, deliver_env, enqueue, sibling_bin, wait_dead};

type Entries = Vec<(String, Vec<(String, Bytes)>)>;

/// `postbackctl ARGS` on `redis`; its stdout, which must come with exit 0.
async fn ctl(redis: &RedisServer, args: &[&str]) -> String {
    let out = tokio::process::Command::new(sibling_bin("postbackctl"))
        .args(args)
        .env("POSTBACK_REDIS_URL", redis.url())
        .output()
        .await
        .expect("postbackctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "postbackctl {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn request(url: String, items: usize) -> Value {
    json!({"endpoint": {"method": "GET", "url": url}, "data": (0..items).map(|i| json!({"i": i})).collect::<Vec<_>>()})
}

/// Polls `check` every 50 ms until it gives something, for [`WAIT`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, check: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_request_waits_as_one_compact_retry_and_comes_back_whole() {
    let redis = RedisServer::start();
    let (sink, up) = Sink::start_down(503).await;
    let envs =
        deliver_env(&redis, &[("POSTBACK_RETRY_BASE_MS", "1500".into()), ("POSTBACK_RETRY_MAX_MS", "1500".into())]);
    let _worker = Running::spawn(DELIVER_BIN, &envs);
    let ids = enqueue(&redis, request(format!("{}/r?i={{i}}", sink.base_url()), 5)).await;
    let client = redis.client().await;
    let keys = Keys::default();

    // The request's five postbacks failed together: one level entry
    // (version 5) that refers to the request's endpoint record.
    let level = eventually("a level of the schedule", || async {
        let members: Vec<String> = client.zrange(&keys.schedule, 0, -1, None, false, None, false).await.ok()?;
        let delay = schedule::parse_member(members.first()?.as_bytes())?;
        let entries: Entries = client.xrange(schedule::level_key(&keys.schedule, delay), "-", "+", None).await.ok()?;
        (!entries.is_empty()).then_some(entries)
    })
    .await;
    assert_eq!(level.len(), 1, "{level:?}");
    let payload = &level[0].1.iter().find(|(k, _)| k == "p").expect("p").1;
    let Ok(Decoded::Retried(retried)) = decode_entry(payload) else { panic!("not a version 5 entry: {payload:?}") };
    assert_eq!((retried.offsets.as_slice(), retried.attempts), (&[0, 1, 2, 3, 4][..], 1));
    let records: HashMap<String, Bytes> = client.hgetall(&keys.endpoints).await.expect("HGETALL");
    let record = records.get(&retried.endpoint.to_string()).expect("the record it refers to");
    let endpoint = Endpoint::decode(record).expect("an endpoint record");
    let postbacks = retried.postbacks(&endpoint).expect("its postbacks");
    assert_eq!(postbacks.iter().map(|p| p.id.to_string()).collect::<Vec<_>>(), ids);
    let refs: i64 = client.hget(&keys.endpoint_refs, retried.endpoint.to_string()).await.expect("HGET");
    assert_eq!(refs, 1, "the level entry holds the record; the stream entry let go of it");
    let listed: Value = serde_json::from_str(&ctl(&redis, &["retries", "--json"]).await).expect("JSON");
    let listed: Vec<&str> =
        listed.as_array().expect("rows").iter().map(|r| r["postback_id"].as_str().expect("postback_id")).collect();
    assert_eq!(listed, ids, "postbackctl reads the same five");

    up.store(true, Ordering::SeqCst);
    sink.wait_for(10, WAIT).await;
    eventually("the schedule empty", || async { redis.scheduled_postbacks().await.is_empty().then_some(()) }).await;
    eventually("the last finish", || async {
        let refs: HashMap<String, i64> = client.hgetall(&keys.endpoint_refs).await.ok()?;
        refs.is_empty().then_some(())
    })
    .await;
    redis.assert_no_records_left().await;

    // Each attempt is in the delivery log (written a batch at a time), and
    // postbackctl reads it.
    let attempts = eventually("both attempts of each in the delivery log", || async {
        let log: Vec<(String, Vec<(Bytes, Bytes)>)> = client.xrange(&keys.log, "-", "+", None).await.ok()?;
        let attempts: Vec<LogEntry> = log
            .iter()
            .flat_map(|(_, fields)| LogEntry::from_entry(fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))))
            .collect();
        (attempts.len() == 2 * ids.len()).then_some(attempts)
    })
    .await;
    for id in &ids {
        let mine: Vec<(u32, &str)> =
            attempts.iter().filter(|a| &a.postback_id == id).map(|a| (a.attempt, a.outcome.as_str())).collect();
        assert_eq!(mine, [(1, "retry"), (2, "delivered")], "{id}");
    }
    let shown: Value = serde_json::from_str(&ctl(&redis, &["attempts", &ids[2], "--json"]).await).expect("JSON");
    assert_eq!(shown.as_array().map(Vec::len), Some(2), "{shown}");
}

#[tokio::test]
async fn dead_letters_written_by_deliver_are_filtered_by_their_category() {
    let redis = RedisServer::start();
    let sink =
        Sink::start_with(|received, _| Reply::status(if received.target.starts_with("/gone") { 404 } else { 500 }))
            .await;
    let envs = deliver_env(
        &redis,
        &[
            ("POSTBACK_MAX_ATTEMPTS", "2".into()),
            ("POSTBACK_RETRY_BASE_MS", "20".into()),
            ("POSTBACK_RETRY_MAX_MS", "50".into()),
        ],
    );
    let _worker = Running::spawn(DELIVER_BIN, &envs);
    let failing = enqueue(&redis, request(format!("{}/fail?i={{i}}", sink.base_url()), 3)).await;
    let gone = enqueue(&redis, request(format!("{}/gone?i={{i}}", sink.base_url()), 2)).await;
    let client = redis.client().await;
    let _: String = client.xadd("postbacks", false, None, "*", ("p", "not a postback")).await.expect("XADD");

    wait_dead(&redis, 6).await;
    let raw: Entries = client.xrange("postbacks:dead", "-", "+", None).await.expect("XRANGE");
    let letters: Vec<DeadLetter> = raw
        .iter()
        .map(|(_, fields)| DeadLetter::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_ref()))))
        .collect();
    assert!(raw.iter().all(|(_, f)| f.iter().any(|(k, _)| k == "category")), "every letter has its category field");
    let of = |category: Category| -> Vec<String> {
        let mut ids: Vec<String> =
            letters.iter().filter(|l| l.category == category).filter_map(|l| l.postback_id.clone()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(of(Category::Exhausted), sorted(failing.clone()));
    assert_eq!(of(Category::Rejected), sorted(gone.clone()));
    assert_eq!(letters.iter().filter(|l| l.category == Category::Undecodable).count(), 1, "{letters:?}");
    redis.assert_no_records_left().await;

    // postbackctl filters by the same field: list, export, redrive.
    let ids_in = |json: &str| -> Vec<String> {
        let rows: Vec<Value> = match serde_json::from_str::<Value>(json) {
            Ok(Value::Array(rows)) => rows,
            _ => json.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect(),
        };
        sorted(rows.iter().filter_map(|r| r["postback_id"].as_str().map(str::to_owned)).collect())
    };
    let listed = ctl(&redis, &["dead", "list", "--reason", "exhausted", "--json"]).await;
    assert_eq!(ids_in(&listed), sorted(failing.clone()), "{listed}");
    let exported = ctl(&redis, &["dead", "export", "--reason", "rejected"]).await;
    assert_eq!(ids_in(&exported), sorted(gone.clone()), "{exported}");
    let undecodable = ctl(&redis, &["dead", "list", "--reason", "undecodable", "--json"]).await;
    assert_eq!(serde_json::from_str::<Value>(&undecodable).expect("JSON").as_array().map(Vec::len), Some(1));
    let redriven = ctl(&redis, &["dead", "redrive", "--reason", "rejected", "--dry-run", "--json"]).await;
    assert_eq!(ids_in(&redriven), sorted(gone), "{redriven}");
}
