//! Money in results, written as the text rust_decimal's serde writes (`"8.95"`, `"-0.50"`,
//! `"0"`), but from the 64-bit mantissa every real amount has: rust_decimal divides its 96-bit
//! mantissa by ten for each digit, which was a third of writing a result.

use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

/// The longest text: a sign, `0.` and 28 decimal places.
const TEXT_MAX: usize = 31;

/// `serialize_with` for a `Decimal` field: the same string `Decimal`'s `Serialize` gives.
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = [0u8; TEXT_MAX];
    match written(value, &mut text) {
        Some(start) => {
            serializer.serialize_str(std::str::from_utf8(&text[start..]).expect("ASCII digits"))
        }
        None => Serialize::serialize(value, serializer),
    }
}

/// Appends `value`'s JSON (the string `serialize` gives, quoted) to `out`.
pub(crate) fn write_quoted(out: &mut Vec<u8>, value: &Decimal) {
    let mut text = [0u8; TEXT_MAX];
    match written(value, &mut text) {
        Some(start) => {
            out.push(b'"');
            out.extend_from_slice(&text[start..]);
            out.push(b'"');
        }
        None => crate::json_writer::write_json(out, value).expect("a decimal always serialises"),
    }
}

/// Writes `value` at the end of `text`, last digit first, returning where it starts; `None`
/// when its mantissa does not fit in 64 bits. Like rust_decimal: every place of the scale, a
/// `0` before a leading point, and the sign of a negative zero.
fn written(value: &Decimal, text: &mut [u8; TEXT_MAX]) -> Option<usize> {
    let mut mantissa = u64::try_from(value.mantissa().unsigned_abs()).ok()?;
    let mut start = TEXT_MAX;
    let mut put = |byte: u8| {
        start -= 1;
        text[start] = byte;
    };
    let scale = value.scale();
    for place in 0.. {
        if place == scale && scale > 0 {
            put(b'.');
        }
        put(b'0' + (mantissa % 10) as u8);
        mantissa /= 10;
        // Every place of the scale, then the whole part's digits, at least one.
        if place >= scale && mantissa == 0 {
            break;
        }
    }
    if value.is_sign_negative() {
        put(b'-');
    }
    Some(start)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] Decimal);

    fn agrees(value: Decimal) {
        let ours = serde_json::to_string(&Ours(value)).unwrap();
        let theirs = serde_json::to_string(&value).unwrap();
        assert_eq!(ours, theirs, "{value:?}");
    }

    #[test]
    fn writes_what_rust_decimal_writes() {
        for text in [
            "0",
            "0.00",
            "-0",
            "-0.00",
            "8.95",
            "-8.95",
            "100",
            "0.001",
            "-0.5",
            "12345.6789",
            "18446744073709551615",
            "18446744073709551616",
            "0.0000000000000000000000000001",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
        ] {
            agrees(text.parse().unwrap());
        }
        agrees(Decimal::new(0, 28));
        agrees(-Decimal::new(0, 3));
    }

    proptest! {
        #[test]
        fn agrees_with_rust_decimal(
            lo in any::<u32>(), mid in any::<u32>(), hi in prop_oneof![Just(0u32), any::<u32>()],
            negative in any::<bool>(), scale in 0u32..=28,
        ) {
            agrees(Decimal::from_parts(lo, mid, hi, negative, scale));
        }
    }
}
