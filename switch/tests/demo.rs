//! The README's main command, end to end: `switch demo` starts a real switch process,
//! replays a holiday profile through it with the load generator, closes the window and
//! reconciles. Then reconciliation is shown to catch an injected missing, extra and
//! altered transaction in that real output.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run_dir(root: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    runs.pop().expect("a run directory")
}

#[test]
fn the_demo_replays_a_profile_and_reconciles_exactly() {
    let root = std::env::temp_dir().join(format!("switch-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let output = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["demo", "--duration", "4s", "--peak-tps", "1500", "--dir"])
        .arg(&root)
        // Everything the switch can log, so the leak scan below sees it all.
        .env("RUST_LOG", "debug")
        .output()
        .expect("run the demo");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // A debug build on a shared box may send a few requests late (exit 2, the run marked
    // invalid); everything else must hold either way.
    let code = output.status.code();
    assert!(code == Some(0) || code == Some(2), "{text}");
    if code == Some(2) {
        assert!(text.contains("sends left more than 10 ms"), "invalid for another reason: {text}");
    }
    assert!(text.contains("s] d0 2") && text.contains("achieved"), "the live view shows the profile clock: {text}");
    assert!(text.contains("clean: every approval the generator saw is in clearing exactly once"), "{text}");
    let dir = run_dir(&root);
    for file in ["report.html", "summary.json", "latency.hgrm", "latency.hlog", "record.csv", "switch.log"] {
        assert!(dir.join(file).is_file(), "{file} missing in {}", dir.display());
    }
    let record = dir.join("record.csv");
    let clean = loadgen::reconcile::reconcile(&record, &dir.join("data")).unwrap();
    assert!(clean.is_clean() && clean.approved > 1000, "{}", clean.render());
    no_full_payment_code_leaks(&dir, &text);

    // Inject: an approval clearing never saw (missing); an altered amount (mismatched);
    // a dropped approval and an approval turned decline (extra: clearing has them, the
    // record does not approve them).
    let text = std::fs::read_to_string(&record).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let approved: Vec<usize> = (2..lines.len())
        .filter(|&i| lines[i].split(',').nth(4) == Some("0") && lines[i].contains(",payment,"))
        .collect();
    let (drop, alter, decline) = (approved[10], approved[20], approved[30]);
    let mut fields: Vec<String> = lines[alter].split(',').map(str::to_string).collect();
    fields[5] = (fields[5].parse::<u64>().unwrap() + 1).to_string();
    lines[alter] = fields.join(",");
    let mut fields: Vec<String> = lines[decline].split(',').map(str::to_string).collect();
    fields[4] = "2".into();
    lines[decline] = fields.join(",");
    let dropped_reference = lines[drop].split(',').next().unwrap().to_string();
    lines.remove(drop);
    let mut invented: Vec<String> = lines[2].split(',').map(str::to_string).collect();
    invented[0] = "00000000DEADBEEF".into();
    invented[4] = "0".into();
    lines.push(invented.join(","));
    let tampered = dir.join("tampered.csv");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let found = loadgen::reconcile::reconcile(&tampered, &dir.join("data")).unwrap();
    let report = found.render();
    assert_eq!((found.missing.len(), found.extra.len(), found.mismatched.len()), (1, 2, 1), "{report}");
    assert!(found.missing[0].starts_with("00000000DEADBEEF"), "{report}");
    // The dropped approval is in clearing with no approval in the record: extra.
    assert!(found.extra.iter().any(|e| e.starts_with(&dropped_reference)), "{report}");
    assert!(report.contains("NOT CLEAN"));
    let _ = std::fs::remove_dir_all(&root);
}

/// Every payment code the switch journalled, in full (the journal is the one place that
/// keeps them: it must, to refuse a code's reuse after a restart).
fn journalled_codes(data: &Path) -> std::collections::HashSet<String> {
    let mut codes = std::collections::HashSet::new();
    for (_, dir) in switch::settlement::clearing::shard_dirs(data).unwrap() {
        switch::durability::journal::read_with(&dir, None, |_, record| {
            if let switch::core::record::Record::Admitted { payment_code: Some(code), .. } = record {
                codes.insert(code.digits().to_string());
            }
        })
        .unwrap();
    }
    codes
}

/// No full payment code in any file of the run but the journal's segments, in the demo's
/// own output, or in `switch journal inspect`: only masked forms (first 6, last 4).
fn no_full_payment_code_leaks(dir: &Path, demo_output: &str) {
    let codes = journalled_codes(&dir.join("data"));
    assert!(codes.len() > 500, "the run used payment codes: {}", codes.len());
    let inspect = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["journal", "inspect", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .expect("journal inspect");
    let inspected = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(inspect.status.success() && inspected.contains("******"), "inspect shows masked codes");
    let mut texts = vec![
        ("demo output".to_string(), demo_output.as_bytes().to_vec()),
        ("journal inspect".into(), inspected.into_bytes()),
    ];
    let mut pending = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_none_or(|e| e != "journal") {
            files += 1;
            texts.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(files >= 10, "scanned {files} files");
    for (name, bytes) in &texts {
        // Every run of digits long enough to be a code, checked against the codes used.
        for run in bytes.split(|b| !b.is_ascii_digit()).filter(|run| run.len() >= 16) {
            let run = std::str::from_utf8(run).unwrap();
            for start in 0..run.len() {
                for end in start + 16..=run.len() {
                    assert!(!codes.contains(&run[start..end]), "a full payment code in {name}: {}******", &run[..6]);
                }
            }
        }
    }
}
