//! Values kept as their encoding. An order record and a result's summary are written once,
//! read again only by a return or a late duplicate, and kept for every command: packed, one
//! is a single allocation of a few hundred bytes instead of a dozen holding a kilobyte, and
//! a checkpoint copies it as it is.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::encode::encode_into;
use super::image::state_bincode;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `T` in the state's encoding (`image::state_bincode`).
pub(crate) struct Packed<T> {
    bytes: Box<[u8]>,
    kind: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Packed<T> {
    pub fn pack(value: &T) -> Packed<T> {
        Packed::written_by(|buffer| encode_into(buffer, value))
    }

    /// A value whose encoding `write` appends (by hand, the same bytes `pack` would write).
    /// Encoded once into a reused buffer, then copied out at its size: sizing the value first
    /// would walk it twice.
    pub fn written_by(write: impl FnOnce(&mut Vec<u8>)) -> Packed<T> {
        SCRATCH.with_borrow_mut(|buffer| {
            buffer.clear();
            write(buffer);
            Packed::from_bytes(Box::from(buffer.as_slice()))
        })
    }

    /// The value. Its bytes were written by `pack` (or checked with the checkpoint that held
    /// them), so a value that does not decode is a broken invariant.
    pub fn unpack(&self) -> T {
        self.leading()
    }

    /// The bytes decoded as `P`, an older layout of `T` (a checkpoint's upgrade).
    pub fn decode_as<P: DeserializeOwned>(&self) -> bincode::Result<P> {
        use bincode::Options;
        state_bincode().deserialize(&self.bytes)
    }

    /// The value's leading fields, decoded without the rest: `P` is a prefix of `T`'s layout.
    pub fn leading<P: DeserializeOwned>(&self) -> P {
        use bincode::Options;
        state_bincode()
            .deserialize(&self.bytes)
            .expect("a packed value decodes")
    }
}

impl<T> Packed<T> {
    /// Asks for the first bytes ahead of a read (see `prefetch`).
    pub fn ask_for_bytes(&self) {
        if let Some(first) = self.bytes.first() {
            super::prefetch::prefetch(first, 2);
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn from_bytes(bytes: Box<[u8]>) -> Packed<T> {
        Packed {
            bytes,
            kind: PhantomData,
        }
    }
}

impl<T> Clone for Packed<T> {
    fn clone(&self) -> Packed<T> {
        Packed::from_bytes(self.bytes.clone())
    }
}

impl<T> std::fmt::Debug for Packed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.bytes.len())
    }
}

impl<T> Serialize for Packed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.bytes)
    }
}

impl<'de, T> Deserialize<'de> for Packed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Box<[u8]>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a packed value's bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Box<[u8]>, E> {
                Ok(bytes.into())
            }
        }
        deserializer
            .deserialize_bytes(Bytes)
            .map(Packed::from_bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::core::intern::NameTable;
    use crate::core::purchase::PackedOrder;
    use crate::core::tests::demo_ledger;
    use crate::core::{Record, RESULTS_KEPT_WHOLE};

    /// The hand-written encoding of order records, byte for byte the derived one, on every
    /// order of the demo traffic, which has every kind of part a record holds.
    #[test]
    fn packs_as_serde_would() {
        let ledger = demo_ledger(40, 2000, RESULTS_KEPT_WHOLE);
        let merchant = ledger.merchants.values().next().unwrap();
        let mut names = merchant.names.clone();
        // Fresh tables: new names are numbered in the same order too.
        let mut ours_names = NameTable::default();
        let mut by_serde = NameTable::default();
        let mut seen = [0usize; 6];
        for receipt in merchant.receipts.values() {
            if let Record::Order(packed) = &receipt.record {
                let mut record = packed.unpack(&mut names);
                record.own_lot = record.own_lot.filter(|lot| lot % 5 != 0);
                let parts = [
                    !record.order_points.is_empty(),
                    record
                        .order_points
                        .iter()
                        .any(|p| p.min_total_minor.is_some()),
                    !record.paid_slices.is_empty(),
                    record.paid_slices.iter().any(|s| s.expires_at.is_some()),
                    !record.promotions.is_empty(),
                    record.own_lot.is_none(),
                ];
                for (count, present) in seen.iter_mut().zip(parts) {
                    *count += usize::from(present);
                }
                let ours = PackedOrder::pack(&mut ours_names, &record);
                let theirs = PackedOrder::pack_by_serde(&mut by_serde, &record);
                assert_eq!(ours.bytes(), theirs.bytes());
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "every part seen: {seen:?}");
        assert_eq!(ours_names.names(), by_serde.names());
    }

    #[test]
    fn an_order_record_packs_whole_and_its_member_reads_alone() {
        let ledger = demo_ledger(40, 400, RESULTS_KEPT_WHOLE);
        let merchant = ledger.merchants.values().next().unwrap();
        let mut names = merchant.names.clone();
        let known = names.names().len();
        let mut orders = 0;
        for receipt in merchant.receipts.values() {
            if let Record::Order(packed) = &receipt.record {
                let record = packed.unpack(&mut names);
                assert_eq!(packed.member(), record.member);
                let again = PackedOrder::pack(&mut names, &record);
                assert_eq!(again.bytes(), packed.bytes());
                // Names written out, then numbered again: the same bytes.
                let written_out = PackedOrder::with_names_written_out(&record);
                assert!(written_out.bytes().len() > packed.bytes().len());
                let renumbered = written_out.renumbered(&mut names).unwrap();
                assert_eq!(renumbered.bytes(), packed.bytes());
                orders += 1;
            }
        }
        assert!(orders > 100, "most commands are purchases: {orders}");
        assert_eq!(
            names.names().len(),
            known,
            "every name was numbered already"
        );
    }
}
