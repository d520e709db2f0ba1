//! Crashes and restarts with postbacks in flight (fault-injection cases 1,
//! 2 (deliver side), 3 and 6). Each ends by checking, against the ids that
//! got a 202, that every one reached the sink or the dead-letter stream.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use postback_deliver::Deliverer;
use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Pipeline, WAIT, assert_none_lost, deliver_config, enqueue};

const BIN: &str = env!("CARGO_BIN_EXE_postback-deliver");

fn spawn_worker(redis: &RedisServer, consumer: &str, envs: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("POSTBACK_REDIS_URL", redis.url())
        .env("POSTBACK_DELIVER_ADDR", "127.0.0.1:0")
        .env("POSTBACK_CONSUMER", consumer)
        .env("POSTBACK_READ_BLOCK_MS", "200")
        .env("POSTBACK_ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn deliver")
}

async fn run_in_process(redis: &RedisServer, consumer: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = deliver_config(redis);
    config.consumer = Some(consumer.into());
    config.http_timeout_ms = 1_000;
    config.claim_idle_ms = 1_500;
    let deliverer = Deliverer::build(config).await.expect("build");
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { deliverer.run(token).await.expect("run") }))
}

/// Starts worker "b" in-process, waits until the stream and the schedule are
/// empty, checks nothing accepted was lost, and stops it.
async fn survivor_finishes(redis: &RedisServer, sink: &Sink, accepted: &[String]) {
    let (stop, b) = run_in_process(redis, "b").await;
    redis.wait_nothing_to_deliver(Duration::from_secs(20)).await;
    assert_none_lost(sink, redis, accepted).await;
    redis.assert_no_records_left().await;
    stop.cancel();
    b.await.expect("join");
}

fn per_id(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in sink.received() {
        *seen.entry(r.postback_id().unwrap_or_default().to_owned()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_killed_worker_s_postbacks_are_finished_by_another() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(800))).await;
    let mut a = spawn_worker(
        &redis,
        "a",
        &[
            ("POSTBACK_HTTP_TIMEOUT_MS", "1000"),
            ("POSTBACK_CLAIM_IDLE_MS", "1500"),
            ("POSTBACK_PER_HOST_CONCURRENCY", "64"),
        ],
    );
    let data: Vec<_> = (0..20).map(|i| json!({"i": i})).collect();
    let ids = enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/k?i={{i}}", sink.base_url())}, "data": data}),
    )
    .await;
    // Worker a has all 20 in flight at the slow sink: kill it before any
    // answer comes back.
    sink.wait_for(20, WAIT).await;
    a.start_kill().expect("kill -9");
    a.wait().await.expect("reap");

    survivor_finishes(&redis, &sink, &ids).await;
    let seen = per_id(&sink);
    for id in &ids {
        assert!(seen.get(id).copied().unwrap_or(0) >= 2, "{id} was not delivered again by the survivor");
    }
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(30))).await;
    let a = spawn_worker(&redis, "a", &[("POSTBACK_SHUTDOWN_GRACE_MS", "5000")]);
    let mut accepted = Vec::new();
    let url = format!("{}/t?n={{n}}", sink.base_url());
    for round in 0..10 {
        let data: Vec<_> = (0..20).map(|i| json!({"n": round * 100 + i})).collect();
        accepted.extend(enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await);
        if round == 4 {
            sink.wait_for(1, WAIT).await;
            let pid = a.id().expect("pid").to_string();
            assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut a = a;
    let status = tokio::time::timeout(WAIT, a.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0));
    survivor_finishes(&redis, &sink, &accepted).await;
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_nothing() {
    let redis = RedisServer::start_persistent();
    let sink = Sink::start().await;
    let mut p = Pipeline::start_on(redis, sink, |c| {
        c.http_timeout_ms = 1_000;
        c.claim_idle_ms = 1_500;
    })
    .await;
    let mut accepted = Vec::new();
    let url = p.target("/r?n={n}");
    for round in 0..30 {
        let data: Vec<_> = (0..10).map(|i| json!({"n": round * 100 + i})).collect();
        if let Some(ids) = p.try_ingest(&json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await {
            accepted.extend(ids);
        }
        if round == 10 {
            p.redis.restart();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(accepted.len() >= 200, "most requests were accepted ({})", accepted.len());
    p.redis.wait_nothing_to_deliver(Duration::from_secs(20)).await;
    assert_none_lost(&p.sink, &p.redis, &accepted).await;
    p.redis.assert_no_records_left().await;
}

#[tokio::test]
async fn a_redis_restart_without_data_is_survived() {
    let p = Pipeline::start().await;
    p.ingest(&crate::helpers::seed_request(&p.target("/before"))).await;
    p.sink.wait_for(1, WAIT).await;
    let mut p = p;
    p.redis.restart();
    // Everything is gone, the group included; ingest and deliver reconnect,
    // the group is re-created, and new postbacks flow.
    p.wait_ready(&format!("{}/readyz", p.ingest_base)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let ids = loop {
        let request = crate::helpers::seed_request(&p.target("/after"));
        if let Some(ids) = p.try_ingest(&request).await {
            break ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "ingest never accepted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = p.sink.wait_for(2, WAIT).await;
    assert_eq!(got.last().and_then(|r| r.postback_id()), Some(ids[0].as_str()));
}
