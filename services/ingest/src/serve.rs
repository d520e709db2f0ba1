//! Serving HTTP/1.1 with bounds on what one client can hold.
//!
//! - A connection whose request headers are not complete within
//!   `POSTBACK_HEADER_TIMEOUT_MS` is closed; the same clock runs while a
//!   kept-alive connection waits for its next request, so an idle
//!   connection is closed after the same time.
//! - At most `POSTBACK_MAX_CONNECTIONS` connections are open at once; past
//!   that, new connections wait in the listen backlog (the kernel's) until
//!   one closes, and ingest never runs out of file descriptors or memory
//!   for them. An accept error (out of descriptors after all) is logged
//!   and retried after a pause, never fatal.
//! - Request heads are limited to [`MAX_REQUEST_HEADERS`] header lines and
//!   [`MAX_HEAD_BYTES`] bytes (431 beyond).
//! - The body deadline (`POSTBACK_BODY_TIMEOUT_MS`) is kept by the handler
//!   that reads it ([`crate::routes`]).
//! - On shutdown the listener closes at once, every connection finishes
//!   the request it is serving and is then closed; whatever is still open
//!   after `POSTBACK_SHUTDOWN_GRACE_MS` is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most header lines in one request.
pub const MAX_REQUEST_HEADERS: usize = 64;

/// Most bytes in one request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Pause after a failed accept (EMFILE and friends), so a full descriptor
/// table does not turn the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds [`serve`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to receive a request's headers (and the idle time allowed
    /// between requests).
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains
/// connections for at most the grace time.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits, shutdown: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_REQUEST_HEADERS)
        .max_header_size(MAX_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = limits.max_connections - slots.available_permits();
    tracing::info!(open, "no longer accepting; waiting for open connections");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            let open = limits.max_connections - slots.available_permits();
            tracing::warn!(open, "POSTBACK_SHUTDOWN_GRACE_MS is over; dropping the connections still open");
        }
    }
}
