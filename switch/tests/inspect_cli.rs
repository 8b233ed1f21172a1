//! `switch inspect` as an integrator runs it: the real binary, good and bad input.

use std::process::Command;

use codec::iso8583::{IsoMessage, Profile};

fn inspect(args: &[&str]) -> (i32, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switch")).arg("inspect").args(args).output().expect("switch runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let value = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout).expect("JSON on stdout")
    };
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).to_string())
}

#[test]
fn qr_good_and_bad() {
    let (code, value, _) = inspect(&["qr", codec::sample::SAMPLE_QR_PAYLOAD]);
    assert_eq!(code, 0);
    assert_eq!(value["merchant_accounts"][0]["guid"], "A000000333010101");
    assert_eq!(value["amount_minor"], 3800);
    let mut bad = codec::sample::SAMPLE_QR_PAYLOAD.to_string();
    bad.replace_range(bad.len() - 4.., "FFFF");
    let (code, value, stderr) = inspect(&["qr", &bad]);
    assert_eq!((code, value), (1, serde_json::Value::Null));
    assert!(stderr.contains("CRC at offset 114"), "{stderr}");
}

#[test]
fn iso8583_masks_the_payment_code_and_names_bad_fields() {
    let profile = Profile::builtin("ascii").expect("built in");
    let mut iso = IsoMessage::default();
    codec::translate::to_iso(&codec::Message::PaymentCodeRequest(codec::sample::payment_code_request()), &mut iso)
        .expect("translates");
    let mut framed = Vec::new();
    profile.pack_frame(&iso, &mut framed).expect("packs");
    let hex = hex::encode(&framed);
    let (code, value, _) = inspect(&["iso8583", "--profile", "ascii", "--framed", &hex]);
    assert_eq!(code, 0);
    assert_eq!(value["fields"]["2"]["value"], "134567********1234");
    assert_eq!(
        value["canonical"]["message"]["PaymentCodeRequest"]["details"]["originator_transaction_id"],
        "ACQ0001-20260216-000000042"
    );
    let whole = serde_json::to_string(&value).expect("JSON");
    assert!(!whole.contains("134567890123451234"), "the payment code leaked: {whole}");

    // A non-digit in field 3 (ASCII profile): the error names the field and offset.
    let mut body = framed[4..].to_vec();
    let at = 4 + 16 + 2 + 18; // MTI, the primary bitmap (no field above 64), field 2
    body[at] = b'X';
    let (code, _, stderr) = inspect(&["iso8583", "--profile", "ascii", &hex::encode(&body)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("field 3 at offset 40"), "{stderr}");
}

#[test]
fn frames_good_and_bad() {
    let mut encoder = codec::FrameEncoder::default();
    encoder.encode(&codec::Message::PaymentCodeRequest(codec::sample::payment_code_request())).expect("valid");
    let hex = hex::encode(encoder.bytes());
    let (code, value, _) = inspect(&["frame", &hex]);
    assert_eq!(code, 0);
    assert_eq!(value["kind"], "PaymentCodeRequest");
    assert_eq!(value["message"]["PaymentCodeRequest"]["payment_code"], "134567********1234");
    let mut corrupt = encoder.bytes().to_vec();
    corrupt[100] ^= 1;
    let (code, _, stderr) = inspect(&["frame", &hex::encode(&corrupt)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("checksum mismatch at offset 4"), "{stderr}");
    let (code, _, stderr) = inspect(&["frame", "nothex"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not hexadecimal"), "{stderr}");
}
