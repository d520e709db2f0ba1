//! Redis running out of memory, the whole story: a small maxmemory with
//! noeviction, a partner failing while postbacks arrive, then recovering.
//! Ingest must refuse before any write of deliver's is refused, deliver's
//! log must stay quiet, the delivery log must be shed first, and every
//! accepted postback must be delivered once the partner is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use postback_ingest::{Application, Config as IngestConfig};
use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::helpers::{DELIVER_BIN, admin_of, deliver_env};

/// Deliver's stdout, line by line, with when each arrived.
type Lines = Arc<Mutex<Vec<(Instant, Json)>>>;

/// The deliver binary on `redis` with retries that never run out, `extra`
/// on top, and its stdout collected.
fn spawn_deliver(redis: &RedisServer, extra: &[(&'static str, String)]) -> (tokio::process::Child, Lines, String) {
    let envs = deliver_env(redis, &[&[("POSTBACK_MAX_ATTEMPTS", "1000".to_owned())], extra].concat());
    let mut child = tokio::process::Command::new(DELIVER_BIN)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn deliver");
    let lines = collect_lines(&mut child);
    (child, lines, admin_of(&envs))
}

fn collect_lines(child: &mut tokio::process::Child) -> Lines {
    let lines: Lines = Arc::default();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            let json: Json = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "message": line }));
            sink.lock().expect("lines").push((Instant::now(), json));
        }
    });
    lines
}

async fn command<R: FromValue>(client: &Client, name: &'static str, args: &[&str]) -> R {
    let command = fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::Random, false);
    client.custom(command, args.to_vec()).await.unwrap_or_else(|e| panic!("{name} {args:?}: {e}"))
}

#[tokio::test]
async fn a_full_redis_is_refused_at_the_door_and_drains_once_the_partner_is_back() {
    postback_common::telemetry::init_for_tests();
    let redis = RedisServer::start();
    let admin = redis.client().await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory", "16mb"]).await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory-policy", "noeviction"]).await;

    // The partner: 500 while `failing`, then 200; counts its 200s per id.
    let failing = Arc::new(AtomicBool::new(true));
    let delivered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sink = {
        let (failing, delivered) = (failing.clone(), delivered.clone());
        Sink::start_with(move |request, _| {
            if failing.load(Ordering::Relaxed) {
                return Reply::status(500);
            }
            let id = request.postback_id().unwrap_or_default().to_owned();
            *delivered.lock().expect("delivered").entry(id).or_default() += 1;
            Reply::status(200)
        })
        .await
    };

    let stop = CancellationToken::new();
    let mut ingest = IngestConfig::defaults();
    ingest.redis.redis_url = redis.url();
    ingest.addr = "127.0.0.1:0".parse().expect("addr");
    let app = Application::build(ingest).await.expect("build ingest");
    let ingest_url = format!("http://{}/v1/postbacks", app.local_addr());
    tokio::spawn(app.run(stop.clone()));

    let (_deliver, lines, admin_addr) =
        spawn_deliver(&redis, &[("POSTBACK_RETRY_BASE_MS", "500".into()), ("POSTBACK_RETRY_MAX_MS", "2000".into())]);

    // Traffic: 10 postbacks of 4 KiB each per request, every 20 ms, until
    // ingest has refused for 5 s.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let url = format!("{}/m?i={{i}}", sink.base_url());
    let mut accepted: Vec<String> = Vec::new();
    let mut first_refusal = None;
    let started = Instant::now();
    while first_refusal.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(5)) {
        assert!(started.elapsed() < Duration::from_secs(90), "ingest never refused; {} accepted", accepted.len());
        let data: Vec<Json> = (0..10).map(|i| json!({"i": i, "pad": "x".repeat(4_000)})).collect();
        let body = json!({"endpoint": {"method": "GET", "url": url}, "data": data}).to_string();
        let response = http.post(&ingest_url).body(body).send().await.expect("send");
        match response.status().as_u16() {
            202 => {
                let answer: Json = response.json().await.expect("202 body");
                accepted
                    .extend(answer["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()));
            }
            503 => {
                assert_eq!(response.headers()["retry-after"], "5");
                let problem: Json = response.json().await.expect("problem");
                assert_eq!(problem["type"], "/problems/backlog-full", "{problem}");
                first_refusal.get_or_insert_with(Instant::now);
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_at = first_refusal.expect("refused");
    println!("{} postbacks accepted before ingest refused, {:?} in", accepted.len(), refused_at - started);

    // Nothing deliver wrote was refused: Redis never said OOM to anyone.
    let errors: String = command(&admin, "INFO", &["errorstats"]).await;
    assert!(!errors.contains("errorstat_OOM"), "Redis refused writes: {errors}");
    let memory = postback_common::redis_memory::read(&admin).await.expect("INFO memory");
    println!("Redis at {:.0}% of maxmemory while refusing", 100.0 * memory.ratio().expect("ratio"));

    // The partner is back: everything accepted arrives, once.
    failing.store(false, Ordering::Relaxed);
    let recovered = Instant::now();
    loop {
        let done = accepted.iter().filter(|id| delivered.lock().expect("delivered").contains_key(*id)).count();
        if done == accepted.len() {
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(60), "{done} of {} delivered after 60 s", accepted.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = recovered.elapsed();
    let duplicates = delivered.lock().expect("delivered").values().filter(|n| **n > 1).count();
    println!("all {} delivered {drain:?} after the partner recovered; {duplicates} delivered twice", accepted.len());
    assert_eq!(duplicates, 0);
    redis.wait_nothing_to_deliver(Duration::from_secs(10)).await;

    // The delivery log went first: shed before ingest refused.
    let lines = lines.lock().expect("lines").clone();
    let shed_at = lines
        .iter()
        .find(|(_, l)| l["message"].as_str().is_some_and(|m| m.starts_with("Redis memory is high")))
        .map(|(at, _)| *at)
        .expect("the delivery log was shed");
    assert!(shed_at <= refused_at, "ingest refused before the log was shed");
    // And deliver's own log stayed quiet: attempt lines aside, a few lines
    // a second at most, and not one about refused writes.
    let elapsed = started.elapsed().as_secs_f64();
    let other: Vec<&Json> = lines.iter().map(|(_, l)| l).filter(|l| l["message"] != "delivery attempt").collect();
    println!("{} log lines besides attempts in {elapsed:.0} s", other.len());
    assert!(other.len() as f64 / elapsed < 3.0, "{other:?}");
    assert!(!other.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("refusing writes"))), "{other:?}");

    let metrics = http.get(format!("http://{admin_addr}/metrics")).send().await.expect("scrape");
    let metrics = metrics.text().await.expect("text");
    let shed = postback_testkit::metric(&metrics, "postback_redis_degraded_writes_total", &[("write", "attempt_log")]);
    assert!(shed.is_some_and(|n| n > 0.0), "no delivery-log entry was shed:\n{metrics}");
    assert!(postback_testkit::metric(&metrics, "postback_redis_memory_ratio", &[]).is_some_and(|r| r > 0.0));
    stop.cancel();
}

/// Calls of `name` Redis has been sent so far, refused ones included (INFO
/// commandstats).
async fn calls(client: &Client, name: &str) -> u64 {
    let stats: String = command(client, "INFO", &["commandstats"]).await;
    let prefix = format!("cmdstat_{name}:");
    let Some(line) = stats.lines().find_map(|line| line.strip_prefix(&prefix)) else { return 0 };
    let field = |key: &str| -> u64 { line.split(',').find_map(|kv| kv.strip_prefix(key)?.parse().ok()).unwrap_or(0) };
    field("calls=") + field("rejected_calls=")
}

/// Redis refusing every write (here: `min-replicas-to-write` with no
/// replica, which answers NOREPLICAS) while the first 20 postbacks of a
/// request of 100 are in their first attempt and the other 80 wait for a
/// worker slot: once a call to record outcomes has failed, deliver starts
/// no further attempt until one lands (their outcomes could not be recorded
/// either, and would be sent again), waits quietly, and once Redis takes
/// writes again records what it had and goes on. Attempts already past the
/// check when the first call failed (at most one round of the slots) still
/// go; every postback attempted before the recovery reaches the partner
/// twice (the failed attempt, then the delivery), the others once.
#[tokio::test]
async fn deliver_attempts_nothing_it_cannot_record_and_finishes_its_steps_itself() {
    postback_common::telemetry::init_for_tests();
    let redis = RedisServer::start();
    let admin = redis.client().await;
    // Every attempt takes 1 s and fails until `failing` is cleared.
    let failing = Arc::new(AtomicBool::new(true));
    let sink = {
        let failing = failing.clone();
        Sink::start_with(move |_, _| {
            if failing.load(Ordering::Relaxed) {
                Reply::status(500).delay(Duration::from_secs(1))
            } else {
                Reply::status(200)
            }
        })
        .await
    };
    let data: Vec<Json> = (0..100).map(|i| json!({ "i": i })).collect();
    let body = json!({"endpoint": {"method": "GET", "url": format!("{}/r?i={{i}}", sink.base_url())}, "data": data});
    let ids = crate::helpers::enqueue(&redis, body).await;
    let (_deliver, lines, _) = spawn_deliver(
        &redis,
        &[
            // 20 worker slots: the other 80 postbacks wait for one (the
            // host has room for all).
            ("POSTBACK_DELIVER_CONCURRENCY", "20".into()),
            ("POSTBACK_PER_HOST_CONCURRENCY", "256".into()),
            ("POSTBACK_BREAKER_FAILURES", "0".into()),
            ("POSTBACK_RETRY_BASE_MS", "200".into()),
            ("POSTBACK_RETRY_MAX_MS", "1000".into()),
        ],
    );
    sink.wait_for(20, Duration::from_secs(10)).await;
    // The first 20 are in their first attempt: now no write can land.
    let _: String = command(&admin, "CONFIG", &["SET", "min-replicas-to-write", "1"]).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = calls(&admin, "evalsha").await;
    let sent_before = sink.received().len();
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scripts = calls(&admin, "evalsha").await - before;
    let errors: String = command(&admin, "INFO", &["errorstats"]).await;
    println!("{scripts} script calls in 5 s while Redis refused writes; {}", errors.trim());
    assert!(errors.contains("errorstat_NOREPLICAS"), "the writes were refused");
    assert_eq!(sink.received().len(), sent_before, "attempts were started whose outcomes could not be recorded");
    assert!(sent_before <= 40, "{sent_before} attempts: more than one round of the 20 slots went past the check");
    // One call per backoff delay (at most 2 s) for the finishing steps and
    // one for the scheduler, not one per postback.
    assert!(scripts > 0, "deliver kept trying to record");
    assert!(scripts < 20, "{scripts} script calls in 5 s: deliver spins on a Redis that refuses writes");
    let refusing: Vec<Json> = lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|(at, l)| *at >= watched && l["message"] != "delivery attempt")
        .map(|(_, l)| l.clone())
        .collect();
    assert!(refusing.len() <= 3, "{} lines in 5 s: {refusing:?}", refusing.len());

    // Writes again, partner back: the same worker records its reschedules
    // and delivers, long before any claim (60 s by default) could.
    let _: String = command(&admin, "CONFIG", &["SET", "min-replicas-to-write", "0"]).await;
    failing.store(false, Ordering::Relaxed);
    let recovered = Instant::now();
    redis.wait_nothing_to_deliver(Duration::from_secs(20)).await;
    println!("drained {:?} after Redis took writes again", recovered.elapsed());
    let received = sink.received();
    let sent: Vec<usize> =
        ids.iter().map(|id| received.iter().filter(|r| r.postback_id() == Some(id.as_str())).count()).collect();
    let twice = sent.iter().filter(|n| **n == 2).count();
    assert_eq!(twice, sent_before, "those attempted before the recovery were attempted twice: {sent:?}");
    assert_eq!(sent.iter().filter(|n| **n == 1).count(), 100 - sent_before, "the others once: {sent:?}");
    let claimed =
        lines.lock().expect("lines").iter().any(|(_, l)| l["message"] == "took over entries left by another worker");
    assert!(!claimed, "entries were claimed");
    let back = lines.lock().expect("lines").iter().any(|(_, l)| l["message"] == "Redis accepts writes again");
    assert!(back, "the recovery is logged");
    redis.assert_no_records_left().await;
}
