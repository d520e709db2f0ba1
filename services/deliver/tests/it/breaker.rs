//! The circuit breaker stops the worker whose failures opened it at once
//! (only the attempts already in flight go out), and a pause is never
//! shorter than the Retry-After the host sent.

use std::time::{Duration, Instant};

use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, deliver_env, enqueue, spawn_quiet};

fn envs(redis: &RedisServer, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut all: Vec<(&'static str, String)> = vec![
        ("POSTBACK_BREAKER_FAILURES", "5".into()),
        ("POSTBACK_BREAKER_PAUSE_MS", "5000".into()),
        ("POSTBACK_RETRY_BASE_MS", "100".into()),
        ("POSTBACK_RETRY_MAX_MS", "600000".into()),
        ("RUST_LOG", "warn".into()),
    ];
    all.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    deliver_env(redis, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_that_opens_the_breaker_stops_at_once() {
    // 100 postbacks in one request to a partner answering 500 at once,
    // at most 16 in flight: the first 16 go out, each of the four failures
    // before the fifth frees a slot for one more, and from the fifth on
    // the pause holds: at most 16 + 4. Before, this worker's own stale
    // "closed" answers lifted its pause and 61 to 65 went out.
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(500)).await;
    let _deliver = spawn_quiet(std::path::Path::new(DELIVER_BIN), &envs(&redis, &[]));
    let data: Vec<_> = (0..100).map(|i| json!({"i": i})).collect();
    enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/f?i={{i}}", sink.base_url())}, "data": data}),
    )
    .await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let sent = sink.received().iter().filter(|r| r.at < first + Duration::from_millis(4_000)).count();
    println!("{sent} attempts in the first 4 s of a 5 s pause");
    assert!(sent <= 20, "{sent} attempts: only those in flight when it opened may go out");
    assert!(sent >= 5, "{sent} attempts: the breaker opened before it had five failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_lasts_at_least_the_hosts_retry_after() {
    // Two failures open it for 300 ms, but the partner asks for 3 s: each
    // probe comes no sooner than 3 s after the answer before it.
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(429).header("retry-after", "3")).await;
    let extra = [
        ("POSTBACK_BREAKER_FAILURES", "2"),
        ("POSTBACK_BREAKER_PAUSE_MS", "300"),
        ("POSTBACK_PER_HOST_CONCURRENCY", "1"),
    ];
    let _deliver = spawn_quiet(std::path::Path::new(DELIVER_BIN), &envs(&redis, &extra));
    let data: Vec<_> = (0..20).map(|i| json!({"i": i})).collect();
    enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": format!("{}/t?i={{i}}", sink.base_url())}, "data": data}),
    )
    .await;
    let got = sink.wait_for(4, Duration::from_secs(15)).await;
    let at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("gaps between attempts: {gaps:?}");
    for gap in &gaps[1..3] {
        assert!(*gap >= Duration::from_millis(2_900), "a probe came {gap:?} after the last answer: {gaps:?}");
    }
}

#[tokio::test]
async fn the_breaker_record_keeps_retry_after_and_forgets_expired_hosts() {
    use fred::prelude::*;
    use postback_common::breaker::{Breakers, State};
    let redis = RedisServer::start();
    let client = redis.client().await;
    let keys = postback_common::keys::Keys::default();
    let breakers = Breakers::new(&keys);
    let (mark, first, longest) = (2, Duration::from_secs(1), Duration::from_secs(3_600));
    let local = postback_common::time::now_ms() as i64;
    breakers.failed(&client, "a:80", (mark, first, longest), Duration::ZERO).await.expect("failed");
    let open = breakers.failed(&client, "a:80", (mark, first, longest), Duration::from_secs(30)).await.expect("failed");
    assert_eq!(open.state, State::Open);
    assert!(open.until_ms - local >= 30_000, "the first pause is the Retry-After's 30 s: {open:?}");
    // An attempt in flight when it opened answers with a longer one.
    let longer =
        breakers.failed(&client, "a:80", (mark, first, longest), Duration::from_secs(90)).await.expect("failed");
    assert!(longer.until_ms - local >= 90_000, "the running pause grew: {longer:?}");

    // A host whose record expired stays in the open set only until the
    // next look, which also tells Redis's time.
    let _: () =
        client.zadd(format!("{}open", keys.breaker), None, None, false, false, (1.0, "gone:80")).await.expect("ZADD");
    let (now, hosts) = breakers.look(&client).await.expect("look");
    assert!((now - postback_common::time::now_ms() as i64).abs() < 2_000, "Redis's clock: {now}");
    let names: Vec<&str> = hosts.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, ["a:80"]);
    assert_eq!(hosts[0].1, Some(longer.until_ms));
    let left: Vec<String> =
        client.zrange(format!("{}open", keys.breaker), 0, -1, None, false, None, false).await.expect("ZRANGE");
    assert_eq!(left, ["a:80"], "the expired host was forgotten");
    // Paused by hand: no pause end.
    breakers.pause(&client, "b:80").await.expect("pause");
    let (_, hosts) = breakers.look(&client).await.expect("look");
    assert!(hosts.contains(&("b:80".to_owned(), None)), "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_by_hand_stops_every_worker_within_a_second() {
    use postback_common::breaker::Breakers;
    let redis = RedisServer::start();
    let client = redis.client().await;
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(20))).await;
    let _workers: Vec<_> = (0..2)
        .map(|i| {
            let name = format!("w{i}");
            spawn_quiet(std::path::Path::new(DELIVER_BIN), &envs(&redis, &[("POSTBACK_CONSUMER", name.as_str())]))
        })
        .collect();
    let url = format!("{}/h?i={{i}}", sink.base_url());
    let host = format!("127.0.0.1:{}", sink.addr().port());
    let mut paused_at = None;
    for round in 0..30 {
        let data: Vec<_> = (0..5).map(|i| json!({"i": round * 10 + i})).collect();
        enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
        if round == 10 {
            Breakers::new(&postback_common::keys::Keys::default()).pause(&client, &host).await.expect("pause");
            paused_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused_at = paused_at.expect("paused");
    let late: Vec<Duration> = sink
        .received()
        .iter()
        .filter(|r| r.at > paused_at + Duration::from_millis(1_200))
        .map(|r| r.at - paused_at)
        .collect();
    assert!(!sink.received().is_empty(), "delivered before the pause");
    assert!(late.is_empty(), "attempts more than 1.2 s after the pause: {late:?}");
}
