//! `Pipeline`: redis-server + ingest + deliver + sink, all real, on loopback.

use std::process::{Command, Stdio};
use std::time::Duration;

use postback_deliver::{Config as DeliverConfig, Deliverer};
use postback_ingest::{Application, Config as IngestConfig};
use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Pipeline {
    pub redis: RedisServer,
    pub sink: Sink,
    pub ingest_base: String,
    pub deliver_admin: String,
    pub http: reqwest::Client,
    pub stream: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn deliver_config(redis: &RedisServer) -> DeliverConfig {
    let mut config = DeliverConfig::defaults();
    config.redis.redis_url = redis.url();
    config.addr = "127.0.0.1:0".parse().expect("addr");
    config.read_block_ms = 200;
    config.http_timeout_ms = 2_000;
    config.claim_idle_ms = 3_000;
    // Millisecond-scale retries keep the suite fast.
    config.retry_base_ms = 20;
    config.retry_max_ms = 200;
    config.max_attempts = 4;
    config.shutdown_grace_ms = 5_000;
    // The sinks are on loopback, which the SSRF guard refuses.
    config.allow_private_targets = true;
    // Tests of failing partners would otherwise pause them for a minute;
    // the breaker's own tests turn it on.
    config.breaker_failures = 0;
    config
}

impl Pipeline {
    pub async fn start() -> Self {
        Self::start_with(|_, _| Reply::status(200), |_| {}).await
    }

    pub async fn start_with(
        responder: impl Fn(&postback_testkit::Received, usize) -> Reply + Send + Sync + 'static,
        tweak: impl FnOnce(&mut DeliverConfig),
    ) -> Self {
        Self::start_on(RedisServer::start(), Sink::start_with(responder).await, tweak).await
    }

    /// The pipeline on a given Redis and sink.
    pub async fn start_on(redis: RedisServer, sink: Sink, tweak: impl FnOnce(&mut DeliverConfig)) -> Self {
        postback_common::telemetry::init_for_tests();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut ingest = IngestConfig::defaults();
        ingest.redis.redis_url = redis.url();
        ingest.addr = "127.0.0.1:0".parse().expect("addr");
        let app = Application::build(ingest.clone()).await.expect("build ingest");
        let ingest_base = format!("http://{}", app.local_addr());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { app.run(token).await.expect("ingest") }));

        let mut config = deliver_config(&redis);
        tweak(&mut config);
        let deliverer = Deliverer::build(config).await.expect("build deliver");
        let deliver_admin = format!("http://{}", deliverer.admin_addr());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { deliverer.run(token).await.expect("deliver") }));

        let http = reqwest::Client::builder().timeout(WAIT).build().expect("client");
        let pipeline =
            Self { redis, sink, ingest_base, deliver_admin, http, stream: ingest.redis.stream, shutdown, tasks };
        pipeline.wait_ready(&format!("{}/readyz", pipeline.ingest_base)).await;
        pipeline.wait_ready(&format!("{}/readyz", pipeline.deliver_admin)).await;
        pipeline
    }

    pub async fn wait_ready(&self, url: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{url} never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sink's address in place of the sample domain.
    pub fn target(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.sink.base_url())
    }

    /// Posts a request to ingest; asserts 202; returns the postback ids.
    pub async fn ingest(&self, body: impl ToString) -> Vec<String> {
        let response = self
            .http
            .post(format!("{}/ingest.php", self.ingest_base))
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        body["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect()
    }

    /// Waits until nothing is left to deliver (the stream, its pending list
    /// and the retry schedule are empty), then checks that the counts kept
    /// beside the stream agree with it.
    pub async fn wait_drained(&self) {
        assert_eq!(self.stream, "postbacks", "the checks read the default stream");
        self.redis.wait_nothing_to_deliver(WAIT).await;
        self.redis.assert_counts_exact().await;
    }

    /// Posts a request to ingest; returns the ids on 202, `None` otherwise
    /// (503 while Redis is away, or a connection error).
    pub async fn try_ingest(&self, body: &Value) -> Option<Vec<String>> {
        let response =
            self.http.post(format!("{}/ingest.php", self.ingest_base)).body(body.to_string()).send().await.ok()?;
        if response.status() != 202 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        Some(body["ids"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
    }

    /// Deliver's `/metrics` text once the sample `name` with `labels` has
    /// reached `value` (counters are updated just after the sink answers).
    pub async fn deliver_metrics_once(&self, name: &str, labels: &[(&str, &str)], value: f64) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.deliver_metrics().await;
            let now = postback_testkit::metric(&text, name, labels);
            if now == Some(value) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} {labels:?} is {now:?}, never {value}:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deliver's `/metrics` text.
    pub async fn deliver_metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.deliver_admin)).send().await.expect("scrape");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.expect("service task");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn seed_request(url: &str) -> Value {
    serde_json::json!({
        "endpoint": {"method": "GET", "url": url},
        "data": [{"mascot": "Gopher", "location": "https://blog.golang.org/gopher/gopher.png"}]
    })
}

/// Queues postbacks straight into Redis through ingest's own code (no HTTP),
/// for tests that run deliver without an ingest service.
pub async fn enqueue(redis: &RedisServer, body: Value) -> Vec<String> {
    enqueue_in(redis, body, 0, 1).await
}

/// [`enqueue`] into partition `partition` of `partitions`.
pub async fn enqueue_in(redis: &RedisServer, body: Value, partition: u32, partitions: u32) -> Vec<String> {
    enqueue_each(redis, vec![body], partition, partitions).await
}

/// Each of `bodies` as its own request, [`enqueue_in`] partition
/// `partition`; the ids of all.
pub async fn enqueue_each(redis: &RedisServer, bodies: Vec<Value>, partition: u32, partitions: u32) -> Vec<String> {
    use fred::prelude::ClientLike;
    let mut config = IngestConfig::defaults();
    config.redis.redis_url = redis.url();
    let client = postback_common::redis::client(&redis.url(), Duration::from_secs(5)).expect("client");
    client.init().await.expect("connect");
    let cluster = postback_common::config::is_cluster_url(&redis.url());
    let layout =
        postback_common::layout::store::load(&client, "postbacks", Some(partitions), cluster).await.expect("record");
    let views = postback_ingest::partitions::Views::fixed(layout, "postbacks");
    let state = postback_ingest::state::AppState::new(client, config, views);
    let view = state.views.now().expect("a view");
    let keys = view.partitions.get(partition).expect("that partition");
    let mut ids = Vec::new();
    for body in bodies {
        let mut buf = body.to_string().into_bytes();
        let parsed = postback_ingest::json::parse(&mut buf).expect("json");
        let postbacks =
            postback_ingest::request::postbacks(&parsed, postback_common::time::now_ms(), &Default::default())
                .expect("valid");
        let target = postback_ingest::enqueue::Target { keys, earlier: &[], epoch: view.epoch() };
        state.enqueuer.enqueue(&state.redis, target, &postbacks, None).await.expect("enqueue");
        ids.extend(postbacks.iter().map(|p| p.id.to_string()));
    }
    ids
}

/// The dead-letter entries, as field → text (the payload field `p` left out).
pub async fn dead_letters(redis: &RedisServer) -> Vec<std::collections::HashMap<String, String>> {
    use fred::prelude::StreamsInterface;
    let client = redis.client().await;
    let entries: Vec<(String, Vec<(String, bytes::Bytes)>)> =
        client.xrange("postbacks:dead", "-", "+", None).await.expect("XRANGE dead");
    entries
        .into_iter()
        .map(|(_, fields)| {
            fields
                .into_iter()
                .filter(|(k, _)| k != "p")
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        })
        .collect()
}

/// Waits until the dead-letter stream holds `n` entries, then returns them.
pub async fn wait_dead(redis: &RedisServer, n: usize) -> Vec<std::collections::HashMap<String, String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let dead = dead_letters(redis).await;
        if dead.len() >= n {
            return dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} dead letters: {dead:?}", dead.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every id in `accepted` reached the sink or the dead-letter stream;
/// returns how many arrived more than once.
pub async fn assert_none_lost(sink: &Sink, redis: &RedisServer, accepted: &[String]) -> usize {
    use std::collections::HashMap;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        *seen.entry(r.postback_id().unwrap_or_default().to_owned()).or_default() += 1;
    }
    let dead: Vec<String> =
        dead_letters(redis).await.into_iter().filter_map(|d| d.get("postback_id").cloned()).collect();
    let lost: Vec<_> = accepted.iter().filter(|id| !seen.contains_key(*id) && !dead.contains(id)).collect();
    assert!(lost.is_empty(), "{} of {} accepted postbacks lost: {lost:?}", lost.len(), accepted.len());
    let duplicates = accepted.iter().filter(|id| seen.get(*id).copied().unwrap_or(0) > 1).count();
    println!("accepted {}, delivered or dead-lettered all, {duplicates} delivered more than once", accepted.len());
    duplicates
}

/// The real `postback-deliver` binary.
pub const DELIVER_BIN: &str = env!("CARGO_BIN_EXE_postback-deliver");

/// Another binary of the workspace, built next to [`DELIVER_BIN`].
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    let bin = std::path::Path::new(DELIVER_BIN).with_file_name(name);
    assert!(bin.exists(), "{} is missing: build the workspace (cargo build --workspace)", bin.display());
    bin
}

/// What the deliver binary runs with in tests, `extra` last (so it wins):
/// `redis`, an admin address on a free port, fast reads, loopback allowed,
/// no circuit breaker (as in [`deliver_config`]), INFO logs.
pub fn deliver_env(redis: &RedisServer, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut envs: Vec<(&'static str, String)> = vec![
        ("POSTBACK_REDIS_URL", redis.url()),
        ("POSTBACK_DELIVER_ADDR", format!("127.0.0.1:{}", postback_testkit::free_port())),
        ("POSTBACK_READ_BLOCK_MS", "200".into()),
        ("POSTBACK_ALLOW_PRIVATE_TARGETS", "true".into()),
        ("POSTBACK_BREAKER_FAILURES", "0".into()),
        ("RUST_LOG", "info".into()),
    ];
    for (name, value) in extra {
        envs.retain(|(k, _)| k != name);
        envs.push((name, value.clone()));
    }
    envs
}

/// What every service of a partitioned test runs with: `url`, a new
/// deployment's `partitions`, warnings only.
pub fn queue_env(url: &str, partitions: u32) -> Vec<(&'static str, String)> {
    vec![
        ("POSTBACK_REDIS_URL", url.to_owned()),
        ("POSTBACK_PARTITIONS", partitions.to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

/// The admin address in a [`deliver_env`].
pub fn admin_of(envs: &[(&str, String)]) -> String {
    envs.iter().find(|(k, _)| *k == "POSTBACK_DELIVER_ADDR").map(|(_, v)| v.clone()).expect("admin address")
}

/// A service binary started as a child process with `envs`, its log
/// thrown away (a pipe nobody reads would stop it once full); killed when
/// dropped.
pub fn spawn_quiet(bin: &std::path::Path, envs: &[(&'static str, String)]) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// A service binary running as a child process, its JSON log lines read
/// from stdout.
pub struct Running {
    pub child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    /// Starts `bin` with exactly `envs` on top of the test's environment.
    pub fn spawn(bin: &str, envs: &[(&str, String)]) -> Self {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// The next log line whose `message` is `message`, as JSON.
    pub async fn line(&mut self, message: &str) -> Value {
        let mut seen = Vec::new();
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("read stdout") {
                let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if json["message"] == message {
                    return Ok(json);
                }
                seen.push(line);
            }
            Err("stdout closed")
        };
        match tokio::time::timeout(WAIT, read).await {
            Ok(Ok(json)) => json,
            Ok(Err(why)) => panic!("{why} before {message:?}; lines before:\n{}", seen.join("\n")),
            Err(_) => panic!("no {message:?} line; lines before:\n{}", seen.join("\n")),
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid").to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    }
}
