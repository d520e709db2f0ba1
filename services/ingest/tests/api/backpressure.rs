//! Refusing work instead of running Redis out of memory, and waiting for
//! replicas when asked to.

use std::time::Duration;

use fred::prelude::*;
use postback_testkit::RedisServer;

use crate::helpers::{SEED, TestApp, problem};

#[tokio::test]
async fn a_full_backlog_is_a_503_and_enqueues_nothing() {
    let app = TestApp::spawn_with(|c| c.max_backlog = 3).await;
    for _ in 0..3 {
        assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    }
    let response = app.post("/ingest.php", SEED).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(problem(response).await["type"], "/problems/backlog-full");
    assert_eq!(app.queued().await.len(), 3);

    // Scheduled retries count too: with one entry gone and one retry
    // scheduled the backlog is still full.
    let client = app.redis.client().await;
    let ids: Vec<(String, Vec<(String, bytes::Bytes)>)> =
        client.xrange("postbacks", "-", "+", Some(1)).await.expect("XRANGE");
    let _: u64 = client.xdel("postbacks", &ids[0].0).await.expect("XDEL");
    let _: u64 = client.zadd("postbacks:retry", None, None, false, false, (1.0, "1:0:x")).await.expect("ZADD");
    // After a fresh sample, so that the backlog itself refuses, not the
    // count of what this ingest admitted since the last one.
    tokio::time::sleep(postback_ingest::gate::SAMPLE_EVERY * 2).await;
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 503);
    let _: u64 = client.zrem("postbacks:retry", "1:0:x").await.expect("ZREM");
    // Room again once the backlog shrinks: within a sample of the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.post("/ingest.php", SEED).await.status() != 202 {
        assert!(tokio::time::Instant::now() < deadline, "still refused after the backlog shrank");
        tokio::time::sleep(postback_ingest::gate::SAMPLE_EVERY / 2).await;
    }
}

#[tokio::test]
async fn waits_for_replicas_when_asked_to() {
    let app = TestApp::spawn_with(|c| {
        c.wait_replicas = 1;
        c.redis_timeout_ms = 2_000;
    })
    .await;
    // No replica: the write is on the primary, but the promise asked for is
    // not kept, so the caller is told 503, and that the postbacks are queued.
    let keyed = |app: &TestApp| {
        app.http.post(format!("{}/ingest.php", app.base)).header("idempotency-key", "r1").body(SEED).send()
    };
    let response = keyed(&app).await.expect("send");
    assert_eq!(response.status(), 503);
    let body = problem(response).await;
    assert_eq!(body["type"], "/problems/not-replicated");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("were queued") && detail.contains("only 0 of 1 replicas"), "{detail}");
    assert!(detail.contains("same Idempotency-Key"), "{detail}");
    assert_eq!(app.queued().await.len(), 1);

    let replica = RedisServer::start_replica_of(&app.redis);
    let client = app.redis.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = client.info(Some(fred::types::InfoKind::Replication)).await.expect("INFO");
        if info.contains("state=online") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica never came online: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same request again: its postbacks, now confirmed by the replica,
    // not queued a second time.
    let again = keyed(&app).await.expect("send");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.expect("JSON")["ids"], body["ids"]);
    assert_eq!(app.post("/ingest.php", SEED).await.status(), 202);
    let replica_client = replica.client().await;
    let len: u64 = replica_client.xlen("postbacks").await.expect("XLEN");
    assert_eq!(len, 2, "the replica holds both requests' postbacks, each once");
}

#[tokio::test]
async fn without_a_good_sample_for_30_s_the_gate_refuses_everything() {
    // INFO is not there (renamed away, as some managed Redis do; an ACL
    // that refuses it is the same): the memory limit cannot be measured.
    let redis = RedisServer::start_with_extra(vec!["--rename-command".into(), "INFO".into(), "\"\"".into()]);
    let ingest = crate::helpers::Process::spawn(&redis, &[]).await;
    let http = reqwest::Client::new();
    let post = || http.post(format!("{}/ingest.php", ingest.base)).body(SEED).send();
    assert_eq!(post().await.expect("send").status(), 202, "the last sample stands for 30 s");
    let age = |text: &str| postback_testkit::expect_metric(text, "postback_ingest_gate_sample_age_seconds", &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let refused = loop {
        let response = post().await.expect("send");
        if response.status() == 503 {
            break problem(response).await;
        }
        assert_eq!(response.status(), 202);
        assert!(tokio::time::Instant::now() < deadline, "still admitting without any sample");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(refused["type"], "/problems/backlog-full");
    let metrics =
        http.get(format!("{}/metrics", ingest.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(age(&metrics) >= 30.0, "{metrics}");
}
