//! `postback-bench`: measures postback delivery on this machine, honestly.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`sink`]: the receiving end: counts, duplicates, end-to-end latency.
//! - [`load`]: the load generator (fixed rate or concurrency).
//! - [`run`]: the whole pipeline and its ceilings in one run.
//! - [`bare`]: the bare twins that give the ceilings.
//! - [`bytes`]: what a postback costs in Redis, beside JSON.
//! - [`process`]: child processes and their CPU and memory.
//! - [`redis`]: the run's redis-server and its counters.
//! - [`report`]: the report, as tables or JSON.
//! - [`latency`]: percentiles from an HDR histogram.

pub mod bare;
pub mod bytes;
pub mod cli;
pub mod latency;
pub mod load;
pub mod process;
pub mod redis;
pub mod report;
pub mod run;
pub mod sink;

use std::process::ExitCode;
use std::time::Duration;

use cli::{Cli, Command};
use sink::SinkOptions;

/// Runs one command; errors are printed and exit 1.
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let stop = postback_common::shutdown::on_signal();
    match cli.command {
        Command::Sink(args) => {
            let options = sink_options(args.behaviour);
            let sink = sink::Sink::start(args.addr, options, stop.clone()).await?;
            println!("sink listening on {}", sink.base_url());
            stop.cancelled().await;
            println!("{}", serde_json::to_string_pretty(&sink.stats())?);
            Ok(())
        }
        Command::Load(args) => {
            let options = load::LoadOptions {
                url: args.url,
                also: Vec::new(),
                target: args.target,
                items: args.pace.items as usize,
                pace: args.pace.pace(32),
                stop: args.pace.stop(Duration::from_secs(10)),
                token: args.token,
                progress: true,
            };
            let report = load::run(&options).await?;
            print!("{}", run::load_text(&report));
            if let Some(path) = &args.json {
                run::write_json(path, &report)?;
            }
            Ok(())
        }
        Command::Run(args) => {
            let options = run::RunOptions {
                pace: args.pace.pace(32),
                stop: args.pace.stop(Duration::from_secs(20)),
                items: args.pace.items as usize,
                workers: args.workers.max(1),
                ingests: args.ingests.max(1),
                deliver_concurrency: args.deliver_concurrency.max(1),
                aof: args.aof,
                partitions: args.partitions,
                cluster: args.cluster.unwrap_or(0) as usize,
                fill: args.fill.max(1),
                drain_timeout: args.drain_timeout,
                ceilings: !args.no_ceilings,
                sink: sink_options(args.behaviour),
                logs: args.logs,
                progress: true,
            };
            let report = run::run(&options).await?;
            print!("{}", report.to_text());
            if let Some(path) = &args.json {
                run::write_json(path, &report)?;
            }
            anyhow::ensure!(
                report.pipeline.lost == 0,
                "{} accepted postbacks were not delivered",
                report.pipeline.lost
            );
            Ok(())
        }
        Command::Bytes(args) => {
            let temp = tempfile::tempdir()?;
            let cases = bytes::run(args.count.max(100), temp.path()).await?;
            print!("{}", bytes::text(&cases));
            if let Some(path) = &args.json {
                run::write_json(path, &cases)?;
            }
            Ok(())
        }
        Command::BareIngest(args) => bare::ingest(args.addr, args.redis, args.stream, args.items, stop).await,
        Command::BareDeliver(args) => bare::deliver(args.redis, args.stream, args.concurrency, stop).await,
    }
}

fn sink_options(behaviour: cli::SinkBehaviour) -> SinkOptions {
    SinkOptions { latency: Duration::from_millis(behaviour.latency_ms), fail_ratio: behaviour.fail_ratio }
}
