//! Test helpers shared by the services' integration tests.
//!
//! Real parts only: [`RedisServer`] runs a real `redis-server` on a free
//! loopback port in its own temporary directory (never the shared 6379), and
//! [`Sink`] is a real HTTP server on 127.0.0.1 that records every request it
//! receives; [`RecordingProxy`] is a forward proxy on 127.0.0.1 that
//! records and forwards nothing; [`Collector`] is a real OTLP/HTTP trace
//! receiver; [`CommandMonitor`] counts the commands a Redis receives;
//! [`Cluster`] and [`Sentinels`] are Redis's own engines, on loopback;
//! [`ReplyCutter`] relays to a Redis and can lose one of its replies.

#![allow(missing_docs, clippy::expect_used)]

mod cluster;
pub mod collector;
mod cutter;
pub mod metrics;
mod monitor;
mod proxy;
pub mod queue_checks;
mod redis_server;
pub mod sentinel;
mod settings;
mod sink;
mod tls_redis;

pub use cluster::Cluster;
pub use collector::{Collector, ExportedSpan};
pub use cutter::ReplyCutter;
pub use metrics::{expect_metric, lint_with_promtool, metric};
pub use monitor::CommandMonitor;
pub use proxy::{Proxied, RecordingProxy};
pub use redis_server::RedisServer;
pub use sentinel::Sentinels;
pub use settings::assert_bad_settings_are_named;
pub use sink::{Received, Reply, Sink};
pub use tls_redis::TlsRedis;

/// A free TCP port on 127.0.0.1, chosen by the kernel. Another process may
/// take it before the caller binds it; callers that can retry should.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Serves `app` on `ip`, on a port the kernel picks, in a background task;
/// returns the address and the task (abort it to stop serving).
pub async fn serve(ip: &str, app: axum::Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}
