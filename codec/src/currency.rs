//! ISO 4217 currencies the switch knows, with their minor-unit exponents, and exact
//! conversion of decimal amounts (as QR codes and ISO 8583 carry them) to minor units.
//! Never floating point.

/// (numeric code, alphabetic code, minor-unit exponent) for the currencies of the
/// cross-border gateway's markets, the major settlement currencies and the national QR
/// networks tested against (BRL for Pix).
pub const CURRENCIES: &[(u16, &str, u8)] = &[
    (36, "AUD", 2),
    (124, "CAD", 2),
    (156, "CNY", 2),
    (344, "HKD", 2),
    (360, "IDR", 2),
    (392, "JPY", 0),
    (410, "KRW", 0),
    (446, "MOP", 2),
    (458, "MYR", 2),
    (608, "PHP", 2),
    (702, "SGD", 2),
    (704, "VND", 0),
    (764, "THB", 2),
    (826, "GBP", 2),
    (840, "USD", 2),
    (901, "TWD", 2),
    (978, "EUR", 2),
    (96, "BND", 2),
    (104, "MMK", 2),
    (116, "KHR", 2),
    (356, "INR", 2),
    (418, "LAK", 2),
    (496, "MNT", 2),
    (524, "NPR", 2),
    (554, "NZD", 2),
    (586, "PKR", 2),
    (682, "SAR", 2),
    (756, "CHF", 2),
    (784, "AED", 2),
    (986, "BRL", 2),
    (48, "BHD", 3),
    (414, "KWD", 3),
];

/// The minor-unit exponent of an ISO 4217 numeric currency, if known.
pub fn exponent(currency: u16) -> Option<u8> {
    CURRENCIES.iter().find(|(code, _, _)| *code == currency).map(|&(_, _, exponent)| exponent)
}

/// The alphabetic code of a numeric currency, if known.
pub fn alphabetic(currency: u16) -> Option<&'static str> {
    CURRENCIES.iter().find(|(code, _, _)| *code == currency).map(|&(_, alpha, _)| alpha)
}

/// The numeric code of an alphabetic currency code (`"CNY"` is 156), if known.
pub fn numeric(alphabetic: &str) -> Option<u16> {
    CURRENCIES.iter().find(|(_, alpha, _)| *alpha == alphabetic).map(|&(code, _, _)| code)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("currency {currency} is not in the currency table")]
    UnknownCurrency { currency: u16 },
    #[error("the amount is not digits with an optional decimal point")]
    Malformed,
    #[error("the amount has more decimals than currency {currency} has minor units ({exponent})")]
    TooPrecise { currency: u16, exponent: u8 },
    #[error("the amount exceeds the largest amount a message may carry")]
    TooLarge,
}

/// Converts a decimal amount (`"38.00"`, `"38.5"`, `"38"`) to minor units of `currency`,
/// exactly. Extra decimals are accepted only when they are zeros (`"38.500"` in CNY).
pub fn minor_units(amount: &str, currency: u16) -> Result<u64, AmountError> {
    let exponent = exponent(currency).ok_or(AmountError::UnknownCurrency { currency })?;
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || (amount.contains('.') && fraction.is_empty()) {
        return Err(AmountError::Malformed);
    }
    let (kept, dropped) = fraction.split_at(fraction.len().min(usize::from(exponent)));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(AmountError::TooPrecise { currency, exponent });
    }
    let mut minor: u64 = 0;
    let padding = usize::from(exponent) - kept.len();
    for byte in whole.bytes().chain(kept.bytes()).chain(std::iter::repeat_n(b'0', padding)) {
        minor =
            minor.checked_mul(10).and_then(|m| m.checked_add(u64::from(byte - b'0'))).ok_or(AmountError::TooLarge)?;
    }
    if minor > crate::message::AMOUNT_MINOR_MAX {
        return Err(AmountError::TooLarge);
    }
    Ok(minor)
}

/// Writes minor units as a decimal amount of `currency` (`3800` CNY is `"38.00"`).
pub fn decimal(minor: u64, currency: u16) -> Result<String, AmountError> {
    let exponent = u32::from(exponent(currency).ok_or(AmountError::UnknownCurrency { currency })?);
    if exponent == 0 {
        return Ok(minor.to_string());
    }
    let scale = 10u64.pow(exponent);
    Ok(format!("{}.{:0width$}", minor / scale, minor % scale, width = exponent as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates() {
        let mut codes: Vec<u16> = CURRENCIES.iter().map(|c| c.0).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CURRENCIES.len());
    }

    #[test]
    fn conversions_are_exact() {
        let cases: &[(&str, u16, Result<u64, AmountError>)] = &[
            ("38.00", 156, Ok(3800)),
            ("38.5", 156, Ok(3850)),
            ("38", 156, Ok(3800)),
            ("0.01", 156, Ok(1)),
            ("38.500", 156, Ok(3850)),
            ("38.505", 156, Err(AmountError::TooPrecise { currency: 156, exponent: 2 })),
            ("1000", 410, Ok(1000)),
            ("1000.5", 410, Err(AmountError::TooPrecise { currency: 410, exponent: 0 })),
            ("1.234", 48, Ok(1234)),
            ("38.", 156, Err(AmountError::Malformed)),
            (".5", 156, Err(AmountError::Malformed)),
            ("3a", 156, Err(AmountError::Malformed)),
            ("1", 999, Err(AmountError::UnknownCurrency { currency: 999 })),
            ("99999999999999999999", 156, Err(AmountError::TooLarge)),
        ];
        for (amount, currency, expected) in cases {
            assert_eq!(minor_units(amount, *currency), *expected, "{amount} in {currency}");
        }
        assert_eq!(decimal(3800, 156).as_deref(), Ok("38.00"));
        assert_eq!(decimal(1, 156).as_deref(), Ok("0.01"));
        assert_eq!(decimal(1000, 410).as_deref(), Ok("1000"));
    }

    proptest::proptest! {
        #[test]
        fn decimal_round_trips(minor in 0u64..=crate::message::AMOUNT_MINOR_MAX, index in 0usize..CURRENCIES.len()) {
            let currency = CURRENCIES[index].0;
            let text = decimal(minor, currency).expect("known currency");
            proptest::prop_assert_eq!(minor_units(&text, currency), Ok(minor));
        }
    }
}
