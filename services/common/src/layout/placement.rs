//! Where partitions live: hash tags chosen for their slot.
//!
//! A key's slot is CRC16 of its hash tag modulo 16384, and a Redis
//! Cluster gives each primary ranges of slots. Tags like `{postbacks:3}`
//! land wherever CRC16 puts them, so partitions bunched on some primaries
//! and left others idle. Here each partition's tag is chosen for a slot:
//! `<stream>:<p>:<n>` with the smallest `n` (in base 36) whose tag hashes
//! to that slot.
//!
//! - A new deployment of N partitions puts partition p in slot
//!   ⌊(2p + 1)·16384 / 2N⌋, the middle of the p-th of N equal stretches
//!   ([`seed_slot`]), so any split of the slots into M equal ranges (what
//!   `redis-cli --cluster create` makes) holds N/M partitions on each
//!   primary when M divides N, and never more than one apart otherwise.
//! - A partition added later goes on the primary holding the fewest
//!   partitions that take requests, in the middle of the longest run of
//!   that primary's slots without one ([`place`]), from the cluster's own
//!   slot map; on a plain Redis the whole slot space is one "primary".
//!
//! The tags are kept in the partition record, so a partition keeps its
//! name whatever the count becomes.

/// Slots in a Redis Cluster.
pub const SLOTS: u32 = 16_384;

/// The slot of partition `p` of a new deployment of `count`.
pub fn seed_slot(p: u32, count: u32) -> u16 {
    let count = u64::from(count.max(1));
    ((2 * u64::from(p) + 1) * u64::from(SLOTS) / (2 * count)) as u16
}

/// The tag of partition `p` of `stream` that hashes to `slot`.
pub fn tag_for_slot(stream: &str, p: u32, slot: u16) -> String {
    let mut tag = String::with_capacity(stream.len() + 16);
    for n in 0u64.. {
        tag.clear();
        tag.push_str(stream);
        tag.push(':');
        tag.push_str(&p.to_string());
        tag.push(':');
        push_base36(&mut tag, n);
        if slot_of(&tag) == slot {
            return tag;
        }
    }
    unreachable!("CRC16 reaches every slot")
}

/// The slot a hash tag's keys live in.
pub fn slot_of(tag: &str) -> u16 {
    fred::util::redis_keyslot(format!("{{{tag}}}").as_bytes())
}

fn push_base36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(digits.iter().rev().map(|d| *d as char));
}

/// One primary's slot ranges (inclusive), as the cluster's slot map says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// How it is named (`host:port`).
    pub name: String,
    /// Its slots, as inclusive ranges.
    pub ranges: Vec<(u16, u16)>,
}

/// The slot map of a plain Redis: every slot on one "primary".
pub fn whole(name: &str) -> Vec<Primary> {
    vec![Primary { name: name.to_owned(), ranges: vec![(0, (SLOTS - 1) as u16)] }]
}

/// The slot for one more partition, given the slots of those taking
/// requests (`taken`) and the slot map.
pub fn place(primaries: &[Primary], taken: &[u16]) -> u16 {
    let count = |p: &Primary| taken.iter().filter(|s| p.ranges.iter().any(|(a, b)| (*a..=*b).contains(*s))).count();
    let best = primaries
        .iter()
        .map(|p| (count(p), longest_gap(p, taken)))
        .filter_map(|(n, gap)| gap.map(|gap| (n, gap)))
        // Fewest partitions first; then the longest free run.
        .min_by_key(|(n, (start, len))| (*n, std::cmp::Reverse(*len), *start));
    match best {
        Some((_, (start, len))) => (u32::from(start) + len / 2) as u16,
        None => 0,
    }
}

/// The longest run of `primary`'s slots holding none of `taken`: its
/// first slot and length.
fn longest_gap(primary: &Primary, taken: &[u16]) -> Option<(u16, u32)> {
    let mut best: Option<(u16, u32)> = None;
    for &(a, b) in &primary.ranges {
        let mut inside: Vec<u16> = taken.iter().copied().filter(|s| (a..=b).contains(s)).collect();
        inside.sort_unstable();
        let mut start = u32::from(a);
        for s in inside.into_iter().map(u32::from).chain(std::iter::once(u32::from(b) + 1)) {
            let len = s.saturating_sub(start);
            if len > 0 && best.is_none_or(|(_, l)| len > l) {
                best = Some((start as u16, len));
            }
            start = s + 1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn even_split(m: u32) -> Vec<Primary> {
        (0..m)
            .map(|i| Primary {
                name: format!("n{i}"),
                ranges: vec![((i * SLOTS / m) as u16, ((i + 1) * SLOTS / m - 1) as u16)],
            })
            .collect()
    }

    fn per_primary(primaries: &[Primary], slots: &[u16]) -> Vec<usize> {
        primaries
            .iter()
            .map(|p| slots.iter().filter(|s| p.ranges.iter().any(|(a, b)| (*a..=*b).contains(*s))).count())
            .collect()
    }

    #[test]
    fn tags_hash_to_their_slot() {
        for (p, slot) in [(0, 0), (3, 8_191), (255, 16_383)] {
            let tag = tag_for_slot("postbacks", p, slot);
            assert!(tag.starts_with(&format!("postbacks:{p}:")), "{tag}");
            assert_eq!(slot_of(&tag), slot);
            assert_eq!(fred::util::redis_keyslot(format!("{{{tag}}}:schedule").as_bytes()), slot);
        }
    }

    #[test]
    fn the_readmes_table_of_tags_holds() {
        let table: [&[&str]; 5] = [
            &["postbacks:0:m02"],
            &["postbacks:0:2d6", "postbacks:1:fks"],
            &["postbacks:0:kdf", "postbacks:1:fzq", "postbacks:2:1uv"],
            &["postbacks:0:6y9", "postbacks:1:5oh", "postbacks:2:7at", "postbacks:3:zm"],
            &[
                "postbacks:0:e2a",
                "postbacks:1:1ce",
                "postbacks:2:hoo",
                "postbacks:3:giw",
                "postbacks:4:ck",
                "postbacks:5:3gm",
            ],
        ];
        for (tags, n) in table.iter().zip([1u32, 2, 3, 4, 6]) {
            let made: Vec<String> = (0..n).map(|p| tag_for_slot("postbacks", p, seed_slot(p, n))).collect();
            assert_eq!(made, *tags, "{n} partitions");
        }
    }

    #[test]
    fn a_seed_spreads_evenly_over_any_even_split() {
        for n in 1..=64u32 {
            let slots: Vec<u16> = (0..n).map(|p| seed_slot(p, n)).collect();
            for m in 1..=n.min(16) {
                let counts = per_primary(&even_split(m), &slots);
                let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{n} on {m}: {counts:?}");
                if n % m == 0 {
                    assert!(counts.iter().all(|c| *c == (n / m) as usize), "{n} on {m}: {counts:?}");
                }
            }
        }
    }

    #[test]
    fn added_partitions_go_to_the_emptiest_primary() {
        let primaries = even_split(3);
        let mut slots: Vec<u16> = (0..3).map(|p| seed_slot(p, 3)).collect();
        for _ in 0..3 {
            slots.push(place(&primaries, &slots));
        }
        assert_eq!(per_primary(&primaries, &slots), [2, 2, 2]);
        let mut slots = vec![seed_slot(0, 1)];
        slots.push(place(&whole("r"), &slots));
        assert!(slots[1].abs_diff(slots[0]) > 4_000, "{slots:?}");
    }
}
