//! The Tokio runtime of a service binary, with a bounded exit.
//!
//! `#[tokio::main]` waits, on exit, for every blocking task to finish; a
//! Redis client that is still trying to reach a server that went away can
//! hold that up. Once a service has finished its own graceful shutdown there
//! is nothing left worth waiting for, so the runtime gets at most a second.

use std::future::Future;
use std::time::Duration;

/// Runs `main` on a multi-threaded runtime and returns its result once it
/// completes, giving leftover background tasks at most one second.
pub fn run<F: Future>(main: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let output = runtime.block_on(main);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(output)
}
