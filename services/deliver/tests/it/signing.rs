//! Signed postbacks: a receiver that verifies Standard Webhooks signatures
//! on its own (HMAC-SHA256 of `id.timestamp.body` with each key) accepts
//! what deliver sends to a listed target, and an unlisted target gets no
//! signature at all.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use postback_testkit::{Reply, Sink};
use serde_json::json;
use sha2::Sha256;

use crate::helpers::{Pipeline, WAIT};

/// Whether `signatures` (the header's space-separated list) holds a valid
/// `v1` signature of `id.timestamp.body` under `key`.
fn verifies(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signatures.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[tokio::test]
async fn listed_targets_get_verifiable_signatures_one_per_key() {
    let unsigned = Sink::start_on("127.0.0.2", |_, _| Reply::status(200)).await;
    let sink = Sink::start().await;
    let (old_key, new_key) = (b"the key being retired".to_vec(), b"the key taking over".to_vec());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signing-keys");
    let line = format!("{} whsec_{} whsec_{}\n", sink.addr(), STANDARD.encode(&old_key), STANDARD.encode(&new_key));
    std::fs::write(&file, format!("# partner, keys in rotation\n{line}")).expect("write keys");
    let p =
        Pipeline::start_on(postback_testkit::RedisServer::start(), sink, |c| c.signing_keys_file = Some(file)).await;

    let post =
        json!({"endpoint": {"method": "POST", "url": p.target("/signed")}, "data": [{"amount": 12.5, "note": "é"}]});
    let get = json!({"endpoint": {"method": "GET", "url": p.target("/signed?x={x}")}, "data": [{"x": 1}]});
    let elsewhere =
        json!({"endpoint": {"method": "GET", "url": format!("{}/plain", unsigned.base_url())}, "data": [{}]});
    for body in [&post, &get, &elsewhere] {
        p.ingest(body).await;
    }
    let received = p.sink.wait_for(2, WAIT).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    for request in &received {
        let header =
            |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let (id, timestamp, signatures) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        assert_eq!(id, request.postback_id().expect("x-postback-id"), "webhook-id is the postback id");
        let at: u64 = timestamp.parse().expect("Unix seconds");
        assert!(now.abs_diff(at) < 60, "timestamp {at}, now {now}");
        assert_eq!(signatures.split(' ').count(), 2, "one signature per key: {signatures}");
        for key in [&old_key, &new_key] {
            assert!(verifies(key, &id, &timestamp, &request.body, &signatures), "{signatures} for {request:?}");
        }
        assert!(!verifies(b"some other key", &id, &timestamp, &request.body, &signatures));
    }
    assert!(received.iter().any(|r| r.method == "POST" && !r.body.is_empty()), "a body was signed");
    assert!(received.iter().any(|r| r.method == "GET" && r.body.is_empty()), "an empty body was signed");

    let plain = unsigned.wait_for(1, WAIT).await;
    assert!(plain[0].headers.keys().all(|k| !k.as_str().starts_with("webhook-")), "{:?}", plain[0].headers);
}
