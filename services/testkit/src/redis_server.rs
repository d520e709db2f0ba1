//! A throw-away `redis-server` process for one test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
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

    /// Starts a replica of `primary` (no persistence) and waits until it has
    /// caught up.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let replica =
            Self::start_with_args(false, vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica.replicating() {
            assert!(Instant::now() < deadline, "the replica on {} never caught up", replica.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// Whether this replica's link to its primary is up.
    pub fn replicating(&self) -> bool {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string(), "INFO", "replication"]).output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("master_link_status:up"))
    }

    /// A server started with more command-line options.
    pub fn start_with_extra(extra: Vec<String>) -> Self {
        Self::start_with_args(false, extra)
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

    /// [`crate::queue_checks::wait_nothing_to_deliver`] for the default
    /// stream.
    pub async fn wait_nothing_to_deliver(&self, timeout: Duration) {
        let keys = postback_common::keys::Keys::default();
        crate::queue_checks::wait_nothing_to_deliver(&self.client().await, &keys, timeout).await;
    }

    /// [`crate::queue_checks::assert_no_records_left`] for the default
    /// stream.
    pub async fn assert_no_records_left(&self) {
        crate::queue_checks::assert_no_records_left(&self.client().await, &postback_common::keys::Keys::default())
            .await;
    }

    /// [`crate::queue_checks::assert_counts_exact`] for the default stream.
    pub async fn assert_counts_exact(&self) -> u64 {
        crate::queue_checks::assert_counts_exact(&self.client().await, &postback_common::keys::Keys::default()).await
    }

    /// Every postback in the default retry schedule (its levels, and the
    /// schedule as it was before them), soonest first: when it is due, its
    /// attempts so far, and the postback, its endpoint record looked up.
    pub async fn scheduled_postbacks(&self) -> Vec<(u64, u32, postback_common::Postback)> {
        use postback_common::records::postback::{Decoded, decode_entry};
        use postback_common::records::schedule;
        use postback_common::records::stream_entry::StreamEntry;
        let client = self.client().await;
        let keys = postback_common::keys::Keys::default();
        let mut out = Vec::new();
        let index: Vec<(String, f64)> =
            client.zrange(&keys.schedule, 0, -1, None, false, None, true).await.expect("ZRANGE");
        let mut found: Vec<(u64, StreamEntry)> = Vec::new();
        for (member, _) in index {
            let delay = schedule::parse_member(member.as_bytes()).expect("a level");
            let level: Vec<(String, Vec<(String, Bytes)>)> =
                client.xrange(schedule::level_key(&keys.schedule, delay), "-", "+", None).await.expect("XRANGE");
            for (id, fields) in level {
                let entry = StreamEntry::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
                found.push((schedule::due_ms(&id, delay).expect("an id"), entry));
            }
        }
        let old: Vec<(Bytes, f64)> = client.zrange(&keys.retry, 0, -1, None, false, None, true).await.expect("ZRANGE");
        for (member, due) in old {
            let old = schedule::OldMember::parse(&member).expect("an old member");
            found.push((due as u64, StreamEntry::again(old.payload, old.attempts, Some(old.first_attempt_ms))));
        }
        for (due, entry) in found {
            let payload = entry.payload.expect("p");
            let attempts = match decode_entry(&payload) {
                Ok(Decoded::Retried(retried)) => retried.attempts,
                _ => entry.attempts,
            };
            let postbacks = postback_common::entries::resolve(&client, &keys, &payload)
                .await
                .expect("Redis")
                .unwrap_or_else(|why| panic!("a scheduled entry that cannot be read: {why}"));
            out.extend(postbacks.into_iter().map(|p| (due, attempts, p)));
        }
        out.sort_by_key(|(due, _, _)| *due);
        out
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP) without killing it: it neither answers
    /// nor reads its replication link until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
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

/// Entries pending in the default group, 0 when there is no such group.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
