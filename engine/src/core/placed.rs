//! A hash map for many large entries: tables of places, entries appended once.
//!
//! Like `PartedMap` (many small tables, the key's hash choosing one), but the tables hold
//! each entry's hash and place, not the entry: the entries are appended to one chunked
//! vector, written once and never moved, and a table that grows moves 16 bytes an entry.
//! For receipts (about 90 bytes each, one more every command) growing tables of whole
//! entries was a tenth of applying a purchase, most of it the kernel's page faults for the
//! copies. A lookup that finds its key reads one cache line more than `PartedMap`'s, so the
//! aliases, read on every command and rarely added, stay in a `PartedMap`.

use hashbrown::hash_table::Entry;
use hashbrown::{Equivalent, HashTable};
use std::hash::Hash;

use super::chunked::Chunked;
use super::parted::{hash_of, part_of, per_part_room, PARTS};

/// An entry's hash, kept so that a table grows without reading its entries, and its place
/// in `PlacedMap::entries`.
#[derive(Clone, Copy)]
struct Place {
    hash: u64,
    index: usize,
}

pub struct PlacedMap<K, V> {
    parts: Box<[HashTable<Place>]>,
    /// In the order they were first inserted.
    entries: Chunked<(K, V)>,
}

impl<K, V> Default for PlacedMap<K, V> {
    fn default() -> Self {
        PlacedMap {
            parts: (0..PARTS).map(|_| HashTable::new()).collect(),
            entries: Chunked::default(),
        }
    }
}

impl<K: Hash + Eq, V> PlacedMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Room for `additional` more places, spread evenly with some slack per part.
    pub fn reserve(&mut self, additional: usize) {
        let per_part = per_part_room(additional);
        for part in self.parts.iter_mut() {
            part.reserve(per_part, |place| place.hash);
        }
    }

    /// The place of `key`. The whole hash is compared before the key, so an entry is read
    /// only when it is almost surely the one.
    fn index_of<Q>(&self, key: &Q) -> Option<usize>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let hash = hash_of(key);
        let entries = &self.entries;
        self.parts[part_of(hash)]
            .find(hash, |place| {
                place.hash == hash && key.equivalent(&entries[place.index].0)
            })
            .map(|place| place.index)
    }

    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let (key, value) = &self.entries[self.index_of(key)?];
        Some((key, value))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_key_value(key).map(|(_, value)| value)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let index = self.index_of(key)?;
        Some(&mut self.entries[index].1)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = hash_of(&key);
        let entries = &mut self.entries;
        // One probe for both cases.
        let found = self.parts[part_of(hash)].entry(
            hash,
            |place| place.hash == hash && entries[place.index].0 == key,
            |place| place.hash,
        );
        match found {
            Entry::Occupied(place) => {
                let index = place.get().index;
                Some(std::mem::replace(&mut entries[index].1, value))
            }
            Entry::Vacant(vacant) => {
                let index = entries.len();
                entries.push((key, value));
                vacant.insert(Place { hash, index });
                None
            }
        }
    }

    /// Every entry, in the order first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        (&mut self.entries).into_iter().map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(key, _)| key)
    }

    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }
}

/// The number of entries: a merchant's receipts are millions, too many to print.
impl<K: Hash + Eq, V> std::fmt::Debug for PlacedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacedMap")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever is inserted, the map holds what a list of first insertions would, each
        /// key with its last value, in that order; and finds each key a list would find.
        #[test]
        fn holds_what_a_list_of_first_insertions_holds(
            inserts in proptest::collection::vec((0u16..1500, any::<u16>()), 0..2500),
        ) {
            let mut map = PlacedMap::default();
            let mut list: Vec<(u16, u16)> = Vec::new();
            for &(key, value) in &inserts {
                let listed = list.iter_mut().find(|(listed, _)| *listed == key);
                let replaced = match listed {
                    Some((_, old)) => Some(std::mem::replace(old, value)),
                    None => {
                        list.push((key, value));
                        None
                    }
                };
                prop_assert_eq!(map.insert(key, value), replaced);
            }
            prop_assert_eq!(map.len(), list.len());
            prop_assert!(map.iter().map(|(k, v)| (*k, *v)).eq(list.iter().copied()));
            for key in 0u16..1600 {
                let listed = list.iter().find(|(listed, _)| *listed == key).map(|(_, v)| v);
                prop_assert_eq!(map.get(&key), listed);
            }
            for value in map.values_mut() {
                *value = value.wrapping_add(1);
            }
            prop_assert!(map.values().copied().eq(list.iter().map(|(_, v)| v.wrapping_add(1))));
        }
    }
}
