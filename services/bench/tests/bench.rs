//! postback-bench's own tests: the sink's counts, the load generator
//! against the real services (checked against what the sink and Redis
//! saw), and a small whole `run` whose report must add up.

#![allow(clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::Duration;

use fred::prelude::*;
use postback_bench::sink::SinkStats;
use postback_testkit::{RedisServer, free_port};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_postback-bench");
const WAIT: Duration = Duration::from_secs(30);

/// `postback-bench sink` as a process; killed when dropped.
struct SinkProcess {
    child: std::process::Child,
    base: String,
}

impl SinkProcess {
    fn start(args: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BIN)
            .args(["sink", "--addr", &addr])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sink");
        let sink = Self { child, base: format!("http://{addr}") };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "sink never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    async fn stats(&self) -> SinkStats {
        reqwest::get(format!("{}/__bench/stats", self.base)).await.expect("stats").json().await.expect("JSON")
    }

    /// SIGTERM; the stats it prints at exit.
    fn stop(mut self) -> SinkStats {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"))
            .wait_with_output()
            .expect("sink output");
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let json = text.split_once('\n').map(|(_, rest)| rest).expect("listening line, then stats");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_sink_counts_deliveries_duplicates_and_latency() {
    let sink = SinkProcess::start(&[]);
    let http = reqwest::Client::new();
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_micros();
    for (id, query) in [("a", format!("?ts={ts}")), ("a", format!("?ts={ts}")), ("b", String::new())] {
        let response =
            http.get(format!("{}/postback{query}", sink.base)).header("x-postback-id", id).send().await.expect("send");
        assert_eq!(response.status(), 200);
    }
    let response =
        http.post(format!("{}/x", sink.base)).header("x-bench-ts", ts.to_string()).send().await.expect("send");
    assert_eq!(response.status(), 200);
    let stats = sink.stats().await;
    assert_eq!((stats.requests, stats.delivered, stats.unique, stats.duplicates), (4, 4, 2, 1), "{stats:?}");
    assert_eq!(stats.without_id, 1);
    assert_eq!(stats.end_to_end.count, 1, "first deliveries with a ts only: {stats:?}");
    assert_eq!(sink.stop(), stats, "the stats printed at exit are the same");
}

#[tokio::test]
async fn a_failing_sink_answers_503_and_counts_no_delivery() {
    let sink = SinkProcess::start(&["--sink-fail-ratio", "1"]);
    let response =
        reqwest::Client::new().get(format!("{}/p", sink.base)).header("x-postback-id", "a").send().await.expect("send");
    assert_eq!(response.status(), 503);
    let stats = sink.stats().await;
    assert_eq!((stats.requests, stats.failed_on_purpose, stats.delivered), (1, 1, 0));
}

/// Real ingest and deliver, in-process, on a redis-server of the test's.
async fn services(redis: &RedisServer, stop: &CancellationToken) -> String {
    let mut ingest = postback_ingest::Config::defaults();
    ingest.redis.redis_url = redis.url();
    ingest.addr = "127.0.0.1:0".parse().expect("addr");
    let app = postback_ingest::Application::build(ingest).await.expect("ingest");
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run(stop.clone()));
    let mut deliver = postback_deliver::Config::defaults();
    deliver.redis.redis_url = redis.url();
    deliver.addr = "127.0.0.1:0".parse().expect("addr");
    deliver.allow_private_targets = true;
    deliver.read_block_ms = 200;
    deliver.retry_base_ms = 10;
    deliver.retry_max_ms = 50;
    deliver.max_attempts = 20;
    let worker = postback_deliver::Deliverer::build(deliver).await.expect("deliver");
    tokio::spawn(worker.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(format!("{base}/readyz")).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(tokio::time::Instant::now() < deadline, "ingest never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn load_sink_and_redis_agree_even_when_the_sink_fails_some() {
    let redis = RedisServer::start();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let ingest = services(&redis, &stop).await;
    let sink = SinkProcess::start(&["--sink-fail-ratio", "0.3"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("load.json");
    // Not a blocking wait: the services run on this test's runtime.
    let status = tokio::process::Command::new(BIN)
        .args(["load", "--url", &format!("{ingest}/v1/postbacks"), "--target", &sink.base])
        .args(["--requests", "50", "--items", "3", "--concurrency", "4", "--json"])
        .arg(&report_path)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run load");
    assert!(status.success());
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("JSON");
    assert_eq!(report["requests"], 50);
    assert_eq!(report["accepted_requests"], 50);
    assert_eq!(report["accepted_postbacks"], 150);
    assert_eq!(report["latency"]["count"], 50);
    redis.wait_nothing_to_deliver(WAIT).await;
    let dead: u64 = redis.client().await.xlen("postbacks:dead").await.expect("XLEN dead");
    assert_eq!(dead, 0);
    let stats = sink.stats().await;
    assert_eq!(stats.unique, 150, "every accepted postback reached the sink: {stats:?}");
    assert_eq!(stats.delivered, 150 + stats.duplicates);
    assert!(stats.failed_on_purpose > 0, "some attempts were refused and retried: {stats:?}");
    assert_eq!(stats.requests, stats.delivered + stats.failed_on_purpose);
    assert_eq!(stats.end_to_end.count, 150);
}

#[test]
fn a_small_run_reports_figures_that_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("run.json");
    let output = Command::new(BIN)
        .args(["run", "--requests", "200", "--concurrency", "8", "--items", "2", "--fill", "20", "--json"])
        .arg(&report_path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("postbacks/s delivered") && text.contains("ceiling"), "{text}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("JSON");
    for pipeline in [&report["pipeline"], &report["bare_pipeline"]] {
        assert_eq!(pipeline["load"]["accepted_postbacks"], 400, "{pipeline}");
        assert_eq!(pipeline["delivered"], 400, "{pipeline}");
        assert_eq!(pipeline["lost"], 0);
        assert_eq!(pipeline["duplicates"], 0);
        assert_eq!(pipeline["end_to_end"]["count"], 400);
        assert!(pipeline["delivered_per_s"].as_f64().is_some_and(|r| r > 0.0));
        assert!(pipeline["redis"]["stored_bytes_per_postback"].as_f64().is_some_and(|b| b > 0.0));
        assert!(pipeline["redis"]["commands_per_postback"].as_f64().is_some_and(|c| c > 0.0));
        let names: Vec<&str> =
            pipeline["processes"].as_array().expect("processes").iter().filter_map(|p| p["name"].as_str()).collect();
        assert!(names.contains(&"redis-server") && names.len() == 3, "{names:?}");
        for process in pipeline["processes"].as_array().expect("processes") {
            assert!(process["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{process}");
        }
    }
    assert!(report["ceilings"]["http_handler_requests_per_s"].as_f64().is_some_and(|r| r > 0.0));
    assert!(report["ceilings"]["client_requests_per_s"].as_f64().is_some_and(|r| r > 0.0));
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 4);
    for ratio in ratios {
        let (ours, ceiling, r) = (ratio["ours"].as_f64(), ratio["ceiling"].as_f64(), ratio["ratio"].as_f64());
        let (ours, ceiling, r) = (ours.expect("ours"), ceiling.expect("ceiling"), r.expect("ratio"));
        assert!((ours / ceiling - r).abs() < 1e-9, "{ratio}");
    }
}

#[test]
fn a_run_on_a_cluster_with_partitions_counts_every_primary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("run.json");
    let output = Command::new(BIN)
        .args(["run", "--requests", "100", "--concurrency", "8", "--fill", "20", "--no-ceilings"])
        .args(["--partitions", "4", "--cluster", "3", "--json"])
        .arg(&report_path)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("JSON");
    let pipeline = &report["pipeline"];
    assert_eq!(pipeline["delivered"], 100, "{pipeline}");
    assert_eq!(pipeline["lost"], 0);
    assert!(pipeline["redis"]["stored_bytes_per_postback"].as_f64().is_some_and(|b| b > 0.0), "{pipeline}");
    let names: Vec<&str> =
        pipeline["processes"].as_array().expect("processes").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["ingest", "deliver-0", "redis-0", "redis-1", "redis-2"]);
    assert_eq!(report["settings"]["partitions"], 4);
}

#[test]
fn bytes_reports_the_sample_postback_to_the_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bytes.json");
    let output = Command::new(BIN).args(["bytes", "--count", "200", "--json"]).arg(&path).output().expect("bytes");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let cases: Value = serde_json::from_slice(&std::fs::read(&path).expect("report")).expect("JSON");
    let cases = cases.as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    // The batch format's test pins the sample at 82 bytes (its endpoint
    // stored apart), and the wire format's its JSON form at 262.
    assert_eq!(cases[0]["payload_bytes"], 82.0, "{cases:?}");
    assert_eq!(cases[1]["json_bytes"], 262.0, "{cases:?}");
    assert_eq!(cases[0]["json_bytes"], 262.0, "{cases:?}");
    assert_eq!(cases[0]["postbacks"], 200);
    assert_eq!(cases[1]["postbacks"], 200, "two requests of 100 items");
    assert_eq!(cases[2]["postbacks"], 200);
    for case in cases {
        let stored = case["stored_bytes"].as_f64().expect("stored");
        assert!(stored > case["payload_bytes"].as_f64().expect("payload"), "the stream adds its own overhead: {case}");
        assert!(case["deliver_net_bytes"].as_f64().is_some_and(|b| b > 0.0), "{case}");
        // A scheduled retry costs at most twice what its postback took in
        // its entry, whatever the shape (bytes, not time: the same every run).
        let retry = case["retry_ratio"].as_f64().expect("retry ratio");
        assert!(retry > 0.0 && retry <= 2.0, "{case}");
        assert!(case["dead_bytes"].as_f64().is_some_and(|b| b > 0.0), "{case}");
    }
}
