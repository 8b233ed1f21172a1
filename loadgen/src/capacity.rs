//! Capacity answers: `loadgen capacity` searches for the highest rate a switch carries
//! within an SLO; `loadgen plan` turns a measured per-node capacity into a fleet size for
//! a target day.

use std::fmt::Write as _;

use crate::profile::Profile;

/// One step of a capacity search.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub rate: f64,
    pub achieved: f64,
    pub p99_ms: f64,
    pub valid: bool,
    pub passed: bool,
    pub note: String,
}

/// The search: doubles from `start` while steps pass, then bisects between the last pass
/// and the first failure until they are within `precision` (a fraction) of each other.
/// `probe` runs one step at a rate.
pub async fn search<F, Fut>(
    start: f64,
    max: f64,
    precision: f64,
    mut probe: F,
) -> anyhow::Result<(Option<f64>, Vec<Step>)>
where
    F: FnMut(f64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Step>>,
{
    let mut steps = Vec::new();
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start.min(max);
    loop {
        let step = probe(rate).await?;
        let passed = step.passed;
        steps.push(step);
        if passed {
            pass = Some(rate);
            if rate >= max {
                break;
            }
            rate = (rate * 2.0).min(max);
        } else {
            fail = Some(rate);
            break;
        }
    }
    if let (Some(_), Some(_)) = (pass, fail) {
        while let (Some(lo), Some(hi)) = (pass, fail) {
            if (hi - lo) / lo <= precision {
                break;
            }
            let mid = ((lo + hi) / 2.0).round();
            let step = probe(mid).await?;
            if step.passed {
                pass = Some(mid);
            } else {
                fail = Some(mid);
            }
            steps.push(step);
        }
    }
    Ok((pass, steps))
}

/// The table of a search.
pub fn render_steps(steps: &[Step], answer: Option<f64>, slo: &str) -> String {
    let mut text = format!("{:>10} {:>10} {:>9} {:>6}  result\n", "rate/s", "achieved", "p99 ms", "valid");
    for s in steps {
        let _ = writeln!(
            text,
            "{:>10.0} {:>10.0} {:>9.3} {:>6}  {}{}",
            s.rate,
            s.achieved,
            s.p99_ms,
            s.valid,
            if s.passed { "pass" } else { "FAIL" },
            if s.note.is_empty() { String::new() } else { format!(" ({})", s.note) }
        );
    }
    match answer {
        Some(rate) => {
            let _ = writeln!(text, "capacity: {rate:.0} requests/s within {slo}");
        }
        None => {
            let _ = writeln!(text, "capacity: below the starting rate: even it missed {slo}");
        }
    }
    text
}

/// A fleet-size question.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub profile: Profile,
    /// The target day's transactions (the profile's reference day when absent).
    pub day_transactions: Option<u64>,
    /// The target peak (derived from the profile's curve when absent).
    pub peak_tps: Option<f64>,
    /// Measured requests per second one node carries within the SLO.
    pub node_capacity: f64,
    /// Spare capacity kept at peak, as a fraction (0.3: nodes run at most 1/1.3 loaded).
    pub headroom: f64,
    /// Nodes that may fail at peak without loss of capacity (N+1: 1).
    pub redundancy: u32,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanAnswer {
    pub average_tps: f64,
    pub peak_tps: f64,
    pub nodes_for_peak: u32,
    pub nodes: u32,
    pub peak_utilisation: f64,
    pub average_utilisation: f64,
    /// Hours of the profile above what one node carries.
    pub hours_above_one_node: f64,
}

pub fn plan(input: &PlanInput) -> anyhow::Result<PlanAnswer> {
    anyhow::ensure!(input.node_capacity > 0.0, "--node-capacity must be above zero");
    anyhow::ensure!((0.0..=4.0).contains(&input.headroom), "--headroom must be between 0% and 400%");
    let profile = &input.profile;
    let day = input.day_transactions.unwrap_or(profile.day_transactions) as f64;
    let average_tps = day / 86_400.0;
    let scale = average_tps / profile.average_tps();
    let peak_tps = input.peak_tps.unwrap_or(profile.max_level() * profile.average_tps() * scale);
    let nodes_for_peak = (peak_tps * (1.0 + input.headroom) / input.node_capacity).ceil().max(1.0) as u32;
    let nodes = nodes_for_peak + input.redundancy;
    let (start, end) = (profile.start_s(), profile.end_s());
    let steps = 10_000;
    let per_level = average_tps * peak_tps / (profile.max_level() * profile.average_tps() * scale);
    let above = (0..steps)
        .filter(|i| {
            let t = start + (end - start) * f64::from(*i) / f64::from(steps);
            profile.level_at(t) * per_level > input.node_capacity
        })
        .count();
    Ok(PlanAnswer {
        average_tps,
        peak_tps,
        nodes_for_peak,
        nodes,
        peak_utilisation: peak_tps / (f64::from(nodes_for_peak) * input.node_capacity),
        average_utilisation: average_tps / (f64::from(nodes_for_peak) * input.node_capacity),
        hours_above_one_node: (end - start) / 3600.0 * above as f64 / f64::from(steps),
    })
}

pub fn render_plan(input: &PlanInput, answer: &PlanAnswer) -> String {
    format!(
        "profile {}: {}\n\
         target day: {:.3} bn transactions, average {:.0}/s, peak {:.0}/s\n\
         one node carries {:.0}/s; keeping {:.0}% headroom at peak:\n\
         \x20 {} nodes carry the peak ({:.0}% loaded at peak, {:.0}% on average)\n\
         \x20 + {} spare for redundancy (N+{}): {} nodes\n\
         the profile spends {:.1} h above one node's capacity\n",
        input.profile.name,
        input.profile.title,
        input.day_transactions.unwrap_or(input.profile.day_transactions) as f64 / 1e9,
        answer.average_tps,
        answer.peak_tps,
        input.node_capacity,
        input.headroom * 100.0,
        answer.nodes_for_peak,
        answer.peak_utilisation * 100.0,
        answer.average_utilisation * 100.0,
        input.redundancy,
        input.redundancy,
        answer.nodes,
        answer.hours_above_one_node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_years_eve_on_measured_nodes() {
        let input = PlanInput {
            profile: Profile::load("new-years-eve").unwrap(),
            day_transactions: Some(4_931_000_000),
            peak_tps: Some(144_700.0),
            node_capacity: 60_000.0,
            headroom: 0.3,
            redundancy: 1,
        };
        let answer = plan(&input).unwrap();
        // 144,700 x 1.3 / 60,000 = 3.14: four nodes, plus one.
        assert_eq!((answer.nodes_for_peak, answer.nodes), (4, 5));
        assert!((answer.average_tps - 57_071.0).abs() < 1.0);
        assert!(answer.hours_above_one_node > 0.5);
        assert!(render_plan(&input, &answer).contains("5 nodes"));
        // The peak follows the day when only the day is given.
        let derived = plan(&PlanInput { peak_tps: None, day_transactions: Some(2 * 4_931_000_000), ..input }).unwrap();
        assert!((derived.peak_tps / 144_700.0 - 2.0).abs() < 0.02, "{}", derived.peak_tps);
    }

    #[tokio::test]
    async fn search_doubles_then_bisects() {
        let limit = 37_000.0;
        let (answer, steps) = search(1000.0, 1e6, 0.05, |rate| async move {
            Ok(Step { rate, achieved: rate, p99_ms: 1.0, valid: true, passed: rate <= limit, note: String::new() })
        })
        .await
        .unwrap();
        let answer = answer.unwrap();
        assert!(answer <= limit && answer >= limit * 0.95, "{answer}");
        assert_eq!(steps[..7].iter().map(|s| s.rate).collect::<Vec<_>>(), [1e3, 2e3, 4e3, 8e3, 16e3, 32e3, 64e3]);
    }
}
