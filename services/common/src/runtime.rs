//! The Tokio runtime of a service binary, with a bounded exit.
//!
//! `#[tokio::main]` waits, on exit, for every blocking task to finish; a
//! Redis client that is still trying to reach a server that went away can
//! hold that up. Once a service has finished its own graceful shutdown there
//! is nothing left worth waiting for, so the runtime gets at most a second.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, ConfigError};

/// Runs `main` on a multi-threaded runtime and returns its result once it
/// completes, giving leftover background tasks at most one second.
pub fn run<F: Future>(main: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let output = runtime.block_on(main);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(output)
}

/// The whole `main` of a service binary: parse and check the settings (exit
/// 2 naming the bad one), set up logging, then run `serve` on the runtime
/// until it returns. An error from `serve` is logged and exits 1.
pub fn main<C, Fut>(validate: fn(&C) -> Result<(), ConfigError>, serve: impl FnOnce(C) -> Fut) -> ExitCode
where
    C: Parser,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match config::parse::<C>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(e) = validate(&config) {
        return config::report(&e);
    }
    let service = C::command().get_name().to_owned();
    let telemetry = match crate::telemetry::init(&service) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run(serve(config));
    telemetry.shutdown();
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
