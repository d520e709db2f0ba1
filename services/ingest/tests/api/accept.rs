//! Requests that are accepted: 202, and exactly the right entries in Redis.

use postback_common::{Method, Scalar};
use serde_json::Value;

use crate::helpers::{SEED, TestApp};

#[tokio::test]
async fn seed_sample_is_queued_as_one_postback() {
    let app = TestApp::spawn().await;
    let response = app.post("/ingest.php", SEED).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["accepted"], 1);
    let ids = body["ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 1);

    let queued = app.queued().await;
    assert_eq!(queued.len(), 1);
    let p = &queued[0];
    assert_eq!(p.id.to_string(), ids[0].as_str().expect("id"));
    assert_eq!(p.method, Method::Get);
    assert_eq!(p.url, "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}");
    assert_eq!(p.data.get("mascot"), Some(&Scalar::Str("Gopher".into())));
    assert_eq!(p.data.get("location"), Some(&Scalar::Str("https://blog.golang.org/gopher/gopher.png".into())));
    assert!(p.accepted_at_ms > 0);
    app.stop().await;
}

#[tokio::test]
async fn accepts_any_content_type_or_none() {
    let app = TestApp::spawn().await;
    for content_type in [None, Some("application/json"), Some("text/plain"), Some("application/x-www-form-urlencoded")]
    {
        let mut request = app.http.post(format!("{}/v1/postbacks", app.base)).body(SEED);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 202, "content type {content_type:?}");
    }
    assert_eq!(app.queued().await.len(), 4);
}

#[tokio::test]
async fn one_postback_per_item_in_request_order() {
    let app = TestApp::spawn().await;
    let response =
        app.post_json(r#"{"endpoint":{"method":"post","url":"http://h/{n}"},"data":[{"n":1},{"n":2},{"n":3}]}"#).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["accepted"], 3);
    let queued = app.queued().await;
    let ns: Vec<_> = queued.iter().map(|p| p.data.get("n").cloned()).collect();
    assert_eq!(ns, [Some(Scalar::Int(1)), Some(Scalar::Int(2)), Some(Scalar::Int(3))]);
    let ids: Vec<_> = queued.iter().map(|p| p.id.to_string()).collect();
    let answered: Vec<_> =
        body["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("str").to_owned()).collect();
    assert_eq!(ids, answered);
    assert!(queued.iter().all(|p| p.method == Method::Post));
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = TestApp::spawn().await;
    let health = app.http.get(format!("{}/healthz", app.base)).send().await.expect("send");
    assert_eq!(health.status(), 200);
    let ready = app.http.get(format!("{}/readyz", app.base)).send().await.expect("send");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.expect("json")["status"], "ready");
}

#[tokio::test]
async fn uses_the_configured_stream() {
    let app = TestApp::spawn_with(|c| c.redis.stream = "custom:stream".into()).await;
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    let client = app.redis.client().await;
    let len: u64 = fred::prelude::StreamsInterface::xlen(&client, "custom:stream").await.expect("XLEN");
    assert_eq!(len, 1);
}
