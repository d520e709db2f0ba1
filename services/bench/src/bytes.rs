//! `postback-bench bytes`: what one postback costs in Redis, beside the
//! same postback as JSON, where it waits: in its stream entry, in the retry
//! schedule, and in the dead-letter stream. Three requests: the
//! specification's sample (one item), 100 items of the sample's shape, and
//! 100 items of five 8-character values with a 200-character URL template
//! (the shape that made retries expand most before compact retries).
//!
//! For each case, through the real ingest and deliver binaries:
//!
//! 1. **Entry**: queues the requests with no worker running and reads the
//!    memory (`MEMORY USAGE`, exact) of the stream and of the endpoint
//!    records and counts beside it, and the bytes ingest sent to Redis.
//! 2. **Retry**: starts one worker against a sink that answers 503, with a
//!    first retry ten minutes away, waits until every postback is in the
//!    retry schedule, and reads the memory of the schedule (its levels,
//!    index and count) and of the records.
//! 3. **Dead letter**: the same with one attempt allowed, so every
//!    postback is dead-lettered; the memory of the dead-letter stream and of
//!    the records.
//! 4. **Moved**: queues them again and lets one worker deliver them to a
//!    sink that answers 200, adding up the bytes Redis exchanged (reads,
//!    finishing steps, the delivery log).
//!
//! The endpoint keeps its template's exact length with the sink's address
//! in place of its host, so the figures are the request's to the byte and
//! no request leaves loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::redis::{Aof, Counters, RedisServer};
use crate::run::{Flavour, Queue, start_ingest, start_worker, start_worker_with, wait_delivered};
use crate::sink::{Sink, SinkOptions};

/// The sample's endpoint template; its host is swapped for the sink's.
const SAMPLE_URL: &str = "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}";

/// The sample's data item.
const SAMPLE_ITEM: &str = r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}"#;

/// One case's figures, per postback.
#[derive(Debug, Clone, Serialize)]
pub struct BytesCase {
    /// Which request.
    pub case: String,
    /// Postbacks measured.
    pub postbacks: u64,
    /// The postback as compact JSON: id, accepted_at_ms, method, url, data.
    pub json_bytes: f64,
    /// The MessagePack values stored in the entries, per postback.
    pub payload_bytes: f64,
    /// Memory per postback (`MEMORY USAGE`) of the stream, the endpoint
    /// records and their counts.
    pub stored_bytes: f64,
    /// stored / JSON.
    pub stored_ratio: f64,
    /// Memory per postback of the retry schedule and the records, once
    /// every postback waits there.
    pub retry_bytes: f64,
    /// retry / stored: what waiting for another attempt costs beside
    /// waiting for the first.
    pub retry_ratio: f64,
    /// Memory per postback of the dead-letter stream and the records,
    /// once every postback is dead-lettered.
    pub dead_bytes: f64,
    /// dead / stored.
    pub dead_ratio: f64,
    /// Network bytes between ingest and Redis, per postback.
    pub enqueue_net_bytes: f64,
    /// Network bytes between the worker and Redis, per delivered postback.
    pub deliver_net_bytes: f64,
    /// Everything moved through Redis / JSON.
    pub moved_ratio: f64,
    /// The target for stored / JSON.
    pub target_ratio: f64,
}

/// One request shape.
struct Shape {
    name: &'static str,
    items: usize,
    /// The template, its host to be replaced by the sink's.
    url: String,
    item: String,
    target_ratio: f64,
}

fn shapes() -> Vec<Shape> {
    // Five keys of 8-character values, and a template of 200 characters.
    let keys = ["a", "b", "c", "d", "e"];
    let query: Vec<String> = keys.iter().map(|k| format!("{k}={{{k}}}")).collect();
    let head = format!("http://sample_domain_endpoint.com/?{}&pad=", query.join("&"));
    let short_url = format!("{head}{}", "x".repeat(200 - head.len()));
    let short_item =
        format!("{{{}}}", keys.iter().map(|k| format!(r#""{k}":"{k}1234567""#)).collect::<Vec<_>>().join(","));
    vec![
        Shape {
            name: "seed sample (1 item)",
            items: 1,
            url: SAMPLE_URL.into(),
            item: SAMPLE_ITEM.into(),
            target_ratio: 0.5,
        },
        Shape {
            name: "100 items, sample shape",
            items: 100,
            url: SAMPLE_URL.into(),
            item: SAMPLE_ITEM.into(),
            target_ratio: 0.25,
        },
        Shape { name: "100 items, 5 short values", items: 100, url: short_url, item: short_item, target_ratio: 0.25 },
    ]
}

/// Measures every case with about `count` postbacks each.
pub async fn run(count: u64, logs: &Path) -> anyhow::Result<Vec<BytesCase>> {
    let redis = RedisServer::start(Aof::Off, logs).await?;
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let ok = Sink::start("127.0.0.1:0".parse()?, SinkOptions::default(), stop.clone()).await?;
    let failing = SinkOptions { fail_ratio: 1.0, ..SinkOptions::default() };
    let down = Sink::start("127.0.0.1:0".parse()?, failing, stop.clone()).await?;
    let client = redis.client().await?;
    let mut cases = Vec::new();
    for shape in shapes() {
        let requests = (count / shape.items as u64).max(1);
        cases.push(measure(&shape, requests, &redis, &client, (&ok, &down), logs).await?);
    }
    let _ = client.quit().await;
    Ok(cases)
}

/// The memory of `keys` (those that exist), exact.
async fn memory(client: &Client, keys: &[String]) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for key in keys {
        let usage: Option<u64> = client
            .custom(
                CustomCommand::new_static("MEMORY", ClusterHash::FirstKey, false),
                vec!["USAGE", key.as_str(), "SAMPLES", "0"],
            )
            .await?;
        total += usage.unwrap_or(0);
    }
    Ok(total)
}

/// The schedule's keys: its index, its count and each level.
async fn schedule_keys(client: &Client, keys: &postback_common::keys::Keys) -> anyhow::Result<Vec<String>> {
    let members: Vec<String> = client.zrange(&keys.schedule, 0, -1, None, false, None, false).await?;
    let mut out = vec![keys.schedule.clone(), keys.scheduled.clone()];
    for member in members {
        if let Some(delay) = postback_common::records::schedule::parse_member(member.as_bytes()) {
            out.push(postback_common::records::schedule::level_key(&keys.schedule, delay));
        }
    }
    Ok(out)
}

/// Waits until `done` says so (checked every 50 ms), or fails after `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !done().await? {
        anyhow::ensure!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn measure(
    shape: &Shape,
    requests: u64,
    redis: &RedisServer,
    client: &Client,
    (ok, down): (&Sink, &Sink),
    logs: &Path,
) -> anyhow::Result<BytesCase> {
    let url = redis.url();
    let queue = Queue { url: &url, partitions: 1 };
    let keys = postback_common::keys::Keys::default();
    let records = [keys.endpoints.clone(), keys.endpoint_refs.clone()];
    let (ingest, base) = start_ingest(Flavour::Ours, Some(queue), shape.items, 0, logs).await?;
    let body = |sink: &Sink| -> anyhow::Result<String> {
        let host = sink.base_url();
        let rest = shape.url.trim_start_matches("http://sample_domain_endpoint.com/");
        let padding = "http://sample_domain_endpoint.com".len().saturating_sub(host.len());
        let url = format!("{host}/{}{rest}", "x".repeat(padding));
        anyhow::ensure!(url.len() == shape.url.len(), "cannot keep the template's length with {host}");
        let data = vec![shape.item.as_str(); shape.items].join(",");
        Ok(format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{data}]}}"#))
    };
    let endpoint = format!("{base}/v1/postbacks");

    // 1. In the stream.
    let _: () = client.flushall(false).await?;
    let ids = send(&endpoint, &body(down)?, requests).await?;
    let postbacks = ids.len() as u64;
    anyhow::ensure!(postbacks == requests * shape.items as u64, "ingest accepted {postbacks} postbacks");
    let per = |bytes: u64| bytes as f64 / postbacks as f64;
    let stream_keys = [keys.stream.clone(), records[0].clone(), records[1].clone(), keys.batched.clone()];
    let stored_bytes = per(memory(client, &stream_keys).await?);
    let entries: Vec<(String, Vec<(String, bytes::Bytes)>)> = client.xrange(&keys.stream, "-", "+", None).await?;
    let payloads: Vec<&bytes::Bytes> =
        entries.iter().flat_map(|(_, f)| f.iter().filter(|(k, _)| k == "p").map(|(_, v)| v)).collect();
    anyhow::ensure!(!payloads.is_empty(), "no postback in the stream");
    let payload_bytes = per(payloads.iter().map(|p| p.len() as u64).sum());
    let in_stream = postback_common::entries::queued(client, &keys).await?;
    anyhow::ensure!(
        in_stream.len() as u64 == postbacks,
        "{} postbacks in the stream, not {postbacks}",
        in_stream.len()
    );
    let json_bytes = per(in_stream
        .iter()
        .map(|p| {
            let json = serde_json::json!({
                "id": p.id.to_string(),
                "accepted_at_ms": p.accepted_at_ms,
                "method": p.method.as_str(),
                "url": p.url,
                "data": p.data,
            });
            serde_json::to_vec(&json).map_or(0, |v| v.len() as u64)
        })
        .sum());

    // 2. In the retry schedule: a failing partner, the next attempt in ten
    // minutes.
    let slow_retries = [
        ("POSTBACK_RETRY_BASE_MS", "600000".to_owned()),
        ("POSTBACK_RETRY_MAX_MS", "600000".into()),
        ("POSTBACK_BREAKER_FAILURES", "0".into()),
    ];
    let worker = start_worker_with(Flavour::Ours, queue, 64, 0, &slow_retries, logs)?;
    until("every postback in the retry schedule", Duration::from_secs(120), || async {
        let scheduled: Option<u64> = client.get(&keys.scheduled).await?;
        let len: u64 = client.xlen(&keys.stream).await?;
        Ok(scheduled == Some(postbacks) && len == 0)
    })
    .await?;
    worker.stop(Duration::from_secs(10))?;
    let mut retry_keys = schedule_keys(client, &keys).await?;
    retry_keys.extend(records.iter().cloned());
    let retry_bytes = per(memory(client, &retry_keys).await?);

    // 3. In the dead-letter stream: queued again, one attempt allowed.
    let _: () = client.flushall(false).await?;
    send(&endpoint, &body(down)?, requests).await?;
    let one_attempt = [("POSTBACK_MAX_ATTEMPTS", "1".to_owned()), ("POSTBACK_BREAKER_FAILURES", "0".into())];
    let worker = start_worker_with(Flavour::Ours, queue, 64, 0, &one_attempt, logs)?;
    until("every postback dead-lettered", Duration::from_secs(120), || async {
        let dead: u64 = client.xlen(&keys.dead).await?;
        Ok(dead == postbacks)
    })
    .await?;
    worker.stop(Duration::from_secs(10))?;
    let dead_keys = [keys.dead.clone(), records[0].clone(), records[1].clone()];
    let dead_bytes = per(memory(client, &dead_keys).await?);

    // 4. Delivered: the bytes moved.
    let _: () = client.flushall(false).await?;
    ok.reset();
    let start = Counters::read(client).await?;
    let ids = send(&endpoint, &body(ok)?, requests).await?;
    let queued = Counters::read(client).await?;
    let worker = start_worker(Flavour::Ours, queue, 64, 0, logs)?;
    wait_delivered(ok, &ids, Duration::from_secs(60)).await?;
    // Let the finishing steps and the delivery log land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = Counters::read(client).await?;
    worker.stop(Duration::from_secs(10))?;
    ingest.stop(Duration::from_secs(10))?;

    let enqueue = start.until(&queued);
    let deliver = queued.until(&delivered);
    let (enqueue_net_bytes, deliver_net_bytes) =
        (per(enqueue.net_in + enqueue.net_out), per(deliver.net_in + deliver.net_out));
    Ok(BytesCase {
        case: shape.name.into(),
        postbacks,
        json_bytes,
        payload_bytes,
        stored_bytes,
        stored_ratio: stored_bytes / json_bytes,
        retry_bytes,
        retry_ratio: retry_bytes / stored_bytes,
        dead_bytes,
        dead_ratio: dead_bytes / stored_bytes,
        enqueue_net_bytes,
        deliver_net_bytes,
        moved_ratio: (enqueue_net_bytes + deliver_net_bytes) / json_bytes,
        target_ratio: shape.target_ratio,
    })
}

/// Sends `body` `requests` times, 8 at a time; the accepted ids.
async fn send(url: &str, body: &str, requests: u64) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut sent = 0;
    while sent < requests {
        let batch = (requests - sent).min(8);
        let answers = futures::future::join_all((0..batch).map(|_| http.post(url).body(body.to_owned()).send())).await;
        for answer in answers {
            let answer = answer?;
            anyhow::ensure!(answer.status() == reqwest::StatusCode::ACCEPTED, "ingest answered {}", answer.status());
            let json: serde_json::Value = answer.json().await?;
            ids.extend(json["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        sent += batch;
    }
    Ok(ids)
}

/// The cases as a table.
pub fn text(cases: &[BytesCase]) -> String {
    let mut out = String::from(
        "bytes per postback              JSON  payload  entry (÷JSON, target)  retry (÷entry)  dead letter (÷entry)  moved: enqueue + deliver (÷JSON)\n",
    );
    for c in cases {
        out += &format!(
            "{:<30} {:>5.0}  {:>7.0}  {:>5.0} ({:.2}, ≤ {:.2})     {:>5.0} ({:.2})    {:>5.0} ({:.2})          {:.0} + {:.0} ({:.2})\n",
            c.case,
            c.json_bytes,
            c.payload_bytes,
            c.stored_bytes,
            c.stored_ratio,
            c.target_ratio,
            c.retry_bytes,
            c.retry_ratio,
            c.dead_bytes,
            c.dead_ratio,
            c.enqueue_net_bytes,
            c.deliver_net_bytes,
            c.moved_ratio
        );
    }
    out
}
