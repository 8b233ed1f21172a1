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

#[test]
fn frame_macs_agree_with_the_independent_client() {
    use codec::signon::SignOnTranscript;
    use codec::{FrameDecoder, FrameEncoder, InstitutionId, MacAlgorithm, SessionMacs};
    let key = b"0123456789abcdef0123456789abcdef";
    for algorithm in [MacAlgorithm::HmacSha256, MacAlgorithm::HmacSm3] {
        let (switch_id, participant) = (InstitutionId::new("CSWITCH").unwrap(), InstitutionId::new("ACQ0001").unwrap());
        let transcript = SignOnTranscript {
            switch_id: &switch_id,
            participant: &participant,
            server_nonce: &[1; 32],
            client_nonce: &[2; 32],
        };
        let macs = || SessionMacs::derive(algorithm, key, &transcript, 77).expect("a MAC algorithm");
        let stream = hex::decode(run_client(&["tags", algorithm.name(), &hex::encode(key), "77"]).trim()).unwrap();
        // Our encoder, given the frame the client built, writes the same bytes and tags.
        let mut plain = AlignedVec::<16>::new();
        plain.extend_from_slice(&hex::decode(run_client(&["encode"]).trim()).unwrap());
        let message = decode_frame(&plain).unwrap().unwrap().message.to_message();
        let mut encoder = FrameEncoder::default();
        encoder.set_mac(Some(macs().to_switch));
        encoder.encode(&message).unwrap();
        encoder.encode(&message).unwrap();
        assert_eq!(hex::encode(encoder.bytes()), hex::encode(&stream), "{algorithm:?}");
        // Our decoder accepts the client's stream, and refuses it with one bit changed.
        let mut decoder = FrameDecoder::default();
        decoder.set_mac(Some(macs().to_switch));
        decoder.feed(&stream);
        assert!(decoder.decode().unwrap().is_some() && decoder.decode().unwrap().is_some());
        let mut altered = stream.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let mut decoder = FrameDecoder::default();
        decoder.set_mac(Some(macs().to_switch));
        decoder.feed(&altered);
        assert!(decoder.decode().unwrap().is_some());
        assert!(matches!(decoder.decode(), Err(codec::DecodeError::BadMac { .. })));
    }
}
