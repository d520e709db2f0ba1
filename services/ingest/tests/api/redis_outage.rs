//! Redis unreachable: ingest still starts and serves, refuses with 503 and
//! Retry-After (never a hang, never a 202), and recovers on its own.

use std::time::Duration;

use crate::helpers::{SEED, TestApp, problem};

#[tokio::test]
async fn answers_503_while_redis_is_down_and_recovers_by_itself() {
    let mut app = TestApp::spawn().await;
    app.redis.kill();

    // The client notices the closed connection quickly; until it does, the
    // enqueue is sent on a dead connection (503: the outcome is unknown, as
    // far as the client can tell) or refused at once (503: nothing queued).
    // Never a 202, never a hang.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut refused = 0;
    for _ in 0..3 {
        let response = http.post(format!("{}/ingest.php", app.base)).body(SEED).send().await.expect("no hang");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let kind = problem(response).await["type"].clone();
        assert!(kind == "/problems/unavailable" || kind == "/problems/outcome-unknown", "{kind}");
        refused += usize::from(kind == "/problems/unavailable");
    }
    assert!(refused >= 1, "once the client knows Redis is gone, nothing is sent");
    let ready = http.get(format!("{}/readyz", app.base)).send().await.expect("no hang");
    assert_eq!(ready.status(), 503);
    let alive = http.get(format!("{}/healthz", app.base)).send().await.expect("no hang");
    assert_eq!(alive.status(), 200);

    app.redis.restart();
    app.wait_ready().await;
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    assert_eq!(app.queued().await.len(), 1, "nothing from the outage was queued");
}

#[tokio::test]
async fn starts_while_redis_is_down() {
    let mut redis = postback_testkit::RedisServer::start();
    let url = redis.url();
    redis.kill();
    let mut config = postback_ingest::Config::defaults();
    config.redis.redis_url = url;
    config.addr = "127.0.0.1:0".parse().expect("addr");
    let app = postback_ingest::Application::build(config).await.expect("builds without Redis");
    let base = format!("http://{}", app.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    assert_eq!(http.get(format!("{base}/readyz")).send().await.expect("serves").status(), 503);
    assert_eq!(http.post(format!("{base}/ingest.php")).body(SEED).send().await.expect("serves").status(), 503);

    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = http.get(format!("{base}/readyz")).send().await.expect("serves").status();
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready after Redis came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.post(format!("{base}/ingest.php")).body(SEED).send().await.expect("serves").status(), 202);
    shutdown.cancel();
    task.await.expect("join").expect("serve");
}
