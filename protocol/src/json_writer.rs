//! Writes any `Serialize` value as compact JSON into a byte buffer, byte for byte what
//! `serde_json::to_writer` writes, only faster on results.
//!
//! Why a writer of our own: a demo purchase's result is about 1.3 KB in some eighty keys and
//! values, and `serde_json` looks at every byte of every key and string through a table, one
//! at a time, then appends the runs between escapes: over half of a bulk import's result
//! writing. Here strings are scanned eight bytes at a time and copied in one piece when they
//! need no escape, which is nearly always; and the writing of a struct's key is inlined, so
//! the key, a constant, is checked and copied as a constant.

use std::fmt::Display;

use serde::ser::{self, Serialize};

/// Appends `value`'s JSON to `out`. Fails only where `serde_json` would: a map key that is
/// not a string, a number, a boolean or a unit variant, or a value's own error.
pub fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    value.serialize(&mut Writer { out })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl ser::Error for Error {
    fn custom<T: Display>(message: T) -> Self {
        Error(message.to_string())
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

/// Whether any byte of `word` is below 0x20, a quote or a backslash. The tests for a byte
/// below `n` and for a zero byte are exact for "any" (a borrow can only mark a byte above one
/// that is truly marked).
#[inline(always)]
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |value: u64, n: u8| value.wrapping_sub(ONES * u64::from(n)) & !value & HIGHS != 0;
    below(word, 0x20)
        || below(word ^ (ONES * u64::from(b'"')), 1)
        || below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// Whether `bytes` can be written between quotes as they are, read eight bytes at a time.
/// A short string or the tail is read as one word too, from reads that may overlap.
#[inline(always)]
fn is_clean(bytes: &[u8]) -> bool {
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let word8 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let word4 = |at: usize| {
        u64::from(u32::from_le_bytes(
            bytes[at..at + 4].try_into().expect("four"),
        ))
    };
    let length = bytes.len();
    if length >= 8 {
        let whole_words_clean = (0..length / 8).all(|index| !needs_escape(word8(index * 8)));
        return whole_words_clean && (length.is_multiple_of(8) || !needs_escape(word8(length - 8)));
    }
    let word = match length {
        0 => return true,
        1..=3 => {
            let first_middle_last = u64::from(bytes[0])
                | u64::from(bytes[length / 2]) << 8
                | u64::from(bytes[length - 1]) << 16;
            first_middle_last | (SPACES & !0xff_ffff)
        }
        _ => word4(0) | word4(length - 4) << 32,
    };
    !needs_escape(word)
}

/// What `serde_json` writes for a byte that must be escaped.
fn escape_of(byte: u8) -> Option<&'static [u8]> {
    match byte {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        0x08 => Some(b"\\b"),
        b'\t' => Some(b"\\t"),
        b'\n' => Some(b"\\n"),
        0x0c => Some(b"\\f"),
        b'\r' => Some(b"\\r"),
        0x00..=0x1f => Some(b"\\u00"),
        _ => None,
    }
}

#[inline(always)]
pub(crate) fn write_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
    } else {
        write_escaped_slowly(out, bytes);
    }
    out.push(b'"');
}

fn write_escaped_slowly(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        match escape_of(byte) {
            None => out.push(byte),
            Some(escape) => {
                out.extend_from_slice(escape);
                if escape == b"\\u00" {
                    out.extend_from_slice(&[
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 0xf)],
                    ]);
                }
            }
        }
    }
}

pub(crate) fn write_integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_float(out: &mut Vec<u8>, value: &impl Serialize) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(|error| Error(error.to_string()))
}

/// The comma before every element of an array or object but its first.
#[inline(always)]
fn separate(out: &mut Vec<u8>, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(b',');
    }
}

/// A key of the object being written, after a comma unless it is the first.
#[inline(always)]
fn write_field_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    separate(out, first);
    write_escaped(out, key);
    out.push(b':');
}

/// The ten integer methods of a `Serializer`, each handing its value to `self.integer`.
macro_rules! integers {
    ($($method:ident: $type:ty),* $(,)?) => {
        $(fn $method(self, value: $type) -> Result<(), Error> {
            self.integer(value)
        })*
    };
}

/// What both serializers write the same way: text escaped between quotes, a unit variant as
/// its name, a newtype struct as what it wraps (so a key is checked for being a string
/// whatever wraps it).
macro_rules! text_and_wrappers {
    () => {
        fn serialize_char(self, value: char) -> Result<(), Error> {
            write_escaped(self.out, value.encode_utf8(&mut [0; 4]));
            Ok(())
        }
        #[inline(always)]
        fn serialize_str(self, value: &str) -> Result<(), Error> {
            write_escaped(self.out, value);
            Ok(())
        }
        #[inline(always)]
        fn serialize_unit_variant(
            self,
            _name: &'static str,
            _index: u32,
            variant: &'static str,
        ) -> Result<(), Error> {
            self.serialize_str(variant)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            value.serialize(self)
        }
    };
}

/// The array-like compound traits: each element after a comma, then the closing bytes.
macro_rules! elements {
    ($($trait:ident::$method:ident),* $(,)?) => {
        $(impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        })*
    };
}

/// The struct-like compound traits: each field as a key and its value.
macro_rules! fields {
    ($($trait:ident),*) => {
        $(impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;
            #[inline(always)]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        })*
    };
}

impl<'b> Writer<'b> {
    fn integer(&mut self, value: impl itoa::Integer) -> Result<(), Error> {
        write_integer(self.out, value);
        Ok(())
    }

    /// A tuple or struct variant: `{"variant":` and the opening byte of its contents, closed
    /// by `close`.
    fn variant<'a>(
        &'a mut self,
        variant: &str,
        open: u8,
        close: &'static [u8],
    ) -> Compound<'a, 'b> {
        self.out.push(b'{');
        write_field_key(self.out, &mut true, variant);
        self.out.push(open);
        Compound::new(self, close)
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Writer<'b> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, 'b>;
    type SerializeTuple = Compound<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn serialize_bool(self, value: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }
    integers! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128,
    }
    fn serialize_f32(self, value: f32) -> Result<(), Error> {
        write_float(self.out, &value)
    }
    fn serialize_f64(self, value: f64) -> Result<(), Error> {
        write_float(self.out, &value)
    }
    fn serialize_bytes(self, value: &[u8]) -> Result<(), Error> {
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(value.len()))?;
        for byte in value {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    text_and_wrappers!();
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        write_field_key(self.out, &mut true, variant);
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a, 'b>, Error> {
        self.out.push(b'[');
        Ok(Compound::new(self, b"]"))
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a, 'b>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'b>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'b>, Error> {
        Ok(self.variant(variant, b'[', b"]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a, 'b>, Error> {
        self.out.push(b'{');
        Ok(Compound::new(self, b"}"))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a, 'b>, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'b>, Error> {
        Ok(self.variant(variant, b'{', b"}}"))
    }
}

/// An array or object being written: whether the next element is the first, and what
/// closes it.
struct Compound<'a, 'b> {
    writer: &'a mut Writer<'b>,
    first: bool,
    close: &'static [u8],
}

impl<'a, 'b> Compound<'a, 'b> {
    fn new(writer: &'a mut Writer<'b>, close: &'static [u8]) -> Self {
        Compound {
            writer,
            first: true,
            close,
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        separate(self.writer.out, &mut self.first);
        value.serialize(&mut *self.writer)
    }

    #[inline(always)]
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        write_field_key(self.writer.out, &mut self.first, key);
        value.serialize(&mut *self.writer)
    }

    fn close(self) -> Result<(), Error> {
        self.writer.out.extend_from_slice(self.close);
        Ok(())
    }
}

elements! {
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    // Inlined so that a flattened struct's keys, which are constants, are checked and copied
    // as constants.
    #[inline(always)]
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Error> {
        self.serialize_key(key)?;
        self.serialize_value(value)
    }
    #[inline(always)]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        separate(self.writer.out, &mut self.first);
        key.serialize(KeyWriter {
            out: &mut *self.writer.out,
        })?;
        self.writer.out.push(b':');
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

fields!(SerializeStruct, SerializeStructVariant);

/// A map's key: JSON keys are strings, so numbers and booleans are written quoted, as
/// `serde_json` does; anything else is refused with its words.
struct KeyWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl KeyWriter<'_> {
    fn integer(self, value: impl itoa::Integer) -> Result<(), Error> {
        self.quoted(itoa::Buffer::new().format(value).as_bytes())
    }

    fn quoted(self, text: &[u8]) -> Result<(), Error> {
        self.out.push(b'"');
        self.out.extend_from_slice(text);
        self.out.push(b'"');
        Ok(())
    }
}

fn key_must_be_a_string() -> Error {
    Error("key must be a string".into())
}

impl ser::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = ser::Impossible<(), Error>;
    type SerializeTuple = ser::Impossible<(), Error>;
    type SerializeTupleStruct = ser::Impossible<(), Error>;
    type SerializeTupleVariant = ser::Impossible<(), Error>;
    type SerializeMap = ser::Impossible<(), Error>;
    type SerializeStruct = ser::Impossible<(), Error>;
    type SerializeStructVariant = ser::Impossible<(), Error>;

    fn serialize_bool(self, value: bool) -> Result<(), Error> {
        self.quoted(if value { b"true" } else { b"false" })
    }
    integers! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128,
    }
    fn serialize_f32(self, _value: f32) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_f64(self, _value: f64) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_bytes(self, _value: &[u8]) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    text_and_wrappers!();
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::write_json;

    fn both<T: Serialize + ?Sized>(value: &T) -> (String, String) {
        let mut ours = Vec::new();
        write_json(&mut ours, value).unwrap();
        let theirs = serde_json::to_string(value).unwrap();
        (String::from_utf8(ours).unwrap(), theirs)
    }

    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        One { a: u8, b: Option<String> },
        Two(Inner),
    }

    #[derive(Serialize)]
    struct Inner {
        #[serde(rename = "odd key\"")]
        odd: i64,
        #[serde(flatten)]
        rest: BTreeMap<String, Vec<f64>>,
    }

    #[derive(Serialize)]
    enum Shapes {
        Unit,
        Newtype(u128),
        Tuple(i8, char),
        Struct { bytes: Vec<u8>, unit: () },
    }

    #[test]
    fn writes_what_serde_json_writes_for_every_shape() {
        let mut rest = BTreeMap::new();
        rest.insert("x\ny".to_string(), vec![1.5, f64::NAN, -0.0]);
        let values: Vec<String> = vec![
            both(&Tagged::One { a: 7, b: None }),
            both(&Tagged::One {
                a: 0,
                b: Some("\u{7f}é\u{1}\u{1f}\\\"\t".into()),
            }),
            both(&Tagged::Two(Inner { odd: -3, rest })),
            both(&vec![
                Shapes::Unit,
                Shapes::Newtype(u128::MAX),
                Shapes::Tuple(-128, '"'),
                Shapes::Struct {
                    bytes: vec![0, 255],
                    unit: (),
                },
            ]),
            both(&BTreeMap::from([(1u32, true), (2, false)])),
            both(&BTreeMap::from([(true, ()), (false, ())])),
            both(&(Vec::<u8>::new(), BTreeMap::<String, u8>::new(), 'x')),
            both(&rust_decimal::Decimal::new(-12345, 3)),
        ]
        .into_iter()
        .map(|(ours, theirs)| {
            assert_eq!(ours, theirs);
            ours
        })
        .collect();
        assert_eq!(values.len(), 8);
    }

    #[test]
    fn refuses_the_keys_serde_json_refuses() {
        let map = BTreeMap::from([(vec![1u8], 1u8)]);
        assert!(write_json(&mut Vec::new(), &map).is_err());
        assert!(serde_json::to_string(&map).is_err());
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(text in any::<String>()) {
            let (ours, theirs) = both(&text);
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn strings_near_the_escapes_too(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(0x1f), Just(0x20), Just(b'"'), Just(b'\\'),
                            Just(b'!'), Just(b'#'), Just(b'['), Just(b']'), Just(0x7f), 0u8..0x80],
                0..40,
            )
        ) {
            let text = String::from_utf8(bytes).unwrap();
            let (ours, theirs) = both(&text);
            prop_assert_eq!(ours, theirs);
        }
    }
}
