//! `postback-demo-partner`: a stand-in for a third party, for the first
//! minutes with the pipeline (`ops/run-local.sh` starts it). It prints each
//! request it gets (method, target, headers, body) to stdout and answers
//! `200 ok`, or the status given with `--status` to watch retries and dead
//! letters happen.
//!
//! It listens on 127.0.0.2 by default: a loopback address of its own, so
//! that deliver's SSRF guard can let exactly it through
//! (`POSTBACK_TARGET_ALLOW=127.0.0.2`) without opening the rest of the
//! machine (Redis, ingest, admin ports on 127.0.0.1).

use std::io::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use clap::Parser;

/// Prints every request it receives and answers it.
#[derive(Debug, Parser)]
#[command(name = "postback-demo-partner", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "POSTBACK_DEMO_PARTNER_ADDR", default_value = "127.0.0.2:9090")]
    addr: SocketAddr,

    /// Status to answer every request with.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    status: u16,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let status = StatusCode::from_u16(args.status)?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (POSTBACK_DEMO_PARTNER_ADDR): {e}", args.addr))?;
    println!("demo partner listening on http://{}, answering {status}", listener.local_addr()?);
    let app = Router::new().fallback(print_request).with_state(status);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Prints one request as a block of text, then answers it.
async fn print_request(
    State(status): State<StatusCode>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let mut text = format!("==> {method} {uri} (from {peer})\n");
    for (name, value) in &headers {
        text.push_str(&format!("    {name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    if !body.is_empty() {
        text.push_str(&format!("\n    {}\n", String::from_utf8_lossy(&body)));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    (status, if status.is_success() { "ok" } else { "demo partner failing on purpose" })
}
