//! One OpenTelemetry trace from a caller through ingest to every delivery
//! attempt: the real binaries export over OTLP/HTTP to a real receiver in
//! the test, and delivery goes on unharmed when no collector is there.

use std::path::Path;
use std::time::Duration;

use postback_common::trace_context::TraceContext;
use postback_testkit::{Collector, ExportedSpan, RedisServer, Reply, Sink, free_port};

use crate::helpers::{Running, WAIT, seed_request};

const DELIVER: &str = env!("CARGO_BIN_EXE_postback-deliver");

/// The ingest binary, built beside deliver's by `cargo test --workspace`
/// (which `ops/test.sh` runs).
fn ingest_bin() -> String {
    let path = Path::new(DELIVER).with_file_name("postback-ingest");
    assert!(path.exists(), "{} is missing: run `cargo build -p postback-ingest` first", path.display());
    path.display().to_string()
}

/// Ingest and deliver as real processes on `redis`, exporting to `otlp`.
async fn start(redis: &RedisServer, otlp: &str) -> (Running, Running, String) {
    let (ingest, base) = spawn_ingest(redis, otlp).await;
    (ingest, spawn_deliver(redis, otlp, &[]).await, base)
}

/// Settings every process of these tests gets, then `extra`.
fn envs(redis: &RedisServer, otlp: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        ("POSTBACK_REDIS_URL", redis.url()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RUST_LOG", "info".into()),
    ];
    envs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    envs
}

/// The ingest binary, once it is ready; returns it with its base URL.
async fn spawn_ingest(redis: &RedisServer, otlp: &str) -> (Running, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut ingest = Running::spawn(&ingest_bin(), &envs(redis, otlp, &[("POSTBACK_INGEST_ADDR", &addr)]));
    ingest.line("ingest listening").await;
    let base = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(format!("{base}/readyz")).await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(tokio::time::Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ingest, base)
}

/// A deliver binary with quick retries, `extra` settings on top.
async fn spawn_deliver(redis: &RedisServer, otlp: &str, extra: &[(&'static str, &str)]) -> Running {
    let mut settings = vec![
        ("POSTBACK_DELIVER_ADDR", "127.0.0.1:0"),
        ("POSTBACK_READ_BLOCK_MS", "200"),
        ("POSTBACK_ALLOW_PRIVATE_TARGETS", "true"),
        ("POSTBACK_RETRY_BASE_MS", "20"),
        ("POSTBACK_RETRY_MAX_MS", "100"),
    ];
    settings.extend_from_slice(extra);
    let mut deliver = Running::spawn(DELIVER, &envs(redis, otlp, &settings));
    deliver.line("worker started").await;
    deliver
}

fn of_kind<'a>(spans: &'a [ExportedSpan], service: &str, kind: i32) -> Vec<&'a ExportedSpan> {
    spans.iter().filter(|s| s.service == service && s.kind == kind).collect()
}

/// SIGTERM to both services, then each must exit 0 within `within`.
async fn stop_cleanly(services: [&mut Running; 2], within: Duration, what: &str) {
    for service in &services {
        service.signal("-TERM");
    }
    for service in services {
        let status = tokio::time::timeout(within, service.child.wait()).await.expect(what).expect("status");
        assert!(status.success(), "{status}");
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;

#[tokio::test]
async fn one_trace_holds_the_callers_span_ingest_and_every_attempt() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, n| Reply::status(if n == 0 { 503 } else { 200 })).await;
    let collector = Collector::start().await;
    let (mut ingest, mut deliver, base) = start(&redis, &collector.endpoint()).await;

    // The caller is traced too: its span is the root of the whole trace.
    let caller = TraceContext { trace_id: *b"caller-trace-id!", span_id: *b"caller-1", flags: 1 };
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{base}/v1/postbacks"))
        .header("traceparent", caller.traceparent())
        .body(seed_request(&format!("{}/t?m={{mascot}}", sink.base_url())).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("json");
    let id = body["ids"][0].as_str().expect("id").to_owned();
    sink.wait_for(2, WAIT).await;
    let line = deliver.line("delivery attempt").await;
    assert_eq!(line["trace_id"], caller.trace_id_hex(), "the attempt's log line names the trace: {line}");

    let spans = collector
        .wait_until(WAIT, |spans| {
            of_kind(spans, "postback-deliver", CLIENT).len() == 2
                && of_kind(spans, "postback-ingest", PRODUCER).len() == 1
                && of_kind(spans, "postback-ingest", SERVER).len() == 1
        })
        .await;
    assert!(spans.iter().all(|s| s.trace_id == caller.trace_id), "one trace: {spans:#?}");
    assert_eq!(spans.len(), 4, "only the request, postback and attempt spans are exported: {spans:#?}");

    let request = of_kind(&spans, "postback-ingest", SERVER);
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    assert_eq!(request.parent_span_id, caller.span_id, "ingest continues the caller's trace");
    assert_eq!(request.name, "POST /v1/postbacks");
    assert_eq!(request.attr("http.response.status_code"), "202");
    assert_eq!(request.attr("http.route"), "/v1/postbacks");

    let postback = of_kind(&spans, "postback-ingest", PRODUCER)[0];
    assert_eq!(postback.parent_span_id, request.span_id);
    assert_eq!(postback.attr("postback.id"), id);
    assert_eq!(postback.attr("messaging.destination.name"), "postbacks");

    let mut attempts = of_kind(&spans, "postback-deliver", CLIENT);
    attempts.sort_by_key(|s| s.attr("postback.attempt").to_owned());
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.parent_span_id, postback.span_id, "each attempt is a child of the postback span");
        assert_eq!(attempt.name, "GET");
        assert_eq!(attempt.attr("http.request.method"), "GET");
        assert_eq!(attempt.attr("postback.id"), id);
        assert_eq!(attempt.attr("postback.attempt"), (n + 1).to_string());
        assert_eq!(attempt.attr("url.full"), format!("{}/t?m=Gopher", sink.base_url()));
        assert_eq!(attempt.attr("server.address"), "127.0.0.1");
    }
    assert_eq!(attempts[0].attr("http.response.status_code"), "503");
    assert_eq!(attempts[0].attr("error.type"), "503");
    assert_eq!(attempts[0].status, 2, "a failed attempt is an error span");
    assert_eq!(attempts[1].attr("http.response.status_code"), "200");
    assert_ne!(attempts[1].status, 2);

    stop_cleanly([&mut ingest, &mut deliver], WAIT, "exits").await;
}

#[tokio::test]
async fn a_requests_postbacks_share_one_producer_span() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    let collector = Collector::start().await;
    let (mut ingest, mut deliver, base) = start(&redis, &collector.endpoint()).await;
    let data: Vec<_> = (0..3).map(|i| serde_json::json!({"i": i})).collect();
    let body = serde_json::json!({"endpoint": {"method": "GET", "url": format!("{}/m?i={{i}}", sink.base_url())}, "data": data});
    let response =
        reqwest::Client::new().post(format!("{base}/v1/postbacks")).body(body.to_string()).send().await.expect("post");
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("json");
    let mut ids: Vec<String> =
        body["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    sink.wait_for(3, WAIT).await;

    let spans = collector
        .wait_until(WAIT, |spans| {
            of_kind(spans, "postback-deliver", CLIENT).len() == 3
                && of_kind(spans, "postback-ingest", PRODUCER).len() == 1
        })
        .await;
    let producer = of_kind(&spans, "postback-ingest", PRODUCER)[0];
    assert_eq!(producer.attr("messaging.batch.message_count"), "3");
    assert_eq!(producer.attr("postback.id"), ids[0], "named by the first postback");
    let attempts = of_kind(&spans, "postback-deliver", CLIENT);
    assert!(attempts.iter().all(|a| a.parent_span_id == producer.span_id && a.trace_id == producer.trace_id));
    let mut attempted: Vec<String> = attempts.iter().map(|a| a.attr("postback.id").to_owned()).collect();
    attempted.sort();
    ids.sort();
    assert_eq!(attempted, ids, "one attempt span per postback");

    stop_cleanly([&mut ingest, &mut deliver], WAIT, "exits").await;
}

#[tokio::test]
async fn without_a_collector_delivery_goes_on_and_shutdown_is_prompt() {
    let redis = RedisServer::start();
    let sink = Sink::start().await;
    // Nothing listens there: every export fails.
    let (mut ingest, mut deliver, base) = start(&redis, &format!("http://127.0.0.1:{}", free_port())).await;
    let http = reqwest::Client::new();
    for n in 0..20 {
        let body = seed_request(&format!("{}/n{n}", sink.base_url())).to_string();
        let response = http.post(format!("{base}/ingest.php")).body(body).send().await.expect("post");
        assert_eq!(response.status(), 202);
    }
    assert_eq!(sink.wait_for(20, WAIT).await.len(), 20, "every postback delivered");
    stop_cleanly([&mut ingest, &mut deliver], Duration::from_secs(10), "exits although its last spans cannot be sent")
        .await;
}

#[tokio::test]
async fn a_postback_claimed_from_a_killed_worker_stays_in_its_trace() {
    let redis = RedisServer::start();
    // The first request hangs: the worker holding it is killed mid-attempt.
    let sink =
        Sink::start_with(
            |_, n| {
                if n == 0 { Reply::status(200).delay(Duration::from_secs(30)) } else { Reply::status(200) }
            },
        )
        .await;
    let collector = Collector::start().await;
    let (_ingest, base) = spawn_ingest(&redis, &collector.endpoint()).await;
    let slow = [("POSTBACK_HTTP_TIMEOUT_MS", "60000"), ("POSTBACK_CLAIM_IDLE_MS", "61000")];
    let mut doomed = spawn_deliver(&redis, &collector.endpoint(), &slow).await;
    let body = seed_request(&format!("{}/claimed", sink.base_url())).to_string();
    let response = reqwest::Client::new().post(format!("{base}/ingest.php")).body(body).send().await.expect("post");
    assert_eq!(response.status(), 202);
    sink.wait_for(1, WAIT).await;
    doomed.child.kill().await.expect("kill -9 the worker mid-attempt");

    let quick = [("POSTBACK_HTTP_TIMEOUT_MS", "500"), ("POSTBACK_CLAIM_IDLE_MS", "1000")];
    let _survivor = spawn_deliver(&redis, &collector.endpoint(), &quick).await;
    sink.wait_for(2, WAIT).await;
    let spans = collector
        .wait_until(WAIT, |spans| {
            !of_kind(spans, "postback-deliver", CLIENT).is_empty()
                && !of_kind(spans, "postback-ingest", PRODUCER).is_empty()
        })
        .await;
    let postback = of_kind(&spans, "postback-ingest", PRODUCER)[0];
    let attempts = of_kind(&spans, "postback-deliver", CLIENT);
    assert_eq!(attempts.len(), 1, "the killed worker's attempt never ended, so only the survivor's is exported");
    assert_eq!(attempts[0].trace_id, postback.trace_id, "the claimed postback stays in its trace");
    assert_eq!(attempts[0].parent_span_id, postback.span_id);
    assert_eq!(attempts[0].attr("http.response.status_code"), "200");
}
