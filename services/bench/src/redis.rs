//! The run's own `redis-server` (in a temporary directory, on a free
//! loopback port, AOF as asked), or a Redis Cluster of several, and the
//! counters read from their INFO.

use std::collections::BTreeMap;
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
    /// One server (`primaries` 0), or a cluster of `primaries`.
    pub async fn start(aof: Aof, primaries: usize, log_dir: &Path) -> anyhow::Result<Self> {
        if primaries == 0 {
            return Ok(Self { nodes: vec![RedisServer::start(aof, log_dir).await?], cluster: false });
        }
        let mut nodes = Vec::new();
        let mut bus_ports = Vec::new();
        for i in 0..primaries {
            let bus = free_port()?;
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-port".into(),
                bus.to_string(),
                // A node alone never learns its own address from a peer.
                "--cluster-announce-ip".into(),
                "127.0.0.1".into(),
            ];
            nodes.push(RedisServer::start_named(&format!("redis-{i}"), aof, &extra, log_dir).await?);
            bus_ports.push(bus);
        }
        // Made by hand rather than with `redis-cli --cluster create`, which
        // wants three primaries at least: equal slot ranges, then every
        // node met.
        let cli = |port: u16, args: &[String]| -> anyhow::Result<()> {
            let out = std::process::Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output()?;
            let said = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(out.status.success() && said.trim() == "OK", "redis-cli {args:?}: {said}");
            Ok(())
        };
        let slots = postback_common::layout::placement::SLOTS as usize;
        for (i, node) in nodes.iter().enumerate() {
            let (start, end) = (i * slots / primaries, (i + 1) * slots / primaries - 1);
            cli(node.port, &["CLUSTER".into(), "ADDSLOTSRANGE".into(), start.to_string(), end.to_string()])?;
        }
        for (node, bus) in nodes.iter().zip(&bus_ports).skip(1) {
            let meet = ["CLUSTER".into(), "MEET".into(), "127.0.0.1".into(), node.port.to_string(), bus.to_string()];
            cli(nodes[0].port, &meet)?;
        }
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
            total = total.plus(&one);
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
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Bytes received from clients.
    pub net_in: u64,
    /// Bytes sent to clients.
    pub net_out: u64,
    /// Commands run (those inside scripts included).
    pub commands: u64,
    /// CPU time the server used (user + system, all its threads), in µs,
    /// as `INFO cpu` reports it.
    pub cpu_us: u64,
    /// Per command (`INFO commandstats`, lower case, e.g. `evalsha`,
    /// `xadd`): calls, and µs spent in them (a script's time includes
    /// the commands it calls, which are also counted on their own).
    pub by_command: BTreeMap<String, (u64, u64)>,
}

impl Counters {
    /// Reads them.
    pub async fn read(client: &Client) -> anyhow::Result<Self> {
        let stats: String = client.info(Some(fred::types::InfoKind::Stats)).await?;
        let commands: String = client.info(Some(fred::types::InfoKind::CommandStats)).await?;
        let cpu: String = client.info(Some(fred::types::InfoKind::Cpu)).await?;
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let by_command: BTreeMap<String, (u64, u64)> = commands.lines().filter_map(parse_commandstat).collect();
        Ok(Self {
            net_in: field(&stats, "total_net_input_bytes") as u64,
            net_out: field(&stats, "total_net_output_bytes") as u64,
            commands: by_command.values().map(|(calls, _)| calls).sum(),
            cpu_us: ((field(&cpu, "used_cpu_sys") + field(&cpu, "used_cpu_user")) * 1e6) as u64,
            by_command,
        })
    }

    /// What happened between `self` and `later`.
    pub fn until(&self, later: &Counters) -> Counters {
        let by_command = later
            .by_command
            .iter()
            .map(|(name, (calls, us))| {
                let (calls0, us0) = self.by_command.get(name).copied().unwrap_or_default();
                (name.clone(), (calls.saturating_sub(calls0), us.saturating_sub(us0)))
            })
            .filter(|(_, (calls, _))| *calls > 0)
            .collect();
        Counters {
            net_in: later.net_in.saturating_sub(self.net_in),
            net_out: later.net_out.saturating_sub(self.net_out),
            commands: later.commands.saturating_sub(self.commands),
            cpu_us: later.cpu_us.saturating_sub(self.cpu_us),
            by_command,
        }
    }

    /// These counters and another server's, added up.
    pub fn plus(&self, other: &Counters) -> Counters {
        let mut by_command = self.by_command.clone();
        for (name, (calls, us)) in &other.by_command {
            let sum = by_command.entry(name.clone()).or_default();
            *sum = (sum.0 + calls, sum.1 + us);
        }
        Counters {
            net_in: self.net_in + other.net_in,
            net_out: self.net_out + other.net_out,
            commands: self.commands + other.commands,
            cpu_us: self.cpu_us + other.cpu_us,
            by_command,
        }
    }
}

/// `cmdstat_xadd:calls=3,usec=12,…` as `("xadd", (3, 12))`.
fn parse_commandstat(line: &str) -> Option<(String, (u64, u64))> {
    let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
    let value = |key: &str| rest.split(',').find_map(|kv| kv.strip_prefix(key)?.parse::<u64>().ok());
    Some((name.to_owned(), (value("calls=")?, value("usec=").unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commandstats_lines() {
        let line = "cmdstat_evalsha:calls=192925,usec=3819684,usec_per_call=19.80,rejected_calls=0,failed_calls=20";
        assert_eq!(parse_commandstat(line), Some(("evalsha".into(), (192_925, 3_819_684))));
        assert_eq!(
            parse_commandstat("cmdstat_config|resetstat:calls=1,usec=108"),
            Some(("config|resetstat".into(), (1, 108)))
        );
        assert_eq!(parse_commandstat("# Commandstats"), None);
        let a = Counters { commands: 3, by_command: [("xadd".into(), (3, 10))].into(), ..Counters::default() };
        let b = Counters { commands: 9, by_command: [("xadd".into(), (9, 25))].into(), ..Counters::default() };
        let d = a.until(&b);
        assert_eq!((d.commands, d.by_command["xadd"]), (6, (6, 15)));
        assert_eq!(a.plus(&b).by_command["xadd"], (12, 35));
    }
}
