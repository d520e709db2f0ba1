//! Requests that are refused: the right status, a problem+json body naming
//! the problem, and nothing enqueued.

use bytes::Bytes;
use futures::stream;

use crate::helpers::{SEED, TestApp, problem};

#[tokio::test]
async fn invalid_requests_name_the_field_and_enqueue_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},{},{"foo":{"x":1}}]}"#, "data[3].foo"),
        (r#"{"endpoint":{"method":"TRACE","url":"http://h/"},"data":[{}]}"#, "endpoint.method"),
        (r#"{"endpoint":{"method":"GET","url":"mailto:x@y"},"data":[{}]}"#, "endpoint.url"),
        (r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[]}"#, "data"),
        (r#"{"endpoint":{"method":"GET","url":"http://h/"}}"#, "data"),
        (r#"{"data":[{}]}"#, "endpoint"),
        ("[1,2]", "body"),
        // One bad item among good ones: the good ones are not enqueued either.
        (r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":1},{"a":[2]},{"a":3}]}"#, "data[1].a"),
    ];
    for (body, field) in cases {
        let response = app.post_json(body).await;
        assert_eq!(response.status(), 400, "{body}");
        let problem = problem(response).await;
        assert_eq!(problem["field"], field, "{body} -> {problem}");
        assert_eq!(problem["errors"][0]["field"], field);
        assert!(problem["detail"].as_str().expect("detail").contains(field), "{problem}");
    }
    assert!(!app.stream_exists().await, "a refused request left something in Redis");
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = TestApp::spawn().await;
    for body in ["", "{", "not json", "{\"endpoint\":}", "\u{feff}{}"] {
        let response = app.post("/ingest.php", body).await;
        assert_eq!(response.status(), 400, "{body:?}");
        let problem = problem(response).await;
        assert_eq!(problem["type"], "/problems/malformed-json", "{body:?}");
    }
    // Said the way a person reads the body, with where.
    let body = "{\n  \"endpoint\": {\"method\": \"GET\", \"url\": \"http://h/\"}\n  \"data\": [{}]\n}";
    let detail = problem(app.post("/ingest.php", body).await).await["detail"].clone();
    assert_eq!(detail, "malformed JSON: expected `,` or `}` at line 3 column 3");
    let detail = problem(app.post("/ingest.php", vec![b'{', 0xff, b'}']).await).await["detail"].clone();
    assert_eq!(detail, "malformed JSON: the body is not UTF-8");
    let deep = "[".repeat(100_000);
    let response = app.post("/ingest.php", deep).await;
    assert_eq!(response.status(), 400);
    assert!(problem(response).await["detail"].as_str().expect("detail").contains("nested"));
    assert!(!app.stream_exists().await);
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_413() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 300).await;
    // The seed sample fits.
    assert!(SEED.len() <= 300);
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    let big = format!(r#"{{"endpoint":{{"method":"GET","url":"http://h/"}},"data":[{{"a":"{}"}}]}}"#, "x".repeat(400));
    // Declared by Content-Length...
    let response = app.post("/ingest.php", big.clone()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(problem(response).await["type"], "/problems/payload-too-large");
    // ...and chunked, with no length declared up front.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        big.as_bytes().chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let response = app.post("/v1/postbacks", reqwest::Body::wrap_stream(stream::iter(chunks))).await;
    assert_eq!(response.status(), 413);
    problem(response).await;
    assert_eq!(app.queued().await.len(), 1, "only the seed sample is queued");
}

#[tokio::test]
async fn wrong_method_is_a_405_and_unknown_path_a_404() {
    let app = TestApp::spawn().await;
    for path in ["/ingest.php", "/v1/postbacks"] {
        for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let response = app.http.request(method.clone(), format!("{}{path}", app.base)).send().await.expect("send");
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(response.headers()["allow"], "POST");
            problem(response).await;
        }
    }
    let response = app.http.post(format!("{}/healthz", app.base)).send().await.expect("send");
    assert_eq!(response.status(), 405);
    let response = app.post("/nope", SEED).await;
    assert_eq!(response.status(), 404);
    problem(response).await;
    assert!(!app.stream_exists().await);
}
