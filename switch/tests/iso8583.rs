//! ISO 8583 participants end to end, against a client we did not write: a pyiso8583
//! participant (`tests/interop/iso8583_participant.py`) reading the same profile file.
//!
//! - An ISO 8583 acquirer signs on (0800 001), pays a native wallet twice (0200 → 0210
//!   with DE39 00 and an authorisation code), echoes (301) and signs off (002).
//! - A native acquirer and a native wallet reach an ISO 8583 network, in both payment
//!   modes (a payment code, a merchant QR): the network answers 0210 and the natives see
//!   approvals.
//! - A participant that is not configured for ISO 8583 is refused (0810 DE39 58); bytes
//!   that are not ISO 8583 close their connection and nothing else.
//! - The window's clearing files hold the ISO 8583 participants' transactions.
//!
//! Needs python3 with pyiso8583 (`.ci/test` installs it); without it the test fails and says so.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codec::field::FieldText;
use codec::{InstitutionId, Message};
use common::free_port;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/iso8583_participant.py")
}

fn profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../codec/profiles/iso8583/binary.json")
}

fn participant(command: &[&str]) -> Command {
    let mut python = Command::new("python3");
    python.arg(script()).args(command);
    python
}

/// The configuration: two natives (an acquirer, two wallets), an ISO 8583 acquirer and an
/// ISO 8583 network that payment codes from 62 and UnionPay QR codes lead to.
fn config(dir: &Path, port: u16, iso_port: u16, admin_port: u16) -> PathBuf {
    let mut text = common::iso8583_switch(port, admin_port, iso_port, "binary");
    text.push_str(
        "[session]\nsign_on_timeout_ms = 1000\n\n\
         [exchange]\nreply_deadline_ms = 1500\nreversal_retry_ms = 500\n\n\
         [[issuer_prefix]]\nprefix = \"13\"\nlength_min = 18\nlength_max = 18\nissuer = \"WECHATPAY\"\n\n\
         [[issuer_prefix]]\nprefix = \"62\"\nlength_min = 19\nlength_max = 19\nissuer = \"UPIISO01\"\n\n\
         [[qr_network]]\nguid = \"A000000333010101\"\nacquirer = \"UPIISO01\"\n\n",
    );
    for (id, roles, protocol) in [
        ("ACQ0001", "\"acquirer\"", "native"),
        ("WECHATPAY", "\"issuer\", \"acquirer\"", "native"),
        ("WAL0001", "\"issuer\"", "native"),
        ("ACQISO01", "\"acquirer\"", "iso8583"),
        ("UPIISO01", "\"issuer\", \"acquirer\", \"network\"", "iso8583"),
    ] {
        // ISO 8583 participants need no key: they sign on without a proof.
        text.push_str(&match protocol {
            "iso8583" => common::iso8583_participant(id, roles),
            _ => common::demo_participant(id, roles, ""),
        });
    }
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The switch on `config`'s configuration in `dir`, once both its listeners answer.
async fn start(dir: &Path, port: u16, iso_port: u16, admin_port: u16) -> common::Process {
    let config = config(dir, port, iso_port, admin_port);
    let switch = common::start_switch(&config, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", iso_port)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    {
        assert!(Instant::now() < deadline, "the switch did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    switch
}

// Multi-threaded: the native wallet's task answers while this one waits on the Python client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso8583_participants_pay_and_are_paid_through_the_switch() {
    common::require_pyiso8583();
    let dir = std::env::temp_dir().join(format!("switch-iso8583-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, iso_port, admin_port) = (free_port(), free_port(), free_port());
    let _switch = start(&dir, port, iso_port, admin_port).await;
    let iso = iso_port.to_string();
    let profile = profile().display().to_string();

    // The ISO 8583 network signs on and answers three requests.
    let mut network = participant(&["network", "127.0.0.1", &iso, &profile, "UPIISO01", "3"])
        .env("SILENT_FIRST", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut network_out = BufReader::new(network.stdout.take().expect("stdout"));
    let mut line = String::new();
    network_out.read_line(&mut line).expect("sign-on line");
    assert_eq!(common::json_lines(&line), [serde_json::json!({"sign_on": "00"})], "{line}");
    // Signed on, a quiet link is held to the idle timeout, not the sign-on deadline (1 s).
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // A native wallet answers what the ISO 8583 acquirer sends it.
    let wechat = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));

    // A native acquirer pays with payment codes the ISO 8583 network issues. The first it
    // leaves unanswered: the acquirer hears Timeout, and the switch sends the network a
    // reversal (0420), which it acknowledges (0430)...
    let mut acquirer = common::signed_on(port, "ACQ0001").await;
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = "ACQ-ISO-T".parse().expect("valid");
    request.payment_code = "6212345678901299999".parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
    assert_eq!(common::next_payment_reply(&mut acquirer).await.code, codec::ReplyCode::Timeout.value());
    for n in 0..2u32 {
        let mut request = common::payment_code_request();
        request.details.originator_transaction_id = format!("ACQ-ISO-{n}").parse().expect("valid");
        request.payment_code = format!("62123456789012{n:05}").parse().expect("valid");
        acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
        let reply = common::next_payment_reply(&mut acquirer).await;
        assert_eq!(reply.code, 0, "{reply:?}");
        assert_eq!(reply.responder, InstitutionId::new("UPIISO01").expect("valid"));
        assert!(reply.authorization_code.as_str().starts_with("NW"), "{reply:?}");
    }
    // ...and a native wallet pays a merchant QR the ISO 8583 network acquires.
    let mut wallet = common::signed_on(port, "WAL0001").await;
    wallet.writer.send(&Message::QrPaymentRequest(common::qr_payment_request().into())).await.expect("send");
    let reply = common::next_payment_reply(&mut wallet).await;
    assert_eq!(reply.code, 0, "{reply:?}");
    let output = network.wait_with_output().expect("network ends");
    let mut rest = String::new();
    network_out.read_to_string(&mut rest).expect("read");
    let lines = common::json_lines(&rest);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answered: Vec<_> = lines.iter().filter(|line| line.get("answered").is_some()).collect();
    assert_eq!(answered.len(), 3, "{rest}");
    assert_eq!(answered[2]["code"], "", "the QR payment carries no payment code: {rest}");
    let ignored = lines.iter().find_map(|line| line.get("ignored")).expect("one ignored");
    assert_eq!(ignored.as_str().map(str::trim), Some("ACQ-ISO-T"), "DE37: the id's last 12 characters");
    let reversal = lines.iter().find_map(|line| line.get("reversal")).expect("the switch reversed it");
    assert_eq!(reversal, "ACQ-ISO-T", "the reversal names the timed-out payment (DE48 09): {rest}");

    // The ISO 8583 acquirer pays the native wallet twice, echoes and signs off.
    let output =
        participant(&["acquirer", "127.0.0.1", &iso, &profile, "ACQISO01", "134567890123400001", "134567890123400002"])
            .output()
            .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let lines = common::json_lines(&text);
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0], serde_json::json!({"sign_on": "00"}));
    for (index, reply) in lines[1..3].iter().enumerate() {
        assert_eq!(reply["mti"], "0210", "{reply}");
        assert_eq!(reply["response"], "00", "{reply}");
        assert_eq!(reply["rrn"], reply["rrn_sent"], "{reply}");
        assert_eq!(reply["amount"], format!("{:012}", 1000 + index), "{reply}");
        assert_eq!(reply["currency"], "156", "{reply}");
        assert!(!reply["authorization"].as_str().unwrap_or("").is_empty(), "{reply}");
    }
    // The second payment cancelled (0400 → 0410 DE39 00).
    assert_eq!(lines[3]["mti"], "0410", "{text}");
    assert_eq!(lines[3]["response"], "00", "{text}");
    assert_eq!(lines[3]["cancelled"], lines[2]["rrn_sent"], "{text}");
    assert_eq!(lines[4], serde_json::json!({"echo": "00"}));
    assert_eq!(lines[5], serde_json::json!({"sign_off": "00"}));

    // Refusals: a native participant cannot sign on here; bytes that are not ISO 8583
    // close their own connection and nothing else.
    let claim = participant(&["claim", "127.0.0.1", &iso, &profile, "WECHATPAY"]).output().expect("python3 runs");
    let claim = String::from_utf8_lossy(&claim.stdout).to_string();
    assert_eq!(common::json_lines(&claim), [serde_json::json!({"sign_on": "58"})], "{claim}");
    for garbage in [&b"\xff\xff not an ISO 8583 message at all"[..], &[0u8, 3, 1, 2, 3][..], &[0u8, 0][..]] {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", iso_port)).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        raw.write_all(garbage).expect("write");
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }
    // Signed on as itself, a participant cannot pay as another.
    let spoof = participant(&["spoof", "127.0.0.1", &iso, &profile, "ACQISO01", "ACQ0001", "134567890123400003"])
        .output()
        .expect("python3 runs");
    let spoof = common::json_lines(&String::from_utf8_lossy(&spoof.stdout));
    assert_eq!(spoof.len(), 2, "{spoof:?}");
    assert_eq!(spoof[1]["response"], "58", "{spoof:?}");
    let again = participant(&["claim", "127.0.0.1", &iso, &profile, "ACQISO01"]).output().expect("python3 runs");
    assert_eq!(common::json_lines(&String::from_utf8_lossy(&again.stdout)), [serde_json::json!({"sign_on": "00"})]);

    // The network's 0430 acknowledged the reversal: the journal says so.
    let inspect = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["journal", "inspect", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .expect("switch runs");
    let journal = String::from_utf8_lossy(&inspect.stdout);
    // Two reversals: the network's timed-out payment, and the ISO acquirer's cancel (the
    // native wallet acknowledges it).
    assert_eq!(journal.matches("reversal  ").count(), 2, "{journal}");
    assert_eq!(journal.matches(" acknowledged at ").count(), 2, "{journal}");

    // The clearing files hold the ISO 8583 participants' transactions.
    let token = std::fs::read_to_string(dir.join("data/admin.token")).expect("token");
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let closed = common::http(admin, "POST", "/clearing/close", Some(token.trim()));
    assert!(closed.as_ref().is_some_and(|(status, _)| *status == 200), "{closed:?}");
    let window = dir.join("data/clearing/window-000001");
    let credits = |file: &str| {
        std::fs::read_to_string(window.join(file))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(",credit,"))
            .count()
    };
    assert_eq!(credits("ACQISO01.csv"), 2, "the ISO 8583 acquirer was paid twice");
    let acquirer_file = std::fs::read_to_string(window.join("ACQISO01.csv")).expect("file");
    assert_eq!(acquirer_file.matches(",reversal,debit,").count(), 1, "its cancel gives one back:\n{acquirer_file}");
    assert_eq!(credits("UPIISO01.csv"), 1, "the ISO 8583 network acquired the QR payment");
    assert_eq!(credits("ACQ0001.csv"), 2, "the native acquirer was paid by the ISO 8583 issuer");
    wechat.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a jPOS-style host expects: its own DE11, DE37, DE41 and DE42 back in every answer,
/// and an answer to every message whose MTI and DE11 can be read (DE39 30 when it is
/// malformed, 12 when the switch does not do what DE3 or the MTI asks), the link up
/// throughout. And a partial approval (DE39 10) from an ISO 8583 issuer is refused and
/// reversed, as the native protocol's is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso8583_hosts_get_their_fields_back_and_an_answer_to_every_readable_message() {
    common::require_pyiso8583();
    let dir = std::env::temp_dir().join(format!("switch-iso8583-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, iso_port, admin_port) = (free_port(), free_port(), free_port());
    let _switch = start(&dir, port, iso_port, admin_port).await;
    let iso = iso_port.to_string();
    let profile = profile().display().to_string();
    let wechat = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "WECHATPAY").await,
        loadgen::responder::Behaviour::default(),
    ));

    let output = participant(&["conformance", "127.0.0.1", &iso, &profile, "ACQISO01", "134567890123400077"])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let lines = common::json_lines(&text);
    assert_eq!(lines.first(), Some(&serde_json::json!({"sign_on": "00"})), "{text}");
    assert_eq!(lines.last(), Some(&serde_json::json!({"sign_off": "00"})), "the link stayed up: {text}");
    let answers: Vec<_> = lines.iter().filter(|line| line.get("case").is_some()).collect();
    assert_eq!(answers.len(), 101, "an answer to each of the 100 malformed and to the payment: {text}");
    for answer in answers {
        let sent: u32 = answer["mti_sent"].as_str().and_then(|m| m.parse().ok()).expect("an MTI");
        assert_eq!(answer["mti"], format!("{:04}", sent + 10), "{answer}");
        assert_eq!(answer["response"], answer["expected"], "{answer}");
        for field in ["stan", "rrn", "tid", "mid"] {
            assert_eq!(answer[field], answer[&format!("{field}_sent")], "{field} echoed: {answer}");
        }
    }
    // Counted by outcome: 27 of the 100 ask for what the switch does not carry (DE3 99,
    // DE3 to-account 99, MTI 0100), 73 are malformed; one could not be answered.
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let (_, metrics) = common::http(admin, "GET", "/metrics", None).expect("metrics");
    for (outcome, count) in [("malformed", 73), ("unsupported", 27), ("unanswerable", 1)] {
        let line = format!("switch_iso8583_refused_total{{outcome=\"{outcome}\"}} {count}\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    // An ISO 8583 issuer approves half of what was asked (DE39 10): the native acquirer is
    // told ApprovalMismatch and the issuer gets a reversal advice (0420) for it.
    let mut network = participant(&["network", "127.0.0.1", &iso, &profile, "UPIISO01", "2"])
        .env("PARTIAL_FIRST", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut network_out = BufReader::new(network.stdout.take().expect("stdout"));
    let mut line = String::new();
    network_out.read_line(&mut line).expect("sign-on line");
    assert_eq!(common::json_lines(&line), [serde_json::json!({"sign_on": "00"})], "{line}");
    let mut acquirer = common::signed_on(port, "ACQ0001").await;
    for (n, expected) in [(0u32, codec::ReplyCode::ApprovalMismatch), (1, codec::ReplyCode::Approved)] {
        let mut request = common::payment_code_request();
        request.details.originator_transaction_id = format!("ACQ-PARTIAL-{n}").parse().expect("valid");
        request.payment_code = format!("62123456789077{n:05}").parse().expect("valid");
        acquirer.writer.send(&Message::PaymentCodeRequest(request.clone())).await.expect("send");
        let reply = common::next_payment_reply(&mut acquirer).await;
        assert_eq!(reply.code, expected.value(), "{reply:?}");
        assert_eq!(reply.amount_minor, request.details.amount_minor, "the amount asked, never the partial one");
    }
    let output = network.wait_with_output().expect("network ends");
    let mut rest = String::new();
    network_out.read_to_string(&mut rest).expect("read");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reversal = common::json_lines(&rest).into_iter().find_map(|line| line.get("reversal").cloned());
    assert_eq!(reversal, Some(serde_json::json!("ACQ-PARTIAL-0")), "the partial approval is reversed: {rest}");
    wechat.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
