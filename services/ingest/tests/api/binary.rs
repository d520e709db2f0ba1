//! The real `postback-ingest` binary: bad settings and signals.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::SEED;

const BIN: &str = env!("CARGO_BIN_EXE_postback-ingest");

#[test]
fn a_bad_setting_names_its_variable_and_exits_non_zero() {
    postback_testkit::assert_bad_settings_are_named(
        BIN,
        &[
            ("POSTBACK_MAX_BODY_BYTES", "lots"),
            ("POSTBACK_INGEST_ADDR", "localhost"),
            ("POSTBACK_REDIS_URL", "http://127.0.0.1:6379"),
            ("POSTBACK_REDIS_TIMEOUT_MS", "0"),
        ],
    );
}

#[test]
fn help_lists_every_setting() {
    let output = Command::new(BIN).arg("--help").output().expect("run binary");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for var in
        ["POSTBACK_REDIS_URL", "POSTBACK_STREAM", "POSTBACK_GROUP", "POSTBACK_INGEST_ADDR", "POSTBACK_MAX_BODY_BYTES"]
    {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

#[tokio::test]
async fn sigterm_stops_it_cleanly() {
    let redis = postback_testkit::RedisServer::start();
    let port = postback_testkit::free_port();
    let mut child = tokio::process::Command::new(BIN)
        .env("POSTBACK_REDIS_URL", redis.url())
        .env("POSTBACK_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "binary never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http.post(format!("{base}/ingest.php")).body(SEED).send().await.expect("send").status(), 202);
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0));
}
