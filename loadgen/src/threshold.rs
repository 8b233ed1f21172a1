//! Pass/fail gates on a run: `--threshold 'p99<20ms'`, `--threshold 'errors<0.1%'`.
//!
//! Metrics: latency `p50`, `p90`, `p99`, `p999`, `max`, `mean` (with a unit: us, ms, s);
//! `errors` and `late` (a count, or a percentage of requests sent); `achieved` (requests
//! per second, or a percentage of the offered rate). Operators: `<`, `<=`, `>`, `>=`.
//!
//! Exit codes ([`exit_code`]): 3 when a latency gate fails, 4 an error gate, 5 a
//! throughput gate (the lowest applies when several fail).

use crate::engine::Outcome;
use crate::responder::parse_duration;

pub const EXIT_LATENCY: i32 = 3;
pub const EXIT_ERRORS: i32 = 4;
pub const EXIT_THROUGHPUT: i32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Quantile(u32),
    Max,
    Mean,
    Errors,
    Late,
    Achieved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub op: Op,
    /// Microseconds for latency, a count or requests per second otherwise.
    pub value: f64,
    /// The value is a percentage (of requests sent, or of the offered rate).
    pub percent: bool,
    text_len: usize,
    text: [u8; 48],
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.text[..self.text_len]).unwrap_or("?"))
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.len() > 48 {
            return Err(format!("{text:?} is too long"));
        }
        let at = compact.find(['<', '>']).ok_or_else(|| format!("{text:?}: write METRIC<VALUE, e.g. p99<20ms"))?;
        let (name, rest) = compact.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::LessEqual, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::GreaterEqual, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Less, v)
        } else {
            (Op::Greater, &rest[1..])
        };
        let metric = match name {
            "p50" => Metric::Quantile(500),
            "p90" => Metric::Quantile(900),
            "p99" => Metric::Quantile(990),
            "p999" | "p99.9" => Metric::Quantile(999),
            "max" => Metric::Max,
            "mean" => Metric::Mean,
            "errors" => Metric::Errors,
            "late" => Metric::Late,
            "achieved" => Metric::Achieved,
            other => {
                return Err(format!(
                    "{text:?}: unknown metric {other:?} (p50, p90, p99, p999, max, mean, errors, late, achieved)"
                ));
            }
        };
        let (value, percent) = match metric {
            Metric::Quantile(_) | Metric::Max | Metric::Mean => {
                (parse_duration(value).map_err(|e| format!("{text:?}: {e}"))?.as_secs_f64() * 1e6, false)
            }
            _ => match value.strip_suffix('%') {
                Some(p) => (p.parse::<f64>().map_err(|_| format!("{text:?}: {p:?} is not a number"))?, true),
                None => (value.parse::<f64>().map_err(|_| format!("{text:?}: {value:?} is not a number"))?, false),
            },
        };
        if !value.is_finite() || value < 0.0 {
            return Err(format!("{text:?}: the value must be a non-negative number"));
        }
        let mut stored = [0u8; 48];
        stored[..compact.len()].copy_from_slice(compact.as_bytes());
        Ok(Self { metric, op, value, percent, text_len: compact.len(), text: stored })
    }
}

/// One gate's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub threshold: Threshold,
    /// The run's value in the threshold's terms.
    pub actual: f64,
    pub passed: bool,
}

impl Threshold {
    pub fn check(&self, outcome: &Outcome) -> Verdict {
        let h = &outcome.total;
        let sent = outcome.counters.sent.max(1) as f64;
        let latency = |v: u64| if h.is_empty() { f64::INFINITY } else { v as f64 };
        let actual = match self.metric {
            Metric::Quantile(per_mille) => latency(h.value_at_quantile(f64::from(per_mille) / 1000.0)),
            Metric::Max => latency(h.max()),
            Metric::Mean => {
                if h.is_empty() {
                    f64::INFINITY
                } else {
                    h.mean()
                }
            }
            Metric::Errors => {
                let errors = (outcome.counters.errors + outcome.missing()) as f64;
                if self.percent { errors * 100.0 / sent } else { errors }
            }
            Metric::Late => {
                let late = (outcome.counters.late + outcome.counters.dropped) as f64;
                if self.percent { late * 100.0 / sent } else { late }
            }
            Metric::Achieved => {
                if self.percent {
                    outcome.achieved_tps() * 100.0 / outcome.offered_tps().max(1e-9)
                } else {
                    outcome.achieved_tps()
                }
            }
        };
        let passed = match self.op {
            Op::Less => actual < self.value,
            Op::LessEqual => actual <= self.value,
            Op::Greater => actual > self.value,
            Op::GreaterEqual => actual >= self.value,
        };
        Verdict { threshold: *self, actual, passed }
    }

    /// The exit code when this gate fails.
    pub fn exit_code(&self) -> i32 {
        match self.metric {
            Metric::Quantile(_) | Metric::Max | Metric::Mean => EXIT_LATENCY,
            Metric::Errors | Metric::Late => EXIT_ERRORS,
            Metric::Achieved => EXIT_THROUGHPUT,
        }
    }
}

/// 0 when every gate passed, else the lowest failing gate's code.
pub fn exit_code(verdicts: &[Verdict]) -> i32 {
    verdicts.iter().filter(|v| !v.passed).map(|v| v.threshold.exit_code()).min().unwrap_or(0)
}

/// A verdict in words, with the value in the threshold's unit.
pub fn describe(verdict: &Verdict) -> String {
    let t = &verdict.threshold;
    let actual = match t.metric {
        Metric::Quantile(_) | Metric::Max | Metric::Mean => format!("{:.3} ms", verdict.actual / 1000.0),
        _ if t.percent => format!("{:.4}%", verdict.actual),
        _ => format!("{:.0}", verdict.actual),
    };
    format!("{} {t}: {actual}", if verdict.passed { "pass" } else { "FAIL" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_bad_ones_say_why() {
        let t: Threshold = "p99 < 20ms".parse().unwrap();
        assert_eq!((t.metric, t.op, t.value, t.percent), (Metric::Quantile(990), Op::Less, 20_000.0, false));
        assert_eq!(t.to_string(), "p99<20ms");
        let t: Threshold = "errors<0.1%".parse().unwrap();
        assert_eq!((t.metric, t.value, t.percent), (Metric::Errors, 0.1, true));
        let t: Threshold = "achieved>=95%".parse().unwrap();
        assert_eq!((t.op, t.exit_code()), (Op::GreaterEqual, EXIT_THROUGHPUT));
        for (bad, needle) in [
            ("p98<1ms", "unknown metric \"p98\""),
            ("p99=1ms", "write METRIC<VALUE"),
            ("p99<20", "unit"),
            ("errors<lots", "not a number"),
            ("errors<-1", "non-negative"),
        ] {
            let error = bad.parse::<Threshold>().unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }
}
