//! `GET /metrics`: every request and postback counted by outcome, latency
//! histograms, and whether Redis answers; the text passes promtool's lint.

use postback_testkit::{expect_metric, lint_with_promtool};

use crate::helpers::{SEED, TestApp};

const TWO_ITEMS: &str =
    r#"{"endpoint":{"method":"GET","url":"http://example.com/?a={a}"},"data":[{"a":"1"},{"a":"2"}]}"#;

async fn scrape(app: &TestApp) -> String {
    let response = app.http.get(format!("{}/metrics", app.base)).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn counts_requests_and_postbacks_by_outcome() {
    let mut app = TestApp::spawn_with(|c| c.max_backlog = 3).await;
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    assert_eq!(app.post_json(TWO_ITEMS).await.status(), 202);
    assert_eq!(app.post_json(r#"{"endpoint":{}}"#).await.status(), 400);
    assert_eq!(app.post_json("{not json").await.status(), 400);
    // Three postbacks queued: the backlog is full, and both items are refused.
    assert_eq!(app.post_json(TWO_ITEMS).await.status(), 503);

    let text = scrape(&app).await;
    lint_with_promtool(&text);
    let requests = |route: &str, outcome: &str| {
        expect_metric(&text, "postback_ingest_requests_total", &[("route", route), ("outcome", outcome)])
    };
    assert_eq!(requests("/ingest.php", "accepted"), 1.0);
    assert_eq!(requests("/v1/postbacks", "accepted"), 1.0);
    assert_eq!(requests("/v1/postbacks", "invalid"), 1.0);
    assert_eq!(requests("/v1/postbacks", "malformed_json"), 1.0);
    assert_eq!(requests("/v1/postbacks", "backlog_full"), 1.0);
    let postbacks = |outcome: &str| expect_metric(&text, "postback_ingest_postbacks_total", &[("outcome", outcome)]);
    assert_eq!(postbacks("accepted"), 3.0);
    assert_eq!(postbacks("backlog_full"), 2.0);
    let timed = expect_metric(&text, "postback_ingest_request_duration_seconds_count", &[("route", "/v1/postbacks")]);
    assert_eq!(timed, 4.0, "every request to the route is timed, refused ones too");
    assert_eq!(expect_metric(&text, "postback_ingest_enqueue_duration_seconds_count", &[]), 3.0);
    assert_eq!(expect_metric(&text, "postback_redis_up", &[]), 1.0);

    app.redis.kill();
    assert_eq!(expect_metric(&scrape(&app).await, "postback_redis_up", &[]), 0.0);
}

#[tokio::test]
async fn refused_tokens_are_counted_as_unauthorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    // The SHA-256 of "s3cret".
    std::fs::write(&file, "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0\n").expect("write tokens");
    let app = TestApp::spawn_with(|c| c.tokens_file = Some(file)).await;
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 401);
    let text = scrape(&app).await;
    let refused = expect_metric(
        &text,
        "postback_ingest_requests_total",
        &[("route", "/ingest.php"), ("outcome", "unauthorized")],
    );
    assert_eq!(refused, 1.0);
}
