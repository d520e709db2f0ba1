//! `postback-bench run`: the whole pipeline on this machine, and its
//! ceilings, in one run.
//!
//! 1. Starts a redis-server of its own (AOF as asked), or a cluster of
//!    `--cluster N` primaries, and the sink.
//! 2. Pipeline: starts `postback-ingest`; queues `--fill` requests with no
//!    worker running and reads the stream's memory (bytes per stored
//!    postback); starts N `postback-deliver` workers and lets them drain
//!    that; then, with the sink's counts reset, runs the load, waits until
//!    every accepted postback has arrived (or the drain timeout), and reads
//!    Redis's counters and each process's CPU and peak RSS.
//! 3. Bare pipeline: the same with `bare-ingest` and `bare-deliver`
//!    (see [`crate::bare`]) on the same Redis (flushed), sink and load.
//! 4. Ceilings: the bare handler without Redis under the same load, and
//!    the same HTTP client sending straight to the sink.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::load::{self, LoadOptions, LoadReport, Pace, Stop};
use crate::process::{Process, Usage, free_port, sibling, wait_ready};
use crate::redis::{Aof, Redis};
use crate::report::{Ceilings, CommandCost, Machine, PipelineFigures, ProcessFigures, Ratio, RedisFigures, RunReport};
use crate::sink::{Sink, SinkOptions};
use postback_common::keys::Partitions;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Load pace.
    pub pace: Pace,
    /// Load length.
    pub stop: Stop,
    /// Data items per request.
    pub items: usize,
    /// Delivery worker processes.
    pub workers: usize,
    /// Ingest processes (ours; the bare pipeline runs one).
    pub ingests: usize,
    /// `POSTBACK_DELIVER_CONCURRENCY` (and the bare worker's).
    pub deliver_concurrency: usize,
    /// Redis persistence.
    pub aof: Aof,
    /// `POSTBACK_PARTITIONS` for ingest and the workers.
    pub partitions: u32,
    /// Primaries of a Redis Cluster to run on; 0 for one plain server.
    pub cluster: usize,
    /// Requests queued with no worker running, to measure stored bytes.
    pub fill: u64,
    /// Longest wait for the last deliveries after the load.
    pub drain_timeout: Duration,
    /// Measure the bare pipeline and the ceilings too.
    pub ceilings: bool,
    /// How the sink answers.
    pub sink: SinkOptions,
    /// Keep the processes' logs here (else a temporary directory).
    pub logs: Option<PathBuf>,
    /// Progress bars on stderr.
    pub progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// postback-ingest and postback-deliver.
    Ours,
    /// bare-ingest and bare-deliver.
    Bare,
}

/// Runs everything and returns the report.
pub async fn run(options: &RunOptions) -> anyhow::Result<RunReport> {
    let temp = tempfile::tempdir()?;
    let logs = options.logs.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&logs)?;
    let redis = Redis::start(options.aof, options.cluster, &logs).await?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let sink = Sink::start("127.0.0.1:0".parse()?, options.sink, stop.clone()).await?;
    let client = redis.client().await?;
    let machine = machine(&client).await;

    eprintln!("==> pipeline: postback-ingest + {} postback-deliver", options.workers);
    let pipeline = measure(options, Flavour::Ours, &redis, &client, &sink, &logs).await?;
    let (mut bare, mut ceilings) = (None, None);
    if options.ceilings {
        redis.flush().await?;
        sink.reset();
        eprintln!("==> bare pipeline: bare-ingest + {} bare-deliver", options.workers);
        bare = Some(measure(options, Flavour::Bare, &redis, &client, &sink, &logs).await?);
        sink.reset();
        eprintln!("==> ceilings: bare HTTP handler, bare client");
        ceilings = Some(measure_ceilings(options, &sink, &logs).await?);
    }
    let mut ratios = Vec::new();
    let mut costs = Vec::new();
    if let Some(b) = &bare {
        costs.push(Ratio::new("Redis CPU µs", pipeline.redis.cpu_us_per_postback, b.redis.cpu_us_per_postback));
        costs.push(Ratio::new(
            "Redis commands (scripts' included)",
            pipeline.redis.commands_per_postback,
            b.redis.commands_per_postback,
        ));
        costs.push(Ratio::new(
            "total CPU µs (services and Redis)",
            pipeline.total_cpu_us_per_postback(),
            b.total_cpu_us_per_postback(),
        ));
        ratios.push(Ratio::new("postbacks/s delivered vs bare pipeline", pipeline.delivered_per_s, b.delivered_per_s));
        ratios.push(Ratio::new(
            "requests/s accepted vs bare pipeline",
            pipeline.load.requests_per_s,
            b.load.requests_per_s,
        ));
    }
    if let Some(c) = &ceilings {
        ratios.push(Ratio::new(
            "requests/s accepted vs bare HTTP handler",
            pipeline.load.requests_per_s,
            c.http_handler_requests_per_s,
        ));
        ratios.push(Ratio::new(
            "postbacks/s delivered vs bare client",
            pipeline.delivered_per_s,
            c.client_requests_per_s,
        ));
    }
    let _ = client.quit().await;
    redis.stop();
    Ok(RunReport {
        machine,
        settings: json!({
            "pace": format!("{:?}", options.pace),
            "stop": format!("{:?}", options.stop),
            "items": options.items,
            "workers": options.workers,
            "deliver_concurrency": options.deliver_concurrency,
            "aof": options.aof,
            "partitions": options.partitions,
            "ingests": options.ingests,
            "cluster_primaries": options.cluster,
            "sink_latency_ms": options.sink.latency.as_millis() as u64,
            "sink_fail_ratio": options.sink.fail_ratio,
        }),
        pipeline,
        bare_pipeline: bare,
        ceilings,
        ratios,
        costs,
    })
}

/// One pipeline, fill to last delivery.
async fn measure(
    options: &RunOptions,
    flavour: Flavour,
    redis: &Redis,
    client: &Client,
    sink: &Sink,
    logs: &Path,
) -> anyhow::Result<PipelineFigures> {
    let url = redis.url();
    let with = Queue { url: &url, partitions: options.partitions };
    let (ingest, base) = start_ingest(flavour, Some(with), options.items, 0, logs).await?;
    let url = if flavour == Flavour::Ours { format!("{base}/v1/postbacks") } else { format!("{base}/") };
    let mut more_ingests = Vec::new();
    let mut also = Vec::new();
    if flavour == Flavour::Ours {
        for i in 1..options.ingests {
            let (process, base) = start_ingest(flavour, Some(with), options.items, i, logs).await?;
            more_ingests.push(process);
            also.push(format!("{base}/v1/postbacks"));
        }
    }
    let load_options = |pace, stop| LoadOptions {
        url: url.clone(),
        also: also.clone(),
        target: sink.base_url(),
        items: options.items,
        pace,
        stop,
        token: None,
        progress: options.progress,
    };

    // Stored bytes: queue with no worker, read the stream's memory.
    let fill =
        load::run(&LoadOptions { progress: false, ..load_options(Pace::Concurrency(16), Stop::Count(options.fill)) })
            .await?;
    anyhow::ensure!(
        fill.accepted_postbacks > 0,
        "ingest accepted nothing during the fill (see the logs in {})",
        logs.display()
    );
    let streams: Vec<String> = if flavour == Flavour::Ours {
        let partitions = Partitions::new("postbacks", "deliver", None, options.partitions, redis.is_cluster());
        partitions.all().iter().map(|keys| keys.stream.clone()).collect()
    } else {
        vec!["bare".into()]
    };
    let mut memory = 0u64;
    for stream in &streams {
        let slot = ClusterHash::Custom(fred::util::redis_keyslot(stream.as_bytes()));
        let usage: Option<u64> = client
            .custom(CustomCommand::new_static("MEMORY", slot, false), vec!["USAGE", stream, "SAMPLES", "0"])
            .await?;
        memory += usage.unwrap_or(0);
    }
    let stored_bytes_per_postback = memory as f64 / fill.accepted_postbacks as f64;

    let workers = (0..options.workers)
        .map(|i| start_worker(flavour, with, options.deliver_concurrency, i, logs))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_delivered(sink, &fill.ids, options.drain_timeout).await?;
    sink.reset();

    let mut processes: Vec<&Process> = vec![&ingest];
    processes.extend(more_ingests.iter());
    processes.extend(workers.iter());
    processes.extend(redis.nodes.iter().map(|node| &node.process));
    let before_usage = usages(&processes)?;
    let before = redis.counters().await?;
    let started = Instant::now();
    let load = load::run(&load_options(options.pace, options.stop)).await?;
    let load_end = Instant::now();
    let _ = wait_delivered(sink, &load.ids, options.drain_timeout).await;
    let after = redis.counters().await?;
    let after_usage = usages(&processes)?;

    let stats = sink.stats();
    let lost = sink.missing(&load.ids).len() as u64;
    let last = sink.last_delivery().unwrap_or(load_end);
    let delivered = stats.unique;
    let per = |x: u64| x as f64 / delivered.max(1) as f64;
    let traffic = before.until(&after);
    let figures = PipelineFigures {
        delivered,
        delivered_per_s: delivered as f64 / last.duration_since(started).as_secs_f64().max(1e-9),
        drain_s: last.saturating_duration_since(load_end).as_secs_f64(),
        end_to_end: stats.end_to_end,
        lost,
        duplicates: stats.duplicates,
        redis: RedisFigures {
            stored_bytes_per_postback,
            net_bytes_per_postback: per(traffic.net_in + traffic.net_out),
            commands_per_postback: per(traffic.commands),
            cpu_us_per_postback: per(traffic.cpu_us),
            by_command: command_costs(&traffic, delivered),
        },
        processes: processes
            .iter()
            .zip(before_usage.iter().zip(&after_usage))
            .map(|(p, (b, a))| ProcessFigures {
                name: p.name.clone(),
                cpu_s_per_1000: (a.cpu_s - b.cpu_s) * 1000.0 / delivered.max(1) as f64,
                peak_rss_mib: a.peak_rss_mib,
            })
            .collect(),
        load,
    };
    for worker in workers {
        worker.stop(Duration::from_secs(10))?;
    }
    for process in more_ingests {
        process.stop(Duration::from_secs(10))?;
    }
    ingest.stop(Duration::from_secs(10))?;
    Ok(figures)
}

async fn measure_ceilings(options: &RunOptions, sink: &Sink, logs: &Path) -> anyhow::Result<Ceilings> {
    let (handler, base) = start_ingest(Flavour::Bare, None, options.items, 0, logs).await?;
    let http = load::run(&LoadOptions {
        url: format!("{base}/"),
        also: Vec::new(),
        target: sink.base_url(),
        items: options.items,
        pace: options.pace,
        stop: options.stop,
        token: None,
        progress: options.progress,
    })
    .await?;
    handler.stop(Duration::from_secs(5))?;
    let client_rate = client_ceiling(sink, options).await?;
    sink.reset();
    Ok(Ceilings {
        http_handler_requests_per_s: http.requests_per_s,
        http_handler_latency: http.latency,
        client_requests_per_s: client_rate,
    })
}

/// The same reqwest client deliver uses, as many requests in flight as all
/// the workers allow, straight to the sink, for the load's duration (or
/// as many requests as the load would send postbacks).
async fn client_ceiling(sink: &Sink, options: &RunOptions) -> anyhow::Result<f64> {
    let in_flight = options.workers * options.deliver_concurrency;
    let client = reqwest::Client::builder().pool_max_idle_per_host(in_flight).build()?;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let target = format!("{}/postback", sink.base_url());
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, sent, target, stop) = (client.clone(), sent.clone(), target.clone(), options.stop);
            let items = options.items as u64;
            tokio::spawn(async move {
                let mut ok = 0u64;
                loop {
                    let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let over = match stop {
                        Stop::After(d) => started.elapsed() >= d,
                        Stop::Count(c) => n >= c * items,
                    };
                    if over {
                        return ok;
                    }
                    let response = client.get(&target).header("x-postback-id", format!("c/{n}")).send().await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        ok += 1;
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await?;
    }
    Ok(ok as f64 / started.elapsed().as_secs_f64())
}

/// Where the services keep the queue.
#[derive(Clone, Copy)]
pub(crate) struct Queue<'a> {
    /// `POSTBACK_REDIS_URL`.
    pub(crate) url: &'a str,
    /// `POSTBACK_PARTITIONS`.
    pub(crate) partitions: u32,
}

/// Starts ingest number `i` (or its bare twin; without `redis`, the bare
/// handler that answers at once) and waits until it is ready.
pub(crate) async fn start_ingest(
    flavour: Flavour,
    redis: Option<Queue<'_>>,
    items: usize,
    i: usize,
    logs: &Path,
) -> anyhow::Result<(Process, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let base = format!("http://{addr}");
    let process = match (flavour, redis) {
        (Flavour::Ours, Some(redis)) => {
            let envs = [
                ("POSTBACK_REDIS_URL", redis.url.to_owned()),
                ("POSTBACK_PARTITIONS", redis.partitions.to_string()),
                ("POSTBACK_INGEST_ADDR", addr.clone()),
                ("POSTBACK_MAX_BACKLOG", "0".into()),
                ("RUST_LOG", "info".into()),
            ];
            let name = if i == 0 { "ingest".to_owned() } else { format!("ingest-{i}") };
            Process::spawn(&name, &sibling("postback-ingest")?, &[], &envs, logs)?
        }
        (_, redis) => {
            let me = std::env::current_exe()?;
            let items = items.to_string();
            let mut args = vec!["bare-ingest", "--addr", &addr, "--stream", "bare", "--items", &items];
            if let Some(redis) = &redis {
                args.extend(["--redis", redis.url]);
            }
            let name = if redis.is_some() { "bare-ingest" } else { "bare-handler" };
            Process::spawn(name, &me, &args, &[], logs)?
        }
    };
    let ready = if flavour == Flavour::Ours { format!("{base}/readyz") } else { format!("{base}/") };
    wait_ready(&ready, Duration::from_secs(15)).await?;
    Ok((process, base))
}

pub(crate) fn start_worker(
    flavour: Flavour,
    redis: Queue<'_>,
    concurrency: usize,
    i: usize,
    logs: &Path,
) -> anyhow::Result<Process> {
    start_worker_with(flavour, redis, concurrency, i, &[], logs)
}

/// [`start_worker`] with more settings for ours.
pub(crate) fn start_worker_with(
    flavour: Flavour,
    redis: Queue<'_>,
    concurrency: usize,
    i: usize,
    extra: &[(&'static str, String)],
    logs: &Path,
) -> anyhow::Result<Process> {
    match flavour {
        Flavour::Ours => {
            let mut envs = vec![
                ("POSTBACK_REDIS_URL", redis.url.to_owned()),
                ("POSTBACK_PARTITIONS", redis.partitions.to_string()),
                ("POSTBACK_DELIVER_ADDR", "127.0.0.1:0".into()),
                ("POSTBACK_DELIVER_CONCURRENCY", concurrency.to_string()),
                ("POSTBACK_PER_HOST_CONCURRENCY", concurrency.to_string()),
                ("POSTBACK_CONSUMER", format!("bench-{i}")),
                // The sink is on loopback.
                ("POSTBACK_ALLOW_PRIVATE_TARGETS", "true".into()),
                ("RUST_LOG", "info".into()),
            ];
            envs.extend(extra.iter().cloned());
            Process::spawn(&format!("deliver-{i}"), &sibling("postback-deliver")?, &[], &envs, logs)
        }
        Flavour::Bare => {
            let concurrency = concurrency.to_string();
            let args = ["bare-deliver", "--redis", redis.url, "--stream", "bare", "--concurrency", &concurrency];
            Process::spawn(&format!("bare-deliver-{i}"), &std::env::current_exe()?, &args, &[], logs)
        }
    }
}

/// Waits until the sink has every one of `ids`.
pub(crate) async fn wait_delivered(sink: &Sink, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = sink.missing(ids).len();
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{missing} of {} postbacks not delivered within {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The commands of `traffic`, per delivered postback, most time first.
fn command_costs(traffic: &crate::redis::Counters, delivered: u64) -> Vec<CommandCost> {
    let per = |x: u64| x as f64 / delivered.max(1) as f64;
    let mut costs: Vec<CommandCost> = traffic
        .by_command
        .iter()
        .map(|(name, (calls, us))| CommandCost {
            command: name.clone(),
            calls_per_postback: per(*calls),
            us_per_postback: per(*us),
        })
        .collect();
    costs.sort_by(|a, b| b.us_per_postback.total_cmp(&a.us_per_postback));
    costs
}

fn usages(processes: &[&Process]) -> anyhow::Result<Vec<Usage>> {
    processes.iter().map(|p| p.usage()).collect()
}

async fn machine(client: &Client) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let server: String = client.info(Some(fred::types::InfoKind::Server)).await.unwrap_or_default();
    let redis_version = server
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        redis_version,
    }
}

/// Where `--json` output goes, and the load report, for the `load` command.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

/// The load report as text.
pub fn load_text(report: &LoadReport) -> String {
    let l = &report.latency;
    format!(
        "requests {} (accepted {}, failed {}), postbacks accepted {}\n{:.0} requests/s, {:.0} postbacks/s over {:.2} s\nlatency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.1}\n",
        report.requests,
        report.accepted_requests,
        report.failed_requests,
        report.accepted_postbacks,
        report.requests_per_s,
        report.postbacks_per_s,
        report.elapsed_s,
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms
    )
}
