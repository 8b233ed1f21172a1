//! Traffic profiles: a day's (or week's) rate curve and the traffic mix, shipped as TOML
//! data files in `loadgen/profiles/` and calibrated to published figures (cited in each
//! file). See `loadgen/profiles/README.md` for the format.
//!
//! Invariants (checked by [`Profile::parse`], every error naming the file and line):
//! - curve points are strictly increasing in time, levels in `0..=LEVEL_MAX`;
//! - shares are fractions; the wallet shares, and the cross-border country shares when
//!   there is cross-border traffic, each sum to one;
//! - every currency and country is one the codec knows, every amount is exact in its
//!   currency's minor units.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// The highest curve level: a multiple of the day's average rate.
pub const LEVEL_MAX: f64 = 50.0;
/// How far shares that must sum to one may miss it.
const SHARE_TOLERANCE: f64 = 0.001;

/// The profiles built into the binary: (name, file text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("weekday", include_str!("../profiles/weekday.toml")),
    ("double-11", include_str!("../profiles/double-11.toml")),
    ("new-years-eve", include_str!("../profiles/new-years-eve.toml")),
    ("golden-week", include_str!("../profiles/golden-week.toml")),
    ("visa-free-surge", include_str!("../profiles/visa-free-surge.toml")),
];

/// A profile that cannot be used: the file, the line and what is wrong with which value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ProfileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One point of the rate curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds from day 0's midnight (Beijing time).
    pub at_s: f64,
    /// Rate as a multiple of the day's average rate.
    pub level: f64,
}

/// A payment-code wallet: its prefix and share of domestic traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Wallet {
    pub name: String,
    /// The wallet's participant id at the switch (it originates merchant-presented
    /// payments; consumer-presented ones reach it by prefix).
    pub participant: String,
    pub prefix: String,
    pub digits: u8,
    pub share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A foreign wallet pays a Chinese merchant (外包内用), in CNY.
    Inbound,
    /// A Chinese wallet pays a merchant abroad (内包外用), in the merchant's currency.
    Outbound,
}

/// One market of the cross-border mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Country {
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// ISO 3166-1 numeric.
    pub country_numeric: u16,
    pub direction: Direction,
    /// The wallet's currency (ISO 4217 numeric): reported per market.
    pub currency: u16,
    /// Indicative units of `currency` per CNY, to size outbound amounts (no FX is done by
    /// the generator: inbound payments are in CNY, outbound in the merchant's currency).
    pub units_per_cny: f64,
    /// The originating wallet's participant id.
    pub wallet: String,
    pub share: f64,
}

/// Payment amounts: log-normal through the median and 90th percentile, capped, in CNY
/// minor units (fen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amounts {
    pub median_minor: u64,
    pub p90_minor: u64,
    pub max_minor: u64,
}

impl Amounts {
    /// The log-normal's sigma: ln(p90 / median) / z(0.9).
    pub fn sigma(&self) -> f64 {
        (self.p90_minor as f64 / self.median_minor as f64).ln() / 1.281_551_565_5
    }

    /// One amount in fen, from a standard normal draw.
    pub fn sample(&self, normal: f64) -> u64 {
        let value = (self.median_minor as f64) * (self.sigma() * normal).exp();
        (value.round() as u64).clamp(1, self.max_minor)
    }
}

/// What the traffic is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Share of payments that are merchant-presented (the wallet scans the merchant's QR).
    pub merchant_presented: f64,
    /// Share of payments that are cross-border (split by `countries`).
    pub cross_border: f64,
    /// Refunds per payment sent.
    pub refunds: f64,
    /// Status queries per payment sent.
    pub queries: f64,
    pub wallets: Vec<Wallet>,
    pub countries: Vec<Country>,
    pub amounts: Amounts,
}

impl Mix {
    /// Domestic consumer-presented share: what is neither merchant-presented nor
    /// cross-border.
    pub fn consumer_presented(&self) -> f64 {
        (1.0 - self.merchant_presented - self.cross_border).max(0.0)
    }
}

/// A parsed, validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub title: String,
    /// Where the profile came from: a built-in name or a path.
    pub source: String,
    /// Transactions on the reference day (its average rate is level 1.0).
    pub day_transactions: u64,
    /// The published peak, if any: the curve's highest level must reproduce it (10%).
    pub peak_tps: Option<u64>,
    pub points: Vec<Point>,
    pub mix: Mix,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    title: String,
    day_transactions: Spanned<u64>,
    #[serde(default)]
    peak_tps: Option<Spanned<u64>>,
    points: Spanned<Vec<(Spanned<String>, Spanned<f64>)>>,
    mix: RawMix,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    merchant_presented: Spanned<f64>,
    #[serde(default)]
    cross_border: Option<Spanned<f64>>,
    refunds: Spanned<f64>,
    queries: Spanned<f64>,
    amount: RawAmount,
    wallet: Spanned<Vec<RawWallet>>,
    #[serde(default)]
    country: Vec<RawCountry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmount {
    median: Spanned<String>,
    p90: Spanned<String>,
    max: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWallet {
    name: String,
    participant: Spanned<String>,
    prefix: Spanned<String>,
    digits: Spanned<u8>,
    share: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountry {
    country: Spanned<String>,
    direction: Spanned<String>,
    currency: Spanned<String>,
    #[serde(default)]
    units_per_cny: Option<Spanned<f64>>,
    wallet: Spanned<String>,
    share: Spanned<f64>,
}

/// ISO 3166-1 alpha-2 to numeric, for the markets profiles use.
const COUNTRIES: &[(&str, u16)] = &[
    ("CN", 156),
    ("HK", 344),
    ("MO", 446),
    ("KR", 410),
    ("JP", 392),
    ("SG", 702),
    ("TH", 764),
    ("MY", 458),
    ("VN", 704),
    ("ID", 360),
    ("PH", 608),
    ("AE", 784),
    ("GB", 826),
    ("US", 840),
    ("AU", 36),
    ("FR", 250),
    ("DE", 276),
];

/// Parses `"d1 23:50"`, `"23:50"` or `"23:50:30"` (day 0 when no day is given) into
/// seconds from day 0's midnight.
pub fn parse_clock(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a time of day: write \"HH:MM\" or \"dN HH:MM\" (day N from 0)");
    let (day, clock) = match text.trim().split_once(' ') {
        Some((day, clock)) => {
            let day: u32 = day.strip_prefix('d').and_then(|d| d.parse().ok()).ok_or_else(bad)?;
            (day, clock.trim())
        }
        None => (0, text.trim()),
    };
    let mut parts = clock.split(':');
    let hour: u32 = parts.next().and_then(|h| h.parse().ok()).ok_or_else(bad)?;
    let minute: u32 = parts.next().and_then(|m| m.parse().ok()).ok_or_else(bad)?;
    let second: u32 = match parts.next() {
        Some(s) => s.parse().map_err(|_| bad())?,
        None => 0,
    };
    if parts.next().is_some() || hour > 24 || minute > 59 || second > 59 || (hour == 24 && minute + second > 0) {
        return Err(bad());
    }
    if day > 31 {
        return Err(format!("{text:?}: a profile covers at most 32 days"));
    }
    Ok(f64::from(day) * 86_400.0 + f64::from(hour * 3600 + minute * 60 + second))
}

/// Formats seconds from day 0's midnight as `"dN HH:MM"`.
pub fn format_clock(at_s: f64) -> String {
    let total = at_s.max(0.0).round() as u64;
    let (day, rest) = (total / 86_400, total % 86_400);
    format!("d{day} {:02}:{:02}", rest / 3600, rest % 3600 / 60)
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ProfileError {
        ProfileError { file: self.file.to_string(), line: self.line(at.span()), message: message.into() }
    }

    fn share(&self, value: &Spanned<f64>, key: &str, max: f64) -> Result<f64, ProfileError> {
        let v = *value.get_ref();
        if !(0.0..=max).contains(&v) {
            return Err(self.error(value, format!("{key} = {v}: must be between 0 and {max}")));
        }
        Ok(v)
    }

    fn amount(&self, value: &Spanned<String>, key: &str) -> Result<u64, ProfileError> {
        let minor = codec::currency::minor_units(value.get_ref(), 156)
            .map_err(|e| self.error(value, format!("{key} = {:?}: not an amount in CNY ({e})", value.get_ref())))?;
        if minor == 0 {
            return Err(self.error(value, format!("{key} = {:?}: must be above zero", value.get_ref())));
        }
        Ok(minor)
    }

    fn participant(&self, value: &Spanned<String>, key: &str) -> Result<String, ProfileError> {
        codec::InstitutionId::new(value.get_ref())
            .map_err(|e| self.error(value, format!("{key} = {:?}: not a participant id ({e})", value.get_ref())))?;
        Ok(value.get_ref().clone())
    }
}

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
            return Self::parse(&format!("loadgen/profiles/{name}.toml"), text);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError {
            file: name_or_path.to_string(),
            line: 0,
            message: format!(
                "cannot read the profile ({e}); built-in profiles: {}",
                BUILT_IN.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
            ),
        })?;
        Self::parse(name_or_path, &text)
    }

    /// Parses and validates a profile's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            ProfileError { file: file.to_string(), line, message: e.message().to_string() }
        })?;
        let check = Checker { file, text };
        if raw.name.get_ref().is_empty() {
            return Err(check.error(&raw.name, "name must not be empty"));
        }
        if *raw.day_transactions.get_ref() == 0 {
            return Err(check.error(&raw.day_transactions, "day_transactions must be above zero"));
        }

        let mut points = Vec::with_capacity(raw.points.get_ref().len());
        for (at, level) in raw.points.get_ref() {
            let at_s = parse_clock(at.get_ref()).map_err(|m| check.error(at, m))?;
            let level_value = *level.get_ref();
            if !(0.0..=LEVEL_MAX).contains(&level_value) {
                return Err(check.error(level, format!("level {level_value} must be between 0 and {LEVEL_MAX}")));
            }
            if let Some(previous) = points.last().map(|p: &Point| p.at_s)
                && at_s <= previous
            {
                return Err(check.error(
                    at,
                    format!("point {:?} is not after the one before ({})", at.get_ref(), format_clock(previous)),
                ));
            }
            points.push(Point { at_s, level: level_value });
        }
        if points.len() < 2 {
            return Err(check.error(&raw.points, "points needs at least two [time, level] pairs"));
        }

        let mix = &raw.mix;
        let merchant_presented = check.share(&mix.merchant_presented, "merchant_presented", 1.0)?;
        let cross_border = match &mix.cross_border {
            Some(value) => check.share(value, "cross_border", 1.0)?,
            None => 0.0,
        };
        if merchant_presented + cross_border > 1.0 + SHARE_TOLERANCE {
            return Err(check.error(
                &mix.merchant_presented,
                format!("merchant_presented ({merchant_presented}) and cross_border ({cross_border}) exceed 1"),
            ));
        }
        let refunds = check.share(&mix.refunds, "refunds", 0.5)?;
        let queries = check.share(&mix.queries, "queries", 0.5)?;

        let mut wallets = Vec::new();
        for wallet in mix.wallet.get_ref() {
            let prefix = wallet.prefix.get_ref();
            if prefix.is_empty() || prefix.len() > 4 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(check.error(&wallet.prefix, format!("prefix {prefix:?}: 1 to 4 digits")));
            }
            let digits = *wallet.digits.get_ref();
            if !(16..=24).contains(&digits) {
                return Err(check.error(&wallet.digits, format!("digits = {digits}: payment codes have 16 to 24")));
            }
            wallets.push(Wallet {
                name: wallet.name.clone(),
                participant: check.participant(&wallet.participant, "participant")?,
                prefix: prefix.clone(),
                digits,
                share: check.share(&wallet.share, "share", 1.0)?,
            });
        }
        let wallet_sum: f64 = wallets.iter().map(|w| w.share).sum();
        if (wallet_sum - 1.0).abs() > SHARE_TOLERANCE {
            return Err(check.error(&mix.wallet, format!("the wallet shares sum to {wallet_sum:.4}, not 1")));
        }

        let mut countries = Vec::new();
        for entry in &mix.country {
            let alpha = entry.country.get_ref();
            let country_numeric = COUNTRIES
                .iter()
                .find(|(code, _)| code == alpha)
                .map(|&(_, n)| n)
                .ok_or_else(|| check.error(&entry.country, format!("country {alpha:?} is not a known market")))?;
            let direction = match entry.direction.get_ref().as_str() {
                "inbound" => Direction::Inbound,
                "outbound" => Direction::Outbound,
                other => {
                    return Err(
                        check.error(&entry.direction, format!("direction {other:?}: \"inbound\" or \"outbound\""))
                    );
                }
            };
            let currency = codec::currency::numeric(entry.currency.get_ref()).ok_or_else(|| {
                check.error(
                    &entry.currency,
                    format!("currency {:?} is not in the currency table", entry.currency.get_ref()),
                )
            })?;
            let units_per_cny = match &entry.units_per_cny {
                Some(value) if *value.get_ref() > 0.0 && *value.get_ref() < 100_000.0 => *value.get_ref(),
                Some(value) => {
                    return Err(check.error(value, format!("units_per_cny = {}: must be above zero", value.get_ref())));
                }
                None if currency == 156 => 1.0,
                None => {
                    return Err(check.error(
                        &entry.currency,
                        format!("{}: a non-CNY market needs units_per_cny", entry.currency.get_ref()),
                    ));
                }
            };
            countries.push(Country {
                country: alpha.clone(),
                country_numeric,
                direction,
                currency,
                units_per_cny,
                wallet: check.participant(&entry.wallet, "wallet")?,
                share: check.share(&entry.share, "share", 1.0)?,
            });
        }
        if cross_border > 0.0 {
            let sum: f64 = countries.iter().map(|c| c.share).sum::<f64>() + 0.0;
            if (sum - 1.0).abs() > SHARE_TOLERANCE {
                let at = mix.cross_border.as_ref().unwrap_or(&mix.merchant_presented);
                return Err(check.error(at, format!("cross_border > 0 but the country shares sum to {sum:.4}, not 1")));
            }
        }

        let amounts = Amounts {
            median_minor: check.amount(&mix.amount.median, "median")?,
            p90_minor: check.amount(&mix.amount.p90, "p90")?,
            max_minor: check.amount(&mix.amount.max, "max")?,
        };
        if !(amounts.median_minor < amounts.p90_minor && amounts.p90_minor <= amounts.max_minor) {
            return Err(check.error(&mix.amount.p90, "amounts need median < p90 <= max"));
        }

        let profile = Self {
            name: raw.name.get_ref().clone(),
            title: raw.title,
            source: file.to_string(),
            day_transactions: *raw.day_transactions.get_ref(),
            peak_tps: raw.peak_tps.as_ref().map(|p| *p.get_ref()),
            points,
            mix: Mix { merchant_presented, cross_border, refunds, queries, wallets, countries, amounts },
        };
        if let (Some(peak), Some(raw_peak)) = (profile.peak_tps, &raw.peak_tps) {
            let curve_peak = profile.max_level() * profile.average_tps();
            if (curve_peak / peak as f64 - 1.0).abs() > 0.10 {
                return Err(check.error(
                    raw_peak,
                    format!(
                        "peak_tps = {peak}, but the curve peaks at {curve_peak:.0} (level {:.2} x average {:.0}): \
                         recalibrate the points",
                        profile.max_level(),
                        profile.average_tps()
                    ),
                ));
            }
        }
        Ok(profile)
    }

    /// The reference day's average rate (level 1.0).
    pub fn average_tps(&self) -> f64 {
        self.day_transactions as f64 / 86_400.0
    }

    pub fn start_s(&self) -> f64 {
        self.points[0].at_s
    }

    pub fn end_s(&self) -> f64 {
        self.points[self.points.len() - 1].at_s
    }

    /// The level at `at_s`, linear between points, held flat outside them.
    pub fn level_at(&self, at_s: f64) -> f64 {
        let index = self.points.partition_point(|p| p.at_s <= at_s);
        match index {
            0 => self.points[0].level,
            i if i == self.points.len() => self.points[i - 1].level,
            i => {
                let (a, b) = (self.points[i - 1], self.points[i]);
                a.level + (b.level - a.level) * (at_s - a.at_s) / (b.at_s - a.at_s)
            }
        }
    }

    pub fn max_level(&self) -> f64 {
        self.points.iter().map(|p| p.level).fold(0.0, f64::max)
    }

    /// The mean level between `from_s` and `to_s` (exact for the piecewise-linear curve).
    pub fn mean_level(&self, from_s: f64, to_s: f64) -> f64 {
        if to_s <= from_s {
            return self.level_at(from_s);
        }
        let mut cuts: Vec<f64> = vec![from_s];
        cuts.extend(self.points.iter().map(|p| p.at_s).filter(|&t| t > from_s && t < to_s));
        cuts.push(to_s);
        let area: f64 =
            cuts.windows(2).map(|w| (w[1] - w[0]) * (self.level_at(w[0]) + self.level_at(w[1])) / 2.0).sum();
        area / (to_s - from_s)
    }

    /// When the curve first reaches its highest level.
    pub fn peak_at_s(&self) -> f64 {
        let max = self.max_level();
        self.points.iter().find(|p| p.level == max).map_or(0.0, |p| p.at_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra_mix: &str, points: &str) -> String {
        format!(
            "name = \"t\"\ntitle = \"test\"\nday_transactions = 86400\npoints = {points}\n[mix]\n\
             merchant_presented = 0.3\nrefunds = 0.01\nqueries = 0.01\n{extra_mix}\n\
             [mix.amount]\nmedian = \"38.00\"\np90 = \"260.00\"\nmax = \"50000.00\"\n\
             [[mix.wallet]]\nname = \"WeChat Pay\"\nparticipant = \"WECHATPAY\"\nprefix = \"13\"\ndigits = 18\nshare = 1.0\n"
        )
    }

    #[test]
    fn every_built_in_profile_parses_and_keeps_its_calibration() {
        for (name, _) in BUILT_IN {
            let profile = Profile::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&profile.name, name);
            assert!(profile.end_s() > profile.start_s());
            // Levels are multiples of the reference day's average: the curve's mean over the
            // whole profile stays near one.
            let mean = profile.mean_level(profile.start_s(), profile.end_s());
            assert!((0.6..=1.4).contains(&mean), "{name}: mean level {mean:.2}");
        }
    }

    #[test]
    fn the_benchmark_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/scenarios");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Profile::load(&path.to_string_lossy()).unwrap_or_else(|e| panic!("{e}"));
                parsed += 1;
            }
        }
        assert!(parsed > 0, "no scenario in {}", dir.display());
    }

    #[test]
    fn holiday_shapes_match_the_cited_figures() {
        // Double 11: peak 4.0-6.8x the day's average, minutes long, right after 00:00.
        let d11 = Profile::load("double-11").unwrap();
        let ratio = d11.max_level() / d11.mean_level(0.0, 86_400.0);
        assert!((4.0..=7.0).contains(&ratio), "double-11 peak/average {ratio:.2}");
        assert!(d11.peak_at_s() < 600.0, "the peak comes right after midnight");
        assert!(d11.level_at(1800.0) < d11.max_level() / 2.0, "and lasts minutes");
        // New Year's Eve 2026: a 23:50-00:20 plateau at 2.5x the average, 144,700 TPS.
        let nye = Profile::load("new-years-eve").unwrap();
        for at in ["d0 23:50", "d1 00:00", "d1 00:20"] {
            let level = nye.level_at(parse_clock(at).unwrap());
            assert!((2.4..=2.6).contains(&level), "{at}: {level}");
        }
        let peak = nye.max_level() * nye.average_tps();
        assert!((peak - 144_700.0).abs() / 144_700.0 < 0.02, "{peak}");
        // Golden Week runs several days with cross-border traffic up 1.6x on a weekday.
        let week = Profile::load("golden-week").unwrap();
        let weekday = Profile::load("weekday").unwrap();
        assert!(week.end_s() - week.start_s() >= 6.0 * 86_400.0);
        assert!(week.mix.cross_border >= 1.5 * weekday.mix.cross_border);
        let surge = Profile::load("visa-free-surge").unwrap();
        assert!(surge.mix.cross_border > week.mix.cross_border);
        assert!(surge.mix.countries.iter().any(|c| c.country == "KR"));
    }

    #[test]
    fn level_is_linear_between_points_and_flat_outside() {
        let text = minimal("", "[[\"00:00\", 1.0], [\"01:00\", 3.0], [\"d1 00:00\", 1.0]]");
        let profile = Profile::parse("t.toml", &text).unwrap();
        assert_eq!(profile.level_at(-5.0), 1.0);
        assert_eq!(profile.level_at(1800.0), 2.0);
        assert_eq!(profile.level_at(3600.0), 3.0);
        assert_eq!(profile.level_at(200_000.0), 1.0);
        assert!((profile.mean_level(0.0, 3600.0) - 2.0).abs() < 1e-9);
        assert_eq!(format_clock(parse_clock("d1 23:50").unwrap()), "d1 23:50");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_value() {
        let cases = [
            (minimal("", "[[\"00:00\", 1.0], [\"00:00\", 2.0]]"), 4, "not after"),
            (minimal("", "[[\"00:00\", 1.0], [\"25:00\", 2.0]]"), 4, "\"25:00\" is not a time of day"),
            (minimal("", "[[\"00:00\", 1.0], [\"01:00\", 99.0]]"), 4, "level 99"),
            (minimal("", "[[\"00:00\", 1.0]]"), 4, "at least two"),
            (minimal("cross_border = 1.5", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]"), 9, "cross_border = 1.5"),
            (minimal("cross_border = 0.1", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]"), 9, "country shares sum to 0"),
            (minimal("", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]").replace("\"38.00\"", "\"38.001\""), 11, "\"38.001\""),
            (
                minimal("", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]").replace("digits = 18", "digits = 40"),
                18,
                "digits = 40",
            ),
            (
                minimal("", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]").replace("share = 1.0", "share = 0.5"),
                14,
                "sum to 0.5",
            ),
            (minimal("", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]").replace("title", "tittle"), 2, "unknown field"),
            (minimal("", "[[\"00:00\", 1.0], [\"01:00\", 1.0]]").replace("86400", "\"many\""), 3, "invalid type"),
        ];
        for (text, line, needle) in cases {
            let error = Profile::parse("bad.toml", &text).expect_err(needle);
            assert_eq!(error.file, "bad.toml");
            assert!(error.to_string().contains(needle), "{error} lacks {needle:?}");
            assert_eq!(error.line, line, "{error}");
        }
        let error = Profile::load("/nonexistent/profile.toml").unwrap_err();
        assert!(error.to_string().contains("built-in profiles: weekday"), "{error}");
    }
}
