//! Primaries killed under load: a three-primary Redis Cluster with a
//! replica each, the queue in six partitions, one ingest (WAIT 1) and three
//! deliver binaries with stable names. Requests of one to five postbacks
//! (one in ten with an Idempotency-Key) arrive all along; a third of the postbacks fail their first two attempts, so
//! entries finish with mixed outcomes (delivered, scheduled again) and
//! retries come back, while the primary of a random partition is killed
//! with SIGKILL, its replica is promoted and the old primary comes back
//! (empty) as the new one's replica, several times over.
//!
//! Every postback that got a 202 must reach the partner, and each must
//! follow one path: its attempts, in the order the workers' logs give them,
//! never go back to a lower number and nothing but a repeat of the same
//! number follows a success, between two kills (from [`NOTICE`] after
//! each: a failover takes Redis back to an earlier state, so a path may
//! start again from there, as a repeat). A postback both scheduled again and still
//! unfinished in its entry would be attempted from both, and fail that.
//! At the end every partition is empty with its counts and records exact,
//! and `postbackctl status` and every worker's `postback_group_lag` say 0.
//!
//! `FAILOVER_SEED=N` replays one schedule of kills.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use postback_testkit::{Cluster, Reply, Sink};
use serde_json::{Value as Json, json};

use crate::helpers::{DELIVER_BIN, deliver_env, queue_env, sibling_bin, spawn_quiet};
use crate::partitions::streams;

/// Partitions of the queue, over the three primaries.
const PARTITIONS: u32 = 6;

/// Primaries killed, one after the other.
const KILLS: usize = 3;

/// How soon after a kill every worker has seen its connection to the
/// primary close (loopback, SIGKILL: the socket closes at once, but a busy
/// machine took up to 160 ms for fred to act on it). An attempt started
/// before that came from what the dead primary said.
const NOTICE: Duration = Duration::from_millis(500);

/// One request sent to ingest.
struct Sent {
    at: Instant,
    keyed: bool,
    ok: bool,
}

/// One attempt, as a worker's log line gives it.
struct Made {
    at: SystemTime,
    number: u64,
    delivered: bool,
    /// Which worker (`w0`, `w1`, `w2`) made it.
    worker: &'static str,
    /// The stream entry it came from.
    entry: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_primaries_leave_every_postback_on_one_path() {
    let seed = std::env::var("FAILOVER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("FAILOVER_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let logs = tempfile::tempdir().expect("log dir");
    let mut cluster = Cluster::start_with_replicas(3, 1);
    let url = cluster.url();

    // A third of the postbacks fail their first attempt; answers take 10
    // to 130 ms, so entries are part finished when a primary goes.
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = tries.clone();
    let sink = Sink::start_with(move |r, _| {
        let i: u64 = r.target.rsplit('=').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let id = r.postback_id().unwrap_or_default().to_owned();
        let n = {
            let mut seen = seen.lock().expect("lock");
            let n = seen.entry(id).or_default();
            *n += 1;
            *n
        };
        let status = if i.is_multiple_of(3) && n <= 2 { 500 } else { 200 };
        Reply::status(status).delay(Duration::from_millis(5 + 15 * (i % 5)))
    })
    .await;

    let shared = queue_env(&url, PARTITIONS);
    let ingest_addr = format!("127.0.0.1:{}", postback_testkit::free_port());
    let ingest_env = [
        shared.clone(),
        vec![("POSTBACK_INGEST_WAIT_REPLICAS", "1".to_owned()), ("POSTBACK_INGEST_ADDR", ingest_addr.clone())],
    ]
    .concat();
    let mut children = vec![spawn_quiet(&sibling_bin("postback-ingest"), &ingest_env)];
    let mut worker_logs = Vec::new();
    let mut admins = Vec::new();
    for w in 0..3 {
        let extra = [
            shared.clone(),
            vec![
                ("POSTBACK_CONSUMER", format!("w{w}")),
                ("POSTBACK_RETRY_BASE_MS", "300".into()),
                ("POSTBACK_HTTP_TIMEOUT_MS", "2000".into()),
                // Busy workers: entries wait their turn in the stream, so
                // some added before replication fell behind are read after.
                ("POSTBACK_DELIVER_CONCURRENCY", "2".into()),
                ("RUST_LOG", "info".into()),
            ],
        ]
        .concat();
        let envs = deliver_env(&cluster.nodes()[0], &extra);
        admins.push(crate::helpers::admin_of(&envs));
        let path = logs.path().join(format!("w{w}.log"));
        let child = tokio::process::Command::new(DELIVER_BIN)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::fs::File::create(&path).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn deliver");
        children.push(child);
        worker_logs.push(path);
    }
    let partitions = loop {
        if let Ok(Some(_)) = postback_common::layout::store::read(&cluster.client().await, "postbacks").await {
            break streams(&cluster.client().await).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Three senders, requests of 1 to 5 postbacks every 100 ms each, one
    // in ten with an Idempotency-Key; each request's time and outcome kept.
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let target = format!("{}/k?i={{i}}", sink.base_url());
    let ingest = format!("http://{ingest_addr}/v1/postbacks");
    let mut senders = Vec::new();
    for sender in 0..3u64 {
        let (accepted, sent, stop, target, ingest) =
            (accepted.clone(), sent.clone(), stop.clone(), target.clone(), ingest.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let data: Vec<_> = (0..1 + n % 5).map(|i| json!({"i": sender * 1_000_000 + n * 10 + i})).collect();
                let body = json!({"endpoint": {"method": "GET", "url": target}, "data": data});
                let keyed = n.is_multiple_of(10);
                let mut request = http.post(&ingest).json(&body);
                if keyed {
                    request = request.header("Idempotency-Key", format!("s{sender}-{n}"));
                }
                let at = Instant::now();
                let ok = match request.send().await {
                    Ok(response) if response.status() == 202 => {
                        let answer: Json = response.json().await.expect("202 body");
                        let ids = answer["ids"].as_array().expect("ids").iter();
                        accepted.lock().expect("lock").extend(ids.map(|v| v.as_str().expect("id").to_owned()));
                        true
                    }
                    _ => false,
                };
                sent.lock().expect("lock").push(Sent { at, keyed, ok });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // The kills: each of a random partition's primary, once the cluster
    // is whole again.
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_500..3_000))).await;
        let partition = rng.usize(0..partitions.len());
        let victim_port = cluster.primary_of(&partitions[partition], 0).expect("a primary");
        let replica_port = cluster.replica_of(victim_port).expect("the primary has a replica");
        let node = |cluster: &Cluster, port: u16| cluster.nodes().iter().position(|n| n.port() == port).expect("node");
        let (victim, replica) = (node(&cluster, victim_port), node(&cluster, replica_port));
        // Replication falls behind: the replica stops reading its link and
        // a write larger than the sockets' buffers goes first, so what the
        // primary does next stays in its memory, lost with it.
        cluster.nodes()[replica].pause();
        let direct = cluster.nodes()[victim].client().await;
        let junk = format!("{}:lag", partitions[partition]);
        let _: () = direct.set(&junk, vec![b'x'; 32 << 20], None, None, false).await.expect("SET the lag");
        tokio::time::sleep(Duration::from_millis(rng.u64(100..800))).await;
        cluster.nodes_mut()[victim].kill();
        let killed = Instant::now();
        cluster.nodes()[replica].resume();
        let deadline = killed + Duration::from_secs(30);
        while cluster.primary_of(&partitions[partition], victim_port).is_none_or(|p| p == victim_port) {
            assert!(Instant::now() < deadline, "partition {partition} was not failed over in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let promoted = killed.elapsed();
        let victim = &mut cluster.nodes_mut()[victim];
        victim.restart();
        while !victim.replicating() {
            assert!(Instant::now() < deadline, "the old primary on {victim_port} did not rejoin as a replica");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("killed the primary of partition {partition} at {:?}; promoted after {promoted:?}", killed - started);
        kills.push((killed, promoted, partition));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }

    // While a primary was down: requests without a key went to the other
    // partitions; those with one whose partition it served were refused.
    let sent = std::mem::take(&mut *sent.lock().expect("lock"));
    for (killed, promoted, partition) in &kills {
        let during: Vec<&Sent> = sent.iter().filter(|s| s.at >= *killed && s.at < *killed + *promoted).collect();
        let count = |keyed: bool, ok: bool| during.iter().filter(|s| s.keyed == keyed && s.ok == ok).count();
        println!(
            "primary of partition {partition} down {promoted:?}: without a key {} accepted, {} refused; with a key {} \
             accepted, {} refused",
            count(false, true),
            count(false, false),
            count(true, true),
            count(true, false)
        );
        let keyless = count(false, true) + count(false, false);
        assert!(keyless >= 10, "too few requests while the primary was down: {keyless}");
        assert!(
            count(false, false) * 10 <= keyless,
            "requests without a key were refused while other partitions were up: {} of {keyless}",
            count(false, false)
        );
    }
    let refused = sent.iter().filter(|s| !s.ok).count();
    let accepted = accepted.lock().expect("lock").clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let got: std::collections::HashSet<String> =
            sink.received().iter().filter_map(|r| r.postback_id().map(str::to_owned)).collect();
        let lost: Vec<String> = accepted.iter().filter(|id| !got.contains(*id)).cloned().collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let client = cluster.client().await;
    for stream in &partitions {
        let _: i64 = client.del(format!("{stream}:lag")).await.expect("DEL the lag");
    }
    for child in &mut children {
        assert!(child.try_wait().expect("child").is_none(), "every service carried on without a restart");
    }
    assert!(lost.is_empty(), "{} of {} acknowledged postbacks never arrived: {lost:?}", lost.len(), accepted.len());
    postback_testkit::queue_checks::assert_all_partitions_empty(&client, "postbacks", Duration::from_secs(30)).await;

    // Nothing waits, and the backlog's numbers say so.
    let out = std::process::Command::new(sibling_bin("postbackctl"))
        .envs(shared.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--json", "status"])
        .output()
        .expect("run postbackctl");
    let status: Json = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["lag"], 0, "postbackctl status after the failovers: {status}");
    let http = reqwest::Client::new();
    for admin in &admins {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text =
                http.get(format!("http://{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
            let lag = text.lines().find(|l| l.starts_with("postback_group_lag")).map(str::to_owned);
            if lag.as_deref().is_some_and(|l| l.ends_with(" 0")) {
                break;
            }
            assert!(Instant::now() < deadline, "{admin} still says {lag:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Each postback's attempts, from the workers' logs.
    let mut made: HashMap<String, Vec<Made>> = HashMap::new();
    for (worker, path) in worker_logs.iter().enumerate() {
        for line in std::fs::read_to_string(path).expect("log").lines() {
            let Ok(json) = serde_json::from_str::<Json>(line) else { continue };
            if json["message"] != "delivery attempt" {
                continue;
            }
            let at = humantime::parse_rfc3339(json["attempted_at"].as_str().expect("attempted_at")).expect("time");
            made.entry(json["postback_id"].as_str().expect("id").to_owned()).or_default().push(Made {
                at,
                number: json["attempt"].as_u64().expect("attempt"),
                delivered: json["outcome"] == "delivered",
                worker: ["w0", "w1", "w2"][worker],
                entry: json["entry_id"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    // Writes after the lag are lost with the primary: Redis is back where
    // it was then, so a postback's path may start again from there (a
    // repeat). Between two kills, though, it has one path.
    let wall = |at: Instant| SystemTime::now() - (Instant::now() - at);
    // An attempt started within NOTICE of a kill may come from before it:
    // the worker had not seen its connection close yet.
    let kills_at: Vec<SystemTime> = kills.iter().map(|(k, _, _)| wall(*k) + NOTICE).collect();
    let mut two_paths = Vec::new();
    let mut repeated = 0usize;
    for (id, attempts) in &mut made {
        attempts.sort_by_key(|m| m.at);
        repeated += attempts.iter().filter(|m| m.delivered).count().saturating_sub(1);
        let era = |m: &Made| kills_at.iter().filter(|k| **k <= m.at).count();
        let one_path = attempts.chunk_by(|a, b| era(a) == era(b)).all(|run| {
            let rising = run.windows(2).all(|pair| pair[0].number <= pair[1].number);
            let success = run.iter().position(|m| m.delivered);
            rising && success.is_none_or(|at| run[at..].iter().all(|m| m.number == run[at].number))
        });
        if !one_path {
            let story: Vec<String> = attempts
                .iter()
                .map(|m| {
                    let at = humantime::format_rfc3339_millis(m.at);
                    let delivered = if m.delivered { " delivered" } else { "" };
                    format!("{at} {} attempt {}{delivered} from {}", m.worker, m.number, m.entry)
                })
                .collect();
            two_paths.push((id.clone(), story));
        }
    }
    println!(
        "{} accepted, {} requests refused, {} postbacks attempted, {repeated} deliveries repeated, {} on two paths",
        accepted.len(),
        refused,
        made.len(),
        two_paths.len()
    );
    let kills_at: Vec<_> = kills_at.iter().map(|k| humantime::format_rfc3339_millis(*k).to_string()).collect();
    if !two_paths.is_empty() {
        let kept = logs.keep();
        panic!("attempted from two places (kills at {kills_at:?}; logs in {}): {two_paths:#?}", kept.display());
    }
    assert!(accepted.len() > 500, "too little load to mean anything: {}", accepted.len());
}
