//! The queue side: acknowledgement, bad entries, pending recovery, a group
//! that disappears.

use fred::prelude::*;
use postback_common::keys::ENTRY_FIELD;
use postback_deliver::Deliverer;
use postback_testkit::{RedisServer, Sink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Pipeline, WAIT, deliver_config, enqueue, seed_request};

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
async fn a_garbage_entry_does_not_stop_the_worker() {
    let p = Pipeline::start().await;
    let client = p.redis.client().await;
    let _: String = client.xadd(&p.stream, false, None, "*", (ENTRY_FIELD, "not msgpack")).await.expect("XADD");
    let _: String = client.xadd(&p.stream, false, None, "*", ("other", "field")).await.expect("XADD");
    p.ingest(&seed_request(&p.target("/after"))).await;
    let got = p.sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].target, "/after");
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
