//! Files that say something per target, one target per line:
//! `HOST[:PORT] VALUE…` (`POSTBACK_SIGNING_KEYS_FILE`,
//! `POSTBACK_HOST_LIMITS_FILE`). Blank lines and `#` comments are ignored.
//! A line with a port matches that host and port only; one without matches
//! the host on any port; host names compare without case. A target listed
//! twice, or given as a URL, is an error naming its line.

use std::collections::HashMap;
use std::path::Path;

/// What a file says, by target.
#[derive(Debug, Clone)]
pub(crate) struct TargetFile<T> {
    /// `host` or `host:port`, lower case → what the line says.
    targets: HashMap<String, T>,
}

impl<T> Default for TargetFile<T> {
    fn default() -> Self {
        Self { targets: HashMap::new() }
    }
}

impl<T> TargetFile<T> {
    /// Reads a file; `value` turns a line's columns after the target into
    /// what it says (its error gets the line number).
    pub(crate) fn load(path: &Path, value: impl Fn(&[&str]) -> Result<T, String>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, value).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a file's text.
    pub(crate) fn parse(text: &str, value: impl Fn(&[&str]) -> Result<T, String>) -> Result<Self, String> {
        let mut targets = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let Some((target, rest)) = columns.split_first().filter(|(t, _)| !t.starts_with('#')) else { continue };
            let line_no = n + 1;
            if target.contains('/') {
                return Err(format!("line {line_no}: {target:?} is a URL; give HOST or HOST:PORT"));
            }
            let said = value(rest).map_err(|e| format!("line {line_no}: {e}"))?;
            if targets.insert(target.to_ascii_lowercase(), said).is_some() {
                return Err(format!("line {line_no}: {target} is listed twice"));
            }
        }
        Ok(Self { targets })
    }

    /// Whether no target is listed.
    pub(crate) fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The line for a target URL, if one matches: its target as written
    /// (lower case) and what it says.
    pub(crate) fn get(&self, url: &url::Url) -> Option<(&str, &T)> {
        let host = url.host_str()?.to_ascii_lowercase();
        let port = url.port_or_known_default()?;
        self.targets
            .get_key_value(&format!("{host}:{port}"))
            .or_else(|| self.targets.get_key_value(&host))
            .map(|(target, said)| (target.as_str(), said))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(rest: &[&str]) -> Result<String, String> {
        if rest.is_empty() { Err("nothing said".into()) } else { Ok(rest.join(" ")) }
    }

    #[test]
    fn targets_match_by_host_and_port() {
        let file = TargetFile::parse("# partners\n\nHooks.Example:8443 a b\nother.example c\n", words).expect("parse");
        let at = |u: &str| url::Url::parse(u).expect("url");
        assert_eq!(file.get(&at("https://hooks.example:8443/x")), Some(("hooks.example:8443", &"a b".to_owned())));
        assert!(file.get(&at("https://hooks.example/x")).is_none(), "another port");
        assert_eq!(file.get(&at("http://other.example:9000/x")).map(|(t, _)| t), Some("other.example"), "any port");
        assert!(file.get(&at("http://third.example/x")).is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, says) in [
            ("h.example", "line 1: nothing said"),
            ("https://h.example a", "line 1: \"https://h.example\" is a URL"),
            ("h.example a\nH.example b", "line 2: H.example is listed twice"),
        ] {
            let error = TargetFile::parse(text, words).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
