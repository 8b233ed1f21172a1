//! Clearing closes that survive interruption, on the real switch process and the README's
//! commands: a close killed at any of its steps (`SWITCH_FAULT`, `clearing::close`) is
//! finished, loudly, by the next start or the next close, and no window is skipped: every
//! approval is in exactly one window's files. The embedded default's offline close clears
//! converted (cross-border) payments.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codec::{InstitutionId, Message};
use common::{Process, free_port, http, switch_cli};

/// A switch on the embedded default (two shards) over `data_dir`, with `env` set.
struct Switch {
    process: Process,
    port: u16,
    admin: SocketAddr,
}

async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Switch {
    let (port, admin_port) = (free_port(), free_port());
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.with_extension("log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--shards", "2", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("switch starts");
    let switch =
        Switch { process: Process(child), port, admin: format!("127.0.0.1:{admin_port}").parse().expect("address") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(switch.admin, "GET", "/readyz", None).map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "the switch did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    switch
}

impl Switch {
    /// Closes a window through the admin port: its number, or `None` when the process
    /// died (a fault point) or refused.
    fn close(&self, data_dir: &Path) -> Result<u64, String> {
        let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("token");
        match http(self.admin, "POST", "/clearing/close", Some(token.trim())) {
            Some((200, body)) => {
                let document: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                Ok(document["window"].as_u64().expect("a window"))
            }
            Some((status, body)) => Err(format!("{status}: {body}")),
            None => Err("no answer".into()),
        }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = http(self.admin, "GET", "/metrics", None)?;
        text.lines().find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
    }

    /// Waits until the process has ended (a fault point stopped it).
    fn wait_dead(mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.process.0.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the fault point did not stop the switch");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `count` approved payments of each kind through `switch`, ids tagged `tag`: payment codes
/// ACQ0002 presents to WeChat Pay (answered by it), and QR payments the Thai wallet
/// WALTH01 pays at a UnionPay merchant (converted to THB). Returns the approved ids.
async fn traffic(switch: &Switch, tag: &str, count: u64) -> Vec<String> {
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(switch.port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let merchant = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(switch.port, "UNIONPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let mut acquirer = common::signed_on(switch.port, "ACQ0002").await;
    let mut wallet = common::signed_on(switch.port, "WALTH01").await;
    let mut approved = Vec::new();
    for n in 0..count {
        let id = format!("{tag}-P{n}");
        let mut request = common::payment_code_request();
        request.details.originator = InstitutionId::new("ACQ0002").expect("valid");
        request.details.originator_transaction_id = id.parse().expect("valid");
        request.payment_code =
            format!("13{:04}{n:012}", tag.len() * 100 + usize::from(tag.as_bytes()[0])).parse().expect("valid");
        acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
        let reply = common::next_payment_reply(&mut acquirer).await;
        assert_eq!(reply.code, 0, "{reply:?}");
        approved.push(id);
        let id = format!("{tag}-Q{n}");
        let mut request = common::qr_payment_request();
        request.details.originator = InstitutionId::new("WALTH01").expect("valid");
        request.details.originator_transaction_id = id.parse().expect("valid");
        wallet.writer.send(&Message::QrPaymentRequest(request.into())).await.expect("send");
        let reply = common::next_payment_reply(&mut wallet).await;
        assert_eq!(reply.code, 0, "{reply:?}");
        assert_eq!(reply.conversion.payer_currency, 764, "converted to THB: {reply:?}");
        approved.push(id);
    }
    issuer.abort();
    merchant.abort();
    approved
}

/// Every closed window's files: window, then each participant's CSV rows' transaction
/// ids. Each window must be complete (its summary written) and balanced.
fn windows(data_dir: &Path) -> BTreeMap<u64, BTreeMap<String, Vec<String>>> {
    let mut windows = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join("clearing")) else { return windows };
    for entry in entries {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let window: u64 = name.strip_prefix("window-").and_then(|n| n.parse().ok()).expect("window-N");
        let summary = std::fs::read(path.join("summary.json"))
            .unwrap_or_else(|_| panic!("window {window} has no summary: its close was never finished"));
        let summary: serde_json::Value = serde_json::from_slice(&summary).expect("JSON");
        for (currency, sum) in summary["sum_minor_by_currency"].as_object().expect("sums") {
            assert_eq!(sum, 0, "window {window}, currency {currency}");
        }
        let mut files = BTreeMap::new();
        for file in std::fs::read_dir(&path).expect("window") {
            let file = file.expect("entry").path();
            let name = file.file_name().and_then(|n| n.to_str()).expect("name").to_string();
            assert!(!name.ends_with(".partial") && !name.starts_with('.'), "left behind: {}", file.display());
            if let Some(participant) = name.strip_suffix(".csv") {
                let text = std::fs::read_to_string(&file).expect("CSV");
                let ids =
                    text.lines().skip(1).map(|row| row.split(',').nth(1).expect("id").trim_matches('"').to_string());
                files.insert(participant.to_string(), ids.collect());
            }
        }
        windows.insert(window, files);
    }
    windows
}

/// Every approval is in exactly one window's files (in its payer's and its payee's), the
/// windows run from 1 without a gap, and the QR payments' conversions reached the
/// operator's file.
fn assert_cleared_once(data_dir: &Path, approved: &[String]) {
    let windows = windows(data_dir);
    let numbers: Vec<u64> = windows.keys().copied().collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>(), "no window skipped");
    for id in approved {
        let (payer, payee) = if id.contains("-Q") { ("WALTH01", "UNIONPAY") } else { ("WECHATPAY", "ACQ0002") };
        for participant in [payer, payee] {
            let found: Vec<u64> = windows
                .iter()
                .flat_map(|(window, files)| {
                    files.get(participant).into_iter().flatten().filter(|row| *row == id).map(move |_| *window)
                })
                .collect();
            assert_eq!(found.len(), 1, "{id} in {participant}'s files of windows {found:?}");
        }
        if id.contains("-Q") {
            let operator = windows.values().flat_map(|files| files.get("CSWITCH").into_iter().flatten());
            assert_eq!(operator.filter(|row| *row == id).count(), 1, "{id}: the operator's exchange row");
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switch-close-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("log"));
    dir
}

/// The README's clearing commands on the embedded default, with the weekday mix's
/// cross-border payments in the window: the offline close, and a rebuild of what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_offline_close_clears_conversions_on_the_embedded_default() {
    let data_dir = temp_dir("readme");
    let data = data_dir.to_str().expect("utf-8");
    let switch = start(&data_dir, &[]).await;
    let approved = traffic(&switch, "R", 5).await;
    drop(switch);
    let (ok, text) = switch_cli(&["clearing", "close", "--data-dir", data]);
    assert!(ok && text.contains("window 1 closed"), "{text}");
    assert_cleared_once(&data_dir, &approved);
    let before = common::read_window(&data_dir, 1);
    let wallet = &before.iter().find(|(name, _)| name == "WALTH01.csv").expect("the wallet's file").1;
    assert!(String::from_utf8_lossy(wallet).contains(",payment,debit,3800,156,UNIONPAY,0,18760,764,"), "paid in THB");
    let (ok, text) = switch_cli(&["clearing", "rebuild", "--data-dir", data, "--window", "1"]);
    assert!(ok, "{text}");
    assert_eq!(common::read_window(&data_dir, 1), before, "rebuilt byte for byte");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// An offline close killed at each of its steps: the next offline close finishes it (a cut
/// some shards miss, files not written) before it closes a window of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_close_killed_at_any_step_is_finished_by_the_next() {
    for point in ["close-after-inputs", "close-after-first-cut", "close-after-cuts", "close-mid-files"] {
        let data_dir = temp_dir(point);
        let data = data_dir.to_str().expect("utf-8");
        let switch = start(&data_dir, &[]).await;
        let approved = traffic(&switch, "O", 3).await;
        drop(switch);
        let output = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["clearing", "close", "--data-dir", data])
            .env("SWITCH_FAULT", point)
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{point}: the fault point stops the close");
        let (ok, text) = switch_cli(&["clearing", "close", "--data-dir", data]);
        assert!(ok, "{point}: {text}");
        let closed = if point == "close-after-inputs" { 1 } else { 2 };
        assert!(text.contains(&format!("window {closed} closed")), "{point}: {text}");
        assert_cleared_once(&data_dir, &approved);
        let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", data]);
        assert!(ok, "{point}: {text}");
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}

/// A running switch killed at each step of a close: at its next start it journals a cut
/// some shards missed and writes the files of a cut window, and the next close is the next
/// window. A close whose files cannot be written is refused, and so is every later one
/// until they can: no window is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_killed_during_a_close_finishes_it_at_its_next_start() {
    for point in
        ["close-after-inputs", "close-after-first-cut", "close-after-cuts", "close-mid-files", "close-after-files"]
    {
        let data_dir = temp_dir(&format!("running-{point}"));
        let switch = start(&data_dir, &[("SWITCH_FAULT", point)]).await;
        let mut approved = traffic(&switch, "A", 3).await;
        assert!(switch.close(&data_dir).is_err(), "{point}: the fault point stops the switch");
        switch.wait_dead();
        let switch = start(&data_dir, &[]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while switch.metric("switch_clearing_incomplete_windows") != Some(0.0) {
            assert!(Instant::now() < deadline, "{point}: the interrupted close was not finished at start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        approved.extend(traffic(&switch, "B", 3).await);
        let expected = if point == "close-after-inputs" { 1 } else { 2 };
        assert_eq!(switch.close(&data_dir), Ok(expected), "{point}");
        drop(switch);
        assert_cleared_once(&data_dir, &approved);
        let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
        if point != "close-after-inputs" && point != "close-after-files" {
            assert!(log.contains("interrupted close completed"), "{point}: said loudly\n{log}");
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    // The files cannot be written (here: `clearing` is a file, not a directory): the close
    // fails after its cut, the window waits, and so does the next close.
    let data_dir = temp_dir("unwritable");
    let switch = start(&data_dir, &[]).await;
    let mut approved = traffic(&switch, "C", 3).await;
    std::fs::write(data_dir.join("clearing"), "in the way").expect("file");
    assert!(switch.close(&data_dir).is_err());
    assert_eq!(switch.metric("switch_clearing_incomplete_windows"), Some(1.0));
    approved.extend(traffic(&switch, "D", 2).await);
    let refused = switch.close(&data_dir).expect_err("window 1 must be finished first");
    assert!(refused.contains("window 1: an interrupted close cannot be finished"), "{refused}");
    std::fs::remove_file(data_dir.join("clearing")).expect("out of the way");
    assert_eq!(switch.close(&data_dir), Ok(2), "window 1 first, then window 2");
    assert_eq!(switch.metric("switch_clearing_incomplete_windows"), Some(0.0));
    drop(switch);
    assert_cleared_once(&data_dir, &approved);
    let _ = std::fs::remove_dir_all(&data_dir);
}
