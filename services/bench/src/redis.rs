//! The run's own `redis-server` (in a temporary directory, on a free
//! loopback port, AOF as asked), or a Redis Cluster of several, and the
//! counters read from their INFO.

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
        Self::start_named("redis-server", aof, &[], log_dir).await
    }

    /// Starts one called `name` with `extra` arguments.
    async fn start_named(name: &str, aof: Aof, extra: &[String], log_dir: &Path) -> anyhow::Result<Self> {
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
        let mut args: Vec<&str> = args.to_vec();
        args.extend(extra.iter().map(String::as_str));
        let process = Process::spawn(name, Path::new("redis-server"), &args, &[], log_dir)?;
        let server = Self { process, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = server.client().await {
                let _ = client.quit().await;
                return Ok(server);
            }
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start (see {name}.log)");
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

/// The Redis the run uses: one server, or the primaries of a cluster.
pub struct Redis {
    /// The servers.
    pub nodes: Vec<RedisServer>,
    cluster: bool,
}

impl Redis {
    /// One server (`primaries` 0), or a cluster of `primaries` (at least
    /// three) made with `redis-cli --cluster create`.
    pub async fn start(aof: Aof, primaries: usize, log_dir: &Path) -> anyhow::Result<Self> {
        if primaries == 0 {
            return Ok(Self { nodes: vec![RedisServer::start(aof, log_dir).await?], cluster: false });
        }
        anyhow::ensure!(primaries >= 3, "a Redis Cluster needs at least three primaries (--cluster)");
        let mut nodes = Vec::new();
        for i in 0..primaries {
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-port".into(),
                free_port()?.to_string(),
            ];
            nodes.push(RedisServer::start_named(&format!("redis-{i}"), aof, &extra, log_dir).await?);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()?;
        anyhow::ensure!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let client = node.client().await?;
                let info: String = client
                    .custom(
                        fred::types::CustomCommand::new_static("CLUSTER", fred::types::ClusterHash::Random, false),
                        vec!["INFO"],
                    )
                    .await?;
                let _ = client.quit().await;
                if info.contains("cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the cluster never became ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Self { nodes, cluster: true })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URL the services use.
    pub fn url(&self) -> String {
        if !self.cluster {
            return self.nodes[0].url();
        }
        let others: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", self.nodes[0].port, others.join("&"))
    }

    /// A connected client (a cluster client for a cluster).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(Config::from_url(&self.url())?, None, None, None);
        client.init().await?;
        Ok(client)
    }

    /// The counters of all servers, added up.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let mut total = Counters::default();
        for node in &self.nodes {
            let client = node.client().await?;
            let one = Counters::read(&client).await?;
            let _ = client.quit().await;
            total = Counters {
                net_in: total.net_in + one.net_in,
                net_out: total.net_out + one.net_out,
                commands: total.commands + one.commands,
            };
        }
        Ok(total)
    }

    /// Empties every server.
    pub async fn flush(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let client = node.client().await?;
            let _: () = client.flushall(false).await?;
            let _ = client.quit().await;
        }
        Ok(())
    }

    /// Stops every server.
    pub fn stop(self) {
        for node in self.nodes {
            let _ = node.process.stop(Duration::from_secs(5));
        }
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
