//! Interop with an independent client written from `PROTOCOL.md` alone
//! (`tests/interop/native_client.py`, Python standard library only, its own CRC32C).
//! Needs `python3`; `.ci/run` checks it is there. Missing, the test fails and says so.

use std::process::Command;

use codec::{Message, decode_frame};
use rkyv::util::AlignedVec;

fn run_client(args: &[&str]) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg(format!("{dir}/tests/interop/native_client.py"))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("python3 is required for the interop test and could not run: {error}"));
    assert!(output.status.success(), "native_client.py {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn independent_client_verifies_every_golden_vector() {
    let protocol = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    let report = run_client(&["verify", protocol]);
    assert!(report.contains("\"vectors_checked\": 17"), "{report}");
    assert!(report.contains("\"originator_transaction_id\": \"ACQ0001-20260216-000000042\""), "{report}");
    assert!(report.contains("\"merchant_name\": \"静安咖啡 Jing'an Coffee\""), "{report}");
    assert!(report.contains("\"payment_code_length\": 18"), "{report}");
}

#[test]
fn frames_built_by_the_independent_client_decode() {
    let hex_text = run_client(&["encode"]);
    let mut bytes = AlignedVec::<16>::new();
    bytes.extend_from_slice(&hex::decode(hex_text.trim()).expect("hex"));
    let frame = decode_frame(&bytes).expect("valid frame").expect("complete");
    let Message::PaymentCodeRequest(request) = frame.message.to_message() else {
        panic!("expected a PaymentCodeRequest, got {:?}", frame.message.kind());
    };
    assert_eq!(request.details.originator.to_string(), "ACQ0001");
    assert_eq!(request.details.amount_minor, 12345);
    assert_eq!(request.details.merchant_name.to_string(), "全家便利店 FamilyMart");
    assert_eq!(request.details.merchant_city.to_string(), "北京");
    assert_eq!(request.payment_code.digits(), "281234567890123456");
    assert_eq!(request.payment_code.to_string(), "281234********3456");
}
