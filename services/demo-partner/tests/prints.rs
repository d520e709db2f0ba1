//! The real binary prints what it receives and answers it.

#![allow(clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn prints_each_request_and_answers_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postback-demo-partner"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "--status", "202"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.contains("listening") && first.contains("202"), "{first}");

    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/postback?title=Gopher"))
        .header("x-postback-id", "0192-demo")
        .body(r#"{"mascot":"Gopher"}"#)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let mut printed = Vec::new();
    for line in lines.by_ref().take(20) {
        let line = line.expect("read");
        let body = line.contains("mascot");
        printed.push(line);
        if body {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = printed.join("\n");
    assert!(text.starts_with("==> POST /postback?title=Gopher (from 127.0.0.1:"), "{text}");
    assert!(text.contains("    x-postback-id: 0192-demo"), "{text}");
    assert!(text.contains(r#"    {"mascot":"Gopher"}"#), "{text}");
}
