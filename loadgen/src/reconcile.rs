//! Proves nothing was lost: the generator's record of every reply it saw (`--record`)
//! against the switch's clearing files.
//!
//! Rules, per switch reference of this run (transaction ids carry the run id):
//! - an `Approved` payment or refund in the record must be in clearing exactly once, net
//!   of reversals, with the same amount and currency, between the same two participants;
//! - anything else in the record (declined, timed out, busy) must net to nothing;
//! - a request the record holds as in doubt (sent, never answered: the switch went away,
//!   or the drain ran out) may be in clearing once or not at all, with its amount and
//!   currency, never twice: the switch decided, and the originator would ask it;
//! - a transaction of this run in clearing that the record does not hold as approved or in
//!   doubt is extra (an approval the originator never saw, or one counted twice).
//!
//! Clearing entries are read from the payee's side (`direction = credit`): each entry is
//! in exactly two participants' files, once as a credit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::traffic::parse_id;

/// One approved or refused transaction in the generator's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub reference: String,
    pub originator: String,
    pub id: String,
    pub kind: String,
    /// The reply's code; `None`: in doubt (no reply came).
    pub code: Option<u16>,
    pub amount_minor: u64,
    pub currency: u16,
    pub responder: String,
}

/// A transaction as clearing has it, net of reversals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cleared {
    net: i64,
    amount_minor: u64,
    currency: u16,
    /// Payee and payer.
    parties: (String, String),
    /// The originator's transaction id.
    id: String,
    windows: Vec<String>,
}

/// What reconciliation found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub run_id: u32,
    pub record_rows: u64,
    pub approved: u64,
    pub matched: u64,
    /// Requests never answered, and of those, how many clearing holds.
    pub in_doubt: u64,
    pub in_doubt_cleared: u64,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub mismatched: Vec<String>,
    pub windows: Vec<String>,
}

impl Reconciliation {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.mismatched.is_empty()
    }

    pub fn render(&self) -> String {
        let mut text = format!(
            "reconcile run {:06x}: {} replies recorded, {} approved; clearing windows {}\n  matched {}  missing {}  extra {}  mismatched {}\n",
            self.run_id,
            self.record_rows,
            self.approved,
            if self.windows.is_empty() { "(none)".to_string() } else { self.windows.join(", ") },
            self.matched,
            self.missing.len(),
            self.extra.len(),
            self.mismatched.len()
        );
        if self.in_doubt > 0 {
            text.push_str(&format!(
                "  in doubt {} (sent, never answered: each in clearing at most once; {} cleared)\n",
                self.in_doubt, self.in_doubt_cleared
            ));
        }
        for (name, list) in [("missing", &self.missing), ("extra", &self.extra), ("mismatched", &self.mismatched)] {
            for line in list.iter().take(20) {
                text.push_str(&format!("  {name}: {line}\n"));
            }
            if list.len() > 20 {
                text.push_str(&format!("  ... and {} more {name}\n", list.len() - 20));
            }
        }
        text.push_str(if self.is_clean() {
            "clean: every approval the generator saw is in clearing exactly once, and nothing else is\n"
        } else {
            "NOT CLEAN\n"
        });
        text
    }
}

/// Reads a record file.
pub fn read_record(path: &Path) -> anyhow::Result<(u32, Vec<RecordRow>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut lines = text.lines().enumerate();
    let run_id = lines
        .next()
        .and_then(|(_, l)| l.strip_prefix("# loadgen record v1 run="))
        .and_then(|r| u32::from_str_radix(r.trim(), 16).ok())
        .with_context(|| {
            format!("{}:1: not a loadgen record (no \"# loadgen record v1 run=\" line)", path.display())
        })?;
    let mut rows = Vec::new();
    for (index, line) in lines {
        if line.starts_with("switch_reference,") || line.is_empty() {
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("{}:{}: {what}: {line:?}", path.display(), index + 1);
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 8 {
            return Err(bad("expected 8 fields"));
        }
        rows.push(RecordRow {
            reference: fields[0].to_string(),
            originator: fields[1].to_string(),
            id: fields[2].to_string(),
            kind: fields[3].to_string(),
            code: match fields[4] {
                "-" => None,
                code => Some(code.parse().map_err(|_| bad("bad code"))?),
            },
            amount_minor: fields[5].parse().map_err(|_| bad("bad amount"))?,
            currency: fields[6].parse().map_err(|_| bad("bad currency"))?,
            responder: fields[7].to_string(),
        });
    }
    Ok((run_id, rows))
}

/// The window directories under `dir`: a data dir (`clearing/window-*`), a clearing dir
/// (`window-*`), or one window's directory.
fn window_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let base = if dir.join("clearing").is_dir() { dir.join("clearing") } else { dir.to_path_buf() };
    let mut windows: Vec<PathBuf> = std::fs::read_dir(&base)
        .with_context(|| format!("{}: cannot read the clearing directory", base.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("window-")))
        .collect();
    windows.sort();
    if windows.is_empty() {
        if base.join("summary.json").is_file() {
            return Ok(vec![base]);
        }
        bail!("{}: no clearing windows (window-*/) here; close one with `switch clearing close`", base.display());
    }
    Ok(windows)
}

/// Splits one CSV line of a clearing file (the transaction id is quoted, quotes doubled).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Columns of a clearing CSV: the transaction's side (reference, id, time, type, direction,
/// amount, currency, counterparty, fee), then the participant's settlement side (amount,
/// currency) and the conversion's terms (rate, margin, version; empty when none). Entries
/// are matched on the transaction's amount and currency, as the generator sent them.
const CLEARING_CSV_FIELDS: usize = 14;

/// Compares the record at `record` with the clearing files under `clearing`.
pub fn reconcile(record: &Path, clearing: &Path) -> anyhow::Result<Reconciliation> {
    let (run_id, rows) = read_record(record)?;
    let mut cleared: BTreeMap<String, Cleared> = BTreeMap::new();
    let mut report = Reconciliation { run_id, record_rows: rows.len() as u64, ..Default::default() };
    for window in window_dirs(clearing)? {
        let window_name = window.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        report.windows.push(window_name.clone());
        for entry in std::fs::read_dir(&window).with_context(|| format!("{}", window.display()))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "csv") {
                continue;
            }
            let owner = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            for (index, line) in text.lines().enumerate().skip(1) {
                let fields = split_csv(line);
                if fields.len() != CLEARING_CSV_FIELDS {
                    bail!(
                        "{}:{}: expected {CLEARING_CSV_FIELDS} fields (the switch's clearing file format): {line:?}",
                        path.display(),
                        index + 1
                    );
                }
                if fields[4] != "credit" || parse_id(&fields[1]).is_none_or(|p| p.run != run_id) {
                    continue;
                }
                let bad = |what: &str| anyhow::anyhow!("{}:{}: {what}: {line:?}", path.display(), index + 1);
                let amount: u64 = fields[5].parse().map_err(|_| bad("bad amount"))?;
                let currency: u16 = fields[6].parse().map_err(|_| bad("bad currency"))?;
                let item = cleared.entry(fields[0].clone()).or_default();
                match fields[3].as_str() {
                    "payment" | "refund" => {
                        item.net += 1;
                        item.amount_minor = amount;
                        item.currency = currency;
                        item.parties = (owner.clone(), fields[7].clone());
                        item.id = fields[1].clone();
                    }
                    "reversal" => item.net -= 1,
                    other => return Err(bad(&format!("unknown type {other:?}"))),
                }
                item.windows.push(window_name.clone());
            }
        }
    }

    let by_id: BTreeMap<String, String> =
        cleared.iter().map(|(reference, c)| (c.id.clone(), reference.clone())).collect();
    for row in rows.iter().filter(|row| row.code.is_none()) {
        report.in_doubt += 1;
        let what = format!("{} {} ({} {} {})", row.originator, row.id, row.kind, row.amount_minor, row.currency);
        let Some(c) = by_id.get(&row.id).and_then(|reference| cleared.remove(reference)) else { continue };
        match c.net {
            0 => {}
            1 if c.amount_minor == row.amount_minor
                && c.currency == row.currency
                && (c.parties.0 == row.originator || c.parties.1 == row.originator) =>
            {
                report.in_doubt_cleared += 1;
            }
            1 => report.mismatched.push(format!(
                "{what}: in doubt; clearing has {} {} between {} and {}",
                c.amount_minor, c.currency, c.parties.0, c.parties.1
            )),
            net => report.extra.push(format!("{what}: in doubt, in clearing {net} times")),
        }
    }
    for row in rows.iter().filter(|row| row.code.is_some()) {
        let code = row.code.unwrap_or_default();
        let approved = code == 0;
        report.approved += u64::from(approved);
        let found = cleared.remove(&row.reference);
        let what = format!(
            "{} {} {} ({} {} {})",
            row.reference, row.originator, row.id, row.kind, row.amount_minor, row.currency
        );
        match (approved, found) {
            (true, None) => report.missing.push(format!("{what}: approved, not in clearing")),
            (true, Some(c)) if c.net == 0 => report.missing.push(format!("{what}: approved, reversed in clearing")),
            (true, Some(c)) if c.net > 1 => report.extra.push(format!("{what}: in clearing {} times", c.net)),
            (true, Some(c)) => {
                let mut parties = [c.parties.0.clone(), c.parties.1.clone()];
                parties.sort();
                let mut expected = [row.originator.clone(), row.responder.clone()];
                expected.sort();
                if c.amount_minor != row.amount_minor || c.currency != row.currency || parties != expected {
                    report.mismatched.push(format!(
                        "{what}: clearing has {} {} between {} and {}",
                        c.amount_minor, c.currency, c.parties.0, c.parties.1
                    ));
                } else {
                    report.matched += 1;
                }
            }
            (false, Some(c)) if c.net != 0 => {
                report.extra.push(format!("{what}: answered {code} but in clearing ({})", c.windows.join(" ")))
            }
            (false, _) => report.matched += 1,
        }
    }
    for (reference, c) in cleared {
        if c.net != 0 {
            report.extra.push(format!(
                "{reference}: in clearing ({} {} between {} and {}), no approval in the record",
                c.amount_minor, c.currency, c.parties.0, c.parties.1
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_unquote() {
        assert_eq!(split_csv("a,\"b,\"\"c\",d"), ["a", "b,\"c", "d"]);
    }

    fn fixture(dir: &Path, record: &str, acquirer_csv: &str) -> anyhow::Result<Reconciliation> {
        std::fs::create_dir_all(dir.join("clearing/window-000001"))?;
        std::fs::write(dir.join("record.csv"), record)?;
        std::fs::write(dir.join("clearing/window-000001/ACQ0001.csv"), acquirer_csv)?;
        std::fs::write(dir.join("clearing/window-000001/summary.json"), "{}")?;
        reconcile(&dir.join("record.csv"), dir)
    }

    const HEADER: &str = "switch_reference,originator_transaction_id,time_ms,type,direction,amount_minor,currency,counterparty,fee_minor,settlement_amount_minor,settlement_currency,rate,margin_basis_points,rate_version\n";

    #[test]
    fn catches_missing_extra_and_altered() {
        let dir = std::env::temp_dir().join(format!("loadgen-reconcile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = "# loadgen record v1 run=abc\nswitch_reference,originator,originator_transaction_id,kind,code,amount_minor,currency,responder\n\
            R1,ACQ0001,abc-0-1-10,payment,0,3800,156,WECHATPAY\n\
            R2,ACQ0001,abc-0-2-20,payment,0,100,156,WECHATPAY\n\
            R3,ACQ0001,abc-0-3-30,payment,2,500,156,WECHATPAY\n";
        let good = format!(
            "{HEADER}R1,\"abc-0-1-10\",1,payment,credit,3800,156,WECHATPAY,0,3800,156,,,\nR2,\"abc-0-2-20\",1,payment,credit,100,156,WECHATPAY,0,100,156,,,\n\
             R9,\"other-run\",1,payment,credit,1,156,WECHATPAY,0,1,156,,,\n"
        );
        let clean = fixture(&dir, record, &good).unwrap();
        assert!(clean.is_clean(), "{}", clean.render());
        assert_eq!((clean.matched, clean.approved), (3, 2));

        // Missing R2, altered R1, an extra approval for declined R3 and one never answered.
        let bad = format!(
            "{HEADER}R1,\"abc-0-1-10\",1,payment,credit,3900,156,WECHATPAY,0,3900,156,,,\nR3,\"abc-0-3-30\",1,payment,credit,500,156,WECHATPAY,0,500,156,,,\n\
             R4,\"abc-0-4-40\",1,payment,credit,7,156,WECHATPAY,0,7,156,,,\n"
        );
        let found = fixture(&dir, record, &bad).unwrap();
        assert_eq!(found.missing.len(), 1, "{}", found.render());
        assert!(found.missing[0].starts_with("R2"));
        assert_eq!(found.mismatched.len(), 1);
        assert!(found.mismatched[0].contains("3900"));
        assert_eq!(found.extra.len(), 2);
        assert!(found.render().contains("NOT CLEAN"));

        // A reversal nets a payment out; a doubled one is extra.
        let reversed = format!(
            "{HEADER}R1,\"abc-0-1-10\",1,payment,credit,3800,156,WECHATPAY,0,3800,156,,,\nR2,\"abc-0-2-20\",1,payment,credit,100,156,WECHATPAY,0,100,156,,,\n\
             R2,\"abc-0-2-20\",2,payment,credit,100,156,WECHATPAY,0,100,156,,,\nR1,\"abc-0-1-10\",3,reversal,credit,3800,156,ACQ0001,0,3800,156,,,\n"
        );
        let found = fixture(&dir, record, &reversed).unwrap();
        assert!(found.missing[0].contains("reversed"), "{}", found.render());
        assert!(found.extra[0].contains("2 times"));

        // In doubt (never answered): in clearing once or not at all, never twice.
        let doubt = "# loadgen record v1 run=abc\nswitch_reference,originator,originator_transaction_id,kind,code,amount_minor,currency,responder\n\
            -,ACQ0001,abc-0-5-50,payment,-,700,156,-\n\
            -,ACQ0001,abc-0-6-60,payment,-,800,156,-\n";
        let once = format!("{HEADER}R5,\"abc-0-5-50\",1,payment,credit,700,156,ACQ0001,0,700,156,,,\n");
        let found = fixture(&dir, doubt, &once).unwrap();
        assert!(found.is_clean(), "{}", found.render());
        assert_eq!((found.in_doubt, found.in_doubt_cleared), (2, 1));
        assert!(found.render().contains("in doubt 2"), "{}", found.render());
        let twice = format!("{once}R5,\"abc-0-5-50\",2,payment,credit,700,156,ACQ0001,0,700,156,,,\n");
        let found = fixture(&dir, doubt, &twice).unwrap();
        assert!(found.extra[0].contains("in doubt, in clearing 2 times"), "{}", found.render());
        let altered = format!("{HEADER}R5,\"abc-0-5-50\",1,payment,credit,701,156,ACQ0001,0,701,156,,,\n");
        assert_eq!(fixture(&dir, doubt, &altered).unwrap().mismatched.len(), 1);

        std::fs::write(dir.join("record.csv"), "not a record\n").unwrap();
        let error = reconcile(&dir.join("record.csv"), &dir).unwrap_err().to_string();
        assert!(error.contains("record.csv:1: not a loadgen record"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
