//! The bare twins that give a run its ceilings: the least work that still
//! does the same job on the same Redis, sink and load.
//!
//! - `bare-ingest --redis URL`: answers 202 after one XADD of the raw body
//!   (no parsing, no validation, no script); the ids it returns are
//!   `<entry id>/<i>` for the `--items` postbacks of each request.
//!   Without `--redis` it answers 202 at once: the ceiling of an HTTP
//!   handler on this machine.
//! - `bare-deliver --redis URL`: XREADGROUP up to 256 entries, parse each
//!   body, send one GET per item to the URL before the template's `?`
//!   (with `X-Postback-Id` and the item's `ts` in `X-Bench-Ts`), then XACK
//!   and XDEL the batch in one pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

const FIELD: &str = "b";
const GROUP: &str = "bare";

struct Ingest {
    redis: Option<Client>,
    stream: String,
    items: usize,
}

/// Serves the bare handler on `addr` until `stop`.
pub async fn ingest(
    addr: SocketAddr,
    redis_url: Option<String>,
    stream: String,
    items: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let redis = match redis_url {
        Some(url) => {
            let client = Client::new(Config::from_url(&url)?, None, None, None);
            client.init().await?;
            Some(client)
        }
        None => None,
    };
    let state = Arc::new(Ingest { redis, stream, items });
    let app = Router::new().fallback(accept).with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}

async fn accept(State(state): State<Arc<Ingest>>, body: Bytes) -> impl IntoResponse {
    let Some(redis) = &state.redis else {
        return (StatusCode::ACCEPTED, r#"{"ids":[]}"#.to_owned());
    };
    let added: Result<String, _> = redis.xadd(&state.stream, false, None, "*", (FIELD, body)).await;
    match added {
        Ok(id) => {
            let ids: Vec<String> = (0..state.items).map(|i| format!("\"{id}/{i}\"")).collect();
            (StatusCode::ACCEPTED, format!(r#"{{"ids":[{}]}}"#, ids.join(",")))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct Request {
    endpoint: Endpoint,
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Endpoint {
    url: String,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    ts: u64,
}

/// Reads, sends and acknowledges until `stop`.
pub async fn deliver(
    redis_url: String,
    stream: String,
    concurrency: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let redis = Client::new(Config::from_url(&redis_url)?, None, None, None);
    redis.init().await?;
    let _: Result<(), _> = redis.xgroup_create(&stream, GROUP, "0", true).await;
    let http =
        reqwest::Client::builder().pool_max_idle_per_host(concurrency).timeout(Duration::from_secs(10)).build()?;
    let consumer = format!("bare-{}", std::process::id());
    while !stop.is_cancelled() {
        let read = redis.xreadgroup_map(GROUP, &consumer, Some(256), Some(2_000), false, &stream, ">");
        let reply: XReadResponse<String, String, String, Bytes> = tokio::select! {
            r = read => r?,
            _ = stop.cancelled() => break,
        };
        let entries: Vec<(String, Bytes)> =
            reply.into_values().flatten().filter_map(|(id, mut fields)| Some((id, fields.remove(FIELD)?))).collect();
        if entries.is_empty() {
            continue;
        }
        let sends = entries.iter().flat_map(|(id, body)| {
            let request: Option<Request> = serde_json::from_slice(body).ok();
            let (url, items) = match request {
                Some(r) => (r.endpoint.url.split('?').next().unwrap_or_default().to_owned(), r.data),
                None => (String::new(), Vec::new()),
            };
            let http = http.clone();
            items.into_iter().enumerate().map(move |(i, item)| {
                let request = http
                    .get(url.clone())
                    .header("x-postback-id", format!("{id}/{i}"))
                    .header("x-bench-ts", item.ts.to_string());
                async move { request.send().await.map(|r| r.status().is_success()).unwrap_or(false) }
            })
        });
        futures::stream::iter(sends).buffer_unordered(concurrency).for_each(|_| async {}).await;
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let pipeline = redis.pipeline();
        let _: () = pipeline.xack(&stream, GROUP, ids.clone()).await?;
        let _: () = pipeline.xdel(&stream, ids).await?;
        let _: Vec<Value> = pipeline.all().await?;
    }
    Ok(())
}
