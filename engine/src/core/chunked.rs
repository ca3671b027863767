//! A vector kept in chunks of a fixed length.
//!
//! A merchant's members are a vector indexed by member number. As one `Vec`, it doubles in
//! one push: past 2^23 members (368 bytes each) that allocates 6 GiB and copies 3 GiB, seconds
//! in which no command of the merchant is answered. In chunks, only the last chunk grows, and
//! never past `CHUNK_LEN` elements: the same memory in total, never a pause longer than
//! copying one chunk.

use std::hash::{Hash, Hasher};
use std::ops::{Index, IndexMut};

/// Elements per chunk, a power of two so that an index splits with a shift and a mask:
/// 24 MiB of members per chunk.
const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;

pub struct Chunked<T> {
    /// Every chunk but the last holds exactly `CHUNK_LEN` elements, and none is empty.
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: Vec::new() }
    }
}

impl<T> Chunked<T> {
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK_LEN + last.len())
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK_LEN => last.push(value),
            _ => {
                // The first chunk grows from nothing (a merchant may have ten members); later
                // ones are sized once, since their predecessor filled up.
                let capacity = if self.chunks.is_empty() { 0 } else { CHUNK_LEN };
                let mut chunk = Vec::with_capacity(capacity);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.chunks
            .get(index >> CHUNK_BITS)?
            .get(index & (CHUNK_LEN - 1))
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(index >> CHUNK_BITS)?
            .get_mut(index & (CHUNK_LEN - 1))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.into_iter()
    }

    /// The elements in order as slices of at most `length`; none spans two chunks.
    pub fn slices(&self, length: usize) -> impl Iterator<Item = &[T]> {
        self.chunks
            .iter()
            .flat_map(move |chunk| chunk.chunks(length))
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        let len = self.len();
        self.get(index)
            .unwrap_or_else(|| panic!("index {index} past the end ({len})"))
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        let len = self.len();
        self.get_mut(index)
            .unwrap_or_else(|| panic!("index {index} past the end ({len})"))
    }
}

impl<T> Extend<T> for Chunked<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, values: I) {
        values.into_iter().for_each(|value| self.push(value));
    }
}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flatten()
    }
}

impl<'a, T> IntoIterator for &'a mut Chunked<T> {
    type Item = &'a mut T;
    type IntoIter = std::iter::Flatten<std::slice::IterMut<'a, Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter_mut().flatten()
    }
}

/// Hashes as a slice of the same elements does (the length, then each element): the state
/// digest that checkpoints keep was taken over a `Vec`.
impl<T: Hash> Hash for Chunked<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        self.iter().for_each(|value| value.hash(state));
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::Hash;

    use super::super::HashBytes;
    use super::{Chunked, CHUNK_LEN};

    fn filled(len: usize) -> Chunked<u64> {
        let mut chunked = Chunked::default();
        chunked.extend((0..len as u64).map(|i| i * 3));
        chunked
    }

    #[test]
    fn holds_what_a_vector_holds_across_chunks() {
        for len in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN + 5,
        ] {
            let mut chunked = filled(len);
            let vector: Vec<u64> = (0..len as u64).map(|i| i * 3).collect();
            assert_eq!(chunked.len(), len);
            assert_eq!(chunked.is_empty(), len == 0);
            assert!(chunked.iter().eq(vector.iter()));
            assert!((&chunked).into_iter().eq(vector.iter()));
            for index in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&i| i < len)
            {
                assert_eq!(chunked[index], vector[index]);
                assert_eq!(chunked.get(index), Some(&vector[index]));
            }
            assert_eq!(chunked.get(len), None);
            if len > 0 {
                chunked[len - 1] = 7;
                assert_eq!(chunked.iter().last(), Some(&7));
            }
            (&mut chunked).into_iter().for_each(|value| *value += 1);
            assert_eq!(chunked.iter().filter(|&&v| v == 0).count(), 0);
        }
    }

    #[test]
    fn every_chunk_but_the_last_is_full_and_sized_once() {
        let chunked = filled(2 * CHUNK_LEN + 3);
        let lengths: Vec<usize> = chunked.chunks.iter().map(Vec::len).collect();
        assert_eq!(lengths, [CHUNK_LEN, CHUNK_LEN, 3]);
        assert_eq!(chunked.chunks[1].capacity(), CHUNK_LEN);
        assert_eq!(chunked.chunks[2].capacity(), CHUNK_LEN);
    }

    #[test]
    fn slices_cover_every_element_in_order_within_chunks() {
        let chunked = filled(CHUNK_LEN + 10);
        let slices: Vec<&[u64]> = chunked.slices(1000).collect();
        assert!(slices.iter().all(|s| !s.is_empty() && s.len() <= 1000));
        assert!(slices.iter().flat_map(|s| s.iter()).eq(chunked.iter()));
        assert_eq!(slices.last().map(|s| s.len()), Some(10));
    }

    #[test]
    fn hashes_as_the_same_elements_in_a_vector() {
        let chunked = filled(CHUNK_LEN + 3);
        let vector: Vec<u64> = chunked.iter().copied().collect();
        let (mut ours, mut theirs) = (HashBytes(Vec::new()), HashBytes(Vec::new()));
        chunked.hash(&mut ours);
        vector.hash(&mut theirs);
        assert_eq!(ours.0, theirs.0);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn an_index_past_the_end_panics() {
        let _ = filled(3)[3];
    }
}
