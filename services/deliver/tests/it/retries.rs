//! Failing and hanging endpoints: what is retried, when, and what ends in
//! the dead-letter stream.

use std::time::Duration;

use postback_testkit::{Reply, Sink};
use serde_json::json;

use crate::helpers::{Pipeline, WAIT, assert_none_lost, dead_letters, seed_request, wait_dead};

#[tokio::test]
async fn two_500s_then_200_is_delivered_on_attempt_3() {
    let p = Pipeline::start_with(|_, n| Reply::status(if n < 2 { 500 } else { 200 }), |_| {}).await;
    let ids = p.ingest(&seed_request(&p.target("/flaky"))).await;
    let got = p.sink.wait_for(3, WAIT).await;
    assert!(got.iter().all(|r| r.postback_id() == Some(ids[0].as_str())), "same X-Postback-Id on every attempt");
    p.wait_drained().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.sink.received().len(), 3, "no attempt after the 200");
    assert!(dead_letters(&p.redis).await.is_empty());
}

#[tokio::test]
async fn always_500_is_dead_lettered_after_exactly_max_attempts() {
    let p = Pipeline::start_with(|_, _| Reply::status(500).body("down"), |c| c.max_attempts = 4).await;
    let ids = p.ingest(&seed_request(&p.target("/down"))).await;
    let dead = wait_dead(&p.redis, 1).await;
    let letter = &dead[0];
    assert_eq!(letter["postback_id"], ids[0]);
    assert_eq!(letter["attempts"], "4");
    assert_eq!(letter["last_status"], "500");
    assert_eq!(letter["last_error"], "HTTP 500");
    assert!(letter["reason"].starts_with("gave up after 4 attempts"), "{letter:?}");
    assert!(letter["first_attempt_at"] <= letter["last_attempt_at"]);
    assert_eq!(p.sink.received().len(), 4);
    p.wait_drained().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.sink.received().len(), 4, "no fifth attempt");
    let client = p.redis.client().await;
    let scheduled: u64 = fred::prelude::SortedSetsInterface::zcard(&client, "postbacks:retry").await.expect("ZCARD");
    assert_eq!(scheduled, 0);
}

#[tokio::test]
async fn a_404_is_dead_lettered_after_one_attempt() {
    let p = Pipeline::start_with(|_, _| Reply::status(404), |_| {}).await;
    p.ingest(&seed_request(&p.target("/gone"))).await;
    let dead = wait_dead(&p.redis, 1).await;
    assert_eq!(dead[0]["attempts"], "1");
    assert_eq!(dead[0]["reason"], "rejected: HTTP 404");
    assert_eq!(p.sink.received().len(), 1);
}

#[tokio::test]
async fn retry_after_on_a_429_is_honoured() {
    let p = Pipeline::start_with(
        |_, n| if n == 0 { Reply::status(429).header("retry-after", "1") } else { Reply::status(200) },
        |c| c.retry_max_ms = 5_000,
    )
    .await;
    p.ingest(&seed_request(&p.target("/busy"))).await;
    let got = p.sink.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "second attempt came {gap:?} after the 429 asked for 1 s");
    p.wait_drained().await;
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_and_is_retried() {
    let p = Pipeline::start_with(
        |_, n| if n == 0 { Reply::status(200).delay(Duration::from_secs(5)) } else { Reply::status(200) },
        |c| {
            c.http_timeout_ms = 300;
            c.claim_idle_ms = 1_000;
        },
    )
    .await;
    let ids = p.ingest(&seed_request(&p.target("/hang"))).await;
    let got = p.sink.wait_for(2, WAIT).await;
    assert_eq!(got[1].postback_id(), Some(ids[0].as_str()));
    p.wait_drained().await;
    assert!(dead_letters(&p.redis).await.is_empty());
}

#[tokio::test]
async fn a_hanging_host_does_not_hold_up_a_healthy_one() {
    let hanging = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(8))).await;
    let p = Pipeline::start_with(
        |_, _| Reply::status(200),
        |c| {
            c.concurrency = 8;
            c.per_host_concurrency = 2;
            c.http_timeout_ms = 10_000;
            c.claim_idle_ms = 20_000;
        },
    )
    .await;
    let stuck: Vec<_> = (0..20).map(|i| json!({"i": i})).collect();
    p.ingest(
        &json!({"endpoint": {"method": "GET", "url": format!("{}/h?i={{i}}", hanging.base_url())}, "data": stuck}),
    )
    .await;
    let healthy: Vec<_> = (0..20).map(|i| json!({"i": i})).collect();
    let ids = p.ingest(&json!({"endpoint": {"method": "GET", "url": p.target("/ok?i={i}")}, "data": healthy})).await;
    // Well before the hanging host answers anything, the healthy host has
    // everything.
    p.sink.wait_for(20, Duration::from_secs(5)).await;
    assert_none_lost(&p.sink, &p.redis, &ids).await;
    assert!(hanging.received().len() <= 2, "per-host limit: {} in flight", hanging.received().len());
}
