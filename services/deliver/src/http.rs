//! The outbound HTTP client: pooled connections, a per-attempt timeout, and
//! response bodies read only as far as the log needs.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::redirect::Policy;

use crate::guard::{Guard, GuardedResolver};

/// The `User-Agent` of every delivery.
pub(crate) const USER_AGENT: &str = concat!("postback-deliver/", env!("CARGO_PKG_VERSION"));

/// How the client behaves.
pub(crate) struct ClientSettings {
    /// Per-attempt timeout, connection to last body byte.
    pub(crate) timeout: Duration,
    /// Idle connections kept per host.
    pub(crate) max_idle_per_host: usize,
    /// Redirects followed per attempt.
    pub(crate) max_redirects: usize,
    /// The SSRF guard, or `None` when private targets are allowed.
    pub(crate) guard: Option<Arc<Guard>>,
}

/// One client for the whole worker: its connection pool is what keeps
/// connections to a busy target alive between postbacks. With a guard,
/// names resolve through [`GuardedResolver`] and every redirect hop is
/// checked too.
pub(crate) fn client(settings: ClientSettings) -> reqwest::Result<reqwest::Client> {
    let ClientSettings { timeout, max_idle_per_host, max_redirects, guard } = settings;
    let hop_guard = guard.clone();
    let redirects = Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            return attempt.error(format!("more than {max_redirects} redirects"));
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            let scheme = attempt.url().scheme().to_owned();
            return attempt.error(format!("redirect to a {scheme}: URL"));
        }
        if let Some(guard) = &hop_guard
            && let Err(refused) = guard.check_url(attempt.url())
        {
            return attempt.error(refused);
        }
        attempt.follow()
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(redirects);
    if let Some(guard) = guard {
        builder = builder.dns_resolver(Arc::new(GuardedResolver::new(guard)));
    }
    builder.build()
}

/// The first `limit` bytes of a response body, and whether there was more.
/// Reading stops at the limit: a huge or endless body costs at most `limit`
/// bytes of memory (the connection is then dropped rather than drained).
pub(crate) async fn read_capped(mut response: reqwest::Response, limit: usize) -> (Bytes, bool) {
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
