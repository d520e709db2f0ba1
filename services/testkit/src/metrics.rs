//! Reading a `/metrics` answer in tests, and linting it with promtool.

use std::io::Write;
use std::process::{Command, Stdio};

/// The value of the first sample named `name` whose labels include every
/// one of `labels`; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (sample, label_text) = match series.split_once('{') {
            Some((sample, rest)) => (sample, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if sample != name {
            return None;
        }
        let present = |(k, v): &(&str, &str)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
        labels.iter().all(present).then(|| value.parse().ok()).flatten()
    })
}

/// Like [`metric`], panicking with the whole text when the sample is missing.
pub fn expect_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no sample {name} with {labels:?} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text` when `PROMTOOL` names the binary
/// (`ops/test.sh` always sets it) and fails on any complaint, naming
/// conventions included. Without `PROMTOOL` it says so and returns.
pub fn lint_with_promtool(text: &str) {
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        eprintln!("PROMTOOL is not set: skipping `promtool check metrics` (ops/test.sh sets it)");
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && complaints.trim().is_empty(), "promtool check metrics:\n{complaints}\n{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_name_and_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{route=\"/a\",outcome=\"ok\"} 3\nx_total{route=\"/b\",outcome=\"ok\"} 4\ny 1.5\n";
        assert_eq!(metric(text, "x_total", &[("route", "/b")]), Some(4.0));
        assert_eq!(metric(text, "x_total", &[("outcome", "ok")]), Some(3.0));
        assert_eq!(metric(text, "y", &[]), Some(1.5));
        assert_eq!(metric(text, "x_total", &[("outcome", "bad")]), None);
        assert_eq!(metric(text, "x", &[]), None);
    }
}
