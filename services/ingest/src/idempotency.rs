//! `Idempotency-Key`: a caller that sends the same request again with the
//! same key (after a timeout, a 503 that says the postbacks may have been
//! queued, or a crash of its own) gets the first answer again, and nothing
//! is queued twice.
//!
//! The key is 1 to 255 visible ASCII characters. Ingest keeps, for
//! `POSTBACK_IDEMPOTENCY_TTL_S` after the postbacks were queued, a record
//! of the key: the SHA-256 of the request body and the ids given out
//! (the first id and the count: a request's ids are consecutive). The
//! enqueue script writes it with the postbacks and looks it up before
//! anything else, so the two can never disagree:
//!
//! * same key, same body: the same 202, same ids (`Idempotent-Replayed:
//!   true`), nothing queued;
//! * same key, another body: 422 `/problems/idempotency-key-reused`.
//!
//! Keys are scoped per caller: with `POSTBACK_INGEST_TOKENS_FILE` set, by
//! the bearer token that was accepted (two partners may use the same key),
//! else shared by all callers. The record lives at
//! `<stream>:idempotency:<scope>:<key>`, scope `-` without tokens or the
//! first 16 hex digits of the token's SHA-256 (its line in the tokens
//! file). With partitions, the scope and key choose the partition (the
//! same one while the partitions taking requests stay the same), and the
//! record lives there with the postbacks: `{<tag>}:idempotency:<scope>:<key>`.
//! After a change of partitions, a key is first looked up in the partitions
//! it mapped to before ([`crate::partitions::View::earlier_for_key`]), so a
//! request retried across the change is still replayed
//! (runbooks/partitions.md says how this stays exact).

use axum::http::HeaderMap;
use postback_common::keys::Keys;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::request::{Invalid, Violation};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// The response header that marks an answer given again.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Longest key.
pub const MAX_KEY_BYTES: usize = 255;

/// Who is asking, when tokens are configured: the accepted bearer token's
/// scope (16 hex digits of its hash) and its rate, if its line gives one.
/// Put in the request's extensions by the auth middleware.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Keys idempotency records and the rate budget.
    pub scope: String,
    /// Postbacks per second allowed (see [`crate::rate`]).
    pub rate: Option<crate::rate::Rate>,
}

/// A request's key, checked, with what the enqueue script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The partition the record is kept in ([`at`](Self::at)).
    pub partition: u32,
    /// The record's Redis key (empty until [`at`](Self::at)).
    pub record_key: String,
    /// The caller's scope and the key (`<scope>:<key>`): what chooses the
    /// partition.
    pub scoped: String,
    /// SHA-256 of the request body, hex.
    pub fingerprint: String,
}

/// What a record says was given out for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Given {
    /// The first postback id.
    pub first_id: Uuid,
    /// How many postbacks (their ids follow the first).
    pub count: usize,
}

impl Idempotency {
    /// The request's key, if it sent one, not yet in a partition
    /// ([`at`](Self::at)); `caller` is the accepted token's scope. An
    /// unusable key is an invalid request.
    pub fn from_request(headers: &HeaderMap, body: &[u8], caller: Option<&Caller>) -> Result<Option<Self>, Invalid> {
        let Some(value) = headers.get(HEADER) else { return Ok(None) };
        let key = value.as_bytes();
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(Invalid(vec![Violation {
                field: "Idempotency-Key".into(),
                detail: format!("must be 1 to {MAX_KEY_BYTES} visible ASCII characters (no spaces)"),
            }]));
        }
        let key = String::from_utf8_lossy(key);
        let scope = caller.map_or("-", |c| c.scope.as_str());
        let scoped = format!("{scope}:{key}");
        Ok(Some(Self { partition: 0, record_key: String::new(), scoped, fingerprint: hex(&Sha256::digest(body)) }))
    }

    /// The same key, its record kept in partition `keys`.
    pub fn at(&self, keys: &Keys) -> Self {
        Self {
            partition: keys.partition,
            record_key: format!("{}{}", keys.idempotency, self.scoped),
            scoped: self.scoped.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The record to keep: `<fingerprint>:<first id>:<count>`.
    pub fn record(&self, given: Given) -> String {
        format!("{}:{}:{}", self.fingerprint, given.first_id, given.count)
    }

    /// What a stored record says was given out.
    pub fn given(record: &str) -> Option<Given> {
        let mut parts = record.splitn(3, ':');
        let (_, first_id, count) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Given { first_id: first_id.parse().ok()?, count: count.parse().ok()? })
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, axum::http::HeaderValue::from_bytes(key).expect("header value"));
        headers
    }

    #[test]
    fn keys_are_checked_and_scoped() {
        let p = Keys::new("p", "g");
        assert_eq!(Idempotency::from_request(&HeaderMap::new(), b"{}", None), Ok(None));
        let mine = Idempotency::from_request(&headers(b"order-42"), b"{}", None).expect("valid").expect("a key");
        assert_eq!(mine.at(&p).record_key, "p:idempotency:-:order-42");
        assert_eq!(mine.fingerprint, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        let caller = Caller { scope: "2bb80d537b1da3e3".into(), rate: None };
        let theirs =
            Idempotency::from_request(&headers(b"order-42"), b"{}", Some(&caller)).expect("valid").expect("a key");
        assert_eq!(theirs.scoped, "2bb80d537b1da3e3:order-42");
        assert_eq!(theirs.at(&p).record_key, "p:idempotency:2bb80d537b1da3e3:order-42");
        let four = postback_common::keys::Partitions::new("p", "g", None, 4, false);
        let keys = four.for_key(theirs.scoped.as_bytes());
        let spread = theirs.at(keys);
        assert_eq!(spread.partition, keys.partition);
        assert_eq!(spread.record_key, format!("{}2bb80d537b1da3e3:order-42", keys.idempotency));
        let long = vec![b'k'; MAX_KEY_BYTES];
        assert!(Idempotency::from_request(&headers(&long), b"", None).is_ok());
        for bad in [&b""[..], b"has space", b"tab\tin", "ü".as_bytes(), &[b'k'; MAX_KEY_BYTES + 1]] {
            let error = Idempotency::from_request(&headers(bad), b"", None).expect_err("refused");
            assert_eq!(error.0[0].field, "Idempotency-Key", "{bad:?}");
        }
    }

    #[test]
    fn a_record_gives_back_the_ids() {
        let key = Idempotency { partition: 0, record_key: "k".into(), scoped: "-:k".into(), fingerprint: "ab".into() };
        let given = Given { first_id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001), count: 3 };
        let record = key.record(given);
        assert_eq!(record, "ab:01920000-0000-7000-8000-000000000001:3");
        assert_eq!(Idempotency::given(&record), Some(given));
        assert_eq!(Idempotency::given("ab:nonsense:3"), None);
    }
}
