//! Phone numbers are aliases, so two spellings of one number must find one member. They are
//! normalised to E.164 (`+` and 8 to 15 digits); a number without a country prefix takes the
//! program's `country_code`, after dropping a national trunk `0`.

use compact_str::CompactString;

pub fn normalize_phone(raw: &str, country_code: &str) -> Result<String, String> {
    normalized_phone(raw, country_code).map(String::from)
}

/// `normalize_phone` without an allocation for a phone number: every valid one (a `+` and
/// at most 15 digits) fits inline in a `CompactString`. An order names its member by phone,
/// and the three strings this took were a tenth of finding the member.
pub fn normalized_phone(raw: &str, country_code: &str) -> Result<CompactString, String> {
    let trimmed = raw.trim();
    let mut digits = CompactString::const_new("");
    for c in trimmed.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            '+' if digits.is_empty() && trimmed.starts_with('+') => {}
            _ => return Err(format!("{raw:?} is not a phone number")),
        }
    }
    let mut phone = CompactString::const_new("+");
    if trimmed.starts_with('+') {
        phone.push_str(&digits);
    } else if let Some(rest) = digits.strip_prefix("00") {
        phone.push_str(rest);
    } else {
        phone.push_str(country_code);
        phone.push_str(digits.strip_prefix('0').unwrap_or(&digits));
    }
    let international = &phone[1..];
    if !(8..=15).contains(&international.len()) || international.starts_with('0') {
        return Err(format!("{raw:?} is not a valid phone number"));
    }
    Ok(phone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_number_agree() {
        for spelling in [
            "+1 (555) 010-2030",
            "555-010-2030",
            "001 555 010 2030",
            "+15550102030",
            "(555) 010.2030",
        ] {
            assert_eq!(
                normalize_phone(spelling, "1").unwrap(),
                "+15550102030",
                "{spelling}"
            );
        }
        assert_eq!(
            normalize_phone("020 7946 0018", "44").unwrap(),
            "+442079460018"
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0018", "1").unwrap(),
            "+442079460018"
        );
        assert!(!normalized_phone("+15550102030", "1")
            .unwrap()
            .is_heap_allocated());
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert!(normalize_phone("call me", "1").is_err());
        assert!(normalize_phone("123", "1").is_err());
        assert!(normalize_phone("+1234567890123456", "1").is_err());
        assert!(normalize_phone("+0 555 010 2030", "1").is_err());
        assert!(normalize_phone("+1 555 010 2030 x", "1").is_err());
    }
}
