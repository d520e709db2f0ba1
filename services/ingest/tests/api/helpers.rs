//! `TestApp`: ingest on 127.0.0.1:0 with its own redis-server;
//! `Process`: the real binary on a free port.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::Postback;
use postback_common::keys::ENTRY_FIELD;
use postback_ingest::{Application, Config};
use postback_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

/// The SHA-256 of the bearer token `secret` (`printf %s secret | sha256sum`),
/// as a tokens file lists it.
pub const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

/// The sample request of the original specification.
pub const SEED: &str = include_str!("../../../../schemas/examples/seed-request.json");

pub struct TestApp {
    pub base: String,
    pub redis: RedisServer,
    pub http: reqwest::Client,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        postback_common::telemetry::init_for_tests();
        let redis = RedisServer::start();
        let mut config = Config::defaults();
        config.redis.redis_url = redis.url();
        config.addr = "127.0.0.1:0".parse().expect("addr");
        tweak(&mut config);
        let app = Application::build(config.clone()).await.expect("build ingest");
        let base = format!("http://{}", app.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let test = Self { base, redis, http, config, shutdown, task: Some(task) };
        test.wait_ready().await;
        test
    }

    /// Waits until /readyz says 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ingest never became ready");
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).body(body).send().await.expect("send")
    }

    pub async fn post_json(&self, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/postbacks", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("send")
    }

    /// Every postback in the stream, decoded, in stream order; each entry
    /// has the one field.
    pub async fn queued(&self) -> Vec<Postback> {
        let client = self.redis.client().await;
        let entries: Vec<(String, Vec<(String, Bytes)>)> =
            client.xrange(&self.config.redis.stream, "-", "+", None).await.expect("XRANGE");
        assert!(entries.iter().all(|(_, f)| f.len() == 1 && f[0].0 == ENTRY_FIELD), "one field per entry");
        let keys = postback_common::keys::Keys::new(&self.config.redis.stream, "deliver");
        postback_common::entries::queued(&client, &keys).await.expect("entries decode")
    }

    /// Whether the stream key exists at all.
    pub async fn stream_exists(&self) -> bool {
        let client = self.redis.client().await;
        client.exists::<u32, _>(&self.config.redis.stream).await.expect("EXISTS") == 1
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The JSON body of a response, checking its content type.
/// The ids of a 202 answer (asserting that it is one).
pub async fn accepted_ids(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("json");
    body["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect()
}

pub async fn problem(response: reqwest::Response) -> serde_json::Value {
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}

/// The real `postback-ingest` binary on a free loopback port, ready to
/// serve; killed when dropped.
pub struct Process {
    pub child: tokio::process::Child,
    pub base: String,
    pub port: u16,
}

impl Process {
    pub const BIN: &str = env!("CARGO_BIN_EXE_postback-ingest");

    /// Starts the binary against `redis` with `env` added, and waits until
    /// `/readyz` answers 200.
    pub async fn spawn(redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        let port = postback_testkit::free_port();
        let child = tokio::process::Command::new(Self::BIN)
            .env("POSTBACK_REDIS_URL", redis.url())
            .env("POSTBACK_INGEST_ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while http.get(format!("{base}/readyz")).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK)
        {
            assert!(tokio::time::Instant::now() < deadline, "binary never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, base, port }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait()).await.expect("exits in time").expect("wait")
    }
}
