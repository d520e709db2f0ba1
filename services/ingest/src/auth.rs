//! Optional bearer-token authentication of the ingest routes.
//!
//! `POSTBACK_INGEST_TOKENS_FILE` names a file with one accepted token per
//! line, stored as the SHA-256 of the token in hex (so the file does not hold
//! the secrets themselves): `printf %s "$TOKEN" | sha256sum`. A second
//! column, when present, is the token's rate in postbacks per second (see
//! [`crate::rate`]). Blank lines and lines starting with `#` are ignored. A request must then carry
//! `Authorization: Bearer <token>`; the token's hash is compared with every
//! accepted hash in constant time. `/healthz` and `/readyz` stay open for
//! probes.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::IngestError;
use crate::idempotency::Caller;
use crate::rate::Rate;
use crate::state::AppState;

/// The accepted token hashes, each with its rate if it has one.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<([u8; 32], Option<Rate>)>);

/// The tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("POSTBACK_INGEST_TOKENS_FILE ({path}): {message}")]
pub struct TokensError {
    path: String,
    message: String,
}

impl TokensError {
    /// The file and what is wrong with it, without the setting's name.
    pub fn detail(&self) -> String {
        format!("{}: {}", self.path, self.message)
    }
}

impl Tokens {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let error = |message: String| TokensError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    /// Parses the file's text: one 64-digit hex SHA-256 per line, then
    /// optionally the token's rate.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut columns = line.split_whitespace();
            let Some(hash) = columns.next().filter(|c| !c.starts_with('#')) else { continue };
            let hash = parse_hex(hash)
                .ok_or_else(|| format!("line {}: expected the SHA-256 of a token as 64 hex digits", n + 1))?;
            let rate = columns.next().map(Rate::parse).transpose().map_err(|e| format!("line {}: {e}", n + 1))?;
            if let Some(extra) = columns.next() {
                return Err(format!("line {}: unexpected {extra:?} after the hash and the rate", n + 1));
            }
            tokens.push((hash, rate));
        }
        if tokens.is_empty() {
            return Err("holds no token hashes".into());
        }
        Ok(Self(tokens))
    }

    /// Who `token` is, if it is accepted: its scope is the first 16 hex
    /// digits of its SHA-256, as its line in the tokens file starts
    /// (idempotency keys and rate budgets are kept per scope). Every hash
    /// is compared, in constant time.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut rate = None;
        for (hash, its_rate) in &self.0 {
            let matches = hash.ct_eq(&presented);
            if bool::from(matches) {
                rate = *its_rate;
            }
            found |= matches;
        }
        bool::from(found).then(|| Caller { scope: crate::idempotency::hex(&presented[..8]), rate })
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Middleware: 401 unless the request carries an accepted bearer token
/// (when tokens are configured at all).
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(tokens) = &state.tokens else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented.and_then(|token| tokens.caller(token)) {
        Some(caller) => {
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            let mut response = IngestError::Unauthorized.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // printf %s secret | sha256sum
    const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn accepts_only_listed_tokens() {
        let tokens = Tokens::parse(&format!("# partners\n\n{SECRET_HASH}\n{}\n", "ab".repeat(32))).expect("parse");
        assert!(tokens.caller("secret").is_some());
        assert!(tokens.caller("Secret").is_none());
        assert!(tokens.caller("").is_none());
        assert!(tokens.caller(SECRET_HASH).is_none(), "the hash itself is not a token");
        assert_eq!(tokens.caller("secret").map(|c| c.scope), Some(SECRET_HASH[..16].to_owned()));
        assert_eq!(tokens.caller("secret").and_then(|c| c.rate), None);
    }

    #[test]
    fn refuses_malformed_files() {
        assert!(Tokens::parse("").is_err());
        assert!(Tokens::parse("# only a comment").is_err());
        let error = Tokens::parse(&format!("{SECRET_HASH}\nsecret\n")).expect_err("plain token");
        assert!(error.contains("line 2"), "{error}");
        assert!(Tokens::parse(&"zz".repeat(32)).is_err());
        assert!(Tokens::parse(&format!("{SECRET_HASH} fast")).expect_err("bad rate").contains("line 1"));
        assert!(Tokens::parse(&format!("{SECRET_HASH} 5 6")).is_err());
    }

    #[test]
    fn a_second_column_is_the_rate() {
        let tokens = Tokens::parse(&format!("{SECRET_HASH}   12.5  \n{}\n", "ab".repeat(32))).expect("parse");
        let rate = tokens.caller("secret").and_then(|c| c.rate).map(Rate::per_second);
        assert_eq!(rate, Some(12.5));
    }
}
