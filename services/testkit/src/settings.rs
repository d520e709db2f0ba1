//! Checks shared by the binaries' start-up tests.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a binary may take to refuse a bad setting; one still running
/// after this took the value as good.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);

/// Runs `binary` once per `(variable, bad value)` and asserts that it exits
/// with code 2 and names the variable on stderr. A binary that accepts the
/// value (and so keeps running) is killed and fails the test, instead of
/// hanging it.
pub fn assert_bad_settings_are_named(binary: &str, cases: &[(&str, &str)]) {
    for (var, value) in cases {
        let mut child = Command::new(binary)
            .env(var, value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run binary");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > REFUSE_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{var}={value} was accepted: the binary was still running after {REFUSE_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
        assert_eq!(status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}
