//! The SSRF guard end to end: loopback is refused (with no connection) unless
//! private targets are allowed, names are checked when resolved, redirects
//! are checked hop by hop; and the limits on what a target can make deliver
//! do.

use std::time::Duration;

use postback_testkit::{Reply, Sink};
use serde_json::json;

use crate::helpers::{Pipeline, WAIT, seed_request, wait_dead};

#[tokio::test]
async fn loopback_targets_are_refused_with_the_guard_on() {
    let p = Pipeline::start_with(|_, _| Reply::status(200), |c| c.allow_private_targets = false).await;
    let ids = p.ingest(&seed_request(&p.target("/x"))).await;
    let localhost = p.target("/y").replace("127.0.0.1", "localhost");
    p.ingest(&seed_request(&localhost)).await;
    let dead = wait_dead(&p.redis, 2).await;
    for letter in &dead {
        assert!(letter["reason"].starts_with("refused: "), "{letter:?}");
        assert!(letter["reason"].contains("loopback"), "{letter:?}");
    }
    assert!(dead.iter().any(|d| d["postback_id"] == ids[0]));
    assert!(dead.iter().any(|d| d["reason"].contains("localhost is")), "the name was resolved and refused: {dead:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.sink.received().is_empty(), "no request reached the refused target");
    // Refused targets are counted (once the letter is written, which the
    // test has just seen).
    p.deliver_metrics_once("postback_dead_lettered_total", &[("reason", "refused")], 2.0).await;
}

#[tokio::test]
async fn a_redirect_from_an_allowed_target_to_a_refused_one_is_not_followed() {
    let inside = Sink::start_on("127.0.0.2", |_, _| Reply::status(200)).await;
    let location = format!("http://127.0.0.2:{}/secret", inside.addr().port());
    let p = Pipeline::start_with(
        move |_, _| Reply::status(302).header("location", location.clone()),
        |c| {
            c.allow_private_targets = false;
            c.target_allow = postback_deliver::AllowList::parse("127.0.0.1").expect("allow list");
        },
    )
    .await;
    p.ingest(&seed_request(&p.target("/redirect"))).await;
    let dead = wait_dead(&p.redis, 1).await;
    assert!(dead[0]["reason"].contains("127.0.0.2"), "{:?}", dead[0]);
    assert_eq!(p.sink.received().len(), 1, "the allowed target was asked");
    assert!(inside.received().is_empty(), "the refused one never was");
}

#[tokio::test]
async fn too_many_redirects_end_in_the_dead_letter_stream() {
    let p = Pipeline::start_with(|_, _| Reply::status(302).header("location", "/again"), |c| c.max_redirects = 2).await;
    p.ingest(&seed_request(&p.target("/loop"))).await;
    let dead = wait_dead(&p.redis, 1).await;
    assert!(dead[0]["reason"].contains("redirect"), "{:?}", dead[0]);
    assert_eq!(p.sink.received().len(), 3, "the first request and two redirects");
}

#[tokio::test]
async fn a_url_longer_than_the_limit_after_expansion_is_dead_lettered() {
    let p = Pipeline::start_with(|_, _| Reply::status(200), |c| c.max_url_bytes = 100).await;
    p.ingest(&json!({"endpoint": {"method": "GET", "url": p.target("/l?v={v}")}, "data": [{"v": "é".repeat(40)}]}))
        .await;
    let dead = wait_dead(&p.redis, 1).await;
    assert!(dead[0]["reason"].contains("POSTBACK_MAX_URL_BYTES"), "{:?}", dead[0]);
    assert!(p.sink.received().is_empty());
}

#[tokio::test]
async fn an_endless_response_body_is_cut_at_the_log_limit() {
    let p = Pipeline::start_with(|_, _| Reply::status(200).endless(), |c| c.log_body_bytes = 10).await;
    p.ingest(&seed_request(&p.target("/firehose"))).await;
    p.sink.wait_for(1, WAIT).await;
    // Delivered (a 200), acknowledged, and not stuck reading for ever.
    p.wait_drained().await;
}

#[tokio::test]
async fn no_part_of_the_data_ever_becomes_a_header() {
    let p = Pipeline::start().await;
    let data = json!({
        "Host": "evil.example",
        "X-Postback-Id": "forged",
        "Authorization": "Bearer stolen",
        "Content-Type": "text/plain",
        "v": "a\r\nX-Injected: 1",
    });
    let ids = p.ingest(&json!({"endpoint": {"method": "POST", "url": p.target("/h?v={v}")}, "data": [data]})).await;
    let received = p.sink.wait_for(1, WAIT).await;
    let request = &received[0];
    let mut names: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "content-length", "content-type", "host", "user-agent", "x-postback-id"]);
    assert_eq!(request.postback_id(), Some(ids[0].as_str()));
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.target, "/h?v=a%0D%0AX-Injected%3A%201");
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body, data, "the data travels in the body, as sent");
}

#[tokio::test]
async fn a_response_with_too_many_header_lines_fails_the_attempt() {
    let p = Pipeline::start_with(
        |_, _| {
            (0..150).fold(Reply::status(200), |reply, i| {
                reply.header(Box::leak(format!("x-filler-{i}").into_boxed_str()), "x")
            })
        },
        |c| c.max_attempts = 2,
    )
    .await;
    p.ingest(&seed_request(&p.target("/chatty"))).await;
    let dead = wait_dead(&p.redis, 1).await;
    assert_eq!(dead[0]["attempts"], "2", "{:?}", dead[0]);
    assert!(dead[0]["reason"].contains("message head is too large"), "{:?}", dead[0]);
    assert_eq!(p.sink.received().len(), 2);
}
