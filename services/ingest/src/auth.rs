//! Optional bearer-token authentication of the ingest routes.
//!
//! `POSTBACK_INGEST_TOKENS_FILE` names a file with one accepted token per
//! line, stored as the SHA-256 of the token in hex (so the file does not hold
//! the secrets themselves): `printf %s "$TOKEN" | sha256sum`. Blank lines and
//! lines starting with `#` are ignored. A request must then carry
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
use crate::state::AppState;

/// The accepted token hashes.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

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

    /// Parses the file's text: one 64-digit hex SHA-256 per line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            hashes.push(
                parse_hex(line)
                    .ok_or_else(|| format!("line {}: expected the SHA-256 of a token as 64 hex digits", n + 1))?,
            );
        }
        if hashes.is_empty() {
            return Err("holds no token hashes".into());
        }
        Ok(Self(hashes))
    }

    /// The scope of `token` if it is accepted: the first 16 hex digits of
    /// its SHA-256, as its line in the tokens file starts (idempotency keys
    /// are kept per scope). Every hash is compared, in constant time.
    pub fn scope_of(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let found = self.0.iter().fold(subtle::Choice::from(0), |found, hash| found | hash.ct_eq(&presented));
        bool::from(found).then(|| Caller(crate::idempotency::hex(&presented[..8])))
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
    match presented.and_then(|token| tokens.scope_of(token)) {
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
        assert!(tokens.scope_of("secret").is_some());
        assert!(tokens.scope_of("Secret").is_none());
        assert!(tokens.scope_of("").is_none());
        assert!(tokens.scope_of(SECRET_HASH).is_none(), "the hash itself is not a token");
        assert_eq!(tokens.scope_of("secret").map(|c| c.0), Some(SECRET_HASH[..16].to_owned()));
    }

    #[test]
    fn refuses_malformed_files() {
        assert!(Tokens::parse("").is_err());
        assert!(Tokens::parse("# only a comment").is_err());
        let error = Tokens::parse(&format!("{SECRET_HASH}\nsecret\n")).expect_err("plain token");
        assert!(error.contains("line 2"), "{error}");
        assert!(Tokens::parse(&"zz".repeat(32)).is_err());
    }
}
