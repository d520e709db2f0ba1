//! The MessagePack wire format of a postback, as stored in the stream.
//!
//! A stream entry's field [`ENTRY_FIELD`](crate::keys::ENTRY_FIELD) holds a
//! MessagePack array whose first element is the format version, so a reader
//! can tell versions apart before decoding the rest. Arrays rather than maps
//! keep field names out of every entry. `schemas/wire-format.md` documents
//! each version byte by byte; this module implements versions 1, 2 and 4
//! and tells all five apart.
//!
//! Version 1: `[1, id: bin 16, accepted_at_ms: uint, method: str, url: str,
//! data: map str → (nil | bool | int | float | str)]`.
//!
//! Version 2: version 1 plus a seventh element, the W3C trace context of
//! ingest's span for the postback: `bin 25` (trace id, span id, flags; see
//! [`TraceContext`]) or nil.
//!
//! Version 3: several postbacks of one request in one entry, their shared
//! endpoint stored once elsewhere; see [`super::request`].
//!
//! Version 4: version 2 (the trace context nil when there is none) plus an
//! eighth element, the request's delivery policy ([`Delivery`]).
//!
//! Version 5: postbacks of a version 3 or 5 entry attempted again
//! together, their endpoint still stored apart; see [`super::retried`].
//!
//! [`encode`] writes version 1 when the postback has neither a trace
//! context (no exporter configured) nor a delivery policy, 2 when it has
//! only a trace context, and 4 when it has a policy; [`decode`] reads
//! them, and [`decode_entry`] reads all five. Ingest writes version 3 (see
//! [`crate::records::request::pack`]), and single postbacks only when two
//! endpoint records would share an address; deliver writes version 5 into
//! the retry schedule. Rolling upgrades: deploy deliver (the reader) before
//! ingest (the writer) whenever a new version is introduced.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::request::{self as request_entry, RequestEntry};
use crate::data::Data;
use crate::delivery::Delivery;
use crate::method::Method;
use crate::trace_context::TraceContext;

/// One postback: a single delivery to make, produced by ingest from one item
/// of a request's `data` array.
#[derive(Debug, Clone, PartialEq)]
pub struct Postback {
    /// Assigned at ingest (UUIDv7) and sent as `X-Postback-Id`; stable across
    /// retries and re-sent XADDs, so receivers can deduplicate.
    pub id: Uuid,
    /// When ingest accepted the request, in milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// How to deliver.
    pub method: Method,
    /// The URL template, `{key}` placeholders still in place.
    pub url: String,
    /// The values for the placeholders (and the JSON body of POST/PUT/PATCH).
    pub data: Data,
    /// Ingest's span for this postback, when traces are exported: the
    /// parent of every delivery attempt's span.
    pub trace: Option<TraceContext>,
    /// The request's delivery policy, if it gave one.
    pub delivery: Option<Delivery>,
}

/// Why a stream entry could not be decoded into a [`Postback`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The entry does not start with a MessagePack array holding a version.
    #[error("not a postback: {0}")]
    NotAPostback(&'static str),
    /// A version this build does not know (written by a newer ingest?).
    #[error("unknown wire format version {0}")]
    UnknownVersion(u64),
    /// A version 3 or 5 entry, read where a single postback was expected.
    #[error("a version 3 or 5 entry holds postbacks whose endpoint is stored apart; it is not a single postback")]
    NotSingle,
    /// The version is known but the rest does not match it.
    #[error("malformed version {version} postback: {reason}")]
    Malformed {
        /// The version the entry claimed.
        version: u8,
        /// What was wrong.
        reason: String,
    },
}

/// What [`encode`] writes: the elements of version 1, then, for version 2,
/// the trace context (left out altogether in version 1, not written as nil).
#[derive(Serialize)]
struct Fields<'a> {
    version: u8,
    #[serde(with = "serde_bytes")]
    id: &'a [u8; 16],
    accepted_at_ms: u64,
    method: &'a str,
    url: &'a str,
    data: &'a Data,
    /// Left out in version 1; nil in version 4 without a trace context.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Option<&'a serde_bytes::Bytes>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a Delivery>,
}

/// What [`decode`] reads, either version (the array's length is checked
/// against the version before).
#[derive(Deserialize)]
struct Stored {
    _version: u8,
    #[serde(with = "serde_bytes")]
    id: [u8; 16],
    accepted_at_ms: u64,
    method: String,
    url: String,
    data: Data,
    #[serde(default)]
    trace: Option<serde_bytes::ByteBuf>,
    #[serde(default)]
    delivery: Option<Delivery>,
}

/// Encodes a postback (version 1 without a trace context, 2 with one, 4
/// with a delivery policy), appending to `out`.
pub fn encode_into(postback: &Postback, out: &mut Vec<u8>) {
    let trace = postback.trace.map(|t| t.to_bytes());
    let version = match (postback.delivery, trace) {
        (Some(_), _) => 4,
        (None, Some(_)) => 2,
        (None, None) => 1,
    };
    let fields = Fields {
        version,
        id: postback.id.as_bytes(),
        accepted_at_ms: postback.accepted_at_ms,
        method: postback.method.as_str(),
        url: &postback.url,
        data: &postback.data,
        trace: match (version, &trace) {
            (1, _) => None,
            (_, trace) => Some(trace.as_ref().map(|t| serde_bytes::Bytes::new(t))),
        },
        delivery: postback.delivery.as_ref(),
    };
    write_msgpack(out, &fields);
}

/// Appends `value` as MessagePack (arrays, not maps) to `out`. Writing into
/// a Vec cannot fail, and every type of the wire format has a MessagePack
/// form, so this cannot fail either.
pub(crate) fn write_msgpack(out: &mut Vec<u8>, value: &impl Serialize) {
    #[allow(clippy::expect_used)]
    rmp_serde::encode::write(out, value).expect("encoding into memory cannot fail");
}

/// Encodes a single postback: version 1, 2 when it carries a trace
/// context, 4 when it carries a delivery policy.
pub fn encode(postback: &Postback) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + postback.url.len() + 32 * postback.data.len());
    encode_into(postback, &mut out);
    out
}

/// What a stream entry's value holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// One postback (versions 1, 2 and 4).
    Single(Postback),
    /// Several, whose endpoint record is still to be looked up (version 3).
    Request(RequestEntry),
    /// Some postbacks of an entry, attempted again together, their endpoint
    /// record still to be looked up (version 5).
    Retried(super::retried::RetriedEntry),
}

impl Decoded {
    /// The endpoint record the value refers to (versions 3 and 5).
    pub fn endpoint(&self) -> Option<crate::records::endpoint::EndpointRef> {
        match self {
            Decoded::Single(_) => None,
            Decoded::Request(entry) => Some(entry.endpoint),
            Decoded::Retried(entry) => Some(entry.endpoint),
        }
    }

    /// How many postbacks it holds.
    pub fn count(&self) -> usize {
        match self {
            Decoded::Single(_) => 1,
            Decoded::Request(entry) => entry.count,
            Decoded::Retried(entry) => entry.offsets.len(),
        }
    }

    /// Its postbacks, given the record it refers to (none is needed, nor
    /// read, for a single postback).
    pub fn postbacks(self, endpoint: &crate::records::endpoint::Endpoint) -> Result<Vec<Postback>, WireError> {
        match self {
            Decoded::Single(postback) => Ok(vec![postback]),
            Decoded::Request(entry) => entry.postbacks(endpoint),
            Decoded::Retried(entry) => entry.postbacks(endpoint),
        }
    }
}

/// Decodes a stream entry's value, whatever version wrote it.
pub fn decode_entry(bytes: &[u8]) -> Result<Decoded, WireError> {
    let (version, len) = header(bytes)?;
    match (version, len) {
        (1, 6) | (2, 7) | (4, 8) => decode_known(version as u8, bytes).map(Decoded::Single),
        (1 | 2 | 4, _) => Err(WireError::Malformed {
            version: version as u8,
            reason: format!("{len} elements, not {}", version + 5 - u64::from(version == 4)),
        }),
        (3, _) => request_entry::decode(bytes, len).map(Decoded::Request),
        (5, _) => super::retried::decode(bytes, len).map(Decoded::Retried),
        (other, _) => Err(WireError::UnknownVersion(other)),
    }
}

/// Decodes a single postback (version 1, 2 or 4), as the retry schedule and
/// the dead-letter stream hold them.
pub fn decode(bytes: &[u8]) -> Result<Postback, WireError> {
    match decode_entry(bytes)? {
        Decoded::Single(postback) => Ok(postback),
        Decoded::Request(_) | Decoded::Retried(_) => Err(WireError::NotSingle),
    }
}

/// The array length and the version, read before anything else.
fn header(bytes: &[u8]) -> Result<(u64, u32), WireError> {
    let mut head = bytes;
    let len = rmp::decode::read_array_len(&mut head)
        .map_err(|_| WireError::NotAPostback("does not start with a MessagePack array"))?;
    if len == 0 {
        return Err(WireError::NotAPostback("empty array"));
    }
    let version: u64 = rmp::decode::read_int(&mut head)
        .map_err(|_| WireError::NotAPostback("first element is not a version number"))?;
    Ok((version, len))
}

/// Decodes arbitrary bytes and checks that whatever decodes re-encodes to
/// the same thing (a version 3 entry with the record it would need). Used by the fuzz
/// target and the regression corpus test.
pub fn check_fuzz_input(bytes: &[u8]) {
    match decode_entry(bytes) {
        Ok(Decoded::Single(postback)) => {
            let again = decode(&encode(&postback)).expect("a decoded postback re-encodes");
            assert_eq!(again, postback);
        }
        Ok(Decoded::Request(entry)) => {
            let width = entry.values.len().checked_div(entry.count).unwrap_or(0);
            let keys = (0..width).map(|i| format!("k{i}")).collect();
            let endpoint = crate::records::endpoint::Endpoint {
                method: crate::Method::Get,
                url: "http://h/".into(),
                keys,
                delivery: None,
            };
            if let Ok(postbacks) = entry.postbacks(&endpoint) {
                for packed in request_entry::pack(&postbacks) {
                    assert!(decode_entry(&packed.payload).is_ok(), "a decoded version 3 entry re-encodes");
                }
            }
        }
        Ok(Decoded::Retried(entry)) => {
            let width = entry.values.len().checked_div(entry.offsets.len()).unwrap_or(0);
            let keys = (0..width).map(|i| format!("k{i}")).collect();
            let endpoint = crate::records::endpoint::Endpoint {
                method: crate::Method::Get,
                url: "http://h/".into(),
                keys,
                delivery: None,
            };
            if let Ok(postbacks) = entry.postbacks(&endpoint) {
                let all: Vec<&Postback> = postbacks.iter().collect();
                let again = super::retried::RetriedEntry::encode(
                    entry.first_id,
                    entry.endpoint,
                    entry.attempts,
                    entry.first_attempt_ms,
                    &all,
                )
                .expect("decoded postbacks re-encode");
                assert!(decode_entry(&again).is_ok(), "a decoded version 5 entry re-encodes");
            }
        }
        Err(_) => {}
    }
}

/// A stored trace context: nil, or 25 bytes of which all-zero ids mean no
/// context at all (the postback is delivered untraced).
pub(crate) fn trace_from(raw: Option<&[u8]>) -> Result<Option<TraceContext>, String> {
    match raw {
        Some(raw) if raw.len() != TraceContext::WIRE_LEN => {
            Err(format!("trace context is {} bytes, not {}", raw.len(), TraceContext::WIRE_LEN))
        }
        Some(raw) => Ok(TraceContext::from_bytes(raw)),
        None => Ok(None),
    }
}

fn decode_known(version: u8, bytes: &[u8]) -> Result<Postback, WireError> {
    let malformed = |reason: String| WireError::Malformed { version, reason };
    let stored: Stored = rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let method = stored.method.parse().map_err(|e: crate::method::UnsupportedMethod| malformed(e.to_string()))?;
    let trace = trace_from(stored.trace.as_ref().map(|b| b.as_slice())).map_err(malformed)?;
    if stored.delivery.is_some_and(|d| !d.is_valid()) {
        return Err(malformed(format!("delivery policy out of range: {:?}", stored.delivery)));
    }
    Ok(Postback {
        id: Uuid::from_bytes(stored.id),
        accepted_at_ms: stored.accepted_at_ms,
        method,
        url: stored.url,
        data: stored.data,
        trace,
        delivery: stored.delivery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::Scalar;
    use proptest::prelude::*;

    fn seed() -> Postback {
        Postback {
            id: Uuid::now_v7(),
            accepted_at_ms: 1_764_288_000_000,
            method: Method::Get,
            url: "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}".into(),
            data: [
                ("mascot", Scalar::Str("Gopher".into())),
                ("location", Scalar::Str("https://blog.golang.org/gopher/gopher.png".into())),
            ]
            .into_iter()
            .collect(),
            trace: None,
            delivery: None,
        }
    }

    fn traced() -> Postback {
        let trace = TraceContext { trace_id: [0xab; 16], span_id: [0xcd; 8], flags: 1 };
        Postback { trace: Some(trace), ..seed() }
    }

    #[test]
    fn round_trips_the_seed_sample() {
        let p = seed();
        assert_eq!(decode(&encode(&p)).expect("decode"), p);
    }

    /// The byte-for-byte example of `schemas/wire-format.md`.
    #[test]
    fn matches_the_documented_bytes() {
        let p = Postback {
            id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001),
            accepted_at_ms: 1_764_288_000_000,
            ..seed()
        };
        let mut want = vec![0x96, 0x01, 0xc4, 0x10];
        want.extend_from_slice(&0x0192_0000_0000_7000_8000_0000_0000_0001u128.to_be_bytes());
        want.push(0xcf);
        want.extend_from_slice(&1_764_288_000_000u64.to_be_bytes());
        want.extend_from_slice(b"\xa3GET");
        want.extend_from_slice(&[0xd9, 80]);
        want.extend_from_slice(p.url.as_bytes());
        want.push(0x82);
        want.extend_from_slice(b"\xa6mascot\xa6Gopher\xa8location");
        want.extend_from_slice(&[0xd9, 41]);
        want.extend_from_slice(b"https://blog.golang.org/gopher/gopher.png");
        assert_eq!(encode(&p), want);
        assert_eq!(want.len(), 182);
    }

    #[test]
    fn round_trips_a_trace_context_as_version_2() {
        let p = traced();
        let bytes = encode(&p);
        assert_eq!(&bytes[..2], &[0x97, 0x02], "seven elements, version 2");
        let tail = [&[0xc4, 25][..], &[0xab; 16], &[0xcd; 8], &[1]].concat();
        assert!(bytes.ends_with(&tail), "the context is a 25-byte bin at the end");
        assert_eq!(bytes.len(), encode(&seed()).len() + 27);
        assert_eq!(decode(&bytes).expect("decode"), p);
    }

    #[test]
    fn carries_a_delivery_policy_as_version_4() {
        let policy = Delivery { max_attempts: Some(3), delay_ms: None, timeout_ms: Some(2_500) };
        let p = Postback { delivery: Some(policy), ..seed() };
        let bytes = encode(&p);
        assert_eq!(&bytes[..2], &[0x98, 0x04], "eight elements, version 4");
        assert!(bytes.ends_with(&[0xc0, 0x93, 0x03, 0xc0, 0xcd, 0x09, 0xc4]), "nil trace, then [3, nil, 2500]");
        assert_eq!(decode(&bytes).expect("decode"), p);
        let traced = Postback { delivery: Some(policy), ..traced() };
        assert_eq!(decode(&encode(&traced)).expect("decode"), traced);
        let out_of_range = Postback { delivery: Some(Delivery { max_attempts: Some(0), ..policy }), ..seed() };
        assert!(matches!(decode(&encode(&out_of_range)), Err(WireError::Malformed { version: 4, .. })));
        let mut short = bytes.clone();
        short[0] = 0x97;
        assert!(matches!(decode_entry(&short), Err(WireError::Malformed { version: 4, .. })));
    }

    #[test]
    fn version_2_with_nil_or_zero_context_is_untraced() {
        let mut nil = encode(&traced());
        nil.truncate(nil.len() - 27);
        nil.push(0xc0);
        assert_eq!(decode(&nil).expect("decode").trace, None);
        let mut zeros = encode(&traced());
        let len = zeros.len();
        zeros[len - 25..].fill(0);
        assert_eq!(decode(&zeros).expect("decode").trace, None);
        let mut short = encode(&traced());
        short.truncate(short.len() - 27);
        short.extend_from_slice(&[0xc4, 3, 1, 2, 3]);
        assert!(matches!(decode(&short), Err(WireError::Malformed { version: 2, .. })));
    }

    #[test]
    fn starts_with_an_array_and_the_version() {
        let bytes = encode(&seed());
        // fixarray of 6 elements, then positive fixint 1.
        assert_eq!(&bytes[..2], &[0x96, 0x01]);
        // The id is a 16-byte bin: 0xc4 0x10.
        assert_eq!(&bytes[2..4], &[0xc4, 0x10]);
    }

    #[test]
    fn is_smaller_than_the_same_postback_as_json() {
        let p = seed();
        let json = serde_json::json!({
            "id": p.id.to_string(),
            "accepted_at_ms": p.accepted_at_ms,
            "method": "GET",
            "url": p.url,
            "data": p.data,
        });
        let json_len = serde_json::to_vec(&json).expect("json").len();
        assert!(encode(&p).len() < json_len, "{} >= {json_len}", encode(&p).len());
    }

    #[test]
    fn refuses_what_is_not_a_postback() {
        assert!(matches!(decode(b""), Err(WireError::NotAPostback(_))));
        assert!(matches!(decode(b"hello"), Err(WireError::NotAPostback(_))));
        assert!(matches!(decode(&[0x90]), Err(WireError::NotAPostback(_))));
        assert!(matches!(decode(&[0x91, 0x07]), Err(WireError::UnknownVersion(7))));
        assert!(matches!(decode(&[0x92, 0x03, 0x01]), Err(WireError::Malformed { version: 3, .. })));
        assert!(matches!(decode(&[0x92, 0x01, 0x01]), Err(WireError::Malformed { version: 1, .. })));
        // A version's element count is part of it: a v1 entry with a trace,
        // or a v2 entry without one, is malformed.
        let mut v1_with_trace = encode(&traced());
        v1_with_trace[1] = 0x01;
        assert!(matches!(decode(&v1_with_trace), Err(WireError::Malformed { version: 1, .. })));
        let mut v2_without = encode(&seed());
        v2_without[1] = 0x02;
        assert!(matches!(decode(&v2_without), Err(WireError::Malformed { version: 2, .. })));
    }

    #[test]
    fn refuses_an_unknown_method() {
        let mut bytes = encode(&seed());
        let at = bytes.windows(4).position(|w| w == b"\xa3GET").expect("method");
        bytes[at + 1..at + 4].copy_from_slice(b"PUX");
        assert!(matches!(decode(&bytes), Err(WireError::Malformed { .. })));
    }

    fn scalar() -> impl Strategy<Value = Scalar> {
        prop_oneof![
            Just(Scalar::Null),
            any::<bool>().prop_map(Scalar::Bool),
            any::<i64>().prop_map(Scalar::Int),
            ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Scalar::UInt),
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Scalar::Float),
            ".*".prop_map(Scalar::Str),
        ]
    }

    proptest! {
        #[test]
        fn any_postback_round_trips(
            id in any::<u128>(),
            at in any::<u64>(),
            method in prop::sample::select(crate::method::SUPPORTED.to_vec()),
            url in ".*",
            pairs in prop::collection::vec((".*", scalar()), 0..8),
            trace in prop::option::of((1..=u128::MAX, 1..=u64::MAX, any::<u8>())),
            delivery in prop::option::of((
                prop::option::of(1..=50u32),
                prop::option::of(0..=3_600_000u32),
                prop::option::of(100..=60_000u32),
            )),
        ) {
            let trace = trace.map(|(t, s, flags)| TraceContext { trace_id: t.to_be_bytes(), span_id: s.to_be_bytes(), flags });
            let delivery = delivery.map(|(max_attempts, delay_ms, timeout_ms)| Delivery { max_attempts, delay_ms, timeout_ms });
            let p = Postback { id: Uuid::from_u128(id), accepted_at_ms: at, method, url, data: Data(pairs), trace, delivery };
            prop_assert_eq!(decode(&encode(&p)).expect("decode"), p);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
