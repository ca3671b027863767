//! A deque kept sorted by its callers, in chunks: an insert in the middle moves one chunk.
//!
//! A member's lots and pending queue are sorted by time, and new items almost always go at
//! the end. When terminals' clocks differ by tenths of a second, a member earning thousands
//! of lots a second gets new lots among its last thousands instead. In one `VecDeque` each
//! such insert moved half of them: a fifth of the engine thread under the load generator.
//! In chunks of at most `CHUNK_MAX`, an insert moves at most one chunk.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// Items per chunk at most: an insert moves at most this many (4 KiB of lots).
const CHUNK_MAX: usize = 64;

/// Where an item is. Places order like the items, and removing an item leaves the places
/// before it valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    chunk: usize,
    index: usize,
}

/// Most members have a few lots: their one chunk is kept inline, without a second allocation.
#[derive(Clone)]
pub struct SortedDeque<T> {
    /// No chunk is empty, and none holds more than `CHUNK_MAX` items.
    chunks: SmallVec<[VecDeque<T>; 1]>,
}

impl<T> Default for SortedDeque<T> {
    fn default() -> Self {
        SortedDeque {
            chunks: SmallVec::new(),
        }
    }
}

/// Where `before` turns false among `len` items sorted so that it holds for a prefix,
/// searched from the back. New items usually sort last, and when they do not, they belong
/// a few places from the end: steps of 1, 2, 4, … back from the end find them in a few
/// probes near the end, where a binary search misses the cache at every step.
fn place_from_back(len: usize, before: impl Fn(usize) -> bool) -> usize {
    // Invariant: `before` is false at `high` and after it (or `high` is the end).
    let mut high = len;
    let mut step = 1;
    let mut low = loop {
        if step > high {
            break 0;
        }
        let probe = high - step;
        if before(probe) {
            break probe + 1;
        }
        high = probe;
        step *= 2;
    };
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

impl<T> SortedDeque<T> {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.first()?.front()
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.first_mut()?;
        let item = first.pop_front();
        if first.is_empty() {
            self.chunks.remove(0);
        }
        item
    }

    pub fn back(&self) -> Option<&T> {
        self.chunks.last()?.back()
    }

    /// Appends an item that sorts after every other.
    pub fn push_back(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK_MAX => last.push_back(item),
            _ => self.push_chunk(self.chunks.len(), item),
        }
    }

    /// A new chunk at `chunk` holding `item`. The first grows from nothing, since most
    /// members have a few lots; later ones are sized once, since their predecessor filled.
    fn push_chunk(&mut self, chunk: usize, item: T) {
        let capacity = if self.chunks.is_empty() { 0 } else { CHUNK_MAX };
        let mut new = VecDeque::with_capacity(capacity);
        new.push_back(item);
        self.chunks.insert(chunk, new);
    }

    /// Inserts `item` after every item for which `before` holds; `before` holds for a
    /// prefix of the items. Searched from the back, where new items go.
    pub fn insert(&mut self, item: T, before: impl Fn(&T) -> bool) {
        if self.chunks.is_empty() {
            return self.push_chunk(0, item);
        }
        // Most new items sort after all others (new lots, later due times): one look at the
        // last item, instead of the last chunk's first and then its last, each a cache miss.
        if self.back().is_some_and(&before) {
            return self.push_back(item);
        }
        // The last chunk whose first item sorts before the new one takes it (or the first).
        let chunks = &self.chunks;
        let after = place_from_back(chunks.len(), |c| before(&chunks[c][0]));
        let chunk = after.saturating_sub(1);
        let items = &self.chunks[chunk];
        let index = place_from_back(items.len(), |i| before(&items[i]));
        if items.len() < CHUNK_MAX {
            return self.chunks[chunk].insert(index, item);
        }
        if index == CHUNK_MAX && chunk + 1 == self.chunks.len() {
            return self.push_chunk(chunk + 1, item);
        }
        // A full chunk splits in halves; the item goes into the half it sorts in.
        let back_half = self.chunks[chunk].split_off(CHUNK_MAX / 2);
        self.chunks.insert(chunk + 1, back_half);
        match index.checked_sub(CHUNK_MAX / 2) {
            Some(back_index) => self.chunks[chunk + 1].insert(back_index, item),
            None => self.chunks[chunk].insert(index, item),
        }
    }

    /// The place of the first item for which `before` does not hold, if there is one.
    pub fn partition_point(&self, before: impl Fn(&T) -> bool) -> Option<Place> {
        // It is in the last chunk whose first item sorts before, or first in the next one.
        let after = self.chunks.partition_point(|chunk| before(&chunk[0]));
        if let Some(chunk) = after.checked_sub(1) {
            let index = self.chunks[chunk].partition_point(&before);
            if index < self.chunks[chunk].len() {
                return Some(Place { chunk, index });
            }
        }
        (after < self.chunks.len()).then_some(Place {
            chunk: after,
            index: 0,
        })
    }

    /// The place of the last item for which `matches` holds.
    pub fn rposition(&self, matches: impl Fn(&T) -> bool) -> Option<Place> {
        self.chunks
            .iter()
            .enumerate()
            .rev()
            .find_map(|(chunk, items)| {
                let index = items.iter().rposition(&matches)?;
                Some(Place { chunk, index })
            })
    }

    pub fn get(&self, place: Place) -> Option<&T> {
        self.chunks.get(place.chunk)?.get(place.index)
    }

    pub fn get_mut(&mut self, place: Place) -> Option<&mut T> {
        self.chunks.get_mut(place.chunk)?.get_mut(place.index)
    }

    pub fn remove(&mut self, place: Place) -> Option<T> {
        let items = self.chunks.get_mut(place.chunk)?;
        let item = items.remove(place.index);
        if items.is_empty() {
            self.chunks.remove(place.chunk);
        }
        item
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for items in &mut self.chunks {
            items.retain(&mut keep);
        }
        self.chunks.retain(|items| !items.is_empty());
    }

    pub fn iter(&self) -> Iter<'_, T> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> IterMut<'_, T> {
        self.chunks.iter_mut().flatten()
    }
}

/// The item at a place found since the last change; like a slice's index, a place that holds
/// no item panics.
impl<T> std::ops::Index<Place> for SortedDeque<T> {
    type Output = T;

    fn index(&self, place: Place) -> &T {
        self.get(place).expect("an item at the place")
    }
}

impl<T> std::ops::IndexMut<Place> for SortedDeque<T> {
    fn index_mut(&mut self, place: Place) -> &mut T {
        self.get_mut(place).expect("an item at the place")
    }
}

pub type Iter<'a, T> = std::iter::Flatten<std::slice::Iter<'a, VecDeque<T>>>;
pub type IterMut<'a, T> = std::iter::Flatten<std::slice::IterMut<'a, VecDeque<T>>>;

impl<'a, T> IntoIterator for &'a SortedDeque<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Equal items in equal order, however they are chunked (a restored member is chunked
/// differently from the one that was saved).
impl<T: PartialEq> PartialEq for SortedDeque<T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<T: Eq> Eq for SortedDeque<T> {}

/// Hashes like a `VecDeque` of the same items, so state digests do not depend on chunking
/// and stay what they were before chunks.
impl<T: Hash> Hash for SortedDeque<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for item in self {
            item.hash(state);
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for SortedDeque<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> SortedDeque<T> {
    /// Serializes the items as a sequence, each as `form` makes it.
    pub fn serialize_each<S: Serializer, F: Serialize>(
        &self,
        serializer: S,
        form: impl Fn(&T) -> F,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for item in self {
            seq.serialize_element(&form(item))?;
        }
        seq.end()
    }

    /// Reads a sequence of items in order, each from `form` by `make`.
    pub fn deserialize_each<'de, D: Deserializer<'de>, F: Deserialize<'de>>(
        deserializer: D,
        make: impl Fn(F) -> Result<T, String>,
    ) -> Result<Self, D::Error> {
        struct Each<T, F, M>(M, PhantomData<(T, F)>);

        impl<'de, T, F: Deserialize<'de>, M: Fn(F) -> Result<T, String>> Visitor<'de> for Each<T, F, M> {
            type Value = SortedDeque<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut deque = SortedDeque::default();
                while let Some(form) = seq.next_element::<F>()? {
                    deque.push_back((self.0)(form).map_err(serde::de::Error::custom)?);
                }
                Ok(deque)
            }
        }

        deserializer.deserialize_seq(Each(make, PhantomData))
    }
}

impl<T: Serialize> Serialize for SortedDeque<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for item in self {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SortedDeque<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize_each(deserializer, Ok)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use std::hash::BuildHasher;

    use proptest::prelude::*;

    use super::*;

    /// What the deque does, step by step, beside a plain sorted `VecDeque`.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u16),
        PopFront,
        RemoveAt(u16),
        RemoveOdd,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u16..2000).prop_map(Step::Insert),
            1 => Just(Step::PopFront),
            1 => (0u16..2000).prop_map(Step::RemoveAt),
            1 => Just(Step::RemoveOdd),
        ]
    }

    fn place_of(deque: &SortedDeque<u16>, key: u16) -> Option<Place> {
        deque
            .partition_point(|item| *item < key)
            .filter(|&place| deque.get(place) == Some(&key))
    }

    proptest! {
        /// From the back or by halves, a new item finds the same place, wherever it sorts.
        #[test]
        fn the_place_from_the_back_is_the_partition_point(
            mut items in proptest::collection::vec(0u16..500, 0..300),
            key in 0u16..520,
        ) {
            items.sort_unstable();
            prop_assert_eq!(
                place_from_back(items.len(), |i| items[i] <= key),
                items.partition_point(|item| *item <= key)
            );
            prop_assert_eq!(
                place_from_back(items.len(), |i| items[i] < key),
                items.partition_point(|item| *item < key)
            );
        }

        /// Whatever is inserted and removed, the chunks hold the items of one sorted deque,
        /// each found where it is, and hash, compare and serialize like it.
        #[test]
        fn chunks_hold_what_one_sorted_deque_would(
            steps in proptest::collection::vec(step(), 0..600),
        ) {
            let mut deque = SortedDeque::default();
            let mut model: VecDeque<u16> = VecDeque::new();
            for step in steps {
                match step {
                    Step::Insert(key) => {
                        deque.insert(key, |item| *item <= key);
                        let at = model.partition_point(|item| *item <= key);
                        model.insert(at, key);
                    }
                    Step::PopFront => prop_assert_eq!(deque.pop_front(), model.pop_front()),
                    Step::RemoveAt(key) => {
                        let place = place_of(&deque, key);
                        let at = model.binary_search(&key).ok();
                        prop_assert_eq!(place.is_some(), at.is_some());
                        if let (Some(place), Some(at)) = (place, at) {
                            prop_assert_eq!(deque.remove(place), model.remove(at));
                        }
                    }
                    Step::RemoveOdd => {
                        deque.retain(|item| item % 2 == 0);
                        model.retain(|item| item % 2 == 0);
                    }
                }
                prop_assert!(deque.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK_MAX));
                prop_assert!(deque.iter().eq(model.iter()));
            }
            prop_assert_eq!(deque.len(), model.len());
            prop_assert_eq!(deque.front(), model.front());
            for key in 0..2000 {
                let at = model.partition_point(|item| *item < key);
                let place = deque.partition_point(|item| *item < key);
                prop_assert_eq!(place.and_then(|p| deque.get(p)), model.get(at));
            }
            let mut rebuilt = SortedDeque::default();
            model.iter().for_each(|item| rebuilt.push_back(*item));
            prop_assert_eq!(&rebuilt, &deque);
            let hash = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
            prop_assert_eq!(hash.hash_one(&deque), hash.hash_one(&model));
            let encoded = bincode::serialize(&deque).unwrap();
            prop_assert_eq!(&encoded, &bincode::serialize(&model).unwrap());
            let decoded: SortedDeque<u16> = bincode::deserialize(&encoded).unwrap();
            prop_assert_eq!(decoded, deque);
        }
    }
}
