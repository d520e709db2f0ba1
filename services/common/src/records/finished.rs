//! The finished-positions record: which postbacks of a stream entry that
//! holds several are finished already (delivered, scheduled again or
//! dead-lettered), kept in the hash `<stream>:finished` as entry id →
//! bitmap until the entry's last postback is finished.
//!
//! Written only by deliver's finish script (`lua/finish.lua`, whose
//! `load_bits` and `store_bits` mirror [`FinishedPositions`]); read by
//! deliver (a re-read or claimed entry skips its finished postbacks),
//! `postbackctl entry` and the tests. Position `p` (from 0) is bit
//! `7 - p % 8` of byte `p / 8`, as `SETBIT` numbers bits.

/// The finished positions of one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedPositions(Vec<u8>);

impl FinishedPositions {
    /// The record as stored (absent: nothing finished).
    pub fn from_bytes(bits: &[u8]) -> Self {
        Self(bits.to_vec())
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether position `p` is finished.
    pub fn contains(&self, p: usize) -> bool {
        self.0.get(p / 8).is_some_and(|byte| byte & (0x80 >> (p % 8)) != 0)
    }

    /// Marks position `p` finished.
    pub fn insert(&mut self, p: usize) {
        if self.0.len() <= p / 8 {
            self.0.resize(p / 8 + 1, 0);
        }
        self.0[p / 8] |= 0x80 >> (p % 8);
    }

    /// The finished positions below `postbacks`, in order.
    pub fn positions(&self, postbacks: usize) -> Vec<usize> {
        (0..postbacks).filter(|p| self.contains(*p)).collect()
    }

    /// For each position below `postbacks`, whether it is finished.
    pub fn flags(&self, postbacks: usize) -> Vec<bool> {
        (0..postbacks).map(|p| self.contains(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_numbered_as_setbit_numbers_bits() {
        // SETBIT k 0 1, SETBIT k 7 1, SETBIT k 9 1
        let bits = FinishedPositions::from_bytes(&[0b1000_0001, 0b0100_0000]);
        assert_eq!(bits.positions(12), [0, 7, 9]);
        assert_eq!(FinishedPositions::default().flags(3), [false; 3], "no record: nothing finished");
        let mut built = FinishedPositions::default();
        [9, 0, 7].into_iter().for_each(|p| built.insert(p));
        assert_eq!(built, bits);
    }
}
