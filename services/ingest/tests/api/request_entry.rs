//! Wire version 3 as ingest writes it: one entry per request, the endpoint
//! record once in its hash, counted, and the backlog still in postbacks.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::records::request::{self as request_entry, Endpoint};

use crate::helpers::{TestApp, accepted_ids as ids, problem};

fn request(items: usize) -> String {
    let item = r#"{"mascot":"Gopher","n":1}"#;
    format!(
        r#"{{"endpoint":{{"method":"POST","url":"http://h.example/{{mascot}}"}},"data":[{}]}}"#,
        vec![item; items].join(",")
    )
}

#[tokio::test]
async fn a_request_is_one_entry_and_its_endpoint_is_stored_once() {
    let app = TestApp::spawn().await;
    let keys = Keys::default();
    let first = ids(app.post_json(&request(3)).await).await;
    let second = ids(app.post_json(&request(2)).await).await;

    let client = app.redis.client().await;
    let entries: Vec<(String, Vec<(String, Bytes)>)> =
        client.xrange(&keys.stream, "-", "+", None).await.expect("XRANGE");
    assert_eq!(entries.len(), 2, "one entry per request");
    assert_eq!(entries.iter().map(|(_, f)| request_entry::postbacks_in(&f[0].1)).collect::<Vec<_>>(), [3, 2]);
    let records: Vec<(String, Bytes)> = client.hgetall(&keys.endpoints).await.expect("HGETALL");
    assert_eq!(records.len(), 1, "both requests share one record");
    let (address, record) = &records[0];
    assert_eq!(*address, Endpoint::reference(record).to_string());
    let endpoint = Endpoint::decode(record).expect("record");
    assert_eq!(
        (endpoint.url.as_str(), &endpoint.keys[..]),
        ("http://h.example/{mascot}", &["mascot".to_owned(), "n".to_owned()][..])
    );
    let count: i64 = client.hget(&keys.endpoint_refs, address).await.expect("HGET");
    assert_eq!(count, 2, "one reference per entry");
    let batched: i64 = client.get(&keys.batched).await.expect("GET");
    assert_eq!(batched, (3 - 1) + (2 - 1));

    let queued = app.queued().await;
    let queued_ids: Vec<String> = queued.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(queued_ids, [first, second].concat(), "the 202's ids, in order");
    for p in &queued {
        assert_eq!(p.id.get_version_num(), 7);
        assert_eq!(request_entry::timestamp_ms(p.id), p.accepted_at_ms, "the id holds the acceptance time");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_backlog_counts_postbacks_not_entries() {
    let app = TestApp::spawn_with(|c| c.max_backlog = 5).await;
    ids(app.post_json(&request(4)).await).await;
    ids(app.post_json(&request(1)).await).await;
    let refused = app.post_json(&request(1)).await;
    assert_eq!(refused.status(), 503, "4 + 1 postbacks fill a backlog of 5 held in 2 entries");
    assert_eq!(problem(refused).await["type"], "/problems/backlog-full");
    assert_eq!(app.queued().await.len(), 5, "nothing of the refused request was written");
    app.stop().await;
}

#[tokio::test]
async fn another_record_under_the_same_address_falls_back_to_single_postbacks() {
    let app = TestApp::spawn().await;
    let keys = Keys::default();
    let endpoint = Endpoint {
        method: postback_common::Method::Post,
        url: "http://h.example/{mascot}".into(),
        keys: vec!["mascot".into(), "n".into()],
        delivery: None,
    };
    let address = Endpoint::reference(&endpoint.encode()).to_string();
    let client = app.redis.client().await;
    let _: i64 = client.hset(&keys.endpoints, (address.as_str(), "not this record")).await.expect("HSET");

    let accepted = ids(app.post_json(&request(2)).await).await;
    let entries: Vec<(String, Vec<(String, Bytes)>)> =
        client.xrange(&keys.stream, "-", "+", None).await.expect("XRANGE");
    assert_eq!(entries.len(), 2, "one single postback per item");
    assert!(entries.iter().all(|(_, f)| f[0].1[1] == 1), "version 1 entries carry their endpoint");
    let kept: String = client.hget(&keys.endpoints, &address).await.expect("HGET");
    assert_eq!(kept, "not this record", "the stored record is left alone");
    let counted: Option<i64> = client.hget(&keys.endpoint_refs, &address).await.expect("HGET");
    assert_eq!(counted, None);
    let queued: Vec<String> = app.queued().await.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(queued, accepted);
    app.stop().await;
}
