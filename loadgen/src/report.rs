//! A run's outputs: the end-of-run table, `--summary-json`, `.hgrm` and `.hlog` histogram
//! files, and a self-contained HTML report (inline SVG charts, no scripts, opens offline).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use codec::ReplyCode;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

use crate::engine::Outcome;

fn code_name(code: u16) -> String {
    match ReplyCode::try_from(code) {
        Ok(code) => format!("{code:?}"),
        Err(code) => format!("unknown-{code}"),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The end-of-run table.
pub fn table(outcome: &Outcome) -> String {
    let h = &outcome.total;
    let c = &outcome.counters;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "run {:06x}: {:.1} s of sending, {:.1} s in all",
        outcome.run_id, outcome.send_seconds, outcome.elapsed_seconds
    );
    let _ = writeln!(text, "  {:<22} {:>12}", "scheduled", c.scheduled);
    let _ = writeln!(text, "  {:<22} {:>12}", "sent", c.sent);
    let _ = writeln!(text, "  {:<22} {:>12}", "answered", c.answered);
    let _ = writeln!(text, "  {:<22} {:>12}", "late sends (>10 ms)", c.late);
    let _ = writeln!(text, "  {:<22} {:>12}", "dropped sends", c.dropped);
    if c.fault_dropped + c.fault_lost > 0 {
        let _ = writeln!(text, "  {:<22} {:>12}", "not sent: fault down", c.fault_dropped);
        let _ = writeln!(text, "  {:<22} {:>12}", "lost with a fault", c.fault_lost);
    }
    let _ = writeln!(text, "  {:<22} {:>12}", "never answered", outcome.missing());
    let _ = writeln!(text, "  {:<22} {:>12.0}", "offered /s", outcome.offered_tps());
    let _ = writeln!(text, "  {:<22} {:>12.0}", "achieved /s", outcome.achieved_tps());
    let _ = writeln!(text, "latency from intended send, ms:");
    let _ = writeln!(text, "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "p50", "p90", "p99", "p99.9", "max", "mean");
    if h.is_empty() {
        let _ = writeln!(text, "  (no replies)");
    } else {
        let _ = writeln!(
            text,
            "  {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            h.mean() / 1000.0
        );
    }
    let _ = writeln!(text, "replies:");
    for (&(kind, code), &count) in &outcome.codes {
        let _ = writeln!(text, "  {:<8} {:<24} {:>3} {:>12}", kind.name(), code_name(code), code, count);
    }
    let r = &outcome.responded;
    let _ = writeln!(
        text,
        "as receivers: {} requests ({} approved, {} declined, {} unanswered), {} reversals, {} refunds, {} disconnects",
        r.requests, r.approved, r.declined, r.ignored, r.reversals, r.refunds, r.disconnects
    );
    let (loadgen_cpu, switch_cpu) = outcome.cpu_us_per_request();
    if let Some(cpu) = loadgen_cpu {
        let _ = write!(text, "CPU per request: loadgen {cpu:.2} us");
        match switch_cpu {
            Some(switch) => {
                let _ = writeln!(text, ", switch {switch:.2} us");
            }
            None => text.push_str(" (switch: pass --admin to read it)\n"),
        }
    }
    if outcome.valid() {
        let _ = writeln!(text, "valid: the schedule was kept and every request answered once");
    } else {
        let _ = writeln!(text, "INVALID: {}", outcome.invalid_reasons().join("; "));
    }
    text
}

/// `--summary-json`: the run's figures for scripts and gates.
pub fn summary_json(outcome: &Outcome, thresholds: &[crate::threshold::Verdict]) -> String {
    let h = &outcome.total;
    let quantile = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
    let replies: serde_json::Map<String, serde_json::Value> =
        outcome.replies_by_code().into_iter().map(|(code, count)| (code_name(code), count.into())).collect();
    let by_kind: serde_json::Map<String, serde_json::Value> = outcome
        .codes
        .iter()
        .map(|(&(kind, code), &count)| (format!("{}/{}", kind.name(), code_name(code)), count.into()))
        .collect();
    let c = &outcome.counters;
    let document = serde_json::json!({
        "run_id": format!("{:06x}", outcome.run_id),
        "valid": outcome.valid(),
        "invalid_reasons": outcome.invalid_reasons(),
        "offered_tps": outcome.offered_tps().round(),
        "achieved_tps": outcome.achieved_tps().round(),
        "send_seconds": outcome.send_seconds,
        "scheduled": c.scheduled,
        "sent": c.sent,
        "answered": c.answered,
        "late_sends": c.late,
        "dropped_sends": c.dropped,
        "fault_dropped_sends": c.fault_dropped,
        "fault_lost_requests": c.fault_lost,
        "missing": outcome.missing(),
        "errors": c.errors + outcome.missing(),
        "rejects": outcome.rejects,
        "latency_us": {
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "p99": quantile(0.99),
            "p999": quantile(0.999),
            "max": h.max(),
            "mean": h.mean().round(),
        },
        "loadgen_cpu_seconds": outcome.loadgen_cpu_seconds,
        "switch_cpu_seconds": outcome.switch_cpu_seconds,
        "loadgen_cpu_us_per_request": outcome.cpu_us_per_request().0,
        "switch_cpu_us_per_request": outcome.cpu_us_per_request().1,
        "replies": replies,
        "replies_by_kind": by_kind,
        "receivers": {
            "requests": outcome.responded.requests,
            "approved": outcome.responded.approved,
            "declined": outcome.responded.declined,
            "unanswered": outcome.responded.ignored,
            "reversals": outcome.responded.reversals,
            "refunds": outcome.responded.refunds,
            "disconnects": outcome.responded.disconnects,
        },
        "thresholds": thresholds.iter().map(|v| serde_json::json!({
            "threshold": v.threshold.to_string(), "actual": v.actual, "passed": v.passed,
        })).collect::<Vec<_>>(),
        "settings": outcome.settings.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    format!("{}\n", serde_json::to_string_pretty(&document).unwrap_or_default())
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, in milliseconds.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut text = format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    if !histogram.is_empty() {
        let mut cumulative = 0u64;
        for value in histogram.iter_quantiles(5) {
            cumulative += value.count_since_last_iteration();
            let q = value.quantile_iterated_to();
            let inverse = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { String::new() };
            let _ = writeln!(
                text,
                "{:>12.3} {:>14.12} {:>10} {inverse}",
                value.value_iterated_to() as f64 / 1000.0,
                q,
                cumulative,
            );
        }
    }
    let _ = writeln!(
        text,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    );
    let _ = writeln!(
        text,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    let _ = writeln!(
        text,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    text
}

/// The interval log (`.hlog`), one V2Deflate-compressed histogram per interval, in
/// microseconds (read with HdrHistogram's `HistogramLogProcessor`).
pub fn hlog(outcome: &Outcome) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let start = std::time::UNIX_EPOCH + Duration::from_secs_f64(outcome.started_unix_s);
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!("loadgen run {:06x}: latency from intended send time, microseconds", outcome.run_id))
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut out, &mut serializer)
        .context("starting the interval log")?;
    for row in &outcome.intervals {
        let begin = Duration::from_secs_f64((row.end_s - row.seconds).max(0.0));
        writer
            .write_histogram(&row.histogram, begin, Duration::from_secs_f64(row.seconds), None)
            .map_err(|e| anyhow::anyhow!("writing the interval log: {e:?}"))?;
    }
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line chart: series of (x, y) with a legend, as inline SVG.
/// The smallest 1, 2, 2.5 or 5 times a power of ten at least `raw`: a readable axis step.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|&n| fraction <= n).unwrap_or(10.0);
    nice * magnitude
}

/// One line of a chart: its name, colour and points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let (width, height, left, bottom, top, right) = (860.0, 280.0, 70.0, 34.0, 28.0, 150.0);
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1e-9, f64::max);
    let step = nice_step(points.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05 / 4.0);
    let y_max = step * 4.0;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let sx = |x: f64| left + x / x_max * plot_w;
    let sy = |y: f64| top + plot_h - y / y_max * plot_h;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = write!(svg, "<text x=\"{left}\" y=\"18\" class=\"title\">{}</text>", escape(title));
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            sy(y),
            sy(y),
            left - 6.0,
            sy(y) + 4.0,
            if step >= 1.0 { format!("{y:.0}") } else { format!("{y:.2}") }
        );
    }
    for i in 0..=5 {
        let x = x_max * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">{x:.0} s</text>",
            sx(x),
            height - 12.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"12\" y=\"{}\" class=\"axis\" transform=\"rotate(-90 12 {})\">{}</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit)
    );
    for (index, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = top + 14.0 + index as f64 * 18.0;
        let _ = write!(
            svg,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>",
            width - right + 10.0,
            width - right + 30.0,
            width - right + 36.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The self-contained HTML report.
pub fn html(outcome: &Outcome, summary_text: &str) -> String {
    let rows = &outcome.intervals;
    let rate =
        |f: &dyn Fn(&crate::engine::IntervalRow) -> f64| rows.iter().map(|r| (r.end_s, f(r))).collect::<Vec<_>>();
    let q = |quantile: f64| {
        rows.iter()
            .filter(|r| !r.histogram.is_empty())
            .map(|r| (r.end_s, ms(r.histogram.value_at_quantile(quantile))))
            .collect::<Vec<_>>()
    };
    let tps = chart(
        "Offered vs achieved rate",
        "requests per second",
        &[
            ("target", "#999999", rate(&|r| r.target_tps)),
            ("offered", "#1f77b4", rate(&|r| r.offered_tps())),
            ("achieved", "#2ca02c", rate(&|r| r.achieved_tps())),
        ],
    );
    let latency = chart(
        "Latency from intended send, per interval",
        "milliseconds",
        &[
            ("p50", "#2ca02c", q(0.5)),
            ("p90", "#1f77b4", q(0.9)),
            ("p99", "#ff7f0e", q(0.99)),
            ("p99.9", "#d62728", q(0.999)),
        ],
    );
    let mut codes = String::new();
    let total: u64 = outcome.codes.values().sum();
    for (&(kind, code), &count) in &outcome.codes {
        let share = count as f64 * 100.0 / total.max(1) as f64;
        let _ = write!(
            codes,
            "<tr><td>{}</td><td>{}</td><td>{code}</td><td class=\"n\">{count}</td><td class=\"n\">{share:.3}%</td><td><div class=\"bar\" style=\"width:{:.1}px\"></div></td></tr>",
            kind.name(),
            escape(&code_name(code)),
            share * 3.0
        );
    }
    let mut settings = String::new();
    for (key, value) in &outcome.settings {
        let _ = write!(settings, "<tr><th>{}</th><td>{}</td></tr>", escape(key), escape(value));
    }
    let verdict = if outcome.valid() {
        "<p class=\"ok\">Valid: the schedule was kept and every request was answered exactly once.</p>".to_string()
    } else {
        format!("<p class=\"bad\">INVALID: {}</p>", escape(&outcome.invalid_reasons().join("; ")))
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>loadgen run {run:06x}</title>\n<style>\n\
         body{{font-family:sans-serif;margin:24px;color:#222}} h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px}}\n\
         table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}} .n{{text-align:right}}\n\
         .bar{{height:10px;background:#1f77b4}} .ok{{color:#2a7a2a;font-weight:bold}} .bad{{color:#b22;font-weight:bold}}\n\
         pre{{background:#f6f6f6;padding:10px}} .grid{{stroke:#e4e4e4}} .axis{{font-size:11px;fill:#555}}\n\
         .title{{font-size:13px;font-weight:bold}} .legend{{font-size:12px}}\n</style></head><body>\n\
         <h1>Load generator run {run:06x}</h1>\n{verdict}\n<h2>Rate</h2>\n{tps}\n<h2>Latency</h2>\n{latency}\n\
         <h2>Reply codes</h2>\n<table><tr><th>kind</th><th>code</th><th></th><th>count</th><th>share</th><th></th></tr>{codes}</table>\n\
         <h2>Summary</h2>\n<pre>{summary}</pre>\n<h2>Configuration</h2>\n<table>{settings}</table>\n</body></html>\n",
        run = outcome.run_id,
        summary = escape(summary_text),
    )
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half a file.
pub fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn axis_steps_are_round() {
        for (raw, step) in [(5_251.0, 10_000.0), (4_999.0, 5_000.0), (0.3, 0.5), (2.2, 2.5), (1.0, 1.0)] {
            assert_eq!(super::nice_step(raw), step, "{raw}");
        }
    }
}
