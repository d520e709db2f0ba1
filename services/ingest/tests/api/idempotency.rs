//! `Idempotency-Key`: the same request answered once, whatever happened to
//! the first answer; and 503s that say truthfully whether the postbacks may
//! be queued.

use std::time::Duration;

use fred::prelude::*;
use serde_json::Value;

use crate::helpers::{SEED, TestApp, problem};

const OTHER: &str = r#"{"endpoint":{"method":"GET","url":"http://h.example/{a}"},"data":[{"a":1},{"a":2}]}"#;

async fn post_keyed(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/postbacks", app.base))
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn the_same_key_and_body_get_the_same_answer_and_queue_nothing_more() {
    let app = TestApp::spawn().await;
    let first = post_keyed(&app, "order-7", OTHER).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("JSON");
    for _ in 0..2 {
        let again = post_keyed(&app, "order-7", OTHER).await;
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.expect("JSON"), first, "the same body, the same ids");
    }
    assert_eq!(app.queued().await.len(), 2, "queued once");

    // Another body under the same key: refused, nothing queued.
    let reused = post_keyed(&app, "order-7", SEED).await;
    assert_eq!(reused.status(), 422);
    assert_eq!(problem(reused).await["type"], "/problems/idempotency-key-reused");
    // A new key is a new request, and no key at all is always new.
    assert_eq!(post_keyed(&app, "order-8", OTHER).await.status(), 202);
    assert_eq!(app.post("/v1/postbacks", OTHER).await.status(), 202);
    assert_eq!(app.post("/v1/postbacks", OTHER).await.status(), 202);
    assert_eq!(app.queued().await.len(), 8);

    // Kept for POSTBACK_IDEMPOTENCY_TTL_S.
    let client = app.redis.client().await;
    let ttl: i64 = client.ttl("postbacks:idempotency:-:order-7").await.expect("TTL");
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
    let text = reqwest::get(format!("{}/metrics", app.base)).await.expect("scrape").text().await.expect("text");
    let requests = |outcome| {
        postback_testkit::metric(
            &text,
            "postback_ingest_requests_total",
            &[("route", "/v1/postbacks"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("replayed"), Some(2.0));
    assert_eq!(requests("idempotency_key_reused"), Some(1.0));
}

#[tokio::test]
async fn keys_must_be_visible_ascii_and_at_most_255_characters() {
    let app = TestApp::spawn().await;
    for key in ["", "with space", &"k".repeat(256)] {
        let response = post_keyed(&app, key, SEED).await;
        assert_eq!(response.status(), 400, "{key:?}");
        let problem = problem(response).await;
        assert_eq!(problem["field"], "Idempotency-Key");
    }
    assert_eq!(post_keyed(&app, &"k".repeat(255), SEED).await.status(), 202);
    assert_eq!(app.queued().await.len(), 1);
}

#[tokio::test]
async fn a_key_expires_after_its_time_and_is_new_again() {
    let app = TestApp::spawn_with(|c| c.idempotency_ttl_s = 1).await;
    let first: Value = post_keyed(&app, "k", SEED).await.json().await.expect("JSON");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = post_keyed(&app, "k", SEED).await;
    assert!(later.headers().get("idempotent-replayed").is_none());
    let later: Value = later.json().await.expect("JSON");
    assert_ne!(later["ids"], first["ids"]);
    assert_eq!(app.queued().await.len(), 2);
}

#[tokio::test]
async fn keys_are_kept_apart_per_bearer_token() {
    // printf %s one | sha256sum; printf %s two | sha256sum
    const ONE: &str = "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed";
    const TWO: &str = "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{ONE}\n{TWO}\n")).expect("write tokens");
    let app = TestApp::spawn_with(|c| c.tokens_file = Some(file)).await;
    let post = |token: &'static str| {
        app.http
            .post(format!("{}/v1/postbacks", app.base))
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", "same")
            .body(SEED)
            .send()
    };
    let one: Value = post("one").await.expect("send").json().await.expect("JSON");
    let two: Value = post("two").await.expect("send").json().await.expect("JSON");
    assert_ne!(one["ids"], two["ids"], "two callers, two requests");
    let again = post("one").await.expect("send");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.expect("JSON"), one);
    assert_eq!(app.queued().await.len(), 2);
    let client = app.redis.client().await;
    let scoped: u32 = client.exists(format!("postbacks:idempotency:{}:same", &ONE[..16])).await.expect("EXISTS");
    assert_eq!(scoped, 1, "the record is named by the token's hash");
}

#[tokio::test]
async fn a_request_refused_for_a_full_backlog_leaves_no_record_but_a_replay_is_answered() {
    let app = TestApp::spawn_with(|c| c.max_backlog = 1).await;
    let first: Value = post_keyed(&app, "a", SEED).await.json().await.expect("JSON");
    let full = post_keyed(&app, "b", SEED).await;
    assert_eq!(full.status(), 503);
    assert_eq!(problem(full).await["type"], "/problems/backlog-full");
    let client = app.redis.client().await;
    let kept: u32 = client.exists("postbacks:idempotency:-:b").await.expect("EXISTS");
    assert_eq!(kept, 0, "nothing was queued, so nothing is remembered");
    // The postbacks of key "a" are queued already: asking again is not new work.
    let again = post_keyed(&app, "a", SEED).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.expect("JSON"), first);
}

#[tokio::test]
async fn an_answer_that_comes_too_late_is_a_503_that_says_so_and_the_same_key_recovers_it() {
    let app = TestApp::spawn_with(|c| c.redis_timeout_ms = 300).await;
    let client = app.redis.client().await;
    // Redis learns the script (a late EVALSHA of an unknown one fails).
    assert_eq!(app.post("/v1/postbacks", SEED).await.status(), 202);
    for keyed in [true, false] {
        // Redis holds writes back for a second: the enqueue is sent, times
        // out, and then runs.
        let _: () = client
            .custom(
                fred::types::CustomCommand::new_static("CLIENT", fred::types::ClusterHash::Random, false),
                vec!["PAUSE", "1000", "WRITE"],
            )
            .await
            .expect("CLIENT PAUSE");
        let response = if keyed { post_keyed(&app, "late", SEED).await } else { app.post("/v1/postbacks", SEED).await };
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = problem(response).await;
        assert_eq!(body["type"], "/problems/outcome-unknown");
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.contains("may have been queued"), "{detail}");
        let advice = if keyed { "same Idempotency-Key" } else { "may deliver them twice" };
        assert!(detail.contains(advice), "{detail}");
        let ids = body["ids"].clone();
        assert_eq!(ids.as_array().map(Vec::len), Some(1));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        // It was queued after all, with the ids the 503 gave.
        let queued: Vec<String> = app.queued().await.iter().map(|p| p.id.to_string()).collect();
        assert_eq!(queued.last().map(String::as_str), ids[0].as_str());
        if keyed {
            let again = post_keyed(&app, "late", SEED).await;
            assert_eq!(again.status(), 202);
            assert_eq!(again.json::<Value>().await.expect("JSON")["ids"], ids, "the same postbacks, not new ones");
        }
    }
    assert_eq!(app.queued().await.len(), 3, "each request queued once");
    // The client's connection stayed in step: the next request is fine.
    assert_eq!(app.post("/v1/postbacks", SEED).await.status(), 202);
}
