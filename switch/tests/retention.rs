//! Journal retention on the real switch process: after window closes, segments nothing
//! needs are removed; a restart on what is left (after a SIGKILL) keeps every promise the
//! whole journal kept: recent transactions, duplicates, onboarding changes, the next
//! switch references, and the kept windows rebuild byte-identical; a removed one is
//! refused with a reason, never rebuilt wrong.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use codec::field::FieldText;
use codec::{Message, ReplyCode};
use common::{free_port, http, read_window as window_files, switch_cli};
use loadgen::client::Client;

/// Payments per phase: with 1 MiB segments and 2 shards, a few segments per shard.
const PHASE: u64 = 20_000;
/// In flight at once (sent, then every reply read).
const BATCH: u64 = 1_000;

fn config(dir: &Path, port: u16, admin_port: u16) -> std::path::PathBuf {
    let mut text = format!(
        "[switch]\nid = \"CSWITCH\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         plaintext = true\n\n\
         [journal]\ndata_dir = \"data\"\nsegment_mib = 1\nretain_windows = 1\nrestart_point_records = 10000\n\n\
         [exchange]\ncompleted_max = 2000\n\n\
         [[issuer_prefix]]\nprefix = \"13\"\nlength_min = 18\nlength_max = 18\nissuer = \"WECHATPAY\"\n\n\
         [[issuer_prefix]]\nprefix = \"28\"\nlength_min = 18\nlength_max = 18\nissuer = \"UNIONPAY\"\n\n"
    );
    for (id, roles) in [("ACQ0001", "\"acquirer\""), ("WECHATPAY", "\"issuer\""), ("UNIONPAY", "\"issuer\"")] {
        text.push_str(&common::demo_participant(id, roles, ""));
    }
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("config");
    path
}

async fn ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(admin, "GET", "/readyz", None).map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "the switch did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn payment(id_text: &str, code: u64) -> Message {
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = id_text.parse().expect("valid");
    request.details.transaction_time_ms = common::now_ms();
    request.payment_code = format!("13{code:016}").parse().expect("valid");
    Message::PaymentCodeRequest(request)
}

/// Pays `count` payments numbered from `from` (ids `P{n}`, codes `13{n}`), `BATCH` at a
/// time; returns each reply's (id, code).
async fn pay(acquirer: &mut Client, from: u64, count: u64) -> Vec<(String, u16)> {
    let mut replies = Vec::new();
    for start in (from..from + count).step_by(BATCH as usize) {
        let end = (start + BATCH).min(from + count);
        for n in start..end {
            acquirer.writer.send(&payment(&format!("P{n}"), n)).await.expect("send");
        }
        for _ in start..end {
            let reply = common::next_payment_reply(acquirer).await;
            replies.push((reply.originator_transaction_id.as_str().to_string(), reply.code));
        }
    }
    replies
}

/// The switch references (first column) of a window's acquirer file.
fn references(data: &Path, window: u64) -> HashSet<String> {
    let csv = std::fs::read_to_string(data.join(format!("clearing/window-{window:06}/ACQ0001.csv"))).expect("csv");
    csv.lines().skip(1).map(|line| line.split(',').next().expect("column").to_string()).collect()
}

fn segment_count(data: &Path) -> usize {
    (0..2)
        .map(|shard| {
            std::fs::read_dir(data.join(format!("journal/shard-{shard}")))
                .expect("shard")
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "journal")))
                .count()
        })
        .sum()
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let (_, text) = http(admin, "GET", "/metrics", None).expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_what_nothing_needs_and_a_restart_keeps_every_promise() {
    let dir = std::env::temp_dir().join(format!("switch-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin_port) = (free_port(), free_port());
    let config = config(&dir, port, admin_port);
    let data = dir.join("data");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let switch = common::start_switch(&config, &dir);
    ready(admin).await;
    // The operator token the switch writes (anew at each start).
    let token = || std::fs::read_to_string(data.join("admin.token")).expect("token").trim().to_string();
    let close = || {
        let (status, body) = http(admin, "POST", "/clearing/close", Some(&token())).expect("admin answers");
        assert_eq!(status, 200, "{body}");
    };
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let mut acquirer = common::signed_on(port, "ACQ0001").await;

    // Window 1, with an onboarding change in it: UnionPay suspended.
    let (status, body) =
        http(admin, "POST", "/participants/UNIONPAY/state/suspended", Some(&token())).expect("admin answers");
    assert_eq!(status, 200, "{body}");
    let first = pay(&mut acquirer, 0, PHASE).await;
    assert!(first.iter().all(|(_, code)| *code == 0), "every payment approved");
    close();
    let segments_before = segment_count(&data);
    assert!(segments_before >= 4, "{segments_before} segments: the test needs several per shard");
    assert_eq!(metric(admin, "switch_journal_segments_removed_total"), 0, "one window is kept: nothing to remove");

    // Window 2; its close may remove what only window 1 needed.
    let second = pay(&mut acquirer, PHASE, PHASE).await;
    assert!(second.iter().all(|(_, code)| *code == 0));
    close();
    let removed = metric(admin, "switch_journal_segments_removed_total");
    assert!(removed >= 2, "retention removed {removed} segments");
    assert!(metric(admin, "switch_journal_removed_bytes_total") >= removed * 1_000_000);
    for shard in 0..2 {
        let retained = std::fs::read_to_string(data.join(format!("journal/shard-{shard}/retained"))).expect("marker");
        assert!(retained.trim().parse::<u64>().expect("sequence") > 1);
    }

    // SIGKILL, and a restart on what retention left.
    issuer.abort();
    drop(acquirer);
    drop(switch);
    let data_text = data.to_str().expect("utf-8");
    let (ok, text) = switch_cli(&["journal", "verify", "--data-dir", data_text]);
    assert!(ok && text.contains("older ones removed by retention"), "{text}");
    let (ok, text) = switch_cli(&["clearing", "rebuild", "--data-dir", data_text, "--window", "1"]);
    assert!(!ok && text.contains("journal retention removed them"), "{text}");
    let window_2 = window_files(&data, 2);
    let (ok, text) = switch_cli(&["clearing", "rebuild", "--data-dir", data_text, "--window", "2"]);
    assert!(ok, "{text}");
    assert_eq!(window_files(&data, 2), window_2, "a kept window rebuilds byte-identical");

    let switch = common::start_switch(&config, &dir);
    ready(admin).await;
    // Each shard replayed from its latest restart point, not from what retention kept.
    let log = std::fs::read_to_string(dir.join("switch.log")).expect("log");
    let recovered: Vec<&str> = log.lines().filter(|line| line.contains("journal recovered")).collect();
    assert_eq!(recovered.len(), 2, "{log}");
    for line in recovered {
        let field = |name: &str| -> u64 {
            let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}")) + name.len() + 1;
            line[at..].split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
        };
        assert!(field("replayed_from") > field("first_sequence") + 10_000, "bounded replay: {line}");
        assert!(field("records") < 30_000, "{line}");
    }
    let (_, participants) = http(admin, "GET", "/participants", Some(&token())).expect("admin answers");
    let participants: serde_json::Value = serde_json::from_str(&participants).expect("JSON");
    let list = participants.as_array().or_else(|| participants["participants"].as_array()).expect("a list");
    let unionpay = list.iter().find(|p| p["id"] == "UNIONPAY").expect("UnionPay listed");
    assert_eq!(unionpay["status"], "suspended", "the change from the removed segments is kept: {unionpay}");
    let issuer = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));
    let mut acquirer = common::signed_on(port, "ACQ0001").await;
    // The last payments are still remembered: their ids and codes are duplicates.
    let last = 2 * PHASE - 1;
    acquirer.writer.send(&payment(&format!("P{last}"), 2 * PHASE + 7)).await.expect("send");
    assert_eq!(common::next_payment_reply(&mut acquirer).await.code, ReplyCode::Duplicate.value());
    acquirer.writer.send(&payment("NEW-CODE-REUSED", last)).await.expect("send");
    let reply = common::next_payment_reply(&mut acquirer).await;
    assert_ne!(reply.code, 0, "a used payment code is refused after the restart: {reply:?}");
    // New payments draw new switch references: none reused from the windows before.
    let third = pay(&mut acquirer, 3 * PHASE, 500).await;
    assert!(third.iter().all(|(_, code)| *code == 0));
    close();
    let (old, new) = (references(&data, 2), references(&data, 3));
    assert_eq!(new.len(), 500);
    assert!(old.is_disjoint(&new), "switch references are never reused");
    let summary =
        String::from_utf8(window_files(&data, 3).into_iter().find(|(n, _)| n == "summary.json").expect("summary").1)
            .expect("utf-8");
    assert!(summary.contains("\"156\": 0") || summary.contains("\"156\":0"), "{summary}");
    issuer.abort();
    drop(switch);
    let _ = std::fs::remove_dir_all(&dir);
}
