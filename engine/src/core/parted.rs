//! A hash map kept as many small tables, the key's hash choosing the table.
//!
//! A single table of millions of receipts doubles in one insert: it allocates the new table,
//! which on a fresh page costs the kernel's zeroing, and moves every entry over. At 2,000,000
//! receipts that held every terminal's answer back for about a second. In parts, each table
//! grows on its own, a few thousand entries at a time: the same work in total, never in one
//! pause.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::Entry;
use hashbrown::{Equivalent, HashTable};
use rustc_hash::FxBuildHasher;

/// Tables per map: a map of 10,000,000 grows 40,000 entries at a time, and an empty map
/// costs 8 KiB.
pub(super) const PARTS: usize = 256;

pub struct PartedMap<K, V> {
    parts: Box<[HashTable<(K, V)>]>,
}

impl<K, V> Default for PartedMap<K, V> {
    fn default() -> Self {
        PartedMap {
            parts: (0..PARTS).map(|_| HashTable::new()).collect(),
        }
    }
}

pub(super) fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The part of a hash. Not its low bits (a table's slot) nor its top seven (a table's tag):
/// all of a part's keys share these bits. Multiplying spreads every bit into the top byte.
pub(super) fn part_of(hash: u64) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % PARTS
}

/// What each part reserves for `additional` more entries in all: an even share with some
/// slack.
pub(super) fn per_part_room(additional: usize) -> usize {
    additional / PARTS + additional / PARTS / 8 + 16
}

impl<K: Hash + Eq, V> PartedMap<K, V> {
    /// Room for `additional` more entries, spread evenly with some slack per part.
    pub fn reserve(&mut self, additional: usize) {
        let per_part = per_part_room(additional);
        for part in self.parts.iter_mut() {
            part.reserve(per_part, |(key, _)| hash_of(key));
        }
    }

    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let hash = hash_of(key);
        self.parts[part_of(hash)]
            .find(hash, |(k, _)| key.equivalent(k))
            .map(|(k, v)| (k, v))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_key_value(key).map(|(_, value)| value)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_key_value(key).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = hash_of(&key);
        let part = &mut self.parts[part_of(hash)];
        // One probe for both cases.
        match part.entry(hash, |(k, _)| *k == key, |(k, _)| hash_of(k)) {
            Entry::Occupied(mut found) => Some(std::mem::replace(&mut found.get_mut().1, value)),
            Entry::Vacant(vacant) => {
                vacant.insert((key, value));
                None
            }
        }
    }

    /// Every entry, part by part: the same order for the same inserts.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts
            .iter()
            .flat_map(|part| part.iter().map(|(k, v)| (k, v)))
    }
}

impl<K: Hash + Eq, V> Extend<(K, V)> for PartedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

impl<K: Hash + Eq + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for PartedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Whatever is inserted, the map answers as a `HashMap` given the same inserts.
        #[test]
        fn answers_as_a_hash_map(inserts in proptest::collection::vec((0u32..2000, any::<u16>()), 0..3000)) {
            let mut parted = PartedMap::default();
            let mut plain = HashMap::new();
            for (key, value) in &inserts {
                prop_assert_eq!(parted.insert(key.to_string(), *value), plain.insert(key.to_string(), *value));
            }
            prop_assert_eq!(parted.iter().count(), plain.len());
            for key in 0u32..2000 {
                prop_assert_eq!(parted.get(key.to_string().as_str()), plain.get(&key.to_string()));
            }
            let mut entries: Vec<_> = parted.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let mut expected: Vec<_> = plain.into_iter().collect();
            entries.sort();
            expected.sort();
            prop_assert_eq!(entries, expected);
        }
    }

    #[test]
    fn keys_spread_over_every_part() {
        let mut map = PartedMap::default();
        map.reserve(100_000);
        for key in 0u64..100_000 {
            map.insert(format!("pos-1/{key}"), key);
        }
        let sizes: Vec<usize> = map.parts.iter().map(HashTable::len).collect();
        let mean = 100_000 / PARTS;
        assert!(
            sizes.iter().all(|&size| size > mean / 2 && size < mean * 2),
            "parts of very different sizes: {sizes:?}"
        );
        assert_eq!(map.insert("pos-1/7".to_string(), 70), Some(7));
        assert_eq!(map.get("pos-1/7"), Some(&70));
        assert!(!map.contains_key("pos-1/100000"));
    }
}
