//! The run's own `redis-server` (in a temporary directory, on a free
//! loopback port, AOF as asked), and the counters read from its INFO.

use std::path::Path;
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde::Serialize;
use tempfile::TempDir;

use crate::process::{Process, free_port};

/// How the server persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aof {
    /// No persistence.
    Off,
    /// AOF, fsync once a second (the recommended production setting).
    Everysec,
    /// AOF, fsync on every write.
    Always,
}

/// A running redis-server.
pub struct RedisServer {
    /// The process.
    pub process: Process,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts one, logging to `log_dir`.
    pub async fn start(aof: Aof, log_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let (appendonly, fsync) = match aof {
            Aof::Off => ("no", "everysec"),
            Aof::Everysec => ("yes", "everysec"),
            Aof::Always => ("yes", "always"),
        };
        let port_text = port.to_string();
        let dir_text = dir.path().display().to_string();
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port_text,
            "--dir",
            &dir_text,
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            fsync,
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ];
        let process = Process::spawn("redis-server", Path::new("redis-server"), &args, &[], log_dir)?;
        let server = Self { process, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = server.client().await {
                let _ = client.quit().await;
                return Ok(server);
            }
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start (see redis-server.log)");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connected client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(Config::from_url(&self.url())?, None, None, None);
        client.init().await?;
        Ok(client)
    }
}

/// Counters of the server since it started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Bytes received from clients.
    pub net_in: u64,
    /// Bytes sent to clients.
    pub net_out: u64,
    /// Commands run (those inside scripts included).
    pub commands: u64,
}

impl Counters {
    /// Reads them.
    pub async fn read(client: &Client) -> anyhow::Result<Self> {
        let stats: String = client.info(Some(fred::types::InfoKind::Stats)).await?;
        let commands: String = client.info(Some(fred::types::InfoKind::CommandStats)).await?;
        let field = |name: &str| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let calls =
            commands.lines().filter_map(|l| l.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok()).sum();
        Ok(Self { net_in: field("total_net_input_bytes"), net_out: field("total_net_output_bytes"), commands: calls })
    }

    /// What happened between `self` and `later`.
    pub fn until(&self, later: &Counters) -> Counters {
        Counters {
            net_in: later.net_in.saturating_sub(self.net_in),
            net_out: later.net_out.saturating_sub(self.net_out),
            commands: later.commands.saturating_sub(self.commands),
        }
    }
}
