//! Deliver's `/metrics`: attempts by outcome and status class, retries,
//! dead letters, latency histograms, and the queue sampled from Redis; the
//! text passes promtool's lint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use postback_testkit::{Reply, expect_metric, lint_with_promtool};

use crate::helpers::{Pipeline, seed_request, wait_dead};

#[tokio::test]
async fn counts_attempts_retries_dead_letters_and_samples_the_queue() {
    let flaky = Arc::new(AtomicUsize::new(0));
    let seen = flaky.clone();
    let p = Pipeline::start_with(
        move |received, _| match received.target.as_str() {
            t if t.starts_with("/gone") => Reply::status(404),
            _ if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply::status(503),
            _ => Reply::status(200),
        },
        |_| {},
    )
    .await;
    p.ingest(&seed_request(&p.target("/flaky"))).await;
    p.ingest(&seed_request(&p.target("/gone"))).await;
    wait_dead(&p.redis, 1).await;
    let delivered = [("outcome", "delivered"), ("status_class", "2xx")];
    p.deliver_metrics_once("postback_delivery_attempts_total", &delivered, 1.0).await;
    // The counters move when the sink answers; the entry leaves the stream
    // a moment later, when its acknowledgement lands.
    p.redis.wait_nothing_to_deliver(crate::helpers::WAIT).await;
    let text = p.deliver_metrics().await;
    assert_eq!(flaky.load(Ordering::SeqCst), 2, "one failed attempt and one delivery");
    lint_with_promtool(&text);
    let attempts = |outcome: &str, class: &str| {
        expect_metric(&text, "postback_delivery_attempts_total", &[("outcome", outcome), ("status_class", class)])
    };
    assert_eq!(attempts("retry", "5xx"), 1.0);
    assert_eq!(attempts("delivered", "2xx"), 1.0);
    assert_eq!(attempts("dead", "4xx"), 1.0);
    assert_eq!(expect_metric(&text, "postback_retries_scheduled_total", &[("reason", "failed_attempt")]), 1.0);
    assert_eq!(expect_metric(&text, "postback_dead_lettered_total", &[("reason", "rejected")]), 1.0);
    assert_eq!(expect_metric(&text, "postback_delivery_response_seconds_count", &[]), 3.0);
    assert_eq!(expect_metric(&text, "postback_end_to_end_seconds_count", &[]), 1.0, "only the delivered one");
    assert_eq!(expect_metric(&text, "postback_deliveries_in_flight", &[]), 0.0);
    assert_eq!(expect_metric(&text, "postback_stream_length", &[]), 0.0);
    assert_eq!(expect_metric(&text, "postback_group_pending", &[]), 0.0);
    assert_eq!(expect_metric(&text, "postback_scheduled_retries", &[]), 0.0);
    assert_eq!(expect_metric(&text, "postback_dead_letters", &[]), 1.0);
    assert_eq!(expect_metric(&text, "postback_group_consumers", &[]), 1.0);
    assert_eq!(expect_metric(&text, "postback_redis_up", &[]), 1.0);
}

#[tokio::test]
async fn a_queue_that_waits_shows_in_the_gauges() {
    // Deliver holds each attempt for a while, so entries stay pending.
    let mut p = Pipeline::start_with(
        |_, _| Reply::status(200).delay(std::time::Duration::from_millis(1_500)),
        |c| c.concurrency = 1,
    )
    .await;
    for _ in 0..3 {
        p.ingest(&seed_request(&p.target("/slow"))).await;
    }
    // The first is at the sink, holding the only slot for 1.5 s: until
    // then nothing else is read.
    p.sink.wait_for(1, crate::helpers::WAIT).await;
    let text = p.deliver_metrics().await;
    assert_eq!(expect_metric(&text, "postback_stream_length", &[]), 3.0);
    assert_eq!(expect_metric(&text, "postback_stream_postbacks", &[]), 3.0);
    assert_eq!(expect_metric(&text, "postback_group_pending", &[]), 1.0, "one held by the only slot");
    assert_eq!(expect_metric(&text, "postback_group_lag", &[]), 2.0);
    assert_eq!(expect_metric(&text, "postback_deliveries_in_flight", &[]), 1.0);
    assert!(expect_metric(&text, "postback_oldest_pending_age_seconds", &[]) > 0.0);
    p.redis.kill();
    let text = p.deliver_metrics().await;
    assert_eq!(expect_metric(&text, "postback_redis_up", &[]), 0.0);
}
