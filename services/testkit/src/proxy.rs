//! `RecordingProxy`: an HTTP forward proxy on 127.0.0.1 that forwards
//! nothing. It records each request's request line (absolute form, as a
//! client talking to a proxy sends it) and headers, and answers it itself,
//! so a test can see what deliver handed to its egress proxy without any
//! traffic leaving loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Proxied {
    /// `GET http://partner.example/x?y=1 HTTP/1.1`.
    pub request_line: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl Proxied {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type Answer = dyn Fn(&Proxied) -> (u16, Option<String>) + Send + Sync;

/// The proxy; stops when dropped.
pub struct RecordingProxy {
    addr: SocketAddr,
    delay: Arc<Mutex<std::time::Duration>>,
    seen: Arc<Mutex<Vec<Proxied>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// A proxy that answers every request 200.
    pub async fn start() -> Self {
        Self::start_with(|_| (200, None)).await
    }

    /// A proxy that answers a request whose line contains `path` with a
    /// 302 to `location`, and every other request 200.
    pub async fn redirecting(path: &'static str, location: &str) -> Self {
        let location = location.to_owned();
        Self::start_with(
            move |request| {
                if request.request_line.contains(path) { (302, Some(location.clone())) } else { (200, None) }
            },
        )
        .await
    }

    /// A proxy that answers with the status and `Location` `answer` gives.
    pub async fn start_with(answer: impl Fn(&Proxied) -> (u16, Option<String>) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let delay = Arc::new(Mutex::new(std::time::Duration::ZERO));
        let task = {
            let (seen, delay) = (seen.clone(), delay.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, answer, delay) = (seen.clone(), answer.clone(), delay.clone());
                    tokio::spawn(async move {
                        let _ = serve_connection(stream, &seen, answer.as_ref(), &delay).await;
                    });
                }
            })
        };
        Self { addr, delay, seen, task }
    }

    /// Makes every later answer wait `delay` after its request arrived.
    pub fn answer_after(&self, delay: std::time::Duration) {
        *self.delay.lock().expect("proxy delay") = delay;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Proxied> {
        self.seen.lock().expect("proxy log").clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    seen: &Mutex<Vec<Proxied>>,
    answer: &Answer,
    delay: &Mutex<std::time::Duration>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let proxied = Proxied { request_line: request_line.trim_end().to_owned(), headers };
        let length = proxied.header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        let (status, location) = answer(&proxied);
        seen.lock().expect("proxy log").push(proxied);
        let wait = *delay.lock().expect("proxy delay");
        tokio::time::sleep(wait).await;
        let location = location.map(|l| format!("location: {l}\r\n")).unwrap_or_default();
        let reply = format!("HTTP/1.1 {status} Proxied\r\n{location}content-length: 7\r\n\r\nproxied");
        stream.get_mut().write_all(reply.as_bytes()).await?;
    }
}
