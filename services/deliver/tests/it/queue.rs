//! The queue side: acknowledgement, bad entries, pending recovery, a group
//! that disappears, consumers that are gone.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::ENTRY_FIELD;
use postback_common::{Data, Method, Postback, records::postback as wire};
use postback_deliver::Deliverer;
use postback_testkit::{RedisServer, Sink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Pipeline, WAIT, deliver_config, enqueue, seed_request, wait_dead};

#[tokio::test]
async fn delivered_entries_are_acknowledged_and_removed() {
    let p = Pipeline::start().await;
    let data: Vec<_> = (0..50).map(|i| json!({"i": i})).collect();
    p.ingest(&json!({"endpoint": {"method": "GET", "url": p.target("/a?i={i}")}, "data": data})).await;
    p.sink.wait_for(50, WAIT).await;
    p.wait_drained().await;
    let client = p.redis.client().await;
    let pending: (u64, Value, Value, Value) = client.xpending(&p.stream, "deliver", ()).await.expect("XPENDING");
    assert_eq!(pending.0, 0, "nothing left pending");
}

#[tokio::test]
async fn garbage_entries_are_dead_lettered_as_undecodable_and_delivery_goes_on() {
    let p = Pipeline::start().await;
    let client = p.redis.client().await;
    let _: String = client.xadd(&p.stream, false, None, "*", (ENTRY_FIELD, "not msgpack")).await.expect("XADD");
    let _: String = client.xadd(&p.stream, false, None, "*", ("other", "field")).await.expect("XADD");
    p.ingest(&seed_request(&p.target("/after"))).await;
    let got = p.sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].target, "/after");
    let dead = wait_dead(&p.redis, 2).await;
    for letter in &dead {
        assert!(letter["reason"].starts_with("undecodable: "), "{letter:?}");
        assert_eq!(letter["category"], "undecodable");
        assert_eq!(letter["attempts"], "0");
    }
    let kept: Vec<(String, Vec<(String, bytes::Bytes)>)> =
        client.xrange("postbacks:dead", "-", "+", None).await.expect("XRANGE");
    let payloads: Vec<_> = kept.iter().flat_map(|(_, f)| f.iter().filter(|(k, _)| k == "p")).collect();
    assert_eq!(payloads.len(), 1, "only the entry that had a payload has one");
    assert_eq!(&payloads[0].1[..], b"not msgpack", "the original bytes are kept");
    p.wait_drained().await;
}

#[tokio::test]
async fn a_restarted_worker_delivers_its_own_pending_entries() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let client = redis.client().await;
    // Queue two postbacks, then let consumer "w1" take them without
    // delivering, as a worker that crashed mid-entry would.
    enqueue(&redis, json!({"endpoint": {"method": "GET", "url": format!("{}/p?i={{i}}", sink.base_url())}, "data": [{"i": 1}, {"i": 2}]})).await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
    let taken: Value = client.xreadgroup("deliver", "w1", Some(10), None, false, "postbacks", ">").await.expect("read");
    assert!(!matches!(taken, Value::Null));

    // A claim would take a minute: only the re-read of its own pending
    // entries can deliver them within the wait below.
    let mut config = deliver_config(&redis);
    config.consumer = Some("w1".into());
    config.claim_idle_ms = 60_000;
    let deliverer = Deliverer::build(config).await.expect("build");
    let admin = format!("http://{}/metrics", deliverer.admin_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    let got = sink.wait_for(2, WAIT).await;
    let mut targets: Vec<_> = got.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, ["/p?i=1", "/p?i=2"]);
    redis.wait_nothing_to_deliver(WAIT).await;
    let text = reqwest::get(&admin).await.expect("scrape").text().await.expect("text");
    assert_eq!(postback_testkit::expect_metric(&text, "postback_claimed_total", &[]), 0.0, "nothing was claimed");
    shutdown.cancel();
    task.await.expect("join").expect("run");
}

#[tokio::test]
async fn a_lost_group_is_recreated_and_delivery_goes_on() {
    let p = Pipeline::start().await;
    p.ingest(&seed_request(&p.target("/before"))).await;
    p.sink.wait_for(1, WAIT).await;
    let client = p.redis.client().await;
    // Redis loses everything, and a postback arrives before any worker can
    // create the group again: one transaction, so no worker runs between.
    // A group created at `$` would skip it.
    let postback = Postback {
        id: uuid::Uuid::now_v7(),
        accepted_at_ms: postback_common::time::now_ms(),
        method: Method::Get,
        url: p.target("/after"),
        data: Data::default(),
        trace: None,
        delivery: None,
    };
    let trx = client.multi();
    let _: () = trx.flushall(false).await.expect("queue FLUSHALL");
    let _: () = trx
        .xadd("postbacks", false, None, "*", (ENTRY_FIELD, Bytes::from(wire::encode(&postback))))
        .await
        .expect("queue XADD");
    let _: Value = trx.exec(true).await.expect("EXEC");
    let got = p.sink.wait_for(2, WAIT).await;
    assert_eq!(got[1].target, "/after");
    assert_eq!(got[1].postback_id(), Some(postback.id.to_string().as_str()));
    p.wait_drained().await;
    p.stop().await;
}

#[tokio::test]
async fn consumers_that_are_gone_and_hold_nothing_are_removed() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
    let _: i64 = client.xgroup_createconsumer("postbacks", "deliver", "ghost").await.expect("consumer");
    // "holder" is just as idle, but holds an entry: it must stay.
    let _: String = client.xadd("postbacks", false, None, "*", (ENTRY_FIELD, "x")).await.expect("XADD");
    let _: Value = client.xreadgroup("deliver", "holder", Some(1), None, false, "postbacks", ">").await.expect("read");
    let mut config = deliver_config(&redis);
    config.consumer = Some("alive".into());
    config.consumer_gone_ms = 1;
    config.claim_idle_ms = 60_000;
    let deliverer = Deliverer::build(config).await.expect("build");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info: Value = client.xinfo_consumers("postbacks", "deliver").await.expect("XINFO");
        let text = format!("{info:?}");
        // The janitor never removes its own worker (it reads on its own
        // connection, which may come up after the janitor's first round).
        if !text.contains("ghost") && text.contains("alive") {
            assert!(text.contains("holder"), "a consumer holding an entry stays: {text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ghost consumer never removed: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.expect("join").expect("run");
}

#[tokio::test]
async fn an_idle_worker_costs_redis_only_a_few_commands_a_second() {
    let redis = RedisServer::start();
    let mut config = deliver_config(&redis);
    config.read_block_ms = 2_000;
    config.claim_idle_ms = 60_000;
    config.http_timeout_ms = 10_000;
    let deliverer = Deliverer::build(config).await.expect("build");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let client = redis.client().await;
    let calls = || async {
        let stats: String = client.info(Some(fred::types::InfoKind::CommandStats)).await.expect("INFO");
        stats
            .lines()
            .filter(|l| !l.starts_with("cmdstat_info:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = calls().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let spent = calls().await - before;
    // Blocking reads (one per 2 s), the scheduler's look (one script per
    // 3 s, counted with the commands it runs inside), the partition
    // record's (one GET a second) and the reader's word (one HSET per
    // 10 s): about 3 a second.
    assert!(spent <= 6 * 4, "an idle worker cost Redis {spent} commands in 6 s");
    shutdown.cancel();
    task.await.expect("join").expect("run");
}

#[tokio::test]
async fn dead_letters_past_their_retention_are_trimmed_by_the_scheduler() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // 300 letters written "three days ago" (ids are times), 5 just now.
    let old = postback_common::time::now_ms() - 3 * 86_400_000;
    for i in 0..300u64 {
        let id = format!("{old}-{i}");
        let _: String = client.xadd("postbacks:dead", false, None, id.as_str(), ("reason", "old")).await.expect("XADD");
    }
    for _ in 0..5 {
        let _: String = client.xadd("postbacks:dead", false, None, "*", ("reason", "new")).await.expect("XADD");
    }
    let p = Pipeline::start_on(redis, Sink::start().await, |c| {
        c.dead_retention = Some(postback_deliver::Retention::parse("2d").expect("retention"));
    })
    .await;
    // Trimming is approximate (whole stream nodes of 100), and runs as the
    // scheduler starts.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left: u64 = client.xlen("postbacks:dead").await.expect("XLEN");
        if left <= 100 {
            let newest: Vec<(String, HashMap<String, String>)> =
                client.xrevrange("postbacks:dead", "+", "-", Some(5)).await.expect("XREVRANGE");
            assert!(newest.iter().all(|(_, f)| f["reason"] == "new"), "the new letters are kept");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} letters left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = p.deliver_metrics().await;
    let trimmed = postback_testkit::metric(&metrics, "postback_dead_trimmed_total", &[]).expect("counted");
    assert!(trimmed >= 200.0, "{trimmed}");
}
