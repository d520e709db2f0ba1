//! Wire format version 3: a request's postbacks in one stream entry, their
//! shared endpoint stored once.
//!
//! Postbacks from one request share the method, the URL template and, almost
//! always, the keys of their data. Version 3 keeps those once, in an
//! [`Endpoint`] record that lives in a Redis hash (`<stream>:endpoints`)
//! under a content address ([`EndpointRef`]: the first 8 bytes of the
//! record's SHA-256), and puts into the stream entry only what differs:
//!
//! `[3, first id: bin 16, endpoint: bin 8, count: uint, values: array,
//! trace: bin 25 | nil]` (the trace element only when ingest traces).
//!
//! `values` holds `count` rows of one value per endpoint key, flattened.
//! Postback `i` (from 0) has id `first id + i`, taken as a 128-bit number,
//! and was accepted at the millisecond the UUIDv7 id carries, so neither ids
//! nor timestamps are stored per postback.
//!
//! [`pack`] groups a request's postbacks into entries: consecutive ones with
//! the same method, template, keys and trace context, and consecutive ids,
//! up to [`MAX_POSTBACKS`] at a time. A postback that fits no group (its id is
//! not a UUIDv7 of its acceptance time) is written alone as version 1 or 2,
//! which needs no record. `schemas/wire-format.md` has the byte layout.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::endpoint::{Endpoint, EndpointRef};
use super::postback::{self as wire, Postback, WireError};
use crate::data::Data;
use crate::scalar::Scalar;
use crate::trace_context::TraceContext;

/// Most postbacks in one version 3 entry: a worker holds an entry until all
/// of them are finished, so this bounds that unit of work.
pub const MAX_POSTBACKS: usize = 128;

/// A decoded version 3 entry, before its endpoint is looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEntry {
    /// The first postback's id; the others follow it by one.
    pub first_id: Uuid,
    /// Where the shared part is stored.
    pub endpoint: EndpointRef,
    /// How many postbacks.
    pub count: usize,
    /// `count` rows of one value per endpoint key.
    pub values: Vec<Scalar>,
    /// Ingest's span for the request's postbacks, when traced.
    pub trace: Option<TraceContext>,
}

impl RequestEntry {
    /// The postbacks, given the record the entry refers to.
    pub fn postbacks(&self, endpoint: &Endpoint) -> Result<Vec<Postback>, WireError> {
        let malformed = |reason: String| WireError::Malformed { version: 3, reason };
        let width = endpoint.keys.len();
        if self.values.len() != self.count * width {
            return Err(malformed(format!(
                "{} values for {} postbacks of {width} keys (endpoint {})",
                self.values.len(),
                self.count,
                self.endpoint
            )));
        }
        let accepted_at_ms = timestamp_ms(self.first_id);
        let mut rows = self.values.chunks(width.max(1));
        (0..self.count)
            .map(|i| {
                let row: &[Scalar] = if width == 0 { &[] } else { rows.next().unwrap_or_default() };
                Ok(Postback {
                    id: nth_id(self.first_id, i),
                    accepted_at_ms,
                    method: endpoint.method,
                    url: endpoint.url.clone(),
                    data: Data(endpoint.keys.iter().cloned().zip(row.iter().cloned()).collect()),
                    trace: self.trace,
                    delivery: endpoint.delivery,
                })
            })
            .collect()
    }
}

/// The millisecond a UUIDv7 carries in its first 48 bits.
pub fn timestamp_ms(id: Uuid) -> u64 {
    (id.as_u128() >> 80) as u64
}

/// The id of postback `i` of a version 3 entry.
pub fn nth_id(first: Uuid, i: usize) -> Uuid {
    Uuid::from_u128(first.as_u128().wrapping_add(i as u128))
}

/// A fresh first id for `count` postbacks accepted at `accepted_at_ms`: a
/// UUIDv7 of that millisecond whose random low bits leave room for `count`
/// successors without touching the version or variant bits.
pub fn first_id(accepted_at_ms: u64, count: usize) -> Uuid {
    let mut random = [0u8; 10];
    random.iter_mut().for_each(|b| *b = fastrand::u8(..));
    // The top random bit below the variant is cleared: 2^61 successors fit.
    random[2] &= 0x1f;
    let id = uuid::Builder::from_unix_timestamp_millis(accepted_at_ms, &random).into_uuid();
    debug_assert!(fits(id, count));
    id
}

/// Whether `count` ids from `first` stay UUIDv7s of the same millisecond.
pub(crate) fn fits(first: Uuid, count: usize) -> bool {
    const LOW_62: u128 = (1 << 62) - 1;
    first.get_version_num() == 7 && (first.as_u128() & LOW_62) + (count as u128) <= LOW_62 + 1
}

/// One stream entry to append: its `p` value, the endpoint record it refers
/// to (version 3), and how many postbacks it holds.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The entry's `p` field.
    pub payload: Vec<u8>,
    /// The record's address and bytes, for a version 3 entry.
    pub endpoint: Option<(EndpointRef, Vec<u8>)>,
    /// Postbacks in the entry.
    pub postbacks: usize,
}

/// The stream entries for a request's postbacks, in order.
pub fn pack(postbacks: &[Postback]) -> Vec<Packed> {
    let mut out = Vec::new();
    let mut rest = postbacks;
    while let Some(first) = rest.first() {
        let run = run_length(rest);
        if run == 0 {
            out.push(Packed { payload: wire::encode(first), endpoint: None, postbacks: 1 });
            rest = &rest[1..];
            continue;
        }
        let (group, tail) = rest.split_at(run);
        out.push(encode_group(group));
        rest = tail;
    }
    out
}

/// How many postbacks from the start of `postbacks` one version 3 entry can
/// hold (0: the first must be written alone).
fn run_length(postbacks: &[Postback]) -> usize {
    let first = &postbacks[0];
    if timestamp_ms(first.id) != first.accepted_at_ms || !fits(first.id, 1) {
        return 0;
    }
    let same_shape = |p: &Postback| {
        p.method == first.method
            && p.url == first.url
            && p.trace == first.trace
            && p.delivery == first.delivery
            && p.accepted_at_ms == first.accepted_at_ms
            && p.data.len() == first.data.len()
            && p.data.0.iter().zip(&first.data.0).all(|((a, _), (b, _))| a == b)
    };
    postbacks
        .iter()
        .take(MAX_POSTBACKS)
        .enumerate()
        .take_while(|(i, p)| p.id == nth_id(first.id, *i) && fits(first.id, i + 1) && same_shape(p))
        .count()
}

/// The version 3 entry as written: the elements in order; `trace` is left
/// out (not nil) when there is none.
#[derive(Serialize)]
struct EntryOut<'a> {
    version: u8,
    #[serde(with = "serde_bytes")]
    first_id: &'a [u8; 16],
    #[serde(with = "serde_bytes")]
    endpoint: &'a [u8; 8],
    count: usize,
    values: Vec<&'a Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a serde_bytes::Bytes>,
}

#[derive(Deserialize)]
struct EntryIn {
    _version: u8,
    #[serde(with = "serde_bytes")]
    first_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    endpoint: [u8; 8],
    count: usize,
    values: Vec<Scalar>,
    #[serde(default)]
    trace: Option<serde_bytes::ByteBuf>,
}

fn encode_group(group: &[Postback]) -> Packed {
    let first = &group[0];
    let record = Endpoint::of(first).encode();
    let reference = Endpoint::reference(&record);
    let trace = first.trace.map(|t| t.to_bytes());
    let out = EntryOut {
        version: 3,
        first_id: first.id.as_bytes(),
        endpoint: &reference.0,
        count: group.len(),
        values: group.iter().flat_map(|p| p.data.0.iter().map(|(_, v)| v)).collect(),
        trace: trace.as_ref().map(|t| serde_bytes::Bytes::new(t)),
    };
    let mut payload = Vec::with_capacity(40 + 32 * out.values.len());
    wire::write_msgpack(&mut payload, &out);
    Packed { payload, endpoint: Some((reference, record)), postbacks: group.len() }
}

/// One postback of a version 3 or 5 entry alone, as a version 3 entry of
/// one postback referring to the same record `endpoint`: what a dead letter
/// keeps of it (its id is a UUIDv7 of its acceptance time, as every id of
/// such an entry is, so it is a first id with room for one).
pub fn alone(postback: &Postback, endpoint: EndpointRef) -> Vec<u8> {
    let trace = postback.trace.map(|t| t.to_bytes());
    let out = EntryOut {
        version: 3,
        first_id: postback.id.as_bytes(),
        endpoint: &endpoint.0,
        count: 1,
        values: postback.data.0.iter().map(|(_, v)| v).collect(),
        trace: trace.as_ref().map(|t| serde_bytes::Bytes::new(t)),
    };
    let mut payload = Vec::with_capacity(40 + 32 * out.values.len());
    wire::write_msgpack(&mut payload, &out);
    payload
}

/// How many postbacks an entry's value holds, from its first bytes only:
/// the count of a version 3 or 5 entry, 1 for anything else.
pub fn postbacks_in(bytes: &[u8]) -> usize {
    let mut head = bytes;
    let mut peek = || -> Option<usize> {
        rmp::decode::read_array_len(&mut head).ok()?;
        let version: u8 = rmp::decode::read_int(&mut head).ok()?;
        if version != 3 && version != 5 {
            return None;
        }
        for expected in [16, 8] {
            if rmp::decode::read_bin_len(&mut head).ok()? != expected {
                return None;
            }
            head = head.get(expected as usize..)?;
        }
        if version == 5 {
            // The offsets: one byte per postback.
            return rmp::decode::read_bin_len(&mut head).ok().map(|n| n as usize);
        }
        rmp::decode::read_int(&mut head).ok()
    };
    peek().unwrap_or(1)
}

/// Decodes a version 3 entry whose array length `len` was read already.
pub(crate) fn decode(bytes: &[u8], len: u32) -> Result<RequestEntry, WireError> {
    let malformed = |reason: String| WireError::Malformed { version: 3, reason };
    if !(5..=6).contains(&len) {
        return Err(malformed(format!("{len} elements, not 5 or 6")));
    }
    let stored: EntryIn = rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let first_id = Uuid::from_bytes(stored.first_id);
    if stored.count == 0 || stored.count > MAX_POSTBACKS {
        return Err(malformed(format!("{} postbacks, not 1 to {MAX_POSTBACKS}", stored.count)));
    }
    if !fits(first_id, stored.count) {
        return Err(malformed(format!("first id {first_id} is not a UUIDv7 with room for {} ids", stored.count)));
    }
    let trace = wire::trace_from(stored.trace.as_ref().map(|b| b.as_slice())).map_err(malformed)?;
    Ok(RequestEntry {
        first_id,
        endpoint: EndpointRef(stored.endpoint),
        count: stored.count,
        values: stored.values,
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::super::postback::{Decoded, decode_entry};
    use super::*;
    use crate::delivery::Delivery;
    use crate::method::Method;

    const URL: &str = "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}";

    fn request(items: usize, accepted_at_ms: u64) -> Vec<Postback> {
        let first = first_id(accepted_at_ms, items);
        (0..items)
            .map(|i| Postback {
                id: nth_id(first, i),
                accepted_at_ms,
                method: Method::Get,
                url: URL.into(),
                data: [
                    ("mascot", Scalar::Str("Gopher".into())),
                    ("location", Scalar::Str("https://blog.golang.org/gopher/gopher.png".into())),
                ]
                .into_iter()
                .collect(),
                trace: None,
                delivery: None,
            })
            .collect()
    }

    fn unpack(packed: &[Packed]) -> Vec<Postback> {
        packed
            .iter()
            .flat_map(|packed| match decode_entry(&packed.payload).expect("decodes") {
                Decoded::Single(p) => vec![p],
                Decoded::Request(entry) => {
                    let (reference, record) = packed.endpoint.as_ref().expect("a version 3 entry has a record");
                    assert_eq!(*reference, entry.endpoint);
                    assert_eq!(Endpoint::reference(record), entry.endpoint);
                    entry.postbacks(&Endpoint::decode(record).expect("record")).expect("postbacks")
                }
                Decoded::Retried(_) => panic!("ingest never writes version 5"),
            })
            .collect()
    }

    #[test]
    fn the_seed_sample_is_one_small_entry() {
        let postbacks = request(1, 1_764_288_000_000);
        let packed = pack(&postbacks);
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0].postbacks, 1);
        // array, version, id (18), endpoint (10), count, values array, then
        // "Gopher" (7) and the 41-byte image URL (43).
        assert_eq!(packed[0].payload.len(), 1 + 1 + 18 + 10 + 1 + 1 + 7 + 43);
        assert_eq!(unpack(&packed), postbacks);
    }

    /// The byte-for-byte example of `schemas/wire-format.md`.
    #[test]
    fn matches_the_documented_bytes() {
        let id = Uuid::from_u128(0x019a_c7c2_7000_7000_8000_0000_0000_0001);
        assert_eq!(timestamp_ms(id), 1_764_288_000_000);
        let postbacks: Vec<_> = request(1, 1_764_288_000_000).into_iter().map(|p| Postback { id, ..p }).collect();
        let packed = pack(&postbacks);
        let (address, record) = packed[0].endpoint.clone().expect("version 3");

        let mut want_record = vec![0x94, 0x01, 0xa3, b'G', b'E', b'T', 0xd9, 80];
        want_record.extend_from_slice(URL.as_bytes());
        want_record.extend_from_slice(b"\x92\xa6mascot\xa8location");
        assert_eq!(record, want_record);
        assert_eq!(record.len(), 105);

        let mut want = vec![0x95, 0x03, 0xc4, 0x10];
        want.extend_from_slice(id.as_bytes());
        want.extend_from_slice(&[0xc4, 0x08]);
        want.extend_from_slice(&address.0);
        want.extend_from_slice(&[0x01, 0x92]);
        want.extend_from_slice(b"\xa6Gopher");
        want.extend_from_slice(&[0xd9, 41]);
        want.extend_from_slice(b"https://blog.golang.org/gopher/gopher.png");
        assert_eq!(packed[0].payload, want);
        assert_eq!(want.len(), 82);
        // The address is part of the contract: a changed record encoding
        // would strand every entry queued before.
        assert_eq!(address.to_string(), "3e71e1dd270a7700");
    }

    #[test]
    fn a_uniform_request_is_one_entry_per_max_rows() {
        let postbacks = request(300, 1_764_288_000_123);
        let packed = pack(&postbacks);
        let sizes: Vec<_> = packed.iter().map(|p| p.postbacks).collect();
        assert_eq!(sizes, [MAX_POSTBACKS, MAX_POSTBACKS, 300 - 2 * MAX_POSTBACKS]);
        assert!(packed.iter().all(|p| p.endpoint.as_ref().map(|e| e.0) == packed[0].endpoint.as_ref().map(|e| e.0)));
        assert_eq!(unpack(&packed), postbacks);
        assert_eq!(postbacks_in(&packed[0].payload), MAX_POSTBACKS);
        assert_eq!(postbacks_in(&packed[2].payload), 300 - 2 * MAX_POSTBACKS);
        assert_eq!(postbacks_in(&wire::encode(&postbacks[0])), 1);
        assert_eq!(postbacks_in(b"junk"), 1);
        let ids: std::collections::HashSet<_> = postbacks.iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), 300, "ids are distinct");
        assert!(postbacks.iter().all(|p| p.id.get_version_num() == 7 && timestamp_ms(p.id) == p.accepted_at_ms));
    }

    #[test]
    fn a_postback_alone_is_a_version_3_entry_of_one() {
        let postbacks = request(5, 1_764_288_000_000);
        let packed = pack(&postbacks);
        let (address, record) = packed[0].endpoint.clone().expect("version 3");
        let alone = alone(&postbacks[3], address);
        assert_eq!(postbacks_in(&alone), 1);
        let Decoded::Request(entry) = decode_entry(&alone).expect("decodes") else { panic!("version 3") };
        assert_eq!(
            entry.postbacks(&Endpoint::decode(&record).expect("record")).expect("postbacks"),
            [postbacks[3].clone()]
        );
        assert_eq!(alone.len(), packed[0].payload.len() - 4 * 50, "the entry less four rows");
    }

    #[test]
    fn items_with_other_keys_start_a_new_entry() {
        let mut postbacks = request(4, 1_764_288_000_000);
        postbacks[2].data.0.reverse();
        postbacks[3].data.0.pop();
        let packed = pack(&postbacks);
        let sizes: Vec<_> = packed.iter().map(|p| p.postbacks).collect();
        assert_eq!(sizes, [2, 1, 1]);
        assert_eq!(unpack(&packed), postbacks);
    }

    #[test]
    fn postbacks_with_ids_of_their_own_are_written_alone() {
        let mut postbacks = request(3, 1_764_288_000_000);
        postbacks[1].id = Uuid::now_v7();
        postbacks[2].id = Uuid::from_u128(0x1234_5678_9abc_4def_8000_0000_0000_0001);
        let packed = pack(&postbacks);
        assert_eq!(packed.iter().map(|p| p.endpoint.is_some()).collect::<Vec<_>>(), [true, false, false]);
        assert_eq!(packed[1].payload[1], 1, "version 1");
        assert_eq!(unpack(&packed), postbacks);
    }

    #[test]
    fn a_trace_context_is_kept_once_per_entry() {
        let trace = TraceContext { trace_id: [7; 16], span_id: [9; 8], flags: 1 };
        let postbacks: Vec<_> =
            request(3, 1_764_288_000_000).into_iter().map(|p| Postback { trace: Some(trace), ..p }).collect();
        let packed = pack(&postbacks);
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0].payload[0], 0x96, "six elements");
        assert_eq!(unpack(&packed), postbacks);
    }

    #[test]
    fn empty_data_items_share_an_entry_too() {
        let postbacks: Vec<_> =
            request(5, 1_764_288_000_000).into_iter().map(|p| Postback { data: Data::default(), ..p }).collect();
        let packed = pack(&postbacks);
        assert_eq!(packed.len(), 1);
        assert_eq!(unpack(&packed), postbacks);
    }

    #[test]
    fn refuses_an_entry_that_does_not_match_its_record() {
        let packed = pack(&request(2, 1_764_288_000_000));
        let Decoded::Request(entry) = decode_entry(&packed[0].payload).expect("decodes") else { panic!("version 3") };
        let narrower = Endpoint { method: Method::Get, url: URL.into(), keys: vec!["mascot".into()], delivery: None };
        assert!(matches!(entry.postbacks(&narrower), Err(WireError::Malformed { version: 3, .. })));
        let mut zero = packed[0].payload.clone();
        zero[30] = 0;
        assert!(matches!(decode_entry(&zero), Err(WireError::Malformed { version: 3, .. })));
    }

    proptest::proptest! {
        /// Whatever mix of shapes and ids a request has, its entries give
        /// back exactly its postbacks, in order.
        #[test]
        fn any_request_packs_and_unpacks(
            shapes in proptest::collection::vec((0..3usize, proptest::bool::weighted(0.1)), 1..300),
            at in 1_600_000_000_000u64..1_900_000_000_000,
        ) {
            let first = first_id(at, shapes.len());
            let postbacks: Vec<_> = shapes
                .iter()
                .enumerate()
                .map(|(i, (keys, own_id))| Postback {
                    id: if *own_id { Uuid::from_u128(i as u128 + 1) } else { nth_id(first, i) },
                    accepted_at_ms: at,
                    method: Method::Post,
                    url: "http://h/{k0}".into(),
                    data: (0..*keys).map(|k| (format!("k{k}"), Scalar::Int(i as i64))).collect(),
                    trace: None,
                    delivery: None,
                })
                .collect();
            let packed = pack(&postbacks);
            proptest::prop_assert_eq!(packed.iter().map(|p| p.postbacks).sum::<usize>(), postbacks.len());
            proptest::prop_assert_eq!(unpack(&packed), postbacks);
        }
    }

    #[test]
    fn a_delivery_policy_goes_into_the_record_and_back_to_every_postback() {
        let policy = Delivery { max_attempts: Some(2), delay_ms: Some(1_000), timeout_ms: None };
        let postbacks: Vec<_> =
            request(3, 1_764_288_000_000).into_iter().map(|p| Postback { delivery: Some(policy), ..p }).collect();
        let packed = pack(&postbacks);
        assert_eq!(packed.len(), 1, "one entry");
        let (reference, record) = packed[0].endpoint.clone().expect("a record");
        assert_eq!(record[..2], [0x95, 0x02], "record version 2: five elements");
        let endpoint = Endpoint::decode(&record).expect("record");
        assert_eq!(endpoint.delivery, Some(policy));
        let plain = Endpoint { delivery: None, ..endpoint.clone() };
        assert_ne!(Endpoint::reference(&plain.encode()), reference, "a policy is part of the address");
        let crate::records::postback::Decoded::Request(entry) =
            crate::records::postback::decode_entry(&packed[0].payload).expect("entry")
        else {
            panic!("version 3")
        };
        assert_eq!(entry.postbacks(&endpoint).expect("postbacks"), postbacks);
    }
}
