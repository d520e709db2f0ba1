//! The real `postback-ingest` binary: bad settings and signals.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{Process, SEED};

const BIN: &str = Process::BIN;

#[test]
fn a_bad_setting_names_its_variable_and_exits_non_zero() {
    postback_testkit::assert_bad_settings_are_named(
        BIN,
        &[
            ("POSTBACK_MAX_BODY_BYTES", "lots"),
            ("POSTBACK_INGEST_ADDR", "localhost"),
            ("POSTBACK_REDIS_URL", "http://127.0.0.1:6379"),
            ("POSTBACK_REDIS_TIMEOUT_MS", "0"),
            ("POSTBACK_INGEST_TOKENS_FILE", "/nonexistent/tokens"),
            ("POSTBACK_MAX_ITEMS", "0"),
            ("POSTBACK_HEADER_TIMEOUT_MS", "0"),
            ("POSTBACK_MAX_CONNECTIONS", "none"),
            ("POSTBACK_REDIS_MEMORY_LIMIT_PERCENT", "101"),
            ("POSTBACK_INGEST_RATE", "0"),
        ],
    );
}

#[test]
fn help_lists_every_setting() {
    let output = Command::new(BIN).arg("--help").output().expect("run binary");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for var in ["POSTBACK_REDIS_URL", "POSTBACK_STREAM", "POSTBACK_INGEST_ADDR", "POSTBACK_MAX_BODY_BYTES"] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    // Only what ingest uses: the group and the dead letters are deliver's.
    for var in ["POSTBACK_GROUP", "POSTBACK_DEAD_STREAM", "POSTBACK_DELIVER_ADDR", "POSTBACK_CONSUMER"] {
        assert!(!help.contains(var), "{var} is in ingest's --help");
    }
}

/// With `rediss://` the binary reaches Redis over TLS, checking the
/// server's certificate against the authorities it is given.
#[tokio::test]
async fn it_queues_over_tls() {
    let tls = postback_testkit::TlsRedis::start();
    let ca = tls.ca_file().display().to_string();
    let ingest = Process::spawn(&tls.server, &[("POSTBACK_REDIS_URL", &tls.url()), ("SSL_CERT_FILE", &ca)]).await;
    let http = reqwest::Client::new();
    assert_eq!(http.post(format!("{}/ingest.php", ingest.base)).body(SEED).send().await.expect("send").status(), 202);
    let length: u64 =
        fred::prelude::StreamsInterface::xlen(&tls.server.client().await, "postbacks").await.expect("XLEN");
    assert_eq!(length, 1);
}

#[tokio::test]
async fn sigterm_stops_it_cleanly() {
    let redis = postback_testkit::RedisServer::start();
    let mut ingest = Process::spawn(&redis, &[]).await;
    let http = reqwest::Client::new();
    assert_eq!(http.post(format!("{}/ingest.php", ingest.base)).body(SEED).send().await.expect("send").status(), 202);
    ingest.terminate();
    assert_eq!(ingest.exit_within(Duration::from_secs(10)).await.code(), Some(0));
}

/// Fault-injection case 2, ingest side: SIGTERM while requests pour in.
/// Every request ends in a 202 or an error, and every 202's postbacks are in
/// Redis.
#[tokio::test]
async fn sigterm_under_load_never_acknowledges_what_is_not_in_redis() {
    let redis = postback_testkit::RedisServer::start();
    let mut ingest = Process::spawn(&redis, &[]).await;
    let base = ingest.base.clone();
    let http = reqwest::Client::new();
    // Four clients sending as fast as they can.
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, base) = (http.clone(), base.clone());
        load.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let body = r#"{"endpoint":{"method":"GET","url":"http://h/{a}"},"data":[{"a":1},{"a":2},{"a":3}]}"#;
            let stop = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < stop {
                match http.post(format!("{base}/ingest.php")).body(body).send().await {
                    Ok(r) if r.status() == 202 => {
                        let json: serde_json::Value = r.json().await.expect("202 body");
                        accepted.extend(
                            json["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()),
                        );
                    }
                    Ok(r) => assert!(r.status().is_server_error(), "unexpected {}", r.status()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await, // refused once stopped
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ingest.terminate();
    assert_eq!(ingest.exit_within(Duration::from_secs(10)).await.code(), Some(0));
    let mut accepted = Vec::new();
    for task in load {
        accepted.extend(task.await.expect("load task"));
    }
    assert!(!accepted.is_empty(), "the load got some 202s before the signal");

    let client = redis.client().await;
    let queued = postback_common::entries::queued(&client, &postback_common::keys::Keys::default()).await;
    let stored: std::collections::HashSet<String> =
        queued.expect("entries decode").iter().map(|p| p.id.to_string()).collect();
    let missing: Vec<_> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged postbacks are not in Redis", missing.len(), accepted.len());
    println!("{} postbacks acknowledged, all in Redis ({} stored)", accepted.len(), stored.len());
}

#[tokio::test]
async fn a_redis_without_maxmemory_is_called_out_at_start() {
    use tokio::io::AsyncBufReadExt;
    let redis = postback_testkit::RedisServer::start();
    let mut child = tokio::process::Command::new(BIN)
        .env("POSTBACK_REDIS_URL", redis.url())
        .env("POSTBACK_INGEST_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("Redis has no maxmemory") && line.contains("POSTBACK_REDIS_MEMORY_LIMIT_PERCENT") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found.ok(), Some(true), "no warning about maxmemory");
}
