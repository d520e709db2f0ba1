//! Signed postbacks, the Standard Webhooks v1 way.
//!
//! `POSTBACK_SIGNING_KEYS_FILE` lists, one target per line,
//! `HOST[:PORT] whsec_BASE64 [whsec_BASE64 …]` (how targets match:
//! [`crate::target_file`]). Several keys on a line are for rotation: each
//! gives one signature.
//!
//! Every attempt to a matching target carries
//! - `webhook-id`: the postback id (the same on every attempt, like
//!   `X-Postback-Id`),
//! - `webhook-timestamp`: this attempt's Unix time in seconds,
//! - `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
//!   `id.timestamp.body` under the base64-decoded key, one per key,
//!   separated by spaces;
//!
//! over the exact bytes sent (an empty body for GET and DELETE). How a
//! receiver checks them, and how to rotate a key:
//! `runbooks/signing-keys.md`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::target_file::TargetFile;

/// The keys of each target.
#[derive(Debug, Clone, Default)]
pub struct SigningKeys(TargetFile<Vec<Vec<u8>>>);

impl SigningKeys {
    /// Reads a keys file.
    pub fn load(path: &Path) -> Result<Self, String> {
        TargetFile::load(path, keys).map(Self)
    }

    /// Parses a keys file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        TargetFile::parse(text, keys).map(Self)
    }

    /// Whether no target is signed for.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys for a target URL, if it is listed.
    pub(crate) fn keys_for(&self, url: &url::Url) -> Option<&[Vec<u8>]> {
        self.0.get(url).map(|(_, keys)| keys.as_slice())
    }
}

/// A line's keys.
fn keys(columns: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for key in columns {
        let encoded = key.strip_prefix("whsec_").ok_or("a key must start with whsec_ (then base64)")?;
        let bytes = STANDARD.decode(encoded).map_err(|e| format!("key is not base64: {e}"))?;
        if bytes.is_empty() {
            return Err("empty key".into());
        }
        keys.push(bytes);
    }
    if keys.is_empty() {
        return Err("no key".into());
    }
    Ok(keys)
}

/// `webhook-signature`'s value for `id`, `timestamp` and `body` under
/// `keys`: `v1,<base64>` per key, separated by spaces.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    let signed = |key: &[u8]| {
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    };
    keys.iter().map(|key| signed(key)).collect::<Vec<_>>().join(" ")
}

/// Adds the three Standard Webhooks headers to `headers`.
pub(crate) fn sign(headers: &mut HeaderMap, keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) {
    let pairs = [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature(keys, id, timestamp, body)),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_s_test_vector() {
        let keys = SigningKeys::parse("api.example whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("parse");
        let url = url::Url::parse("https://api.example/hook").expect("url");
        let keys = keys.keys_for(&url).expect("listed");
        assert_eq!(
            signature(keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn one_signature_per_key() {
        let a = STANDARD.encode(b"key-a");
        let b = STANDARD.encode(b"key-b");
        let text = format!("Hooks.Example:8443 whsec_{a} whsec_{b}\nother.example whsec_{a}\n");
        let keys = SigningKeys::parse(&text).expect("parse");
        let at = |u: &str| url::Url::parse(u).expect("url");
        assert_eq!(keys.keys_for(&at("https://hooks.example:8443/x")).map(<[_]>::len), Some(2));
        let two = signature(keys.keys_for(&at("https://hooks.example:8443/")).expect("keys"), "id", 1, b"");
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn bad_files_say_which_line() {
        for (text, says) in [
            ("h.example", "line 1: no key"),
            ("h.example secret", "line 1: a key must start with whsec_"),
            ("h.example whsec_!!!", "line 1: key is not base64"),
            ("h.example whsec_", "line 1: empty key"),
        ] {
            let error = SigningKeys::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
