//! The queue side: acknowledgement, bad entries, pending recovery, a group
//! that disappears.

use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::ENTRY_FIELD;
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
async fn garbage_entries_are_dead_lettered_as_poison_and_delivery_goes_on() {
    let p = Pipeline::start().await;
    let client = p.redis.client().await;
    let _: String = client.xadd(&p.stream, false, None, "*", (ENTRY_FIELD, "not msgpack")).await.expect("XADD");
    let _: String = client.xadd(&p.stream, false, None, "*", ("other", "field")).await.expect("XADD");
    p.ingest(&seed_request(&p.target("/after"))).await;
    let got = p.sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].target, "/after");
    let dead = wait_dead(&p.redis, 2).await;
    for letter in &dead {
        assert!(letter["reason"].starts_with("poison: "), "{letter:?}");
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
    // delivering, as a worker that crashed mid-batch would.
    enqueue(&redis, json!({"endpoint": {"method": "GET", "url": format!("{}/p?i={{i}}", sink.base_url())}, "data": [{"i": 1}, {"i": 2}]})).await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
    let taken: Value = client.xreadgroup("deliver", "w1", Some(10), None, false, "postbacks", ">").await.expect("read");
    assert!(!matches!(taken, Value::Null));

    let mut config = deliver_config(&redis);
    config.consumer = Some("w1".into());
    let deliverer = Deliverer::build(config).await.expect("build");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    let got = sink.wait_for(2, WAIT).await;
    let mut targets: Vec<_> = got.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, ["/p?i=1", "/p?i=2"]);
    shutdown.cancel();
    task.await.expect("join").expect("run");
}

#[tokio::test]
async fn a_lost_group_is_recreated_and_delivery_goes_on() {
    let p = Pipeline::start().await;
    p.ingest(&seed_request(&p.target("/before"))).await;
    p.sink.wait_for(1, WAIT).await;
    let client = p.redis.client().await;
    let _: () = client.flushall(false).await.expect("FLUSHALL");
    // The worker's next read gets NOGROUP; it re-creates the group from 0,
    // so a postback queued right now is not skipped.
    p.ingest(&seed_request(&p.target("/after"))).await;
    let got = p.sink.wait_for(2, WAIT).await;
    assert_eq!(got[1].target, "/after");
    p.stop().await;
}

#[tokio::test]
async fn an_entry_that_keeps_killing_workers_is_dead_lettered_as_poison() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let client = redis.client().await;
    let ids =
        enqueue(&redis, json!({"endpoint": {"method": "GET", "url": format!("{}/x", sink.base_url())}, "data": [{}]}))
            .await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
    let taken: Value =
        client.xreadgroup("deliver", "crashy", Some(1), None, false, "postbacks", ">").await.expect("read");
    let entries = postback_deliver::entry::from_reply(taken);
    // As if ten workers had taken it and died: idle for long, delivered 10 times.
    let xclaim = fred::types::CustomCommand::new_static("XCLAIM", fred::types::ClusterHash::FirstKey, false);
    let args: Vec<Value> = vec![
        "postbacks".into(),
        "deliver".into(),
        "crashy".into(),
        0.into(),
        entries[0].id.as_str().into(),
        "IDLE".into(),
        100_000.into(),
        "RETRYCOUNT".into(),
        10.into(),
    ];
    let _: Value = client.custom(xclaim, args).await.expect("XCLAIM");

    let deliverer = Deliverer::build(deliver_config(&redis)).await.expect("build");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    let dead = wait_dead(&redis, 1).await;
    assert_eq!(dead[0]["postback_id"], ids[0]);
    assert!(dead[0]["reason"].starts_with("poison: handed to workers 11 times"), "{:?}", dead[0]);
    assert!(sink.received().is_empty(), "poison is not attempted again: {:#?}", sink.received());
    shutdown.cancel();
    task.await.expect("join").expect("run");
}

#[tokio::test]
async fn consumers_that_are_gone_and_hold_nothing_are_removed() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
    let _: i64 = client.xgroup_createconsumer("postbacks", "deliver", "ghost").await.expect("consumer");
    let mut config = deliver_config(&redis);
    config.consumer = Some("alive".into());
    config.consumer_gone_ms = 1;
    let deliverer = Deliverer::build(config).await.expect("build");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(deliverer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info: Value = client.xinfo_consumers("postbacks", "deliver").await.expect("XINFO");
        let text = format!("{info:?}");
        if !text.contains("ghost") {
            assert!(text.contains("alive"), "the worker itself stays: {text}");
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
    // Blocking reads (one per 2 s) and the scheduler's look (one script per
    // 3 s, counted with the commands it runs inside): about 2 a second.
    assert!(spent <= 6 * 3, "an idle worker cost Redis {spent} commands in 6 s");
    shutdown.cancel();
    task.await.expect("join").expect("run");
}
