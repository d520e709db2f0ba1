//! Hostile clients against the real binary: requests built to blow up
//! validation, connections that stall, bodies that trickle, callers over
//! their rate. Timings are measured on the real process over loopback.

use std::time::{Duration, Instant};

use postback_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A client that gives up after 10 s, so a broken server fails a test
/// instead of hanging it.
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
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
    let http = client();
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

/// Opens a connection that sends a request line and one header, then
/// nothing more.
async fn stalled(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(b"POST /v1/postbacks HTTP/1.1\r\nHost: ingest\r\n").await.expect("write");
    stream
}

/// Waits until the server closes `stream` (EOF or reset), at most `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test]
async fn stalled_clients_are_cut_off_while_others_are_served() {
    let redis = RedisServer::start();
    let ingest = Process::spawn(&redis, &[("POSTBACK_HEADER_TIMEOUT_MS", "1000")]).await;
    let started = Instant::now();
    let mut stalled_clients = Vec::new();
    for _ in 0..300 {
        stalled_clients.push(stalled(ingest.port).await);
    }
    let (status, took) = post(&client(), &ingest.base, SEED.to_owned()).await;
    assert_eq!(status, 202);
    println!("a normal request beside 300 stalled connections answered in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for (i, stream) in stalled_clients.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(started.elapsed());
        assert!(closed_within(stream, left).await, "stalled connection {i} still open after {:?}", started.elapsed());
    }
    println!("all 300 stalled connections closed {:?} after they opened", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the header timeout");
}

#[tokio::test]
async fn a_trickled_body_gets_408_when_its_time_is_up() {
    let redis = RedisServer::start();
    let ingest = Process::spawn(&redis, &[("POSTBACK_BODY_TIMEOUT_MS", "1000")]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", ingest.port)).await.expect("connect");
    let head = format!("POST /v1/postbacks HTTP/1.1\r\nHost: ingest\r\nContent-Length: {}\r\n\r\n", SEED.len());
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let (reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in SEED.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer = answer_of(reader).await;
    println!("answered after {:?}: {answer}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("/problems/body-timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    trickle.abort();
    assert!(!redis_has_stream(&redis).await, "nothing queued");
}

#[tokio::test]
async fn sigterm_with_a_client_trickling_a_body_exits_within_the_grace() {
    let redis = RedisServer::start();
    let mut ingest = Process::spawn(&redis, &[("POSTBACK_SHUTDOWN_GRACE_MS", "1000")]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", ingest.port)).await.expect("connect");
    stream
        .write_all(b"POST /v1/postbacks HTTP/1.1\r\nHost: ingest\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .expect("head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    ingest.terminate();
    let status = ingest.exit_within(Duration::from_secs(5)).await;
    println!("exited {:?} after SIGTERM", started.elapsed());
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(900), "the grace was not given");
    assert!(closed_within(&mut stream, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn connections_past_the_cap_wait_their_turn() {
    let redis = RedisServer::start();
    let ingest =
        Process::spawn(&redis, &[("POSTBACK_MAX_CONNECTIONS", "20"), ("POSTBACK_HEADER_TIMEOUT_MS", "1500")]).await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(stalled(ingest.port).await);
    }
    // The 21st and later connections are accepted by the kernel and wait;
    // a request behind them is served once the stalled ones time out.
    let (status, took) = post(&client(), &ingest.base, SEED.to_owned()).await;
    println!("a request behind 40 stalled connections (cap 20) answered after {took:?}");
    assert_eq!(status, 202);
    assert!(took >= Duration::from_millis(1_000), "it did not wait: {took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// Everything the server sends until it closes the connection, at most
/// 5 s.
async fn answer_of(mut from: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), from.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn redis_has_stream(redis: &RedisServer) -> bool {
    use fred::prelude::KeysInterface;
    redis.client().await.exists::<u32, _>("postbacks").await.expect("EXISTS") == 1
}

#[tokio::test]
async fn a_request_head_with_too_many_header_lines_gets_431() {
    let redis = RedisServer::start();
    let ingest = Process::spawn(&redis, &[]).await;
    for (lines, size) in [(65, 10), (10, 2_000)] {
        let mut stream = TcpStream::connect(("127.0.0.1", ingest.port)).await.expect("connect");
        let mut head = String::from("POST /v1/postbacks HTTP/1.1\r\nHost: ingest\r\n");
        for i in 0..lines {
            head.push_str(&format!("x-filler-{i}: {}\r\n", "v".repeat(size)));
        }
        head.push_str("Content-Length: 2\r\n\r\n{}");
        stream.write_all(head.as_bytes()).await.expect("write");
        let answer = answer_of(stream).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{lines} lines of {size} bytes: {answer}");
    }
    assert!(!redis_has_stream(&redis).await, "nothing queued");
}
