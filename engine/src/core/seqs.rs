//! A member's entry numbers, kept as runs.
//!
//! A statement lists a member's entries by number, so every entry's number stays with its
//! member. A purchase writes six or seven entries, numbered one after another: as runs of
//! consecutive numbers they take 16 bytes a purchase instead of 8 a number (and the slack of a
//! growing vector), and a member's first run is kept inline, so one who bought once has
//! nothing on the heap. Serialised and hashed as the plain ascending list, so checkpoints and
//! the state's digest are what they were with a `Vec<u64>`.

use std::hash::{Hash, Hasher};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySeqs {
    /// (first number, how many), ascending; two runs never touch.
    runs: SmallVec<[(u64, u32); 1]>,
}

impl EntrySeqs {
    /// How many numbers: a sum over the runs, asked for by statements, not by purchases.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|&(_, count)| u64::from(count)).sum()
    }

    /// Adds `seq`, above every number already here.
    pub fn push(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some((first, count)) if *first + u64::from(*count) == seq && *count < u32::MAX => {
                *count += 1;
            }
            Some((first, count)) => {
                assert!(seq >= *first + u64::from(*count), "entry numbers ascend");
                self.runs.push((seq, 1));
            }
            None => self.runs.push((seq, 1)),
        }
    }

    /// Every number, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.runs
            .iter()
            .flat_map(|&(first, count)| first..first + u64::from(count))
    }

    /// Up to `take` numbers, newest first, after skipping the `skip` newest.
    pub fn newest(&self, skip: u64, take: usize) -> Vec<u64> {
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.iter().rev().skip(skip).take(take).collect()
    }

    /// Puts `new` in place of `old`, keeping the numbers ascending (a lent part's provisional
    /// numbers becoming real ones).
    pub fn replace(&mut self, old: u64, new: u64) {
        self.remove(old);
        let at = self.runs.partition_point(|&(first, _)| first < new);
        let joins_before = at > 0 && {
            let (first, count) = self.runs[at - 1];
            first + u64::from(count) == new
        };
        let joins_after = self
            .runs
            .get(at)
            .is_some_and(|&(first, _)| first == new + 1);
        match (joins_before, joins_after) {
            (true, true) => {
                let (_, after) = self.runs.remove(at);
                self.runs[at - 1].1 += 1 + after;
            }
            (true, false) => self.runs[at - 1].1 += 1,
            (false, true) => {
                self.runs[at].0 = new;
                self.runs[at].1 += 1;
            }
            (false, false) => self.runs.insert(at, (new, 1)),
        }
        debug_assert!(self.ascending(), "entry numbers ascend");
    }

    fn remove(&mut self, seq: u64) {
        let at = self.runs.partition_point(|&(first, _)| first <= seq);
        assert!(at > 0, "entry {seq} is in the history");
        let (first, count) = self.runs[at - 1];
        let end = first + u64::from(count);
        assert!(seq < end, "entry {seq} is in the history");
        let before = u32::try_from(seq - first).expect("inside a run");
        let after = u32::try_from(end - seq - 1).expect("inside a run");
        match (before, after) {
            (0, 0) => {
                self.runs.remove(at - 1);
            }
            (0, _) => self.runs[at - 1] = (seq + 1, after),
            (_, 0) => self.runs[at - 1].1 = before,
            _ => {
                self.runs[at - 1].1 = before;
                self.runs.insert(at, (seq + 1, after));
            }
        }
    }

    fn ascending(&self) -> bool {
        self.runs
            .windows(2)
            .all(|pair| pair[0].0 + u64::from(pair[0].1) < pair[1].0)
    }
}

/// The calls `Vec<u64>`'s `Hash` makes, up to how its bytes are split between `write`s:
/// the state's digest streams them into xxh3, for which that split does not matter.
impl Hash for EntrySeqs {
    #[allow(
        clippy::host_endian_bytes,
        reason = "the bytes `u64::hash_slice` writes, which are the host's"
    )]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len() as usize);
        for seq in self.iter() {
            state.write(&seq.to_ne_bytes());
        }
    }
}

impl Serialize for EntrySeqs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut sequence = serializer.serialize_seq(Some(self.len() as usize))?;
        for seq in self.iter() {
            sequence.serialize_element(&seq)?;
        }
        sequence.end()
    }
}

impl<'de> Deserialize<'de> for EntrySeqs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EntrySeqs, D::Error> {
        let seqs = Vec::<u64>::deserialize(deserializer)?;
        if seqs.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(D::Error::custom("entry numbers that do not ascend"));
        }
        let mut read = EntrySeqs::default();
        for seq in seqs {
            read.push(seq);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Ascending numbers with gaps, mostly in runs as purchases write them.
    fn ascending() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec((1u64..4, 1u64..9), 0..60).prop_map(|steps| {
            let mut seq = 0;
            let mut seqs = Vec::new();
            for (gap, run) in steps {
                seq += gap;
                for _ in 0..run {
                    seqs.push(seq);
                    seq += 1;
                }
            }
            seqs
        })
    }

    fn of(seqs: &[u64]) -> EntrySeqs {
        let mut kept = EntrySeqs::default();
        for &seq in seqs {
            kept.push(seq);
        }
        kept
    }

    proptest! {
        #[test]
        fn answers_as_the_plain_list(seqs in ascending(), skip in 0u64..80, take in 0usize..30) {
            let kept = of(&seqs);
            prop_assert_eq!(kept.len(), seqs.len() as u64);
            prop_assert_eq!(kept.iter().collect::<Vec<_>>(), seqs.clone());
            let newest: Vec<u64> = seqs.iter().rev().skip(skip as usize).take(take).copied().collect();
            prop_assert_eq!(kept.newest(skip, take), newest);
            let digest = |value: &dyn Fn(&mut xxhash_rust::xxh3::Xxh3)| {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                value(&mut hasher);
                hasher.digest128()
            };
            prop_assert_eq!(digest(&|h| kept.hash(h)), digest(&|h| seqs.hash(h)));
            let bytes = bincode::serialize(&kept).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&seqs).unwrap());
            prop_assert_eq!(bincode::deserialize::<EntrySeqs>(&bytes).unwrap(), kept);
        }

        /// Provisional numbers (above all others) replaced one by one by real ones in
        /// order, as `Ledger::adopt_entries` does: the same list as replacing in a vector.
        #[test]
        fn replaces_as_the_plain_list(seqs in ascending(), provisional in ascending(), real in 1u64..4) {
            let base = 1 << 40;
            let mut plain: Vec<u64> = seqs.clone();
            plain.extend(provisional.iter().map(|p| base + p));
            let mut kept = of(&plain);
            let mut next = seqs.last().copied().unwrap_or(0) + real;
            for p in &provisional {
                let slot = plain.binary_search(&(base + p)).unwrap();
                plain[slot] = next;
                kept.replace(base + p, next);
                prop_assert!(kept.ascending());
                next += 1 + (p % 2);
            }
            prop_assert_eq!(kept.iter().collect::<Vec<_>>(), plain);
            prop_assert_eq!(kept.len(), seqs.len() as u64 + provisional.len() as u64);
        }
    }

    #[test]
    fn one_run_is_inline_and_no_larger_than_a_vector() {
        assert_eq!(
            std::mem::size_of::<EntrySeqs>(),
            std::mem::size_of::<Vec<u64>>()
        );
        let kept = of(&[7, 8, 9, 10, 11, 12]);
        assert!(!kept.runs.spilled());
        assert!(of(&[7, 8, 10]).runs.spilled());
    }

    #[test]
    fn a_list_that_does_not_ascend_does_not_read() {
        let bytes = bincode::serialize(&vec![3u64, 2]).unwrap();
        assert!(bincode::deserialize::<EntrySeqs>(&bytes).is_err());
    }
}
