//! Hostile clients against the real binary: requests built to blow up
//! validation, connections that stall, bodies that trickle, callers over
//! their rate. Timings are measured on the real process over loopback.

use std::time::{Duration, Instant};

use postback_testkit::RedisServer;

use crate::helpers::{Process, SEED};

/// The request of issue 12: a URL template of 2,720 `{a}` and 240 items
/// whose value is 4,096 `&` (each `&` expands to `%26`): just under 1 MiB,
/// which expanded naively is 33 MB per item.
fn hostile_request() -> String {
    let url = format!("http://h.example/?{}", "{a}".repeat(2_720));
    let item = format!(r#"{{"a":"{}"}}"#, "&".repeat(4_096));
    let body = format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{}]}}"#, vec![item; 240].join(","));
    assert!(body.len() < 1 << 20, "{} bytes", body.len());
    body
}

async fn post(http: &reqwest::Client, base: &str, body: String) -> (u16, Duration) {
    let started = Instant::now();
    let response = http.post(format!("{base}/v1/postbacks")).body(body).send().await.expect("send");
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, started.elapsed())
}

#[tokio::test]
async fn a_request_built_to_blow_up_expansion_is_refused_at_once() {
    let redis = RedisServer::start();
    let ingest = Process::spawn(&redis, &[]).await;
    let http = reqwest::Client::new();
    let hostile = hostile_request();
    // Warm the connection pool and the process.
    assert_eq!(post(&http, &ingest.base, SEED.to_owned()).await.0, 202);

    let mut alone = Vec::new();
    for _ in 0..5 {
        let (status, took) = post(&http, &ingest.base, hostile.clone()).await;
        assert_eq!(status, 400);
        alone.push(took);
    }
    alone.sort();
    let median = alone[alone.len() / 2];
    println!("hostile request refused in {median:?} (median of 5; all {alone:?})");
    assert!(median < Duration::from_millis(50), "refusing a 1 MiB request took {median:?}");

    // Four of them arriving together do not hold up a normal request.
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (http, base, body) = (http.clone(), ingest.base.clone(), hostile.clone());
            tokio::spawn(async move { post(&http, &base, body).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, took) = post(&http, &ingest.base, SEED.to_owned()).await;
    assert_eq!(status, 202);
    println!("a normal request among four hostile ones answered in {took:?}");
    assert!(took < Duration::from_millis(100), "normal request took {took:?}");
    for attacker in attackers {
        assert_eq!(attacker.await.expect("attacker").0, 400);
    }
}
