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

/// Ingest started while its Redis is down (started once for its port, then
/// killed).
struct WithoutRedis {
    redis: postback_testkit::RedisServer,
    base: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl WithoutRedis {
    async fn start(timeout_ms: u64) -> Self {
        let mut redis = postback_testkit::RedisServer::start();
        redis.kill();
        let mut config = postback_ingest::Config::defaults();
        config.redis.redis_url = redis.url();
        config.redis_timeout_ms = timeout_ms;
        config.addr = "127.0.0.1:0".parse().expect("addr");
        let app = postback_ingest::Application::build(config).await.expect("builds without Redis");
        let base = format!("http://{}", app.local_addr());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self { redis, base, shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("serve");
    }
}

#[tokio::test]
async fn starts_while_redis_is_down() {
    let mut app = WithoutRedis::start(300).await;
    let base = app.base.clone();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    assert_eq!(http.get(format!("{base}/readyz")).send().await.expect("serves").status(), 503);
    // No first connection within POSTBACK_REDIS_TIMEOUT_MS: 503, nothing queued.
    let started = tokio::time::Instant::now();
    let response = http.post(format!("{base}/ingest.php")).body(SEED).send().await.expect("serves");
    assert_eq!(response.status(), 503);
    assert_eq!(problem(response).await["type"], "/problems/unavailable");
    assert!(started.elapsed() >= Duration::from_millis(300), "waited for the first connection");

    app.redis.restart();
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
    app.stop().await;
}

#[tokio::test]
async fn a_request_during_the_first_connection_waits_for_it() {
    let mut app = WithoutRedis::start(10_000).await;
    let base = app.base.clone();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let request = tokio::spawn({
        let http = http.clone();
        async move { http.post(format!("{base}/ingest.php")).body(SEED).send().await.expect("serves").status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "the request waits for Redis instead of an instant 503");
    app.redis.restart();
    assert_eq!(request.await.expect("join"), 202);
    let client = app.redis.client().await;
    let len: u64 = fred::prelude::StreamsInterface::xlen(&client, "postbacks").await.expect("XLEN");
    assert_eq!(len, 1);
    app.stop().await;
}
