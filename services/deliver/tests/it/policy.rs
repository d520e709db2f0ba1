//! A request's own delivery policy (`"delivery"` in the body), through
//! real ingest, Redis and deliver: attempts, delay and timeout apply to
//! every postback of the request, on its retries too.

use std::time::{Duration, Instant};

use postback_testkit::Reply;
use serde_json::json;

use crate::helpers::{Pipeline, wait_dead};

fn request(url: String, items: usize, delivery: serde_json::Value) -> serde_json::Value {
    let data: Vec<_> = (0..items).map(|i| json!({"i": i})).collect();
    json!({"endpoint": {"method": "GET", "url": url}, "data": data, "delivery": delivery})
}

/// `max_attempts` replaces POSTBACK_MAX_ATTEMPTS (4 in these tests), and
/// `timeout_ms` the HTTP timeout (2 s here): a partner answering in 1 s is
/// too slow for a request that allows 300 ms, and its two postbacks are
/// dead-lettered after two attempts each, the second from the retry
/// schedule (where the policy travels with the postback).
#[tokio::test]
async fn a_requests_attempts_and_timeout_replace_the_settings() {
    let pipeline = Pipeline::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(1)), |_| {}).await;
    let url = pipeline.target("/slow?i={i}");
    pipeline.ingest(request(url, 2, json!({"max_attempts": 2, "timeout_ms": 300}))).await;
    let dead = wait_dead(&pipeline.redis, 2).await;
    for letter in &dead {
        assert_eq!(letter["attempts"], "2", "{letter:?}");
        assert!(letter["reason"].starts_with("gave up after 2 attempts; last: timeout"), "{letter:?}");
    }
    assert_eq!(pipeline.sink.received().len(), 4, "two attempts each");
    // Without a policy, the same partner is within the settings.
    let url = pipeline.target("/slow?i={i}");
    let ids = pipeline.ingest(json!({"endpoint": {"method": "GET", "url": url}, "data": [{"i": 9}]})).await;
    let got = pipeline.sink.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got[4].postback_id(), Some(ids[0].as_str()));
    pipeline.wait_drained().await;
    assert_eq!(crate::helpers::dead_letters(&pipeline.redis).await.len(), 2);
    pipeline.stop().await;
}

/// `delay_ms`: no postback of the request is attempted before that long
/// after it was accepted; they wait in the retry schedule meanwhile
/// (`reason="delayed"`), without spending an attempt.
#[tokio::test]
async fn a_requests_delay_holds_its_postbacks_back() {
    let pipeline = Pipeline::start().await;
    let url = pipeline.target("/later?i={i}");
    let sent = Instant::now();
    let ids = pipeline.ingest(request(url, 3, json!({"delay_ms": 1_500}))).await;
    let got = pipeline.sink.wait_for(3, Duration::from_secs(10)).await;
    for r in &got {
        assert!(
            r.at.duration_since(sent) >= Duration::from_millis(1_500),
            "too early: {:?}",
            r.at.duration_since(sent)
        );
        assert!(r.at.duration_since(sent) < Duration::from_secs(5), "late: {:?}", r.at.duration_since(sent));
    }
    let mut delivered: Vec<_> = got.iter().map(|r| r.postback_id().expect("id").to_owned()).collect();
    delivered.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(delivered, ids);
    let metrics = pipeline.deliver_metrics().await;
    let delayed = postback_testkit::metric(&metrics, "postback_retries_scheduled_total", &[("reason", "delayed")]);
    assert!(delayed.is_some_and(|n| n >= 3.0), "{metrics}");
    pipeline.wait_drained().await;
    pipeline.stop().await;
}

/// A policy out of range is refused with the field named, and nothing is
/// queued.
#[tokio::test]
async fn a_policy_out_of_range_is_refused_by_name() {
    let pipeline = Pipeline::start().await;
    let url = pipeline.target("/x?i={i}");
    let response = pipeline
        .http
        .post(format!("{}/ingest.php", pipeline.ingest_base))
        .body(request(url, 1, json!({"max_attempts": 0, "timeout_ms": 50})).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.expect("problem");
    let text = problem.to_string();
    assert!(text.contains("delivery.max_attempts") && text.contains("delivery.timeout_ms"), "{text}");
    pipeline.wait_drained().await;
    assert!(pipeline.sink.received().is_empty());
    pipeline.stop().await;
}

/// The example in `schemas/` (the OpenAPI document's `policy` example) is
/// accepted, and its postbacks wait out its 5 s delay in the retry
/// schedule, still referring to the endpoint record that carries the
/// policy.
#[tokio::test]
async fn the_schemas_policy_example_is_accepted_and_its_policy_kept() {
    let pipeline = Pipeline::start().await;
    let example = include_str!("../../../../schemas/examples/policy-request.json")
        .replace("https://partner.example", &pipeline.sink.base_url());
    let ids = pipeline.ingest(example).await;
    assert_eq!(ids.len(), 2);
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    let scheduled = loop {
        let scheduled = pipeline.redis.scheduled_postbacks().await;
        if scheduled.len() == 2 {
            break scheduled;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scheduled:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let want =
        postback_common::delivery::Delivery { max_attempts: Some(3), delay_ms: Some(5_000), timeout_ms: Some(2_000) };
    for (_, attempts, postback) in scheduled {
        assert_eq!(attempts, 0, "waiting out the delay spends no attempt");
        assert_eq!(postback.delivery, Some(want));
        assert!(ids.contains(&postback.id.to_string()));
    }
    pipeline.redis.assert_counts_exact().await;
    assert!(pipeline.sink.received().is_empty(), "not before the delay");
    pipeline.stop().await;
}
