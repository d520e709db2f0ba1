//! Hostile or oversized input at the door: bearer tokens and the request
//! limits, each answered with a clear error and nothing enqueued.

use crate::helpers::{SECRET_HASH, SEED, TestApp, problem};

#[tokio::test]
async fn with_tokens_configured_ingest_needs_a_bearer_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# the partner\n{SECRET_HASH}\n")).expect("write tokens");
    let app = TestApp::spawn_with(|c| c.tokens_file = Some(file)).await;
    let url = format!("{}/ingest.php", app.base);
    for auth in [None, Some("Bearer wrong"), Some("Basic c2VjcmV0"), Some("Bearer ")] {
        let mut request = app.http.post(&url).body(SEED);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(problem(response).await["type"], "/problems/unauthorized");
    }
    assert!(!app.stream_exists().await, "nothing enqueued without a token");
    let response = app.http.post(&url).header("authorization", "Bearer secret").body(SEED).send().await.expect("send");
    assert_eq!(response.status(), 202);
    let health = app.http.get(format!("{}/readyz", app.base)).send().await.expect("send");
    assert_eq!(health.status(), 200, "probes need no token");
}

#[tokio::test]
async fn every_limit_is_a_clear_400_and_enqueues_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.max_items = 3;
        c.max_keys = 3;
        c.max_value_bytes = 10;
        c.max_url_bytes = 64;
    })
    .await;
    let cases = [
        (r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},{},{}]}"#, "data", "POSTBACK_MAX_ITEMS"),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":1,"b":2,"c":3,"d":4}]}"#,
            "data[0]",
            "POSTBACK_MAX_KEYS",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":"12345678901"}]}"#,
            "data[0].a",
            "POSTBACK_MAX_VALUE_BYTES",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/0123456789012345678901234567890123456789012345678901234567890123456789"},"data":[{}]}"#,
            "endpoint.url",
            "POSTBACK_MAX_URL_BYTES",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/{a}{a}{a}{a}{a}"},"data":[{"a":"//////////"}]}"#,
            "data[0]",
            "POSTBACK_MAX_URL_BYTES",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/a\r\nX: y"},"data":[{}]}"#,
            "endpoint.url",
            "control character",
        ),
    ];
    for (body, field, says) in cases {
        let response = app.post_json(body).await;
        assert_eq!(response.status(), 400, "{body}");
        let problem = problem(response).await;
        assert_eq!(problem["field"], field, "{body}");
        assert!(problem["detail"].as_str().expect("detail").contains(says), "{body}: {problem}");
    }
    assert!(!app.stream_exists().await);
}
