//! The cross-border gateway end to end, in a real switch process: a Thai wallet settling
//! in THB and an ISO 8583 acquirer (a pyiso8583 client we did not write) transact with
//! Chinese counterparties in CNY.
//!
//! - The ISO 8583 acquirer pays the wallet's payment code: the wallet is told what its
//!   payer pays in THB (the forwarded request's conversion), the acquirer hears it in
//!   DE48 16 of its 0210, and its cancel reverses the THB amount too. Its profile writes
//!   DE43 in GBK, as Chinese hosts do: the wallet reads the merchant's Chinese name.
//! - The wallet pays a CNY merchant's QR: its reply carries the conversion.
//! - The rate table is replaced through the admin API (a higher version only; a bad file
//!   keeps the running table) and the next payment converts at the new rate.
//! - A wallet whose currency has no rate is declined `NoExchangeRate`; a suspended wallet
//!   is not reached at all.
//! - The window's files: the wallet's side in THB, the merchants' in CNY, the operator's FX
//!   position between them, cross-border fees, and every currency summing to zero.
//!
//! Needs python3 with pyiso8583 (`.ci/test` installs it); without it the test fails and says so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use codec::{Conversion, InstitutionId, Message, Reply, ReplyCode};
use common::{free_port, http};
use loadgen::client::Client;

const THB: u16 = 764;

fn rates(version: u32, thb_per_cny: &str) -> String {
    format!(
        "version = {version}\n[[rate]]\nmerchant = \"CNY\"\npayer = \"THB\"\nrate = \"{thb_per_cny}\"\n\
         valid_from = \"2026-01-01T00:00:00+08:00\"\nvalid_until = \"2036-01-01T00:00:00+08:00\"\n"
    )
}

/// A switch with an ISO 8583 acquirer, a native acquirer (the merchant side of QR
/// payments), a Thai wallet (codes from 88) and a Malaysian one (codes from 87) with no
/// rate for its currency. 50 bp FX margin; the ISO acquirer pays 30 bp plus 20 bp on
/// cross-border payments.
fn config(dir: &Path, port: u16, iso_port: u16, admin_port: u16) -> PathBuf {
    std::fs::write(dir.join("rates.toml"), rates(1, "4.9123")).expect("rates");
    let mut text = common::iso8583_switch(port, admin_port, iso_port, "binary-gbk");
    text.push_str(
        "[fx]\nrates = \"rates.toml\"\nmargin_basis_points = 50\n\n\
         [[fee]]\nparticipant = \"ACQISO01\"\nbasis_points = 30\ncross_border_basis_points = 20\n\n\
         [[issuer_prefix]]\nprefix = \"88\"\nlength_min = 18\nlength_max = 18\nissuer = \"WALTH01\"\n\n\
         [[issuer_prefix]]\nprefix = \"87\"\nlength_min = 18\nlength_max = 18\nissuer = \"WALMY01\"\n\n\
         [[qr_network]]\nguid = \"A000000333010101\"\nacquirer = \"ACQ0001\"\n\n",
    );
    for (id, roles, extra) in [
        ("ACQ0001", "\"acquirer\"", ""),
        ("ACQISO01", "\"acquirer\"", "protocol = \"iso8583\"\n"),
        ("WALTH01", "\"issuer\"", "settlement_currency = \"THB\"\n"),
        ("WALMY01", "\"issuer\"", "settlement_currency = \"MYR\"\n"),
    ] {
        text.push_str(&common::demo_participant(id, roles, extra));
    }
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// `payer_amount` THB at `rate` (scaled) and table `version`, with the 50 bp margin.
fn thb(payer_amount_minor: u64, rate: u64, version: u32) -> Conversion {
    Conversion { payer_amount_minor, rate, rate_version: version, payer_currency: THB, margin_basis_points: 50 }
}

/// The Thai wallet: first pays a CNY merchant's QR and reports its reply, then approves
/// every payment forwarded to it and acknowledges every reversal, reporting the
/// conversion each carried.
async fn thai_wallet(
    mut wallet: Client,
    seen: tokio::sync::mpsc::UnboundedSender<(&'static str, Conversion)>,
    names: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut request = common::qr_payment_request();
    request.details.originator = InstitutionId::new("WALTH01").expect("valid");
    wallet.writer.send(&Message::QrPaymentRequest(request.into())).await.expect("send");
    let reply = common::next_payment_reply(&mut wallet).await;
    assert_eq!(reply.code, 0, "{reply:?}");
    let _ = seen.send(("qr reply", reply.conversion));
    while let Ok(message) = wallet.reader.next(|m| m.to_message()).await {
        let answer = match message {
            Message::PaymentCodeRequest(request) => {
                let _ = seen.send(("payment", request.conversion));
                let _ = names.send(format!("{} / {}", request.details.merchant_name, request.details.merchant_city));
                Message::PaymentReply(common::approval(&request.details, wallet.participant))
            }
            Message::ReversalRequest(reversal) => {
                let _ = seen.send(("reversal", reversal.conversion));
                Message::ReversalReply(common::acknowledgement(&reversal, wallet.participant))
            }
            _ => continue,
        };
        if wallet.writer.send(&answer).await.is_err() {
            return;
        }
    }
}

/// Sends the sample payment for `amount_minor` with `code` and returns the reply.
async fn pay(acquirer: &mut Client, id: &str, code: &str, amount_minor: u64) -> Reply {
    let mut request = common::payment_code_request();
    request.details.originator_transaction_id = id.parse().expect("valid");
    request.details.amount_minor = amount_minor;
    request.payment_code = code.parse().expect("valid");
    acquirer.writer.send(&Message::PaymentCodeRequest(request)).await.expect("send");
    common::next_payment_reply(acquirer).await
}

// Multi-threaded: the wallet's task answers while this one waits on the Python client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thai_wallet_and_an_iso8583_acquirer_transact_converted_and_clear_per_currency() {
    common::require_pyiso8583();
    let dir = std::env::temp_dir().join(format!("switch-cross-border-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, iso_port, admin_port) = (free_port(), free_port(), free_port());
    let config = config(&dir, port, iso_port, admin_port);
    let _switch = common::start_switch(&config, &dir);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(admin, "GET", "/readyz", None).map(|(status, _)| status) != Some(200)
        || std::net::TcpStream::connect(("127.0.0.1", iso_port)).is_err()
    {
        assert!(Instant::now() < deadline, "the switch did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(dir.join("data/admin.token")).expect("token");
    let token = Some(token.trim());

    // The merchant's acquirer answers the Thai wallet's QR payment (38.00 CNY):
    // 38.00 x 4.9123 x 1.005 = 187.600737 THB, so 187.60.
    let merchant_side = tokio::spawn(loadgen::issuer::run_issuer(
        common::signed_on(port, "ACQ0001").await,
        loadgen::responder::Behaviour::default(),
    ));
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (names_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
    let wallet = tokio::spawn(thai_wallet(common::signed_on(port, "WALTH01").await, seen_tx, names_tx));
    let mut next_seen = async || tokio::time::timeout(Duration::from_secs(20), seen.recv()).await.expect("in time");
    let rate_1 = 49_123_000_000;
    assert_eq!(next_seen().await, Some(("qr reply", thb(18_760, rate_1, 1))));
    merchant_side.abort();

    // The ISO 8583 acquirer pays the Thai wallet 10.00 and 10.01 CNY and cancels the second.
    let iso = iso_port.to_string();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../codec/profiles/iso8583/binary-gbk.json");
    let output = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/iso8583_participant.py"))
        .env("MERCHANT_NAME", "全聚德烤鸭店")
        .env("MERCHANT_CITY", "北京")
        .args(["acquirer", "127.0.0.1", &iso])
        .arg(&profile)
        .args(["ACQISO01", "881234567890100001", "881234567890100002"])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let lines = common::json_lines(&text);
    assert_eq!(lines.len(), 6, "{text}");
    // 10.00 CNY: 49.368615 THB, 49.37; 10.01 CNY: 49.4179... THB, 49.42.
    let (first, second) = (thb(4_937, rate_1, 1), thb(4_942, rate_1, 1));
    // DE48 16: THB, the payer amount, the rate times 10^10, version 1, 50 bp.
    let subelements =
        ["76400000000000049370000004912300000000000000010050", "76400000000000049420000004912300000000000000010050"];
    for (reply, subelement) in lines[1..3].iter().zip(subelements) {
        assert_eq!((reply["mti"].as_str(), reply["response"].as_str()), (Some("0210"), Some("00")), "{reply}");
        assert_eq!(reply["currency"], "156", "the acquirer's side stays in CNY: {reply}");
        assert_eq!(reply["conversion"], subelement, "{reply}");
    }
    assert_eq!((lines[3]["mti"].as_str(), lines[3]["response"].as_str()), (Some("0410"), Some("00")), "{text}");
    assert_eq!(next_seen().await, Some(("payment", first)));
    assert_eq!(next_seen().await, Some(("payment", second)));
    assert_eq!(next_seen().await, Some(("reversal", second)), "the payer gets back what it paid");
    // pyiso8583 wrote the merchant in GBK (DE43); the native wallet reads it as text.
    assert_eq!(names.recv().await.as_deref(), Some("全聚德烤鸭店 / 北京"));

    // New rates through the admin API: a version that does not rise, or a bad file, keeps
    // the running table.
    let reload = || http(admin, "POST", "/fx/rates/reload", token).expect("admin answers");
    std::fs::write(dir.join("rates.toml"), rates(1, "5")).expect("rates");
    let (status, body) = reload();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("version 1 is not above the running version 1"), "{body}");
    std::fs::write(dir.join("rates.toml"), rates(2, "5,0")).expect("rates");
    let (status, body) = reload();
    assert!(status == 409 && body.contains("rate[0] (CNY to THB).rate"), "{status} {body}");
    std::fs::write(dir.join("rates.toml"), rates(2, "5")).expect("rates");
    let (status, body) = reload();
    assert_eq!((status, body.trim()), (200, r#"{"previous":1,"version":2}"#));
    let (status, shown) = http(admin, "GET", "/fx/rates", token).expect("admin answers");
    assert_eq!(status, 200, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!((shown["version"].as_u64(), shown["margin_basis_points"].as_u64()), (Some(2), Some(50)));
    assert_eq!(shown["rates"][0]["rate"], "5");
    assert!(http(admin, "POST", "/fx/rates/reload", None).is_some_and(|(status, _)| status == 401));

    // The next payment converts at the new rate: 38.00 x 5 x 1.005 = 190.95 THB.
    let mut acquirer = common::signed_on(port, "ACQ0001").await;
    let reply = pay(&mut acquirer, "XB-V2", "881234567890100003", 3_800).await;
    assert_eq!((reply.code, reply.conversion), (0, thb(19_095, 50_000_000_000, 2)), "{reply:?}");
    assert_eq!(next_seen().await, Some(("payment", thb(19_095, 50_000_000_000, 2))));
    // No MYR rate: an explicit decline, never a guess (the wallet is signed on: the
    // switch would otherwise answer DestinationUnavailable first).
    let _malaysian = common::signed_on(port, "WALMY01").await;
    let reply = pay(&mut acquirer, "XB-MY", "871234567890100001", 3_800).await;
    assert_eq!(reply.code, ReplyCode::NoExchangeRate.value(), "{reply:?}");
    // A suspended wallet is not reached.
    let (status, body) = http(admin, "POST", "/participants/WALTH01/state/suspended", token).expect("admin answers");
    assert_eq!(status, 200, "{body}");
    let reply = pay(&mut acquirer, "XB-SUSP", "881234567890100004", 3_800).await;
    assert_eq!(reply.code, ReplyCode::DestinationUnavailable.value(), "{reply:?}");

    // The window: each side in its own currency, the operator between them.
    let (status, body) = http(admin, "POST", "/clearing/close", token).expect("admin answers");
    assert_eq!(status, 200, "{body}");
    let window = dir.join("data/clearing/window-000001");
    let read = |file: &str| std::fs::read_to_string(window.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let wallet_file = read("WALTH01.csv");
    for row in [
        ",payment,debit,3800,156,ACQ0001,0,18760,764,4.9123,50,1\n",
        ",payment,debit,1000,156,ACQISO01,0,4937,764,4.9123,50,1\n",
        ",payment,debit,1001,156,ACQISO01,0,4942,764,4.9123,50,1\n",
        ",reversal,credit,1001,156,ACQISO01,0,4942,764,4.9123,50,1\n",
        ",payment,debit,3800,156,ACQ0001,0,19095,764,5,50,2\n",
    ] {
        assert_eq!(wallet_file.matches(row).count(), 1, "{row} in\n{wallet_file}");
    }
    assert_eq!(wallet_file.lines().count(), 1 + 5, "{wallet_file}");
    let acquirer_file = read("ACQISO01.csv");
    // 10.00 CNY less 0.50% (30 + 20 bp): a fee of 5 fen.
    assert!(acquirer_file.contains(",payment,credit,1000,156,WALTH01,5,1000,156,4.9123,50,1\n"), "{acquirer_file}");
    let summary: serde_json::Value = serde_json::from_str(&read("summary.json")).expect("json");
    let net = |participant: &str, currency: u16| {
        summary["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .find(|p| p["participant"] == participant)
            .and_then(|p| p["net_minor"][currency.to_string()].as_i64())
            .unwrap_or(0)
    };
    assert_eq!(net("WALTH01", THB), -(18_760 + 4_937 + 19_095));
    assert_eq!(net("WALTH01", 156), 0, "the wallet moves only THB");
    assert_eq!(net("CSWITCH", THB), 18_760 + 4_937 + 19_095);
    assert_eq!(net("ACQISO01", 156), 1_000 - 5);
    assert_eq!(net("ACQ0001", 156), 3_800 + 3_800);
    assert_eq!(net("CSWITCH", 156), -(3_800 + 1_000 + 3_800) + 5);
    assert_eq!(summary["sum_minor_by_currency"], serde_json::json!({"156": 0, "764": 0}));
    wallet.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
