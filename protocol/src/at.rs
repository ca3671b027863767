//! A command's `at`, read from JSON. Nearly every timestamp a terminal sends has the form
//! `2026-03-01T10:00:00Z`, with or without a fraction of a second: that form is read
//! directly, anything else by chrono's RFC 3339 parser, with chrono's own error. chrono's
//! general parser cost a tenth of reading a whole order.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, Utc};
use serde::de::{Deserializer, Error, Visitor};
use serde::Deserialize;

use crate::Timestamp;

/// An optional `at` (`null` is `None`), read as chrono's serde reads it.
pub struct OptionalAt(pub Option<Timestamp>);

impl<'de> serde::Deserialize<'de> for OptionalAt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OptionalAt, D::Error> {
        optional_at(deserializer).map(OptionalAt)
    }
}

/// `deserialize_with` for an optional `at`.
pub fn optional_at<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Timestamp>, D::Error> {
    let at = Option::<ReadAt>::deserialize(deserializer)?;
    Ok(at.map(|ReadAt(at)| at))
}

/// One `at`, through `At`.
struct ReadAt(Timestamp);

impl<'de> serde::Deserialize<'de> for ReadAt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReadAt, D::Error> {
        deserializer.deserialize_str(At).map(ReadAt)
    }
}

struct At;

impl Visitor<'_> for At {
    type Value = Timestamp;

    /// chrono's words, so a wrong type reads as it did.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Timestamp, E> {
        match utc_seconds(text.as_bytes()) {
            Some(at) => Ok(at),
            None => text
                .parse::<DateTime<FixedOffset>>()
                .map(|at| at.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.fffZ` (1 to 9 digits of fraction), read
/// directly; `None` for any other text, valid or not, which chrono then reads.
fn utc_seconds(text: &[u8]) -> Option<Timestamp> {
    let [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1, rest @ ..] =
        text
    else {
        return None;
    };
    let year = number(&[*y0, *y1, *y2, *y3])?;
    let month = number(&[*mo0, *mo1])?;
    let day = number(&[*d0, *d1])?;
    let hour = number(&[*h0, *h1])?;
    let minute = number(&[*mi0, *mi1])?;
    let second = number(&[*s0, *s1])?;
    let nanos = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            number(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    // A leap second (`:60`) is left to chrono.
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

/// The decimal number the ASCII digits spell; `None` if any is not a digit.
fn number(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |sum, &digit| {
        digit
            .is_ascii_digit()
            .then(|| sum * 10 + u32::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chrono_reads(text: &str) -> Option<Timestamp> {
        text.parse::<DateTime<FixedOffset>>()
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    #[test]
    fn reads_the_common_forms_and_leaves_the_rest_to_chrono() {
        for text in [
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:00:00.5Z",
            "2026-03-01T10:00:00.123456789Z",
            "2024-02-29T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(utc_seconds(text.as_bytes()), chrono_reads(text), "{text}");
            assert!(utc_seconds(text.as_bytes()).is_some(), "{text}");
        }
        for text in [
            "2026-03-01T10:00:00+01:00",
            "2026-03-01 10:00:00Z",
            "2026-03-01t10:00:00z",
            "2016-12-31T23:59:60Z",
            "2026-03-01T10:00:00.1234567891Z",
            "2025-02-29T10:00:00Z",
            "2026-03-01T24:00:00Z",
            "2026-3-01T10:00:00Z",
            "2026-03-01T10:00:00.Z",
            "2026-03-01T10:00:00",
            "+026-03-01T10:00:00Z",
        ] {
            assert_eq!(utc_seconds(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn errors_and_nulls_read_as_chrono_reads_them() {
        #[derive(serde::Deserialize, Debug)]
        struct Row {
            #[serde(default, deserialize_with = "optional_at")]
            at: Option<Timestamp>,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Chrono {
            #[allow(dead_code)]
            at: Option<Timestamp>,
        }
        for line in [
            r#"{"at":"2026-13-01T10:00:00Z"}"#,
            r#"{"at":"yesterday"}"#,
            r#"{"at":5}"#,
        ] {
            let ours = serde_json::from_str::<Row>(line).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Chrono>(line)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{line}");
        }
        let row: Row = serde_json::from_str(r#"{"at":null}"#).unwrap();
        assert_eq!(row.at, None);
        let row: Row = serde_json::from_str(r#"{"at":"2016-12-31T23:59:60Z"}"#).unwrap();
        assert_eq!(row.at, chrono_reads("2016-12-31T23:59:60Z"));
    }

    proptest! {
        #[test]
        fn agrees_with_chrono(
            year in 0u32..10_000, month in 0u32..14, day in 0u32..33,
            hour in 0u32..26, minute in 0u32..61, second in 0u32..62,
            fraction in proptest::option::of("[0-9]{1,10}"),
        ) {
            let fraction = fraction.map_or(String::new(), |digits| format!(".{digits}"));
            let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z");
            if let Some(at) = utc_seconds(text.as_bytes()) {
                prop_assert_eq!(Some(at), chrono_reads(&text), "{}", text);
            }
        }
    }
}
