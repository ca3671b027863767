//! Phone numbers are aliases, so two spellings of one number must find one member. They are
//! normalised to E.164 (`+` and 8 to 15 digits); a number without a country prefix takes the
//! program's `country_code`, after dropping a national trunk `0`.

pub fn normalize_phone(raw: &str, country_code: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let mut digits = String::with_capacity(16);
    for c in trimmed.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            '+' if digits.is_empty() && trimmed.starts_with('+') => {}
            _ => return Err(format!("{raw:?} is not a phone number")),
        }
    }
    let international = if trimmed.starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else {
        let national = digits.strip_prefix('0').unwrap_or(&digits);
        format!("{country_code}{national}")
    };
    if !(8..=15).contains(&international.len()) || international.starts_with('0') {
        return Err(format!("{raw:?} is not a valid phone number"));
    }
    Ok(format!("+{international}"))
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
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert!(normalize_phone("call me", "1").is_err());
        assert!(normalize_phone("123", "1").is_err());
        assert!(normalize_phone("+1234567890123456", "1").is_err());
    }
}
