//! `postback-bench load`: drives an ingest URL with postback requests.
//!
//! At a fixed rate (open loop: requests start on schedule whether or not
//! earlier ones have answered; latency counts from the moment a request was
//! due to go, including any wait for a free in-flight slot, so a stall of
//! the service is not hidden, but not the load generator's own timer
//! granularity) or at a fixed concurrency (closed loop: N
//! requests always in flight), for a duration or a number of requests, each
//! with K data items. Every item carries `ts`, microseconds since the epoch
//! when its request was sent, which the sink turns into end-to-end latency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::latency::{Latency, Percentiles};

/// How hard to push.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Requests per second, open loop.
    Rate(f64),
    /// Requests in flight, closed loop.
    Concurrency(usize),
}

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests.
    Count(u64),
}

/// A load to generate.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The ingest endpoint, e.g. `http://127.0.0.1:8080/v1/postbacks`.
    pub url: String,
    /// More ingest endpoints: requests go to `url` and these in turn.
    pub also: Vec<String>,
    /// Where the postbacks should go: the sink's base URL.
    pub target: String,
    /// Data items per request.
    pub items: usize,
    /// Rate or concurrency.
    pub pace: Pace,
    /// Duration or count.
    pub stop: Stop,
    /// A bearer token for ingest, if it wants one.
    pub token: Option<String>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// What the load did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 202.
    pub accepted_requests: u64,
    /// Postbacks in the 202 answers.
    pub accepted_postbacks: u64,
    /// Requests answered otherwise, or not at all.
    pub failed_requests: u64,
    /// From the first request to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Accepted requests per second.
    pub requests_per_s: f64,
    /// Accepted postbacks per second.
    pub postbacks_per_s: f64,
    /// Time to answer, every request.
    pub latency: Percentiles,
    /// The ids of every accepted postback (left out of the JSON report).
    #[serde(skip)]
    pub ids: Vec<String>,
}

/// The request body for `items` items sent now, postbacks to `target`.
pub fn body(target: &str, items: usize) -> String {
    let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    let mut body = format!(
        r#"{{"endpoint":{{"method":"GET","url":"{target}/postback?title={{mascot}}&image={{location}}&ts={{ts}}"}},"data":["#
    );
    for i in 0..items {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png","ts":{ts}}}"#
        ));
    }
    body.push_str("]}");
    body
}

#[derive(Default)]
struct Tally {
    latency: Latency,
    report: LoadReport,
    last_answer: Option<Instant>,
}

/// Runs the load; returns when every request has been answered.
pub async fn run(options: &LoadOptions) -> anyhow::Result<LoadReport> {
    let in_flight = match options.pace {
        Pace::Concurrency(n) => n,
        Pace::Rate(r) => (r as usize).clamp(64, 16_384),
    };
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(in_flight).timeout(Duration::from_secs(30)).build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let progress = progress_bar(options);
    let started = Instant::now();
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let send = {
        let (client, tally, progress, options) = (client.clone(), tally.clone(), progress.clone(), options.clone());
        move |scheduled: Instant| {
            let (client, tally, progress, options) = (client.clone(), tally.clone(), progress.clone(), options.clone());
            let n = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (1 + options.also.len());
            async move {
                let url = if n == 0 { &options.url } else { &options.also[n - 1] };
                let outcome = send_one(&client, &options, url).await;
                let took = scheduled.elapsed();
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                t.latency.record(took);
                t.last_answer = Some(Instant::now());
                t.report.requests += 1;
                match outcome {
                    Some(ids) => {
                        t.report.accepted_requests += 1;
                        t.report.accepted_postbacks += ids.len() as u64;
                        t.report.ids.extend(ids);
                    }
                    None => t.report.failed_requests += 1,
                }
                progress.inc(1);
            }
        }
    };
    let done = |sent: u64| match options.stop {
        Stop::After(d) => started.elapsed() >= d,
        Stop::Count(n) => sent >= n,
    };
    match options.pace {
        Pace::Concurrency(n) => {
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let workers: Vec<_> = (0..n)
                .map(|_| {
                    let (send, sent) = (send.clone(), sent.clone());
                    let stop = options.stop;
                    tokio::spawn(async move {
                        loop {
                            let number = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let over = match stop {
                                Stop::After(d) => started.elapsed() >= d,
                                Stop::Count(n) => number >= n,
                            };
                            if over {
                                break;
                            }
                            send(Instant::now()).await;
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await?;
            }
        }
        Pace::Rate(rate) => {
            let slots = Arc::new(Semaphore::new(in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            let mut sent = 0u64;
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            while !done(sent) {
                let due = started + interval.mul_f64(sent as f64);
                tokio::time::sleep_until(due.into()).await;
                // The timer fires up to a millisecond late: start the clock
                // when it does, before waiting for an in-flight slot.
                let scheduled = Instant::now();
                let permit = slots.clone().acquire_owned().await?;
                let send = send.clone();
                tasks.spawn(async move {
                    send(scheduled).await;
                    drop(permit);
                });
                sent += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    progress.finish_and_clear();
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let elapsed = t.last_answer.map_or(started.elapsed(), |at| at.duration_since(started)).as_secs_f64();
    let mut report = std::mem::take(&mut t.report);
    report.elapsed_s = elapsed;
    report.requests_per_s = report.accepted_requests as f64 / elapsed.max(1e-9);
    report.postbacks_per_s = report.accepted_postbacks as f64 / elapsed.max(1e-9);
    report.latency = t.latency.percentiles();
    Ok(report)
}

/// Sends one request; the accepted ids on a 202.
async fn send_one(client: &reqwest::Client, options: &LoadOptions, url: &str) -> Option<Vec<String>> {
    let mut request =
        client.post(url).header("content-type", "application/json").body(body(&options.target, options.items));
    if let Some(token) = &options.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return None;
    }
    #[derive(Deserialize)]
    struct Accepted {
        #[serde(default)]
        ids: Vec<String>,
    }
    let accepted: Accepted = response.json().await.ok()?;
    Some(accepted.ids)
}

fn progress_bar(options: &LoadOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = match options.stop {
        Stop::Count(n) => ProgressBar::new(n),
        Stop::After(_) => ProgressBar::no_length(),
    };
    let template = match options.stop {
        Stop::Count(_) => "{elapsed_precise} [{bar:30}] {pos}/{len} requests ({per_sec})",
        Stop::After(_) => "{elapsed_precise} {spinner} {pos} requests ({per_sec})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_requests_with_a_ts_per_item() {
        let text = body("http://127.0.0.1:9", 3);
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["data"].as_array().map(Vec::len), Some(3));
        assert!(json["data"][2]["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000_000));
        assert!(json["endpoint"]["url"].as_str().is_some_and(|u| u.ends_with("&ts={ts}")));
    }
}
