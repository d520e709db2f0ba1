//! A real HTTP receiver that records what deliver sends it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// The request target exactly as sent: path and query, no normalisation.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    /// The `X-Postback-Id` header, if present.
    pub fn postback_id(&self) -> Option<&str> {
        self.headers.get("x-postback-id").and_then(|v| v.to_str().ok())
    }
}

/// What the sink answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer with a body that never ends (64 KiB chunks for ever).
    pub endless: bool,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("valid status"),
            body: "ok",
            headers: Vec::new(),
            delay: Duration::ZERO,
            endless: false,
        }
    }

    pub fn endless(mut self) -> Self {
        self.endless = true;
        self
    }

    pub fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Responder = dyn Fn(&Received, usize) -> Reply + Send + Sync;

struct Shared {
    received: Mutex<Vec<Received>>,
    /// When each request (by its index in `received`) was answered.
    answered: Mutex<Vec<Option<Instant>>>,
    notify: Notify,
    responder: Box<Responder>,
}

/// An HTTP server on 127.0.0.1 that records every request.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// A sink that answers every request with 200 "ok".
    pub async fn start() -> Self {
        Self::start_with(|_, _| Reply::status(200)).await
    }

    /// A partner that is down: it answers `status` until the switch it
    /// comes with is set, and 200 from then on.
    pub async fn start_down(status: u16) -> (Self, Arc<AtomicBool>) {
        let up = Arc::new(AtomicBool::new(false));
        let answer = up.clone();
        let sink =
            Self::start_with(move |_, _| Reply::status(if answer.load(Ordering::SeqCst) { 200 } else { status })).await;
        (sink, up)
    }

    /// A sink whose answers come from `responder`, called with each request
    /// and the number of requests received before it.
    pub async fn start_with(responder: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1", responder).await
    }

    /// The same on another loopback address (127.0.0.2, ...).
    pub async fn start_on(ip: &str, responder: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::default(),
            answered: Mutex::default(),
            notify: Notify::new(),
            responder: Box::new(responder),
        });
        let app = Router::new().fallback(record).with_state(shared.clone());
        let (addr, task) = crate::serve(ip, app).await;
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("sink lock").clone()
    }

    /// The requests (by their index in [`received`](Self::received)) not
    /// answered yet: still waiting, or dropped by their client first.
    pub fn unanswered(&self) -> Vec<usize> {
        let received = self.shared.received.lock().expect("sink lock").len();
        let answered = self.shared.answered.lock().expect("sink lock");
        (0..received).filter(|i| answered.get(*i).copied().flatten().is_none()).collect()
    }

    /// When each request (by its index in [`received`](Self::received))
    /// was answered, `None` while it was not.
    pub fn answered(&self) -> Vec<Option<Instant>> {
        let received = self.shared.received.lock().expect("sink lock").len();
        let mut answered = self.shared.answered.lock().expect("sink lock").clone();
        answered.resize(received, None);
        answered
    }

    /// Waits until at least `n` requests have arrived, then returns all of
    /// them. Panics after `timeout` with what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("sink got {} of {n} requests within {timeout:?}: {got:#?}", got.len());
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let received = Received {
        method: parts.method,
        target: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let (reply, index) = {
        let mut all = shared.received.lock().expect("sink lock");
        let reply = (shared.responder)(&received, all.len());
        all.push(received);
        (reply, all.len() - 1)
    };
    shared.notify.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    {
        let mut answered = shared.answered.lock().expect("sink lock");
        if answered.len() <= index {
            answered.resize(index + 1, None);
        }
        answered[index] = Some(Instant::now());
    }
    let mut response = if reply.endless {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures::stream::repeat_with(move || Ok::<_, std::convert::Infallible>(chunk.clone()));
        (reply.status, axum::body::Body::from_stream(chunks)).into_response()
    } else {
        (reply.status, reply.body).into_response()
    };
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
