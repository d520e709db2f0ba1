//! Requests that wait for Redis together share one script call, and each
//! still gets its own answer: queued, replayed, refused as a reused key, or
//! sent again as single postbacks after an address collision.

use std::collections::HashSet;

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::records::request::{self as request_entry, Endpoint};

use crate::helpers::{TestApp, accepted_ids as ids};

fn request(url: &str, items: usize) -> String {
    let data = vec![r#"{"mascot":"Gopher"}"#; items].join(",");
    format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{data}]}}"#)
}

/// Where ingest stores the record of a GET to `url` with one key, mascot.
fn address_of(url: &str) -> String {
    let endpoint =
        Endpoint { method: postback_common::Method::Get, url: url.into(), keys: vec!["mascot".into()], delivery: None };
    Endpoint::reference(&endpoint.encode()).to_string()
}

async fn evalsha_calls(client: &Client) -> u64 {
    let info: String = client.info(Some(fred::types::InfoKind::CommandStats)).await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("calls"))
}

#[tokio::test]
async fn requests_waiting_together_share_one_call_and_each_gets_its_own_answer() {
    let app = TestApp::spawn().await;
    let keys = Keys::default();
    let client = app.redis.client().await;
    let shared = "http://h.example/{mascot}";
    let keyed = |body: String| {
        app.http
            .post(format!("{}/v1/postbacks", app.base))
            .header("content-type", "application/json")
            .header("idempotency-key", "order-1")
            .body(body)
            .send()
    };
    let first = ids(keyed(request(shared, 2)).await.expect("send")).await;
    // An address taken by another record: that request goes as singles.
    let clashing = "http://clash.example/{mascot}";
    let address = address_of(clashing);
    let _: i64 = client.hset(&keys.endpoints, (address.as_str(), "another record")).await.expect("HSET");

    // Writes wait in Redis while the requests arrive: the first call holds
    // one request, the next all the others.
    let before = evalsha_calls(&client).await;
    let _: () = client.custom(fred::cmd!("CLIENT"), vec!["PAUSE", "1000", "WRITE"]).await.expect("CLIENT PAUSE");
    let (three, two) = (request(shared, 3), request(clashing, 2));
    let plain = futures::future::join_all((0..20).map(|_| app.post_json(&three)));
    let replays = futures::future::join_all((0..3).map(|_| keyed(request(shared, 2))));
    let (plain, replays, reused, clash) = tokio::join!(plain, replays, keyed(request(shared, 5)), app.post_json(&two));

    let mut accepted = HashSet::new();
    for response in plain {
        let given = ids(response).await;
        assert_eq!(given.len(), 3);
        accepted.extend(given);
    }
    assert_eq!(accepted.len(), 60, "every request its own ids");
    for response in replays {
        let response = response.expect("send");
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        assert_eq!(ids(response).await, first, "a replay answers the first request's ids");
    }
    assert_eq!(reused.expect("send").status(), 422, "the key was used for another body");
    let clashed = ids(clash).await;
    let calls = evalsha_calls(&client).await - before;
    assert!(calls <= 3, "26 requests in {calls} calls (one alone, the rest together, the singles)");

    let entries: Vec<(String, Vec<(String, Bytes)>)> =
        client.xrange(&keys.stream, "-", "+", None).await.expect("XRANGE");
    let in_stream: Vec<usize> = entries.iter().map(|(_, f)| request_entry::postbacks_in(&f[0].1)).collect();
    assert_eq!(in_stream.len(), 1 + 20 + 2, "the first keyed request, the twenty, two singles");
    assert_eq!(in_stream.iter().sum::<usize>(), 2 + 60 + 2);
    let queued: HashSet<String> = app.queued().await.iter().map(|p| p.id.to_string()).collect();
    assert!(queued.is_superset(&accepted) && queued.contains(&first[0]) && queued.contains(&clashed[1]));
    let shared_address = address_of(shared);
    let refs: i64 = client.hget(&keys.endpoint_refs, &shared_address).await.expect("HGET");
    assert_eq!(refs, 21, "one reference per entry, added once per call");
    let batched: i64 = client.get(&keys.batched).await.expect("GET");
    assert_eq!(batched, 1 + 20 * 2, "postbacks beyond one per entry");
    let kept: String = client.hget(&keys.endpoints, &address).await.expect("HGET");
    assert_eq!(kept, "another record", "the clashing record is left alone");
    app.stop().await;
}
