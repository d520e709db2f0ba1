//! Per-caller rate limits: one budget in Redis shared by every ingest
//! process, 429 with Retry-After and RateLimit-* headers over it, nothing
//! queued for a refused request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postback_testkit::RedisServer;
use serde_json::json;

use crate::helpers::{Process, SECRET_HASH, SEED, TestApp, problem};

#[tokio::test]
async fn two_ingest_processes_share_one_callers_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# partner, 20 postbacks a second\n{SECRET_HASH} 20\n")).expect("write");
    let tokens = tokens.to_str().expect("utf-8 path");
    let redis = RedisServer::start();
    let env = [("POSTBACK_INGEST_TOKENS_FILE", tokens)];
    let bases = Arc::new([Process::spawn(&redis, &env).await, Process::spawn(&redis, &env).await].map(|p| p));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");

    let (accepted, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (http, bases, accepted, limited) = (http.clone(), bases.clone(), accepted.clone(), limited.clone());
            tokio::spawn(async move {
                let mut i = n;
                while started.elapsed() < run_for {
                    let base = &bases[i % 2].base;
                    i += 1;
                    let response = http
                        .post(format!("{base}/v1/postbacks"))
                        .bearer_auth("secret")
                        .body(SEED)
                        .send()
                        .await
                        .expect("send");
                    match response.status().as_u16() {
                        202 => {
                            assert_eq!(response.headers()["ratelimit-limit"], "20");
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            let headers = response.headers().clone();
                            assert_eq!(headers["retry-after"], "1");
                            assert_eq!(headers["ratelimit-policy"], "20;w=1");
                            assert_eq!(headers["ratelimit-remaining"], "0");
                            assert_eq!(problem(response).await["type"], "/problems/rate-limited");
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (accepted, limited) = (accepted.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    // The burst (one second's worth), then 20 a second.
    let allowed = 20.0 + 20.0 * elapsed;
    println!("{accepted} accepted and {limited} limited in {elapsed:.2} s; the rate allows {allowed:.0}");
    assert!(limited > accepted, "the clients did push past the rate");
    let ratio = accepted as f64 / allowed;
    assert!((0.9..=1.1).contains(&ratio), "{accepted} accepted where {allowed:.0} were allowed");

    use fred::prelude::StreamsInterface;
    let queued: u64 = redis.client().await.xlen("postbacks").await.expect("XLEN");
    assert_eq!(queued, accepted as u64, "a refused request queues nothing");
}

#[tokio::test]
async fn the_global_rate_counts_postbacks_and_lets_a_big_request_through_a_whole_budget() {
    let app =
        TestApp::spawn_with(|c| c.ingest_rate = Some(postback_ingest::rate::Rate::parse("5").expect("rate"))).await;
    let request = |n: usize| {
        let data: Vec<_> = (0..n).map(|i| json!({ "n": i })).collect();
        json!({"endpoint": {"method": "GET", "url": "http://h.example/{n}"}, "data": data}).to_string()
    };
    let first = app.post_json(&request(3)).await;
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["ratelimit-remaining"], "2");

    let second = app.post_json(&request(3)).await;
    assert_eq!(second.status(), 429);
    let reset: u64 = second.headers()["ratelimit-reset"].to_str().expect("ascii").parse().expect("seconds");
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(problem(second).await["type"], "/problems/rate-limited");
    assert_eq!(app.queued().await.len(), 3);

    // Larger than the burst of 5: it passes once the budget is whole, and
    // the following seconds pay for it.
    tokio::time::sleep(Duration::from_secs(reset)).await;
    let big = app.post_json(&request(12)).await;
    assert_eq!(big.status(), 202);
    let after = app.post_json(&request(1)).await;
    assert_eq!(after.status(), 429);
    // 12 × 0.2 s owed, less the 1 s burst, for one more postback: 1.6 s.
    assert_eq!(after.headers()["retry-after"], "2");
    assert_eq!(app.queued().await.len(), 15);

    let metrics =
        app.http.get(format!("{}/metrics", app.base)).send().await.expect("scrape").text().await.expect("text");
    assert_eq!(
        postback_testkit::metric(&metrics, "postback_ingest_rate_checks_total", &[("outcome", "allowed")]),
        Some(2.0)
    );
    assert_eq!(
        postback_testkit::metric(&metrics, "postback_ingest_rate_checks_total", &[("outcome", "limited")]),
        Some(2.0)
    );
}
