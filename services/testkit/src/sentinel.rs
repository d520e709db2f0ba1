//! Real Redis Sentinels (`redis-server CONF --sentinel`) on loopback,
//! watching a [`RedisServer`](crate::RedisServer) primary, for failover
//! tests. Each runs in its own temporary directory (Sentinel rewrites its
//! configuration file) and is killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The name the sentinels know the primary by.
pub const SERVICE: &str = "postbacks";

/// Sentinels watching one primary.
pub struct Sentinels {
    children: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl Sentinels {
    /// Starts `n` sentinels (a quorum of `n / 2 + 1`) watching the primary
    /// on `primary_port`, declaring it down after 1 s; returns once each
    /// answers with the primary's address.
    pub fn start(primary_port: u16, n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for sentinels");
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let port = crate::free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel-{i}.log\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.path().display(),
                quorum = n / 2 + 1,
            );
            std::fs::write(&conf, text).expect("write sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            children.push(child);
            ports.push(port);
        }
        let sentinels = Self { children, ports, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &sentinels.ports {
            while sentinels.primary_of(*port) != Some(primary_port) {
                assert!(Instant::now() < deadline, "sentinel on {port} never saw the primary");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        sentinels
    }

    /// `redis-sentinel://` URL of all of them, as POSTBACK_REDIS_URL takes it.
    pub fn url(&self) -> String {
        let nodes: String = self.ports[1..].iter().map(|p| format!("&node=127.0.0.1:{p}")).collect();
        format!("redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}{nodes}", self.ports[0])
    }

    /// The sentinels' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The port of the primary, as the first sentinel says.
    pub fn primary_port(&self) -> Option<u16> {
        self.primary_of(self.ports[0])
    }

    fn primary_of(&self, port: u16) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "SENTINEL", "get-master-addr-by-name", SERVICE])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
