//! A throw-away `redis-server` process for one test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;
use tempfile::TempDir;

/// A `redis-server` on 127.0.0.1 with its data in a temporary directory,
/// killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    appendonly: bool,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with AOF (`appendfsync always`, so a kill loses nothing).
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    /// Starts a replica of `primary` (no persistence).
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        Self::start_with_args(false, vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()])
    }

    fn start_with(appendonly: bool) -> Self {
        Self::start_with_args(appendonly, Vec::new())
    }

    fn start_with_args(appendonly: bool, extra: Vec<String>) -> Self {
        // The port is free when chosen but may be taken before redis binds
        // it, so try a few.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let mut server = Self { child: None, port: crate::free_port(), dir, appendonly, extra: extra.clone() };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? `apt-get install redis-server`)");
    }

    /// Spawns the process on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--daemonize", "no", "--protected-mode", "yes"])
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(child) = cmd.spawn() else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connected client for checks made by the test itself.
    pub async fn client(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.url()).expect("url")).build().expect("client");
        client.init().await.expect("connect to test redis");
        client
    }

    /// Waits until the default stream (`postbacks`) and its retry schedule
    /// are both empty: nothing is left to deliver. Panics after `timeout`,
    /// saying what is left.
    pub async fn wait_nothing_to_deliver(&self, timeout: Duration) {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len: u64 = client.xlen("postbacks").await.expect("XLEN");
            let scheduled: u64 = client.zcard("postbacks:retry").await.expect("ZCARD");
            if len == 0 && scheduled == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{len} entries and {scheduled} retries left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that no endpoint record, reference count or batched count is
    /// left: every version 3 entry that left the stream let go of its
    /// record exactly once.
    pub async fn assert_no_records_left(&self) {
        let client = self.client().await;
        for key in ["postbacks:endpoints", "postbacks:endpoints:refs", "postbacks:batched"] {
            let exists: u32 = client.exists(key).await.expect("EXISTS");
            assert_eq!(exists, 0, "{key} is left behind");
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (its AOF, if
    /// any, is replayed). Panics if it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
