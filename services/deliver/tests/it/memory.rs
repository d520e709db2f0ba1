//! Redis's memory, the whole story: a small maxmemory with noeviction, a
//! partner failing while many-postback requests of short values arrive (or
//! arrive all at once), then recovering. Ingest must refuse before Redis is
//! full, counting what the accepted backlog costs once every postback waits
//! for a retry; Redis must answer OOM to nobody; deliver's log must stay
//! quiet; every accepted postback must be delivered once the partner is
//! back. And a Redis that refuses writes for another reason: deliver
//! attempts nothing whose outcome it cannot record.

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

/// A request of 100 postbacks of five 8-character values with a
/// 200-character template: the shape whose retries cost most beside their
/// entries.
fn short_values(url: &str, n: usize) -> String {
    let data: Vec<Json> = (0..n)
        .map(|i| json!({"a": format!("{i:08}"), "b": "bbbbbbbb", "c": "cccccccc", "d": "dddddddd", "e": "eeeeeeee"}))
        .collect();
    json!({"endpoint": {"method": "GET", "url": url}, "data": data}).to_string()
}

/// The template of [`short_values`], 200 characters, at `base`.
fn short_template(base: &str) -> String {
    let head = format!("{base}/m?a={{a}}&b={{b}}&c={{c}}&d={{d}}&e={{e}}&pad=");
    format!("{head}{}", "x".repeat(200usize.saturating_sub(head.len())))
}

/// Redis's `used_memory`, and whether it answered OOM to anyone so far.
async fn memory_and_ooms(admin: &Client) -> (u64, String) {
    let memory = postback_common::redis_memory::read(admin).await.expect("INFO memory");
    let errors: String = command(admin, "INFO", &["errorstats"]).await;
    (memory.used, errors)
}

/// A partner down, and no worker running while many-postback requests of
/// short values arrive (the shape that expands most when retried), until
/// ingest refuses. Then a worker starts and every accepted postback fails
/// into the retry schedule: ingest counted each postback at its retry
/// footprint, so that fits, without Redis ever answering OOM to anyone,
/// nor passing its maxmemory, and without any limit raised by hand. Once
/// the partner recovers, everything accepted is delivered within 60 s. The
/// limit is 90 % here rather than the default 80 %, so that only the retry
/// footprint, not the headroom, keeps Redis below its maxmemory.
#[tokio::test]
async fn a_partner_down_fills_the_schedule_not_redis_and_everything_arrives_once_it_is_back() {
    postback_common::telemetry::init_for_tests();
    let redis = RedisServer::start();
    let admin = redis.client().await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory", "4mb"]).await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory-policy", "noeviction"]).await;
    let maxmemory = 4 * 1024 * 1024;

    // The partner: 503 while `failing`, then 200; counts its 200s per id.
    let failing = Arc::new(AtomicBool::new(true));
    let delivered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sink = {
        let (failing, delivered) = (failing.clone(), delivered.clone());
        Sink::start_with(move |request, _| {
            if failing.load(Ordering::Relaxed) {
                return Reply::status(503);
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
    ingest.redis_memory_limit_percent = 90;
    let app = Application::build(ingest).await.expect("build ingest");
    let ingest_url = format!("http://{}/v1/postbacks", app.local_addr());
    tokio::spawn(app.run(stop.clone()));

    // Requests of 100 postbacks, 8 at a time, until ingest has refused for
    // a second (two samples of its gate).
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let body = short_values(&short_template(&sink.base_url()), 100);
    let mut accepted: Vec<String> = Vec::new();
    let mut first_refusal = None;
    let started = Instant::now();
    while first_refusal.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(1)) {
        assert!(started.elapsed() < Duration::from_secs(90), "ingest never refused; {} accepted", accepted.len());
        let sends = (0..8).map(|_| http.post(&ingest_url).body(body.clone()).send());
        for response in futures::future::join_all(sends).await {
            let response = response.expect("send");
            match response.status().as_u16() {
                202 => {
                    let answer: Json = response.json().await.expect("202 body");
                    let ids = answer["ids"].as_array().expect("ids").iter();
                    accepted.extend(ids.map(|v| v.as_str().expect("id").to_owned()));
                }
                503 => {
                    let problem: Json = response.json().await.expect("problem");
                    assert_eq!(problem["type"], "/problems/backlog-full", "{problem}");
                    first_refusal.get_or_insert_with(Instant::now);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }
    let (queued, _) = memory_and_ooms(&admin).await;
    println!("{} postbacks accepted before ingest refused; Redis at {queued} bytes", accepted.len());

    // A worker, and every accepted postback fails into the schedule: the
    // expansion ingest allowed for. Default settings but the retry base of
    // 0.5 s and a short breaker pause, so that the test is quick.
    let (_deliver, lines, _) = spawn_deliver(
        &redis,
        &[
            ("POSTBACK_REDIS_MEMORY_LIMIT_PERCENT", "90".into()),
            ("POSTBACK_RETRY_BASE_MS", "500".into()),
            ("POSTBACK_BREAKER_FAILURES", "20".into()),
            ("POSTBACK_BREAKER_PAUSE_MS", "1000".into()),
        ],
    );
    let mut peak = queued;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = postback_common::queue_status::status(&admin, &postback_common::keys::Keys::default())
            .await
            .expect("status");
        peak = peak.max(memory_and_ooms(&admin).await.0);
        if status.length == 0 && status.scheduled_retries == accepted.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all in the schedule after 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (used, errors) = memory_and_ooms(&admin).await;
    println!("all {} in the retry schedule; Redis at {used} bytes, peak {peak} of {maxmemory}", accepted.len());
    assert!(!errors.contains("errorstat_OOM"), "Redis refused writes: {errors}");
    assert!(peak < maxmemory, "Redis went past its maxmemory: {peak}");

    // The partner is back: everything accepted arrives, once, in time.
    failing.store(false, Ordering::Relaxed);
    let recovered = Instant::now();
    loop {
        let done = accepted.iter().filter(|id| delivered.lock().expect("delivered").contains_key(*id)).count();
        if done == accepted.len() {
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(60), "{done} of {} delivered after 60 s", accepted.len());
        peak = peak.max(memory_and_ooms(&admin).await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = recovered.elapsed();
    let duplicates = delivered.lock().expect("delivered").values().filter(|n| **n > 1).count();
    println!("all {} delivered {drain:?} after the partner recovered; {duplicates} delivered twice", accepted.len());
    assert_eq!(duplicates, 0);
    redis.wait_nothing_to_deliver(Duration::from_secs(10)).await;
    let (_, errors) = memory_and_ooms(&admin).await;
    assert!(!errors.contains("errorstat_OOM"), "Redis refused writes: {errors}");
    assert!(peak < maxmemory, "Redis went past its maxmemory: {peak}");

    // And deliver's own log stayed quiet: attempt lines aside, a few lines
    // a second at most, and not one about refused writes.
    let lines = lines.lock().expect("lines").clone();
    let elapsed = started.elapsed().as_secs_f64();
    let other: Vec<&Json> = lines.iter().map(|(_, l)| l).filter(|l| l["message"] != "delivery attempt").collect();
    println!("{} log lines besides attempts in {elapsed:.0} s", other.len());
    assert!(other.len() as f64 / elapsed < 3.0, "{other:?}");
    assert!(
        !other.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("did not take writes"))),
        "{other:?}"
    );
    stop.cancel();
}

/// A burst: many many-postback requests sent at once, faster than the
/// gate samples Redis (every half second). Ingest counts what it admits
/// between samples at its retry footprint, so it refuses before the burst
/// can carry Redis past its limit, and deliver records every outcome: no
/// OOM, nothing sent again unrecorded.
#[tokio::test]
async fn a_burst_cannot_overrun_the_gate() {
    postback_common::telemetry::init_for_tests();
    let redis = RedisServer::start();
    let admin = redis.client().await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory", "4mb"]).await;
    let _: String = command(&admin, "CONFIG", &["SET", "maxmemory-policy", "noeviction"]).await;
    let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sink = {
        let attempts = attempts.clone();
        Sink::start_with(move |request, _| {
            *attempts
                .lock()
                .expect("attempts")
                .entry(request.postback_id().unwrap_or_default().to_owned())
                .or_default() += 1;
            Reply::status(503)
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
    // A first request, so that the gate has sampled Redis with something in it.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let body = short_values(&short_template(&sink.base_url()), 200);
    assert_eq!(http.post(&ingest_url).body(body.clone()).send().await.expect("send").status(), 202);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 200 requests of 200 postbacks at once: 40,000 postbacks, about twice
    // what 4 MB can hold once they wait for retries.
    let sends = (0..200).map(|_| http.post(&ingest_url).body(body.clone()).send());
    let started = Instant::now();
    let answers = futures::future::join_all(sends).await;
    println!("200 requests answered in {:?}", started.elapsed());
    let mut accepted = 200usize;
    for answer in answers {
        match answer.expect("send").status().as_u16() {
            202 => accepted += 200,
            503 => {}
            other => panic!("unexpected {other}"),
        }
    }
    println!("{accepted} postbacks accepted");
    assert!(accepted < 40_200, "the gate let the whole burst in");
    let (spawned, lines, _) =
        spawn_deliver(&redis, &[("POSTBACK_RETRY_BASE_MS", "60000".into()), ("POSTBACK_BREAKER_FAILURES", "0".into())]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = postback_common::queue_status::status(&admin, &postback_common::keys::Keys::default())
            .await
            .expect("status");
        if status.length == 0 && status.scheduled_retries == accepted as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all in the schedule after 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (used, errors) = memory_and_ooms(&admin).await;
    println!("all {accepted} in the retry schedule; Redis at {used} bytes of {}", 4 * 1024 * 1024);
    assert!(!errors.contains("errorstat_OOM"), "Redis refused writes: {errors}");
    assert!(used < 4 * 1024 * 1024);
    let repeated = attempts.lock().expect("attempts").values().filter(|n| **n > 1).count();
    // Those the host had no room for wait without an attempt; none was
    // attempted twice (each recorded, retried a minute later at the earliest).
    assert_eq!(repeated, 0, "a postback was attempted again before its retry was due");
    drop(spawned);
    drop(lines);
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

/// A Redis that stops answering (SIGSTOP) while deliver holds an answer:
/// the finishing step times out, and the log line says so, naming the
/// timeout rather than guessing at memory; once Redis answers, the step
/// lands and the postback is delivered once.
#[tokio::test]
async fn a_write_redis_did_not_answer_is_logged_as_a_timeout() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(500))).await;
    let envs = deliver_env(&redis, &[]);
    let mut deliver = crate::helpers::Running::spawn(DELIVER_BIN, &envs);
    let url = format!("{}/t?i={{i}}", sink.base_url());
    let ids =
        crate::helpers::enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{"i": 1}]})).await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    redis.pause();
    let line = deliver
        .line(
            "Redis did not take writes (timeout); waiting with growing delays, one line every 10 s while it lasts \
             (runbooks/redis-restart.md; OOM: runbooks/redis-memory-high.md)",
        )
        .await;
    redis.resume();
    assert_eq!(line["cause"], "timeout", "{line}");
    deliver.line("Redis accepts writes again").await;
    redis.wait_nothing_to_deliver(Duration::from_secs(10)).await;
    assert_eq!(sink.received().len(), ids.len(), "delivered once");
}
