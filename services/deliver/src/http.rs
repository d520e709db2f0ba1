//! The outbound HTTP client: pooled connections, a per-attempt timeout, and
//! response bodies read only as far as the log needs.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// Redirects followed before an attempt counts as failed.
pub const MAX_REDIRECTS: usize = 5;

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("postback-deliver/", env!("CARGO_PKG_VERSION"));

/// One client for the whole worker: its connection pool is what keeps
/// connections to a busy target alive between postbacks.
pub fn client(timeout: Duration, max_idle_per_host: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .build()
}

/// The first `limit` bytes of a response body, and whether there was more.
/// Reading stops at the limit: a huge or endless body costs at most `limit`
/// bytes of memory (the connection is then dropped rather than drained).
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> (Bytes, bool) {
    let mut kept = BytesMut::with_capacity(limit.min(response.content_length().unwrap_or(0) as usize));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - kept.len();
                if chunk.len() > room {
                    kept.extend_from_slice(&chunk[..room]);
                    return (kept.freeze(), true);
                }
                kept.extend_from_slice(&chunk);
            }
            // A body cut short is still worth logging as far as it came.
            Ok(None) | Err(_) => return (kept.freeze(), false),
        }
    }
}
