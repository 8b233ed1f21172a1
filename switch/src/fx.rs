//! The FX rate table: mid rates per currency pair, each valid for a period, under one
//! table version. Loaded from a TOML file at start and replaced whole, without a restart,
//! through the admin API (`POST /fx/rates/reload`); every shard then gets the new table in
//! its inbox, in order with its other events.
//!
//! ```toml
//! version = 7                  # at least 1; a replacement must carry a higher one
//!
//! [[rate]]
//! merchant = "CNY"             # the transaction's currency
//! payer = "THB"                # the payer's settlement currency
//! rate = "4.9123"              # THB per 1 CNY, at most 10 decimals
//! valid_from = "2026-11-23T00:00:00+08:00"
//! valid_until = "2026-11-24T00:00:00+08:00"   # exclusive
//! ```
//!
//! Invariants (checked by [`RateTable::parse`], each error naming the rate and the key):
//! for one pair the periods do not overlap, so at any instant a pair has at most one rate;
//! every currency is in the codec's table; rates are exact decimals (`codec::fx`).
//! A lookup outside every period finds nothing, and the payment is declined
//! `NoExchangeRate`: an expired rate is never stretched.

use std::collections::HashMap;

use serde::Deserialize;

/// One rate of the table, as a transaction records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Scaled by 10^10 (`codec::fx::RATE_SCALE`).
    pub rate: u64,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Period {
    from_ms: i64,
    until_ms: i64,
    rate: u64,
}

/// The rates in force: (merchant currency, payer currency) to their periods, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateTable {
    version: u32,
    pairs: HashMap<(u16, u16), Vec<Period>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTable {
    version: u32,
    #[serde(default, rename = "rate")]
    rates: Vec<FileRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRate {
    merchant: String,
    payer: String,
    rate: String,
    valid_from: String,
    valid_until: String,
}

/// One rate as `GET /fx/rates` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShownRate {
    pub merchant: &'static str,
    pub payer: &'static str,
    pub rate: String,
    pub valid_from: String,
    pub valid_until: String,
}

impl RateTable {
    /// Parses and checks a rate table; errors name the rate (`rate[N]`) and the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: FileTable = toml::from_str(text).map_err(|error| error.to_string().trim_end().to_string())?;
        if file.version == 0 {
            return Err("version: must be at least 1".into());
        }
        let mut pairs: HashMap<(u16, u16), Vec<Period>> = HashMap::new();
        for (index, rate) in file.rates.iter().enumerate() {
            let key = |field: &str| format!("rate[{index}] ({} to {}).{field}", rate.merchant, rate.payer);
            let currency = |field: &str, code: &str| {
                codec::currency::numeric(code)
                    .ok_or_else(|| format!("{}: {code:?} is not a known ISO 4217 code", key(field)))
            };
            let (merchant, payer) = (currency("merchant", &rate.merchant)?, currency("payer", &rate.payer)?);
            if merchant == payer {
                return Err(format!("{}: the payer currency is the merchant currency", key("payer")));
            }
            let scaled = codec::fx::parse_rate(&rate.rate).map_err(|error| format!("{}: {error}", key("rate")))?;
            let instant = |field: &str, text: &str| {
                text.parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .map_err(|error| format!("{}: {text:?} is not an RFC 3339 instant: {error}", key(field)))
            };
            let (from_ms, until_ms) =
                (instant("valid_from", &rate.valid_from)?, instant("valid_until", &rate.valid_until)?);
            if until_ms <= from_ms {
                return Err(format!("{}: must be after valid_from", key("valid_until")));
            }
            let periods = pairs.entry((merchant, payer)).or_default();
            if let Some(other) = periods.iter().find(|p| p.from_ms < until_ms && from_ms < p.until_ms) {
                return Err(format!(
                    "{}: overlaps the period {} to {} of the same pair",
                    key("valid_from"),
                    shown_time(other.from_ms),
                    shown_time(other.until_ms)
                ));
            }
            periods.push(Period { from_ms, until_ms, rate: scaled });
        }
        for periods in pairs.values_mut() {
            periods.sort_by_key(|p| p.from_ms);
        }
        Ok(Self { version: file.version, pairs })
    }

    /// Reads and parses the rate table in `path`; errors name the file.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
        Self::parse(&text).map_err(|problem| format!("{}: {problem}", path.display()))
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The rate from `merchant` to `payer` in force at `at_ms` (Unix ms), if any.
    pub fn lookup(&self, merchant: u16, payer: u16, at_ms: i64) -> Option<Rate> {
        let periods = self.pairs.get(&(merchant, payer))?;
        // The last period starting at or before `at_ms`, if it has not ended.
        let index = periods.partition_point(|p| p.from_ms <= at_ms).checked_sub(1)?;
        let period = &periods[index];
        (at_ms < period.until_ms).then_some(Rate { rate: period.rate, version: self.version })
    }

    /// Every rate, by pair and period, for the admin API.
    pub fn shown(&self) -> Vec<ShownRate> {
        let name = |code: u16| codec::currency::alphabetic(code).unwrap_or("?");
        let mut rates: Vec<_> = self
            .pairs
            .iter()
            .flat_map(|(&(merchant, payer), periods)| {
                periods.iter().map(move |p| ShownRate {
                    merchant: name(merchant),
                    payer: name(payer),
                    rate: codec::fx::format_rate(p.rate),
                    valid_from: shown_time(p.from_ms),
                    valid_until: shown_time(p.until_ms),
                })
            })
            .collect();
        rates.sort_by(|a, b| (a.merchant, a.payer, &a.valid_from).cmp(&(b.merchant, b.payer, &b.valid_from)));
        rates
    }
}

fn shown_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string())
}

/// The embedded default's table: indicative demo rates for the demo network's markets,
/// valid from 2026 to 2031. Not market data.
pub const DEMO_RATES: &str = include_str!("../config/demo-rates.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const CNY: u16 = 156;
    const THB: u16 = 764;

    fn table(rates: &str) -> Result<RateTable, String> {
        RateTable::parse(&format!("version = 3\n{rates}"))
    }

    fn rate(merchant: &str, payer: &str, rate: &str, from: &str, until: &str) -> String {
        format!(
            "[[rate]]\nmerchant = \"{merchant}\"\npayer = \"{payer}\"\nrate = \"{rate}\"\nvalid_from = \"{from}\"\nvalid_until = \"{until}\"\n"
        )
    }

    #[test]
    fn a_rate_applies_only_inside_its_period() {
        let text = rate("CNY", "THB", "4.9123", "2026-11-23T00:00:00+08:00", "2026-11-24T00:00:00+08:00")
            + &rate("CNY", "THB", "4.95", "2026-11-24T00:00:00+08:00", "2026-11-25T00:00:00+08:00");
        let table = table(&text).expect("valid");
        let at = |text: &str| text.parse::<jiff::Timestamp>().expect("instant").as_millisecond();
        assert_eq!(table.version(), 3);
        assert_eq!(
            table.lookup(CNY, THB, at("2026-11-23T00:00:00+08:00")),
            Some(Rate { rate: 49_123_000_000, version: 3 })
        );
        assert_eq!(table.lookup(CNY, THB, at("2026-11-24T00:00:00+08:00")).map(|r| r.rate), Some(49_500_000_000));
        assert_eq!(table.lookup(CNY, THB, at("2026-11-22T23:59:59.999+08:00")), None, "not yet valid");
        assert_eq!(table.lookup(CNY, THB, at("2026-11-25T00:00:00+08:00")), None, "expired");
        assert_eq!(table.lookup(THB, CNY, at("2026-11-23T12:00:00+08:00")), None, "no such pair");
        assert_eq!(table.shown().len(), 2);
        assert_eq!(table.shown()[0].rate, "4.9123");
    }

    #[test]
    fn bad_tables_are_refused_naming_the_rate_and_key() {
        let day = ("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z");
        let cases = [
            (rate("CNY", "XXX", "4.9", day.0, day.1), "rate[0] (CNY to XXX).payer"),
            (rate("CNY", "CNY", "1", day.0, day.1), "the payer currency is the merchant currency"),
            (rate("CNY", "THB", "4,9", day.0, day.1), "rate[0] (CNY to THB).rate"),
            (rate("CNY", "THB", "0", day.0, day.1), "rate[0] (CNY to THB).rate"),
            (rate("CNY", "THB", "4.9", day.1, day.0), "must be after valid_from"),
            (rate("CNY", "THB", "4.9", "yesterday", day.1), "valid_from: \"yesterday\""),
            (
                rate("CNY", "THB", "4.9", day.0, day.1) + &rate("CNY", "THB", "5", "2026-11-23T12:00:00Z", day.1),
                "rate[1] (CNY to THB).valid_from: overlaps",
            ),
        ];
        for (text, expected) in cases {
            let error = table(&text).expect_err(expected);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        assert!(RateTable::parse("version = 0").expect_err("zero").contains("version"));
        assert!(RateTable::parse("version = 1\nextra = 2").is_err());
    }

    #[test]
    fn the_demo_table_is_valid() {
        let table = RateTable::parse(DEMO_RATES).expect("the demo rates parse");
        let now = "2026-11-23T12:00:00+08:00".parse::<jiff::Timestamp>().expect("instant").as_millisecond();
        assert!(table.lookup(CNY, THB, now).is_some());
        assert!(table.lookup(THB, CNY, now).is_some());
    }
}
