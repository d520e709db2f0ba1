//! The real `postback-deliver` binary: its log lines, bad settings, SIGTERM.

use std::time::Duration;

use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, Running, WAIT, deliver_env, enqueue};

const BIN: &str = DELIVER_BIN;

#[test]
fn a_bad_setting_names_its_variable_and_exits_non_zero() {
    postback_testkit::assert_bad_settings_are_named(
        BIN,
        &[
            ("POSTBACK_DELIVER_CONCURRENCY", "0"),
            ("POSTBACK_HTTP_TIMEOUT_MS", "soon"),
            ("POSTBACK_LOG_BODY_BYTES", "-1"),
            ("POSTBACK_DELIVER_ADDR", "nowhere"),
            ("POSTBACK_CONSUMER", ""),
            ("POSTBACK_GROUP", ""),
            // Shorter than a turn with the 10 s default HTTP timeout.
            ("POSTBACK_CLAIM_IDLE_MS", "10400"),
            ("POSTBACK_RETRY_BASE_MS", "8000000"),
            ("POSTBACK_MAX_ATTEMPTS", "0"),
            ("POSTBACK_EGRESS_PROXY", "ftp://proxy.internal:21"),
            ("POSTBACK_DEAD_RETENTION", "forever"),
            // A count of none would delete every letter: refused.
            ("POSTBACK_DEAD_RETENTION", "0"),
            ("POSTBACK_SIGNING_KEYS_FILE", "/nonexistent/keys"),
            ("POSTBACK_HOST_LIMITS_FILE", "/nonexistent/limits"),
            ("POSTBACK_REDIS_MEMORY_LIMIT_PERCENT", "-1"),
        ],
    );
}

/// The deliver binary on `redis`, admin on a free port, loopback allowed.
fn spawn(redis: &RedisServer, envs: &[(&'static str, String)]) -> Running {
    Running::spawn(BIN, &deliver_env(redis, envs))
}

#[tokio::test]
async fn logs_each_attempt_as_one_json_line() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(201).body("thanks, all good")).await;
    let mut deliver = spawn(&redis, &[("POSTBACK_LOG_BODY_BYTES", "6".into())]);
    let closed = postback_testkit::free_port();
    let ids = enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/ok?m={{m}}", sink.base_url())}, "data": [{"m": "a b"}]}),
    )
    .await;

    let line = deliver.line("delivery attempt").await;
    assert_eq!(line["postback_id"], ids[0]);
    assert_eq!(line["attempt"], 1);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["url"], format!("{}/ok?m=a%20b", sink.base_url()));
    assert_eq!(line["status"], 201);
    assert_eq!(line["outcome"], "delivered");
    assert_eq!(line["response_body"], "thanks");
    assert_eq!(line["response_body_truncated"], true);
    assert!(line["response_time_ms"].is_u64());
    assert!(line["error"].is_null());
    assert!(line["next_attempt_in_ms"].is_null());
    let at = line["attempted_at"].as_str().expect("attempted_at");
    assert!(at.ends_with('Z') && at.len() == "2026-11-28T00:00:00.000Z".len(), "{at}");
    assert_eq!(line["delivered_at"], at, "a delivered attempt says when it was delivered");
    assert_eq!(line["level"], "INFO");

    // A target that refuses the connection: no status, an error, still one line.
    enqueue(
        &redis,
        json!({"endpoint": {"method": "POST", "url": format!("http://127.0.0.1:{closed}/x")}, "data": [{}]}),
    )
    .await;
    let line = deliver.line("delivery attempt").await;
    assert!(line["status"].is_null(), "{line}");
    assert!(line["attempted_at"].is_string() && line["delivered_at"].is_null(), "{line}");
    assert_eq!(line["outcome"], "retry");
    assert_eq!(line["level"], "WARN");
    assert!(line["next_attempt_in_ms"].is_u64(), "{line}");
    assert!(line["error"].as_str().expect("error").contains("connect"), "{line}");
    assert_eq!(line["response_body"], "");

    deliver.signal("-INT");
    let status = tokio::time::timeout(WAIT, deliver.child.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_finishes_deliveries_in_flight_then_exits_zero() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(1_500))).await;
    let mut deliver = spawn(&redis, &[]);
    deliver.line("worker started").await;
    enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/slow?i={{i}}", sink.base_url())}, "data": [{"i": 1}, {"i": 2}, {"i": 3}]}),
    )
    .await;
    sink.wait_for(3, WAIT).await;
    // All three are in flight at the slow sink now.
    deliver.signal("-TERM");
    for _ in 0..3 {
        let line = deliver.line("delivery attempt").await;
        assert_eq!(line["outcome"], "delivered", "{line}");
    }
    let status = tokio::time::timeout(WAIT, deliver.child.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0));
    let client = redis.client().await;
    let len: u64 = fred::prelude::StreamsInterface::xlen(&client, "postbacks").await.expect("XLEN");
    assert_eq!(len, 0, "finished entries were acknowledged before exit");
}

#[tokio::test]
async fn sigterm_while_redis_is_down_still_exits_promptly() {
    let mut redis = RedisServer::start();
    let mut deliver = spawn(&redis, &[]);
    deliver.line("worker started").await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    deliver.signal("-TERM");
    let status = tokio::time::timeout(WAIT, deliver.child.wait()).await.expect("exits without Redis").expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn attempts_still_running_after_the_grace_period_are_abandoned_and_stay_pending() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(8))).await;
    let mut deliver = spawn(
        &redis,
        &[
            ("POSTBACK_SHUTDOWN_GRACE_MS", "300".into()),
            ("POSTBACK_HTTP_TIMEOUT_MS", "20000".into()),
            ("POSTBACK_CLAIM_IDLE_MS", "30000".into()),
        ],
    );
    deliver.line("worker started").await;
    enqueue(&redis, json!({"endpoint": {"method": "GET", "url": format!("{}/slow", sink.base_url())}, "data": [{}]}))
        .await;
    sink.wait_for(1, WAIT).await;
    deliver.signal("-TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(5), deliver.child.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0));
    let client = redis.client().await;
    let pending: (u64, fred::prelude::Value, fred::prelude::Value, fred::prelude::Value) =
        fred::prelude::StreamsInterface::xpending(&client, "postbacks", "deliver", ()).await.expect("XPENDING");
    assert_eq!(pending.0, 1, "the abandoned entry stays pending for another worker");
}

/// Peak resident memory of a process, from /proc (Linux), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc status")
}

#[tokio::test]
async fn endless_response_bodies_do_not_grow_the_worker_s_memory() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).endless()).await;
    let mut deliver = spawn(
        &redis,
        &[
            ("POSTBACK_LOG_BODY_BYTES", "4096".into()),
            ("POSTBACK_HTTP_TIMEOUT_MS", "3000".into()),
            ("POSTBACK_CLAIM_IDLE_MS", "10000".into()),
        ],
    );
    deliver.line("worker started").await;
    let data: Vec<_> = (0..8).map(|i| json!({"i": i})).collect();
    enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/hose?i={{i}}", sink.base_url())}, "data": data}),
    )
    .await;
    for _ in 0..8 {
        let line = deliver.line("delivery attempt").await;
        assert_eq!(line["outcome"], "delivered", "{line}");
        assert_eq!(line["response_body_truncated"], true);
        assert_eq!(line["response_body"].as_str().expect("body").len(), 4096);
    }
    // Eight endless bodies on loopback would be gigabytes within the 3 s
    // timeout if they were read to the end.
    let peak = peak_rss_kib(deliver.child.id().expect("pid"));
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    println!("peak RSS with 8 endless bodies: {} KiB", peak);
}
