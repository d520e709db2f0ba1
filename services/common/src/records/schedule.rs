//! The retry schedule: postbacks waiting for their next attempt, in
//! streams by delay, and when each stream's oldest entry is due.
//!
//! * A **level** is a stream `<stream>:schedule:@<D>` of the entries that
//!   wait `D` ms from when they were added: an entry with id `<ms>-<seq>`
//!   is due at `ms + D`. Entries are added in time order and all wait the
//!   same, so a level is in due order and the scheduler only ever looks at
//!   its head (an entry's id may be set ahead of when it was added, by
//!   less than a level's step: deliver does so for turns under a host's
//!   rate, which it keeps to the millisecond). Each entry holds exactly the
//!   fields of the stream entry it
//!   becomes again: `p` (a version 5 value of postbacks of one entry, see
//!   [`super::retried`]), or for a single postback (wire versions 1, 2, 4)
//!   `p`, `a` (attempts) and `f` (first attempt ms), as
//!   [`super::stream_entry::StreamEntry`] reads them.
//! * The **index**, the sorted set `<stream>:schedule`, has one member
//!   `@<D>` per level that holds entries, scored by when its oldest entry is
//!   due (ms on Redis's clock).
//! * `<stream>:scheduled` counts the postbacks in all levels.
//!
//! Delays are the [`LADDER`]: 16 levels per doubling, so a delay asked for
//! is served by the nearest level at or above it (at most 4.5 % later),
//! and an exponential retry's jitter picks one of four levels between half
//! and all of its step ([`jittered`]). Levels exist only while they hold
//! entries.
//! Compared with one sorted-set member per postback (about 120 bytes of
//! Redis's own per member, besides the postback), an entry of a stream costs
//! a few bytes besides its value.
//!
//! Written by deliver's finish script (`lua/finish.lua`) and read, moved
//! back into the stream, by the scheduler's (`lua/promote.lua`); listed by
//! `postbackctl retries`.
//!
//! Before levels, the schedule was the sorted set `<stream>:retry`, one
//! member `<attempts>:<first attempt ms>:<p bytes>` per postback scored by
//! its due time ([`OldMember`]); the scheduler still moves those when due,
//! and the key goes once it is empty.

use bytes::Bytes;

/// Levels per doubling of the delay.
pub const LEVELS_PER_DOUBLING: u32 = 16;

/// The longest delay a level has: about 35 years, past any setting.
pub const MAX_DELAY_MS: u64 = 1 << 40;

/// Every level's delay in ms, shortest first: `0`, then `ceil(2^(j/16))`
/// for `j = 0, 1, …` up to [`MAX_DELAY_MS`], each value once.
pub static LADDER: std::sync::LazyLock<Vec<u64>> = std::sync::LazyLock::new(|| {
    let mut ladder = vec![0];
    let mut j = 0u32;
    loop {
        let delay = 2f64.powf(f64::from(j) / f64::from(LEVELS_PER_DOUBLING)).ceil() as u64;
        if delay > MAX_DELAY_MS {
            return ladder;
        }
        if ladder.last() != Some(&delay) {
            ladder.push(delay);
        }
        j += 1;
    }
});

/// The level that serves a wait of `ms`: the shortest delay at or above it.
pub fn round_up(ms: u64) -> u64 {
    let ladder = &*LADDER;
    let i = ladder.partition_point(|d| *d < ms);
    ladder.get(i).copied().unwrap_or(MAX_DELAY_MS)
}

/// The longest level whose delay is at most `ms` (0 for none).
pub fn round_down(ms: u64) -> u64 {
    let ladder = &*LADDER;
    ladder[ladder.partition_point(|d| *d <= ms).saturating_sub(1)]
}

/// How many levels apart the delays that [`jittered`] picks from are:
/// four, so an exponential step spreads over four levels (each about 19 %
/// above the one before), not sixteen. A level costs Redis about 4 KiB
/// while it holds entries (a stream preallocates its node), which an
/// outage of many postbacks spreads thin, and few levels keep it small.
pub const JITTER_STRIDE: usize = 4;

/// Equal jitter on the ladder: one of the levels between half of `ceiling`
/// and all of it (both included), every [`JITTER_STRIDE`]th down from the
/// highest, picked by `u` in `[0, 1)`; so every wait is at least half its
/// step and at most all of it. Without a level in that range (tiny
/// ceilings), the one just above half.
pub fn jittered(ceiling: u64, u: f64) -> u64 {
    let ladder = &*LADDER;
    let low = ladder.partition_point(|d| *d < ceiling.div_ceil(2));
    let high = ladder.partition_point(|d| *d <= ceiling);
    if high <= low {
        return round_up(ceiling.div_ceil(2));
    }
    let choices = (high - low).div_ceil(JITTER_STRIDE);
    let pick = ((u.clamp(0.0, 1.0) * choices as f64) as usize).min(choices - 1);
    ladder[high - 1 - (choices - 1 - pick) * JITTER_STRIDE]
}

/// The index member of the level of delay `ms`.
pub fn member(ms: u64) -> String {
    format!("@{ms}")
}

/// The delay of an index member, if it names a level.
pub fn parse_member(member: &[u8]) -> Option<u64> {
    std::str::from_utf8(member.strip_prefix(b"@")?).ok()?.parse().ok()
}

/// The stream of the level of delay `ms`, beside index `index`.
pub fn level_key(index: &str, ms: u64) -> String {
    format!("{index}:@{ms}")
}

/// When an entry of the level of delay `ms` with id `id` is due, ms since
/// the epoch on Redis's clock.
pub fn due_ms(id: &str, ms: u64) -> Option<u64> {
    Some(id.split_once('-').map_or(id, |(ms, _)| ms).parse::<u64>().ok()? + ms)
}

/// A member of the schedule as it was before levels (`<stream>:retry`):
/// one postback and its tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldMember {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first was made (ms since the epoch; 0: none).
    pub first_attempt_ms: u64,
    /// The postback's `p` bytes.
    pub payload: Bytes,
}

impl OldMember {
    /// Reads `<attempts>:<first attempt ms>:<p bytes>`.
    pub fn parse(member: &[u8]) -> Option<Self> {
        let mut parts = member.splitn(3, |b| *b == b':');
        let number = |part: &[u8]| std::str::from_utf8(part).ok()?.parse::<u64>().ok();
        let attempts = u32::try_from(number(parts.next()?)?).ok()?;
        let first_attempt_ms = number(parts.next()?)?;
        let payload = Bytes::copy_from_slice(parts.next()?);
        Some(Self { attempts, first_attempt_ms, payload })
    }

    /// The member's bytes (as deliver wrote them before levels; tests
    /// write old members with this).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}:{}:", self.attempts, self.first_attempt_ms).into_bytes();
        out.extend_from_slice(&self.payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_has_sixteen_levels_per_doubling() {
        let ladder = &*LADDER;
        assert_eq!(&ladder[..4], &[0, 1, 2, 3]);
        assert!(ladder.windows(2).all(|w| w[0] < w[1]));
        for big in [1_000u64, 60_000, 7_200_000] {
            let level = round_up(big);
            assert!(level >= big && (level as f64) < big as f64 * 1.045, "{big} -> {level}");
        }
        let octave = ladder.iter().filter(|d| (4_096..8_192).contains(*d)).count();
        assert_eq!(octave, 16);
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(u64::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step() {
        for ceiling in [1u64, 2, 7, 100, 1_000, 500_000, 7_200_000] {
            let picks: std::collections::BTreeSet<u64> =
                (0..200).map(|i| jittered(ceiling, f64::from(i) / 200.0)).collect();
            let (low, high) = (*picks.first().expect("picks"), *picks.last().expect("picks"));
            if ceiling >= 100 {
                assert!(low >= ceiling / 2 && high <= ceiling, "{ceiling}: {low}..{high}");
                assert!((4..=5).contains(&picks.len()), "{ceiling}: spread over four levels: {picks:?}");
            }
            assert!(low >= ceiling.div_ceil(2).min(round_up(ceiling.div_ceil(2))), "{ceiling}: {low}");
            assert_eq!(jittered(ceiling, 0.999_999), high);
        }
    }

    #[test]
    fn members_name_their_level() {
        assert_eq!(member(1_024), "@1024");
        assert_eq!(parse_member(b"@1024"), Some(1_024));
        assert_eq!(parse_member(b"3:1764288000000:\x95"), None);
        assert_eq!(level_key("{postbacks:2}:schedule", 1_024), "{postbacks:2}:schedule:@1024");
        assert_eq!(due_ms("1764288000000-3", 500), Some(1_764_288_000_500));
        let old =
            OldMember { attempts: 3, first_attempt_ms: 1_764_288_000_000, payload: Bytes::from_static(b"\x96:x") };
        assert_eq!(OldMember::parse(&old.to_bytes()), Some(old));
        assert_eq!(OldMember::parse(b"@1024"), None);
    }
}
