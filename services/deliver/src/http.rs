//! The outbound HTTP client: pooled connections, a per-attempt timeout,
//! response bodies read only as far as the log needs, and the route out.
//!
//! Attempts leave either straight for their target or through one proxy
//! (`POSTBACK_EGRESS_PROXY`); proxy variables in the environment
//! (`HTTP_PROXY`, `ALL_PROXY`, ...) are always ignored, so nothing outside
//! the settings can route postbacks past the SSRF guard.
//!
//! - **Straight**: names resolve through [`GuardedResolver`], which hands
//!   the connection exactly the addresses it checked, and the client's
//!   redirect policy checks every hop.
//! - **Through a proxy**: the proxy connects, so the client never resolves
//!   a target. [`Egress::send`] resolves and checks each hop's host itself
//!   before handing the request over, and follows redirects itself so that
//!   every hop is checked the same way. The proxy's own address is exempt.
//!   Between that check and the proxy's own lookup a name can change its
//!   answer (see runbooks/threat-model.md); a filtering proxy closes it.
//!
//! Either way an attempt has one deadline, `POSTBACK_HTTP_TIMEOUT_MS` (or
//! the postback's own `timeout_ms`) after it starts: name lookups, connects,
//! every redirect hop and the body read all come out of it. The worker's
//! claim idle is checked against it at start-up ([`crate::config`]), so a
//! live attempt is never taken over.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};

use crate::guard::{Guard, GuardedResolver, Refused};

/// The `User-Agent` of every delivery.
pub(crate) const USER_AGENT: &str = concat!("postback-deliver/", env!("CARGO_PKG_VERSION"));

/// Most header lines a partner's response may have; more fails the attempt.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 100;

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
    /// The one proxy every attempt goes through, if any.
    pub(crate) proxy: Option<url::Url>,
}

/// One request to send.
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) url: url::Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
    /// This request's timeout, if not the client's.
    pub(crate) timeout: Option<Duration>,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The guard refused a hop before anything was sent to it.
    Refused(Refused),
    /// A hop's host name does not resolve.
    Unresolvable(String),
    /// Redirects that cannot or may not be followed.
    Redirect(String),
    /// The client failed (connection, timeout, a hop refused by the
    /// resolver or the redirect policy).
    Client(reqwest::Error),
    /// The attempt's deadline passed between hops or during a lookup.
    TimedOut(Duration),
}

/// The route out: one client for the whole worker (its pool keeps
/// connections to a busy target alive between postbacks), and, through a
/// proxy, the checks the client cannot make.
pub(crate) struct Egress {
    client: reqwest::Client,
    via_proxy: Option<ViaProxy>,
    /// An attempt's deadline when its request names none.
    timeout: Duration,
}

/// What [`Egress::send`] does itself when a proxy is in the way.
struct ViaProxy {
    guard: Option<Arc<Guard>>,
    max_redirects: usize,
}

impl Egress {
    /// Builds the client for `settings`.
    pub(crate) fn new(settings: ClientSettings) -> reqwest::Result<Self> {
        let ClientSettings { timeout, max_idle_per_host, max_redirects, guard, proxy } = settings;
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .no_proxy();
        let via_proxy = match proxy {
            Some(proxy) => {
                let exempt = proxy.host_str().map(str::to_owned);
                builder = builder.proxy(reqwest::Proxy::all(proxy)?).redirect(Policy::none());
                if let Some(guard) = &guard {
                    // Whatever the client still resolves (the proxy's name,
                    // a SOCKS target) is checked too, the proxy excepted.
                    let resolver = GuardedResolver::new(guard.clone()).exempting(exempt);
                    builder = builder.dns_resolver(Arc::new(resolver));
                }
                Some(ViaProxy { guard, max_redirects })
            }
            None => {
                builder = builder.redirect(checked_redirects(guard.clone(), max_redirects));
                if let Some(guard) = guard {
                    builder = builder.dns_resolver(Arc::new(GuardedResolver::new(guard)));
                }
                None
            }
        };
        Ok(Self { client: builder.build()?, via_proxy, timeout })
    }

    /// Sends `request`, following redirects, and returns the final
    /// response, whose body is still bound by the attempt's deadline.
    pub(crate) async fn send(&self, request: Outgoing) -> Result<reqwest::Response, SendError> {
        let budget = request.timeout.unwrap_or(self.timeout);
        // Straight, the client's own timeout covers the whole attempt: the
        // lookup, every redirect it follows and the body.
        let Some(via) = &self.via_proxy else {
            return self.send_once(Outgoing { timeout: Some(budget), ..request }).await;
        };
        let deadline = tokio::time::Instant::now() + budget;
        let left = || {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() { Err(SendError::TimedOut(budget)) } else { Ok(left) }
        };
        let mut request = request;
        let mut hop = 0;
        loop {
            if let Some(guard) = &via.guard {
                tokio::time::timeout(left()?, check_hop(guard, &request.url))
                    .await
                    .map_err(|_| SendError::TimedOut(budget))??;
            }
            let next = Outgoing {
                method: request.method.clone(),
                url: request.url.clone(),
                headers: request.headers.clone(),
                body: request.body.clone(),
                timeout: Some(left()?),
            };
            let response = self.send_once(next).await?;
            let Some(location) = redirect_location(&response) else { return Ok(response) };
            if hop == via.max_redirects {
                return Err(SendError::Redirect(format!("more than {} redirects", via.max_redirects)));
            }
            request = redirected(request, response.status(), &location)?;
            hop += 1;
        }
    }

    async fn send_once(&self, request: Outgoing) -> Result<reqwest::Response, SendError> {
        let mut builder = self.client.request(request.method, request.url).headers(request.headers);
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        builder.send().await.map_err(SendError::Client)
    }
}

/// Checks a hop's host before it goes to the proxy: an IP literal as it
/// is, a name by resolving it here and checking every address (a name the
/// operator allowed is not resolved at all).
async fn check_hop(guard: &Guard, url: &url::Url) -> Result<(), SendError> {
    let Some(url::Host::Domain(name)) = url.host() else {
        return guard.check_url(url).map_err(SendError::Refused);
    };
    if guard.allows_name(name) {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs =
        tokio::net::lookup_host((name, port)).await.map_err(|e| SendError::Unresolvable(format!("{name}: {e}")))?;
    for addr in addrs {
        guard.check_ip(name, addr.ip()).map_err(SendError::Refused)?;
    }
    Ok(())
}

/// The client's own redirect policy (no proxy): at most `max_redirects`
/// hops, http and https only, every IP-literal hop checked by the guard
/// (names are checked when the resolver resolves them).
fn checked_redirects(guard: Option<Arc<Guard>>, max_redirects: usize) -> Policy {
    Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            return attempt.error(format!("more than {max_redirects} redirects"));
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            let scheme = attempt.url().scheme().to_owned();
            return attempt.error(format!("redirect to a {scheme}: URL"));
        }
        if let Some(guard) = &guard
            && let Err(refused) = guard.check_url(attempt.url())
        {
            return attempt.error(refused);
        }
        attempt.follow()
    })
}

/// Where a redirect response points, if it is one the client would follow.
fn redirect_location(response: &reqwest::Response) -> Option<String> {
    let status = response.status();
    let follows = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
    follows.then(|| response.headers().get(LOCATION)?.to_str().ok().map(str::to_owned)).flatten()
}

/// The request a redirect asks for, as browsers and the client make it:
/// 303 (and 301/302 after a POST) become a GET without a body; 307 and 308
/// repeat the request as it was.
fn redirected(mut request: Outgoing, status: StatusCode, location: &str) -> Result<Outgoing, SendError> {
    let url = request.url.join(location).map_err(|e| SendError::Redirect(format!("bad Location {location:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SendError::Redirect(format!("redirect to a {}: URL", url.scheme())));
    }
    let to_get = status == StatusCode::SEE_OTHER && request.method != Method::HEAD
        || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && request.method == Method::POST;
    if to_get {
        request.method = Method::GET;
        request.body = None;
        request.headers.remove(CONTENT_TYPE);
    }
    request.url = url;
    Ok(request)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(method: Method) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/json".parse().expect("header"));
        Outgoing {
            method,
            url: "http://partner.example/a/b?c=d".parse().expect("url"),
            headers,
            body: Some(Bytes::from_static(b"{}")),
            timeout: None,
        }
    }

    #[test]
    fn redirects_change_the_method_as_clients_do() {
        let cases = [
            (Method::POST, 301, Method::GET, false),
            (Method::POST, 302, Method::GET, false),
            (Method::POST, 303, Method::GET, false),
            (Method::PUT, 303, Method::GET, false),
            (Method::PUT, 302, Method::PUT, true),
            (Method::POST, 307, Method::POST, true),
            (Method::PATCH, 308, Method::PATCH, true),
        ];
        for (method, status, want, keeps_body) in cases {
            let status = StatusCode::from_u16(status).expect("status");
            let next = redirected(outgoing(method.clone()), status, "/next").expect("followed");
            assert_eq!(next.method, want, "{method} {status}");
            assert_eq!(next.body.is_some(), keeps_body, "{method} {status}");
            assert_eq!(next.headers.contains_key(CONTENT_TYPE), keeps_body, "{method} {status}");
            assert_eq!(next.url.as_str(), "http://partner.example/next");
        }
    }

    #[test]
    fn redirect_locations_resolve_against_the_hop_and_stay_http() {
        let found = StatusCode::FOUND;
        let next = redirected(outgoing(Method::GET), found, "other?x=1").expect("relative");
        assert_eq!(next.url.as_str(), "http://partner.example/a/other?x=1");
        let next = redirected(outgoing(Method::GET), found, "https://elsewhere.example/").expect("absolute");
        assert_eq!(next.url.as_str(), "https://elsewhere.example/");
        for location in ["file:///etc/passwd", "ftp://partner.example/", "gopher://x/"] {
            let error = redirected(outgoing(Method::GET), found, location).err().expect("refused");
            assert!(matches!(&error, SendError::Redirect(why) if why.contains("redirect to a")), "{error:?}");
        }
    }
}
