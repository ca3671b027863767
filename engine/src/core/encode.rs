//! The state's encoding (`state_bincode`), written straight into a `Vec<u8>`.
//!
//! bincode's own serializer goes through `io::Write` for every byte of every variable-length
//! integer; an order record has about sixty of them, and writing them was an eighth of a
//! purchase. This writer produces the same bytes (tests compare it with bincode on every kind
//! of value the state holds) and pushes each integer in one step. bincode still reads them.

use serde::ser::{self, Serialize};

const SINGLE_BYTE_MAX: u64 = 250;
const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;
const U128_BYTE: u8 = 254;

/// Appends `value` in the state's encoding.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    value
        .serialize(&mut Encoder { out })
        .expect("every value the state holds has an encoding");
}

/// A `serde` serializer appending the state's encoding to `out`.
pub struct Encoder<'a> {
    pub out: &'a mut Vec<u8>,
}

/// The one thing the encoding cannot write: a sequence whose length is not known up front.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(String);

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        EncodeError(message.to_string())
    }
}

impl Encoder<'_> {
    /// Most integers the state holds are small: their one byte is pushed inline, the rest
    /// out of line.
    #[inline(always)]
    pub fn varint(&mut self, n: u64) {
        if n <= SINGLE_BYTE_MAX {
            self.out.push(n as u8);
        } else {
            self.wide_varint(n);
        }
    }

    #[inline(never)]
    fn wide_varint(&mut self, n: u64) {
        if let Ok(n) = u16::try_from(n) {
            self.out.push(U16_BYTE);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.out.push(U32_BYTE);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            self.out.push(U64_BYTE);
            self.out.extend_from_slice(&n.to_le_bytes());
        }
    }

    pub fn varint128(&mut self, n: u128) {
        match u64::try_from(n) {
            Ok(n) => self.varint(n),
            Err(_) => {
                self.out.push(U128_BYTE);
                self.out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }

    #[inline(always)]
    pub fn signed(&mut self, n: i64) {
        self.varint(zigzag(n));
    }

    #[inline(always)]
    pub fn length(&mut self, length: usize) {
        self.varint(length as u64);
    }

    /// Text: its length, then its bytes.
    pub fn text(&mut self, text: &str) {
        self.length(text.len());
        self.out.extend_from_slice(text.as_bytes());
    }

    #[inline(always)]
    pub fn flag(&mut self, flag: bool) {
        self.out.push(u8::from(flag));
    }

    /// An `Option`'s tag, then the value if there is one.
    #[inline(always)]
    pub fn optional<T: Copy>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        self.flag(value.is_some());
        if let Some(value) = value {
            write(self, value);
        }
    }

    fn known_length(&mut self, length: Option<usize>) -> Result<(), EncodeError> {
        let length = length.ok_or_else(|| {
            EncodeError("a sequence is encoded with its length, which was not given".into())
        })?;
        self.length(length);
        Ok(())
    }
}

#[inline]
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn zigzag128(n: i128) -> u128 {
    ((n << 1) ^ (n >> 127)) as u128
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.out.push(v as u8);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.signed(i64::from(v));
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.signed(i64::from(v));
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.signed(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        self.varint128(zigzag128(v));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.out.push(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.varint(u64::from(v));
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.varint(u64::from(v));
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.varint(v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        self.varint128(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        let mut utf8 = [0; 4];
        self.out
            .extend_from_slice(v.encode_utf8(&mut utf8).as_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.length(v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(0);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.known_length(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.known_length(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Every compound value is its elements, one after the other.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), EncodeError> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// Every struct is its fields' values, in order: the names are not written.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                _key: &'static str,
                value: &T,
            ) -> Result<(), EncodeError> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::encode_into;
    use crate::core::state_bincode;

    fn bincode_of<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        use bincode::Options;
        state_bincode().serialize(value).expect("encodes")
    }

    fn ours<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, value);
        out
    }

    #[derive(Debug, Serialize)]
    enum Shape {
        Unit,
        Newtype(i64),
        Tuple(u8, i16),
        Struct { a: u32, b: Option<String> },
    }

    #[derive(Debug, Serialize)]
    struct Everything {
        flag: bool,
        small: (i8, u8),
        mid: (i16, u16, i32, u32),
        big: (i64, u64, i128, u128),
        floats: (f32, f64),
        letter: char,
        text: String,
        bytes: serde_bytes_like::Bytes,
        maybe: Option<i64>,
        list: Vec<(u32, i64)>,
        map: BTreeMap<String, u64>,
        shapes: Vec<Shape>,
        unit: (),
    }

    /// `serialize_bytes`, which no derived type reaches on its own.
    mod serde_bytes_like {
        #[derive(Debug)]
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    /// Around each boundary where the encoding's width changes.
    fn edgy_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..=300,
            (0u64..8).prop_map(|d| 65_535 - 4 + d),
            (0u64..8).prop_map(|d| u64::from(u32::MAX) - 4 + d),
            (0u64..5).prop_map(|d| u64::MAX - d),
            any::<u64>(),
        ]
    }

    fn edgy_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            -300i64..=300,
            edgy_u64().prop_map(|n| n as i64),
            edgy_u64().prop_map(|n| (n as i64).wrapping_neg()),
            Just(i64::MIN),
        ]
    }

    fn everything() -> impl Strategy<Value = Everything> {
        (
            any::<bool>(),
            any::<(i8, u8, i16, u16, i32, u32)>(),
            (edgy_i64(), edgy_u64(), any::<i128>(), any::<u128>()),
            (any::<f32>(), any::<f64>(), any::<char>(), ".{0,300}"),
            (
                prop::collection::vec(any::<u8>(), 0..300),
                prop::option::of(edgy_i64()),
            ),
            prop::collection::vec((any::<u32>(), edgy_i64()), 0..20),
            prop::collection::btree_map(".{0,5}", edgy_u64(), 0..5),
            prop::collection::vec((0u8..4, edgy_i64(), ".{0,3}"), 0..6),
        )
            .prop_map(
                |(flag, ints, big, (f, d, letter, text), (bytes, maybe), list, map, shapes)| {
                    let (a, b, c, e, g, h) = ints;
                    Everything {
                        flag,
                        small: (a, b),
                        mid: (c, e, g, h),
                        big,
                        floats: (f, d),
                        letter,
                        text,
                        bytes: serde_bytes_like::Bytes(bytes),
                        maybe,
                        list,
                        map,
                        shapes: shapes
                            .into_iter()
                            .map(|(kind, n, s)| match kind {
                                0 => Shape::Unit,
                                1 => Shape::Newtype(n),
                                2 => Shape::Tuple(n as u8, n as i16),
                                _ => Shape::Struct {
                                    a: n as u32,
                                    b: (n % 2 == 0).then_some(s),
                                },
                            })
                            .collect(),
                        unit: (),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn writes_what_bincode_writes(value in everything()) {
            prop_assert_eq!(ours(&value), bincode_of(&value));
        }
    }

    /// Every kind of value a ledger keeps: its image, members, receipts and packed records.
    #[test]
    fn writes_what_bincode_writes_for_a_whole_ledger() {
        let mut ledger = crate::core::tests::demo_ledger(300, 4000, 50);
        ledger.take_entries();
        let image = ledger.image();
        assert_eq!(ours(&image), bincode_of(&image));
        for merchant in ledger.merchants() {
            assert!(!merchant.members.is_empty());
            let members: Vec<_> = merchant.members.iter().collect();
            assert_eq!(ours(&members), bincode_of(&members));
            let receipts: Vec<_> = merchant.receipts.iter().collect();
            let receipts = crate::core::image::receipts_image(&receipts, &merchant.results);
            assert_eq!(ours(&receipts), bincode_of(&receipts));
        }
    }

    #[test]
    fn a_sequence_without_a_length_is_an_error_not_a_panic() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(None)?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        let mut out = Vec::new();
        let error = Unsized
            .serialize(&mut super::Encoder { out: &mut out })
            .expect_err("no length, no encoding");
        assert!(error.to_string().contains("length"), "{error}");
    }
}
