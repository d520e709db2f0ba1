//! A throw-away Redis Cluster for one test: three (or more) primaries on
//! 127.0.0.1, each a [`RedisServer`] with cluster mode on, joined with
//! `redis-cli --cluster create`.

use std::process::Command;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::RedisServer;

/// Primaries of one Redis Cluster, killed when dropped.
pub struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    /// Starts `primaries` nodes (at least three, as Redis requires), spreads
    /// the 16,384 slots over them and waits until every node says the
    /// cluster is ok.
    pub fn start(primaries: usize) -> Self {
        Self::start_with_replicas(primaries, 0)
    }

    /// Like [`Cluster::start`], with `replicas` replicas of each primary
    /// (the node order after the primaries is Redis's choice).
    pub fn start_with_replicas(primaries: usize, replicas: usize) -> Self {
        assert!(primaries >= 3, "a Redis Cluster needs three primaries");
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                // The bus port defaults to port + 10,000, which may not exist
                // or be free; choose it too.
                RedisServer::start_with_extra(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-port".into(),
                    crate::free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    // As ops/cluster/redis-cluster.conf: a lost primary
                    // stops its own slots, not the others.
                    "--cluster-require-full-coverage".into(),
                    "no".into(),
                    "--cluster-replica-validity-factor".into(),
                    "0".into(),
                    // Replicas sync at once, not after the default 5 s.
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = |n: &RedisServer| cluster_ok(n.port()) && (!is_replica(n.port()) || n.replicating());
        while !cluster.nodes.iter().all(ready) {
            assert!(Instant::now() < deadline, "the cluster on {addresses:?} never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=…`.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port())).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", self.nodes[0].port(), others.join("&"))
    }

    /// The nodes, primaries first as created.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to kill and restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The port of the primary that serves `key`'s slot now, as a node
    /// other than `not` (say, one just killed) sees the cluster; `None`
    /// while the slot has no live primary.
    pub fn primary_of(&self, key: &str, not: u16) -> Option<u16> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let asked = self.nodes.iter().find(|n| n.port() != not)?.port().to_string();
        let out = Command::new("redis-cli").args(["-p", &asked, "CLUSTER", "NODES"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(l), Ok(h)) if (l..=h).contains(&slot))
            });
            let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// The port of a replica of the primary on `primary` (as the cluster
    /// sees it now), if it has one.
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        let asked = self.nodes.iter().find(|n| n.port() != primary)?.port().to_string();
        let out = Command::new("redis-cli").args(["-p", &asked, "CLUSTER", "NODES"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let port_of = |field: &str| field.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok();
        let rows: Vec<Vec<&str>> =
            text.lines().map(|l| l.split_whitespace().collect()).filter(|f: &Vec<&str>| f.len() > 3).collect();
        let id = rows.iter().find(|f| port_of(f[1]) == Some(primary))?[0];
        rows.iter().filter(|f| f[3] == id && !f[2].contains("fail")).find_map(|f| port_of(f[1]))
    }

    /// A connected cluster client for checks made by the test itself.
    pub async fn client(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.url()).expect("url")).build().expect("client");
        client.init().await.expect("connect to the test cluster");
        client
    }

    /// How many keys each primary holds (DBSIZE), in node order.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let out = Command::new("redis-cli").args(["-p", &n.port().to_string(), "DBSIZE"]).output();
                out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(0)
            })
            .collect()
    }
}

/// Whether the node on `port` is a replica.
fn is_replica(port: u16) -> bool {
    let out = Command::new("redis-cli").args(["-p", &port.to_string(), "ROLE"]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("slave"))
}

/// Whether the node on `port` reports `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    let out = Command::new("redis-cli").args(["-p", &port.to_string(), "CLUSTER", "INFO"]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}
