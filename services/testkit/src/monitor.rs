//! Counts the commands clients send a [`RedisServer`](crate::RedisServer),
//! with `redis-cli MONITOR`: what a test measures as "Redis commands per
//! postback". Commands run by Lua scripts are not counted (the script call
//! itself is), nor the monitor's own.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `redis-cli MONITOR`, killed when dropped.
pub struct CommandMonitor {
    child: Child,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl CommandMonitor {
    /// Starts monitoring the server on `port`; returns once it is counting.
    pub async fn start(port: u16) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli monitor");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // MONITOR answers OK once it is on.
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        assert!(matches!(first, Ok(Ok(Some(ref ok))) if ok == "OK"), "MONITOR did not start: {first:?}");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let tally = counts.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                // `1700000000.123456 [0 127.0.0.1:5555] "XADD" ...`, or
                // `[0 lua]` for a script's own calls.
                let Some((source, command)) = line.split_once("] \"") else { continue };
                if source.ends_with(" lua") {
                    continue;
                }
                let name = command.split('"').next().unwrap_or_default().to_ascii_uppercase();
                *tally.lock().expect("counts").entry(name).or_default() += 1;
            }
        });
        Self { child, counts }
    }

    /// Commands counted so far, by name.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.counts.lock().expect("counts").clone()
    }

    /// Commands counted so far.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }
}

impl Drop for CommandMonitor {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
