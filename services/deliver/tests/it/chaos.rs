//! Many processes, random deaths: two ingest and three deliver processes
//! (the real binaries) share one Redis while load arrives for 30 s and a
//! random one of them is killed with SIGKILL every one to three seconds and
//! started again (deliver under the same consumer name, as systemd does).
//! Every postback that got a 202 must reach the partner, and a postback
//! may be repeated only as README "Guarantees" allows: by the death of the
//! worker that made the attempt before (each deliver process's attempt
//! log says which made which; an attempt no log shows was made by a
//! process killed before it could write the line). At the end nothing is
//! pending, scheduled or counted, and no finished or endpoint record is
//! left, in any partition.
//!
//! The same runs against a three-primary Redis Cluster with the queue in
//! four partitions.
//!
//! `CHAOS_SEED=N` replays one schedule of deaths.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postback_testkit::{Cluster, RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, deliver_env, sibling_bin};

/// How long load arrives while processes die.
const LOAD_FOR: Duration = Duration::from_secs(30);

/// How far apart a request's arrival at the sink and the attempt's
/// `attempted_at` in the worker's log may be (generous for a busy machine).
const MATCH_WITHIN: Duration = Duration::from_millis(150);

/// One service process, started again after each death; each deliver
/// incarnation's log goes to its own file.
struct Service {
    name: String,
    program: std::path::PathBuf,
    envs: Vec<(&'static str, String)>,
    child: tokio::process::Child,
    /// Log files of the incarnations so far, with when each was killed.
    lives: Vec<(std::path::PathBuf, Option<Instant>)>,
    logs: std::path::PathBuf,
}

impl Service {
    fn spawn(&mut self) {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.envs(self.envs.iter().map(|(k, v)| (*k, v.as_str()))).kill_on_drop(true);
        if self.is_deliver() {
            let path = self.logs.join(format!("{}-{}.log", self.name.replace(' ', "-"), self.lives.len()));
            cmd.stdout(std::fs::File::create(&path).expect("log file"));
            self.lives.push((path, None));
        } else if std::env::var_os("TEST_LOG").is_none() {
            cmd.stdout(Stdio::null());
        }
        self.child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
    }

    fn start(name: String, program: std::path::PathBuf, envs: Vec<(&'static str, String)>, logs: &Path) -> Self {
        let child = tokio::process::Command::new("true").spawn().expect("placeholder");
        let mut service = Self { name, program, envs, child, lives: Vec::new(), logs: logs.to_owned() };
        service.spawn();
        service
    }

    async fn kill_and_restart(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap");
        if let Some((_, death)) = self.lives.last_mut() {
            *death = Some(Instant::now());
        }
        self.spawn();
    }

    fn is_deliver(&self) -> bool {
        self.name.starts_with("deliver")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_of_two_ingest_and_three_deliver_processes_lose_nothing() {
    let redis = RedisServer::start();
    chaos(&redis, redis.url(), &redis.client().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_on_a_three_primary_cluster_with_four_partitions_lose_nothing() {
    let cluster = Cluster::start(3);
    chaos(&cluster.nodes()[0], cluster.url(), &cluster.client().await, 4).await;
}

/// The test itself, against the Redis at `url` (`redis` one of its
/// servers, `client` connected to it) with the queue in `partitions`.
async fn chaos(redis: &RedisServer, url: String, client: &fred::prelude::Client, partitions: u32) {
    let logs = tempfile::tempdir().expect("log dir");
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("CHAOS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let shared = [("POSTBACK_REDIS_URL", url), ("POSTBACK_PARTITIONS", partitions.to_string())];
    // The k-th postback of a request is answered after 20 + 100·k ms, so a
    // worker dies with entries part finished, part in flight.
    let sink = Sink::start_with(|r, _| {
        let i: u64 = r.target.rsplit('=').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        Reply::status(200).delay(Duration::from_millis(20 + 100 * (i % 10)))
    })
    .await;

    let mut services = Vec::new();
    let mut ingest_urls = Vec::new();
    for i in 0..2 {
        let addr = format!("127.0.0.1:{}", postback_testkit::free_port());
        ingest_urls.push(format!("http://{addr}/v1/postbacks"));
        let mut envs = vec![("POSTBACK_INGEST_ADDR", addr), ("RUST_LOG", "warn".to_owned())];
        envs.extend(shared.iter().cloned());
        services.push(Service::start(format!("ingest {i}"), sibling_bin("postback-ingest"), envs, logs.path()));
    }
    for i in 0..3 {
        let mut extra = vec![
            ("POSTBACK_CONSUMER", format!("w{i}")),
            ("POSTBACK_HTTP_TIMEOUT_MS", "1000".into()),
            ("POSTBACK_CLAIM_IDLE_MS", "1500".into()),
            ("RUST_LOG", "warn,postback::attempt=info".into()),
        ];
        extra.extend(shared.iter().cloned());
        let envs = deliver_env(redis, &extra);
        services.push(Service::start(format!("deliver {i}"), DELIVER_BIN.into(), envs, logs.path()));
    }

    // Four senders, each sending requests of 1 to 5 postbacks to either
    // ingest in turn; what got a 202 is remembered.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let target = format!("{}/c?i={{i}}", sink.base_url());
    let mut senders = Vec::new();
    for sender in 0..4u64 {
        let (accepted, refused, urls, target) =
            (accepted.clone(), refused.clone(), ingest_urls.clone(), target.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut n = 0u64;
            while started.elapsed() < LOAD_FOR {
                n += 1;
                let data: Vec<_> = (0..1 + n % 5).map(|i| json!({"i": sender * 1_000_000 + n * 10 + i})).collect();
                let body = json!({"endpoint": {"method": "GET", "url": target}, "data": data}).to_string();
                let url = &urls[(n % 2) as usize];
                match http.post(url).body(body).send().await {
                    Ok(response) if response.status() == 202 => {
                        let answer: serde_json::Value = response.json().await.expect("202 body");
                        let ids =
                            answer["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned());
                        accepted.lock().expect("lock").extend(ids);
                    }
                    _ => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        }));
    }

    // Deaths: every 1 to 3 s a random process.
    let mut deaths = HashMap::<String, usize>::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    while started.elapsed() < LOAD_FOR {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..3_000))).await;
        let victim = &mut services[rng.usize(0..5)];
        victim.kill_and_restart().await;
        *deaths.entry(victim.name.clone()).or_default() += 1;
    }
    for sender in senders {
        sender.await.expect("sender");
    }

    let accepted = accepted.lock().expect("lock").clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut received, mut first) = (Vec::new(), HashMap::<String, usize>::new());
    while Instant::now() < deadline {
        received = sink.received();
        first.clear();
        for (i, r) in received.iter().enumerate() {
            first.entry(r.postback_id().expect("X-Postback-Id").to_owned()).or_insert(i);
        }
        if accepted.iter().all(|id| first.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost: Vec<&String> = accepted.iter().filter(|id| !first.contains_key(*id)).collect();
    // Which incarnation made each attempt its log shows, by postback id and
    // when it was sent.
    let wall = |at: Instant| std::time::SystemTime::now() - (Instant::now() - at);
    let lives: Vec<(std::path::PathBuf, Option<Instant>)> =
        services.iter().filter(|s| s.is_deliver()).flat_map(|s| s.lives.clone()).collect();
    let mut made: HashMap<String, Vec<(std::time::SystemTime, usize)>> = HashMap::new();
    for (life, (path, _)) in lives.iter().enumerate() {
        for line in std::fs::read_to_string(path).expect("log").lines() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if json["message"] != "delivery attempt" {
                continue;
            }
            let at = chrono_ms(json["attempted_at"].as_str().expect("attempted_at"));
            made.entry(json["postback_id"].as_str().expect("id").to_owned()).or_default().push((at, life));
        }
    }
    // A repeat is excused only by the death, before it, of the worker that
    // made the attempt before; an attempt no log shows was made by a
    // worker killed before it wrote the line.
    let arrivals =
        |id: &str| -> Vec<usize> { (0..received.len()).filter(|i| received[*i].postback_id() == Some(id)).collect() };
    let excused = |i: usize, next: usize| {
        let id = received[i].postback_id().expect("id");
        let sent = wall(received[i].at);
        let others = arrivals(id);
        // The logged attempt nearest to this arrival, and nearer to it than
        // to any other arrival of the same postback.
        let maker = made.get(id).and_then(|attempts| {
            attempts
                .iter()
                .filter(|(at, _)| apart(*at, sent) <= MATCH_WITHIN)
                .filter(|(at, _)| others.iter().all(|j| apart(*at, wall(received[*j].at)) >= apart(*at, sent)))
                .min_by_key(|(at, _)| apart(*at, sent))
                .map(|(_, life)| *life)
        });
        match maker {
            None => true,
            Some(life) => lives[life].1.is_some_and(|death| death <= received[next].at),
        }
    };
    let mut times = HashMap::<&str, usize>::new();
    for r in &received {
        *times.entry(r.postback_id().expect("X-Postback-Id")).or_default() += 1;
    }
    let repeated: Vec<&String> = first.keys().filter(|id| times[id.as_str()] > 1).collect();
    let unexcused: Vec<&&String> = repeated
        .iter()
        .filter(|id| {
            let sent: Vec<usize> =
                (0..received.len()).filter(|i| received[*i].postback_id() == Some(id.as_str())).collect();
            sent.windows(2).any(|pair| !excused(pair[0], pair[1]))
        })
        .collect();
    let mut deaths: Vec<_> = deaths.into_iter().collect();
    deaths.sort();
    println!(
        "{} accepted, {} requests refused or cut off, deaths {deaths:?}, {} lost, {} postbacks repeated ({} extra attempts), {} of them not excused by the death of the worker that made the attempt before",
        accepted.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        lost.len(),
        repeated.len(),
        received.len() - first.len(),
        unexcused.len()
    );
    assert!(accepted.len() > 1_000, "too little load to mean anything: {}", accepted.len());
    assert!(deaths.len() >= 3, "too few processes died: {deaths:?}");
    assert!(lost.is_empty(), "{} of {} acknowledged postbacks never arrived: {lost:?}", lost.len(), accepted.len());
    let answered = sink.answered();
    let story = |id: &str| {
        let attempts: Vec<_> = received
            .iter()
            .zip(&answered)
            .filter(|(r, _)| r.postback_id() == Some(id))
            .map(|(r, a)| (r.at - started, a.map(|a| a - started)))
            .collect();
        format!("{id}: attempts (sent, answered) {attempts:?}")
    };
    let deaths_at: Vec<_> =
        lives.iter().filter_map(|(path, death)| Some((path.file_name()?.to_owned(), (*death)? - started))).collect();
    let unexcused: Vec<String> = unexcused.iter().map(|id| story(id)).collect();
    assert!(unexcused.is_empty(), "repeated by a live worker (deaths {deaths_at:?}): {unexcused:#?}");
    postback_testkit::queue_checks::assert_all_partitions_empty(client, "postbacks", Duration::from_secs(30)).await;
}

/// An RFC 3339 time with milliseconds (`2026-12-07T10:00:00.123Z`), as
/// the attempt log writes it.
fn chrono_ms(text: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// How far apart two times are, either way round.
fn apart(a: std::time::SystemTime, b: std::time::SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}
