//! What arrives at the target: exact URLs, bodies and headers.

use serde_json::json;

use crate::helpers::{Pipeline, WAIT, seed_request};

#[tokio::test]
async fn seed_sample_arrives_exactly() {
    let p = Pipeline::start().await;
    let ids = p.ingest(&seed_request(&p.target("/data?title={mascot}&image={location}&foo={bar}"))).await;
    let got = p.sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo=");
    assert_eq!(r.postback_id(), Some(ids[0].as_str()));
    assert!(r.body.is_empty(), "GET sends no body");
    assert!(r.headers.get("content-type").is_none());
    p.wait_drained().await;
    p.stop().await;
}

#[tokio::test]
async fn one_request_per_item() {
    let p = Pipeline::start().await;
    let ids = p
        .ingest(&json!({
            "endpoint": {"method": "get", "url": p.target("/i?n={n}")},
            "data": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}]
        }))
        .await;
    let got = p.sink.wait_for(5, WAIT).await;
    let mut targets: Vec<_> = got.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, ["/i?n=1", "/i?n=2", "/i?n=3", "/i?n=4", "/i?n=5"]);
    let mut seen: Vec<_> = got.iter().map(|r| r.postback_id().expect("id").to_owned()).collect();
    let mut sent = ids.clone();
    seen.sort();
    sent.sort();
    assert_eq!(seen, sent, "each postback once, with its own id");
    p.wait_drained().await;
}

#[tokio::test]
async fn post_sends_the_data_object_as_json() {
    let p = Pipeline::start().await;
    // A raw body: json! would sort the keys before ingest ever saw them.
    let url = p.target("/hook?m={mascot}");
    p.ingest(format!(
        r#"{{"endpoint":{{"method":"POST","url":"{url}"}},"data":[{{"mascot":"Gopher","n":7,"x":1.5,"ok":true,"none":null,"s":"é"}}]}}"#
    ))
    .await;
    let r = p.sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/hook?m=Gopher");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        std::str::from_utf8(&r.body).expect("utf8"),
        r#"{"mascot":"Gopher","n":7,"x":1.5,"ok":true,"none":null,"s":"é"}"#,
        "same keys, same order, same kinds"
    );
}

#[tokio::test]
async fn unmatched_keys_get_the_configured_default() {
    let p =
        Pipeline::start_with(|_, _| postback_testkit::Reply::status(200), |c| c.unmatched_default = "n/a".into()).await;
    p.ingest(&json!({
        "endpoint": {"method": "GET", "url": p.target("/d?a={a}&b={missing}&c={nil}")},
        "data": [{"a": "x", "nil": null}]
    }))
    .await;
    let r = p.sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(r.target, "/d?a=x&b=n%2Fa&c=n%2Fa");
}

#[tokio::test]
async fn values_are_percent_encoded_per_rfc_3986() {
    let p = Pipeline::start().await;
    p.ingest(&json!({
        "endpoint": {"method": "GET", "url": p.target("/e?v={v}&u={u}")},
        "data": [{"v": "a b&c=d+e#f/g?h%i", "u": "Ünïcödé ☃ ~-._"}]
    }))
    .await;
    let r = p.sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(r.target, "/e?v=a%20b%26c%3Dd%2Be%23f%2Fg%3Fh%25i&u=%C3%9Cn%C3%AFc%C3%B6d%C3%A9%20%E2%98%83%20~-._");
}

#[tokio::test]
async fn numbers_booleans_and_repeated_placeholders() {
    let p = Pipeline::start().await;
    p.ingest(&json!({
        "endpoint": {"method": "GET", "url": p.target("/n/{i}/{i}?i={i}&f={f}&neg={neg}&t={t}&b={b}&big={big}")},
        "data": [{"i": 42, "f": 0.5, "neg": -3, "t": true, "b": false, "big": 18446744073709551615u64}]
    }))
    .await;
    let r = p.sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(r.target, "/n/42/42?i=42&f=0.5&neg=-3&t=true&b=false&big=18446744073709551615");
}

#[tokio::test]
async fn put_patch_and_delete() {
    let p = Pipeline::start().await;
    for method in ["PUT", "PATCH", "DELETE"] {
        p.ingest(&json!({"endpoint": {"method": method, "url": p.target("/m")}, "data": [{"k": method}]})).await;
    }
    let got = p.sink.wait_for(3, WAIT).await;
    for r in got {
        if r.method == "DELETE" {
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.body, format!(r#"{{"k":"{}"}}"#, r.method).as_bytes().to_vec());
        }
    }
}

#[tokio::test]
async fn every_attempt_is_written_to_the_delivery_log_stream() {
    let p = Pipeline::start_with(|_, n| postback_testkit::Reply::status(if n == 0 { 503 } else { 200 }), |_| {}).await;
    let ids = p.ingest(&seed_request(&p.target("/logged"))).await;
    p.sink.wait_for(2, WAIT).await;
    p.wait_drained().await;
    let client = p.redis.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let entries: Vec<(String, Vec<(bytes::Bytes, bytes::Bytes)>)> =
            fred::prelude::StreamsInterface::xrange(&client, "postbacks:log", "-", "+", None).await.expect("XRANGE");
        let attempts: Vec<postback_common::records::log_entry::LogEntry> = entries
            .iter()
            .flat_map(|(_, fields)| {
                postback_common::records::log_entry::LogEntry::from_entry(
                    fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
                )
            })
            .collect();
        if attempts.len() == 2 {
            assert!(attempts.iter().all(|a| a.postback_id == ids[0]));
            assert_eq!(attempts[0].outcome, "retry");
            assert_eq!(attempts[0].status, Some(503));
            assert_eq!(attempts[1].attempt, 2);
            assert_eq!(attempts[1].outcome, "delivered");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "log holds {attempts:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
