//! The queue in four partitions, on a three-primary Redis Cluster and on a
//! plain Redis: the real ingest, two deliver and postbackctl binaries.
//! Requests spread over every partition, an Idempotency-Key replays from
//! its own partition, dead letters of all partitions are listed and
//! redriven together, and postbackctl adds the partitions up or shows one.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use postback_testkit::{Cluster, RedisServer, Reply, Sink};
use serde_json::{Value as Json, json};

use crate::helpers::{DELIVER_BIN, deliver_env, queue_env, sibling_bin};

const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_partitions_on_a_three_primary_cluster() {
    let cluster = Cluster::start(3);
    let client = cluster.client().await;
    partitioned(&cluster.nodes()[0], cluster.url(), &client).await;
    let holding: Vec<u64> = cluster.keys_per_node();
    println!("keys per primary after the run: {holding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_partitions_on_a_plain_redis() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    partitioned(&redis, redis.url(), &client).await;
    let plain: u64 = client.exists(vec!["postbacks", "postbacks:dead"]).await.expect("EXISTS");
    assert_eq!(plain, 0, "with partitions nothing is written under the unpartitioned names");
}

/// Starts the ingest binary with `ingest` settings and two deliver
/// binaries (consumers `w0` and `w1`, on [`deliver_env`] for `redis`) with
/// `deliver` settings; returns ingest's address and the processes.
fn start_services(
    redis: &RedisServer,
    ingest: &[(&'static str, String)],
    deliver: &[(&'static str, String)],
) -> (String, Vec<tokio::process::Child>) {
    let spawn = |program: std::path::PathBuf, envs: Vec<(&'static str, String)>| {
        tokio::process::Command::new(program)
            .envs(envs)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a service")
    };
    let addr = format!("127.0.0.1:{}", postback_testkit::free_port());
    let ingest = [ingest, &[("POSTBACK_INGEST_ADDR", addr.clone())]].concat();
    let mut children = vec![spawn(sibling_bin("postback-ingest"), ingest)];
    for i in 0..2 {
        let extra = [deliver, &[("POSTBACK_CONSUMER", format!("w{i}"))]].concat();
        children.push(spawn(DELIVER_BIN.into(), deliver_env(redis, &extra)));
    }
    (addr, children)
}

/// postbackctl's JSON output for `args`, with the exit code.
fn ctl(url: &str, args: &[&str]) -> (Option<i32>, Json) {
    let out = std::process::Command::new(sibling_bin("postbackctl"))
        .env("POSTBACK_REDIS_URL", url)
        .env("POSTBACK_PARTITIONS", PARTITIONS.to_string())
        .arg("--json")
        .args(args)
        .output()
        .expect("run postbackctl");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    (out.status.code(), json)
}

/// The streams of the partitions the partition record lists, in index
/// order.
pub async fn streams(client: &Client) -> Vec<String> {
    let layout = postback_common::layout::store::read(client, "postbacks").await.expect("GET").expect("a record");
    let partitions = postback_common::keys::Partitions::from_layout(&layout, "postbacks", "deliver", None);
    partitions.all().iter().map(|k| k.stream.clone()).collect()
}

async fn partitioned(redis: &RedisServer, url: String, client: &Client) {
    let failing = Arc::new(AtomicBool::new(true));
    let sink = {
        let failing = failing.clone();
        Sink::start_with(move |r, _| {
            let fail = r.target.starts_with("/fail") && failing.load(Ordering::Relaxed);
            Reply::status(if fail { 500 } else { 200 })
        })
        .await
    };
    let shared = queue_env(&url, PARTITIONS);
    let deliver = [shared.to_vec(), vec![("POSTBACK_MAX_ATTEMPTS", "1".to_owned())]].concat();
    let (addr, children) = start_services(redis, &shared, &deliver);

    let http = reqwest::Client::new();
    let ingest = format!("http://{addr}/v1/postbacks");
    let post = |body: Json, key: Option<String>| {
        let mut request = http.post(&ingest).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            for _ in 0..100 {
                match request.try_clone().expect("clonable").send().await {
                    Ok(response) if response.status() == 202 => {
                        let replayed = response.headers().contains_key("idempotent-replayed");
                        let answer: Json = response.json().await.expect("202 body");
                        let ids: Vec<String> =
                            answer["ids"].as_array().expect("ids").iter().map(|v| v.to_string()).collect();
                        return (ids, replayed);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            panic!("ingest never accepted {body}");
        }
    };
    let target = |path: &str| json!({"method": "GET", "url": format!("{}/{path}?i={{i}}", sink.base_url())});
    let mut ok_ids = HashSet::new();
    for n in 0..40 {
        let data: Vec<_> = (0..3).map(|i| json!({"i": n * 10 + i})).collect();
        ok_ids.extend(post(json!({"endpoint": target("ok"), "data": data}), None).await.0);
    }
    let keyed = |n: u32| json!({"endpoint": target("ok"), "data": [{"i": 1000 + n}]});
    let mut first_keyed = Vec::new();
    for n in 0..8 {
        let (ids, replayed) = post(keyed(n), Some(format!("order-{n}"))).await;
        assert!(!replayed);
        first_keyed.push(ids.clone());
        ok_ids.extend(ids);
    }
    for n in 0..8 {
        let (ids, replayed) = post(keyed(n), Some(format!("order-{n}"))).await;
        assert!(replayed, "the same key and body replay");
        assert_eq!(ids, first_keyed[n as usize], "from the partition that holds the key");
    }
    let mut failed_ids = HashSet::new();
    for n in 0..6 {
        failed_ids.extend(post(json!({"endpoint": target("fail"), "data": [{"i": 2000 + n}]}), None).await.0);
    }

    // Every partition's stream took requests.
    for stream in streams(client).await {
        let info: std::collections::HashMap<String, Value> =
            client.xinfo_stream(&stream, false, None).await.expect("XINFO STREAM");
        let added = info.get("entries-added").and_then(Value::as_u64).unwrap_or(0);
        assert!(added > 0, "partition {stream} took no entries");
    }

    let delivered = |sink: &Sink| -> HashSet<String> {
        sink.received().iter().filter_map(|r| r.postback_id().map(|id| format!("\"{id}\""))).collect()
    };
    let settled =
        |status: &Json, dead: u64| status["postbacks"] == 0 && status["pending"] == 0 && status["dead_letters"] == dead;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = ctl(&url, &["status"]);
        if ok_ids.is_subset(&delivered(&sink)) && settled(&status, 6) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered in time: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, letters) = ctl(&url, &["dead", "list", "--count", "100"]);
    let letters: HashSet<String> =
        letters.as_array().expect("dead letters").iter().map(|l| l["postback_id"].to_string()).collect();
    assert_eq!(letters, failed_ids, "dead letters of every partition are listed");
    let per_partition: u64 = (0..PARTITIONS)
        .map(|p| ctl(&url, &["--partition", &p.to_string(), "status"]).1["dead_letters"].as_u64().expect("count"))
        .sum();
    assert_eq!(per_partition, 6, "the partitions add up to the whole");
    let (code, _) = ctl(&url, &["--partition", &PARTITIONS.to_string(), "status"]);
    assert_eq!(code, Some(2), "a partition that does not exist is bad usage");

    failing.store(false, Ordering::Relaxed);
    let (code, redriven) = ctl(&url, &["dead", "redrive", "--all"]);
    assert_eq!(code, Some(0));
    assert_eq!(redriven.as_array().map(Vec::len), Some(6));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !failed_ids.is_subset(&delivered(&sink)) || !settled(&ctl(&url, &["status"]).1, 0) {
        assert!(tokio::time::Instant::now() < deadline, "redriven letters not delivered in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

#[tokio::test]
async fn memory_on_a_cluster_is_the_fullest_primarys() {
    let cluster = Cluster::start(3);
    let client = cluster.client().await;
    let used: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &node.port().to_string(), "INFO", "memory"])
                .output()
                .expect("redis-cli");
            postback_common::redis_memory::Memory::parse(&String::from_utf8_lossy(&out.stdout)).expect("INFO").used
        })
        .collect();
    // The second primary at about half its limit, the others far from it.
    for (i, node) in cluster.nodes().iter().enumerate() {
        let max = if i == 1 { used[i] * 2 } else { used[i] * 100 };
        let set = std::process::Command::new("redis-cli")
            .args(["-p", &node.port().to_string(), "CONFIG", "SET", "maxmemory", &max.to_string()])
            .status()
            .expect("redis-cli");
        assert!(set.success());
    }
    // Several reads: one node picked at random would be caught.
    for _ in 0..6 {
        let memory = postback_common::redis_memory::read(&client).await.expect("read");
        let ratio = memory.ratio().expect("a limit");
        assert!((0.4..0.7).contains(&ratio), "the fullest primary is at about half, not {ratio}");
    }
}

/// Cluster failover: three primaries with a replica each, four partitions,
/// ingest (with `POSTBACK_INGEST_WAIT_REPLICAS=1`) and two deliver
/// processes, one-postback requests every 10 ms; 2 s in, the primary of
/// partition 0 is killed. Its replica takes over, both services follow
/// without a restart, and every postback that got a 202 arrives; one is
/// delivered twice only if its first delivery was answered within a
/// second before the kill or after it (its record may not have reached the
/// replica), and at the end every partition is empty with its counts and
/// records exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_cluster_primary_loses_no_acknowledged_postback() {
    let mut cluster = Cluster::start_with_replicas(3, 1);
    let sink = Sink::start().await;
    let url = cluster.url();
    let shared = queue_env(&url, PARTITIONS);
    let ingest = [shared.to_vec(), vec![("POSTBACK_INGEST_WAIT_REPLICAS", "1".to_owned())]].concat();
    let (addr, mut children) = start_services(&cluster.nodes()[0], &ingest, &shared);

    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let ingest = format!("http://{addr}/v1/postbacks");
    let target = format!("{}/f?i={{i}}", sink.base_url());
    let first = loop {
        // Ingest seeds the partition record at start.
        if let Ok(Some(_)) = postback_common::layout::store::read(&cluster.client().await, "postbacks").await {
            break streams(&cluster.client().await).await.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim_port = cluster.primary_of(&first, 0).expect("partition 0 has a primary");
    let started = std::time::Instant::now();
    let (mut accepted, mut accepted_after, mut refused) = (HashSet::new(), 0usize, 0usize);
    let (mut killed_at, mut promoted) = (None, false);
    for i in 0.. {
        assert!(started.elapsed() < Duration::from_secs(90), "{accepted_after} accepted after the failover in 90 s");
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            let victim = cluster.nodes_mut().iter_mut().find(|n| n.port() == victim_port).expect("victim");
            victim.kill();
            killed_at = Some(std::time::Instant::now());
        }
        if let Some(at) = killed_at
            && !promoted
            && cluster.primary_of(&first, victim_port).is_some_and(|p| p != victim_port)
        {
            promoted = true;
            println!("partition 0 promoted {:?} after the kill", at.elapsed());
            // Back empty, it rejoins as the new primary's replica, so WAIT
            // is answered for partition 0 again.
            cluster.nodes_mut().iter_mut().find(|n| n.port() == victim_port).expect("victim").restart();
        }
        let body = json!({"endpoint": {"method": "GET", "url": target}, "data": [{"i": i}]});
        match http.post(&ingest).json(&body).send().await {
            Ok(response) if response.status() == 202 => {
                let answer: Json = response.json().await.expect("202 body");
                for id in answer["ids"].as_array().expect("ids") {
                    accepted.insert(id.as_str().expect("id").to_owned());
                    accepted_after += usize::from(promoted);
                }
            }
            _ => refused += 1,
        }
        if accepted_after >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for child in &mut children {
        assert!(child.try_wait().expect("child").is_none(), "every service carried on without a restart");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let got: HashSet<String> = sink.received().iter().filter_map(|r| r.postback_id().map(str::to_owned)).collect();
        let lost: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if lost.is_empty() || std::time::Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{} accepted ({accepted_after} after the promotion), {refused} refused meanwhile", accepted.len());
    if !lost.is_empty() {
        let client = cluster.client().await;
        for stream in streams(&client).await {
            let pending: Value = client.xpending(&stream, "deliver", ("-", "+", 100)).await.unwrap_or(Value::Null);
            let len: u64 = client.xlen(&stream).await.unwrap_or(0);
            let retry: u64 = client.zcard(format!("{stream}:retry")).await.unwrap_or(0);
            println!("DIAG {stream}: len {len} retry {retry} pending {pending:?}");
        }
    }
    assert!(lost.is_empty(), "{} of {} acknowledged postbacks lost: {lost:?}", lost.len(), accepted.len());
    let killed_at = killed_at.expect("killed");
    let mut first: HashMap<String, (std::time::Instant, usize)> = HashMap::new();
    for r in sink.received() {
        first.entry(r.postback_id().unwrap_or_default().to_owned()).or_insert((r.at, 0)).1 += 1;
    }
    let repeated: Vec<_> = first.iter().filter(|(_, (_, n))| *n > 1).collect();
    let early: Vec<_> = repeated.iter().filter(|(_, (at, _))| *at + Duration::from_secs(1) < killed_at).collect();
    println!("{} postbacks delivered more than once", repeated.len());
    assert!(early.is_empty(), "repeated although delivered well before the kill: {early:?}");
    postback_testkit::queue_checks::assert_all_partitions_empty(
        &cluster.client().await,
        "postbacks",
        Duration::from_secs(30),
    )
    .await;
}
