//! Version 3 entries (a request's postbacks in one entry): each postback
//! finished on its own, the entry and its endpoint record only once all
//! are; a missing record; postbacks beyond the worker's free slots.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::records::postback as wire;
use postback_common::records::request as request_entry;
use postback_testkit::{RedisServer, Reply, Sink, expect_metric};
use serde_json::json;

use crate::helpers::{Pipeline, WAIT, assert_none_lost, enqueue, wait_dead};

/// The `p` field of every dead letter.
async fn dead_payloads(redis: &RedisServer) -> Vec<Bytes> {
    let client = redis.client().await;
    let entries: Vec<(String, HashMap<String, Bytes>)> =
        client.xrange("postbacks:dead", "-", "+", None).await.expect("XRANGE");
    entries.into_iter().filter_map(|(_, mut f)| f.remove("p")).collect()
}

#[tokio::test]
async fn each_postback_of_a_request_is_finished_on_its_own() {
    // i=1 fails once (retried), i=2 is refused for good (dead-lettered),
    // the rest are delivered at once.
    let calls: Mutex<HashMap<String, usize>> = Mutex::default();
    let sink = Sink::start_with(move |r, _| {
        let mut calls = calls.lock().expect("lock");
        let n = calls.entry(r.target.clone()).or_default();
        *n += 1;
        match (r.target.as_str(), *n) {
            ("/b?i=1", 1) => Reply::status(500),
            ("/b?i=2", _) => Reply::status(404),
            _ => Reply::status(200),
        }
    })
    .await;
    let p = Pipeline::start_on(RedisServer::start(), sink, |_| {}).await;
    let data: Vec<_> = (0..5).map(|i| json!({"i": i})).collect();
    let ids = p.ingest(json!({"endpoint": {"method": "GET", "url": p.target("/b?i={i}")}, "data": data})).await;

    let dead = wait_dead(&p.redis, 1).await;
    p.redis.wait_nothing_to_deliver(WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["postback_id"], ids[2]);
    assert_eq!(dead[0]["reason"], "rejected: HTTP 404");
    // The letter holds that postback alone, as an entry of one that still
    // refers to the endpoint record, which stays as long as the letter.
    let payloads = dead_payloads(&p.redis).await;
    assert_eq!(request_entry::postbacks_in(&payloads[0]), 1);
    let client = p.redis.client().await;
    let keys = postback_common::keys::Keys::default();
    let single = postback_common::entries::resolve(&client, &keys, &payloads[0]).await.expect("Redis").expect("read");
    assert_eq!(single[0].id.to_string(), ids[2]);
    assert_eq!(single[0].url, p.target("/b?i={i}"));
    assert_eq!(single[0].data.get("i"), Some(&postback_common::Scalar::Int(2)));
    p.redis.assert_counts_exact().await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in p.sink.received() {
        *seen.entry(r.target.clone()).or_default() += 1;
    }
    let want: HashMap<String, usize> =
        [("/b?i=0", 1), ("/b?i=1", 2), ("/b?i=2", 1), ("/b?i=3", 1), ("/b?i=4", 1)].map(|(t, n)| (t.into(), n)).into();
    assert_eq!(seen, want);
    assert_none_lost(&p.sink, &p.redis, &ids).await;
    let refs: Option<i64> = client.hget("postbacks:endpoints:refs", entry_address(&payloads[0])).await.expect("HGET");
    assert_eq!(refs, Some(1), "the letter refers to the record");
    p.stop().await;
}

#[tokio::test]
async fn an_entry_whose_endpoint_record_is_gone_is_dead_lettered_whole() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let data: Vec<_> = (0..3).map(|i| json!({"i": i})).collect();
    let url = format!("{}/gone?i={{i}}", sink.base_url());
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
    let client = redis.client().await;
    let _: i64 = client.del("postbacks:endpoints").await.expect("DEL");

    let p = Pipeline::start_on(redis, sink, |_| {}).await;
    let dead = wait_dead(&p.redis, 1).await;
    assert!(dead[0]["reason"].starts_with("undecodable: endpoint record "), "{:?}", dead[0]);
    assert_eq!(dead[0]["category"], "undecodable");
    assert!(dead[0]["reason"].ends_with(" is not in postbacks:endpoints"), "{:?}", dead[0]);
    assert_eq!(dead[0]["postback_id"], ids[0], "named by its first postback");
    let payloads = dead_payloads(&p.redis).await;
    assert_eq!(request_entry::postbacks_in(&payloads[0]), 3, "the entry's bytes, as they were");
    p.redis.wait_nothing_to_deliver(WAIT).await;
    assert!(p.sink.received().is_empty(), "nothing can be delivered without its endpoint");
    let client = p.redis.client().await;
    let batched: Option<i64> = client.get("postbacks:batched").await.expect("GET");
    assert_eq!(batched, None, "the entry's two extra postbacks are no longer counted as waiting");
    let refs: Option<i64> = client.hget("postbacks:endpoints:refs", entry_address(&payloads[0])).await.expect("HGET");
    assert_eq!(refs, Some(1), "the letter still refers to the record, for a redrive");
    p.stop().await;
}

/// The endpoint record address a version 3 or 5 entry's bytes refer to.
fn entry_address(payload: &[u8]) -> String {
    wire::decode_entry(payload).expect("decodes").endpoint().expect("an entry referring to a record").to_string()
}

#[tokio::test]
async fn postbacks_beyond_the_free_slots_wait_then_go_back_to_the_schedule() {
    // Two slots, a slow target, and (claim idle 3 s - timeout 2 s) / 2 =
    // 500 ms of patience: of 12 postbacks in one entry, some cannot get a
    // slot in time and are scheduled again alone, without an attempt.
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(300))).await;
    let p = Pipeline::start_on(RedisServer::start(), sink, |c| c.concurrency = 2).await;
    let data: Vec<_> = (0..12).map(|i| json!({"i": i})).collect();
    let ids = p.ingest(json!({"endpoint": {"method": "GET", "url": p.target("/slow?i={i}")}, "data": data})).await;

    p.sink.wait_for(12, Duration::from_secs(20)).await;
    p.redis.wait_nothing_to_deliver(Duration::from_secs(20)).await;
    let duplicates = assert_none_lost(&p.sink, &p.redis, &ids).await;
    assert_eq!(duplicates, 0, "a postback that waited was not attempted");
    let text = p.deliver_metrics().await;
    let busy = expect_metric(&text, "postback_retries_scheduled_total", &[("reason", "worker_busy")]);
    assert!(busy >= 1.0, "some postbacks went back to the schedule:\n{text}");
    let failed = postback_testkit::metric(&text, "postback_retries_scheduled_total", &[("reason", "failed_attempt")]);
    assert_eq!(failed, None, "none was attempted and failed");
    p.redis.assert_no_records_left().await;
    p.stop().await;
}
