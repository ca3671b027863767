//! Money inside the core is an exact integer count of the currency's minor unit (cents for
//! USD); rates and multipliers are integers in ten-thousandths. Decimals exist only at the
//! edges, and converting one that has more places than allowed is an error, never a rounding.

use rust_decimal::Decimal;

/// Rates, percents and multipliers are stored × 10,000 (four decimal places).
pub const RATE_SCALE: i64 = 10_000;
/// Point values are stored in millionths of a currency unit.
pub const POINT_VALUE_SCALE: i64 = 1_000_000;
/// No amount of money may reach this many minor units (10 trillion dollars in cents):
/// products of amounts and rates then stay far inside `i128`.
pub const MONEY_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Converts a decimal amount to minor units. Refuses more decimal places than the currency has.
pub fn to_minor(amount: Decimal, minor_units: u32) -> Result<i64, String> {
    scaled(amount, minor_units, MONEY_MINOR_MAX).ok_or_else(|| {
        format!("{amount} has more than {minor_units} decimal places or is too large")
    })
}

pub fn from_minor(amount_minor: i64, minor_units: u32) -> Decimal {
    Decimal::new(amount_minor, minor_units)
}

/// Converts a rate (points per unit, percent, multiplier) to ten-thousandths.
pub fn to_rate(rate: Decimal) -> Result<i64, String> {
    scaled(rate, 4, 1_000_000_000_000)
        .ok_or_else(|| format!("{rate} has more than 4 decimal places or is too large"))
}

pub fn to_point_value(value: Decimal) -> Result<i64, String> {
    scaled(value, 6, 1_000_000_000_000)
        .ok_or_else(|| format!("{value} has more than 6 decimal places or is too large"))
}

fn scaled(value: Decimal, places: u32, limit: i64) -> Option<i64> {
    // Fast path: few enough places already (the usual "4.50"): scale the mantissa up.
    let normal = if value.scale() <= places {
        value
    } else {
        value.normalize()
    };
    let factor = *POWERS_OF_TEN.get(places.checked_sub(normal.scale())? as usize)?;
    let result = i64::try_from(normal.mantissa()).ok()?.checked_mul(factor)?;
    (result.unsigned_abs() < limit.unsigned_abs()).then_some(result)
}

/// 10^0 to 10^18: every power of ten an `i64` holds.
const POWERS_OF_TEN: [i64; 19] = {
    let mut powers = [1i64; 19];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// `numerator / denominator` rounded toward negative infinity, for non-negative denominators.
pub fn floor_div(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    match (i64::try_from(numerator), i64::try_from(denominator)) {
        (Ok(n), Ok(d)) => n.div_euclid(d).into(),
        _ => numerator.div_euclid(denominator),
    }
}

/// `numerator / denominator` rounded toward zero, for positive denominators; natively when
/// both fit in 64 bits (the usual case: 128-bit division is a slow library call).
pub fn div_toward_zero(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    match (i64::try_from(numerator), i64::try_from(denominator)) {
        (Ok(n), Ok(d)) => (n / d).into(),
        _ => numerator / denominator,
    }
}

/// The money value of `points` at `point_value_micro`, rounded down to a minor unit.
pub fn points_value_minor(points: i64, point_value_micro: i64, minor_units: u32) -> i64 {
    let per_minor = POINT_VALUE_SCALE as i128 / 10_i128.pow(minor_units);
    floor_div(points as i128 * point_value_micro as i128, per_minor) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn refuses_extra_places() {
        assert_eq!(to_minor(dec("4.50"), 2), Ok(450));
        assert_eq!(to_minor(dec("4.500"), 2), Ok(450));
        assert!(to_minor(dec("4.505"), 2).is_err());
        assert_eq!(to_minor(dec("7"), 0), Ok(7));
        assert!(to_minor(dec("1e20"), 2).is_err());
        assert!(to_minor(dec("-9223372036854775808"), 0).is_err());
        assert_eq!(to_minor(dec("-12.5"), 2), Ok(-1250));
    }

    #[test]
    fn divides_like_128_bit_division() {
        for (n, d) in [
            (7, 2),
            (-7, 2),
            (0, 5),
            (i128::from(i64::MIN), 1),
            (i128::MAX, 3),
        ] {
            assert_eq!(floor_div(n, d), n.div_euclid(d));
            assert_eq!(div_toward_zero(n, d), n / d);
        }
    }

    #[test]
    fn values_points_rounding_down() {
        assert_eq!(points_value_minor(150, 10_000, 2), 150); // 0.01 per point
        assert_eq!(points_value_minor(3, 5_000, 2), 1); // 0.015 -> 0.01
        assert_eq!(from_minor(1234, 2), dec("12.34"));
    }
}
