//! The route out: proxy variables in the environment are ignored, and with
//! POSTBACK_EGRESS_PROXY every attempt goes to that proxy only after
//! deliver has checked the target itself. The proxy is a recording one on
//! loopback that forwards nothing.

use std::time::Duration;

use postback_testkit::{RecordingProxy, RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, Pipeline, Running, WAIT, deliver_env, enqueue, wait_dead};

#[tokio::test]
async fn through_the_proxy_private_targets_never_reach_it_and_allowed_ones_do() {
    let proxy = RecordingProxy::redirecting("/redirect", "http://127.0.0.1:9/secret").await;
    // Named `localhost`: the proxy's own address is exempt from the guard.
    let proxy_url = format!("http://localhost:{}", proxy.addr().port());
    let p = Pipeline::start_with(
        |_, _| Reply::status(200),
        move |c| {
            c.allow_private_targets = false;
            c.target_allow = postback_deliver::AllowList::parse("partner.example").expect("allow list");
            c.egress_proxy = Some(proxy_url.parse().expect("proxy url"));
        },
    )
    .await;
    let refused = [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://localhost:9/x",
    ];
    for url in refused {
        p.ingest(&json!({"endpoint": {"method": "GET", "url": url}, "data": [{}]})).await;
    }
    let ids = p
        .ingest(
            &json!({"endpoint": {"method": "GET", "url": "http://partner.example/ok?v={v}"}, "data": [{"v": "a b"}]}),
        )
        .await;
    p.ingest(&json!({"endpoint": {"method": "GET", "url": "http://partner.example/redirect"}, "data": [{}]})).await;

    let dead = wait_dead(&p.redis, refused.len() + 1).await;
    for letter in &dead {
        assert!(letter["reason"].starts_with("refused: "), "{letter:?}");
    }
    assert!(dead.iter().any(|d| d["reason"].contains("localhost is 127.0.0.1")), "{dead:?}");
    assert!(dead.iter().any(|d| d["reason"].contains("169.254.169.254") && d["reason"].contains("link-local")));
    p.wait_drained().await;

    let mut seen = proxy.seen();
    // Two entries, delivered side by side: in either order.
    seen.sort_by(|a, b| a.request_line.cmp(&b.request_line));
    let lines: Vec<&str> = seen.iter().map(|r| r.request_line.as_str()).collect();
    assert_eq!(
        lines,
        ["GET http://partner.example/ok?v=a%20b HTTP/1.1", "GET http://partner.example/redirect HTTP/1.1"],
        "only the allowed target reached the proxy, in absolute form; the redirect to loopback was not followed"
    );
    assert_eq!(seen[0].header("host"), Some("partner.example"));
    assert_eq!(seen[0].header("x-postback-id"), Some(ids[0].as_str()));
}

#[tokio::test]
async fn proxy_variables_in_the_environment_are_ignored() {
    let redis = RedisServer::start();
    let proxy = RecordingProxy::start().await;
    let sink = Sink::start_with(|_, _| Reply::status(200)).await;
    let mut proxies = vec![("NO_PROXY", String::new()), ("no_proxy", String::new())];
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        proxies.push((name, proxy.url()));
    }
    let mut deliver = Running::spawn(DELIVER_BIN, &deliver_env(&redis, &proxies));
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": sink.base_url()}, "data": [{}]})).await;
    let line = deliver.line("delivery attempt").await;
    assert_eq!(line["postback_id"], ids[0]);
    assert_eq!(line["status"], 200);
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1, "delivered straight to the target");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(proxy.seen().is_empty(), "the proxy from the environment was used: {:?}", proxy.seen());
}

#[tokio::test]
async fn through_the_proxy_one_deadline_bounds_the_whole_attempt_and_no_live_attempt_is_claimed() {
    // Each hop answers after 1 s: the redirect, then the page it points
    // to. With 1.5 s for the attempt, the second hop is cut off at 1.5 s,
    // not given 1.5 s of its own; so the attempt ends before the 2 s claim
    // idle and the worker's own claim pass never takes it back.
    let redis = RedisServer::start();
    let proxy = RecordingProxy::redirecting("/redir", "http://partner.example/landed").await;
    proxy.answer_after(Duration::from_secs(1));
    let envs = deliver_env(
        &redis,
        &[
            ("POSTBACK_EGRESS_PROXY", format!("http://localhost:{}", proxy.addr().port())),
            ("POSTBACK_ALLOW_PRIVATE_TARGETS", "false".into()),
            ("POSTBACK_TARGET_ALLOW", "partner.example".into()),
            ("POSTBACK_HTTP_TIMEOUT_MS", "1500".into()),
            ("POSTBACK_CLAIM_IDLE_MS", "2000".into()),
            ("POSTBACK_RETRY_BASE_MS", "60000".into()),
        ],
    );
    let mut deliver = Running::spawn(DELIVER_BIN, &envs);
    let data: Vec<_> = (0..5).map(|i| json!({"i": i})).collect();
    let ids = enqueue(
        &redis,
        json!({"endpoint": {"method": "GET", "url": "http://partner.example/redir?i={i}"}, "data": data}),
    )
    .await;
    let mut seen_ids = Vec::new();
    for _ in 0..5 {
        let line = deliver.line("delivery attempt").await;
        let took = line["response_time_ms"].as_u64().expect("response_time_ms");
        assert!((1_450..1_900).contains(&took), "the attempt ran {took} ms, not its 1500 ms: {line}");
        assert!(line["error"].as_str().is_some_and(|e| e.contains("timeout")), "{line}");
        assert_eq!(line["attempt"], 1, "{line}");
        seen_ids.push(line["postback_id"].as_str().expect("id").to_owned());
    }
    seen_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen_ids, want);
    // Well past two claim idles: nothing was sent again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lines: Vec<String> = proxy.seen().into_iter().map(|r| r.request_line).collect();
    let first_hops = lines.iter().filter(|l| l.contains("/redir")).count();
    let second_hops = lines.iter().filter(|l| l.contains("/landed")).count();
    assert_eq!((first_hops, second_hops), (5, 5), "each postback attempted once: {lines:?}");
    assert_eq!(redis.scheduled_postbacks().await.len(), 5, "all five wait for their retry");
}
