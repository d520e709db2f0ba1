//! Checks shared by the binaries' start-up tests.

use std::process::{Command, Stdio};

/// Runs `binary` once per `(variable, bad value)` and asserts that it exits
/// with code 2 and names the variable on stderr.
pub fn assert_bad_settings_are_named(binary: &str, cases: &[(&str, &str)]) {
    for (var, value) in cases {
        let output = Command::new(binary).env(var, value).stdin(Stdio::null()).output().expect("run binary");
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}
