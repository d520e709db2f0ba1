//! `postback-bench bytes`: what one postback costs in Redis, beside the
//! same postback as JSON, for the specification's sample request and for a
//! 100-item request sharing one endpoint.
//!
//! For each case it queues requests through the real ingest with no worker
//! running and reads the memory (`MEMORY USAGE`, exact) of the stream and
//! of the endpoint records beside it, and the bytes ingest sent to Redis; then starts one real worker, lets it deliver
//! everything to the sink, and adds the bytes Redis exchanged for that
//! (reads, acknowledgements, the delivery log). The endpoint keeps the
//! sample's exact length with the sink's address in place of its host, so
//! the figures are the sample's to the byte and no request leaves loopback.

use std::path::Path;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::redis::{Aof, Counters, RedisServer};
use crate::run::{Flavour, Queue, start_ingest, start_worker, wait_delivered};
use crate::sink::{Sink, SinkOptions};

/// The sample's endpoint template; its host is swapped for the sink's.
const SAMPLE_URL: &str = "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}";

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
    /// Network bytes between ingest and Redis, per postback.
    pub enqueue_net_bytes: f64,
    /// Network bytes between the worker and Redis, per postback.
    pub deliver_net_bytes: f64,
    /// Everything moved through Redis / JSON.
    pub moved_ratio: f64,
    /// The target for stored / JSON.
    pub target_ratio: f64,
}

/// Measures both cases with `count` postbacks each.
pub async fn run(count: u64, logs: &Path) -> anyhow::Result<Vec<BytesCase>> {
    let redis = RedisServer::start(Aof::Off, logs).await?;
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let sink = Sink::start("127.0.0.1:0".parse()?, SinkOptions::default(), stop.clone()).await?;
    let client = redis.client().await?;
    let mut cases = Vec::new();
    for (name, items, target) in [("seed sample (1 item)", 1usize, 0.5), ("100-item request, one endpoint", 100, 0.25)]
    {
        let _: () = client.flushall(false).await?;
        sink.reset();
        let requests = (count / items as u64).max(1);
        cases.push(measure(name, items, requests, target, &redis, &client, &sink, logs).await?);
    }
    let _ = client.quit().await;
    Ok(cases)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    name: &str,
    items: usize,
    requests: u64,
    target_ratio: f64,
    redis: &RedisServer,
    client: &Client,
    sink: &Sink,
    logs: &Path,
) -> anyhow::Result<BytesCase> {
    let url = redis.url();
    let queue = Queue { url: &url, partitions: 1 };
    let (ingest, base) = start_ingest(Flavour::Ours, Some(queue), items, logs).await?;
    let host = sink.base_url();
    let padding = "http://sample_domain_endpoint.com".len().saturating_sub(host.len());
    let url = format!(
        "{host}/{}{}",
        "x".repeat(padding),
        SAMPLE_URL.trim_start_matches("http://sample_domain_endpoint.com/")
    );
    anyhow::ensure!(url.len() == SAMPLE_URL.len(), "cannot keep the sample URL's length with {host}");
    let item = r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}"#;
    let body = format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{}]}}"#, vec![item; items].join(","));
    let start = Counters::read(client).await?;
    let ids = send(&format!("{base}/v1/postbacks"), &body, requests).await?;
    let queued = Counters::read(client).await?;
    let postbacks = ids.len() as u64;
    anyhow::ensure!(postbacks == requests * items as u64, "ingest accepted {postbacks} postbacks");
    let keys = postback_common::keys::Keys::default();
    // The stream and what version 3 entries keep beside it: the endpoint
    // records, their counts and the batched count.
    let mut memory = 0u64;
    for key in [&keys.stream, &keys.endpoints, &keys.endpoint_refs, &keys.batched] {
        let usage: Option<u64> = client
            .custom(
                CustomCommand::new_static("MEMORY", ClusterHash::FirstKey, false),
                vec!["USAGE", key.as_str(), "SAMPLES", "0"],
            )
            .await?;
        memory += usage.unwrap_or(0);
    }
    let entries: Vec<(String, Vec<(String, bytes::Bytes)>)> = client.xrange(&keys.stream, "-", "+", None).await?;
    let payloads: Vec<&bytes::Bytes> =
        entries.iter().flat_map(|(_, f)| f.iter().filter(|(k, _)| k == "p").map(|(_, v)| v)).collect();
    anyhow::ensure!(!payloads.is_empty(), "no postback in the stream");
    let payload_bytes = payloads.iter().map(|p| p.len()).sum::<usize>() as f64 / postbacks as f64;
    let in_stream = postback_common::entries::queued(client, &keys).await?;
    anyhow::ensure!(
        in_stream.len() as u64 == postbacks,
        "{} postbacks in the stream, not {postbacks}",
        in_stream.len()
    );
    let json_bytes = in_stream
        .iter()
        .map(|p| {
            let json = serde_json::json!({
                "id": p.id.to_string(),
                "accepted_at_ms": p.accepted_at_ms,
                "method": p.method.as_str(),
                "url": p.url,
                "data": p.data,
            });
            serde_json::to_vec(&json).map_or(0, |v| v.len())
        })
        .sum::<usize>() as f64
        / postbacks as f64;

    let worker = start_worker(Flavour::Ours, queue, 64, 0, logs)?;
    wait_delivered(sink, &ids, Duration::from_secs(60)).await?;
    // Let the acknowledgements and the delivery log land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = Counters::read(client).await?;
    worker.stop(Duration::from_secs(10))?;
    ingest.stop(Duration::from_secs(10))?;

    let enqueue = start.until(&queued);
    let deliver = queued.until(&delivered);
    let per = |bytes: u64| bytes as f64 / postbacks as f64;
    let stored_bytes = memory as f64 / postbacks as f64;
    let (enqueue_net_bytes, deliver_net_bytes) =
        (per(enqueue.net_in + enqueue.net_out), per(deliver.net_in + deliver.net_out));
    Ok(BytesCase {
        case: name.into(),
        postbacks,
        json_bytes,
        payload_bytes,
        stored_bytes,
        stored_ratio: stored_bytes / json_bytes,
        enqueue_net_bytes,
        deliver_net_bytes,
        moved_ratio: (enqueue_net_bytes + deliver_net_bytes) / json_bytes,
        target_ratio,
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
        "case                            JSON  payload  stored (÷JSON, target)  moved: enqueue + deliver (÷JSON)\n",
    );
    for c in cases {
        out += &format!(
            "{:<30} {:>5.0}  {:>7.0}  {:>6.0} ({:.2}, ≤ {:.2})      {:.0} + {:.0} ({:.2})\n",
            c.case,
            c.json_bytes,
            c.payload_bytes,
            c.stored_bytes,
            c.stored_ratio,
            c.target_ratio,
            c.enqueue_net_bytes,
            c.deliver_net_bytes,
            c.moved_ratio
        );
    }
    out
}
