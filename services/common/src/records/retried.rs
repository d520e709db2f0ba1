//! Wire format version 5: postbacks of one version 3 or 5 entry that are
//! attempted again together, still referring to their endpoint record.
//!
//! When postbacks of an entry that holds several go back to the retry
//! schedule, deliver's finish script writes those with the same attempt
//! count and the same delay as one version 5 value (a level entry of the
//! schedule, see [`super::schedule`]); the scheduler later moves it back
//! into the stream as it is. It keeps what the postbacks had in their
//! entry, plus which ones they are and their tally, and nothing of the
//! endpoint but its address:
//!
//! `[5, first id: bin 16, endpoint: bin 8, offsets: bin, attempts: uint,
//! first attempt ms: uint, values: array, trace: bin 25 | nil]` (the trace
//! element only when the postbacks carry a trace context).
//!
//! Postback `k` (from 0) has id `first id + offsets[k]` (each offset one
//! byte, below [`MAX_POSTBACKS`](super::request::MAX_POSTBACKS), in
//! increasing order) and the values `values[k * width ..][..width]`, `width`
//! being its record's number of keys; all of them have made `attempts`
//! attempts, the earliest first one at `first attempt ms` (0: none yet).
//! The first three elements sit where a version 3 entry has them, so the
//! scripts find the record address at the same bytes (22 to 29) in both.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::endpoint::{Endpoint, EndpointRef};
use super::postback::{self as wire, Postback, WireError};
use super::request::{MAX_POSTBACKS, fits, nth_id, timestamp_ms};
use crate::data::Data;
use crate::scalar::Scalar;
use crate::trace_context::TraceContext;

/// A decoded version 5 entry, before its endpoint is looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetriedEntry {
    /// The id the offsets count from (the first id of the entry these
    /// postbacks came in).
    pub first_id: Uuid,
    /// Where the shared part is stored.
    pub endpoint: EndpointRef,
    /// Each postback's id, as an offset from `first_id`.
    pub offsets: Vec<u8>,
    /// Attempts made so far by each of them.
    pub attempts: u32,
    /// When the earliest first attempt of them was made, ms since the
    /// epoch, if any was made.
    pub first_attempt_ms: Option<u64>,
    /// One row of values per postback, each of the record's width.
    pub values: Vec<Scalar>,
    /// Their trace context, when traced.
    pub trace: Option<TraceContext>,
}

#[derive(Serialize)]
struct Out<'a> {
    version: u8,
    #[serde(with = "serde_bytes")]
    first_id: &'a [u8; 16],
    #[serde(with = "serde_bytes")]
    endpoint: &'a [u8; 8],
    #[serde(with = "serde_bytes")]
    offsets: &'a [u8],
    attempts: u32,
    first_attempt_ms: u64,
    values: Vec<&'a Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a serde_bytes::Bytes>,
}

#[derive(Deserialize)]
struct In {
    _version: u8,
    #[serde(with = "serde_bytes")]
    first_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    endpoint: [u8; 8],
    #[serde(with = "serde_bytes")]
    offsets: Vec<u8>,
    attempts: u32,
    first_attempt_ms: u64,
    values: Vec<Scalar>,
    #[serde(default)]
    trace: Option<serde_bytes::ByteBuf>,
}

/// Why postbacks cannot be written as one version 5 value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// None given.
    #[error("no postbacks")]
    Empty,
    /// A postback's id is not `first_id` plus an offset below the limit,
    /// or the ids are not in increasing order.
    #[error("postback {0} does not follow the first id by less than {MAX_POSTBACKS}, in order")]
    Offset(Uuid),
}

impl RetriedEntry {
    /// The value for `postbacks`, which came in an entry whose first id is
    /// `first_id` and whose record is `endpoint`, in id order, each having
    /// made `attempts` attempts.
    pub fn encode(
        first_id: Uuid,
        endpoint: EndpointRef,
        attempts: u32,
        first_attempt_ms: Option<u64>,
        postbacks: &[&Postback],
    ) -> Result<Vec<u8>, GroupError> {
        let Some(first) = postbacks.first() else { return Err(GroupError::Empty) };
        let mut offsets = Vec::with_capacity(postbacks.len());
        for p in postbacks {
            let offset = p.id.as_u128().wrapping_sub(first_id.as_u128());
            let after_last = offsets.last().is_none_or(|last| offset > u128::from(*last));
            if offset >= MAX_POSTBACKS as u128 || !after_last {
                return Err(GroupError::Offset(p.id));
            }
            offsets.push(offset as u8);
        }
        let trace = first.trace.map(|t| t.to_bytes());
        let out = Out {
            version: 5,
            first_id: first_id.as_bytes(),
            endpoint: &endpoint.0,
            offsets: &offsets,
            attempts,
            first_attempt_ms: first_attempt_ms.unwrap_or(0),
            values: postbacks.iter().flat_map(|p| p.data.0.iter().map(|(_, v)| v)).collect(),
            trace: trace.as_ref().map(|t| serde_bytes::Bytes::new(t)),
        };
        let mut bytes = Vec::with_capacity(48 + offsets.len() + 32 * out.values.len());
        wire::write_msgpack(&mut bytes, &out);
        Ok(bytes)
    }

    /// The postbacks, given the record the entry refers to.
    pub fn postbacks(&self, endpoint: &Endpoint) -> Result<Vec<Postback>, WireError> {
        let width = endpoint.keys.len();
        if self.values.len() != self.offsets.len() * width {
            return Err(WireError::Malformed {
                version: 5,
                reason: format!(
                    "{} values for {} postbacks of {width} keys (endpoint {})",
                    self.values.len(),
                    self.offsets.len(),
                    self.endpoint
                ),
            });
        }
        let accepted_at_ms = timestamp_ms(self.first_id);
        let mut rows = self.values.chunks(width.max(1));
        Ok(self
            .offsets
            .iter()
            .map(|offset| {
                let row: &[Scalar] = if width == 0 { &[] } else { rows.next().unwrap_or_default() };
                Postback {
                    id: nth_id(self.first_id, usize::from(*offset)),
                    accepted_at_ms,
                    method: endpoint.method,
                    url: endpoint.url.clone(),
                    data: Data(endpoint.keys.iter().cloned().zip(row.iter().cloned()).collect()),
                    trace: self.trace,
                    delivery: endpoint.delivery,
                }
            })
            .collect())
    }
}

/// Decodes a version 5 value whose array length `len` was read already.
pub(crate) fn decode(bytes: &[u8], len: u32) -> Result<RetriedEntry, WireError> {
    let malformed = |reason: String| WireError::Malformed { version: 5, reason };
    if !(7..=8).contains(&len) {
        return Err(malformed(format!("{len} elements, not 7 or 8")));
    }
    let stored: In = rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let first_id = Uuid::from_bytes(stored.first_id);
    let offsets = stored.offsets;
    if offsets.is_empty() || offsets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(malformed("offsets are empty or not increasing".into()));
    }
    let last = usize::from(*offsets.last().unwrap_or(&0));
    if last >= MAX_POSTBACKS || !fits(first_id, last + 1) {
        return Err(malformed(format!("first id {first_id} has no room for offset {last}")));
    }
    let trace = wire::trace_from(stored.trace.as_ref().map(|b| b.as_slice())).map_err(malformed)?;
    Ok(RetriedEntry {
        first_id,
        endpoint: EndpointRef(stored.endpoint),
        offsets,
        attempts: stored.attempts,
        first_attempt_ms: Some(stored.first_attempt_ms).filter(|ms| *ms > 0),
        values: stored.values,
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::Method;
    use crate::records::postback::{Decoded, decode_entry};
    use crate::records::request::{self, pack, postbacks_in};

    fn request(items: usize) -> (Vec<Postback>, EndpointRef, Endpoint) {
        let first = request::first_id(1_764_288_000_000, items);
        let postbacks: Vec<Postback> = (0..items)
            .map(|i| Postback {
                id: nth_id(first, i),
                accepted_at_ms: 1_764_288_000_000,
                method: Method::Get,
                url: "http://h.example/{a}?b={b}".into(),
                data: [("a", Scalar::Str(format!("v{i}"))), ("b", Scalar::Int(i as i64))].into_iter().collect(),
                trace: None,
                delivery: None,
            })
            .collect();
        let packed = pack(&postbacks);
        let (address, record) = packed[0].endpoint.clone().expect("version 3");
        (postbacks, address, Endpoint::decode(&record).expect("record"))
    }

    #[test]
    fn some_postbacks_of_an_entry_round_trip_with_their_tally() {
        let (postbacks, address, endpoint) = request(10);
        let chosen = [&postbacks[1], &postbacks[4], &postbacks[9]];
        let bytes =
            RetriedEntry::encode(postbacks[0].id, address, 3, Some(1_764_288_001_000), &chosen).expect("encodes");
        assert_eq!(&bytes[..2], &[0x97, 0x05], "seven elements, version 5");
        assert_eq!(&bytes[22..30], &address.0, "the address where a version 3 entry has it");
        assert_eq!(postbacks_in(&bytes), 3);
        let Decoded::Retried(entry) = decode_entry(&bytes).expect("decodes") else { panic!("version 5") };
        assert_eq!(
            (entry.attempts, entry.first_attempt_ms, &entry.offsets[..]),
            (3, Some(1_764_288_001_000), &[1, 4, 9][..])
        );
        let back = entry.postbacks(&endpoint).expect("postbacks");
        assert_eq!(back, chosen.map(Clone::clone));
    }

    #[test]
    fn a_retried_postback_costs_little_more_than_in_its_entry() {
        let (postbacks, address, _) = request(100);
        let entry = pack(&postbacks).remove(0).payload.len() as f64 / 100.0;
        let one = RetriedEntry::encode(postbacks[0].id, address, 1, Some(1), &[&postbacks[7]]).expect("encodes");
        let all: Vec<&Postback> = postbacks.iter().collect();
        let together = RetriedEntry::encode(postbacks[0].id, address, 1, Some(1), &all).expect("encodes");
        // One byte more per postback (its offset), and the tally once.
        let per = together.len() as f64 / 100.0;
        assert!(per < entry + 1.2, "{per} bytes a postback against {entry} in the entry");
        assert!(one.len() < 60, "{} bytes for one", one.len());
    }

    #[test]
    fn refuses_what_is_not_a_group_of_one_entry() {
        let (postbacks, address, _) = request(3);
        let backwards = [&postbacks[2], &postbacks[1]];
        assert!(matches!(
            RetriedEntry::encode(postbacks[0].id, address, 1, None, &backwards),
            Err(GroupError::Offset(_))
        ));
        assert_eq!(RetriedEntry::encode(postbacks[0].id, address, 1, None, &[]), Err(GroupError::Empty));
        let mut bytes = RetriedEntry::encode(postbacks[0].id, address, 1, None, &[&postbacks[0]]).expect("encodes");
        bytes[0] = 0x96;
        assert!(matches!(decode_entry(&bytes), Err(WireError::Malformed { version: 5, .. })));
    }
}
