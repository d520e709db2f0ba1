//! The command line of `postback-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::load::{Pace, Stop};
use crate::redis::Aof;

/// Benchmarks of postback delivery. Traffic goes to the addresses given;
/// `run` uses only 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "postback-bench", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive postbacks: answer 200, count deliveries and duplicates,
    /// measure accepted→delivered latency. Prints its stats as JSON at exit.
    Sink(SinkArgs),
    /// Drive an ingest URL with postback requests and report its latency.
    Load(LoadArgs),
    /// The whole pipeline on this machine, with the machine's ceilings.
    Run(RunArgs),
    /// What a postback costs in Redis, beside the same postback as JSON.
    Bytes(BytesArgs),
    /// (Used by `run`.) The bare ingest handler.
    #[command(hide = true)]
    BareIngest(BareIngestArgs),
    /// (Used by `run`.) The bare delivery worker.
    #[command(hide = true)]
    BareDeliver(BareDeliverArgs),
}

/// How the sink answers.
#[derive(Debug, Args, Clone, Copy)]
pub struct SinkBehaviour {
    /// Wait this long before each answer, in ms.
    #[arg(long = "sink-latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer this share of requests with 503 (0 to 1).
    #[arg(long = "sink-fail-ratio", default_value_t = 0.0, value_parser = ratio)]
    pub fail_ratio: f64,
}

/// `sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub addr: SocketAddr,
    /// How to answer.
    #[command(flatten)]
    pub behaviour: SinkBehaviour,
}

/// Load pace and length, shared by `load` and `run`.
#[derive(Debug, Args, Clone, Copy)]
pub struct PaceArgs {
    /// Requests per second (open loop).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Requests in flight (closed loop); the default when no rate is given.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long, e.g. 20s.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Data items (postbacks) per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub items: u64,
}

impl PaceArgs {
    /// The pace; `default_concurrency` when neither is given.
    pub fn pace(&self, default_concurrency: usize) -> Pace {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => Pace::Rate(rate),
            (None, Some(n)) => Pace::Concurrency(n.max(1)),
            (None, None) => Pace::Concurrency(default_concurrency),
        }
    }

    /// The stop condition; `default` when neither is given.
    pub fn stop(&self, default: Duration) -> Stop {
        match (self.requests, self.duration) {
            (Some(n), _) => Stop::Count(n),
            (None, Some(d)) => Stop::After(d),
            (None, None) => Stop::After(default),
        }
    }
}

/// `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The ingest endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/postbacks")]
    pub url: String,
    /// Base URL the postbacks are sent to (a `postback-bench sink`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub target: String,
    /// Bearer token for ingest.
    #[arg(long, env = "POSTBACK_BENCH_TOKEN")]
    pub token: Option<String>,
    /// Pace and length (default: 32 in flight for 10 s).
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pace and length (default: 32 in flight for 20 s).
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Delivery worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Ingest processes; the load sends to each in turn.
    #[arg(long, default_value_t = 1)]
    pub ingests: usize,
    /// Attempts in flight per worker.
    #[arg(long, default_value_t = 64)]
    pub deliver_concurrency: usize,
    /// Redis persistence.
    #[arg(long, value_enum, default_value_t = Aof::Everysec)]
    pub aof: Aof,
    /// Split the queue into this many partitions (POSTBACK_PARTITIONS).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub partitions: u32,
    /// Run on a Redis Cluster of this many primaries instead of one server
    /// (1 makes a cluster of one primary).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub cluster: Option<u64>,
    /// Requests queued with no worker running, to measure stored bytes.
    #[arg(long, default_value_t = 1000)]
    pub fill: u64,
    /// Longest wait for the last deliveries after the load, e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
    /// Skip the bare pipeline and the ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// How the sink answers.
    #[command(flatten)]
    pub behaviour: SinkBehaviour,
    /// Keep the processes' logs in this directory.
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `bytes`.
#[derive(Debug, Args)]
pub struct BytesArgs {
    /// Postbacks per case.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `bare-ingest`.
#[derive(Debug, Args)]
pub struct BareIngestArgs {
    /// Listen address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// XADD each body here; without it, answer 202 at once.
    #[arg(long)]
    pub redis: Option<String>,
    /// The stream.
    #[arg(long, default_value = "bare")]
    pub stream: String,
    /// Postbacks per request (for the ids it answers).
    #[arg(long, default_value_t = 1)]
    pub items: usize,
}

/// `bare-deliver`.
#[derive(Debug, Args)]
pub struct BareDeliverArgs {
    /// The Redis to read from.
    #[arg(long)]
    pub redis: String,
    /// The stream.
    #[arg(long, default_value = "bare")]
    pub stream: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

fn ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) { Ok(value) } else { Err("must be between 0 and 1".into()) }
}
