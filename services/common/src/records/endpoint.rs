//! The endpoint record: what the postbacks of one request share (method,
//! URL template, data keys, delivery policy), stored once in the hash
//! `<stream>:endpoints` under its content address, and referred to by the
//! entries, scheduled retries and dead letters that hold those postbacks.
//!
//! `[1, method, url, [keys…]]`, or `[2, method, url, [keys…], delivery]`
//! for a request with a delivery policy. The address ([`EndpointRef`]) is
//! the first 8 bytes of the SHA-256 of those bytes, written as 16 lower-case
//! hex digits as the hash field. A record read back is only used after
//! [`Endpoint::verify`] has checked it against the address it was looked
//! up under: the one place that check is made.
//!
//! How long a record lives (its reference count in
//! `<stream>:endpoints:refs`) is kept by the scripts that add and remove
//! what refers to it; `schemas/wire-format.md` lists them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::postback::{Postback, WireError, write_msgpack};
use crate::delivery::Delivery;
use crate::method::Method;

/// What the postbacks of a request share.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// How to deliver.
    pub method: Method,
    /// The URL template, `{key}` placeholders still in place.
    pub url: String,
    /// The data keys, in request order; each row holds one value per key.
    pub keys: Vec<String>,
    /// The request's delivery policy, if it gave one.
    pub delivery: Option<Delivery>,
}

/// A record's content address: the first 8 bytes of the SHA-256 of its
/// encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointRef(pub [u8; 8]);

impl std::fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for EndpointRef {
    type Err = String;

    /// Reads the 16 hex digits of a hash field back.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an endpoint record address (16 hex digits)");
        if text.len() != 16 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 8];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// The record as stored.
#[derive(Serialize)]
struct RecordOut<'a> {
    version: u8,
    method: &'a str,
    url: &'a str,
    keys: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a Delivery>,
}

#[derive(Deserialize)]
struct RecordIn {
    version: u8,
    method: String,
    url: String,
    keys: Vec<String>,
    #[serde(default)]
    delivery: Option<Delivery>,
}

impl Endpoint {
    /// The shared part of `postback`.
    pub fn of(postback: &Postback) -> Self {
        Self {
            method: postback.method,
            url: postback.url.clone(),
            keys: postback.data.0.iter().map(|(k, _)| k.clone()).collect(),
            delivery: postback.delivery,
        }
    }

    /// The record's bytes, as stored in the endpoint hash.
    pub fn encode(&self) -> Vec<u8> {
        let record = RecordOut {
            version: if self.delivery.is_some() { 2 } else { 1 },
            method: self.method.as_str(),
            url: &self.url,
            keys: &self.keys,
            delivery: self.delivery.as_ref(),
        };
        let mut out = Vec::with_capacity(16 + self.url.len() + 16 * self.keys.len());
        write_msgpack(&mut out, &record);
        out
    }

    /// Reads a record back (without checking it against an address: see
    /// [`verify`](Self::verify)).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let malformed =
            |reason: String| WireError::Malformed { version: 3, reason: format!("endpoint record: {reason}") };
        let record: RecordIn = rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        match (record.version, record.delivery) {
            (1, None) | (2, Some(_)) => {}
            (version @ (1 | 2), _) => return Err(malformed(format!("record version {version} with the wrong fields"))),
            (version, _) => return Err(malformed(format!("unknown record version {version}"))),
        }
        if record.delivery.is_some_and(|d| !d.is_valid()) {
            return Err(malformed(format!("delivery policy out of range: {:?}", record.delivery)));
        }
        let method = record.method.parse().map_err(|e: crate::method::UnsupportedMethod| malformed(e.to_string()))?;
        Ok(Self { method, url: record.url, keys: record.keys, delivery: record.delivery })
    }

    /// The content address of an encoded record.
    pub fn reference(encoded: &[u8]) -> EndpointRef {
        let digest = Sha256::digest(encoded);
        let mut out = [0; 8];
        out.copy_from_slice(&digest[..8]);
        EndpointRef(out)
    }

    /// The record `stored` under `address` in the endpoint hash, if it
    /// really is the record with that address; else why not.
    pub fn verify(address: EndpointRef, stored: &[u8]) -> Result<Self, String> {
        if Self::reference(stored) != address {
            return Err(format!("the record under {address} has another address"));
        }
        Self::decode(stored).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_content_addressed() {
        let endpoint = Endpoint {
            method: Method::Post,
            url: "http://h/{a}".into(),
            keys: vec!["a".into(), "b".into()],
            delivery: None,
        };
        let bytes = endpoint.encode();
        assert_eq!(Endpoint::decode(&bytes).expect("decodes"), endpoint);
        let other = Endpoint { keys: vec!["b".into(), "a".into()], ..endpoint.clone() };
        assert_ne!(Endpoint::reference(&bytes), Endpoint::reference(&other.encode()));
        assert_eq!(Endpoint::reference(&bytes).to_string().len(), 16);
        assert!(Endpoint::decode(b"\x94\x02\xa3GET\xa0\x90").is_err(), "version 2 without a policy");
        assert!(Endpoint::decode(b"\x94\x03\xa3GET\xa0\x90").is_err(), "unknown record version");
    }

    #[test]
    fn a_record_is_used_only_under_its_own_address() {
        let endpoint =
            Endpoint { method: Method::Get, url: "http://h/{a}".into(), keys: vec!["a".into()], delivery: None };
        let bytes = endpoint.encode();
        let address = Endpoint::reference(&bytes);
        assert_eq!(Endpoint::verify(address, &bytes), Ok(endpoint.clone()));
        let other = Endpoint { url: "http://other/".into(), ..endpoint }.encode();
        assert!(Endpoint::verify(address, &other).expect_err("another record").contains("another address"));
        assert_eq!(address.to_string().parse::<EndpointRef>(), Ok(address));
        assert!("xyz".parse::<EndpointRef>().is_err());
        assert!("0123456789abcdeg".parse::<EndpointRef>().is_err());
    }
}
