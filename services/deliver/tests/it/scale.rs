//! Partitions that scale: placed evenly over a cluster's primaries (each
//! primary doing its fair share of the work), and idle partitions that
//! hold no delivery slot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postback_testkit::{Cluster, RedisServer, Reply, Sink};
use serde_json::{Value as Json, json};

use crate::helpers::{DELIVER_BIN, deliver_env, enqueue_each, queue_env, sibling_bin, spawn_quiet};

/// Commands a primary ran for the queue, from INFO commandstats (the
/// cluster's and the clients' own bookkeeping left out).
fn queue_commands(port: u16) -> u64 {
    const NOT_QUEUE: [&str; 10] =
        ["info", "cluster", "ping", "command", "client", "hello", "readonly", "script", "role", "config"];
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()?;
            (!NOT_QUEUE.iter().any(|n| name.starts_with(n))).then_some(calls)
        })
        .sum()
}

/// `postbackctl --json partitions` against `url`.
fn partitions_json(url: &str) -> Json {
    let out = std::process::Command::new(sibling_bin("postbackctl"))
        .env("POSTBACK_REDIS_URL", url)
        .args(["--json", "partitions"])
        .output()
        .expect("postbackctl");
    assert!(out.status.success(), "postbackctl partitions: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `partitions` partitions on a three-primary cluster, the real ingest and
/// deliver binaries, 600 requests: postbackctl shows the same number of
/// partitions on every primary, and every primary runs its fair share of
/// the commands, within a quarter.
async fn placed_evenly(partitions: u32) {
    let cluster = Cluster::start(3);
    let sink = Sink::start().await;
    let url = cluster.url();
    let shared = queue_env(&url, partitions);
    let addr = format!("127.0.0.1:{}", postback_testkit::free_port());
    let ingest_env = [shared.to_vec(), vec![("POSTBACK_INGEST_ADDR", addr.clone())]].concat();
    let _ingest = spawn_quiet(&sibling_bin("postback-ingest"), &ingest_env);
    let _deliver = spawn_quiet(DELIVER_BIN.as_ref(), &deliver_env(&cluster.nodes()[0], &shared));
    let http = reqwest::Client::new();
    let post = |i: usize| {
        let body =
            json!({"endpoint": {"method": "GET", "url": format!("{}/p?i={{i}}", sink.base_url())}, "data": [{"i": i}]});
        let request = http.post(format!("http://{addr}/v1/postbacks")).json(&body);
        async move { request.send().await.map(|r| r.status() == 202).unwrap_or(false) }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !post(0).await {
        assert!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.wait_for(1, Duration::from_secs(20)).await;

    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let before: Vec<u64> = ports.iter().map(|p| queue_commands(*p)).collect();
    const REQUESTS: usize = 600;
    for chunk in (1..=REQUESTS).collect::<Vec<_>>().chunks(8) {
        let sent = futures::future::join_all(chunk.iter().map(|i| post(*i))).await;
        assert!(sent.iter().all(|ok| *ok), "every request accepted");
    }
    sink.wait_for(REQUESTS + 1, Duration::from_secs(60)).await;
    let spent: Vec<u64> = ports.iter().zip(&before).map(|(p, b)| queue_commands(*p) - b).collect();

    let shown = partitions_json(&url);
    let mut per_primary: HashMap<String, u32> = HashMap::new();
    for row in shown["partitions"].as_array().expect("partitions") {
        *per_primary.entry(row["primary"].as_str().expect("primary").to_owned()).or_default() += 1;
    }
    let total: u64 = spent.iter().sum();
    let fair = total as f64 / 3.0;
    let shares: Vec<f64> = spent.iter().map(|n| *n as f64 / fair).collect();
    println!("{partitions} partitions: per primary {per_primary:?}; commands {spent:?} (shares of fair {shares:.2?})");
    assert_eq!(per_primary.len(), 3, "every primary holds partitions: {per_primary:?}");
    assert!(per_primary.values().all(|n| *n == partitions / 3), "{per_primary:?}");
    assert!(shares.iter().all(|s| (0.75..=1.25).contains(s)), "commands per primary {spent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_partitions_on_three_primaries_share_the_work() {
    placed_evenly(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_partitions_on_three_primaries_share_the_work() {
    placed_evenly(6).await;
}

/// How long one deliver process with 8 slots (`POSTBACK_READ_BLOCK_MS`
/// at its default) takes to deliver a burst of 200 single-postback
/// requests queued into one of `partitions` partitions, to a partner
/// answering in 10 ms.
async fn burst_time(partitions: u32) -> Duration {
    const BURST: usize = 200;
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_millis(10))).await;
    let settings = [
        ("POSTBACK_PARTITIONS", partitions.to_string()),
        ("POSTBACK_DELIVER_CONCURRENCY", "8".into()),
        ("POSTBACK_READ_BLOCK_MS", "2000".into()),
        ("RUST_LOG", "warn".into()),
    ];
    let envs = deliver_env(&redis, &settings);
    let admin = crate::helpers::admin_of(&envs);
    let _deliver = spawn_quiet(DELIVER_BIN.as_ref(), &envs);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.get(format!("http://{admin}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "deliver never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let every partition's loop settle into its idle read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies = (0..BURST)
        .map(|i| json!({"endpoint": {"method": "GET", "url": format!("{}/b?i={i}", sink.base_url())}, "data": [{}]}));
    let started = Instant::now();
    enqueue_each(&redis, bodies.collect(), partitions - 1, partitions).await;
    sink.wait_for(BURST, Duration::from_secs(60)).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_partitions_hold_no_slot_a_busy_one_needs() {
    let one = burst_time(1).await;
    let many = burst_time(64).await;
    println!("a burst of 200 into one partition: {one:?} with 1 partition, {many:?} with 64");
    assert!(many < one * 3 + Duration::from_secs(1), "{many:?} with 64 partitions against {one:?} with one");
}
