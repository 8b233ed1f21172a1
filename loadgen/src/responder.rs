//! How a receiving participant (an issuer, or an acquirer for merchant-presented payments)
//! answers what the switch forwards: its latency distribution, decline rate and faults.
//!
//! Spec syntax (`--respond`, `--respond-for ID=SPEC`): comma-separated `key=value`:
//! - `latency=2ms` (fixed), `latency=uniform:1ms..5ms`, `latency=lognormal:2ms:20ms`
//!   (median and p99);
//! - `decline=2%`: declined with `InsufficientFunds`; `decline_every=4`: every 4th
//!   payment declined (exact, for tests);
//! - `slow=1%:500ms`: that share answered that much later again;
//! - `silent=0.1%`: that share never answered (the switch times out and reverses);
//! - `disconnect=30s`: the connection drops every 30 s and signs on again a second later.
//!
//! Reversals and refunds are always approved (unless silent); echoes and sign-offs are
//! always answered, so a silent issuer keeps its session.

use std::time::Duration;

use codec::{AuthorizationCode, InstitutionId, LinkedRequest, Reply, ReplyCode, TransactionDetails};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
    /// Median and 99th percentile.
    LogNormal(Duration, Duration),
}

impl Latency {
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(a, b) => a + (b - a).mul_f64(rng.unit()),
            Self::LogNormal(median, p99) => {
                let sigma = (p99.as_secs_f64() / median.as_secs_f64()).ln() / 2.326_347_874;
                // Capped at a minute: a pathological draw is a fault, not a latency.
                Duration::from_secs_f64((median.as_secs_f64() * (sigma * rng.normal()).exp()).min(60.0))
            }
        }
    }
}

/// A receiver's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    pub latency: Latency,
    pub decline: f64,
    /// Decline every Nth payment (0: off), counted per connection.
    pub decline_every: u64,
    pub slow: f64,
    pub slow_by: Duration,
    pub silent: f64,
    pub disconnect_every: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency: Latency::Fixed(Duration::ZERO),
            decline: 0.0,
            decline_every: 0,
            slow: 0.0,
            slow_by: Duration::ZERO,
            silent: 0.0,
            disconnect_every: None,
        }
    }
}

/// Parses `250us`, `2ms`, `1.5s`, `30s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500us, 2ms, 1.5s, 2m)"))?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit must be us, ms, s, m or h")),
    };
    if !(0.0..=7.0 * 86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `2%` or `0.02` into a fraction in `0..=1`.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a fraction (e.g. 2% or 0.02)"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?} must be between 0% and 100%"));
    }
    Ok(value)
}

impl std::str::FromStr for Behaviour {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut behaviour = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: write key=value (latency, decline, ...)"))?;
            match key {
                "latency" => {
                    behaviour.latency = if let Some(range) = value.strip_prefix("uniform:") {
                        let (a, b) = range.split_once("..").ok_or_else(|| format!("{value:?}: uniform:MIN..MAX"))?;
                        let (a, b) = (parse_duration(a)?, parse_duration(b)?);
                        if a > b {
                            return Err(format!("{value:?}: the minimum is above the maximum"));
                        }
                        Latency::Uniform(a, b)
                    } else if let Some(pair) = value.strip_prefix("lognormal:") {
                        let (m, p) = pair.split_once(':').ok_or_else(|| format!("{value:?}: lognormal:MEDIAN:P99"))?;
                        let (m, p) = (parse_duration(m)?, parse_duration(p)?);
                        if m.is_zero() || p <= m {
                            return Err(format!("{value:?}: need 0 < median < p99"));
                        }
                        Latency::LogNormal(m, p)
                    } else {
                        Latency::Fixed(parse_duration(value)?)
                    }
                }
                "decline" => behaviour.decline = parse_fraction(value)?,
                "decline_every" => {
                    behaviour.decline_every =
                        value.parse().map_err(|_| format!("decline_every={value}: a whole number"))?;
                }
                "silent" => behaviour.silent = parse_fraction(value)?,
                "slow" => {
                    let (share, by) = value.split_once(':').ok_or_else(|| format!("{value:?}: slow=SHARE:DELAY"))?;
                    behaviour.slow = parse_fraction(share)?;
                    behaviour.slow_by = parse_duration(by)?;
                }
                "disconnect" => {
                    let every = parse_duration(value)?;
                    if every < Duration::from_secs(1) {
                        return Err(format!("disconnect={value}: at least 1s"));
                    }
                    behaviour.disconnect_every = Some(every);
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?}: latency, decline, decline_every, slow, silent or disconnect"
                    ));
                }
            }
        }
        Ok(behaviour)
    }
}

/// What to do with one forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Answer { code: ReplyCode, after: Duration },
    Ignore,
}

impl Behaviour {
    /// The decision for payment request number `count` (from 1) of this connection.
    pub fn payment(&self, count: u64, rng: &mut Rng) -> Decision {
        if rng.chance(self.silent) {
            return Decision::Ignore;
        }
        let mut after = self.latency.sample(rng);
        if rng.chance(self.slow) {
            after += self.slow_by;
        }
        let every = self.decline_every > 0 && count.is_multiple_of(self.decline_every);
        let code = if every || rng.chance(self.decline) { ReplyCode::InsufficientFunds } else { ReplyCode::Approved };
        Decision::Answer { code, after }
    }

    /// The decision for a reversal or refund: approved after the usual latency.
    pub fn linked(&self, rng: &mut Rng) -> Decision {
        if rng.chance(self.silent) {
            return Decision::Ignore;
        }
        Decision::Answer { code: ReplyCode::Approved, after: self.latency.sample(rng) }
    }
}

/// What a reply echoes of the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub originator: InstitutionId,
    pub id: codec::TransactionId,
    pub switch_reference: u64,
    pub amount_minor: u64,
    pub currency: u16,
}

impl Answered {
    /// The reply: `code`, with an authorisation code on approval when `authorization` is
    /// given.
    pub fn reply(self, responder: InstitutionId, code: ReplyCode, authorization: Option<u64>, now_ms: i64) -> Reply {
        Reply {
            originator: self.originator,
            originator_transaction_id: self.id,
            switch_reference: self.switch_reference,
            amount_minor: self.amount_minor,
            reply_time_ms: now_ms,
            currency: self.currency,
            code: code.value(),
            reserved: [0; 4],
            authorization_code: match authorization {
                Some(n) if code.is_approved() => {
                    AuthorizationCode::new(&format!("A{:05}", n % 100_000)).unwrap_or_default()
                }
                _ => AuthorizationCode::EMPTY,
            },
            responder,
            conversion: codec::Conversion::NONE,
        }
    }
}

/// Builds [`Answered`] from every request form a receiver meets: owned or archived (read
/// in place from the frame, no copy of the request), payment or linked.
macro_rules! answered_from {
    ($($type:ty => |$r:ident| ($originator:expr, $id:expr, $reference:expr, $amount:expr, $currency:expr)),* $(,)?) => {
        $(impl From<&$type> for Answered {
            fn from($r: &$type) -> Self {
                Self { originator: $originator, id: $id, switch_reference: $reference, amount_minor: $amount, currency: $currency }
            }
        })*
    };
}

answered_from! {
    TransactionDetails => |r| (r.originator, r.originator_transaction_id, r.switch_reference, r.amount_minor, r.currency),
    LinkedRequest => |r| (r.originator, r.originator_transaction_id, r.switch_reference, r.amount_minor, r.currency),
    codec::message::ArchivedTransactionDetails => |r| (
        r.originator, r.originator_transaction_id, r.switch_reference.to_native(), r.amount_minor.to_native(),
        r.currency.to_native()
    ),
    codec::message::ArchivedLinkedRequest => |r| (
        r.originator, r.originator_transaction_id, r.switch_reference.to_native(), r.amount_minor.to_native(),
        r.currency.to_native()
    ),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let b: Behaviour =
            "latency=lognormal:2ms:20ms, decline=2%, slow=1%:500ms, silent=0.001, disconnect=30s".parse().unwrap();
        assert_eq!(b.latency, Latency::LogNormal(Duration::from_millis(2), Duration::from_millis(20)));
        assert_eq!((b.decline, b.slow, b.silent), (0.02, 0.01, 0.001));
        assert_eq!(b.slow_by, Duration::from_millis(500));
        assert_eq!(b.disconnect_every, Some(Duration::from_secs(30)));
        assert_eq!(
            "latency=uniform:1ms..3ms".parse::<Behaviour>().unwrap().latency,
            Latency::Uniform(Duration::from_millis(1), Duration::from_millis(3))
        );
        for (bad, needle) in [
            ("latency=2parsecs", "unit"),
            ("decline=120%", "between"),
            ("colour=red", "unknown key \"colour\""),
            ("decline", "key=value"),
            ("latency=lognormal:20ms:2ms", "median < p99"),
            ("disconnect=100ms", "at least 1s"),
        ] {
            let error = bad.parse::<Behaviour>().unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn decisions_follow_the_rates() {
        let b: Behaviour = "latency=lognormal:2ms:20ms,decline=10%,silent=5%".parse().unwrap();
        let mut rng = Rng::new(5);
        let (mut declined, mut silent, mut slow) = (0, 0, 0);
        let n = 100_000;
        for count in 1..=n {
            match b.payment(count, &mut rng) {
                Decision::Ignore => silent += 1,
                Decision::Answer { code, after } => {
                    declined += u32::from(code == ReplyCode::InsufficientFunds);
                    slow += u32::from(after > Duration::from_millis(20));
                }
            }
        }
        assert!((4_500..5_500).contains(&silent), "{silent}");
        assert!((8_900..10_100).contains(&declined), "{declined}");
        // About 1% above the p99.
        assert!((600..1_400).contains(&slow), "{slow}");
        let every: Behaviour = "decline_every=3".parse().unwrap();
        let codes: Vec<_> = (1..=6)
            .map(|count| match every.payment(count, &mut rng) {
                Decision::Answer { code, .. } => code,
                Decision::Ignore => ReplyCode::Timeout,
            })
            .collect();
        assert_eq!(codes[2], ReplyCode::InsufficientFunds);
        assert_eq!(codes.iter().filter(|c| c.is_approved()).count(), 4);
    }
}
