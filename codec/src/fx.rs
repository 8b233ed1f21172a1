//! Foreign-exchange arithmetic: exact decimal rates and the conversion of an amount from
//! the merchant's currency into the payer's, rounded once to the payer currency's minor
//! unit. Never floating point.
//!
//! The rule (`PROTOCOL.md`, "Conversion"; ARCHITECTURE.md):
//! - A rate is units of the payer's currency per one unit of the merchant's currency, with
//!   at most [`RATE_DECIMALS`] decimals, carried as an integer scaled by 10^10.
//! - The payer amount is `merchant amount × rate × (1 + margin)`, the margin in basis
//!   points, computed exactly in integers and rounded **half up** once, at the end, to the
//!   payer currency's minor unit. So the payer never pays more than half a minor unit
//!   beyond the margin, nor less than half a minor unit below it.
//! - A refund of part of a converted payment gives the payer the same share of what it
//!   paid ([`refund_share`]): never more in total than the payment's payer amount, and
//!   exactly it when the whole payment is refunded.

use crate::currency;
use crate::message::AMOUNT_MINOR_MAX;

/// Decimals a rate may have; rates are carried as integers scaled by 10^RATE_DECIMALS.
pub const RATE_DECIMALS: u32 = 10;
/// The scale of a carried rate.
pub const RATE_SCALE: u64 = 10_u64.pow(RATE_DECIMALS);
/// The largest rate: a million units of the payer's currency per unit of the merchant's
/// (scaled, 10^16). Real pairs stay far below (about 52,000 IDR per KWD).
pub const RATE_SCALED_MAX: u64 = 1_000_000 * RATE_SCALE;
/// The largest FX margin: 10% (1,000 basis points).
pub const MARGIN_BASIS_POINTS_MAX: u16 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FxError {
    #[error("the rate is not a positive decimal with at most {RATE_DECIMALS} decimals up to 1000000")]
    BadRate,
    #[error("currency {0} is not in the currency table")]
    UnknownCurrency(u16),
    #[error("the margin exceeds {MARGIN_BASIS_POINTS_MAX} basis points")]
    BadMargin,
    #[error("the converted amount rounds to zero minor units")]
    TooSmall,
    #[error("the converted amount exceeds the largest amount a message may carry")]
    TooLarge,
}

/// Parses a decimal rate (`"4.9123"`, `"190"`) into its scaled integer. Zero, signs,
/// exponents, more than [`RATE_DECIMALS`] decimals and rates above a million are refused.
pub fn parse_rate(text: &str) -> Result<u64, FxError> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 7
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > RATE_DECIMALS as usize
        || (text.contains('.') && fraction.is_empty())
    {
        return Err(FxError::BadRate);
    }
    let whole: u64 = whole.parse().map_err(|_| FxError::BadRate)?;
    let mut scaled_fraction = 0u64;
    for (index, digit) in fraction.bytes().enumerate() {
        scaled_fraction += u64::from(digit - b'0') * 10_u64.pow(RATE_DECIMALS - 1 - index as u32);
    }
    let scaled = whole.checked_mul(RATE_SCALE).and_then(|w| w.checked_add(scaled_fraction)).ok_or(FxError::BadRate)?;
    if scaled == 0 || scaled > RATE_SCALED_MAX {
        return Err(FxError::BadRate);
    }
    Ok(scaled)
}

/// A scaled rate as a decimal, without trailing zeros (`49123000000` is `"4.9123"`).
pub fn format_rate(scaled: u64) -> String {
    let (whole, fraction) = (scaled / RATE_SCALE, scaled % RATE_SCALE);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:010}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// `amount_minor` of currency `from` in currency `to` at `rate` (scaled) plus
/// `margin_basis_points`, rounded half up to `to`'s minor unit.
pub fn convert(amount_minor: u64, from: u16, to: u16, rate: u64, margin_basis_points: u16) -> Result<u64, FxError> {
    if rate == 0 || rate > RATE_SCALED_MAX {
        return Err(FxError::BadRate);
    }
    if margin_basis_points > MARGIN_BASIS_POINTS_MAX {
        return Err(FxError::BadMargin);
    }
    let from_exponent = currency::exponent(from).ok_or(FxError::UnknownCurrency(from))?;
    let to_exponent = currency::exponent(to).ok_or(FxError::UnknownCurrency(to))?;
    // amount ≤ 10^15, rate ≤ 10^16, (10^4 + margin) ≤ 1.1·10^4, 10^exponent ≤ 10^3: the
    // numerator stays below 1.1·10^38, inside u128 (3.4·10^38).
    let numerator = u128::from(amount_minor)
        .checked_mul(u128::from(rate))
        .and_then(|n| n.checked_mul(10_000 + u128::from(margin_basis_points)))
        .and_then(|n| n.checked_mul(10_u128.pow(u32::from(to_exponent))))
        .ok_or(FxError::TooLarge)?;
    let denominator = u128::from(RATE_SCALE) * 10_000 * 10_u128.pow(u32::from(from_exponent));
    let converted = (numerator + denominator / 2) / denominator;
    match converted {
        0 => Err(FxError::TooSmall),
        c if c > u128::from(AMOUNT_MINOR_MAX) => Err(FxError::TooLarge),
        c => Ok(c as u64),
    }
}

/// What the payer gets back, in its own currency, for a refund of `refund_minor` of a
/// payment of `payment_minor` (merchant currency) for which it paid `payer_minor`, when
/// `payer_refunded_minor` of that has already been given back (or is being).
///
/// The same share of what it paid, rounded half up; never more than what remains of
/// `payer_minor`; and all of what remains when `refund_minor` is all that remains of the
/// payment (`remaining_minor`), so a payment refunded in full gives back exactly
/// `payer_minor`. May be zero for a refund worth less than half a payer minor unit.
pub fn refund_share(
    payment_minor: u64,
    payer_minor: u64,
    refund_minor: u64,
    remaining_minor: u64,
    payer_refunded_minor: u64,
) -> u64 {
    let left = payer_minor.saturating_sub(payer_refunded_minor);
    if refund_minor >= remaining_minor || payment_minor == 0 {
        return left;
    }
    let share = (u128::from(payer_minor) * u128::from(refund_minor) + u128::from(payment_minor) / 2)
        / u128::from(payment_minor);
    (share as u64).min(left)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CNY: u16 = 156;
    const THB: u16 = 764;
    const KRW: u16 = 410;
    const KWD: u16 = 414;

    #[test]
    fn rates_parse_exactly_and_print_back() {
        assert_eq!(parse_rate("4.9123"), Ok(49_123_000_000));
        assert_eq!(parse_rate("190"), Ok(1_900_000_000_000));
        assert_eq!(parse_rate("0.0000000001"), Ok(1));
        assert_eq!(parse_rate("1000000"), Ok(RATE_SCALED_MAX));
        for bad in ["", "0", "0.0", "-1", "1e3", "1.", ".5", "4.91230000001", "1000000.1", "10000000", " 4.9"] {
            assert_eq!(parse_rate(bad), Err(FxError::BadRate), "{bad:?}");
        }
        assert_eq!(format_rate(49_123_000_000), "4.9123");
        assert_eq!(format_rate(1_900_000_000_000), "190");
        assert_eq!(format_rate(1), "0.0000000001");
    }

    #[test]
    fn conversions_round_half_up_once_at_the_payer_minor_unit() {
        let rate = parse_rate("4.9123").unwrap();
        // 100.00 CNY at 4.9123 is 491.23 THB exactly.
        assert_eq!(convert(10_000, CNY, THB, rate, 0), Ok(49_123));
        // With a 50 bp margin: 491.23 × 1.005 = 493.68615 THB, rounded to 493.69.
        assert_eq!(convert(10_000, CNY, THB, rate, 50), Ok(49_369));
        // Exponents differ: 38.00 CNY at 190 KRW per CNY is 7,220 KRW (no minor unit).
        assert_eq!(convert(3_800, CNY, KRW, parse_rate("190").unwrap(), 0), Ok(7_220));
        // Half a minor unit rounds up: 0.05 CNY at 0.1 = 0.005 THB, shown as 0.01.
        assert_eq!(convert(5, CNY, THB, parse_rate("0.1").unwrap(), 0), Ok(1));
        assert_eq!(convert(4, CNY, THB, parse_rate("0.1").unwrap(), 0), Err(FxError::TooSmall));
        // Three-decimal currencies: 1.00 CNY at 0.0432 KWD is 0.043 KWD (43.2 fils).
        assert_eq!(convert(100, CNY, KWD, parse_rate("0.0432").unwrap(), 0), Ok(43));
        assert_eq!(convert(1, CNY, 999, rate, 0), Err(FxError::UnknownCurrency(999)));
        assert_eq!(convert(1, CNY, THB, rate, 1_001), Err(FxError::BadMargin));
        assert_eq!(convert(AMOUNT_MINOR_MAX, CNY, THB, rate, 0), Err(FxError::TooLarge));
        // The extremes do not overflow.
        assert_eq!(convert(AMOUNT_MINOR_MAX, KRW, KWD, RATE_SCALED_MAX, 1_000), Err(FxError::TooLarge));
        assert_eq!(convert(1, KWD, KRW, 1, 0), Err(FxError::TooSmall));
    }

    #[test]
    fn refunds_give_back_shares_and_never_more_than_was_paid() {
        // Paid 493.69 THB for 100.00 CNY; refunded 30.00, then 30.00, then the last 40.00.
        let first = refund_share(10_000, 49_369, 3_000, 10_000, 0);
        assert_eq!(first, 14_811);
        let second = refund_share(10_000, 49_369, 3_000, 7_000, first);
        let last = refund_share(10_000, 49_369, 4_000, 4_000, first + second);
        assert_eq!(first + second + last, 49_369);
        // A payment of 3 minor units paid as 2: the rounding never overpays.
        let a = refund_share(3, 2, 1, 3, 0);
        let b = refund_share(3, 2, 1, 2, a);
        let c = refund_share(3, 2, 1, 1, a + b);
        assert_eq!((a, b, c), (1, 1, 0));
    }

    fn exponent_of(currency: u16) -> u32 {
        u32::from(currency::exponent(currency).unwrap())
    }

    proptest! {
        /// The payer amount is within half a payer minor unit of the exact product (margin
        /// included): rounding creates or destroys less than one minor unit of value.
        #[test]
        fn conversion_is_exact_but_for_one_rounding(
            amount in 1u64..=1_000_000_000_000,
            rate in 1u64..=RATE_SCALED_MAX,
            margin in 0u16..=MARGIN_BASIS_POINTS_MAX,
            pair in prop::sample::select(vec![(CNY, THB), (THB, CNY), (CNY, KRW), (KRW, KWD), (KWD, KRW)]),
        ) {
            let (from, to) = pair;
            let exact_numerator = u128::from(amount) * u128::from(rate) * (10_000 + u128::from(margin))
                * 10_u128.pow(exponent_of(to));
            let denominator = u128::from(RATE_SCALE) * 10_000 * 10_u128.pow(exponent_of(from));
            match convert(amount, from, to, rate, margin) {
                Ok(payer) => {
                    // |payer - exact| ≤ 1/2, in whole numbers: |2·payer·den - 2·num| ≤ den.
                    let twice = 2 * u128::from(payer) * denominator;
                    let gap = twice.abs_diff(2 * exact_numerator);
                    prop_assert!(gap <= denominator, "{payer} vs {exact_numerator}/{denominator}");
                    prop_assert!((1..=AMOUNT_MINOR_MAX).contains(&payer));
                }
                Err(FxError::TooSmall) => prop_assert!(2 * exact_numerator < denominator),
                Err(FxError::TooLarge) => {
                    prop_assert!(2 * exact_numerator >= (2 * u128::from(AMOUNT_MINOR_MAX) + 1) * denominator)
                }
                Err(other) => prop_assert!(false, "{other}"),
            }
        }

        /// Refunds in any pieces give back exactly what was paid when they add up to the
        /// payment, and never more on the way.
        #[test]
        fn refunds_in_pieces_add_up_to_what_was_paid(
            payment in 1u64..=10_000_000,
            payer in 1u64..=100_000_000,
            cuts in prop::collection::vec(1u64..=10_000_000, 0..8),
        ) {
            let mut pieces: Vec<u64> = Vec::new();
            let mut left = payment;
            for cut in cuts {
                let piece = cut.min(left);
                if piece == 0 || piece == left { break; }
                pieces.push(piece);
                left -= piece;
            }
            pieces.push(left);
            let (mut remaining, mut given) = (payment, 0u64);
            for piece in pieces {
                given += refund_share(payment, payer, piece, remaining, given);
                remaining -= piece;
                prop_assert!(given <= payer);
            }
            prop_assert_eq!(given, payer);
        }
    }
}
