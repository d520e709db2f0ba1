//! Crashes and restarts with postbacks in flight: real worker processes
//! killed with SIGKILL at chosen points, frozen with SIGSTOP while another
//! worker takes their entries over, stopped with SIGTERM under load, and
//! Redis restarted with and without its data. Each ends by checking,
//! against the ids that got a 202, that every one was delivered or
//! dead-lettered, and how often.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use postback_deliver::Deliverer;
use postback_testkit::{Received, RedisServer, Reply, Sink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long after its answer a delivered postback may still wait for its
/// record (README "Guarantees": the recorder's linger and one round trip;
/// generous for a busy machine).
const RECORDING_WINDOW: Duration = Duration::from_millis(250);

use crate::helpers::{Pipeline, Running, WAIT, assert_none_lost, dead_letters, deliver_config, enqueue, wait_dead};

const BIN: &str = env!("CARGO_BIN_EXE_postback-deliver");

fn spawn_worker(redis: &RedisServer, consumer: &str, envs: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("POSTBACK_REDIS_URL", redis.url())
        .env("POSTBACK_DELIVER_ADDR", "127.0.0.1:0")
        .env("POSTBACK_CONSUMER", consumer)
        .env("POSTBACK_READ_BLOCK_MS", "200")
        .env("POSTBACK_ALLOW_PRIVATE_TARGETS", "true")
        // Partners here fail on purpose; a paused host would only slow the test.
        .env("POSTBACK_BREAKER_FAILURES", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn deliver")
}

async fn kill_9(child: &mut tokio::process::Child) {
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reap");
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

/// Starts worker "b" in-process, waits until nothing is left to deliver,
/// checks nothing accepted was lost and the counts beside the stream, and
/// stops it.
async fn survivor_finishes(redis: &RedisServer, sink: &Sink, accepted: &[String]) {
    let (stop, b) = run_in_process(redis, "b").await;
    redis.wait_nothing_to_deliver(Duration::from_secs(20)).await;
    assert_none_lost(sink, redis, accepted).await;
    redis.assert_no_records_left().await;
    stop.cancel();
    b.await.expect("join");
}

fn per_id(received: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in received {
        *seen.entry(r.postback_id().unwrap_or_default().to_owned()).or_default() += 1;
    }
    seen
}

/// The only stream entry's finished positions, counted.
async fn finished_in_only_entry(client: &Client) -> u32 {
    let entries: Vec<(String, HashMap<String, bytes::Bytes>)> =
        client.xrange("postbacks", "-", "+", None).await.expect("XRANGE");
    let Some((id, _)) = entries.first() else { return 0 };
    let bits: Option<bytes::Bytes> = client.hget("postbacks:finished", id).await.expect("HGET");
    bits.map_or(0, |b| b.iter().map(|byte| byte.count_ones()).sum())
}

#[tokio::test]
async fn a_killed_worker_s_finished_postbacks_are_not_sent_again() {
    let redis = RedisServer::start();
    // Even items are answered at once, odd ones only after 800 ms.
    let sink = Sink::start_with(|r, _| {
        let odd = r.target.ends_with(['1', '3', '5', '7', '9']);
        Reply::status(200).delay(if odd { Duration::from_millis(800) } else { Duration::ZERO })
    })
    .await;
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
    let url = format!("{}/k?i={{i}}", sink.base_url());
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
    // All 20 reach the sink; the 10 even ones are delivered and recorded in
    // their entry, the 10 odd ones are still in flight: kill the worker now.
    sink.wait_for(20, WAIT).await;
    let client = redis.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    while finished_in_only_entry(&client).await < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the delivered half was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_9(&mut a).await;
    assert_eq!(sink.received().len(), 20, "nothing else was sent before the kill");

    survivor_finishes(&redis, &sink, &ids).await;
    let seen = per_id(&sink.received());
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(seen.get(id).copied(), Some(want), "postback {i}: delivered {:?} times", seen.get(id));
    }
}

/// Kills worker processes each time the sink gets the postback, restarting
/// them with `name(n)`; returns once the postback is dead-lettered, with the
/// letter's reason and how often the sink got it.
async fn crash_loop(name: fn(usize) -> String, envs: &[(&str, &str)]) -> (String, usize) {
    let redis = RedisServer::start();
    // Never answers in time: the worker is killed before it can finish.
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(30))).await;
    let url = format!("{}/crash", sink.base_url());
    enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{}]})).await;
    let mut envs = envs.to_vec();
    envs.push(("POSTBACK_MAX_DELIVERIES", "3"));
    for n in 0.. {
        let mut worker = spawn_worker(&redis, &name(n), &envs);
        tokio::select! {
            _ = sink.wait_for(n + 1, Duration::from_secs(15)) => kill_9(&mut worker).await,
            dead = wait_dead(&redis, 1) => {
                kill_9(&mut worker).await;
                redis.assert_counts_exact().await;
                return (dead[0]["reason"].clone(), sink.received().len());
            }
        }
        assert!(n < 10, "the crash loop never ended");
    }
    unreachable!()
}

#[tokio::test]
async fn a_postback_that_kills_its_restarted_worker_is_dead_lettered_as_poison() {
    // The same consumer name every time (as the systemd units run it): each
    // restart re-reads the entry from its own pending list.
    let (reason, attempts) = crash_loop(|_| "stable".into(), &[]).await;
    assert_eq!(reason, "poison: handed to workers 4 times without being finished");
    assert_eq!(attempts, 3, "attempted on its first three hand-outs only");
}

#[tokio::test]
async fn a_postback_that_kills_every_worker_that_claims_it_is_dead_lettered_as_poison() {
    // A new name every time: each worker claims the entry from the last.
    let envs = [("POSTBACK_HTTP_TIMEOUT_MS", "1000"), ("POSTBACK_CLAIM_IDLE_MS", "1500")];
    let (reason, attempts) = crash_loop(|n| format!("w{n}"), &envs).await;
    assert_eq!(reason, "poison: handed to workers 4 times without being finished");
    assert_eq!(attempts, 3, "attempted on its first three hand-outs only");
}

#[tokio::test]
async fn kills_at_several_points_finish_every_postback_exactly_once() {
    let redis = RedisServer::start();
    // Items of kind "ok" are taken after 150 ms, "gone" are refused for
    // good (404), "down" fail every time (500), both after 50 ms.
    let sink = Sink::start_with(move |r, _| match r.target.split("k=").nth(1) {
        Some("ok") => Reply::status(200).delay(Duration::from_millis(150)),
        Some("gone") => Reply::status(404).delay(Duration::from_millis(50)),
        _ => Reply::status(500).delay(Duration::from_millis(50)),
    })
    .await;
    let seed = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("FAULTS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let url = format!("{}/m?i={{i}}&k={{k}}", sink.base_url());
    let kinds = ["ok", "gone", "down"];
    let mut kind_of = HashMap::new();
    for request in 0..4 {
        let data: Vec<_> = (0..30).map(|i| json!({"i": request * 100 + i, "k": kinds[i % 3]})).collect();
        let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
        kind_of.extend(ids.into_iter().enumerate().map(|(i, id)| (id, kinds[i % 3])));
    }
    let envs = [
        ("POSTBACK_MAX_ATTEMPTS", "3"),
        ("POSTBACK_RETRY_BASE_MS", "20"),
        ("POSTBACK_RETRY_MAX_MS", "200"),
        ("POSTBACK_HTTP_TIMEOUT_MS", "1000"),
        ("POSTBACK_CLAIM_IDLE_MS", "1500"),
        ("POSTBACK_DELIVER_CONCURRENCY", "8"),
    ];
    // Kill the worker at three random points (sink counts, of about 200
    // attempts in all, then a random few ms more), restarting it under the
    // same name (it re-reads what it held) or under a new one (which
    // claims it). What may be repeated is what README "Guarantees" says:
    // the attempts in flight at a kill, and those answered within the
    // recording window before it.
    let mut worker = spawn_worker(&redis, "a", &envs);
    let mut window = HashSet::new();
    let points = [rng.usize(10..60), rng.usize(70..120), rng.usize(130..170)];
    for (point, next_name) in points.into_iter().zip(["a", "b", "c"]) {
        sink.wait_for(point, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
        let at = std::time::Instant::now();
        kill_9(&mut worker).await;
        window.extend(sink.unanswered());
        let answered = sink.answered();
        window.extend((0..answered.len()).filter(|i| answered[*i].is_some_and(|end| end + RECORDING_WINDOW >= at)));
        worker = spawn_worker(&redis, next_name, &envs);
    }
    redis.wait_nothing_to_deliver(Duration::from_secs(40)).await;
    kill_9(&mut worker).await;

    let seen = per_id(&sink.received());
    let dead = dead_letters(&redis).await;
    let mut letters: HashMap<String, Vec<&HashMap<String, String>>> = HashMap::new();
    for letter in &dead {
        letters.entry(letter["postback_id"].clone()).or_default().push(letter);
    }
    // Per postback, the attempts the window excuses.
    let received = sink.received();
    let mut excused: HashMap<&str, usize> = HashMap::new();
    for i in &window {
        *excused.entry(received[*i].postback_id().expect("id")).or_default() += 1;
    }
    let (mut repeats, mut unexcused) = (0, Vec::new());
    for (id, kind) in &kind_of {
        let sent = seen.get(id).copied().unwrap_or(0);
        let before = repeats;
        let got = letters.get(id).map_or(&[][..], Vec::as_slice);
        match *kind {
            "ok" => {
                assert!(sent >= 1, "{id} was never delivered");
                assert!(got.is_empty(), "{id} was delivered, yet dead-lettered: {got:?}");
                repeats += sent - 1;
            }
            "gone" => {
                assert_eq!(got.len(), 1, "{id}: one dead letter, not {got:?}");
                assert_eq!(got[0]["reason"], "rejected: HTTP 404");
                repeats += sent - 1;
            }
            _ => {
                assert_eq!(got.len(), 1, "{id}: one dead letter, not {got:?}");
                assert_eq!(got[0]["reason"], "gave up after 3 attempts; last: HTTP 500");
                assert_eq!(got[0]["attempts"], "3", "the retry chain kept its count");
                assert!(sent >= 3, "{id} got {sent} attempts");
                repeats += sent - 3;
            }
        }
        let allowed = excused.get(id.as_str()).copied().unwrap_or(0);
        if repeats - before > allowed {
            unexcused.push(format!("{id}: {} repeats, {allowed} attempts in the window", repeats - before));
        }
    }
    assert_eq!(dead.len(), 80, "one dead letter per given-up postback");
    assert!(unexcused.is_empty(), "repeated beyond the window (FAULTS_SEED={seed}): {unexcused:?}");
    let window = window.len();
    println!(
        "{repeats} repeated attempts; {window} attempts were in flight or answered within the recording window at the kills"
    );
    assert!(
        repeats <= window,
        "{repeats} repeats, but only {window} attempts were in flight or unrecorded at the kills"
    );
    redis.assert_no_records_left().await;
}

#[tokio::test]
async fn a_worker_that_lost_its_entry_while_frozen_changes_nothing_when_it_wakes() {
    let redis = RedisServer::start();
    // Worker a's attempts (the first of each postback) are answered after a
    // second: item 0 with a 500, item 1 with a 200. Worker b's (the later
    // ones) take 700 ms, so b still holds the entry when a wakes up.
    let seen: Mutex<HashMap<String, usize>> = Mutex::default();
    let sink = Sink::start_with(move |r, _| {
        let mut seen = seen.lock().expect("lock");
        let n = seen.entry(r.target.clone()).or_default();
        *n += 1;
        match (*n, r.target.as_str()) {
            (1, "/frozen?i=0") => Reply::status(500).delay(Duration::from_secs(1)),
            (1, _) => Reply::status(200).delay(Duration::from_secs(1)),
            _ => Reply::status(200).delay(Duration::from_millis(700)),
        }
    })
    .await;
    let url = format!("{}/frozen?i={{i}}", sink.base_url());
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{"i": 0}, {"i": 1}]})).await;
    let mut a = Running::spawn(
        BIN,
        &[
            ("POSTBACK_REDIS_URL", redis.url()),
            ("POSTBACK_DELIVER_ADDR", "127.0.0.1:0".into()),
            ("POSTBACK_CONSUMER", "a".into()),
            ("POSTBACK_READ_BLOCK_MS", "200".into()),
            ("POSTBACK_ALLOW_PRIVATE_TARGETS", "true".into()),
            ("POSTBACK_HTTP_TIMEOUT_MS", "1000".into()),
            ("POSTBACK_CLAIM_IDLE_MS", "1500".into()),
            ("POSTBACK_RETRY_BASE_MS", "20".into()),
            ("POSTBACK_RETRY_MAX_MS", "200".into()),
            ("RUST_LOG", "warn".into()),
        ],
    );
    sink.wait_for(2, WAIT).await;
    // Frozen mid-attempt, as by a long pause: its entry goes idle, and b
    // takes it over and attempts both postbacks again.
    a.signal("-STOP");
    let (stop, b) = run_in_process(&redis, "b").await;
    sink.wait_for(4, WAIT).await;
    a.signal("-CONT");
    // b delivers both. a's finishing steps must leave nothing behind: a
    // retry of item 0 would come back within 200 ms and be sent a third
    // time; a dead letter would stay.
    redis.wait_nothing_to_deliver(WAIT).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.wait_nothing_to_deliver(WAIT).await;
    let seen = per_id(&sink.received());
    assert_eq!(ids.iter().map(|id| seen.get(id).copied()).collect::<Vec<_>>(), [Some(2), Some(2)]);
    // a did try: its retry of item 0 found the entry held by b.
    let line = a.line("another worker took this entry over while it was being delivered; leaving it to that worker (is POSTBACK_CLAIM_IDLE_MS too short?)").await;
    assert_eq!(line["level"], "WARN");
    assert!(dead_letters(&redis).await.is_empty());
    redis.assert_no_records_left().await;
    stop.cancel();
    b.await.expect("join");
    a.signal("-KILL");
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
    p.wait_drained().await;
}
